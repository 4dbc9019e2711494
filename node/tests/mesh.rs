//! Multi-node behaviour in one process, over 127.0.0.1 with explicit dials.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestNode, wait_event, wait_messages};
use mesh_node::api::client::ClientError;
use mesh_node::api::{
    ErrorCode, Event, HistoryQuery, InboxQuery, PublishRequest, Reception, Request, Response, SendRequest, SendStatus,
};

fn api_err(r: Result<Response, ClientError>) -> mesh_node::api::ApiError {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_arrive_once_in_send_order() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    let mut watch = b.watch(&["bob"]).await;

    let mut ids = Vec::new();
    for i in 0..30 {
        let r = a.send("alice", "bob@beta", &format!("message {i}")).await;
        assert_eq!(r.to, "bob@beta");
        assert_eq!(r.to_node, b.peer_id());
        ids.push(r.id);
    }
    let pushed = wait_messages(&mut watch, "bob", 30).await;
    assert_eq!(pushed.iter().map(|m| m.id).collect::<Vec<_>>(), ids);

    let inbox = b.inbox("bob").await;
    assert_eq!(
        inbox.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids,
        "inbox in send order, each once"
    );
    let first = &inbox[0];
    assert_eq!(first.from, "alice@alpha");
    assert_eq!(first.from_node, a.peer_id(), "sender node comes from the transport");
    assert_eq!(first.text, "message 0");
    assert!(b.inbox("bob").await.is_empty(), "read messages are not unread again");

    // A reply references the message it answers and travels back.
    let r = get!(
        b.call(Request::Send(SendRequest {
            from: "bob".into(),
            to: "alice@alpha".into(),
            text: "got it".into(),
            reply_to: Some(ids[0]),
            id: None,
        })),
        Sent
    );
    assert_eq!(r.status, SendStatus::Delivered);
    let back = a.inbox("alice").await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].reply_to, Some(ids[0]));
    assert_eq!(back[0].from, "bob@beta");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_everything_once_in_order() {
    let a = TestNode::start("alpha").await;
    let mut b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    b.stop().await;

    let mut ids = Vec::new();
    for i in 0..10 {
        let r = a.send("alice", "bob@beta", &format!("while away {i}")).await;
        assert!(matches!(r.status, SendStatus::Queued { .. }), "{:?}", r.status);
        assert_eq!(r.reception, Reception::Offline);
        ids.push(r.id);
    }
    let pending = get!(
        a.call(Request::Outbox {
            agent: None,
            delivered: false,
            limit: 100,
        }),
        Outbox
    );
    assert_eq!(pending.len(), 10);
    assert!(pending.iter().all(|e| e.state == "pending"));

    // B comes back on the same address; whoever dials first, the outbox drains.
    b.restart().await;
    let mut watch = b.watch(&["bob"]).await;
    let already = b.inbox("bob").await;
    let mut got: Vec<_> = already.iter().map(|m| m.id).collect();
    if got.len() < 10 {
        let more = wait_messages(&mut watch, "bob", 10 - got.len()).await;
        // Messages pushed before the inbox read may show up in both; keep first sightings.
        for m in more {
            if !got.contains(&m.id) {
                got.push(m.id);
            }
        }
    }
    assert_eq!(got, ids);
    let mut all = b.whole_inbox("bob").await;
    all.retain(|m| m.from_agent == "alice");
    assert_eq!(
        all.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids,
        "exactly once, in order"
    );

    let mut a_events = a.watch(&["alice"]).await;
    // The outbox is empty once every ack is recorded.
    loop {
        let pending = get!(
            a.call(Request::Outbox {
                agent: None,
                delivered: false,
                limit: 100,
            }),
            Outbox
        );
        if pending.is_empty() {
            break;
        }
        wait_event(&mut a_events, "delivery acks", |e| matches!(e, Event::Delivered { .. })).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_reach_every_subscriber_across_three_nodes() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    let c = TestNode::start("gamma").await;
    a.dial(&b).await;
    b.dial(&c).await;
    a.dial(&c).await;

    // Published before anyone subscribes: stored, reported, and sent once someone does.
    let early = get!(
        a.call(Request::Publish(PublishRequest {
            agent: "alice".into(),
            topic: "#build".into(),
            text: "early bird".into(),
            reply_to: None,
            id: None,
        })),
        Published
    );
    assert_eq!(early.peers_reached, 0);

    // The early message goes out when the first subscriber appears.
    let mut wb = b.watch(&["bob"]).await;
    b.call(Request::Subscribe {
        agent: "bob".into(),
        topic: "build".into(),
    })
    .await
    .unwrap();
    let m = wait_messages(&mut wb, "bob", 1).await;
    assert_eq!(m[0].id, early.id);
    assert_eq!(m[0].topic.as_deref(), Some("build"));
    assert_eq!(m[0].from, "alice@alpha");
    let mut wc = c.watch(&["carol"]).await;
    c.call(Request::Subscribe {
        agent: "carol".into(),
        topic: "build".into(),
    })
    .await
    .unwrap();

    // Wait until A sees both subscriptions: publish reports how many peers it reached.
    let mut reached = 0;
    let mut ids = Vec::new();
    for _ in 0..100 {
        let p = get!(
            a.call(Request::Publish(PublishRequest {
                agent: "alice".into(),
                topic: "build".into(),
                text: "green".into(),
                reply_to: None,
                id: None,
            })),
            Published
        );
        ids.push(p.id);
        reached = p.peers_reached;
        if reached >= 2 {
            break;
        }
        wait_messages(&mut wb, "bob", 1).await;
    }
    assert_eq!(reached, 2);
    // The same text again is a second message.
    let again = get!(
        a.call(Request::Publish(PublishRequest {
            agent: "alice".into(),
            topic: "build".into(),
            text: "green".into(),
            reply_to: None,
            id: None,
        })),
        Published
    );
    ids.push(again.id);
    let last_two = &ids[ids.len() - 2..];
    for (w, agent) in [(&mut wb, "bob"), (&mut wc, "carol")] {
        let mut seen = Vec::new();
        while !last_two.iter().all(|id| seen.contains(id)) {
            seen.extend(wait_messages(w, agent, 1).await.into_iter().map(|m| m.id));
        }
    }
    // History on the subscriber's node keeps every distinct message once.
    let h = get!(
        c.call(Request::History(HistoryQuery {
            agent: None,
            target: Some("#build".into()),
            grep: Some("green".into()),
            limit: 1000,
            before: None,
            after: None,
            forward: false,
            max_bytes: None,
        })),
        History
    )
    .entries;
    let mut hist_ids: Vec<_> = h.iter().map(|x| x.id).collect();
    hist_ids.dedup();
    assert_eq!(hist_ids.len(), h.len(), "no duplicates in history");
    assert!(last_two.iter().all(|id| hist_ids.contains(id)));
    // The publisher's own agent does not get its message back.
    assert!(a.inbox("alice").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_follows_agents_coming_and_going() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    let c = TestNode::start("gamma").await;
    a.dial(&b).await;
    a.dial(&c).await;
    let mut wa = a.watch(&[]).await;

    // A session attaches on B: A learns of it, online, with its details.
    let session = mesh_node::api::client::Client::connect(&b.home, "session")
        .await
        .unwrap();
    session
        .call(Request::Register {
            agent: mesh_node::api::AgentSpec {
                name: "coder".into(),
                kind: "claude-code".into(),
                cwd: Some("/src/app".into()),
                repo: Some("/src/app".into()),
                summary: Some("fixing the build".into()),
                push: true,
                ..Default::default()
            },
            attach: true,
        })
        .await
        .unwrap();
    let find = |agents: &[mesh_node::api::AgentView]| agents.iter().find(|x| x.address == "coder@beta").cloned();
    let coder = loop {
        wait_event(
            &mut wa,
            "beta's new agent",
            |e| matches!(e, Event::NodeUpdated { peer, .. } if *peer == b.peer_id()),
        )
        .await;
        let agents = get!(a.call(Request::Agents), Agents);
        if let Some(x) = find(&agents).filter(|x| x.reception == Reception::Push) {
            break x;
        }
    };
    assert_eq!(coder.kind, "claude-code");
    assert_eq!(coder.summary.as_deref(), Some("fixing the build"));
    assert_eq!(coder.cwd.as_deref(), Some("/src/app"));

    // The session goes away: shown offline, mail still accepted.
    drop(session);
    loop {
        wait_event(
            &mut wa,
            "beta's agent going offline",
            |e| matches!(e, Event::NodeUpdated { peer, .. } if *peer == b.peer_id()),
        )
        .await;
        let agents = get!(a.call(Request::Agents), Agents);
        if find(&agents).is_some_and(|x| x.reception == Reception::Offline) {
            break;
        }
    }
    let r = a.send("alice", "coder", "are you there?").await;
    assert_eq!(r.status, SendStatus::Delivered);
    assert_eq!(r.reception, Reception::Offline);

    // A bare name shared by two nodes is ambiguous, and the error lists both.
    b.register("dup").await;
    c.register("dup").await;
    loop {
        let agents = get!(a.call(Request::Agents), Agents);
        if agents.iter().filter(|x| x.name == "dup").count() == 2 {
            break;
        }
        wait_event(&mut wa, "both dup agents", |e| matches!(e, Event::NodeUpdated { .. })).await;
    }
    let e = api_err(
        a.call(Request::Send(SendRequest {
            from: "alice".into(),
            to: "dup".into(),
            text: "x".into(),
            reply_to: None,
            id: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::Ambiguous);
    assert!(
        e.message.contains("dup@beta") && e.message.contains("dup@gamma"),
        "{}",
        e.message
    );
    assert_eq!(a.send("alice", "dup@gamma", "x").await.status, SendStatus::Delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    a.dial(&b).await;
    let send = |to: &str, text: String| {
        Request::Send(SendRequest {
            from: "alice".into(),
            to: to.into(),
            text,
            reply_to: None,
            id: None,
        })
    };

    let e = api_err(a.call(send("ghost", "hi".into())).await);
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = api_err(a.call(send("ghost@beta", "hi".into())).await);
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("user"), "lists beta's agents: {}", e.message);
    let e = api_err(a.call(send("user@nowhere", "hi".into())).await);
    assert!(e.message.contains("beta"), "lists known nodes: {}", e.message);
    let e = api_err(a.call(send("user@beta", "   ".into())).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = api_err(a.call(send("user@beta", "x".repeat(64 * 1024 + 1))).await);
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(
        e.message.contains("65537") && e.message.contains("65536"),
        "{}",
        e.message
    );
    let e = api_err(a.call(send("bad name!", "hi".into())).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = api_err(
        a.call(Request::Send(SendRequest {
            from: "alice".into(),
            to: "user@beta".into(),
            text: "hi".into(),
            reply_to: Some(mesh_node::ids::MessageId::new()),
            id: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = api_err(
        a.call(Request::Dial {
            addr: "/ip4/999.1.1.1/tcp/1".into(),
        })
        .await,
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    let e = api_err(
        a.call(Request::Inbox(InboxQuery {
            agent: "nobody".into(),
            all: false,
            limit: 10,
            mark_read: true,
            skip_notified: false,
            after: None,
            max_bytes: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    let e = api_err(
        a.call(Request::History(HistoryQuery {
            agent: None,
            target: None,
            grep: None,
            limit: 10,
            before: Some("yesterday".into()),
            after: None,
            forward: false,
            max_bytes: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("bad history cursor \"yesterday\""), "{}", e.message);
    // Larger than the local API frame limit: refused by the client before sending.
    let e = api_err(a.call(send("user@beta", "x".repeat(2 * 1024 * 1024))).await);
    assert_eq!(e.code, ErrorCode::TooLarge);

    // Nothing of the above was stored or sent.
    match a
        .call(Request::Outbox {
            agent: None,
            delivered: true,
            limit: 100,
        })
        .await
        .unwrap()
    {
        Response::Outbox(l) => assert!(l.is_empty(), "{l:?}"),
        other => panic!("{other:?}"),
    }
    assert!(b.inbox("user").await.is_empty());
    // The daemon is still fine.
    assert_eq!(a.send("alice", "user@beta", "fine").await.status, SendStatus::Delivered);

    // A client of another API version is told which versions meet, and what to do.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::UnixStream::connect(a.home.socket_path()).await.unwrap();
    let hello = postcard::to_allocvec(&mesh_node::api::ClientHello {
        magic: mesh_node::api::MAGIC,
        version: mesh_node::api::API_VERSION - 1,
        client: "old".into(),
    })
    .unwrap();
    raw.write_all(&(hello.len() as u32).to_be_bytes()).await.unwrap();
    raw.write_all(&hello).await.unwrap();
    let mut len = [0u8; 4];
    tokio::time::timeout(common::WAIT, raw.read_exact(&mut len))
        .await
        .unwrap()
        .unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    raw.read_exact(&mut body).await.unwrap();
    match postcard::from_bytes(&body).unwrap() {
        mesh_node::api::ServerHello::Refused { reason } => assert!(
            reason.contains(&format!(
                "version {}, the client {}",
                mesh_node::api::API_VERSION,
                mesh_node::api::API_VERSION - 1
            )) && reason.contains("mesh down"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_daemon_per_home_and_stale_sockets_are_replaced() {
    let mut a = TestNode::start("alpha").await;
    let second = mesh_node::daemon::Daemon::start(mesh_node::daemon::DaemonOptions {
        home: a.home.clone(),
        overrides: Default::default(),
        user: None,
    })
    .await;
    match second {
        Err(e @ mesh_node::daemon::DaemonError::AlreadyRunning { .. }) => {
            assert!(
                e.to_string().contains(&std::process::id().to_string()),
                "names the pid: {e}"
            )
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second daemon started on the same home"),
    }
    a.stop().await;
    // A socket file nobody answers on (a crashed daemon's) is replaced at start.
    let stale = std::os::unix::net::UnixListener::bind(a.home.socket_path()).unwrap();
    drop(stale);
    assert!(a.home.socket_path().exists());
    a.restart().await;
    assert!(matches!(a.call(Request::Status).await.unwrap(), Response::Status(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_messages_become_dead_letters_after_the_ttl() {
    let config = common::FAST_CONFIG.replace("[delivery]", "[delivery]\nttl = \"1s\"");
    let a = TestNode::start_with("alpha", &config).await;
    let mut b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    b.stop().await;
    // Once alpha saw the connection close: a send to a connected node waits for its
    // answer (up to send_wait, longer than this TTL) instead of answering "queued".
    let beta = b.peer_id();
    common::eventually("alpha to see beta gone", || async {
        let peers = get!(a.call(Request::Peers), Peers);
        (!peers.iter().any(|p| p.peer_id == beta && p.connected)).then_some(())
    })
    .await;

    let mut wa = a.watch(&["alice"]).await;
    let r = a.send("alice", "bob@beta", "too late").await;
    assert!(matches!(r.status, SendStatus::Queued { .. }), "{:?}", r.status);
    let dead = wait_event(
        &mut wa,
        "the dead letter",
        |e| matches!(e, Event::DeadLetter { id, .. } if *id == r.id),
    )
    .await;
    if let Event::DeadLetter { reason, to, .. } = dead {
        assert_eq!(to, "bob@beta");
        assert!(reason.contains("time to live"), "{reason}");
    }
    let out = get!(
        a.call(Request::Outbox {
            agent: Some("alice".into()),
            delivered: false,
            limit: 10,
        }),
        Outbox
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].state, "dead");

    // The recipient comes back: a dead letter is not delivered after all.
    b.restart().await;
    a.dial(&b).await;
    let later = a.send("alice", "bob@beta", "fresh").await;
    assert_eq!(later.status, SendStatus::Delivered);
    let inbox = b.inbox("bob").await;
    assert_eq!(inbox.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["fresh"]);
}

/// Two nodes dialing each other at the same moment (from their listening ports, so the
/// TCP handshakes can even merge into one connection both think they opened) end up
/// connected and admitted both ways, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_connect_and_admit_both_ways() {
    for round in 0..20 {
        let a = TestNode::start("alpha").await;
        let b = TestNode::start("beta").await;
        let (ra, rb) = tokio::join!(
            a.call(Request::Dial { addr: b.addr() }),
            b.call(Request::Dial { addr: a.addr() })
        );
        assert!(
            matches!(ra, Ok(Response::Dialed { peer }) if peer == b.peer_id()),
            "round {round}: {ra:?}"
        );
        assert!(
            matches!(rb, Ok(Response::Dialed { peer }) if peer == a.peer_id()),
            "round {round}: {rb:?}"
        );
        // Admitted both ways: a direct message goes through at once.
        assert_eq!(
            a.send("user", "user@beta", "hi").await.status,
            SendStatus::Delivered,
            "round {round}"
        );
    }
}

/// The last 8 characters of a PeerId: what a label shows to tell namesakes apart.
fn tail8(p: libp2p::PeerId) -> String {
    let s = p.to_string();
    s[s.len() - 8..].to_string()
}

/// Node names are neither unique nor trusted: a member that names its node like ours, or
/// two members with one name, get labels that tell them apart (never the label of our own
/// agents), and each label is an address that reaches exactly that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namesakes_get_labels_that_tell_them_apart_and_reach_exactly_them() {
    let a = TestNode::start("alpha").await;
    let twin = TestNode::start("alpha").await;
    let (c, d) = (TestNode::start("beta").await, TestNode::start("beta").await);
    for n in [&twin, &c, &d] {
        n.register("bob").await;
        a.dial(n).await;
    }
    let mine: Vec<String> = get!(a.call(Request::Agents), Agents)
        .into_iter()
        .filter(|x| x.local)
        .map(|x| x.address)
        .collect();
    assert!(mine.contains(&"user@alpha".to_string()), "{mine:?}");

    // The twin writes as "user", the name of our own user agent.
    let mut wa = a.watch(&["user"]).await;
    let r = twin
        .send("user", &format!("user@{}", a.peer_id()), "it is me, your user")
        .await;
    assert_eq!(r.status, SendStatus::Delivered);
    let got = wait_messages(&mut wa, "user", 1).await;
    let from = &got[0].from;
    assert_eq!(*from, format!("user@alpha~{}", tail8(twin.peer_id())));
    assert!(!mine.contains(from), "{from} reads like one of our own agents");
    assert_eq!(a.inbox("user").await[0].from, *from);

    // Every remote agent is listed under a label of its own.
    let agents = get!(a.call(Request::Agents), Agents);
    let address_of = |p: libp2p::PeerId| {
        agents
            .iter()
            .find(|x| x.node == p && x.name == "bob")
            .map(|x| x.address.clone())
            .unwrap()
    };
    assert_eq!(
        address_of(twin.peer_id()),
        format!("bob@alpha~{}", tail8(twin.peer_id()))
    );
    let (at_c, at_d) = (address_of(c.peer_id()), address_of(d.peer_id()));
    assert_eq!(at_c, format!("bob@beta~{}", tail8(c.peer_id())));
    assert_eq!(at_d, format!("bob@beta~{}", tail8(d.peer_id())));
    let mut all: Vec<&String> = agents.iter().map(|x| &x.address).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), agents.len(), "two agents share a label: {agents:?}");

    // A label is an address: it reaches that node and no other.
    let mut wc = c.watch(&["bob"]).await;
    let r = a.send("user", &at_c, "for c only").await;
    assert_eq!((r.to_node, r.to.as_str()), (c.peer_id(), at_c.as_str()));
    assert_eq!(r.status, SendStatus::Delivered);
    assert_eq!(wait_messages(&mut wc, "bob", 1).await[0].text, "for c only");
    assert!(d.whole_inbox("bob").await.is_empty());
    // So is the sender's label: a reply goes back to the twin, not to our own user.
    let mut wt = twin.watch(&["user"]).await;
    let r = a.send("user", from, "who are you?").await;
    assert_eq!(r.to_node, twin.peer_id());
    assert_eq!(wait_messages(&mut wt, "user", 1).await[0].text, "who are you?");

    // A name two nodes share is refused, with the labels to use instead.
    let send = |to: &str| {
        Request::Send(SendRequest {
            from: "user".into(),
            to: to.into(),
            text: "x".into(),
            reply_to: None,
            id: None,
        })
    };
    let e = api_err(a.call(send("bob@beta")).await);
    assert_eq!(e.code, ErrorCode::Ambiguous);
    assert!(e.message.contains(&at_c) && e.message.contains(&at_d), "{}", e.message);
    // Our own name means our own node, even for an agent only the twin has.
    let e = api_err(a.call(send("bob@alpha")).await);
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains(&address_of(twin.peer_id())), "{}", e.message);
    // A suffix is checked against the PeerId, never taken from a name.
    let e = api_err(a.call(send(&format!("bob@beta~{}", tail8(twin.peer_id())))).await);
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(
        e.message.contains(&format!("alpha~{}", tail8(twin.peer_id()))),
        "{}",
        e.message
    );
    assert!(c.whole_inbox("bob").await.len() == 1 && d.whole_inbox("bob").await.is_empty());
}
