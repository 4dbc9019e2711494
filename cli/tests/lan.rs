//! Several hosts on one LAN, for real: network namespaces on a bridge, real mDNS and
//! DNS-SD, the real `mesh` binary, no configuration. Skips (with a message) unless root.

#![allow(clippy::unwrap_used)]

mod common;
mod netns;

use std::time::Duration;

use common::{Daemon, FAST_CONFIG, Home, runtime, spawn_daemon};
use mesh_node::api::client::Client;
use mesh_node::api::{Event, InboxQuery, PublishRequest, Request, SendRequest, SendStatus};
use netns::{Host, Lab};

const DISCOVERY_WAIT: Duration = Duration::from_secs(30);

fn start_on(host: &Host, home: &Home, name: &str) -> Daemon {
    // Default listen addresses (all interfaces), LAN discovery on.
    spawn_daemon(host.command(&common::mesh_bin()), &home.path(), &["--name", name])
}

async fn client(home: &Home) -> Client {
    common::client(&home.path()).await
}

/// Waits until the node at `home` knows agents on every node in `names`.
async fn wait_sees(home: &Home, names: &[&str]) {
    let c = client(home).await;
    let mut ev = c.watch(vec![]).await.unwrap();
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    loop {
        let agents = get!(c.call(Request::Agents), Agents);
        if names
            .iter()
            .all(|n| agents.iter().any(|a| &a.node_name == n && !a.local))
        {
            return;
        }
        match tokio::time::timeout_at(deadline, ev.recv()).await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("daemon went away"),
            Err(_) => {
                let seen: Vec<_> = agents.iter().map(|a| a.address.clone()).collect();
                panic!(
                    "{:?} did not discover {names:?} in {DISCOVERY_WAIT:?}; sees {seen:?}",
                    home.path()
                );
            }
        }
    }
}

#[test]
fn lan_nodes_discover_each_other_and_talk() {
    let Some(mut lab) = Lab::new("lan") else { return };
    let seg = lab.segment("sw", [10, 77, 1]);
    let hosts: Vec<Host> = (1..=3).map(|i| lab.host(&format!("h{i}"), &seg, i as u8)).collect();
    let homes: Vec<Home> = (0..3).map(|_| Home::new()).collect();
    let names = ["h1", "h2", "h3"];
    let _daemons: Vec<Daemon> = hosts
        .iter()
        .zip(&homes)
        .zip(names)
        .map(|((h, home), n)| start_on(h, home, n))
        .collect();

    let rt = runtime();
    rt.block_on(async {
        // Zero configuration: nobody dialed anybody.
        for (i, home) in homes.iter().enumerate() {
            let others: Vec<&str> = names
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, n)| *n)
                .collect();
            wait_sees(home, &others).await;
        }

        // A direct message across hosts.
        let c1 = client(&homes[0]).await;
        let c3 = client(&homes[2]).await;
        let mut ev3 = c3.watch(vec!["tester".into()]).await.unwrap();
        let r = get!(
            c1.call(Request::Send(SendRequest {
                from: "tester".into(),
                to: "tester@h3".into(),
                text: "over the LAN".into(),
                reply_to: None,
                id: None,
            })),
            Sent
        );
        assert_eq!(r.status, SendStatus::Delivered);
        let got = tokio::time::timeout(DISCOVERY_WAIT, async {
            loop {
                if let Some(Event::Message(m)) = ev3.recv().await {
                    break m;
                }
            }
        })
        .await
        .expect("DM never arrived");
        assert_eq!(got.id, r.id);
        assert_eq!(got.from, "tester@h1");

        // A topic message from h2 reaches subscribers on h1 and h3.
        let c2 = client(&homes[1]).await;
        let mut ev1 = c1.watch(vec!["tester".into()]).await.unwrap();
        for c in [&c1, &c3] {
            c.call(Request::Subscribe {
                agent: "tester".into(),
                topic: "lan".into(),
            })
            .await
            .unwrap();
        }
        let p = get!(
            c2.call(Request::Publish(PublishRequest {
                agent: "tester".into(),
                topic: "lan".into(),
                text: "hello LAN".into(),
                reply_to: None,
                id: None,
            })),
            Published
        );
        for ev in [&mut ev1, &mut ev3] {
            let m = tokio::time::timeout(DISCOVERY_WAIT, async {
                loop {
                    if let Some(Event::Message(m)) = ev.recv().await
                        && m.topic.as_deref() == Some("lan")
                    {
                        break m;
                    }
                }
            })
            .await
            .expect("topic message never arrived");
            assert_eq!(m.id, p.id);
            assert_eq!(m.from, "tester@h2");
        }
    });
}

