//! A clean stop (`mesh down`, SIGTERM) in the middle of traffic finishes what is in flight:
//! the recipient answers every batch it stored before it closes its connections, the
//! sender waits for the answers to its deliveries and records them. So the next start
//! sends nothing twice, and resumes what was still queued.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{CMD_TIMEOUT, Daemon, FAST_CONFIG, Home, Resilient, metric, runtime, scrape, start_daemon};
use mesh_node::api::{AgentSpec, Event, Request, Response, SendRequest};
use mesh_node::ids::MessageId;
use wait_timeout::ChildExt;

/// No send limits; sends do not wait for the ack (a backlog builds up in the outbox); a
/// request timeout no stall reaches, so a duplicate can only come from the stop.
fn config() -> String {
    FAST_CONFIG
        .replace(
            "agent_sends_per_minute = 0",
            "agent_sends_per_minute = 0\npeer_messages_per_minute = 0",
        )
        .replace("send_wait = \"3s\"", "send_wait = \"1ms\"")
        .replace("request_timeout = \"3s\"", "request_timeout = \"30s\"")
}

fn start(home: &Home, name: &str, port: u16) -> Daemon {
    std::fs::write(home.path().join("config.toml"), config()).unwrap();
    start_daemon(&home.path(), name, port, &["--metrics", "127.0.0.1:0"])
}

fn duplicates(d: &Daemon) -> f64 {
    let body = scrape(d.info.metrics.expect("metrics address"));
    metric(&body, "agentmesh_dm_duplicates_total").expect("duplicates counter")
}

async fn send_all(home: PathBuf, n: usize) -> Vec<MessageId> {
    let mut c = Resilient::new(&home);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut ids = Vec::new();
    for i in 0..n {
        let id = MessageId::new();
        let r = c
            .call(
                Request::Send(SendRequest {
                    from: "alice".into(),
                    to: "bob@beta".into(),
                    text: format!("m{i}"),
                    reply_to: None,
                    id: Some(id),
                }),
                deadline,
            )
            .await;
        assert!(matches!(r, Response::Sent(_)), "{r:?}");
        ids.push(id);
    }
    ids
}

/// Waits until bob has `ids` (exactly, in order) at `home`; then, once the sender at
/// `sender` has settled everything, reads bob's inbox again (a delivery repeated while the
/// sender settled would show).
async fn wait_bob(home: &Path, sender: &Path, ids: &[MessageId]) {
    let all = common::wait_direct(home, "bob", "alice", ids.len()).await;
    assert_eq!(all, ids, "exactly once, in order");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    common::outbox_settled(&common::client(sender).await, deadline).await;
    let again: Vec<MessageId> = common::whole_inbox(&common::client(home).await, "bob")
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.from_agent == "alice" && m.topic.is_none())
        .map(|m| m.id)
        .collect();
    assert_eq!(again, ids, "after settling: exactly once, in order");
}

/// Waits until bob has at least `n` messages.
async fn wait_some(home: &Path, n: usize) {
    let c = common::client(home).await;
    let mut ev = c.watch(vec!["bob".into()]).await.unwrap();
    let mut seen = 0;
    while seen < n {
        match tokio::time::timeout(Duration::from_secs(30), ev.recv()).await {
            Ok(Some(Event::Message(_))) => seen += 1,
            Ok(Some(_)) => {}
            _ => panic!("messages stopped arriving"),
        }
    }
}

#[test]
fn mesh_down_and_sigterm_mid_stream_finish_in_flight_work_and_resume_after_restart() {
    let (ha, hb) = (Home::new(), Home::new());
    let mut a = start(&ha, "alpha", 0);
    let mut b = start(&hb, "beta", 0);
    let (a_port, b_port) = (a.port(), b.port());
    let rt = runtime();
    rt.block_on(async {
        let c = common::client(&hb.path()).await;
        c.call(Request::Register {
            agent: AgentSpec {
                name: "bob".into(),
                kind: "other".into(),
                ..Default::default()
            },
            attach: false,
        })
        .await
        .unwrap();
    });
    ha.run(&["dial", &b.addr()]).ok();

    // 1. `mesh down` on the recipient while a stream comes in.
    let sender = rt.spawn(send_all(ha.path(), 1500));
    rt.block_on(wait_some(&hb.path(), 100));
    let down = hb.run(&["down"]);
    down.ok();
    assert!(down.stdout.contains("stopped node beta"), "{}", down.stdout);
    let status = b.child.wait_timeout(CMD_TIMEOUT).unwrap().expect("beta did not exit");
    assert!(status.success(), "a clean stop exits 0: {status}");
    let ids = rt.block_on(sender).unwrap();
    b = start(&hb, "beta", b_port);
    rt.block_on(wait_bob(&hb.path(), &ha.path(), &ids));
    assert_eq!(
        duplicates(&b),
        0.0,
        "the recipient's clean stop answered everything it stored"
    );

    // 2. SIGTERM to the sender while it delivers a stream (its client rides out the stop).
    let before = ids.len();
    let sender = rt.spawn(send_all(ha.path(), 1500));
    rt.block_on(wait_some(&hb.path(), 100));
    let pid = rustix::process::Pid::from_raw(a.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = a
        .child
        .wait_timeout(CMD_TIMEOUT)
        .unwrap()
        .expect("alpha did not exit after SIGTERM");
    assert!(status.success(), "SIGTERM stops cleanly: {status}");
    let log = std::fs::read_to_string(ha.path().with_extension("log")).unwrap();
    assert!(log.contains("terminated; stopping"), "the signal was handled");
    a = start(&ha, "alpha", a_port);
    let more = rt.block_on(sender).unwrap();
    let all: Vec<MessageId> = ids.iter().chain(&more).copied().collect();
    rt.block_on(wait_bob(&hb.path(), &ha.path(), &all));
    assert_eq!(
        duplicates(&b),
        0.0,
        "the sender's clean stop recorded every answer it got: nothing was sent twice"
    );
    eprintln!("shutdown: {} + {} messages, each once", before, more.len());
    drop(a);
}
