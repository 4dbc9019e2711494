use super::*;
use crate::ids::{AgentName, MessageId, TopicName};
use crate::wire::{Outcome, Rejection, TopicEnvelope, WireMessage};
use libp2p::PeerId;

fn q(limit: usize, all: bool, mark_read: bool) -> ops::InboxQuery {
    ops::InboxQuery {
        limit,
        all,
        skip_notified: false,
        mark_read,
        after: None,
    }
}

/// A whole inbox read with no page budget.
fn take(t: &redb::WriteTransaction, agent: &AgentName, q: ops::InboxQuery) -> Result<Vec<InboxEntry>, StoreError> {
    ops::take_inbox(t, agent, q, &mut |_| true, &mut shown()).map(|p| p.entries)
}

/// What reading collects on a node whose messages come from elsewhere (sending receipts).
fn shown() -> ops::Shown {
    ops::Shown::new(PeerId::random(), true, 7)
}

fn name(s: &str) -> AgentName {
    AgentName::new(s).unwrap()
}

fn wire(from: &str, to: &str, text: &str) -> WireMessage {
    WireMessage {
        id: MessageId::new(),
        from: name(from),
        to: name(to),
        sent_at_ms: 1,
        reply_to: None,
        text: text.into(),
    }
}

async fn with_agent(store: &Store, a: &str) {
    let a = name(a);
    store
        .write("agent", move |t| ops::ensure_agent(t, &a, "human", 1))
        .await
        .unwrap();
}

#[tokio::test]
async fn reopens_with_data_and_refuses_foreign_or_damaged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    let me = PeerId::random();
    {
        let store = Store::open(&path, me).unwrap();
        with_agent(&store, "alice").await;
        // A second open of the same file while in use is refused.
        assert!(matches!(Store::open(&path, me), Err(StoreError::Locked(_))));
    }
    // The writer thread holds the database until its channel closes; wait for the lock.
    let store = wait_open(&path, me).await;
    let agents = store.read(ops::agents).await.unwrap();
    assert_eq!(agents.len(), 1);
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let other = PeerId::random();
    let err = wait_open_err(&path, other).await;
    assert!(matches!(err, StoreError::Foreign { .. }), "{err}");

    let junk = tmp.path().join("junk.redb");
    std::fs::write(&junk, vec![7u8; 8192]).unwrap();
    let err = Store::open(&junk, me).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("move the file aside"), "{err}");
    // Nothing was changed.
    assert_eq!(std::fs::read(&junk).unwrap(), vec![7u8; 8192]);
}