#[test]
fn dnssd_alone_is_enough_to_find_nodes() {
    let Some(mut lab) = Lab::new("dnssd") else { return };
    let seg = lab.segment("sw", [10, 77, 2]);
    let h1 = lab.host("h1", &seg, 1);
    let h2 = lab.host("h2", &seg, 2);
    let config = format!("{FAST_CONFIG}\n[lan]\nlibp2p_mdns = false\n");
    let (a, b) = (Home::new(), Home::new());
    for h in [&a, &b] {
        std::fs::write(h.path().join("config.toml"), &config).unwrap();
    }
    let _d1 = start_on(&h1, &a, "d1");
    let _d2 = start_on(&h2, &b, "d2");
    let rt = runtime();
    rt.block_on(async {
        wait_sees(&a, &["d2"]).await;
        wait_sees(&b, &["d1"]).await;
    });
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after [`DISCOVERY_WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DISCOVERY_WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn history(c: &Client, target: &str) -> Vec<mesh_node::api::HistoryView> {
    common::whole_history(c, target).await.expect("history")
}

#[test]
fn an_outsider_on_the_lan_sees_the_members_but_reaches_nobody_until_it_joins() {
    let Some(mut lab) = Lab::new("outsider") else { return };
    let seg = lab.segment("sw", [10, 77, 3]);
    let (h1, h2, h3) = (
        lab.host("h1", &seg, 1),
        lab.host("h2", &seg, 2),
        lab.host("h3", &seg, 3),
    );
    // m1 and m2 share a mesh; x starts one of its own. Same LAN, real mDNS and DNS-SD.
    let (m1, m2, x) = (Home::new(), Home::new(), Home::alone());
    let _d1 = start_on(&h1, &m1, "m1");
    let _d2 = start_on(&h2, &m2, "m2");
    let dx = start_on(&h3, &x, "x");
    let rt = runtime();
    rt.block_on(async {
        wait_sees(&m1, &["m2"]).await;
        wait_sees(&m2, &["m1"]).await;
        let (c1, c2, cx) = (client(&m1).await, client(&m2).await, client(&x).await);

        // Discovery still works both ways: everyone is listed, as a non-member.
        for (c, who, other) in [(&c1, "m1", dx.info.peer_id), (&c2, "m2", dx.info.peer_id)] {
            let p = eventually(&format!("{who} to list the outsider"), || async {
                get!(c.call(Request::Peers), Peers)
                    .into_iter()
                    .find(|p| p.peer_id == other && !p.member)
            })
            .await;
            assert!(p.refused.is_some(), "{p:?}");
        }
        let ids = [_d1.info.peer_id, _d2.info.peer_id];
        eventually("the outsider to list both members as non-members", || async {
            let peers = get!(cx.call(Request::Peers), Peers);
            ids.iter()
                .all(|id| peers.iter().any(|p| p.peer_id == *id && !p.member))
                .then_some(())
        })
        .await;

        // Everyone talks on #lan; the outsider too.
        for c in [&c1, &c2, &cx] {
            c.call(Request::Subscribe {
                agent: "tester".into(),
                topic: "lan".into(),
            })
            .await
            .unwrap();
        }
        let publish = |text: &str| {
            Request::Publish(PublishRequest {
                agent: "tester".into(),
                topic: "lan".into(),
                text: text.into(),
                reply_to: None,
                id: None,
            })
        };
        get!(cx.call(publish("outsider says hi")), Published);
        let mine = get!(c1.call(publish("members only")), Published);
        eventually("m2 to get m1's topic message", || async {
            history(&c2, "#lan").await.iter().any(|h| h.id == mine.id).then_some(())
        })
        .await;
        // The outsider cannot address a member at all...
        let err = cx
            .call(Request::Send(SendRequest {
                from: "tester".into(),
                to: format!("tester@{}", ids[0]),
                text: "let me in".into(),
                reply_to: None,
                id: None,
            }))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown node"), "{err}");
        get!(cx.call(publish("outsider says hi again")), Published);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // ...and nothing passes either way: no direct or topic message, no directory entry.
        for c in [&c1, &c2] {
            assert!(
                history(c, "#lan").await.iter().all(|h| !h.text.starts_with("outsider")),
                "a member stored the outsider's topic message"
            );
            let agents = get!(c.call(Request::Agents), Agents);
            assert!(agents.iter().all(|a| a.node != dx.info.peer_id), "{agents:?}");
            let inbox = get!(
                c.call(Request::Inbox(InboxQuery {
                    agent: "tester".into(),
                    all: true,
                    limit: 100,
                    mark_read: false,
                    skip_notified: false,
                    after: None,
                    max_bytes: None,
                })),
                Inbox
            )
            .messages;
            assert!(inbox.iter().all(|m| m.from_node != dx.info.peer_id), "{inbox:?}");
        }
        assert!(
            history(&cx, "#lan")
                .await
                .iter()
                .all(|h| h.text.starts_with("outsider"))
        );
        let agents = get!(cx.call(Request::Agents), Agents);
        assert!(agents.iter().all(|a| a.local), "{agents:?}");

        // Joining takes one command on each side; then it is one of them.
        let code = m1.run(&["invite"]).ok().stdout.trim().to_string();
        let out = x.run(&["join", &code]);
        out.ok();
        assert!(out.stdout.contains("joined mesh"), "{}", out.stdout);
        wait_sees(&x, &["m1", "m2"]).await;
        let r = get!(
            cx.call(Request::Send(SendRequest {
                from: "tester".into(),
                to: "tester@m2".into(),
                text: "a member now".into(),
                reply_to: None,
                id: None,
            })),
            Sent
        );
        assert_eq!(r.status, SendStatus::Delivered);
    });
}

#[test]
fn a_nearby_node_joins_by_comparison_code_without_copying_anything() {
    let Some(mut lab) = Lab::new("pairing") else { return };
    let seg = lab.segment("sw", [10, 77, 4]);
    let (h1, h2) = (lab.host("h1", &seg, 1), lab.host("h2", &seg, 2));
    // m1 is in the test mesh; x starts one of its own. Found by real mDNS and DNS-SD.
    let (m1, x) = (Home::new(), Home::alone());
    let d1 = start_on(&h1, &m1, "m1");
    let _dx = start_on(&h2, &x, "x");
    let rt = runtime();
    rt.block_on(async {
        let cx = client(&x).await;
        eventually("x to see m1 nearby", || async {
            get!(cx.call(Request::Peers), Peers)
                .into_iter()
                .find(|p| p.peer_id == d1.info.peer_id && !p.member)
        })
        .await;

        // `mesh join m1` on x: it prints the code, its user says yes, it waits for m1's user.
        let path = x.path();
        let joining = std::thread::spawn(move || common::run_in(&path, &["join", "m1"], Some(b"yes\n")));
        let listed = eventually("m1 to list x asking", || async {
            let out = m1.run(&["--json", "pairings"]).ok().json();
            out.as_array().unwrap().first().cloned()
        })
        .await;
        let code = listed["code"].as_str().unwrap().to_string();
        assert_eq!(listed["name"], "x");
        let table = m1.run(&["pairings"]).ok().stdout.clone();
        assert!(table.contains(&code), "{table}");
        // A code x does not show admits nobody.
        let wrong = if code == "000 000" { "000001" } else { "000000" };
        let refused = m1.run(&["approve", wrong]);
        assert_ne!(refused.code, 0);
        assert!(
            refused.stderr.contains("no node with comparison code"),
            "{}",
            refused.stderr
        );

        let ok = m1.run(&["approve", &code.replace(' ', "")]).ok().stdout.clone();
        assert!(ok.contains("admitted x"), "{ok}");
        let out = joining.join().unwrap();
        let out = out.ok();
        assert!(
            out.stdout.contains(&format!("comparison code: {code}")),
            "both sides show the same code: {}",
            out.stdout
        );
        assert!(out.stdout.contains("joined the mesh of m1"), "{}", out.stdout);

        wait_sees(&x, &["m1"]).await;
        let r = get!(
            cx.call(Request::Send(SendRequest {
                from: "tester".into(),
                to: "tester@m1".into(),
                text: "paired".into(),
                reply_to: None,
                id: None,
            })),
            Sent
        );
        assert_eq!(r.status, SendStatus::Delivered);
    });
}
