//! The handlers target: frames from a peer run through what the node does with them.

use super::*;

/// The state the handlers target works on: an in-memory store with a local agent and
/// a few publications, this node's directory, its keys.
struct Handled {
    store: crate::store::Store,
    dir: std::sync::Mutex<crate::directory::Directory>,
    me: PeerId,
    my_name: NodeName,
}

fn handled() -> &'static Handled {
    static H: OnceLock<Handled> = OnceLock::new();
    H.get_or_init(|| {
        let me = libp2p::identity::Keypair::ed25519_from_bytes([9; 32])
            .expect("a valid key")
            .public()
            .to_peer_id();
        let store = crate::store::Store::in_memory(me).expect("in-memory store");
        let topic = TopicName::new("fuzz").expect("topic");
        let setup = store
            .try_write("fuzz setup", move |t| {
                crate::store::ops::ensure_agent(t, &AgentName::new("bob").expect("name"), "other", 1)?;
                for i in 0..3u8 {
                    let env = wire::TopicEnvelope {
                        id: MessageId([i + 1; 16]),
                        topic: topic.clone(),
                        from: AgentName::new("bob").expect("name"),
                        sent_at_ms: 1,
                        reply_to: None,
                        text: format!("published {i}"),
                    };
                    crate::store::ops::record_topic(t, env, me, None, true, 1, 1)?;
                }
                Ok(())
            })
            .expect("queued");
        block_on(setup).expect("writer").expect("setup");
        Handled {
            store,
            dir: std::sync::Mutex::new(crate::directory::Directory::new(me)),
            me,
            my_name: NodeName::new("fuzzed").expect("name"),
        }
    })
}

/// Frames from a peer, handled as a node handles them. The first byte picks the protocol;
/// the rest is the frame as it arrives (through the codec and its limits). Beyond "no
/// panic", each checks what users rely on: a delivery batch gets one outcome per message in
/// order and is stored at most once (the same batch again stores nothing); a catch-up answer
/// stays within its bounds; no announcement gives a node the label of this node's own
/// agents or a label with a line break; no proof from an identity the mesh never admitted
/// is a member's; no join code a peer makes is taken for this node's; a pairing request is
/// listed only after a reveal that matches its commitment, and never more than the limit.
pub fn handlers(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let h = handled();
    match pick % 6 {
        0 => handle_delivery(h, bytes),
        1 => handle_catch_up(h, bytes),
        2 => handle_announcement(h, bytes),
        3 => handle_proof(h, bytes),
        4 => handle_join(h, bytes),
        _ => handle_pair(h, bytes),
    }
}

/// A delivery batch: one outcome per message, in order, stored at most once.
fn handle_delivery(h: &Handled, bytes: &[u8]) {
    let store = &h.store;
    let (req, _) =
        protocol::<wire::DmRequest, wire::DmResponse>(bytes, dm_request_limit(), wire::MAX_DM_RESPONSE_BYTES);
    let msgs = match req {
        Some(wire::DmRequest::Deliver(msgs)) => msgs,
        Some(wire::DmRequest::Read(receipts)) => return handle_receipts(h, receipts),
        Some(wire::DmRequest::Permission(relay)) => return handle_permission(relay),
        None => return,
    };
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
    let accept = |msgs: Vec<wire::WireMessage>| {
        let peer = *source();
        let job = store
            .try_write("fuzz accept", move |t| {
                crate::store::ops::accept(t, peer, None, msgs, 64 * 1024, 2)
            })
            .expect("queued");
        block_on(job).expect("writer").expect("accept")
    };
    let (first, stored) = accept(msgs.clone());
    assert_eq!(
        first.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        ids,
        "one outcome per message, in order"
    );
    assert!(stored.len() <= msgs.len());
    let (again, stored_again) = accept(msgs);
    assert!(stored_again.is_empty(), "a batch delivered twice is stored once");
    assert!(
        again.iter().all(|(_, o)| !matches!(o, wire::Outcome::Stored)),
        "{again:?}"
    );
}

