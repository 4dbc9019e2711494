//! What keeps messages from being lost or doubled when things go wrong between two calls:
//! repeated requests (a client retrying after a broken connection), topic messages gossip
//! never brought (a subscriber that was down), and a clean stop in the middle of traffic.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{TestNode, WAIT, wait_event};
use mesh_node::api::client::ClientError;
use mesh_node::api::{
    ErrorCode, Event, HistoryQuery, HistoryView, InboxQuery, PublishRequest, Request, Response, SendRequest, SendStatus,
};
use mesh_node::ids::MessageId;

fn send_req(from: &str, to: &str, text: &str, id: MessageId) -> Request {
    Request::Send(SendRequest {
        from: from.into(),
        to: to.into(),
        text: text.into(),
        reply_to: None,
        id: Some(id),
    })
}

fn publish_req(agent: &str, topic: &str, text: &str, id: Option<MessageId>) -> Request {
    Request::Publish(PublishRequest {
        agent: agent.into(),
        topic: topic.into(),
        text: text.into(),
        reply_to: None,
        id,
    })
}

async fn topic_history(n: &TestNode, topic: &str) -> Vec<HistoryView> {
    get!(
        n.call(Request::History(HistoryQuery {
            agent: None,
            target: Some(format!("#{topic}")),
            grep: None,
            limit: 10_000,
            before: None,
            after: None,
            forward: false,
            max_bytes: None,
        })),
        History
    )
    .entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_send_or_publish_with_its_id_is_one_message() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    b.register("bob").await;
    a.register("ann").await;
    a.dial(&b).await;

    // Remote: the repeat answers with the first receipt; bob has one message.
    let id = MessageId::new();
    let first = get!(a.call(send_req("alice", "bob@beta", "once", id)), Sent);
    assert_eq!(first.id, id);
    assert_eq!(first.status, SendStatus::Delivered);
    let again = get!(a.call(send_req("alice", "bob@beta", "once", id)), Sent);
    assert_eq!((again.id, again.status), (id, SendStatus::Delivered));
    let inbox = b.inbox("bob").await;
    assert_eq!(inbox.iter().map(|m| m.id).collect::<Vec<_>>(), vec![id]);

    // Local: the same.
    let lid = MessageId::new();
    get!(a.call(send_req("alice", "ann", "local once", lid)), Sent);
    get!(a.call(send_req("alice", "ann", "local once", lid)), Sent);
    assert_eq!(a.inbox("ann").await.len(), 1);

    // The id of another message (sent, received, or published) is refused, and nothing
    // is sent.
    for (req, what) in [
        (send_req("alice", "bob@beta", "different text", id), "other text"),
        (send_req("alice", "ann", "once", id), "other recipient"),
        (send_req("mallory", "bob@beta", "once", id), "other sender"),
        (send_req("bob", "ann@alpha", "x", id), "a received id"),
    ] {
        let on = if what == "a received id" { &b } else { &a };
        match on.call(req).await {
            Err(ClientError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::BadRequest, "{what}");
                assert!(
                    e.message.contains("already used by another message"),
                    "{what}: {}",
                    e.message
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(b.inbox("bob").await.is_empty(), "nothing more reached bob");
    assert!(a.inbox("ann").await.is_empty());

    // Publish: a repeat is one topic message on every node.
    b.call(Request::Subscribe {
        agent: "bob".into(),
        topic: "news".into(),
    })
    .await
    .unwrap();
    let pid = MessageId::new();
    let mut w = b.watch(&["bob"]).await;
    let p1 = get!(a.call(publish_req("alice", "news", "headline", Some(pid))), Published);
    wait_event(
        &mut w,
        "the topic message",
        |e| matches!(e, Event::Message(m) if m.id == pid),
    )
    .await;
    let p2 = get!(a.call(publish_req("alice", "news", "headline", Some(pid))), Published);
    assert_eq!((p1.id, p2.id), (pid, pid));
    match a
        .call(publish_req("alice", "news", "another headline", Some(pid)))
        .await
    {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("{other:?}"),
    }
    // The repeated copy reaches beta too and is dropped there: one entry on each side.
    get!(a.call(publish_req("alice", "news", "marker", None)), Published);
    wait_event(
        &mut w,
        "the marker",
        |e| matches!(e, Event::Message(m) if m.text == "marker"),
    )
    .await;
    for n in [&a, &b] {
        let h = topic_history(n, "news").await;
        assert_eq!(h.iter().filter(|x| x.id == pid).count(), 1, "{}", n.name);
    }
    assert_eq!(b.inbox("bob").await.iter().filter(|m| m.id == pid).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_is_answered_even_when_the_send_allowance_is_used_up() {
    // Two sends a minute (a burst of one): the first send and publish use the allowance.
    let a = TestNode::start_with(
        "alpha",
        &format!("[limits]\nagent_sends_per_minute = 2\n{}", common::FAST_CONFIG),
    )
    .await;
    a.register("ann").await;
    let (id, pid) = (MessageId::new(), MessageId::new());
    let first = get!(a.call(send_req("alice", "ann", "once", id)), Sent);
    // A new message is over the allowance...
    match a.call(send_req("alice", "ann", "new", MessageId::new())).await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::RateLimited),
        other => panic!("{other:?}"),
    }
    // ...a repeat of the one sent is not a new message: it gets its receipt.
    let again = get!(a.call(send_req("alice", "ann", "once", id)), Sent);
    assert_eq!((again.id, again.status), (first.id, first.status));
    assert_eq!(a.inbox("ann").await.len(), 1);
    // The same for a publish (carol has an allowance of her own).
    let p1 = get!(a.call(publish_req("carol", "news", "headline", Some(pid))), Published);
    match a.call(publish_req("carol", "news", "another", None)).await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::RateLimited),
        other => panic!("{other:?}"),
    }
    let p2 = get!(a.call(publish_req("carol", "news", "headline", Some(pid))), Published);
    assert_eq!(p1.id, p2.id);
    // An id taken by another message is refused as such, not as over the allowance.
    match a.call(send_req("alice", "ann", "other text", id)).await {
        Err(ClientError::Api(e)) => assert_eq!(e.code, ErrorCode::BadRequest, "{}", e.message),
        other => panic!("{other:?}"),
    }
}

/// Alpha publishes; gamma is always there (so gossip reaches someone and nothing is held
/// back for later); beta (started with `beta_config`) is down while `n` messages go by, and
/// must get each of them once, from alpha's log, within `wait` of its restart.
async fn missed_topic_messages_are_caught_up(beta_config: &str, n: usize, wait: Duration) {
    let a = TestNode::start("alpha").await;
    let mut b = TestNode::start_with("beta", beta_config).await;
    let c = TestNode::start("gamma").await;
    a.dial(&b).await;
    a.dial(&c).await;
    b.dial(&c).await;
    for (n, agent) in [(&b, "bob"), (&c, "carol")] {
        n.call(Request::Subscribe {
            agent: agent.into(),
            topic: "news".into(),
        })
        .await
        .unwrap();
    }
    let mut wc = c.watch(&["carol"]).await;
    let mut reached = 0;
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reached < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions never reached alpha"
        );
        let p = get!(a.call(publish_req("alice", "news", "warm-up", None)), Published);
        reached = p.peers_reached;
        before.push(p.id);
        wait_event(&mut wc, "warm-up", |e| matches!(e, Event::Message(m) if m.id == p.id)).await;
    }

    b.stop().await;
    let mut missed = Vec::new();
    for i in 0..n {
        let p = get!(
            a.call(publish_req("alice", "news", &format!("while beta was down {i}"), None)),
            Published
        );
        assert!(p.peers_reached >= 1, "gossip reached gamma");
        missed.push(p.id);
    }
    let last = *missed.last().unwrap();
    wait_event(
        &mut wc,
        "the last one at gamma",
        |e| matches!(e, Event::Message(m) if m.id == last),
    )
    .await;

    b.restart().await;
    // Beta gets every message it missed, once, from alpha's log.
    let mut wb = b.watch(&["bob"]).await;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let h = topic_history(&b, "news").await;
        if missed.iter().all(|id| h.iter().any(|x| x.id == *id)) {
            for id in missed.iter().chain(&before) {
                assert!(h.iter().filter(|x| x.id == *id).count() <= 1, "stored once");
            }
            break;
        }
        // Catch-up held back by an allowance raises no event when it resumes: look again
        // at least every second.
        match tokio::time::timeout(Duration::from_secs(1), wb.rx.recv()).await {
            _ if tokio::time::Instant::now() < deadline => {}
            _ => panic!(
                "beta caught up only {} of {}",
                missed.iter().filter(|id| h.iter().any(|x| x.id == **id)).count(),
                missed.len()
            ),
        }
    }
    let synced = b.daemon.as_ref().unwrap().node().metrics().topic_synced.get();
    assert!(
        synced >= missed.len() as u64,
        "fetched by catch-up, not gossip: {synced}"
    );
    let inbox = b.inbox("bob").await;
    for id in &missed {
        assert_eq!(inbox.iter().filter(|m| m.id == *id).count(), 1, "one inbox entry each");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_was_down_catches_up_from_the_publisher() {
    missed_topic_messages_are_caught_up(common::FAST_CONFIG, 30, WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_held_to_the_publishers_allowance_still_gets_everything() {
    // 60 topic messages a minute from one publisher, in bursts of 30: 40 missed ones take a
    // first round and then about ten seconds of refills, and none is skipped on the way.
    let config = format!("[limits]\npeer_topic_messages_per_minute = 60\n{}", common::FAST_CONFIG);
    missed_topic_messages_are_caught_up(&config, 40, Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_mid_stream_answers_what_it_stored_and_resumes_after_restart() {
    // No send limits (they have tests of their own), and a request timeout no slow
    // machine reaches: a duplicate below can only come from the stop.
    let config = r#"
[limits]
agent_sends_per_minute = 0
peer_messages_per_minute = 0
[presence]
heartbeat = "300ms"
[delivery]
retry_min = "50ms"
retry_max = "400ms"
send_wait = "3s"
request_timeout = "30s"
"#;
    let a = TestNode::start_with("alpha", config).await;
    let mut b = TestNode::start_with("beta", config).await;
    b.register("bob").await;
    a.dial(&b).await;

    // A stream of sends that does not wait for acks, so deliveries are in flight when
    // beta stops.
    let client = a.client.clone();
    let sender = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..400 {
            let id = MessageId::new();
            match client.call(send_req("alice", "bob@beta", &format!("m{i}"), id)).await {
                Ok(Response::Sent(_)) => ids.push(id),
                other => panic!("{other:?}"),
            }
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        ids
    });
    // Stop beta once some have arrived.
    let mut wb = b.watch(&["bob"]).await;
    let mut seen = 0;
    while seen < 40 {
        wait_event(&mut wb, "early messages", |e| matches!(e, Event::Message(_))).await;
        seen += 1;
    }
    drop(wb);
    b.stop().await;
    let ids = tokio::time::timeout(WAIT * 3, sender).await.unwrap().unwrap();
    b.restart().await;

    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut wb = b.watch(&["bob"]).await;
    loop {
        let all = b.whole_inbox("bob").await;
        if all.len() >= ids.len() {
            assert_eq!(
                all.iter().map(|m| m.id).collect::<Vec<_>>(),
                ids,
                "exactly once, in order"
            );
            break;
        }
        match tokio::time::timeout_at(deadline, wb.rx.recv()).await {
            Ok(Some(_)) => {}
            _ => panic!("only {} of {} arrived", all.len(), ids.len()),
        }
    }
    // Everything beta stored before it stopped was answered before it closed its
    // connections: the restarted beta was sent no message twice.
    let dups = b.daemon.as_ref().unwrap().node().metrics().dm_duplicates.get();
    assert_eq!(dups, 0, "messages delivered twice after a clean stop");
}

/// Unread counts of `agent` (never pushed + pushed).
async fn unread(n: &TestNode, agent: &str) -> u64 {
    match n.call(Request::Counts { agent: agent.into() }).await.unwrap() {
        Response::Counts { new, notified } => new + notified,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_reads_come_in_pages_that_fit_and_mark_only_what_they_return() {
    // Twenty 60 KB messages: 1.2 MB, more than one 1 MiB API frame holds.
    let n = TestNode::start("alpha").await;
    n.register("bob").await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let text = format!("{i:02} {}", "x".repeat(60_000));
        sent.push(n.send("ann", "bob", &text).await.id);
    }
    let frame = mesh_node::config::Limits::default().max_api_frame_bytes;
    let fits = |response: &Response| {
        let size = postcard::to_allocvec(&mesh_node::api::ServerFrame::Reply {
            id: u64::MAX,
            result: Ok(response.clone()),
        })
        .unwrap()
        .len();
        assert!(size <= frame, "an answer of {size} bytes, over the frame ({frame})");
    };
    let read = |after: Option<String>, mark_read: bool| {
        Request::Inbox(InboxQuery {
            agent: "bob".into(),
            all: false,
            limit: 100,
            mark_read,
            skip_notified: false,
            after,
            max_bytes: None,
        })
    };

    // Looking without marking pages through everything with the cursor.
    let mut peeked = Vec::new();
    let mut after = None;
    loop {
        let answer = n.call(read(after.take(), false)).await.unwrap();
        fits(&answer);
        let Response::Inbox(page) = answer else {
            panic!("{answer:?}")
        };
        assert!(!page.messages.is_empty());
        peeked.extend(page.messages.iter().map(|m| m.id));
        assert_eq!(page.remaining, (sent.len() - peeked.len()) as u64);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(peeked, sent, "every message once, in order");
    assert_eq!(unread(&n, "bob").await, 20, "looking marks nothing");

    // Reading with marking: each answer fits, and marks exactly what it returns.
    let mut shown = Vec::new();
    for call in 0.. {
        assert!(call < 40, "the inbox never emptied");
        let answer = n.call(read(None, true)).await;
        let left = unread(&n, "bob").await;
        let page = match &answer {
            Ok(r @ Response::Inbox(page)) => {
                fits(r);
                page.clone()
            }
            other => panic!("the inbox answered {other:?}; unread now: {left}"),
        };
        if page.messages.is_empty() {
            assert_eq!((page.remaining, page.next), (0, None));
            break;
        }
        assert!(page.messages.len() < sent.len(), "one answer cannot hold them all");
        shown.extend(page.messages.iter().map(|m| m.id));
        assert_eq!(left, (sent.len() - shown.len()) as u64, "after {} shown", shown.len());
        assert_eq!(page.remaining, left, "the page says how many wait");
    }
    assert_eq!(shown, sent, "every message once, in order");

    // A page asked to stay small still holds one message; a made-up cursor is refused.
    let small = get!(
        n.call(Request::Inbox(InboxQuery {
            agent: "bob".into(),
            all: true,
            limit: 100,
            mark_read: false,
            skip_notified: false,
            after: None,
            max_bytes: Some(1),
        })),
        Inbox
    );
    assert_eq!(small.messages.iter().map(|m| m.id).collect::<Vec<_>>(), sent[..1]);
    assert_eq!(small.remaining, 19);
    let e = n.call(read(Some("h12".into()), false)).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(a) if a.code == ErrorCode::BadRequest && a.message.contains("bad inbox cursor")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_no_frame_holds_any_more_is_refused_by_name_and_stays_unread() {
    // Stored under the default limits; the daemon then restarts with smaller ones.
    let mut n = TestNode::start("alpha").await;
    n.register("bob").await;
    let big = n.send("ann", "bob", &"x".repeat(60_000)).await.id;
    n.stop().await;
    let small = format!(
        "[limits]\nmax_message_bytes = 8192\nmax_topic_message_bytes = 8192\nmax_api_frame_bytes = 12288\n{}",
        common::FAST_CONFIG
    );
    std::fs::write(n.home.config_path(), small).unwrap();
    n.restart().await;
    let e = n
        .call(Request::Inbox(InboxQuery {
            agent: "bob".into(),
            all: false,
            limit: 10,
            mark_read: true,
            skip_notified: false,
            after: None,
            max_bytes: None,
        }))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Api(a) if a.code == ErrorCode::TooLarge
            && a.message.contains(&big.to_string())
            && a.message.contains("max_api_frame_bytes")),
        "{e}"
    );
    assert_eq!(unread(&n, "bob").await, 1, "nothing was marked read");
}