async fn wait_open(path: &std::path::Path, me: PeerId) -> Store {
    for _ in 0..100 {
        match Store::open(path, me) {
            Ok(s) => return s,
            Err(StoreError::Locked(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("store stayed locked");
}

async fn wait_open_err(path: &std::path::Path, me: PeerId) -> StoreError {
    for _ in 0..100 {
        match Store::open(path, me) {
            Err(StoreError::Locked(_)) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            Err(e) => return e,
            Ok(_) => panic!("opened a foreign store"),
        }
    }
    panic!("store stayed locked");
}

#[tokio::test]
async fn close_releases_the_file_while_handles_remain() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    let me = PeerId::random();
    let store = Store::open(&path, me).unwrap();
    with_agent(&store, "alice").await;
    let kept = store.clone();
    store.close().await;
    // A task still holding the old store (as after a daemon's stop) does not keep the file:
    // a new daemon in the same process opens it at once and finds the committed write.
    let again = Store::open(&path, me).expect("released by close");
    assert_eq!(again.read(ops::agents).await.unwrap().len(), 1);
    let err = kept.read(ops::agents).await.unwrap_err();
    assert!(err.to_string().contains("closed"), "{err}");
    assert!(matches!(kept.write("agent", |_| Ok(())).await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn outbox_keeps_send_order_and_settles() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    let peer = PeerId::random();
    let mut ids = Vec::new();
    for i in 0..5 {
        let m = wire("alice", "bob", &format!("m{i}"));
        ids.push(m.id);
        store
            .write("enqueue", move |t| ops::enqueue(t, m, peer, None, 10))
            .await
            .unwrap();
    }
    let batch = store.read(move |r| ops::pending_batch(r, &peer, 3)).await.unwrap();
    assert_eq!(batch.iter().map(|e| e.msg.id).collect::<Vec<_>>(), ids[..3]);
    assert_eq!(store.read(ops::pending_peers).await.unwrap(), vec![(peer, 5)]);

    let outcomes = vec![
        (batch[0].seq, Outcome::Stored),
        (batch[1].seq, Outcome::Duplicate),
        (batch[2].seq, Outcome::Rejected(Rejection::UnknownAgent)),
    ];
    let settled = store
        .write("settle", move |t| ops::settle(t, outcomes, 20))
        .await
        .unwrap();
    assert_eq!(settled.len(), 3);
    assert!(matches!(settled[2].state, OutState::Dead { .. }));
    let rest = store.read(move |r| ops::pending_batch(r, &peer, 10)).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.msg.id).collect::<Vec<_>>(), ids[3..]);
    // Listing without delivered entries shows pending and dead ones.
    let listed = store.read(|r| ops::outbox(r, None, false, 100)).await.unwrap();
    assert_eq!(listed.len(), 3);

    // Expiry: the remaining two are older than a 5 ms TTL at t=100.
    let dead = store.write("expire", |t| ops::expire(t, 100, 5)).await.unwrap();
    assert_eq!(dead.len(), 2);
    assert!(
        store
            .read(move |r| ops::pending_batch(r, &peer, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn inbound_batches_are_deduplicated_and_checked() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    with_agent(&store, "bob").await;
    let from = PeerId::random();
    let a = wire("alice", "bob", "one");
    let b = wire("alice", "nobody", "two");
    let c = wire("alice", "bob", "   ");
    let d = wire("alice", "bob", &"x".repeat(100));
    let batch = vec![a.clone(), b, c, d, a.clone()];
    let (outcomes, stored) = store
        .write("accept", move |t| ops::accept(t, from, None, batch, 50, 5))
        .await
        .unwrap();
    let kinds: Vec<_> = outcomes.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(kinds[0], Outcome::Stored);
    assert_eq!(kinds[1], Outcome::Rejected(Rejection::UnknownAgent));
    assert!(matches!(kinds[2], Outcome::Rejected(Rejection::Invalid(_))));
    assert_eq!(kinds[3], Outcome::Rejected(Rejection::TooLarge(50)));
    assert_eq!(kinds[4], Outcome::Duplicate);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].from.node, from);

    // A retry of the same message later is a duplicate too.
    let again = vec![a];
    let (outcomes, stored) = store
        .write("accept", move |t| ops::accept(t, from, None, again, 50, 6))
        .await
        .unwrap();
    assert_eq!(outcomes[0].1, Outcome::Duplicate);
    assert!(stored.is_empty());
}

#[tokio::test]
async fn inbox_reads_unread_oldest_first_and_marks_read() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    with_agent(&store, "bob").await;
    let from = PeerId::random();
    let msgs: Vec<_> = (0..4).map(|i| wire("alice", "bob", &format!("m{i}"))).collect();
    let sent = msgs.clone();
    store
        .write("accept", move |t| ops::accept(t, from, None, sent, 1000, 5))
        .await
        .unwrap();
    let bob = name("bob");
    let b = bob.clone();
    let first = store
        .write("inbox", move |t| take(t, &b, q(2, false, true)))
        .await
        .unwrap();
    assert_eq!(first.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["m0", "m1"]);
    let b = bob.clone();
    let rest = store
        .write("inbox", move |t| take(t, &b, q(10, false, true)))
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["m2", "m3"]);
    let b = bob.clone();
    let none = store
        .write("inbox", move |t| take(t, &b, q(10, false, true)))
        .await
        .unwrap();
    assert!(none.is_empty());
    let b = bob.clone();
    let all = store
        .write("inbox", move |t| take(t, &b, q(3, true, false)))
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["m1", "m2", "m3"]
    );
    let err = store
        .write("inbox", |t| take(t, &name("ghost"), q(3, false, true)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent(_)));
}

#[tokio::test]
async fn topic_messages_reach_subscribers_once() {
    let me = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    for a in ["alice", "bob", "carol"] {
        with_agent(&store, a).await;
    }
    let topic = TopicName::new("build").unwrap();
    for a in ["alice", "bob"] {
        let (a, t) = (name(a), topic.clone());
        assert!(
            store
                .write("sub", move |tx| ops::subscribe(tx, &a, &t, 1))
                .await
                .unwrap()
        );
    }
    let env = TopicEnvelope {
        id: MessageId::new(),
        topic: topic.clone(),
        from: name("alice"),
        sent_at_ms: 1,
        reply_to: None,
        text: "green".into(),
    };
    let e = env.clone();
    let (rec, delivered) = store
        .write("pub", move |t| ops::record_topic(t, e, me, None, true, 0, 5))
        .await
        .unwrap()
        .unwrap();
    // The author does not get its own message; bob does; carol is not subscribed.
    assert_eq!(delivered.iter().map(|e| e.agent.as_str()).collect::<Vec<_>>(), ["bob"]);
    let t = topic.clone();
    assert_eq!(store.read(move |r| ops::topic_pending(r, &t)).await.unwrap().len(), 1);
    let t = topic.clone();
    store
        .write("reached", move |tx| ops::topic_reached(tx, &t, rec.seq, 2))
        .await
        .unwrap();
    let t = topic.clone();
    assert!(store.read(move |r| ops::topic_pending(r, &t)).await.unwrap().is_empty());
    // The same message again (gossip echo) is ignored.
    let again = store
        .write("pub", move |t| ops::record_topic(t, env, me, None, false, 0, 6))
        .await
        .unwrap();
    assert!(again.is_none());
    // Same text, new id: a second message.
    let env2 = TopicEnvelope {
        id: MessageId::new(),
        topic: topic.clone(),
        from: name("alice"),
        sent_at_ms: 1,
        reply_to: None,
        text: "green".into(),
    };
    assert!(
        store
            .write("pub", move |t| ops::record_topic(t, env2, me, None, false, 0, 7))
            .await
            .unwrap()
            .is_some()
    );
    let f = ops::HistoryFilter {
        topic: Some(topic),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        store
            .read(move |r| ops::history(r, &f, &mut |_| true))
            .await
            .unwrap()
            .rows
            .len(),
        2
    );
}

#[tokio::test]
async fn an_inbox_page_ends_at_its_budget_marks_only_what_it_returns_and_continues_after_its_cursor() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    with_agent(&store, "bob").await;
    let from = PeerId::random();
    let msgs: Vec<_> = (0..5).map(|i| wire("alice", "bob", &format!("m{i}"))).collect();
    store
        .write("accept", move |t| ops::accept(t, from, None, msgs, 1000, 5))
        .await
        .unwrap();
    let bob = name("bob");
    // Room for two: the page holds two, the three others are left unread and counted.
    let b = bob.clone();
    let page = store
        .write("inbox", move |t| {
            let mut room = 2;
            ops::take_inbox(
                t,
                &b,
                q(10, false, true),
                &mut |_| {
                    room -= 1;
                    room >= 0
                },
                &mut shown(),
            )
        })
        .await
        .unwrap();
    let texts = |p: &ops::InboxPage| p.entries.iter().map(|e| e.text.clone()).collect::<Vec<_>>();
    assert_eq!(texts(&page), ["m0", "m1"]);
    assert_eq!(page.remaining, 3);
    assert_eq!(store.read(|r| ops::unread_counts(r, "bob")).await.unwrap(), (3, 0));
    // Nothing admitted: nothing returned, nothing marked.
    let b = bob.clone();
    let none = store
        .write("inbox", move |t| {
            ops::take_inbox(t, &b, q(10, false, true), &mut |_| false, &mut shown())
        })
        .await
        .unwrap();
    assert!(none.entries.is_empty());
    assert_eq!(none.remaining, 3);
    assert_eq!(store.read(|r| ops::unread_counts(r, "bob")).await.unwrap(), (3, 0));
    // Without marking, a page continues after the last entry of the one before.
    let b = bob.clone();
    let peek = store
        .read(move |r| ops::peek_inbox(r, &b, q(1, false, false), &mut |_| true))
        .await
        .unwrap();
    assert_eq!((texts(&peek), peek.remaining), (vec!["m2".to_string()], 2));
    let (b, after) = (bob.clone(), peek.entries[0].seq);
    let next = store
        .read(move |r| {
            let q = ops::InboxQuery {
                after: Some(after),
                ..q(10, false, false)
            };
            ops::peek_inbox(r, &b, q, &mut |_| true)
        })
        .await
        .unwrap();
    assert_eq!(
        (texts(&next), next.remaining),
        (vec!["m3".to_string(), "m4".to_string()], 0)
    );
    // All of it: the newest three, read forward from the oldest of them.
    let b = bob.clone();
    let window = store
        .read(move |r| ops::peek_inbox(r, &b, q(3, true, false), &mut |_| true))
        .await
        .unwrap();
    assert_eq!(texts(&window), ["m2", "m3", "m4"]);
    let b = bob.clone();
    let first = store
        .read(move |r| {
            let mut room = 1;
            ops::peek_inbox(r, &b, q(3, true, false), &mut |_| {
                room -= 1;
                room >= 0
            })
        })
        .await
        .unwrap();
    assert_eq!((texts(&first), first.remaining), (vec!["m2".to_string()], 2));
}

