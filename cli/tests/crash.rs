//! Crash consistency: streams of direct messages both ways and a stream of topic messages
//! between two real daemons, while both are killed with SIGKILL at random moments and
//! started again. At the end every message is in its recipient's inbox exactly once, in
//! the order it was sent, and every topic message is in the subscriber's history once.
//!
//! Randomized from a printed seed (`MESH_TEST_SEED` replays a schedule);
//! `MESH_LONG_TESTS=1` runs ten times the messages and crashes.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, FAST_CONFIG, Home, Resilient, long_tests, runtime, start_daemon, test_seed, wait_until};
use mesh_node::api::client::Client;
use mesh_node::api::{AgentSpec, PublishRequest, Request, Response, SendRequest};
use mesh_node::ids::MessageId;
use rand::{Rng, SeedableRng};

/// Send limits off (they have tests of their own), acks awaited briefly, and a request
/// timeout longer than any stall of a loaded machine.
fn config() -> String {
    FAST_CONFIG
        .replace(
            "agent_sends_per_minute = 0",
            "agent_sends_per_minute = 0\npeer_messages_per_minute = 0\npeer_topic_messages_per_minute = 0",
        )
        .replace("send_wait = \"3s\"", "send_wait = \"500ms\"")
        .replace("request_timeout = \"3s\"", "request_timeout = \"10s\"")
}

/// A daemon that the chaos thread kills and starts again.
struct Node {
    home: PathBuf,
    name: &'static str,
    port: u16,
    daemon: Mutex<Option<Daemon>>,
}

impl Node {
    fn start(home: &Home, name: &'static str) -> Node {
        std::fs::write(home.path().join("config.toml"), config()).unwrap();
        let d = start_daemon(&home.path(), name, 0, &[]);
        Node {
            home: home.path(),
            name,
            port: d.port(),
            daemon: Mutex::new(Some(d)),
        }
    }

    fn kill(&self) {
        if let Some(d) = self.daemon.lock().unwrap().take() {
            d.kill9();
        }
    }

    fn ensure_up(&self) {
        let mut slot = self.daemon.lock().unwrap();
        if slot.is_none() {
            *slot = Some(start_daemon(&self.home, self.name, self.port, &[]));
        }
    }

    fn addr(&self) -> String {
        self.daemon.lock().unwrap().as_ref().unwrap().addr()
    }
}

async fn register(home: &Path, agent: &str) {
    let c = common::client(home).await;
    c.call(Request::Register {
        agent: AgentSpec {
            name: agent.into(),
            kind: "other".into(),
            ..Default::default()
        },
        attach: false,
    })
    .await
    .unwrap();
}

/// Sends `n` messages `from` → `to` in order, each retried with its id until answered;
/// returns the ids in send order.
async fn send_stream(
    home: PathBuf,
    from: &str,
    to: &str,
    n: usize,
    seed: u64,
    deadline: tokio::time::Instant,
) -> (Vec<MessageId>, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Resilient::new(&home);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = MessageId::new();
        let r = c
            .call(
                Request::Send(SendRequest {
                    from: from.into(),
                    to: to.into(),
                    text: format!("{from} #{i}"),
                    reply_to: None,
                    id: Some(id),
                }),
                deadline,
            )
            .await;
        match r {
            Response::Sent(r) => assert_eq!(r.id, id),
            other => panic!("{other:?}"),
        }
        ids.push(id);
        // Paced, so the stream spans the crashes.
        if rng.random_ratio(1, 4) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        }
    }
    (ids, c.retries)
}

async fn publish_stream(
    home: PathBuf,
    agent: &str,
    topic: &str,
    n: usize,
    seed: u64,
    deadline: tokio::time::Instant,
) -> Vec<MessageId> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut c = Resilient::new(&home);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = MessageId::new();
        match c
            .call(
                Request::Publish(PublishRequest {
                    agent: agent.into(),
                    topic: topic.into(),
                    text: format!("{topic} #{i}"),
                    reply_to: None,
                    id: Some(id),
                }),
                deadline,
            )
            .await
        {
            Response::Published(p) => assert_eq!(p.id, id),
            other => panic!("{other:?}"),
        }
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
    }
    ids
}

async fn inbox_ids(c: &Client, agent: &str, from: &str) -> Result<Vec<MessageId>, String> {
    Ok(common::whole_inbox(c, agent)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|m| m.from_agent == from && m.topic.is_none())
        .map(|m| m.id)
        .collect())
}

