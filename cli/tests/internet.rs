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
            format!("{FAST_CONFIG}\n[relay]\nnodes = [\"{relay_addr}\"]\n"),
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
    Some(World {
        lab,
        ra,
        rb,
        relay: Some(relay),
        relay_host,
        relay_home,
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
async fn wait_until<F, Fut>(home: &Home, what: &str, mut check: F)
where
    F: FnMut(Client) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let c = client(home).await;
    let mut ev = c.watch(vec![]).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
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
    let agent = agent.to_string();
    let want = texts.to_vec();
    wait_until(home, &format!("{} messages for {agent}", want.len()), |c| {
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
    let Some(mut lab) = Lab::new("upnp") else {
        return;
    };
    let inet = lab.segment("inet", [5, 0, 0]);
    let lan_b = lab.segment("lanb", [10, 2, 0]);
    let rb = lab.router("rb", &inet, 3, &lan_b, Nat::EndpointIndependent);
    if lab.upnp(&rb).is_none() {
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