#[tokio::test]
async fn history_pages_back_and_forward_in_recording_order_across_its_tables() {
    let me = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    for a in ["ann", "bob"] {
        with_agent(&store, a).await;
    }
    let topic = TopicName::new("ops").unwrap();
    let t = topic.clone();
    store
        .write("sub", move |tx| ops::subscribe(tx, &name("bob"), &t, 1))
        .await
        .unwrap();
    // Interleaved: local direct messages (an outbox and an inbox row each), received ones,
    // topic messages; times out of order, which history does not follow.
    let mut expected = Vec::new();
    for i in 0..4u64 {
        let m = wire("ann", "bob", &format!("d{i}"));
        expected.push(format!("d{i}"));
        expected.push(format!("d{i}"));
        store
            .write("send", move |t| ops::send_local(t, m, me, None, 100 - i))
            .await
            .unwrap();
        let env = TopicEnvelope {
            id: MessageId::new(),
            topic: topic.clone(),
            from: name("carl"),
            sent_at_ms: 1,
            reply_to: None,
            text: format!("t{i}"),
        };
        expected.push(format!("t{i}"));
        store
            .write("topic", move |t| {
                ops::record_topic(t, env, PeerId::random(), None, false, 0, 50)
            })
            .await
            .unwrap();
        let m = wire("dora", "ann", &format!("r{i}"));
        expected.push(format!("r{i}"));
        store
            .write("accept", move |t| {
                ops::accept(t, PeerId::random(), None, vec![m], 1000, 7)
            })
            .await
            .unwrap();
    }
    let read = |f: ops::HistoryFilter, room: usize| {
        let store = store.clone();
        async move {
            store
                .read(move |r| {
                    let mut room = room;
                    ops::history(r, &f, &mut |_| {
                        room = room.wrapping_sub(1);
                        room != usize::MAX
                    })
                })
                .await
                .unwrap()
        }
    };
    let texts = |p: &ops::HistoryPage| {
        p.rows
            .iter()
            .map(|r| match r {
                HistoryRow::Received(e) => e.text.clone(),
                HistoryRow::Sent(e) => e.msg.text.clone(),
                HistoryRow::Topic(t) => t.envelope.text.clone(),
            })
            .collect::<Vec<_>>()
    };
    let all = ops::HistoryFilter {
        limit: 1000,
        ..Default::default()
    };
    let whole = read(all.clone(), usize::MAX).await;
    assert_eq!(texts(&whole), expected, "the order things were recorded in");
    assert!(!whole.older && !whole.newer);

    // Back in time, five at a time, until nothing is older: everything, once.
    let mut back = Vec::new();
    let mut before = None;
    loop {
        let page = read(ops::HistoryFilter { before, ..all.clone() }, 5).await;
        assert!(page.rows.len() == 5 || !page.older);
        back.splice(0..0, texts(&page));
        if !page.older {
            break;
        }
        before = Some(page.rows[0].seq());
    }
    assert_eq!(back, expected);

    // Forward through the newest ten, three at a time.
    let newest = ops::HistoryFilter {
        limit: 10,
        forward: true,
        ..all.clone()
    };
    let first = read(newest.clone(), 3).await;
    assert!(first.older && first.newer);
    let mut fwd = texts(&first);
    let mut after = first.rows.last().map(|r| r.seq());
    while fwd.len() < 10 {
        let page = read(
            ops::HistoryFilter {
                after,
                limit: 10 - fwd.len(),
                ..newest.clone()
            },
            3,
        )
        .await;
        fwd.extend(texts(&page));
        after = page.rows.last().map(|r| r.seq());
        assert_eq!(page.newer, fwd.len() < 10);
    }
    assert_eq!(fwd, expected[expected.len() - 10..]);

    // Filters hold across the tables: bob's own (his inbox and his topic), a topic, a peer.
    let bob = read(
        ops::HistoryFilter {
            agent: Some(name("bob")),
            ..all.clone()
        },
        usize::MAX,
    )
    .await;
    assert_eq!(texts(&bob), ["d0", "t0", "d1", "t1", "d2", "t2", "d3", "t3"]);
    let ops_topic = read(
        ops::HistoryFilter {
            topic: Some(TopicName::new("ops").unwrap()),
            before: Some(whole.rows[9].seq()),
            ..all.clone()
        },
        usize::MAX,
    )
    .await;
    assert_eq!(texts(&ops_topic), ["t0", "t1"]);
    let dora = read(
        ops::HistoryFilter {
            with: Some((name("dora"), None)),
            grep: Some("R3".into()),
            ..all.clone()
        },
        usize::MAX,
    )
    .await;
    assert_eq!(texts(&dora), ["r3"]);
    // Bounds that hold nothing.
    let empty = read(
        ops::HistoryFilter {
            before: Some(0),
            ..all.clone()
        },
        usize::MAX,
    )
    .await;
    assert!(empty.rows.is_empty() && !empty.older && !empty.newer);
}

