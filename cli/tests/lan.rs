//! Several hosts on one LAN, for real: network namespaces on a bridge, real mDNS and
//! DNS-SD, the real `mesh` binary, no configuration. Skips (with a message) unless root.

#![allow(clippy::unwrap_used)]

mod common;
mod netns;

use std::time::Duration;

use common::{Daemon, FAST_CONFIG, Home, runtime, spawn_daemon};
use mesh_node::api::client::Client;
use mesh_node::api::{Event, Request, SendStatus};
use netns::{Host, Lab};

const DISCOVERY_WAIT: Duration = Duration::from_secs(30);

fn start_on(host: &Host, home: &Home, name: &str) -> Daemon {
    // Default listen addresses (all interfaces), LAN discovery on.
    spawn_daemon(host.command(&common::mesh_bin()), &home.path(), &["--name", name])
}

async fn client(home: &Home) -> Client {
    let h = mesh_node::home::Home::resolve(Some(home.path())).unwrap();
    Client::connect(&h, "lan-test").await.unwrap()
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
            c1.call(Request::Send {
                from: "tester".into(),
                to: "tester@h3".into(),
                text: "over the LAN".into(),
                reply_to: None,
            }),
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
            c2.call(Request::Publish {
                agent: "tester".into(),
                topic: "lan".into(),
                text: "hello LAN".into(),
                reply_to: None,
            }),
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
