//! Across "the internet", for real: network namespaces forming a public segment with a relay
//! node and two private LANs, each behind its own NAT router (iptables MASQUERADE), one node
//! per LAN. Relays, hole punching (DCUtR), the DHT, relay restarts. Needs root; skips with
//! a message otherwise. Run by hand: `sudo cargo test -p mesh-cli --test internet -- --nocapture`.

#![allow(clippy::unwrap_used)]

mod common;
mod netns;

use std::time::Duration;

use common::{Daemon, FAST_CONFIG, Home, runtime, spawn_daemon};
use mesh_node::api::client::Client;
use mesh_node::api::{ConnectionView, NatView, PathView, UpnpStatusView};
use mesh_node::api::{LocalApi, Request, Response, SendRequest, SendStatus, StatusView};
use netns::{Host, Lab, Nat, Router};

const WAIT: Duration = Duration::from_secs(45);

struct World {
    lab: Lab,
    ra: Router,
    rb: Router,
    relay: Option<Daemon>,
    relay_host: Host,
    relay_home: Home,
    host_a: Host,
    _a: Daemon,
    b: Daemon,
    ha: Home,
    hb: Home,
}

fn start(host: &Host, home: &Home, name: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--name", name, "--no-mdns"];
    args.extend_from_slice(extra);
    spawn_daemon(host.command(&common::mesh_bin()), &home.path(), &args)
}

fn start_relay(host: &Host, home: &Home) -> Daemon {
    start(
        host,
        home,
        "relay",
        &[
            "--relay",
            "--listen",
            "/ip4/0.0.0.0/tcp/4001",
            "--listen",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
        ],
    )
}

/// relay on 5.0.0.10; A behind router RA (NAT `nat_a`), B behind RB (NAT `nat_b`).
fn world(tag: &str, nat_a: Nat, nat_b: Nat) -> Option<World> {
    world_in(tag, [5, 0, 0], nat_a, nat_b)
}

/// The same with the public segment (relay `.10`, routers `.2` and `.3`) in `public`.
fn world_in(tag: &str, public: [u8; 3], nat_a: Nat, nat_b: Nat) -> Option<World> {
    let listen = [
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--listen",
        "/ip4/0.0.0.0/udp/0/quic-v1",
    ];
    world_with(tag, public, nat_a, nat_b, FAST_CONFIG, &listen)
}

/// The same with `config` (instead of [`FAST_CONFIG`]) and `listen` for A and B.
fn world_with(tag: &str, public: [u8; 3], nat_a: Nat, nat_b: Nat, config: &str, listen: &[&str]) -> Option<World> {
    let mut lab = Lab::new(tag)?;
    let inet = lab.segment("inet", public);
    let lan_a = lab.segment("lana", [10, 1, 0]);
    let lan_b = lab.segment("lanb", [10, 2, 0]);
    let relay_host = lab.host("relay", &inet, 10);
    let ra = lab.router("ra", &inet, 2, &lan_a, nat_a);
    let rb = lab.router("rb", &inet, 3, &lan_b, nat_b);
    let host_a = lab.host_via("a", &lan_a, 10, ra.lan_ip);
    let host_b = lab.host_via("b", &lan_b, 10, rb.lan_ip);
    let relay_home = Home::new();
    let relay = start_relay(&relay_host, &relay_home);
    let relay_addr = format!("/ip4/{}/tcp/4001/p2p/{}", relay_host.ip, relay.info.peer_id);
    let (ha, hb) = (Home::new(), Home::new());
    for h in [&ha, &hb] {
        std::fs::write(
            h.path().join("config.toml"),
            format!("{config}\n[relay]\nnodes = [\"{relay_addr}\"]\n"),
        )
        .unwrap();
    }
    let a = start(&host_a, &ha, "alpha", listen);
    let b = start(&host_b, &hb, "beta", listen);
    Some(World {
        lab,
        ra,
        rb,
        relay: Some(relay),
        relay_host,
        relay_home,
        host_a,
        _a: a,
        b,
        ha,
        hb,
    })
}