#[tokio::test]
async fn concurrent_writes_are_grouped_and_all_committed() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    let peer = PeerId::random();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let m = wire("alice", "bob", &format!("m{i}"));
            s.write("enqueue", move |t| ops::enqueue(t, m, peer, None, 1)).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let n = store.read(ops::stats).await.unwrap().pending;
    assert_eq!(n, 200);
}

#[tokio::test]
async fn a_failed_job_leaves_nothing_behind() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    let err = store
        .write("send", |t| {
            ops::send_local(t, wire("alice", "ghost", "hi"), PeerId::random(), None, 1)
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent(_)));
    let stats = store.read(ops::stats).await.unwrap();
    assert_eq!(stats.outbox, 0);
}

#[tokio::test]
async fn pushed_messages_are_unread_until_shown() {
    let store = Store::in_memory(PeerId::random()).unwrap();
    with_agent(&store, "bob").await;
    let from = PeerId::random();
    let msgs: Vec<_> = (0..3).map(|i| wire("alice", "bob", &format!("m{i}"))).collect();
    let ids: Vec<_> = msgs.iter().map(|m| m.id).collect();
    store
        .write("accept", move |t| ops::accept(t, from, None, msgs, 1000, 5))
        .await
        .unwrap();
    let bob = name("bob");
    let (b, pushed) = (bob.clone(), vec![ids[0]]);
    let n = store
        .write("notify", move |t| {
            ops::mark_ids(t, &b, &pushed, ReadState::Notified, &mut shown())
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.read(|r| ops::unread_counts(r, "bob")).await.unwrap(), (2, 1));
    // Without pushed ones: the two never pushed, now read.
    let b = bob.clone();
    let fresh = store
        .write("inbox", move |t| {
            take(
                t,
                &b,
                ops::InboxQuery {
                    limit: 10,
                    all: false,
                    skip_notified: true,
                    mark_read: true,
                    after: None,
                },
            )
        })
        .await
        .unwrap();
    assert_eq!(fresh.iter().map(|e| e.id).collect::<Vec<_>>(), ids[1..]);
    assert_eq!(store.read(|r| ops::unread_counts(r, "bob")).await.unwrap(), (0, 1));
    // The pushed one is still unread and listed when asked for.
    let b = bob.clone();
    let rest = store
        .write("inbox", move |t| take(t, &b, q(10, false, true)))
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), ids[..1]);
    assert_eq!(rest[0].state, ReadState::Notified);
    assert_eq!(store.read(|r| ops::unread_counts(r, "bob")).await.unwrap(), (0, 0));
    // Read never goes back to notified.
    let (b, again) = (bob.clone(), vec![ids[0]]);
    let n = store
        .write("notify", move |t| {
            ops::mark_ids(t, &b, &again, ReadState::Notified, &mut shown())
        })
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_client_chosen_id_is_one_message_or_refused() {
    let me = PeerId::random();
    let peer = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "alice").await;
    let m = wire("alice", "bob", "hello");
    let (m1, m2) = (m.clone(), m.clone());
    let first = store
        .write("send", move |t| {
            assert!(ops::sent_before(t, &m1, &peer)?.is_none());
            ops::enqueue(t, m1, peer, None, 1)
        })
        .await
        .unwrap();
    // The same message again is recognised...
    let again = store
        .write("send", move |t| ops::sent_before(t, &m2, &peer))
        .await
        .unwrap()
        .expect("a repeat");
    assert_eq!(again.seq, first.seq);
    // ...anything else under its id is refused, before writing.
    for other in [
        WireMessage {
            text: "other".into(),
            ..m.clone()
        },
        WireMessage {
            to: name("carol"),
            ..m.clone()
        },
        WireMessage {
            from: name("mallory"),
            ..m.clone()
        },
    ] {
        let err = store
            .write("send", move |t| ops::sent_before(t, &other, &peer))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::IdTaken(_)), "{err}");
    }
    let m3 = m.clone();
    let other_node = PeerId::random();
    let err = store
        .write("send", move |t| ops::sent_before(t, &m3, &other_node))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdTaken(_)));
    // An id taken by a received message cannot be used to send, nor a sent one to publish.
    let got = wire("bob", "alice", "in");
    let gid = got.id;
    store
        .write("recv", move |t| ops::accept(t, peer, None, vec![got], 1000, 1))
        .await
        .unwrap();
    let reuse = WireMessage {
        id: gid,
        ..wire("alice", "bob", "x")
    };
    let err = store
        .write("send", move |t| ops::sent_before(t, &reuse, &peer))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdTaken(_)));
    let env = TopicEnvelope {
        id: m.id,
        topic: TopicName::new("t").unwrap(),
        from: name("alice"),
        sent_at_ms: 1,
        reply_to: None,
        text: "hello".into(),
    };
    let err = store
        .write("pub", move |t| ops::published_before(t, &env))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IdTaken(_)));
}

