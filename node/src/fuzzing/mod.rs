//! Entry points of the fuzz targets (`node/fuzz`, run with cargo-fuzz), one per kind of
//! bytes that reach a node from outside:
//!
//! * [`wire()`]: what peers send: every request-response protocol's frames (through the
//!   codec, with its size limits), sealed and plain gossip payloads, key chains;
//! * [`local_api`]: what a local client sends the daemon (length-delimited frames, hellos,
//!   requests and the names in them), and what a daemon answers;
//! * [`join_code`]: the text a user pastes into `mesh join`;
//! * [`config_files`]: `config.toml` and `mesh.key` as found on disk;
//! * [`text()`]: peer text as the CLI and the MCP adapter show it ([`crate::text`]);
//! * [`handlers`]: what a node *does* with peers' frames: the inbound handlers behind the
//!   decoders, on a real (in-memory) store: a delivery batch committed to inboxes, a
//!   catch-up request answered, an announcement taken into the directory, an admission
//!   proof judged, a join code checked and its token looked up.
//!
//! Each must return normally whatever it is given: decoding fails with an error, never a
//! panic or an allocation beyond the limits; what decodes encodes back to the same value;
//! what is shown keeps the promises of [`crate::text`].
//! `node/tests/fuzz_regressions.rs` runs the seed inputs and every input a fuzzer ever
//! found (`node/fuzz/regressions/`) through them on each `cargo test`.
//!
//! ```
//! mesh_node::fuzzing::wire(&[0, 3, 0xff, 0xff, 0xff]);
//! mesh_node::fuzzing::join_code(b"agentmesh:not-a-code");
//! ```

mod handlers;
mod seeds;

pub use handlers::handlers;
pub use seeds::seeds;

use std::fmt::Debug;
use std::sync::OnceLock;

use bytes::BytesMut;
use futures::executor::block_on;
use libp2p::PeerId;
use libp2p::request_response::Codec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use crate::api::{
    ClientFrame, ClientHello, HELLO_FRAME_LIMIT, HistoryQuery, InboxQuery, PublishRequest, Request, SendRequest,
    ServerFrame, ServerHello,
};
use crate::config::Config;
use crate::ids::{Address, AgentName, MessageId, NodeName, TopicName};
use crate::mesh::{Grant, Invite, Membership};
use crate::wire::{self, PostcardCodec};

/// Frame size limit used for the local API target (the daemon's default).
const API_FRAME_LIMIT: usize = 1024 * 1024;
/// Request limit used for the delivery protocol (the default config's).
fn dm_request_limit() -> usize {
    Config::default().max_wire_request_bytes()
}

/// A fixed mesh (so sealed seeds open in every run).
fn mesh() -> &'static Membership {
    static MESH: OnceLock<Membership> = OnceLock::new();
    MESH.get_or_init(|| {
        Membership::from_grant(
            Grant {
                mesh_id: crate::mesh::MeshId([1; 16]),
                name_key: [2; 32],
                epochs: vec![crate::mesh::Epoch {
                    number: 1,
                    secret: [3; 32],
                    roster: Vec::new(),
                }],
                revoked: Default::default(),
                members: Default::default(),
            },
            None,
        )
        .expect("a valid grant")
    })
}

/// A fixed key: the publisher of sealed seeds and the signer of the join code seed.
fn key() -> &'static libp2p::identity::Keypair {
    static KEY: OnceLock<libp2p::identity::Keypair> = OnceLock::new();
    KEY.get_or_init(|| libp2p::identity::Keypair::ed25519_from_bytes([4; 32]).expect("a valid key"))
}

fn source() -> &'static PeerId {
    static PEER: OnceLock<PeerId> = OnceLock::new();
    PEER.get_or_init(|| key().public().to_peer_id())
}

/// Decodes `bytes` as postcard; what decodes must encode and decode to the same value.
fn postcard_round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) -> Option<T> {
    let v: T = postcard::from_bytes(bytes).ok()?;
    let again = postcard::to_allocvec(&v).expect("a decoded value encodes");
    let back: T = postcard::from_bytes(&again).expect("an encoded value decodes");
    assert_eq!(back, v, "postcard round trip");
    Some(v)
}