/// Read receipts from a member: one outcome per receipt, and none marks read a message this
/// node never sent to that member.
fn handle_receipts(h: &Handled, receipts: Vec<wire::ReadReceipt>) {
    let peer = *source();
    let job = h
        .store
        .try_write("fuzz receipts", move |t| {
            crate::store::ops::record_reads(t, peer, &receipts, 2).map(|r| (r, receipts))
        })
        .expect("queued");
    let ((outcomes, read), receipts) = block_on(job).expect("writer").expect("receipts");
    assert_eq!(
        outcomes.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        receipts.iter().map(|r| r.id).collect::<Vec<_>>(),
        "one outcome per receipt, in order"
    );
    assert!(
        read.iter().all(|e| e.to_node == peer),
        "only messages sent to the member become read"
    );
}

/// A permission relay: kept within the record's limits, shown only as its sender's, and
/// an answer is taken only for a request that was sent to the answering member.
fn handle_permission(relay: wire::PermissionRelay) {
    use crate::node::permissions::{MAX_PERMISSIONS, MAX_TEXT_CHARS, MAX_TOOL_CHARS, Permissions};
    let peer = *source();
    let mut p = Permissions::default();
    p.watching(peer);
    match relay {
        wire::PermissionRelay::Asked(ask) => {
            let first = p.relayed(peer, "member", &ask, 1);
            if let Ok(Some(v)) = &first {
                assert!(v.agent.ends_with("@member"), "labelled with its sender");
                assert!(v.tool.chars().count() <= MAX_TOOL_CHARS);
                assert!(v.description.chars().count() <= MAX_TEXT_CHARS);
                assert!(v.input_preview.chars().count() <= MAX_TEXT_CHARS);
                assert!(
                    matches!(p.relayed(peer, "member", &ask, 2), Ok(None)),
                    "asked twice: listed once"
                );
            }
            assert!(p.pending(3).len() <= MAX_PERMISSIONS);
        }
        wire::PermissionRelay::Answer(v) | wire::PermissionRelay::Settled(v) => {
            assert!(p.answer_from(peer, &v, "by", 1).is_err(), "nothing was sent to it");
            assert!(p.settled_by(peer, &v, 1).is_none(), "nothing was relayed by it");
        }
        wire::PermissionRelay::Watch => assert!(p.watch(peer, 1).is_empty()),
    }
}

/// A pairing request, as a member takes it (after an offer of its own, so that a reveal or
/// poll has something to match): listed only once revealed with the committed nonce, never
/// approved by itself, never more than [`MAX_PAIRINGS`](crate::node::pairing::MAX_PAIRINGS).
fn handle_pair(h: &Handled, bytes: &[u8]) {
    use crate::node::pairing::{MAX_PAIRINGS, Pairings};
    let (req, _) = protocol::<wire::PairRequest, wire::PairResponse>(
        bytes,
        wire::MAX_PAIR_REQUEST_BYTES,
        wire::MAX_PAIR_RESPONSE_BYTES,
    );
    let Some(req) = req else {
        return;
    };
    let peer = *source();
    let mut p = Pairings::default();
    let committed = [0x42u8; 32];
    let commit: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(committed).into();
    p.offer(peer, "fuzz", commit, 1);
    let answer = match req {
        wire::PairRequest::Offer { node_name, commit } => {
            let r = p.offer(peer, &node_name, commit, 2);
            assert!(matches!(r, wire::PairResponse::Nonce(_)), "one asker is never too many");
            r
        }
        wire::PairRequest::Reveal(nonce) => {
            let (r, new) = p.reveal(peer, h.me, nonce, 2);
            assert_eq!(
                new.is_some(),
                nonce == committed,
                "listed only with the committed nonce"
            );
            r
        }
        wire::PairRequest::Poll => p.poll(peer, 2),
    };
    assert!(!matches!(answer, wire::PairResponse::Approved(_)), "nobody approved it");
    assert!(p.pending(3).len() <= MAX_PAIRINGS);
}