fn envelope(topic: &str, from: &str, sent_at_ms: u64, text: &str) -> TopicEnvelope {
    TopicEnvelope {
        id: MessageId::new(),
        topic: TopicName::new(topic).unwrap(),
        from: name(from),
        sent_at_ms,
        reply_to: None,
        text: text.into(),
    }
}

#[tokio::test]
async fn catch_up_serves_own_publications_after_a_position_and_since_a_time() {
    let me = PeerId::random();
    let other = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "alice").await;
    // Interleaved: our publications on two topics, and someone else's on ours.
    let mut mine = Vec::new();
    for i in 0..10u64 {
        let e = envelope("news", "alice", 100 + i, &format!("mine {i}"));
        mine.push(e.id);
        store
            .write("pub", move |t| ops::record_topic(t, e, me, None, true, 1, 1))
            .await
            .unwrap();
        let theirs = envelope("news", "zed", 100 + i, "theirs");
        store
            .write("recv", move |t| ops::record_topic(t, theirs, other, None, false, 0, 1))
            .await
            .unwrap();
        let elsewhere = envelope("sport", "alice", 100 + i, "elsewhere");
        store
            .write("pub", move |t| ops::record_topic(t, elsewhere, me, None, true, 1, 1))
            .await
            .unwrap();
    }
    let news = TopicName::new("news").unwrap();
    // Everything of ours on the topic, in order, and only that.
    let t = news.clone();
    let (ids, next, more) = store
        .read(move |r| ops::own_publications(r, &t, 0, 0, 100, 1000))
        .await
        .unwrap();
    assert_eq!(ids, mine);
    assert!(!more);
    // Nothing after the position it reported.
    let t = news.clone();
    let (ids, next2, more) = store
        .read(move |r| ops::own_publications(r, &t, next, 0, 100, 1000))
        .await
        .unwrap();
    assert!(ids.is_empty() && !more);
    assert_eq!(next2, next);
    // Pages: three ids at a time, then the rest; no id twice, none missed.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let t = news.clone();
        let (ids, next, more) = store
            .read(move |r| ops::own_publications(r, &t, after, 0, 3, 1000))
            .await
            .unwrap();
        assert!(ids.len() <= 3);
        paged.extend(ids);
        after = next;
        if !more {
            break;
        }
    }
    assert_eq!(paged, mine);
    // A scan limit stops early without skipping anything.
    let t = news.clone();
    let (ids, next, more) = store
        .read(move |r| ops::own_publications(r, &t, 0, 0, 100, 4))
        .await
        .unwrap();
    assert!(more && ids.len() == 2, "{ids:?}");
    let t = news.clone();
    let (rest, _, _) = store
        .read(move |r| ops::own_publications(r, &t, next, 0, 100, 1000))
        .await
        .unwrap();
    assert_eq!([ids, rest].concat(), mine);
    // Since a time (the subscriber's subscription).
    let t = news.clone();
    let (ids, _, _) = store
        .read(move |r| ops::own_publications(r, &t, 0, 105, 100, 1000))
        .await
        .unwrap();
    assert_eq!(ids, mine[5..]);
    // A position past the end of the log (taken before this store was restored from an
    // older copy) starts over rather than skipping what comes next.
    let t = news.clone();
    let (ids, _, _) = store
        .read(move |r| ops::own_publications(r, &t, next + 1000, 0, 100, 1000))
        .await
        .unwrap();
    assert_eq!(ids, mine);
    // Fetch by id: ours on that topic only, in the order asked, within the text budget.
    let (t, want) = (news.clone(), vec![mine[3], MessageId::new(), mine[1]]);
    let got = store
        .read(move |r| ops::own_publications_by_id(r, &t, &want, 1 << 20))
        .await
        .unwrap();
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![mine[3], mine[1]]);
    let (t, want) = (news.clone(), mine.clone());
    let got = store
        .read(move |r| ops::own_publications_by_id(r, &t, &want, 12))
        .await
        .unwrap();
    assert_eq!(got.len(), 2, "\"mine N\" is 6 bytes: two fit in 12");
    let (t, want) = (TopicName::new("sport").unwrap(), vec![mine[0]]);
    assert!(
        store
            .read(move |r| ops::own_publications_by_id(r, &t, &want, 1 << 20))
            .await
            .unwrap()
            .is_empty()
    );
    // Which of these ids are not stored here.
    let fresh = MessageId::new();
    let ids = vec![mine[0], fresh];
    assert_eq!(
        store.read(move |r| ops::unknown_ids(r, &ids)).await.unwrap(),
        vec![fresh]
    );
}