async fn client(home: &Home) -> Client {
    common::client(&home.path()).await
}

async fn status(c: &Client) -> StatusView {
    match c.call(Request::Status).await.unwrap() {
        Response::Status(s) => *s,
        other => panic!("{other:?}"),
    }
}

/// Waits, on the node's events, until `check` holds (re-checked after every event).
async fn wait_until<F, Fut>(home: &Home, what: &str, check: F)
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(home, what, WAIT, check).await
}

/// [`wait_until`] for at most `within`.
async fn wait_until_within<F, Fut>(home: &Home, what: &str, within: Duration, mut check: F)
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let c = client(home).await;
    let mut ev = c.watch(vec![]).await.unwrap();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check(c.clone()).await {
            return;
        }
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("daemon went away while waiting for {what}"),
            Err(_) => {
                let log = std::fs::read_to_string(home.path().with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "timed out waiting for {what}; last log lines:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// Polls `check` every 200 ms until it holds, for at most [`WAIT`].
async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `home`'s node has a direct (not relayed) connection to `peer`.
async fn wait_direct(home: &Home, peer: mesh_node::PeerId) {
    wait_until(home, "a direct connection", |c| async move {
        connections(&c, peer).await.iter().any(|c| c.path != PathView::Relayed)
    })
    .await;
}

/// B's address through the relay, once it holds a slot.
async fn relayed_addr(hb: &Home) -> String {
    wait_until(hb, "a relay slot on B", |c| async move {
        status(&c)
            .await
            .reach
            .reservations
            .iter()
            .any(|r| r.accepted && r.addr.is_some())
    })
    .await;
    match client(hb).await.call(Request::Addrs).await.unwrap() {
        Response::Addrs(a) => a.relayed.first().cloned().expect("a relayed address"),
        other => panic!("{other:?}"),
    }
}

async fn connection_to(home: &Home, peer: mesh_node::PeerId) -> Vec<ConnectionView> {
    connections(&client(home).await, peer).await
}

async fn connections(c: &Client, peer: mesh_node::PeerId) -> Vec<ConnectionView> {
    match c.call(Request::Peers).await.unwrap() {
        Response::Peers(list) => list
            .into_iter()
            .find(|p| p.peer_id == peer)
            .map(|p| p.connections)
            .unwrap_or_default(),
        other => panic!("{other:?}"),
    }
}

async fn send(home: &Home, to: &str, text: &str) -> mesh_node::api::SendReceipt {
    match client(home)
        .await
        .call(Request::Send(SendRequest {
            from: "alice".into(),
            to: to.into(),
            text: text.into(),
            reply_to: None,
            id: None,
        }))
        .await
        .unwrap()
    {
        Response::Sent(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Waits until `agent` on `home` holds exactly `texts` from alice, in this order.
async fn wait_inbox(home: &Home, agent: &str, texts: &[String]) {
    wait_inbox_within(home, agent, texts, WAIT).await
}

/// [`wait_inbox`] for at most `within`.
async fn wait_inbox_within(home: &Home, agent: &str, texts: &[String], within: Duration) {
    let agent = agent.to_string();
    let want = texts.to_vec();
    wait_until_within(home, &format!("{} messages for {agent}", want.len()), within, |c| {
        let (agent, want) = (agent.clone(), want.clone());
        async move {
            let got = common::whole_inbox(&c, &agent).await.unwrap();
            let got: Vec<String> = got
                .into_iter()
                .filter(|m| m.from_agent == "alice")
                .map(|m| m.text)
                .collect();
            assert!(got.len() <= want.len(), "duplicates or strays: {got:?}");
            assert_eq!(got[..], want[..got.len()], "out of order");
            got.len() == want.len()
        }
    })
    .await;
}

#[test]
fn endpoint_independent_nat_hole_punch_goes_direct() {
    let Some(w) = world("nat-eim", Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        let relayed = relayed_addr(&w.hb).await;
        assert!(relayed.contains("/p2p-circuit/p2p/"), "{relayed}");
        // Both sides know they are not reachable directly; the relay knows it is.
        wait_until(&w.relay_home, "the relay to find itself public", |c| async move {
            status(&c).await.reach.nat == NatView::Public
        })
        .await;
        // B knows its relay by a TCP address; it reaches the relay over QUIC too, so that its
        // QUIC address (as the NAT maps it) is observed and can be punched.
        let relay_peer = w.relay.as_ref().unwrap().info.peer_id;
        wait_until(&w.hb, "B reaching the relay over QUIC too", |c| async move {
            connections(&c, relay_peer).await.iter().any(|c| c.transport == "quic")
        })
        .await;

        // A reaches B through the relay; the connection is upgraded to a direct one.
        w.ha.run(&["dial", &relayed]).ok();
        let mut texts = Vec::new();
        texts.push("over the relay, maybe".to_string());
        let r = send(&w.ha, "tester@beta", &texts[0]).await;
        assert_ne!(r.status, SendStatus::Rejected { reason: String::new() });
        wait_until(&w.ha, "a direct connection to B", |c| async move {
            let conns = connections(&c, b_peer).await;
            !conns.is_empty() && conns.iter().all(|c| c.path != PathView::Relayed)
        })
        .await;
        let punches_a = status(&client(&w.ha).await).await.reach.punch;
        let punches_b = status(&client(&w.hb).await).await.reach.punch;
        assert!(
            punches_a.successes + punches_b.successes >= 1,
            "the upgrade was a hole punch: {punches_a:?} {punches_b:?}"
        );
        let conn = connection_to(&w.ha, b_peer).await;
        assert!(conn.iter().all(|c| c.via.is_none()), "{conn:?}");

        // Messages keep flowing over the direct connection, each once, in order.
        for i in 0..20 {
            let t = format!("direct {i}");
            send(&w.ha, "tester@beta", &t).await;
            texts.push(t);
        }
        wait_inbox(&w.hb, "tester", &texts).await;
        // `mesh ping` shows the path.
        let out = w.ha.run(&["ping", &b_peer.to_string(), "--count", "2"]);
        out.ok();
        assert!(out.stdout.contains("direct over"), "{}", out.stdout);
        // `mesh peers` too.
        let out = w.ha.run(&["peers"]);
        assert!(out.stdout.contains("direct over"), "{}", out.stdout);
    });
}

/// A first hole punch that fails (the routers drop each other's packets for a while) is
/// not the end: the relayed connection to the member is punched for again, and goes direct
/// once the path is open.
#[test]
fn a_failed_hole_punch_is_tried_again_until_the_connection_goes_direct() {
    let Some(w) = world("nat-retry", Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let block = |add: bool| {
        let op = if add { "-I" } else { "-D" };
        for (router, other) in [(&w.ra, &w.rb), (&w.rb, &w.ra)] {
            for dir in ["-s", "-d"] {
                let ip = other.wan_ip.to_string();
                let out = w
                    .lab
                    .exec(&router.ns, &["iptables", op, "FORWARD", dir, &ip, "-j", "DROP"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let out = w
                    .lab
                    .exec(&router.ns, &["iptables", op, "INPUT", dir, &ip, "-j", "DROP"]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    };
    block(true);
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        let relayed = relayed_addr(&w.hb).await;
        w.ha.run(&["dial", &relayed]).ok();
        send(&w.ha, "tester@beta", "over the relay").await;
        wait_until(&w.hb, "a failed hole punch", |c| async move {
            status(&c).await.reach.punch.failures >= 1
        })
        .await;
        // The routers let each other through again: a later punch makes it.
        block(false);
        wait_direct(&w.ha, b_peer).await;
        let texts = vec!["over the relay".to_string(), "direct at last".to_string()];
        send(&w.ha, "tester@beta", &texts[1]).await;
        wait_inbox(&w.hb, "tester", &texts).await;
    });
}

/// DCUtR always punches between the two listening ports. When that pair of ports cannot
/// get through (here the routers drop it; behind routers that answer stray packets a
/// failed round spoils it for a while), punches from fresh ports pair other ports each
/// round, and the member goes direct all the same; messages keep flowing throughout.
#[test]
fn when_the_listening_ports_cannot_meet_a_punch_from_a_fresh_port_goes_direct() {
    // TCP only, on a known port: no QUIC punch, and a rule can name the pair DCUtR uses.
    let listen = ["--listen", "/ip4/0.0.0.0/tcp/4101"];
    let Some(w) = world_with(
        "nat-fresh",
        [5, 0, 0],
        Nat::EndpointIndependent,
        Nat::EndpointIndependent,
        FAST_CONFIG,
        &listen,
    ) else {
        return;
    };
    for (router, other) in [(&w.ra, &w.rb), (&w.rb, &w.ra)] {
        let ip = other.wan_ip.to_string();
        let rule = [
            "iptables",
            "-t",
            "raw",
            "-I",
            "PREROUTING",
            "-i",
            "wan",
            "-s",
            &ip,
            "-p",
            "tcp",
            "--sport",
            "4101",
            "--dport",
            "4101",
            "-j",
            "DROP",
        ];
        let out = w.lab.exec(&router.ns, &rule);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        let relayed = relayed_addr(&w.hb).await;
        w.ha.run(&["dial", &relayed]).ok();
        let mut texts = vec!["over the relay".to_string()];
        send(&w.ha, "tester@beta", &texts[0]).await;
        wait_until_within(
            &w.ha,
            "a direct connection to B",
            Duration::from_secs(60),
            |c| async move {
                connections(&c, b_peer)
                    .await
                    .iter()
                    .any(|c| c.path != PathView::Relayed)
            },
        )
        .await;
        // With the listening ports' pair dropped and no QUIC, only a punch from a fresh
        // port can have made it.
        let a = status(&client(&w.ha).await).await.reach.punch;
        let b = status(&client(&w.hb).await).await.reach.punch;
        assert!(a.successes + b.successes >= 1, "a punch made it: {a:?} {b:?}");
        for i in 0..10 {
            let t = format!("direct {i}");
            send(&w.ha, "tester@beta", &t).await;
            texts.push(t);
        }
        wait_inbox(&w.hb, "tester", &texts).await;
    });
}

/// A relay is one by role: with every address of the "public" segment in a private range,
/// the relay still serves, B gets a slot, and A reaches B (going direct, the NATs being
/// endpoint-independent).
#[test]
fn a_relay_in_a_private_range_gives_slots_all_the_same() {
    let Some(w) = world_in(
        "nat-private",
        [10, 99, 0],
        Nat::EndpointIndependent,
        Nat::EndpointIndependent,
    ) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        let relayed = relayed_addr(&w.hb).await;
        assert!(relayed.starts_with("/ip4/10.99.0.10/"), "{relayed}");
        w.ha.run(&["dial", &relayed]).ok();
        let texts = vec!["through a relay in 10.99.0.0/24".to_string()];
        send(&w.ha, "tester@beta", &texts[0]).await;
        wait_inbox(&w.hb, "tester", &texts).await;
        wait_direct(&w.ha, b_peer).await;
    });
}

/// A node behind a router with UPnP (a real IGD: miniupnpd) has its port forwarded, is
/// reached directly from the internet with no relay anywhere, shows the mapping in `mesh
/// status`, and removes it when it stops.
#[test]
fn a_node_behind_a_upnp_router_is_reached_directly_and_unmaps_on_stop() {
    forwarded_by_the_router("upnp", true);
}

#[test]
fn a_node_behind_a_router_with_nat_pmp_only_is_reached_directly_and_unmaps_on_stop() {
    // UPnP finds no router; PCP / NAT-PMP does the same job.
    forwarded_by_the_router("natpmp", false);
}

/// B behind a router whose miniupnpd speaks UPnP (`igd`) or only PCP / NAT-PMP: the
/// router forwards B's port, A reaches B directly, a clean stop removes the forwarding.
fn forwarded_by_the_router(tag: &str, igd: bool) {
    let Some(mut lab) = Lab::new(tag) else {
        return;
    };
    let inet = lab.segment("inet", [5, 0, 0]);
    let lan_b = lab.segment("lanb", [10, 2, 0]);
    let rb = lab.router("rb", &inet, 3, &lan_b, Nat::EndpointIndependent);
    if lab.port_mapper(&rb, igd).is_none() {
        return;
    }
    let host_a = lab.host("a", &inet, 20);
    let host_b = lab.host_via("b", &lan_b, 10, rb.lan_ip);
    let (ha, hb) = (Home::new(), Home::new());
    for h in [&ha, &hb] {
        std::fs::write(h.path().join("config.toml"), FAST_CONFIG).unwrap();
    }
    let _a = start(&host_a, &ha, "alpha", &["--listen", "/ip4/0.0.0.0/tcp/4001"]);
    let b = start(&host_b, &hb, "beta", &["--listen", "/ip4/0.0.0.0/tcp/4001"]);
    let rt = runtime();
    rt.block_on(async {
        let b_peer = b.info.peer_id;
        wait_until(&hb, "the router to forward B's port", |c| async move {
            status(&c).await.reach.upnp.status == UpnpStatusView::Mapped
        })
        .await;
        let st = status(&client(&hb).await).await;
        let mapped = st.reach.upnp.mapped.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(mapped, ["/ip4/5.0.0.3/tcp/4001"], "{st:?}");
        assert!(lab.forwarded(&rb).contains("dnat"), "{}", lab.forwarded(&rb));
        let out = hb.run(&["status"]);
        assert!(
            out.stdout.contains("the router forwards /ip4/5.0.0.3/tcp/4001"),
            "{}",
            out.stdout
        );
        // A, on the internet, dials the router's address: a direct connection to B.
        ha.run(&["dial", &format!("/ip4/5.0.0.3/tcp/4001/p2p/{b_peer}")]).ok();
        let conns = connection_to(&ha, b_peer).await;
        assert!(
            !conns.is_empty() && conns.iter().all(|c| c.path == PathView::Internet && c.via.is_none()),
            "{conns:?}"
        );
        let texts = vec!["through the forwarded port".to_string()];
        send(&ha, "tester@beta", &texts[0]).await;
        wait_inbox(&hb, "tester", &texts).await;
    });
    // A clean stop removes the forwarding from the router.
    hb.run(&["down"]).ok();
    drop(b);
    assert!(!lab.forwarded(&rb).contains("dnat"), "{}", lab.forwarded(&rb));
}

#[test]
fn a_node_that_moves_to_another_network_reconnects_and_delivers() {
    // Pings every 30 s, a connection declared dead only after 60 s: longer than this test
    // waits. The node must get over the move by other means (its sockets fail once their
    // address is gone; deliveries retry; members are redialed, punched again).
    let slow = FAST_CONFIG.replace("heartbeat = \"300ms\"", "heartbeat = \"30s\"");
    // TCP only: a dead QUIC connection times out by itself within seconds, a TCP one
    // does not.
    let Some(mut w) = world_with(
        "nat-move",
        [5, 0, 0],
        Nat::EndpointIndependent,
        Nat::EndpointIndependent,
        &slow,
        &["--listen", "/ip4/0.0.0.0/tcp/0"],
    ) else {
        return;
    };
    let rt = runtime();
    let b_peer = w.b.info.peer_id;
    rt.block_on(async {
        let relayed = relayed_addr(&w.hb).await;
        let c = client(&w.ha).await;
        c.dial(&relayed).await.unwrap();
        wait_direct(&w.ha, b_peer).await;
        send(&w.ha, &format!("tester@{b_peer}"), "before the move").await;
        wait_inbox(&w.hb, "tester", &["before the move".to_string()]).await;
    });
    // A's laptop joins another network: a new address behind a router with a new public
    // address. Its connections (direct to B, to the relay) are dead.
    w.lab.renumber_router(&mut w.ra, 22);
    let gateway = w.ra.lan_ip;
    w.lab.renumber_host(&mut w.host_a, 20, gateway);
    rt.block_on(async {
        let text = "after the move".to_string();
        send(&w.ha, &format!("tester@{b_peer}"), &text).await;
        wait_inbox(&w.hb, "tester", &["before the move".to_string(), text]).await;
    });
}

#[test]
fn symmetric_nat_stays_relayed_and_loses_nothing() {
    let Some(w) = world("nat-sym", Nat::EndpointIndependent, Nat::Symmetric) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        let relayed = relayed_addr(&w.hb).await;
        w.ha.run(&["dial", &relayed]).ok();
        // The punch is tried and fails; the relayed connection stays.
        wait_until(&w.hb, "a failed hole punch", |c| async move {
            let p = status(&c).await.reach.punch;
            p.failures >= 1
        })
        .await;
        let mut texts = Vec::new();
        for i in 0..30 {
            let t = format!("relayed {i}");
            send(&w.ha, "tester@beta", &t).await;
            texts.push(t);
        }
        wait_inbox(&w.hb, "tester", &texts).await;
        let conns = connection_to(&w.ha, b_peer).await;
        assert!(
            !conns.is_empty() && conns.iter().all(|c| c.path == PathView::Relayed),
            "{conns:?}"
        );
        // Punching goes on, and `mesh peers` says so (with why the last one failed, once
        // this side heard of a failure).
        // (Polled: punching changes no reachability, so no event tells of it.)
        let ca = client(&w.ha).await;
        let punch = |c: Client, peer| async move {
            let peers = c.peers().await.unwrap();
            peers.into_iter().find(|p| p.peer_id == peer).and_then(|p| p.punch)
        };
        poll_until("punching for B shown", || async {
            punch(ca.clone(), b_peer).await.is_some()
        })
        .await;
        let out = w.ha.run(&["peers"]);
        assert!(
            out.stdout.contains("punching for a direct connection"),
            "{}",
            out.stdout
        );
        assert_eq!(conns[0].via, Some(w.relay.as_ref().unwrap().info.peer_id));
        let out = w.ha.run(&["ping", "beta", "--count", "1"]);
        out.ok();
        assert!(out.stdout.contains("relayed via"), "{}", out.stdout);
        let st = w.hb.run(&["status"]);
        assert!(st.stdout.contains("relay    slot on"), "{}", st.stdout);
    });
}

#[test]
fn relay_restart_mid_conversation_queues_and_delivers_once() {
    let Some(mut w) = world("nat-restart", Nat::EndpointIndependent, Nat::Symmetric) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let relayed = relayed_addr(&w.hb).await;
        w.ha.run(&["dial", &relayed]).ok();
        let mut texts = Vec::new();
        for i in 0..5 {
            let t = format!("before {i}");
            send(&w.ha, "tester@beta", &t).await;
            texts.push(t);
        }
        wait_inbox(&w.hb, "tester", &texts).await;

        // The relay dies: the path is gone; messages queue.
        w.relay.take().unwrap().kill9();
        for i in 0..5 {
            let t = format!("during {i}");
            let r = send(&w.ha, "tester@beta", &t).await;
            assert!(
                matches!(r.status, SendStatus::Queued { .. } | SendStatus::Delivered),
                "{:?}",
                r.status
            );
            texts.push(t);
        }
        // It comes back (same identity and address): B takes a slot again, A redials B
        // (remembered), and the queue drains, each message once, in order.
        w.relay = Some(start_relay(&w.relay_host, &w.relay_home));
        wait_inbox(&w.hb, "tester", &texts).await;
        let out = w.ha.run(&["--json", "outbox"]);
        assert_eq!(
            out.json().as_array().unwrap().len(),
            0,
            "nothing pending: {}",
            out.stdout
        );
    });
}

#[test]
fn a_node_known_only_by_peer_id_is_found_through_the_dht() {
    let Some(w) = world("nat-dht", Nat::EndpointIndependent, Nat::EndpointIndependent) else {
        return;
    };
    let rt = runtime();
    rt.block_on(async {
        let b_peer = w.b.info.peer_id;
        // B is behind NAT with a slot on the relay; A knows the relay and nothing of B.
        relayed_addr(&w.hb).await;
        assert!(connection_to(&w.ha, b_peer).await.is_empty());
        let r = send(&w.ha, &format!("tester@{b_peer}"), "found you through the DHT").await;
        assert!(!matches!(r.status, SendStatus::Rejected { .. }), "{:?}", r.status);
        wait_inbox(&w.hb, "tester", &["found you through the DHT".to_string()]).await;
        assert!(!connection_to(&w.ha, b_peer).await.is_empty());
    });
}

/// A node of the stand-in public network ([`mesh_node::stand_in`]), run by
/// [`public_node_child`] in its own process inside a namespace.
struct PublicNode {
    child: std::process::Child,
    peer: mesh_node::PeerId,
    addr: String,
}

impl Drop for PublicNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a public node on `host` (port 4001), entering the DHT through `bootstrap`.
fn public_node(host: &Host, relay: bool, bootstrap: &[&str]) -> PublicNode {
    use std::io::BufRead;
    let mut cmd = host.command(&std::env::current_exe().unwrap());
    cmd.args([
        "public_node_child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env("PUBLIC_NODE_EXTERNAL", host.ip.to_string())
    .env("PUBLIC_NODE_RELAY", if relay { "1" } else { "0" })
    .env("PUBLIC_NODE_BOOTSTRAP", bootstrap.join(","))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest's "test public_node_child ... " may precede it on the line.
            if let Some(id) = line.split("PUBLIC_NODE_PEER ").nth(1) {
                let _ = tx.try_send(id.trim().to_string());
            }
        }
    });
    let peer: mesh_node::PeerId = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the public node did not start")
        .parse()
        .unwrap();
    let addr = format!("/ip4/{}/tcp/4001/p2p/{peer}", host.ip);
    PublicNode { child, peer, addr }
}

