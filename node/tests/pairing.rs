//! Pairing without copying a code (in one process, over 127.0.0.1): a node outside the
//! mesh asks a member it has seen to admit it; both show the same comparison code; the
//! member's user approves by that code and the node joins, or refuses and it gets nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestNode, eventually, wait_event};
use mesh_node::api::{Event, PairingState, PairingView, Request, SendRequest, SendStatus};

async fn pair(node: &TestNode, target: &str) -> PairingView {
    get!(node.call(Request::Pair { node: target.into() }), Pairing)
}

async fn asking(member: &TestNode, code: &str) -> PairingView {
    eventually(&format!("{code} listed on {}", member.name), || async {
        get!(member.call(Request::Pairings), Pairings)
            .into_iter()
            .find(|p| p.code == code)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_approved_by_its_comparison_code_joins_and_a_refused_one_gets_nothing() {
    let a = TestNode::start("alpha").await;
    a.register("alice").await;
    let b = TestNode::start_alone("beta").await;
    b.register("bob").await;
    let mut seen = a.watch(&[]).await;
    let mut mine_events = b.watch(&[]).await;

    // Beta has seen alpha (a dial it was refused): it names it by the name alpha gave.
    assert!(b.call(Request::Dial { addr: a.addr() }).await.is_err());
    let mine = pair(&b, "alpha").await;
    assert!(mine.asking);
    assert_eq!(mine.state, PairingState::Waiting);
    assert_eq!(mine.peer, a.peer_id());
    let theirs = asking(&a, &mine.code).await;
    assert_eq!((theirs.peer, theirs.name.as_str()), (b.peer_id(), "beta"));
    assert!(!theirs.asking);
    wait_event(
        &mut seen,
        "the pairing told to watchers",
        |e| matches!(e, Event::Pairing(p) if p.code == mine.code),
    )
    .await;

    // Not admitted yet: beta reaches no agent of alpha.
    let early = b
        .call(Request::Send(SendRequest {
            from: "bob".into(),
            to: "alice@alpha".into(),
            text: "let me in".into(),
            reply_to: None,
            id: None,
        }))
        .await;
    assert!(early.is_err(), "{early:?}");

    // A code nobody shows is refused; the one both show admits beta.
    assert!(
        a.call(Request::AnswerPairing {
            id: "1234567".into(),
            allow: true
        })
        .await
        .is_err()
    );
    let decided = get!(
        a.call(Request::AnswerPairing {
            id: mine.code.replace(' ', ""),
            allow: true,
        }),
        Pairing
    );
    assert_eq!(decided.state, PairingState::Approved);
    // Approved there, but beta joins only once its own user confirmed the codes match.
    let approved = wait_event(
        &mut mine_events,
        "beta hears of the approval",
        |e| matches!(e, Event::Pairing(v) if v.state == PairingState::Approved),
    )
    .await;
    let Event::Pairing(approved) = approved else {
        unreachable!()
    };
    assert!(!approved.confirmed);
    assert!(
        get!(b.call(Request::Members), Members).members.len() == 1,
        "not joined before the confirmation"
    );
    let confirmed = get!(
        b.call(Request::PairConfirm {
            node: "alpha".into(),
            same: true
        }),
        Pairing
    );
    assert!(confirmed.confirmed);
    let done = get!(b.call(Request::PairWait { node: "alpha".into() }), Pairing);
    assert_eq!(done.state, PairingState::Joined, "{done:?}");
    assert!(get!(a.call(Request::Pairings), Pairings).is_empty());
    let sent = eventually("bob reaches alice", || async {
        let r = b
            .call(Request::Send(SendRequest {
                from: "bob".into(),
                to: "alice@alpha".into(),
                text: "hello from beta".into(),
                reply_to: None,
                id: None,
            }))
            .await
            .ok()?;
        match r {
            mesh_node::api::Response::Sent(s) if s.status == SendStatus::Delivered => Some(s),
            _ => None,
        }
    })
    .await;
    assert_eq!(a.inbox("alice").await[0].id, sent.id);

    // Gamma, refused: told so, and still outside.
    let c = TestNode::start_alone("gamma").await;
    let refused = pair(&c, &a.addr()).await;
    asking(&a, &refused.code).await;
    get!(
        c.call(Request::PairConfirm {
            node: a.peer_id().to_string(),
            same: true
        }),
        Pairing
    );
    get!(
        a.call(Request::AnswerPairing {
            id: refused.code.clone(),
            allow: false,
        }),
        Pairing
    );
    let done = get!(
        c.call(Request::PairWait {
            node: a.peer_id().to_string()
        }),
        Pairing
    );
    assert_eq!(
        done.state,
        PairingState::Refused("the member's user refused this node".into())
    );
    let again = a
        .call(Request::AnswerPairing {
            id: refused.code,
            allow: true,
        })
        .await;
    assert!(again.is_err(), "decided once: {again:?}");
    let members = get!(a.call(Request::Members), Members);
    assert!(
        !members.members.iter().any(|m| m.peer_id == c.peer_id()),
        "gamma is not a member"
    );

    // Delta's user sees another code than the member shows: approved there, never joined.
    let d = TestNode::start_alone("delta").await;
    let asked = pair(&d, &a.addr()).await;
    asking(&a, &asked.code).await;
    get!(
        a.call(Request::AnswerPairing {
            id: asked.code.clone(),
            allow: true,
        }),
        Pairing
    );
    get!(
        d.call(Request::PairConfirm {
            node: a.peer_id().to_string(),
            same: false
        }),
        Pairing
    );
    let done = get!(
        d.call(Request::PairWait {
            node: a.peer_id().to_string()
        }),
        Pairing
    );
    assert!(matches!(done.state, PairingState::Refused(_)), "{done:?}");
    assert_eq!(
        get!(d.call(Request::Members), Members).members.len(),
        1,
        "delta stays alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_pairing_requests_get_clear_errors_and_change_nothing() {
    let a = TestNode::start("alpha").await;
    let err = |r: Result<mesh_node::api::Response, mesh_node::api::client::ClientError>| match r {
        Ok(other) => panic!("accepted: {other:?}"),
        Err(e) => e.to_string(),
    };
    // Nobody of that name around; a join code pasted without its prefix; an address with no
    // PeerId; no pairing to wait for or to confirm; no node asking with that code.
    let e = err(a.call(Request::Pair { node: "nosuch".into() }).await);
    assert!(e.contains("no node named \"nosuch\" seen nearby"), "{e}");
    let e = err(a.call(Request::Pair { node: "x".repeat(200) }).await);
    assert!(e.contains("a join code starts with agentmesh:"), "{e}");
    let e = err(a
        .call(Request::Pair {
            node: "/ip4/127.0.0.1/tcp/1".into(),
        })
        .await);
    assert!(e.contains("/p2p/"), "{e}");
    let e = err(a.call(Request::PairWait { node: "nosuch".into() }).await);
    assert!(e.contains("no pairing with \"nosuch\" in progress"), "{e}");
    let e = err(a
        .call(Request::PairConfirm {
            node: "nosuch".into(),
            same: true,
        })
        .await);
    assert!(e.contains("no pairing"), "{e}");
    let e = err(a
        .call(Request::AnswerPairing {
            id: "123456".into(),
            allow: true,
        })
        .await);
    assert!(e.contains("no node with comparison code 123456"), "{e}");
    assert_eq!(get!(a.call(Request::Members), Members).members.len(), 1);
    assert!(get!(a.call(Request::Pairings), Pairings).is_empty());
}