#[tokio::test]
async fn subscriptions_remember_when_they_began_and_cursors_persist() {
    let me = PeerId::random();
    let peer = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "alice").await;
    with_agent(&store, "bob").await;
    let t = TopicName::new("news").unwrap();
    let (a, tt) = (name("alice"), t.clone());
    store
        .write("sub", move |tx| ops::subscribe(tx, &a, &tt, 5))
        .await
        .unwrap();
    let since = store.read(ops::subscribed_topics).await.unwrap();
    assert_eq!(since.len(), 1);
    let began = since[0].1;
    assert_eq!(began, 5, "when the first subscriber came");
    // A second subscriber does not move the start; the last one leaving ends it.
    let (b, tt) = (name("bob"), t.clone());
    store
        .write("sub", move |tx| ops::subscribe(tx, &b, &tt, 9))
        .await
        .unwrap();
    assert_eq!(store.read(ops::subscribed_topics).await.unwrap()[0].1, began);
    let (a, tt) = (name("alice"), t.clone());
    store
        .write("unsub", move |tx| ops::unsubscribe(tx, &a, &tt))
        .await
        .unwrap();
    assert_eq!(store.read(ops::subscribed_topics).await.unwrap().len(), 1);
    let (b, tt) = (name("bob"), t.clone());
    store
        .write("unsub", move |tx| ops::unsubscribe(tx, &b, &tt))
        .await
        .unwrap();
    assert!(store.read(ops::subscribed_topics).await.unwrap().is_empty());

    let tt = t.clone();
    assert_eq!(
        store.read(move |r| ops::sync_cursor(r, &peer, &tt)).await.unwrap(),
        SyncCursor::default()
    );
    let c = SyncCursor { log: 7, after: 42 };
    let tt = t.clone();
    store
        .write("cursor", move |tx| ops::set_sync_cursor(tx, &peer, &tt, c))
        .await
        .unwrap();
    let tt = t.clone();
    assert_eq!(store.read(move |r| ops::sync_cursor(r, &peer, &tt)).await.unwrap(), c);
    assert_ne!(store.read(ops::log_id).await.unwrap(), 0);
}

