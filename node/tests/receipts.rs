//! Read receipts between nodes (in one process, over 127.0.0.1): a message shown to its
//! recipient comes back "read" to its sender, once, whatever stops in between; a node with
//! receipts off never says so.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FAST_CONFIG, TestNode, eventually, wait_event};
use mesh_node::api::{Event, HistoryQuery, Request, SendRequest, SendStatus};
use mesh_node::ids::MessageId;

async fn receipts_waiting(node: &TestNode) -> u64 {
    get!(node.call(Request::Status), Status).store.receipts_pending
}

async fn sent_state(node: &TestNode, id: MessageId) -> (String, Option<u64>) {
    let list = get!(
        node.call(Request::Outbox {
            agent: Some("alice".into()),
            delivered: true,
            limit: 100,
        }),
        Outbox
    );
    let e = list.iter().find(|e| e.id == id).expect("in the outbox");
    (e.state.clone(), e.read_at_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_shown_on_another_node_comes_back_read_once_even_when_its_sender_was_down() {
    let mut a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;

    let first = a.send("alice", "bob@beta", "first").await;
    let second = a.send("alice", "bob@beta", "second").await;
    assert_eq!(first.status, SendStatus::Delivered);
    assert_eq!(second.status, SendStatus::Delivered);
    assert_eq!(sent_state(&a, first.id).await, ("delivered".into(), None));

    // Bob reads the first while its sender is connected: "read" comes back at once.
    let mut events = a.watch(&["alice"]).await;
    let page = get!(
        b.call(Request::Inbox(mesh_node::api::InboxQuery {
            agent: "bob".into(),
            limit: 1,
            all: false,
            skip_notified: false,
            mark_read: true,
            after: None,
            max_bytes: None,
        })),
        Inbox
    );
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].id, first.id);
    let read = wait_event(&mut events, "the first message read", |e| {
        matches!(e, Event::Read { .. })
    })
    .await;
    let Event::Read { id, from, to, at_ms } = read else {
        unreachable!()
    };
    assert_eq!((id, from.as_str(), to.as_str()), (first.id, "alice", "bob@beta"));
    assert_eq!(sent_state(&a, first.id).await, ("read".into(), Some(at_ms)));
    assert_eq!(sent_state(&a, second.id).await, ("delivered".into(), None));

    // The sender's node is down when the second is read: the receipt waits on bob's node
    // and arrives when alpha is back.
    drop(events);
    a.stop().await;
    assert_eq!(b.inbox("bob").await.len(), 1);
    assert_eq!(receipts_waiting(&b).await, 1);
    a.restart().await;
    let mut events = a.watch(&["alice"]).await;
    a.dial(&b).await;
    let read = wait_event(&mut events, "the second message read", |e| {
        matches!(e, Event::Read { .. })
    })
    .await;
    assert!(matches!(read, Event::Read { id, .. } if id == second.id), "{read:?}");
    // Dropped on bob's node once alpha's answer is back.
    eventually("the receipt dropped once answered", || async {
        (receipts_waiting(&b).await == 0).then_some(())
    })
    .await;

    // Reading them all again sends nothing more; history and a repeated send say "read".
    assert_eq!(b.whole_inbox("bob").await.len(), 2);
    let history = get!(
        a.call(Request::History(HistoryQuery {
            agent: Some("alice".into()),
            limit: 10,
            ..Default::default()
        })),
        History
    );
    let states: Vec<_> = history
        .entries
        .iter()
        .map(|h| (h.id, h.state.clone(), h.read_at_ms.is_some()))
        .collect();
    assert_eq!(
        states,
        [
            (first.id, Some("read".to_string()), true),
            (second.id, Some("read".to_string()), true)
        ]
    );
    let again = get!(
        a.call(Request::Send(SendRequest {
            from: "alice".into(),
            to: "bob@beta".into(),
            text: "first".into(),
            reply_to: None,
            id: Some(first.id),
        })),
        Sent
    );
    assert_eq!(again.status, SendStatus::Read { at_ms });
    assert_eq!(receipts_waiting(&b).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_read_receipts_off_keeps_what_its_agents_read_to_itself() {
    let mut a = TestNode::start("alpha").await;
    let quiet = FAST_CONFIG.replace("[delivery]\n", "[delivery]\nread_receipts = false\n");
    assert!(quiet.contains("read_receipts = false"));
    let b = TestNode::start_with("beta", &quiet).await;
    b.register("bob").await;
    a.dial(&b).await;
    let sent = a.send("alice", "bob@beta", "private").await;
    assert_eq!(sent.status, SendStatus::Delivered);
    // Read while the sender is away: nothing is queued for it (with receipts on, one is:
    // the test above).
    a.stop().await;
    assert_eq!(b.inbox("bob").await.len(), 1);
    assert_eq!(receipts_waiting(&b).await, 0);
    a.restart().await;
    a.dial(&b).await;
    assert_eq!(sent_state(&a, sent.id).await, ("delivered".into(), None));
    // Its own agents still learn it: a message between two agents of beta is read at once.
    b.register("carol").await;
    let local = get!(
        b.call(Request::Send(SendRequest {
            from: "carol".into(),
            to: "bob".into(),
            text: "next door".into(),
            reply_to: None,
            id: None,
        })),
        Sent
    );
    assert_eq!(b.inbox("bob").await.len(), 1);
    let list = get!(
        b.call(Request::Outbox {
            agent: Some("carol".into()),
            delivered: true,
            limit: 10,
        }),
        Outbox
    );
    assert_eq!(list.len(), 1);
    assert_eq!((list[0].id, list[0].state.as_str()), (local.id, "read"));
}
