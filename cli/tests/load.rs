//! Load: ten agents on each of three daemons exchange 10,000 direct messages at once, with
//! topic traffic on the side. Nothing is lost or doubled, each sender's messages arrive in
//! order, each daemon's memory stays bounded, and once the load is over every internal
//! queue is empty and the daemon runs as many tasks as before it (nothing grew for good).
//!
//! Randomized from a printed seed (`MESH_TEST_SEED`); `MESH_LONG_TESTS=1` sends 100,000.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Daemon, FAST_CONFIG, Home, long_tests, metric, runtime, scrape, start_daemon, test_seed};
use mesh_node::api::{AgentSpec, PublishRequest, Request, Response, SendRequest};
use mesh_node::ids::MessageId;
use rand::{Rng, SeedableRng};

const NODES: [&str; 3] = ["alpha", "beta", "gamma"];
const AGENTS_PER_NODE: usize = 10;
/// No daemon may grow past this (resident set, high-water mark), whatever the load: about
/// five times what a debug build uses idle.
const MAX_RSS_BYTES: u64 = 192 * 1024 * 1024;
/// Tasks a daemon may run after the load beyond what it ran before it (timers, a scrape).
const TASK_SLACK: i64 = 16;

fn config() -> String {
    FAST_CONFIG
        .replace(
            "agent_sends_per_minute = 0",
            "agent_sends_per_minute = 0\npeer_messages_per_minute = 0\npeer_topic_messages_per_minute = 0",
        )
        // Senders do not wait for each ack: the outboxes fill and drain in batches.
        .replace("send_wait = \"3s\"", "send_wait = \"1ms\"")
        .replace("request_timeout = \"3s\"", "request_timeout = \"30s\"")
}

fn agent(node: usize, i: usize) -> String {
    format!("{}{i}", &NODES[node][..1])
}

/// Resident set and its high-water mark, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn gauge(d: &Daemon, series: &str) -> i64 {
    metric(&scrape(d.info.metrics.unwrap()), series).unwrap_or_else(|| panic!("no {series}")) as i64
}