#[tokio::test]
async fn a_damaged_file_is_refused_at_open_and_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store.redb");
    let me = PeerId::random();
    let marker = "find-this-record-in-the-file";
    {
        let store = Store::open(&path, me).unwrap();
        with_agent(&store, "bob").await;
        for i in 0..200 {
            let m = wire("x", "bob", &format!("{marker} {i} {}", "z".repeat(100)));
            store
                .write("recv", move |t| {
                    ops::accept(t, PeerId::random(), None, vec![m], 100_000, 1)
                })
                .await
                .unwrap();
        }
        store.close().await;
    }
    // Closed and dropped: the file is complete and marked clean.
    let good = std::fs::read(&path).unwrap();
    // Records' bytes damaged (a bad sector, a stray write). The file keeps older copies
    // of pages too (copy on write): every copy is damaged, so the live one is.
    let spots: Vec<usize> = good
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(!spots.is_empty(), "records in the file");
    let mut bad = good.clone();
    for &at in &spots {
        for b in &mut bad[at..at + 8] {
            *b ^= 0x5a;
        }
    }
    let bad_path = tmp.path().join("bad.redb");
    std::fs::write(&bad_path, &bad).unwrap();
    let err = Store::open(&bad_path, me).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("mv "), "says how to recover: {err}");
    assert!(std::fs::read(&bad_path).unwrap() == bad, "left as it was");
    assert!(
        !bad_path.with_extension("check").exists(),
        "no scratch copy left behind"
    );
    // Whole pages zeroed (structure, not just records).
    let mut zeroed = good.clone();
    for &at in &spots {
        let page = at & !4095;
        zeroed[page..(page + 4096).min(good.len())].fill(0);
    }
    std::fs::write(&bad_path, &zeroed).unwrap();
    let err = Store::open(&bad_path, me).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(std::fs::read(&bad_path).unwrap() == zeroed, "left as it was");
    // Truncated.
    let cut = good[..good.len() / 2].to_vec();
    std::fs::write(&bad_path, &cut).unwrap();
    let err = Store::open(&bad_path, me).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(std::fs::read(&bad_path).unwrap() == cut, "left as it was");
    // The intact file opens, with everything in it.
    let store = Store::open(&path, me).unwrap();
    let all = store
        .read(|r| ops::peek_inbox(r, &name("bob"), q(1000, true, false), &mut |_| true))
        .await
        .unwrap();
    assert_eq!(all.entries.len(), 200);
}

/// Receipts queued on `store` for `peer`, as (message id, read at).
async fn queued(store: &Store, peer: PeerId) -> Vec<(MessageId, u64)> {
    store
        .read(move |r| ops::pending_receipts(r, &peer, 100))
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r)| (r.id, r.at_ms))
        .collect()
}

