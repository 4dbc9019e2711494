//! Trust, in one process over 127.0.0.1: admission, join codes, removal, open mode, relays,
//! limits. Outsiders on a real LAN (mDNS, namespaces) are in `cli/tests/lan.rs`; replayed
//! proofs and gossip from a hand-built attacker node are in `attacker.rs`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{FAST_CONFIG, TestNode, WAIT, eventually, test_mesh, wait_messages};
use mesh_node::api::client::ClientError;
use mesh_node::api::{
    ApiError, ErrorCode, HistoryQuery, PeerView, PublishRequest, Request, Response, SendRequest, SendStatus,
};

fn api_err(r: Result<Response, ClientError>) -> ApiError {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn peers(n: &TestNode) -> Vec<PeerView> {
    get!(n.call(Request::Peers), Peers)
}

async fn connected(n: &TestNode, other: &TestNode) -> bool {
    peers(n)
        .await
        .iter()
        .any(|p| p.peer_id == other.peer_id() && p.connected && p.member)
}

async fn invite(n: &TestNode, ttl_s: u64, uses: u32) -> String {
    get!(n.call(Request::Invite { ttl_s, uses }), Invite).code
}

async fn publish(n: &TestNode, agent: &str, topic: &str, text: &str) -> u32 {
    get!(
        n.call(Request::Publish(PublishRequest {
            agent: agent.into(),
            topic: topic.into(),
            text: text.into(),
            reply_to: None,
            id: None,
        })),
        Published
    )
    .peers_reached
}

async fn subscribe(n: &TestNode, agent: &str, topic: &str) {
    let r = n
        .call(Request::Subscribe {
            agent: agent.into(),
            topic: topic.into(),
        })
        .await
        .unwrap();
    assert!(matches!(r, Response::Subscription { .. }), "{r:?}");
}

/// Publishes until the message reaches at least one peer (gossip meshes form in a moment).
async fn publish_reaching(n: &TestNode, agent: &str, topic: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    loop {
        if publish(n, agent, topic, &format!("{text} #{i}")).await > 0 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{topic} never reached a peer");
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn history_texts(n: &TestNode, target: &str) -> Vec<String> {
    get!(
        n.call(Request::History(HistoryQuery {
            agent: None,
            target: Some(target.into()),
            grep: None,
            limit: 1000,
            before: None,
            after: None,
            forward: false,
            max_bytes: None,
        })),
        History
    )
    .entries
    .into_iter()
    .map(|h| h.text)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_is_refused_listed_and_gets_nothing() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    let x = TestNode::start_alone("xeno").await;
    a.dial(&b).await;
    subscribe(&a, "user", "news").await;
    subscribe(&b, "user", "news").await;
    subscribe(&x, "user", "news").await;

    // Dialing an outsider: reached, refused, explained.
    let e = api_err(a.call(Request::Dial { addr: x.addr() }).await);
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(
        e.message.contains("not a member") && e.message.contains("mesh invite"),
        "{}",
        e.message
    );
    let e = api_err(x.call(Request::Dial { addr: b.addr() }).await);
    assert_eq!(e.code, ErrorCode::Denied);

    // Both sides list the other as a nearby non-member, with the reason.
    let seen = eventually("alpha to list xeno as an outsider, disconnected", || async {
        peers(&a)
            .await
            .into_iter()
            .find(|p| p.peer_id == x.peer_id() && !p.connected)
    })
    .await;
    assert!(!seen.member, "{seen:?}");
    assert!(seen.refused.as_deref().unwrap().contains("another mesh"), "{seen:?}");
    assert_eq!(seen.name.as_deref(), Some("xeno"), "the name it claims is shown");
    let st = get!(a.call(Request::Status), Status);
    assert!(st.outsiders >= 1 && st.connected == 1, "{st:?}");

    // A direct message from the outsider (addressed by PeerId) never arrives: it does not
    // even know the node.
    let to = format!("user@{}", a.peer_id());
    let e = api_err(
        x.call(Request::Send(SendRequest {
            from: "user".into(),
            to,
            text: "let me in".into(),
            reply_to: None,
            id: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::NotFound, "{e:?}");
    // Meanwhile the members talk and publish.
    let r = b.send("user", "user@alpha", "member mail").await;
    assert_eq!(r.status, SendStatus::Delivered);
    publish_reaching(&a, "user", "news", "for members").await;
    eventually("beta to get alpha's topic message", || async {
        history_texts(&b, "#news")
            .await
            .iter()
            .any(|t| t.starts_with("for members"))
            .then_some(())
    })
    .await;
    // The outsider published too, and redials now and then; give it a few rounds.
    publish(&x, "user", "news", "outsider news").await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let inbox = a.inbox("user").await;
    assert_eq!(
        inbox.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["member mail"]
    );
    assert!(!history_texts(&a, "#news").await.iter().any(|t| t == "outsider news"));
    assert!(!history_texts(&b, "#news").await.iter().any(|t| t == "outsider news"));
    // The outsider received nothing: no topic message, no directory entry.
    assert!(history_texts(&x, "#news").await.iter().all(|t| t == "outsider news"));
    let agents = get!(x.call(Request::Agents), Agents);
    assert!(agents.iter().all(|ag| ag.local), "{agents:?}");
    let agents = get!(a.call(Request::Agents), Agents);
    assert!(agents.iter().all(|ag| ag.node != x.peer_id()), "{agents:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_code_works_once_and_not_when_expired_or_altered() {
    let a = TestNode::start_alone("alpha").await;
    let b = TestNode::start_alone("beta").await;
    let c = TestNode::start_alone("gamma").await;
    a.register("alice").await;
    let code = invite(&a, 600, 1).await;
    assert!(code.starts_with("agentmesh:"), "{code}");

    let j = get!(b.call(Request::Join { code: code.clone() }), Joined);
    assert_eq!(j.inviter, a.peer_id());
    assert_eq!(j.inviter_name, "alpha");
    let mesh = get!(a.call(Request::Members), Members).mesh;
    assert_eq!(j.mesh.id, mesh.id);
    // Now members: connected (beta reconnects by itself) and talking.
    eventually("beta to be admitted by alpha", || async {
        connected(&a, &b).await.then_some(())
    })
    .await;
    eventually("alpha's agents to be known on beta", || async {
        get!(b.call(Request::Agents), Agents)
            .iter()
            .any(|ag| ag.address == "alice@alpha")
            .then_some(())
    })
    .await;
    let r = b.send("user", "alice@alpha", "hello from the new member").await;
    assert_eq!(r.status, SendStatus::Delivered);
    let members = get!(a.call(Request::Members), Members).members;
    assert!(members.iter().any(|m| m.peer_id == b.peer_id()), "{members:?}");
    let members = get!(b.call(Request::Members), Members).members;
    assert!(members.iter().any(|m| m.peer_id == a.peer_id()), "{members:?}");

    // The same code again: refused by the inviter, and gamma stays in its own mesh.
    let before = get!(c.call(Request::Members), Members).mesh;
    let e = api_err(c.call(Request::Join { code: code.clone() }).await);
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("already used"), "{}", e.message);
    assert_eq!(get!(c.call(Request::Members), Members).mesh, before);

    // An altered code: refused before anything is dialed.
    let mut chars: Vec<char> = invite(&a, 600, 1).await.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'Q' { 'R' } else { 'Q' };
    let altered: String = chars.into_iter().collect();
    let e = api_err(c.call(Request::Join { code: altered }).await);
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message.contains("altered") || e.message.contains("damaged"),
        "{}",
        e.message
    );
    let e = api_err(c.call(Request::Join { code: "hello".into() }).await);
    assert!(e.message.contains("not an agentmesh join code"), "{}", e.message);

    // An expired code.
    let short = invite(&a, 1, 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = api_err(c.call(Request::Join { code: short }).await);
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("expired"), "{}", e.message);
    assert_eq!(get!(c.call(Request::Members), Members).mesh, before);

    // A code for several nodes, used by gamma: it works, and the member count grows.
    let multi = invite(&a, 600, 2).await;
    get!(c.call(Request::Join { code: multi }), Joined);
    eventually("gamma to be admitted", || async {
        connected(&a, &c).await.then_some(())
    })
    .await;
    let e = api_err(
        a.call(Request::Join {
            code: invite(&b, 600, 1).await,
        })
        .await,
    );
    assert!(e.message.contains("already a member"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_node_is_shut_out_and_members_who_missed_it_catch_up() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    let mut c = TestNode::start("gamma").await;
    let mut d = TestNode::start("delta").await;
    a.dial(&b).await;
    a.dial(&c).await;
    a.dial(&d).await;
    c.dial(&b).await;
    for n in [&a, &b, &c, &d] {
        subscribe(n, "user", "news").await;
    }
    // delta is away while gamma is removed.
    d.stop().await;

    let removed = get!(a.call(Request::Remove { node: "gamma".into() }), Removed);
    assert_eq!(removed.peer, c.peer_id());
    assert_eq!(removed.epoch, 2);

    // gamma is cut off from alpha and, once beta has the new key, from beta.
    eventually("beta to take the new key", || async {
        (get!(b.call(Request::Members), Members).mesh.epoch == 2).then_some(())
    })
    .await;
    eventually("gamma to be disconnected everywhere", || async {
        (!connected(&a, &c).await && !connected(&b, &c).await && !connected(&c, &a).await).then_some(())
    })
    .await;
    let listed = peers(&a).await.into_iter().find(|p| p.peer_id == c.peer_id()).unwrap();
    assert!(
        !listed.member && listed.refused.as_deref().unwrap().contains("removed"),
        "{listed:?}"
    );

    // gamma can no longer send to members...
    let r = c.send("user", "user@beta", "still here?").await;
    assert!(matches!(r.status, SendStatus::Queued { .. }), "{r:?}");
    // ...nor read their topic traffic, while the members keep talking.
    publish_reaching(&a, "user", "news", "after the removal").await;
    eventually("beta to get the news", || async {
        history_texts(&b, "#news")
            .await
            .iter()
            .any(|t| t.starts_with("after the removal"))
            .then_some(())
    })
    .await;
    assert_eq!(
        b.send("user", "user@alpha", "members only").await.status,
        SendStatus::Delivered
    );

    // Restarting does not help gamma: it holds the old key only.
    c.restart().await;
    let e = api_err(c.call(Request::Dial { addr: a.addr() }).await);
    assert_eq!(e.code, ErrorCode::Denied, "{e:?}");
    // Nor does a fresh identity with the old key (a node the roster does not know).
    let imposter = TestNode::start("imposter").await; // holds the test mesh's first key
    let e = api_err(imposter.call(Request::Dial { addr: a.addr() }).await);
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("outdated"), "{}", e.message);

    // delta missed the removal: it comes back with the old key, is renewed, and reads on.
    d.restart().await;
    d.dial(&a).await;
    eventually("delta to be renewed", || async {
        (get!(d.call(Request::Members), Members).mesh.epoch == 2).then_some(())
    })
    .await;
    publish_reaching(&a, "user", "news", "welcome back").await;
    eventually("delta to get the news", || async {
        history_texts(&d, "#news")
            .await
            .iter()
            .any(|t| t.starts_with("welcome back"))
            .then_some(())
    })
    .await;
    assert!(
        !history_texts(&c, "#news")
            .await
            .iter()
            .any(|t| t.starts_with("after the removal") || t.starts_with("welcome back")),
        "gamma read traffic after its removal"
    );
    assert!(b.inbox("user").await.iter().all(|m| m.text != "still here?"));
    // The renewed key survives delta's restart.
    d.restart().await;
    assert_eq!(get!(d.call(Request::Members), Members).mesh.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_admits_open_nodes_only() {
    let open = format!("open = true\n{FAST_CONFIG}");
    let a = TestNode::start_in("alpha", &open, None).await;
    let b = TestNode::start_in("beta", &open, None).await;
    let c = TestNode::start("gamma").await;
    let st = get!(a.call(Request::Status), Status);
    assert!(st.mesh.open, "{:?}", st.mesh);
    // Two open nodes with nothing in common admit each other.
    a.dial(&b).await;
    assert_eq!(a.send("user", "user@beta", "lab").await.status, SendStatus::Delivered);
    // A closed node and an open one do not.
    let e = api_err(c.call(Request::Dial { addr: a.addr() }).await);
    assert_eq!(e.code, ErrorCode::Denied);
    assert!(e.message.contains("open mode"), "{}", e.message);
    // Invites make no sense in open mode.
    let e = api_err(a.call(Request::Invite { ttl_s: 60, uses: 1 }).await);
    assert!(e.message.contains("open mode"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_serve_members_unless_told_to_serve_anyone() {
    // A relay hands out the addresses it is reachable at: on loopback, declared ones.
    let (p1, p2) = (common::free_port(), common::free_port());
    let relay_cfg = format!("external = [\"/ip4/127.0.0.1/tcp/{p1}\"]\n[relay]\nserve = true\n{FAST_CONFIG}");
    let members_relay = TestNode::start_full("relay", &relay_cfg, Some(test_mesh()), p1).await;
    let anyone_cfg =
        format!("external = [\"/ip4/127.0.0.1/tcp/{p2}\"]\n[relay]\nserve = true\nfor_anyone = true\n{FAST_CONFIG}");
    let public_relay = TestNode::start_full("public", &anyone_cfg, None, p2).await;
    // An outsider that wants slots on both.
    let cfg = format!(
        "[relay]\nnodes = [\"{}\", \"{}\"]\n{FAST_CONFIG}",
        members_relay.addr(),
        public_relay.addr()
    );
    let o = TestNode::start_in("outsider", &cfg, None).await;
    let slots = eventually("a slot on the public relay", || async {
        let st = get!(o.call(Request::Status), Status);
        st.reach
            .reservations
            .iter()
            .any(|r| r.relay == public_relay.peer_id() && r.accepted)
            .then_some(st.reach.reservations)
    })
    .await;
    assert!(
        !slots.iter().any(|r| r.relay == members_relay.peer_id() && r.accepted),
        "a members' relay gave an outsider a slot: {slots:?}"
    );
    // The public relay carries it but tells it nothing else.
    let agents = get!(o.call(Request::Agents), Agents);
    assert!(agents.iter().all(|a| a.local));
    let st = get!(public_relay.call(Request::Status), Status);
    assert!(st.mesh.relay_for_anyone && st.connected == 0, "{st:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let st = get!(o.call(Request::Status), Status);
    assert!(
        !st.reach
            .reservations
            .iter()
            .any(|r| r.relay == members_relay.peer_id() && r.accepted),
        "{:?}",
        st.reach.reservations
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_and_oversized_messages_hit_the_limits_and_lose_nothing() {
    // alpha's agents may send 60 a minute (bursts of 30). beta takes 1200 direct messages
    // a minute from one node (bursts of 600) and 60 topic messages a minute from one
    // publisher. The flooder's agents are not limited, and its sends do not wait for acks.
    let limits = |extra: &str| format!("[limits]\n{extra}\n{FAST_CONFIG}");
    let a = TestNode::start_with(
        "alpha",
        &limits("agent_sends_per_minute = 60\nmax_topic_message_bytes = 1000"),
    )
    .await;
    let b = TestNode::start_with(
        "beta",
        &limits("peer_messages_per_minute = 1200\npeer_topic_messages_per_minute = 60"),
    )
    .await;
    let f = TestNode::start_with(
        "flooder",
        "[limits]\nagent_sends_per_minute = 0\n[presence]\nheartbeat = \"300ms\"\n[delivery]\nretry_min = \"50ms\"\nretry_max = \"200ms\"\nsend_wait = \"1ms\"\n",
    )
    .await;
    b.register("bob").await;
    a.dial(&b).await;
    f.dial(&b).await;
    for n in [&a, &f] {
        eventually("bob@beta to be known", || async {
            get!(n.call(Request::Agents), Agents)
                .iter()
                .any(|ag| ag.address == "bob@beta")
                .then_some(())
        })
        .await;
    }

    // One agent floods: the burst goes through, then a clear error says when to retry.
    let mut sent = 0;
    let mut refused = None;
    for i in 0..40 {
        match a
            .call(Request::Send(SendRequest {
                from: "alice".into(),
                to: "bob@beta".into(),
                text: format!("flood {i}"),
                reply_to: None,
                id: None,
            }))
            .await
        {
            Ok(Response::Sent(_)) => sent += 1,
            Err(ClientError::Api(e)) => {
                refused = Some(e);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    let e = refused.expect("the flood was never limited");
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(
        e.message.contains("agent_sends_per_minute") && e.message.contains("try again in"),
        "{}",
        e.message
    );
    assert_eq!(sent, 30, "the burst allowance");
    // Another agent of the same node has its own allowance.
    assert_eq!(
        a.send("carol", "bob@beta", "not me").await.status,
        SendStatus::Delivered
    );

    // Oversized topic message: refused with the limit named; nothing published.
    let e = api_err(
        a.call(Request::Publish(PublishRequest {
            agent: "carol".into(),
            topic: "news".into(),
            text: "x".repeat(1001),
            reply_to: None,
            id: None,
        }))
        .await,
    );
    assert_eq!(e.code, ErrorCode::TooLarge);
    assert!(e.message.contains("max_topic_message_bytes"), "{}", e.message);
    assert!(history_texts(&a, "#news").await.is_empty());

    // A node floods beta: beta takes its burst (600), then makes the rest wait, and ends up
    // with every message, once and in order. The flooder keeps going until beta pushes back
    // (a loaded machine sends slowly enough for the bucket to refill), within a bound.
    let mut watch = b.watch(&["bob"]).await;
    let mut ids = Vec::new();
    let outbox = || async {
        get!(
            f.call(Request::Outbox {
                agent: Some("dave".into()),
                delivered: true,
                limit: 5000,
            }),
            Outbox
        )
    };
    let mut pushed_back = false;
    while !pushed_back && ids.len() < 4000 {
        for _ in 0..50 {
            ids.push(f.send("dave", "bob@beta", &format!("burst {}", ids.len())).await.id);
        }
        pushed_back = ids.len() > 600 && outbox().await.iter().any(|o| o.attempts > 0);
    }
    assert!(pushed_back, "beta never made the flooder wait ({} messages)", ids.len());
    let got = wait_messages(&mut watch, "bob", ids.len()).await;
    assert_eq!(got.iter().map(|m| m.id).collect::<Vec<_>>(), ids);
    let out = eventually("every flood message to be acknowledged", || async {
        let out = outbox().await;
        out.iter().all(|o| o.state == "delivered").then_some(out)
    })
    .await;
    assert_eq!(out.len(), ids.len());

    // A topic flood from one publisher: beta takes its allowance (a burst of 30, then one a
    // second, gossip and catch-up together) and drops the rest for now, and stays up and
    // responsive. The bound grows with the time taken, so a slow machine cannot fail it.
    subscribe(&b, "bob", "firehose").await;
    let flood_start = std::time::Instant::now();
    publish_reaching(&f, "dave", "firehose", "warm-up").await;
    for i in 0..100 {
        publish(&f, "dave", "firehose", &format!("drop {i}")).await;
    }
    // Long enough for catch-up rounds (every 6 heartbeats) to ask for what was dropped.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let kept = history_texts(&b, "#firehose").await;
        let allowance = 30 + flood_start.elapsed().as_secs() as usize + 1;
        assert!(
            !kept.is_empty() && kept.len() <= allowance,
            "beta kept {} of 100+ topic messages (allowance so far {allowance})",
            kept.len()
        );
    }
    assert_eq!(
        b.send("bob", "dave@flooder", "still fine").await.status,
        SendStatus::Delivered
    );
}

/// Issue 12, finding 5: any PeerId holding a copy of `mesh.key` used to be admitted and
/// recorded as a member; after `mesh remove` of the node it was copied from, it was even
/// carried over into the new key. Membership is per PeerId now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_mesh_key_under_another_identity_is_refused_before_and_after_a_removal() {
    let a = TestNode::start("alpha").await;
    let b = TestNode::start("beta").await;
    a.dial(&b).await;
    // The thief copies beta's key file into a home of its own (its own identity).
    let mut x = TestNode::start_alone("thief").await;
    x.stop().await;
    std::fs::copy(b.home.mesh_path(), x.home.mesh_path()).unwrap();
    x.restart().await;

    // (The thief's own dial may report success: it admits alpha, a member it knows.)
    let _ = x.call(Request::Dial { addr: a.addr() }).await;
    let seen = eventually("alpha to list the thief as refused", || async {
        peers(&a)
            .await
            .into_iter()
            .find(|p| p.peer_id == x.peer_id() && p.refused.is_some())
    })
    .await;
    assert!(!seen.member, "{seen:?}");
    assert!(
        seen.refused.as_deref().unwrap().contains("never admitted by a member"),
        "{seen:?}"
    );
    let members = get!(a.call(Request::Members), Members);
    assert!(members.members.iter().all(|m| m.peer_id != x.peer_id()), "{members:?}");

    // beta is removed: the new key goes to alpha's members, not to the thief, which is
    // refused again when it comes back.
    get!(a.call(Request::Remove { node: "beta".into() }), Removed);
    let _ = x.call(Request::Dial { addr: a.addr() }).await;
    eventually("alpha to refuse the thief again", || async {
        peers(&a)
            .await
            .into_iter()
            .find(|p| p.peer_id == x.peer_id() && !p.member && !p.connected && p.refused.is_some())
    })
    .await;
    let thief_epoch = get!(x.call(Request::Members), Members).mesh.epoch;
    assert_eq!(thief_epoch, 1, "the thief never got the new key");
    let members = get!(a.call(Request::Members), Members);
    assert!(
        members
            .members
            .iter()
            .all(|m| m.peer_id != x.peer_id() && m.peer_id != b.peer_id()),
        "{members:?}"
    );
}