/// Every `agentmesh_queue_depth{queue="…"}` series the daemon reports.
fn queue_series(d: &Daemon) -> Vec<String> {
    scrape(d.info.metrics.unwrap())
        .lines()
        .filter(|l| l.starts_with("agentmesh_queue_depth{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series.to_string()))
        .collect()
}

#[test]
fn thirty_agents_on_three_nodes_under_load_lose_nothing_and_stay_bounded() {
    let seed = test_seed("load");
    let (n_dm, n_topic_per_node) = if long_tests() { (100_000, 1_000) } else { (10_000, 100) };
    let homes: Vec<Home> = NODES.iter().map(|_| Home::new()).collect();
    let daemons: Vec<Daemon> = homes
        .iter()
        .zip(NODES)
        .map(|(h, name)| {
            std::fs::write(h.path().join("config.toml"), config()).unwrap();
            start_daemon(&h.path(), name, 0, &["--metrics", "127.0.0.1:0"])
        })
        .collect();
    homes[0].run(&["dial", &daemons[1].addr()]).ok();
    homes[0].run(&["dial", &daemons[2].addr()]).ok();
    homes[1].run(&["dial", &daemons[2].addr()]).ok();
    let paths: Vec<PathBuf> = homes.iter().map(|h| h.path()).collect();
    let rt = runtime();

    // Agents, and a topic watcher on every node.
    rt.block_on(async {
        for (n, p) in paths.iter().enumerate() {
            let c = common::client(p).await;
            for i in 0..AGENTS_PER_NODE {
                c.call(Request::Register {
                    agent: AgentSpec {
                        name: agent(n, i),
                        kind: "other".into(),
                        ..Default::default()
                    },
                    attach: false,
                })
                .await
                .unwrap();
            }
            c.call(Request::Subscribe {
                agent: "watcher".into(),
                topic: "load".into(),
            })
            .await
            .unwrap();
        }
    });
    // Every node knows every agent before the load starts.
    for (n, h) in homes.iter().enumerate() {
        for (m, name) in NODES.iter().enumerate() {
            if m == n {
                continue;
            }
            let want = format!("{}@{name}", agent(m, AGENTS_PER_NODE - 1));
            let deadline = Instant::now() + Duration::from_secs(30);
            while !h.run(&["--json", "agents"]).stdout.contains(&want) {
                assert!(Instant::now() < deadline, "{} never learned of {want}", NODES[n]);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let tasks_before: Vec<i64> = daemons.iter().map(|d| gauge(d, "agentmesh_tasks_alive")).collect();
    let idle_rss: Vec<u64> = daemons.iter().map(|d| memory(d.child.id()).0).collect();

    // Memory is sampled while the load runs.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let pids: Vec<u32> = daemons.iter().map(|d| d.child.id()).collect();
        let running = running.clone();
        std::thread::spawn(move || {
            let mut peak = vec![0u64; pids.len()];
            let deadline = Instant::now() + Duration::from_secs(3600);
            while running.load(Ordering::SeqCst) && Instant::now() < deadline {
                for (i, pid) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(memory(*pid).1);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for (i, pid) in pids.iter().enumerate() {
                peak[i] = peak[i].max(memory(*pid).1);
            }
            peak
        })
    };

    let started = Instant::now();
    // Exactly `n_dm` in all: the first agents send one more where it does not divide.
    let senders = NODES.len() * AGENTS_PER_NODE;
    let per_agent = |n: usize, i: usize| n_dm / senders + usize::from(n * AGENTS_PER_NODE + i < n_dm % senders);
    // (sender, recipient) -> ids in send order.
    let sent: HashMap<(String, String), Vec<MessageId>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for (n, p) in paths.iter().enumerate() {
            for i in 0..AGENTS_PER_NODE {
                let (p, me) = (p.clone(), agent(n, i));
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ ((n * 100 + i) as u64));
                let count = per_agent(n, i);
                tasks.push(tokio::spawn(async move {
                    let c = common::client(&p).await;
                    let mut out: HashMap<(String, String), Vec<MessageId>> = HashMap::new();
                    for k in 0..count {
                        let (m, j) = loop {
                            let pick = (rng.random_range(0..NODES.len()), rng.random_range(0..AGENTS_PER_NODE));
                            if pick != (n, i) {
                                break pick;
                            }
                        };
                        let to = agent(m, j);
                        let id = MessageId::new();
                        let r = c
                            .call(Request::Send(SendRequest {
                                from: me.clone(),
                                to: format!("{to}@{}", NODES[m]),
                                text: format!("{me} → {to} #{k}"),
                                reply_to: None,
                                id: Some(id),
                            }))
                            .await;
                        assert!(matches!(r, Ok(Response::Sent(_))), "{r:?}");
                        out.entry((me.clone(), to)).or_default().push(id);
                    }
                    out
                }));
            }
            // Topic traffic on the side.
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let c = common::client(&p).await;
                for k in 0..n_topic_per_node {
                    let r = c
                        .call(Request::Publish(PublishRequest {
                            agent: "announcer".into(),
                            topic: "load".into(),
                            text: format!("{} says {k}", NODES[n]),
                            reply_to: None,
                            id: Some(MessageId::new()),
                        }))
                        .await;
                    assert!(matches!(r, Ok(Response::Published(_))), "{r:?}");
                }
                HashMap::new()
            }));
        }
        // Bounded: a daemon that stops answering fails the test instead of hanging it.
        let sending_deadline = tokio::time::Instant::now() + Duration::from_secs(if long_tests() { 1800 } else { 300 });
        let mut all = HashMap::new();
        for t in tasks {
            let done = tokio::time::timeout_at(sending_deadline, t).await;
            all.extend(done.expect("sending did not finish in time").unwrap());
        }
        all
    });
    assert_eq!(sent.values().map(Vec::len).sum::<usize>(), n_dm, "every message sent");
    let sending = started.elapsed();

    // Everything arrives: per recipient, each sender's messages exactly once and in order.
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(if long_tests() { 1200 } else { 300 });
        for (n, p) in paths.iter().enumerate() {
            let c = common::client(p).await;
            let mut ev = c.watch(vec![]).await.unwrap();
            for i in 0..AGENTS_PER_NODE {
                let me = agent(n, i);
                let expected: usize = sent.iter().filter(|((_, to), _)| *to == me).map(|(_, v)| v.len()).sum();
                loop {
                    let inbox = common::whole_inbox(&c, &me).await.unwrap();
                    if inbox.len() >= expected {
                        assert_eq!(inbox.len(), expected, "{me}: nothing doubled");
                        for ((from, to), ids) in sent.iter().filter(|((_, to), _)| *to == me) {
                            let got: Vec<MessageId> =
                                inbox.iter().filter(|m| &m.from_agent == from).map(|m| m.id).collect();
                            assert_eq!(&got, ids, "{from} → {to}: exactly once, in order");
                        }
                        break;
                    }
                    match tokio::time::timeout_at(deadline, ev.recv()).await {
                        Ok(Some(_)) => {}
                        _ => panic!("{me}: {} of {expected} messages arrived", inbox.len()),
                    }
                }
            }
            // The topic: every node's announcements, once each, at every watcher.
            loop {
                let h = common::whole_history(&c, "#load").await.unwrap();
                let want = NODES.len() * n_topic_per_node;
                if h.len() >= want {
                    let mut ids: Vec<MessageId> = h.iter().map(|x| x.id).collect();
                    ids.sort();
                    ids.dedup();
                    assert_eq!(
                        (h.len(), ids.len()),
                        (want, want),
                        "{}: every topic message once",
                        NODES[n]
                    );
                    break;
                }
                match tokio::time::timeout_at(deadline, ev.recv()).await {
                    Ok(Some(_)) => {}
                    Err(_) => panic!("{}: {} of {want} topic messages", NODES[n], h.len()),
                    Ok(None) => panic!("daemon went away"),
                }
            }
        }
    });
    let total = started.elapsed();
    running.store(false, Ordering::SeqCst);
    let peak = sampler.join().unwrap();

    // Idle again: every queue the daemon reports empty, no task left behind.
    for (d, name) in daemons.iter().zip(NODES) {
        let queues = queue_series(d);
        assert!(queues.len() >= 7, "{name}: queues reported: {queues:?}");
        for series in queues {
            let mut depth = gauge(d, &series);
            for _ in 0..50 {
                if depth == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
                depth = gauge(d, &series);
            }
            assert_eq!(depth, 0, "{name}: {series} is not empty after the load");
        }
        // The senders settle their last deliveries just after the recipients store them.
        let pending = "agentmesh_outbox_messages{state=\"pending\"}";
        let mut left = gauge(d, pending);
        for _ in 0..50 {
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            left = gauge(d, pending);
        }
        assert_eq!(left, 0, "{name}: outbox drained");
    }
    // Settled: every inbox read again, still exactly once and in order (a delivery repeated
    // while the outboxes settled would show here).
    rt.block_on(async {
        for (n, p) in paths.iter().enumerate() {
            let c = common::client(p).await;
            for i in 0..AGENTS_PER_NODE {
                let me = agent(n, i);
                let inbox = common::whole_inbox(&c, &me).await.unwrap();
                let expected: usize = sent.iter().filter(|((_, to), _)| *to == me).map(|(_, v)| v.len()).sum();
                assert_eq!(inbox.len(), expected, "{me} after settling: nothing doubled");
                for ((from, to), ids) in sent.iter().filter(|((_, to), _)| *to == me) {
                    let got: Vec<MessageId> = inbox.iter().filter(|m| &m.from_agent == from).map(|m| m.id).collect();
                    assert_eq!(&got, ids, "{from} → {to} after settling: exactly once, in order");
                }
            }
        }
    });
    for ((d, name), before) in daemons.iter().zip(NODES).zip(&tasks_before) {
        let mut now = gauge(d, "agentmesh_tasks_alive");
        for _ in 0..50 {
            if now <= before + TASK_SLACK {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            now = gauge(d, "agentmesh_tasks_alive");
        }
        assert!(
            now <= before + TASK_SLACK,
            "{name}: {now} tasks after the load, {before} before: something grew and stayed"
        );
    }
    eprintln!(
        "load: {} direct + {} topic messages, 30 agents on 3 nodes: sent in {:.1} s, all delivered in {:.1} s ({:.0} msg/s end to end)",
        n_dm,
        NODES.len() * n_topic_per_node,
        sending.as_secs_f64(),
        total.as_secs_f64(),
        n_dm as f64 / total.as_secs_f64()
    );
    for (i, name) in NODES.iter().enumerate() {
        eprintln!(
            "load: {name}: resident {:.1} MiB idle, peak {:.1} MiB (bound {} MiB)",
            idle_rss[i] as f64 / 1048576.0,
            peak[i] as f64 / 1048576.0,
            MAX_RSS_BYTES / 1048576
        );
        assert!(peak[i] < MAX_RSS_BYTES, "{name}: memory grew to {} bytes", peak[i]);
    }
}
