//! A recipient offline for days, in simulated time: the wall clock of the nodes in this
//! process is moved forward (their timers and backoffs keep running in real time, so many
//! retry periods pass too). Within the time to live everything arrives, once and in order;
//! past it the sender sees dead letters and the recipient never gets them.
//!
//! Alone in its test binary: the clock it moves is the whole process's.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestNode, WAIT, eventually, wait_event};
use mesh_node::api::{Event, Request, SendStatus};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_for_days_gets_everything_within_the_ttl_and_dead_letters_past_it() {
    // The default time to live (7 days) and fast retries (50 ms doubling to 400 ms).
    let a = TestNode::start("alpha").await;
    let mut b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    b.stop().await;

    let mut ids = Vec::new();
    for i in 0..20 {
        let r = a.send("alice", "bob@beta", &format!("while away {i}")).await;
        assert!(matches!(r.status, SendStatus::Queued { .. }), "{:?}", r.status);
        ids.push(r.id);
    }
    // Many retry periods go by (the courier keeps trying to reach beta)...
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...and six days and 23 hours.
    mesh_node::ids::advance_clock_for_tests(6 * DAY + Duration::from_secs(23 * 3600));
    // A sweep for expired messages runs at least every 10 s: give it its chance to err.
    tokio::time::sleep(mesh_node::courier::SWEEP_MAX + Duration::from_secs(1)).await;
    let outbox = get!(
        a.call(Request::Outbox {
            agent: None,
            delivered: false,
            limit: 100,
        }),
        Outbox
    );
    assert_eq!(outbox.len(), 20);
    assert!(
        outbox.iter().all(|e| e.state == "pending"),
        "still within the time to live"
    );

    b.restart().await;
    let got = eventually("everything to arrive", || async {
        let got: Vec<_> = b.whole_inbox("bob").await.iter().map(|m| m.id).collect();
        (got.len() >= ids.len()).then_some(got)
    })
    .await;
    assert_eq!(got, ids, "everything, once, in order");
    // ...and the sender knows (it learns from the recipient's answers, or from a repeat the
    // recipient answers again if an answer was lost).
    eventually("the sender to see every message delivered", || async {
        let out = get!(
            a.call(Request::Outbox {
                agent: None,
                delivered: true,
                limit: 100,
            }),
            Outbox
        );
        (out.len() == 20 && out.iter().all(|e| e.state == "delivered")).then_some(())
    })
    .await;
    // Settled: read the inbox again, still once each (a delivery repeated while the sender
    // settled would show here).
    let again: Vec<_> = b.whole_inbox("bob").await.iter().map(|m| m.id).collect();
    assert_eq!(again, ids, "after settling: everything, once, in order");

    // Away again; this time for more than the time to live.
    b.stop().await;
    let mut aw = a.watch(&["alice"]).await;
    let mut late = Vec::new();
    for i in 0..10 {
        late.push(a.send("alice", "bob@beta", &format!("too late {i}")).await.id);
    }
    mesh_node::ids::advance_clock_for_tests(8 * DAY);
    let mut dead = Vec::new();
    while dead.len() < late.len() {
        let e = wait_event(&mut aw, "dead letters", |e| matches!(e, Event::DeadLetter { .. })).await;
        if let Event::DeadLetter { id, reason, .. } = e {
            assert!(reason.contains("time to live"), "{reason}");
            dead.push(id);
        }
    }
    dead.sort();
    let mut want = late.clone();
    want.sort();
    assert_eq!(dead, want, "the dead letters are the late messages, each once");
    let outbox = get!(
        a.call(Request::Outbox {
            agent: None,
            delivered: false,
            limit: 100,
        }),
        Outbox
    );
    assert_eq!(outbox.iter().filter(|e| e.state == "dead").count(), 10);

    // Beta comes back: a fresh message arrives, the dead ones never do (they would have
    // come first: one sender's messages arrive in order).
    b.restart().await;
    let mut w = b.watch(&["bob"]).await;
    let fresh = a.send("alice", "bob@beta", "after the storm").await.id;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let inbox = b.inbox("bob").await;
        assert!(
            inbox.iter().all(|m| !late.contains(&m.id)),
            "a dead letter was delivered"
        );
        if inbox.iter().any(|m| m.id == fresh) {
            break;
        }
        match tokio::time::timeout_at(deadline, w.rx.recv()).await {
            Ok(Some(_)) => {}
            _ => panic!("the fresh message never arrived"),
        }
    }
    // Settled (nothing pending at the sender, only the dead letters): the whole inbox once
    // more, exactly the first twenty and the fresh one.
    eventually("the sender to settle", || async {
        let out = get!(
            a.call(Request::Outbox {
                agent: None,
                delivered: false,
                limit: 100,
            }),
            Outbox
        );
        out.iter().all(|e| e.state == "dead").then_some(())
    })
    .await;
    let again: Vec<_> = b.whole_inbox("bob").await.iter().map(|m| m.id).collect();
    let want: Vec<_> = ids.iter().copied().chain([fresh]).collect();
    assert_eq!(again, want, "after settling: once each, no dead letter");
}