/// Reads `bytes` as a request and as a response of a request-response protocol, as the
/// network does (length prefix, size limits checked before reading), and writes back what
/// it read.
fn protocol<Req, Resp>(bytes: &[u8], max_req: usize, max_resp: usize) -> (Option<Req>, Option<Resp>)
where
    Req: Serialize + DeserializeOwned + PartialEq + Debug + Send + Sync + 'static,
    Resp: Serialize + DeserializeOwned + PartialEq + Debug + Send + Sync + 'static,
{
    let mut codec = PostcardCodec::<Req, Resp>::new(max_req, max_resp);
    let p = wire::DM_PROTOCOL;
    let req = block_on(codec.read_request(&p, &mut futures::io::Cursor::new(bytes))).ok();
    if let Some(r) = &req {
        let mut out = futures::io::Cursor::new(Vec::new());
        if block_on(codec.write_request(&p, &mut out, clone_via_postcard(r))).is_ok() {
            let back = block_on(codec.read_request(&p, &mut futures::io::Cursor::new(out.into_inner())))
                .expect("a written request reads back");
            assert_eq!(&back, r, "request round trip");
        }
    }
    let resp = block_on(codec.read_response(&p, &mut futures::io::Cursor::new(bytes))).ok();
    if let Some(r) = &resp {
        let mut out = futures::io::Cursor::new(Vec::new());
        if block_on(codec.write_response(&p, &mut out, clone_via_postcard(r))).is_ok() {
            let back = block_on(codec.read_response(&p, &mut futures::io::Cursor::new(out.into_inner())))
                .expect("a written response reads back");
            assert_eq!(&back, r, "response round trip");
        }
    }
    (req, resp)
}

fn clone_via_postcard<T: Serialize + DeserializeOwned>(v: &T) -> T {
    postcard::from_bytes(&postcard::to_allocvec(v).expect("encodes")).expect("decodes")
}

/// Bytes from a peer. The first byte picks what they are taken for.
pub fn wire(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    match pick % 10 {
        n @ 0..=5 => wire_protocol(n, bytes),
        n => wire_gossip(n, bytes),
    }
}

/// `bytes` read as one of the request-response protocols (`pick` 0 to 5).
fn wire_protocol(pick: u8, bytes: &[u8]) {
    match pick {
        0 => {
            let (req, _) =
                protocol::<wire::DmRequest, wire::DmResponse>(bytes, dm_request_limit(), wire::MAX_DM_RESPONSE_BYTES);
            if let Some(wire::DmRequest::Deliver(msgs)) = req {
                // What the recipient checks before storing.
                for m in &msgs {
                    let _ = m.text.trim().is_empty();
                    let _ = m.id.timestamp_ms();
                }
            }
        }
        1 => {
            protocol::<wire::AdmitRequest, wire::AdmitResponse>(
                bytes,
                wire::MAX_ADMIT_REQUEST_BYTES,
                wire::MAX_GRANT_BYTES,
            );
        }
        2 => {
            let (req, _) = protocol::<wire::JoinRequest, wire::JoinResponse>(
                bytes,
                wire::MAX_JOIN_REQUEST_BYTES,
                wire::MAX_GRANT_BYTES,
            );
            if let Some(r) = req {
                let _ = r.invite.verify();
            }
        }
        3 => {
            let (a, b) = protocol::<wire::Announcement, wire::Announcement>(
                bytes,
                wire::MAX_ANNOUNCEMENT_BYTES,
                wire::MAX_ANNOUNCEMENT_BYTES,
            );
            for a in a.iter().chain(b.iter()) {
                let _ = a.check();
            }
        }
        4 => {
            protocol::<wire::SyncRequest, wire::SyncResponse>(
                bytes,
                wire::MAX_SYNC_REQUEST_BYTES,
                wire::MAX_SYNC_RESPONSE_BYTES,
            );
        }
        // The small members-only ones: probes and hole punches from fresh ports.
        _ => {
            protocol::<u64, u64>(bytes, 64, 64);
            protocol::<wire::PunchRequest, wire::PunchResponse>(bytes, wire::MAX_PUNCH_BYTES, wire::MAX_PUNCH_BYTES);
        }
    }
}

/// `bytes` read as gossip, sealed or not, or as a key chain (`pick` 6 to 9).
fn wire_gossip(pick: u8, bytes: &[u8]) {
    match pick {
        // Gossip as it arrives: sealed for the mesh, then decoded.
        6 => {
            let topic = wire::directory_topic(mesh()).hash();
            if let Ok(plain) = mesh().open_sealed(topic.as_str(), source(), bytes)
                && let Some(wire::DirectoryGossip::Announce(a)) = postcard_round_trip::<wire::DirectoryGossip>(&plain)
            {
                let _ = a.check();
            }
        }
        7 => {
            let topic = TopicName::new("fuzz").expect("topic");
            let hash = wire::gossip_topic(mesh(), &topic).hash();
            if let Ok(plain) = mesh().open_sealed(hash.as_str(), source(), bytes) {
                postcard_round_trip::<wire::TopicEnvelope>(&plain);
            }
        }
        // The payloads behind the seal (which a fuzzer cannot forge), decoded directly.
        8 => {
            if let Some(wire::DirectoryGossip::Announce(a)) = postcard_round_trip::<wire::DirectoryGossip>(bytes) {
                let _ = a.check();
            }
            postcard_round_trip::<wire::TopicEnvelope>(bytes);
        }
        // A key chain handed over by a member (admission, rekey, join).
        _ => {
            if let Some(g) = postcard_round_trip::<Grant>(bytes) {
                let _ = g.check();
                if let Ok(m) = Membership::from_grant(g.clone(), None) {
                    let _ = m.topic_tag("t");
                }
                let mut mine = mesh().clone();
                let _ = mine.accept_grant(&g);
            }
        }
    }
}