/// A catch-up request: the answer stays within its bounds.
fn handle_catch_up(h: &Handled, bytes: &[u8]) {
    let store = &h.store;
    let (req, _) = protocol::<wire::SyncRequest, wire::SyncResponse>(
        bytes,
        wire::MAX_SYNC_REQUEST_BYTES,
        wire::MAX_SYNC_RESPONSE_BYTES,
    );
    let Some(req) = req else {
        return;
    };
    let answer = store.read_now(move |r| crate::sync::answer(r, req)).expect("an answer");
    match &answer {
        wire::SyncResponse::Digest { ids, .. } => assert!(ids.len() <= wire::MAX_SYNC_IDS),
        wire::SyncResponse::Messages(m) => assert!(m.len() <= wire::MAX_SYNC_IDS),
        wire::SyncResponse::Unavailable(_) => {}
    }
    let size = postcard::to_allocvec(&answer).expect("encodes").len();
    assert!(size <= wire::MAX_SYNC_RESPONSE_BYTES, "{size} bytes");
}

/// An announcement: never this node's label, never a line break in a label.
fn handle_announcement(h: &Handled, bytes: &[u8]) {
    let (a, _) = protocol::<wire::Announcement, wire::Announcement>(
        bytes,
        wire::MAX_ANNOUNCEMENT_BYTES,
        wire::MAX_ANNOUNCEMENT_BYTES,
    );
    let Some(a) = a.filter(|a| a.check().is_ok()) else {
        return;
    };
    let mut dir = h.dir.lock().unwrap_or_else(|e| e.into_inner());
    let name = a.node_name.clone();
    let _ = dir.update(*source(), a, std::time::Instant::now(), 3);
    let label = dir.label(source(), Some(&name), &h.my_name);
    let mine = dir.label(&h.me, Some(&h.my_name), &h.my_name);
    assert_ne!(label, mine, "a peer took this node's label");
    assert!(
        !label.contains('\n') && !label.chars().any(char::is_control),
        "{label:?}"
    );
}

/// An admission proof from an identity the mesh never admitted: never a member's.
fn handle_proof(h: &Handled, bytes: &[u8]) {
    let (req, _) = protocol::<wire::AdmitRequest, wire::AdmitResponse>(
        bytes,
        wire::MAX_ADMIT_REQUEST_BYTES,
        wire::MAX_GRANT_BYTES,
    );
    let Some(wire::AdmitRequest::Prove { proof, voucher, .. }) = req else {
        return;
    };
    // The prover is an identity the mesh never admitted.
    let verdict = mesh().verify(&proof, voucher.as_ref(), source(), &h.me);
    assert!(
        !matches!(verdict, crate::mesh::Verdict::Member | crate::mesh::Verdict::Stale),
        "{verdict:?}"
    );
}

/// A join request: a peer's code is never taken for this node's, an unknown token never used.
fn handle_join(h: &Handled, bytes: &[u8]) {
    let store = &h.store;
    let (req, _) =
        protocol::<wire::JoinRequest, wire::JoinResponse>(bytes, wire::MAX_JOIN_REQUEST_BYTES, wire::MAX_GRANT_BYTES);
    let Some(req) = req else {
        return;
    };
    // What the inviter checks: the code is its own (signed by its key), then the token.
    assert!(
        !(req.invite.verify() && req.invite.body.inviter == h.me),
        "a peer made a join code in this node's name"
    );
    let token = req.invite.body.token;
    let job = store
        .try_write("fuzz join", move |t| crate::store::ops::use_invite(t, &token, 4))
        .expect("queued");
    let used = block_on(job).expect("writer").expect("use_invite");
    assert!(
        matches!(used, crate::store::InviteUse::Unknown),
        "an unknown token was accepted: {used:?}"
    );
}