#[test]
fn crashes_of_both_daemons_lose_and_duplicate_nothing() {
    let seed = test_seed("crash");
    let long = long_tests();
    let (n_dm, n_topic, max_kills) = if long { (5_000, 1_000, 60) } else { (500, 150, 8) };
    let (ha, hb) = (Home::new(), Home::new());
    let a = Arc::new(Node::start(&ha, "alpha"));
    let b = Arc::new(Node::start(&hb, "beta"));
    ha.run(&["dial", &b.addr()]).ok();
    let rt = runtime();
    rt.block_on(async {
        register(&a.home, "dave").await;
        register(&b.home, "bob").await;
        let c = common::client(&b.home).await;
        c.call(Request::Subscribe {
            agent: "bob".into(),
            topic: "news".into(),
        })
        .await
        .unwrap();
    });
    // Both know each other's agents before the storm.
    hb.run(&["dial", &a.addr()]).ok();

    let started = Instant::now();
    let sending = Arc::new(AtomicBool::new(true));
    let kills = Arc::new(AtomicU32::new(0));
    let chaos = {
        let (a, b, sending, kills) = (a.clone(), b.clone(), sending.clone(), kills.clone());
        std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            std::thread::sleep(Duration::from_millis(rng.random_range(300..1000)));
            while sending.load(Ordering::SeqCst) && kills.load(Ordering::SeqCst) < max_kills {
                let victims: Vec<&Node> = match rng.random_range(0..5) {
                    0 | 1 => vec![&a],
                    2 | 3 => vec![&b],
                    _ => vec![&a, &b],
                };
                for v in &victims {
                    v.kill();
                }
                let names: Vec<&str> = victims.iter().map(|v| v.name).collect();
                eprintln!("crash: SIGKILL {names:?} at {:.1} s", started.elapsed().as_secs_f64());
                kills.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
                for v in &victims {
                    v.ensure_up();
                }
                std::thread::sleep(Duration::from_millis(rng.random_range(400..2000)));
            }
        })
    };

    let deadline = tokio::time::Instant::now() + Duration::from_secs(if long { 1500 } else { 300 });
    let (ab, ba, news) = rt.block_on(async {
        let ab = tokio::spawn(send_stream(
            a.home.clone(),
            "alice",
            "bob@beta",
            n_dm,
            seed ^ 1,
            deadline,
        ));
        let ba = tokio::spawn(send_stream(
            b.home.clone(),
            "carol",
            "dave@alpha",
            n_dm,
            seed ^ 2,
            deadline,
        ));
        let news = tokio::spawn(publish_stream(
            a.home.clone(),
            "alice",
            "news",
            n_topic,
            seed ^ 3,
            deadline,
        ));
        (ab.await.unwrap(), ba.await.unwrap(), news.await.unwrap())
    });
    sending.store(false, Ordering::SeqCst);
    chaos.join().unwrap();
    a.ensure_up();
    b.ensure_up();
    let (ab, ab_retries) = ab;
    let (ba, ba_retries) = ba;
    eprintln!(
        "crash: sent {} + {} direct and {} topic messages in {:.1} s through {} crashes ({} requests repeated after a crash)",
        ab.len(),
        ba.len(),
        news.len(),
        started.elapsed().as_secs_f64(),
        kills.load(Ordering::SeqCst),
        ab_retries + ba_retries
    );
    assert!(kills.load(Ordering::SeqCst) > 0, "no crash happened");

    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(if long { 600 } else { 180 });
        // Every direct message exactly once, in send order.
        for (home, agent, from, sent) in [(&b.home, "bob", "alice", &ab), (&a.home, "dave", "carol", &ba)] {
            wait_until(
                home,
                &format!("{from}'s messages at {agent}"),
                deadline,
                async |c: &Client| {
                    let got = inbox_ids(c, agent, from).await?;
                    if got.len() < sent.len() {
                        return Err(format!("{} of {}", got.len(), sent.len()));
                    }
                    assert_eq!(&got, sent, "{from} → {agent}: exactly once, in send order");
                    Ok(())
                },
            )
            .await;
        }
        // Every topic message in beta's history (and bob's inbox) exactly once.
        wait_until(&b.home, "the topic history at beta", deadline, async |c: &Client| {
            let h = match common::whole_history(c, "#news").await {
                Ok(h) => h,
                Err(e) => return Err(format!("{e}")),
            };
            let have = news.iter().filter(|id| h.iter().any(|x| x.id == **id)).count();
            if have < news.len() {
                return Err(format!("{have} of {}", news.len()));
            }
            for id in &news {
                assert_eq!(
                    h.iter().filter(|x| x.id == *id).count(),
                    1,
                    "topic message {id} once in history"
                );
            }
            assert_eq!(h.len(), news.len(), "nothing else in the history");
            Ok(())
        })
        .await;
        let c = common::client(&b.home).await;
        let inbox = common::whole_inbox(&c, "bob").await.unwrap();
        for id in &news {
            assert_eq!(
                inbox.iter().filter(|m| m.id == *id).count(),
                1,
                "one inbox entry per topic message"
            );
        }
        // The senders know: nothing left pending.
        for (home, who) in [(&a.home, "alpha"), (&b.home, "beta")] {
            wait_until(home, "empty outbox", deadline, async |c: &Client| {
                match c
                    .call(Request::Outbox {
                        agent: None,
                        delivered: false,
                        limit: 100_000,
                    })
                    .await
                {
                    Ok(Response::Outbox(l)) if l.is_empty() => Ok(()),
                    Ok(Response::Outbox(l)) => Err(format!(
                        "{who}: {} not settled: {:?}",
                        l.len(),
                        l.first().map(|e| &e.state)
                    )),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        }
        // Settled: nothing more can arrive. Read the inboxes again: still exactly once (a
        // delivery repeated while the outboxes settled would show here).
        for (home, agent, from, sent) in [(&b.home, "bob", "alice", &ab), (&a.home, "dave", "carol", &ba)] {
            let c = common::client(home).await;
            let got = inbox_ids(&c, agent, from).await.unwrap();
            assert_eq!(
                &got, sent,
                "{from} → {agent} after settling: exactly once, in send order"
            );
        }
        let c = common::client(&b.home).await;
        let inbox = common::whole_inbox(&c, "bob").await.unwrap();
        for id in &news {
            assert_eq!(
                inbox.iter().filter(|m| m.id == *id).count(),
                1,
                "one inbox entry per topic message after settling"
            );
        }
    });
    eprintln!(
        "crash: converged {:.1} s after the start",
        started.elapsed().as_secs_f64()
    );
}