#[tokio::test]
async fn a_direct_message_gets_one_receipt_for_its_sending_node_when_first_shown() {
    let me = PeerId::random();
    let (alpha, gamma) = (PeerId::random(), PeerId::random());
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "bob").await;
    let from_alpha: Vec<_> = (0..3).map(|i| wire("alice", "bob", &format!("a{i}"))).collect();
    let from_gamma = vec![wire("carol", "bob", "g0")];
    let a: Vec<MessageId> = from_alpha.iter().map(|m| m.id).collect();
    let g = from_gamma[0].id;
    store
        .write("accept", move |t| {
            ops::accept(t, alpha, None, from_alpha, 1000, 5)?;
            ops::accept(t, gamma, None, from_gamma, 1000, 5)
        })
        .await
        .unwrap();
    let bob = name("bob");
    let mark = |ids: Vec<MessageId>, state: ReadState, at: u64| {
        let (store, b) = (store.clone(), bob.clone());
        async move {
            store
                .write("mark", move |t| {
                    let mut shown = ops::Shown::new(me, true, at);
                    ops::mark_ids(t, &b, &ids, state, &mut shown)?;
                    Ok(shown)
                })
                .await
                .unwrap()
        }
    };
    // Pushed (shown) to the session: the receipt goes at that moment, to the sender's node.
    let shown = mark(vec![a[0]], ReadState::Notified, 100).await;
    assert_eq!(shown.queued.iter().copied().collect::<Vec<_>>(), [alpha]);
    assert_eq!(queued(&store, alpha).await, [(a[0], 100)]);
    // Read later: no second receipt for it.
    let shown = mark(vec![a[0]], ReadState::Read, 200).await;
    assert!(shown.queued.is_empty());
    assert_eq!(queued(&store, alpha).await, [(a[0], 100)]);
    // A page read marks the rest: one receipt each, to the node each came from.
    let b = bob.clone();
    let shown = store
        .write("inbox", move |t| {
            let mut shown = ops::Shown::new(me, true, 300);
            ops::take_inbox(t, &b, q(10, false, true), &mut |_| true, &mut shown)?;
            Ok(shown)
        })
        .await
        .unwrap();
    assert_eq!(shown.queued, [alpha, gamma].into_iter().collect());
    assert_eq!(queued(&store, alpha).await, [(a[0], 100), (a[1], 300), (a[2], 300)]);
    assert_eq!(queued(&store, gamma).await, [(g, 300)]);
    assert_eq!(
        store.read(ops::receipt_peers).await.unwrap(),
        [alpha, gamma].into_iter().collect()
    );
    // Reading everything again sets off nothing.
    let b = bob.clone();
    let shown = store
        .write("inbox", move |t| {
            let mut shown = ops::Shown::new(me, true, 400);
            ops::take_inbox(t, &b, q(10, true, true), &mut |_| true, &mut shown)?;
            Ok(shown)
        })
        .await
        .unwrap();
    assert!(shown.queued.is_empty());
    assert_eq!(queued(&store, alpha).await.len(), 3);
    // Answered ones are dropped; the others wait; old ones expire.
    let keys: Vec<u64> = store
        .read(move |r| ops::pending_receipts(r, &alpha, 2))
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    store
        .write("sent", move |t| ops::drop_receipts(t, &alpha, &keys))
        .await
        .unwrap();
    assert_eq!(queued(&store, alpha).await, [(a[2], 300)]);
    let dropped = store
        .write("expire", |t| ops::expire_receipts(t, 1_200, 800))
        .await
        .unwrap();
    assert_eq!(dropped, 2, "both read at 300: 900 ms old at 1200, past a TTL of 800 ms");
    assert!(store.read(ops::receipt_peers).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_node_with_receipts_off_queues_none_and_topic_messages_never_get_one() {
    let me = PeerId::random();
    let alpha = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "bob").await;
    let m = wire("alice", "bob", "hi");
    store
        .write("accept", move |t| ops::accept(t, alpha, None, vec![m], 1000, 5))
        .await
        .unwrap();
    let b = name("bob");
    let shown = store
        .write("inbox", move |t| {
            let mut shown = ops::Shown::new(me, false, 300);
            ops::take_inbox(t, &b, q(10, false, true), &mut |_| true, &mut shown)?;
            Ok(shown)
        })
        .await
        .unwrap();
    assert!(shown.queued.is_empty());
    assert!(store.read(ops::receipt_peers).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_receipt_is_recorded_once_and_only_from_the_node_the_message_went_to() {
    let me = PeerId::random();
    let (beta, mallory) = (PeerId::random(), PeerId::random());
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "alice").await;
    let (m1, m2) = (wire("alice", "bob", "one"), wire("alice", "bob", "two"));
    let (id1, id2) = (m1.id, m2.id);
    let seqs = store
        .write("send", move |t| {
            let e1 = ops::enqueue(t, m1, beta, None, 1)?;
            let e2 = ops::enqueue(t, m2, beta, None, 1)?;
            Ok((e1.seq, e2.seq))
        })
        .await
        .unwrap();
    // The first was acknowledged at 10; the second's acknowledgement never came.
    store
        .write("settle", move |t| ops::settle(t, vec![(seqs.0, Outcome::Stored)], 10))
        .await
        .unwrap();
    let receipt = |id, at_ms| crate::wire::ReadReceipt { id, at_ms };
    // Another node cannot claim our messages were read, nor name ids we never sent.
    let (outcomes, read) = store
        .write("receipts", move |t| {
            ops::record_reads(t, mallory, &[receipt(id1, 50), receipt(MessageId::new(), 50)], 60)
        })
        .await
        .unwrap();
    assert!(read.is_empty());
    assert!(
        outcomes.iter().all(|(_, o)| matches!(o, Outcome::Rejected(_))),
        "{outcomes:?}"
    );
    assert!(matches!(
        store
            .read(move |r| ops::outbox_by_id(r, &id1))
            .await
            .unwrap()
            .unwrap()
            .state,
        OutState::Delivered { at_ms: 10 }
    ));
    // The recipient's node can, once per message; a receipt for a pending message delivers it.
    let (outcomes, read) = store
        .write("receipts", move |t| {
            ops::record_reads(t, beta, &[receipt(id1, 50), receipt(id2, 55), receipt(id1, 70)], 60)
        })
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            (id1, Outcome::Stored),
            (id2, Outcome::Stored),
            (id1, Outcome::Duplicate)
        ]
    );
    assert_eq!(read.len(), 2);
    let state = |id| {
        let store = store.clone();
        async move {
            store
                .read(move |r| ops::outbox_by_id(r, &id))
                .await
                .unwrap()
                .unwrap()
                .state
        }
    };
    assert_eq!(
        state(id1).await,
        OutState::Read {
            delivered_ms: 10,
            at_ms: 50
        }
    );
    assert_eq!(
        state(id2).await,
        OutState::Read {
            delivered_ms: 60,
            at_ms: 55
        }
    );
    assert!(
        store.read(ops::pending_peers).await.unwrap().is_empty(),
        "nothing left to deliver"
    );
    // Listed with the delivered ones, not with what is pending or dead.
    let listed = |delivered| {
        let store = store.clone();
        async move {
            store
                .read(move |r| ops::outbox(r, None, delivered, 10))
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(listed(false).await, 0);
    assert_eq!(listed(true).await, 2);
}

#[tokio::test]
async fn a_message_between_two_agents_of_one_node_is_marked_read_at_once() {
    let me = PeerId::random();
    let store = Store::in_memory(me).unwrap();
    with_agent(&store, "alice").await;
    with_agent(&store, "bob").await;
    let m = wire("alice", "bob", "next door");
    let id = m.id;
    store
        .write("send", move |t| ops::send_local(t, m, me, None, 1))
        .await
        .unwrap();
    let b = name("bob");
    // Even with receipts to other nodes off: this is the node's own agent.
    let shown = store
        .write("inbox", move |t| {
            let mut shown = ops::Shown::new(me, false, 42);
            ops::take_inbox(t, &b, q(10, false, true), &mut |_| true, &mut shown)?;
            Ok(shown)
        })
        .await
        .unwrap();
    assert!(shown.queued.is_empty());
    assert_eq!(shown.read_here.len(), 1);
    assert_eq!(
        store
            .read(move |r| ops::outbox_by_id(r, &id))
            .await
            .unwrap()
            .unwrap()
            .state,
        OutState::Read {
            delivered_ms: 1,
            at_ms: 42
        }
    );
}