/// Bytes a local client sends the daemon (or a daemon its client). The first byte picks.
pub fn local_api(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        // A stream of frames, as the server reads them after the hello.
        0 => {
            let mut codec = LengthDelimitedCodec::builder()
                .max_frame_length(API_FRAME_LIMIT)
                .new_codec();
            let mut buf = BytesMut::from(bytes);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                if let Ok(f) = postcard::from_bytes::<ClientFrame>(&frame) {
                    request_names(&f.request);
                    let again = postcard::to_allocvec(&f).expect("encodes");
                    let back: ClientFrame = postcard::from_bytes(&again).expect("decodes");
                    assert_eq!(format!("{back:?}"), format!("{f:?}"), "request round trip");
                }
            }
        }
        1 => {
            let mut codec = LengthDelimitedCodec::builder()
                .max_frame_length(HELLO_FRAME_LIMIT)
                .new_codec();
            let mut buf = BytesMut::from(bytes);
            if let Ok(Some(frame)) = codec.decode(&mut buf) {
                postcard_round_trip::<ClientHello>(&frame);
            }
        }
        2 => {
            if let Ok(f) = postcard::from_bytes::<ServerFrame>(bytes) {
                let again = postcard::to_allocvec(&f).expect("encodes");
                let back: ServerFrame = postcard::from_bytes(&again).expect("decodes");
                assert_eq!(format!("{back:?}"), format!("{f:?}"), "answer round trip");
            }
        }
        _ => {
            postcard_round_trip::<ServerHello>(bytes);
        }
    }
}

/// Runs the parsers the daemon applies to the names and addresses in a request.
fn request_names(r: &Request) {
    let agent = |s: &str| {
        let _ = AgentName::new(s);
    };
    let topic = |s: &str| {
        let _ = TopicName::parse_user(s);
    };
    let address = |s: &str| {
        if let Ok(a) = s.parse::<Address>() {
            let again = a.to_string().parse::<Address>().expect("a written address parses");
            assert_eq!(again, a, "address round trip");
        }
    };
    let node = |s: &str| {
        let _ = s.parse::<PeerId>();
        let _ = crate::net::parse_multiaddr(s);
        let _ = NodeName::new(s.trim());
    };
    match r {
        Request::Dial { addr } => {
            let _ = crate::net::parse_multiaddr(addr);
        }
        Request::Forget { node: n } | Request::Ping { node: n } | Request::Remove { node: n } => node(n),
        Request::Send(SendRequest { from, to, text, .. }) => {
            agent(from);
            address(to);
            let _ = text.trim().is_empty();
        }
        Request::Inbox(InboxQuery { agent: a, after, .. }) => {
            agent(a);
            let _ = after.as_deref().map(crate::api::page::parse_inbox_cursor);
        }
        Request::MarkRead { agent: a, .. }
        | Request::MarkNotified { agent: a, .. }
        | Request::Counts { agent: a }
        | Request::Waker { agent: a }
        | Request::SetSummary { agent: a, .. } => agent(a),
        Request::Subscribe { agent: a, topic: t } | Request::Unsubscribe { agent: a, topic: t } => {
            agent(a);
            topic(t);
        }
        Request::Publish(PublishRequest { agent: a, topic: t, .. }) => {
            agent(a);
            topic(t);
        }
        Request::History(HistoryQuery {
            agent: a,
            target,
            grep,
            before,
            after,
            ..
        }) => {
            for c in [before, after].into_iter().flatten() {
                let _ = crate::api::page::parse_history_cursor(c);
            }
            if let Some(a) = a {
                agent(a);
            }
            if let Some(t) = target {
                address(t);
                topic(t.trim_start_matches('#'));
            }
            let _ = grep.as_ref().map(|g| g.to_lowercase());
        }
        Request::Outbox { agent: Some(a), .. } => agent(a),
        Request::Register { agent: spec, .. } | Request::Claim { agent: spec, .. } => {
            agent(&spec.name);
            let _ = crate::node::normalize_kind(&spec.kind);
        }
        Request::Watch { agents } => agents.iter().for_each(|a| agent(a)),
        Request::Join { code } => {
            let _ = Invite::decode(code);
        }
        _ => {}
    }
}