/// The public node process of [`public_node`] (configured by its environment).
#[test]
#[ignore = "the public node process of the public-network tests"]
fn public_node_child() {
    let Ok(ip) = std::env::var("PUBLIC_NODE_EXTERNAL") else {
        return;
    };
    let bootstrap = std::env::var("PUBLIC_NODE_BOOTSTRAP").unwrap_or_default();
    let opts = mesh_node::stand_in::StandIn {
        key: libp2p::identity::Keypair::generate_ed25519(),
        port: 4001,
        external: vec![
            format!("/ip4/{ip}/tcp/4001").parse().unwrap(),
            format!("/ip4/{ip}/udp/4001/quic-v1").parse().unwrap(),
        ],
        bootstrap: bootstrap
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect(),
        relay: std::env::var("PUBLIC_NODE_RELAY").is_ok_and(|v| v == "1"),
    };
    runtime().block_on(async move {
        let r = mesh_node::stand_in::run(opts, |peer| {
            use std::io::Write;
            println!("PUBLIC_NODE_PEER {peer}");
            let _ = std::io::stdout().flush();
        })
        .await;
        panic!("the public node stopped: {r:?}");
    });
}

#[test]
fn members_with_no_public_address_meet_through_the_public_network_even_after_both_moved() {
    let Some(mut lab) = Lab::new("pubnet") else {
        return;
    };
    let inet = lab.segment("inet", [5, 0, 0]);
    let lan_a = lab.segment("lana", [10, 1, 0]);
    let lan_b = lab.segment("lanb", [10, 2, 0]);
    // The public network: a DHT node to enter through, and relays (public nodes that
    // relay, with the public limits). No member relays, nobody with a public address.
    let (p0_host, r1_host, r2_host) = (
        lab.host("p0", &inet, 10),
        lab.host("r1", &inet, 11),
        lab.host("r2", &inet, 12),
    );
    let mut ra = lab.router("ra", &inet, 2, &lan_a, Nat::EndpointIndependent);
    let mut rb = lab.router("rb", &inet, 3, &lan_b, Nat::EndpointIndependent);
    let mut host_a = lab.host_via("a", &lan_a, 10, ra.lan_ip);
    let mut host_b = lab.host_via("b", &lan_b, 10, rb.lan_ip);
    let p0 = public_node(&p0_host, false, &[]);
    let r1 = public_node(&r1_host, true, &[&p0.addr]);
    // A has a mesh; B has none yet and joins A's with an invite code.
    let (ha, hb) = (Home::new(), Home::alone());
    for h in [&ha, &hb] {
        std::fs::write(
            h.path().join("config.toml"),
            format!(
                "{FAST_CONFIG}\n[internet]\npublic_network = true\npublic_bootstrap = [\"{}\"]\n",
                p0.addr
            ),
        )
        .unwrap();
    }
    let listen = [
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--listen",
        "/ip4/0.0.0.0/udp/0/quic-v1",
    ];
    let a = start(&host_a, &ha, "alpha", &listen);
    let b = start(&host_b, &hb, "beta", &listen);
    let b_peer = b.info.peer_id;
    let rt = runtime();
    rt.block_on(async {
        // A finds the public relay through the DHT and takes a slot on it; its invite
        // code carries the relayed address, the only one B can reach.
        wait_until_within(&ha, "a slot on the public relay", 2 * WAIT, |c| async move {
            status(&c)
                .await
                .reach
                .reservations
                .iter()
                .any(|r| r.relay == r1.peer && r.accepted)
        })
        .await;
        let invite = match client(&ha)
            .await
            .call(Request::Invite { ttl_s: 600, uses: 1 })
            .await
            .unwrap()
        {
            Response::Invite(v) => v,
            other => panic!("{other:?}"),
        };
        assert!(
            invite.addrs.iter().any(|a| a.contains("/p2p-circuit")),
            "no relayed address in the invite: {:?}",
            invite.addrs
        );
        match client(&hb)
            .await
            .call(Request::Join { code: invite.code })
            .await
            .unwrap()
        {
            Response::Joined(_) => {}
            other => panic!("{other:?}"),
        }
        let first = "met through the public network".to_string();
        let r = send(&ha, &format!("tester@{b_peer}"), &first).await;
        assert!(!matches!(r.status, SendStatus::Rejected { .. }), "{:?}", r.status);
        wait_inbox(&hb, "tester", std::slice::from_ref(&first)).await;
        // Each publishes its rendezvous record (its relayed address) for later.
        for h in [&ha, &hb] {
            poll_until("the rendezvous record published", || async {
                status(&client(h).await).await.reach.public.published_ms.is_some()
            })
            .await;
        }
        let s = status(&client(&ha).await).await;
        // None of the public nodes is listed as a node seen nearby.
        assert_eq!(s.outsiders, 0, "public nodes listed as outsiders");
    });
    let found = || {
        rt.block_on(async {
            status(&client(&ha).await).await.reach.public.found + status(&client(&hb).await).await.reach.public.found
        })
    };
    let found_before = found();
    // Both move: new public addresses (their ISPs renumbered them), new LAN addresses, and
    // the relay they used is gone; another one appeared in the public network.
    drop(r1);
    let r2 = public_node(&r2_host, true, &[&p0.addr]);
    lab.renumber_router(&mut ra, 22);
    lab.renumber_host(&mut host_a, 20, ra.lan_ip);
    lab.renumber_router(&mut rb, 33);
    lab.renumber_host(&mut host_b, 30, rb.lan_ip);
    rt.block_on(async {
        let second = "found you again after we both moved".to_string();
        let r = send(&ha, &format!("tester@{b_peer}"), &second).await;
        assert!(!matches!(r.status, SendStatus::Rejected { .. }), "{:?}", r.status);
        wait_inbox_within(
            &hb,
            "tester",
            &["met through the public network".to_string(), second],
            2 * WAIT,
        )
        .await;
        let s = status(&client(&hb).await).await;
        assert!(
            s.reach.reservations.iter().any(|r| r.relay == r2.peer && r.accepted),
            "a slot on the new public relay: {:?}",
            s.reach.reservations
        );
    });
    assert!(found() > found_before, "they met again through the rendezvous");
    drop((a, b));
}