/// Text pasted into `mesh join`.
pub fn join_code(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(inv) = Invite::decode(&text) {
        assert!(inv.verify(), "a decoded join code carries a good signature");
        let again = Invite::decode(&inv.encode()).expect("an encoded join code decodes");
        assert_eq!(again, inv, "join code round trip");
    }
}

/// A file from the home: `config.toml` (first byte even) or `mesh.key` (odd).
pub fn config_files(data: &[u8]) {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        let text = String::from_utf8_lossy(bytes);
        if let Ok(cfg) = Config::parse(&text)
            && cfg.validate().is_ok()
        {
            let _ = cfg.listen_addrs();
            let _ = cfg.max_wire_request_bytes();
            let _ = cfg.topic_sync_every();
            let _ = crate::net::ping_timing(cfg.presence.heartbeat);
        }
    } else if let Ok(m) = Membership::from_file_bytes(bytes) {
        let again = m.to_file_bytes().expect("encodes");
        let back = Membership::from_file_bytes(&again).expect("a written key file reads back");
        assert!(back.grant() == m.grant(), "key file round trip");
    }
}

/// What no shown peer text may hold: control characters, line and paragraph separators,
/// format characters (Unicode category Cf, tag characters included) and the Hangul fillers.
/// Written out again here rather than taken from [`crate::text`], so the check does not
/// share the code it checks.
fn unseen_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}' | '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}'
            | '\u{890}' | '\u{891}' | '\u{8e2}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}' | '\u{110bd}' | '\u{110cd}' | '\u{13430}'..='\u{1343f}'
            | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0001}' | '\u{e0020}'..='\u{e007f}'
            | '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}')
}

/// Peer text, as the CLI and the MCP adapter show it. The first byte is the cap of a
/// one-line field; the rest is the text (invalid UTF-8 arrives as U+FFFD, as it would from
/// a decoder).
///
/// * [`crate::text::block`]: one character out for each one in, newlines and tabs where
///   they were, every other character it changes is U+FFFD, and no control character
///   other than newline and tab, no line or paragraph separator, no format character
///   (Unicode category Cf) and no Hangul filler;
/// * [`crate::text::field`]: at most the cap in characters (cut with `…`, the text unchanged
///   in length when it fits), and no such character at all: one line;
/// * [`crate::text::quote`]: one `> ` line for each line of the block;
/// * [`crate::text::element_content`]: the block, unable to close its element in any ASCII
///   case, and the block itself when it holds no `</`.
pub fn text(data: &[u8]) {
    use crate::text;
    let Some((&cap, bytes)) = data.split_first() else {
        return;
    };
    let cap = usize::from(cap);
    let input = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = input.chars().collect();

    let block = text::block(&input);
    let shown: Vec<char> = block.chars().collect();
    assert_eq!(shown.len(), chars.len(), "block: one character for one");
    for (&before, &after) in chars.iter().zip(&shown) {
        if matches!(before, '\n' | '\t') {
            assert_eq!(after, before, "block: newlines and tabs stay");
        } else {
            assert!(!matches!(after, '\n' | '\t'), "block: {before:?} became a {after:?}");
            assert!(
                after == before || after == text::REPLACED,
                "block: {before:?} became {after:?}"
            );
            assert!(!unseen_or_control(after), "block: {after:?} passes");
        }
    }

    let field = text::field(&input, cap);
    let n = field.chars().count();
    assert!(n <= cap, "field: {n} characters over a cap of {cap}");
    if chars.len() <= cap {
        assert_eq!(n, chars.len(), "field: a text that fits keeps its length");
    } else if cap > 0 {
        assert!(field.ends_with('…'), "field: a cut text ends with …");
    }
    if let Some(c) = field.chars().find(|&c| unseen_or_control(c)) {
        panic!("field: {c:?} passes");
    }

    let quoted = text::quote(&input);
    assert_eq!(
        quoted.split('\n').count(),
        block.split('\n').count(),
        "quote: one line for one"
    );
    assert!(
        quoted.split('\n').all(|l| l.starts_with("> ")),
        "quote: an unmarked line"
    );

    let content = text::element_content(&input, "channel");
    assert!(
        !content.to_ascii_lowercase().contains("</channel"),
        "element content closes its element"
    );
    if !block.contains("</") {
        assert_eq!(content, block, "element content changed text that closes nothing");
    }
    if let Some(c) = content
        .chars()
        .find(|&c| unseen_or_control(c) && !matches!(c, '\n' | '\t'))
    {
        panic!("element content: {c:?} passes");
    }
}
