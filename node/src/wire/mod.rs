//! What nodes say to each other. Specified in `docs/PROTOCOL.md`; keep the two in step.
//!
//! * `/agentmesh/admit/2` (request-response): membership proofs when a connection opens
//!   ([`AdmitRequest`]). Nothing else runs with a peer until it has proved membership (see
//!   [`crate::net::gate`]). Open to anyone, so its requests are at most
//!   [`MAX_ADMIT_REQUEST_BYTES`].
//! * `/agentmesh/join/2` (request-response): a join code's token traded for membership;
//!   requests at most [`MAX_JOIN_REQUEST_BYTES`].
//! * `/agentmesh/pair/1` (request-response): a node not in the mesh asks a nearby member
//!   to admit it, and gets a join code once the member's human approves (after both
//!   showed the same comparison code); requests at most [`MAX_PAIR_REQUEST_BYTES`].
//! * `/agentmesh/rekey/1` (request-response, members only): a newer mesh key chain pushed
//!   to members after a removal.
//! * `/agentmesh/dm/1` (request-response): batches of direct messages, answered with a
//!   per-message outcome once the recipient node has committed them.
//! * `/agentmesh/hello/1` (request-response): exchange of [`Announcement`]s once a peer is
//!   admitted, so its agents are known at once.
//! * `/agentmesh/sync/1` (request-response): topic catch-up. A subscriber asks a node for
//!   the ids of what its agents published on a topic since a position of its log
//!   ([`SyncRequest::Digest`]), then fetches the messages it does not have
//!   ([`SyncRequest::Fetch`]): what gossip missed while the subscriber was down, cut off, or
//!   too busy is recovered from the publishing node itself.
//! * gossipsub topic `agentmesh/2/d/<tag>`: periodic sealed [`Announcement`]s (presence).
//! * gossipsub topics `agentmesh/2/t/<tag>`: sealed [`TopicEnvelope`]s.
//!
//! Gossip topic names carry a keyed hash of the mesh's topic name, not the name, and
//! gossip payloads are sealed for the mesh ([`crate::mesh`]). All payloads are postcard.
//! Sizes are checked before decoding.
mod codec;

use libp2p::StreamProtocol;
use libp2p::gossipsub;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{AgentName, MessageId, NodeName, TopicName};
use crate::mesh::{Grant, Invite, Membership, Proof, Refusal, Voucher};

pub use codec::{InboundBudget, PostcardCodec, length_prefix};

/// Admission protocol.
pub const ADMIT_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/admit/2");
/// Join protocol.
pub const JOIN_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/join/2");
/// Key-chain renewal between members.
pub const REKEY_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/rekey/1");
/// Direct-message protocol.
pub const DM_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/dm/1");
/// Hello (directory exchange) protocol.
pub const HELLO_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/hello/1");
/// Hole punches from fresh ports, between members reached through relays only.
pub const PUNCH_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/punch/1");
/// Largest punch request or answer, in bytes (a few dozen are used).
pub const MAX_PUNCH_BYTES: usize = 128;
/// Topic catch-up protocol.
pub const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/sync/1");
/// Largest catch-up request, in bytes.
pub const MAX_SYNC_REQUEST_BYTES: usize = 64 * 1024;
/// Largest catch-up response, in bytes.
pub const MAX_SYNC_RESPONSE_BYTES: usize = 4 * 1024 * 1024;
/// Most ids in one digest or fetch.
pub const MAX_SYNC_IDS: usize = 1024;
/// Text bytes a node packs into one fetch response (at least one message is sent).
pub const SYNC_FETCH_TEXT_BYTES: usize = 1024 * 1024;
/// Identify `protocol_version` of agentmesh nodes.
pub const IDENTIFY_PROTOCOL_VERSION: &str = "/agentmesh/2";
/// Prefix of the gossipsub topic carrying node announcements.
pub const DIRECTORY_PREFIX: &str = "agentmesh/2/d/";
/// Prefix of gossipsub topics carrying user topics.
pub const TOPIC_PREFIX: &str = "agentmesh/2/t/";
/// Largest announcement a node accepts, in bytes.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 256 * 1024;
/// Most agents one announcement may list.
pub const MAX_AGENTS_PER_NODE: usize = 512;
/// Largest path (cwd, repo) in an announcement, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Largest delivery response (outcomes only), in bytes.
pub const MAX_DM_RESPONSE_BYTES: usize = 256 * 1024;
/// Largest admission request (a name and a proof), in bytes: anyone may send one.
pub const MAX_ADMIT_REQUEST_BYTES: usize = 1024;
/// Largest join request (a join code and a name), in bytes: anyone may send one.
pub const MAX_JOIN_REQUEST_BYTES: usize = 4096;
/// Largest key chain ([`Grant`]) on the wire, in bytes: epochs with their rosters and the
/// removed nodes. Read only as the answer to a request of ours (our proof, our join) or
/// from a member.
pub const MAX_GRANT_BYTES: usize = 512 * 1024;
/// Longest node name carried before admission.
pub const MAX_CLAIMED_NAME: usize = 64;

/// The gossipsub topic for a user topic in this mesh.
pub fn gossip_topic(m: &Membership, topic: &TopicName) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("{TOPIC_PREFIX}{}", m.topic_tag(&format!("t:{topic}"))))
}

/// The gossipsub topic of this mesh's directory.
pub fn directory_topic(m: &Membership) -> gossipsub::IdentTopic {
    gossipsub::IdentTopic::new(format!("{DIRECTORY_PREFIX}{}", m.topic_tag("directory")))
}

/// The gossipsub message id: the first 20 bytes of SHA-256 over the message `data`.
///
/// Any implementation can compute it. Every payload is sealed with a fresh nonce, so two
/// publications of the same text have different ids.
pub fn gossip_message_id(msg: &gossipsub::Message) -> gossipsub::MessageId {
    let digest = Sha256::digest(&msg.data);
    gossipsub::MessageId::from(digest[..20].to_vec())
}

/// Request on `/agentmesh/admit/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmitRequest {
    /// "I am a member": sent by both sides when a connection opens.
    Prove {
        /// The sender's node name (a claim, shown to outsiders only as such).
        node_name: String,
        /// The proof, bound to both PeerIds.
        proof: Proof,
        /// The sender's voucher from the member that admitted it (none for a founder).
        voucher: Option<Voucher>,
    },
}

/// Response on `/agentmesh/admit/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmitResponse {
    /// Proof accepted; an outdated prover gets the current chain.
    Admitted(Option<Grant>),
    /// Proof refused: the connection closes.
    Refused(Refusal),
}

/// Request on `/agentmesh/join/1`: a join code, sent over the Noise channel to the
/// inviter it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The code.
    pub invite: Invite,
    /// The joining node's name.
    pub node_name: String,
}

/// Response on `/agentmesh/join/2`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Membership: the key chain (listing the joiner among the members) and the
    /// inviter's voucher for the joiner.
    Granted(Box<Grant>, Voucher),
    /// Refused, with the reason for the joining user.
    Refused(JoinRefusal),
}

/// Why an inviter refused a join: a fixed vocabulary, so an inviter cannot put text of its
/// choosing in front of the joining user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    /// The code was not made by the node it names, or was altered.
    #[error("this join code was not made by this node (or was altered)")]
    NotOurs,
    /// The inviter left the mesh the code is for.
    #[error("this join code is for a mesh the inviting node has left")]
    LeftMesh,
    /// The inviter has no record of the code.
    #[error("the inviting node does not know this join code (made before it was reset?)")]
    Unknown,
    /// Expired (ms since the epoch, the inviter's clock).
    #[error("this join code expired; ask for a new one (mesh invite)")]
    Expired(u64),
    /// Already used up.
    #[error("this join code was already used; ask for a new one (mesh invite)")]
    Used,
    /// The inviter could not record the join (its disk).
    #[error("the inviting node cannot record the join (a storage error on its side); try again")]
    Storage,
    /// The inviter runs in open mode: there is nothing to join.
    #[error("that node is in open mode: start yours with --open instead of joining")]
    OpenMode,
    /// Too many attempts on one connection.
    #[error("too many join attempts")]
    TooManyAttempts,
}

/// Pairing protocol: a node not in the mesh asks a nearby member to admit it.
pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/pair/1");
/// Largest pairing request, in bytes: anyone may send one.
pub const MAX_PAIR_REQUEST_BYTES: usize = 256;
/// Largest pairing response (a join code at most), in bytes.
pub const MAX_PAIR_RESPONSE_BYTES: usize = 8 * 1024;

/// Request on `/agentmesh/pair/1`, from a node asking to be admitted. Both sides derive the
/// comparison code from the two PeerIds of the connection and two nonces, the asker's
/// committed to before it sees the member's (as in Bluetooth's numeric comparison), so
/// that a node in the middle cannot make the codes on both screens match except by a
/// one-in-a-million guess.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairRequest {
    /// "Admit me": the asker's name (a claim) and SHA-256 of its nonce. Answered with the
    /// member's nonce.
    Offer {
        /// The asking node's name.
        node_name: String,
        /// SHA-256 of the nonce it reveals next.
        commit: [u8; 32],
    },
    /// The asker's nonce: the code can now be shown. Answered like a `Poll`.
    Reveal([u8; 32]),
    /// "Has your human decided?"
    Poll,
}

/// Response on `/agentmesh/pair/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PairResponse {
    /// To an `Offer`: the member's nonce.
    Nonce([u8; 32]),
    /// Shown to the member's human, not decided yet (ms since the epoch, the member's
    /// clock, until it expires).
    Waiting(u64),
    /// Approved: a join code for the asker alone (one use), to join with as usual.
    Approved(Box<Invite>),
    /// Refused, for a reason from a fixed vocabulary.
    Refused(PairRefusal),
}

/// Why a member refused a pairing: a fixed vocabulary, so that no text of the member's
/// choosing reaches the asking user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PairRefusal {
    /// Its human said no.
    #[error("the member's user refused this node")]
    Denied,
    /// Nobody decided in time.
    #[error("nobody on the member answered in time; ask again (mesh join <node>)")]
    Expired,
    /// Too many nodes asking at once, or too often.
    #[error("the member has too many pairing requests right now; try again in a minute")]
    Busy,
    /// It runs in open mode: there is nothing to join.
    #[error("that node is in open mode: start yours with --open instead of joining")]
    OpenMode,
    /// A `Reveal` or `Poll` without an `Offer`, or a nonce that does not match.
    #[error("the member has no pairing request of this node (expired?); ask again")]
    Unknown,
}

/// One direct message as it travels between nodes. The sending node is not in it: the
/// recipient takes it from the authenticated connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// Unique id, chosen by the sender.
    pub id: MessageId,
    /// Sending agent, vouched for by the sending node.
    pub from: AgentName,
    /// Recipient agent on the receiving node.
    pub to: AgentName,
    /// Sender's clock when the message was created (ms since the epoch).
    pub sent_at_ms: u64,
    /// The message this one answers, if any.
    pub reply_to: Option<MessageId>,
    /// The text (UTF-8, untrusted).
    pub text: String,
}

/// Request on `/agentmesh/dm/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmRequest {
    /// Messages in send order. The recipient commits them before answering.
    Deliver(Vec<WireMessage>),
    /// Read receipts (at most [`MAX_RECEIPTS`]): messages the requester's agents received
    /// from this node's agents and were shown. Answered with one outcome per receipt:
    /// `Stored` (recorded), `Duplicate` (recorded before), `Rejected` (no message of ours
    /// to the requester has that id).
    Read(Vec<ReadReceipt>),
    /// Permission requests of agent sessions, between members (see [`PermissionRelay`]).
    /// Answered with one outcome, under the all-zero id.
    Permission(PermissionRelay),
}

/// Permission requests relayed between member nodes. A node that lists other nodes'
/// requests (`[permissions] receive`) says [`PermissionRelay::Watch`] to each member it is
/// admitted to; that member then sends it its sessions' requests ([`PermissionRelay::Asked`],
/// the pending ones at once) and how each was settled ([`PermissionRelay::Settled`]).
/// An answer given on the watching node goes to the asking session's node
/// ([`PermissionRelay::Answer`]), which keeps the first answer: `Stored` when it won,
/// `Rejected(Invalid(why))` otherwise. Texts are untrusted and cut to the limits below.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionRelay {
    /// "Send me your sessions' permission requests."
    Watch,
    /// A session of the sender's agent asks (or still asks: sent again, a duplicate).
    Asked(RelayedAsk),
    /// A request of the sender's was answered (by anyone).
    Settled(PermissionVerdict),
    /// The receiver's request, answered on the sender.
    Answer(PermissionVerdict),
}

/// Longest request id on the wire (Claude Code uses five letters).
pub const MAX_PERMISSION_ID: usize = 16;
/// Longest tool name or answerer on the wire, in characters.
pub const MAX_PERMISSION_TOOL: usize = 128;
/// Longest description or input preview on the wire, in characters.
pub const MAX_PERMISSION_TEXT: usize = 2000;

/// A permission request as relayed to a watching member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedAsk {
    /// The sender's agent whose session asks.
    pub agent: AgentName,
    /// The session's id for the request.
    pub id: String,
    /// The tool.
    pub tool: String,
    /// What the call does.
    pub description: String,
    /// Its input, cut short.
    pub input_preview: String,
}

/// A permission request's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionVerdict {
    /// The asking agent (on the node the request comes from).
    pub agent: AgentName,
    /// The request id.
    pub id: String,
    /// Allowed (else denied).
    pub allow: bool,
    /// Who answered, in the answering node's words (the receiver adds that node's name).
    pub by: String,
}

/// Most read receipts in one [`DmRequest::Read`].
pub const MAX_RECEIPTS: usize = 1024;

/// "Your message `id` was shown to its recipient at `at_ms`." The reader is the agent the
/// message was sent to; the reporting node is the authenticated connection's, which must
/// be the node the message was delivered to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReceipt {
    /// The message (the sender's id).
    pub id: MessageId,
    /// When its recipient was shown it (ms since the epoch, the reporting node's clock).
    pub at_ms: u64,
}

/// What the recipient node did with one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Committed to the recipient agent's inbox.
    Stored,
    /// Already had it (an earlier attempt got through); counts as delivered.
    Duplicate,
    /// Refused for good; the sender turns it into a dead letter with this reason.
    Rejected(Rejection),
}

/// Why a recipient node refused a message for good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rejection {
    /// No agent of that name lives on the recipient node.
    UnknownAgent,
    /// Larger than the recipient node accepts (its limit, in bytes).
    TooLarge(u64),
    /// Malformed (empty text, ...).
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::UnknownAgent => write!(f, "no such agent on the recipient node"),
            Rejection::TooLarge(max) => write!(f, "larger than the recipient node accepts ({max} bytes)"),
            Rejection::Invalid(why) => write!(f, "refused as invalid: {why}"),
        }
    }
}

/// Response on `/agentmesh/dm/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DmResponse {
    /// One outcome per message of the request, in the same order.
    Outcomes(Vec<(MessageId, Outcome)>),
    /// The recipient could not take the batch now (overloaded, disk trouble); retry later.
    Unavailable(String),
}

/// How an online agent receives messages. Encoded as the variant index 0, 1, 2: the first
/// two are the bytes of the boolean `push` (false, true) that nodes before it sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Its session reads mail when it next looks (a tool call, a turn).
    #[default]
    Poll,
    /// Pushed into its session at once (Claude Code channels).
    Push,
    /// A hook or plugin wakes its idle session with the mail.
    Woken,
}

/// What an agent is, as announced to the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Name on its node.
    pub name: AgentName,
    /// `human`, `claude-code`, `codex`, `opencode`, `other`.
    pub kind: String,
    /// Working directory, if the agent has one.
    pub cwd: Option<String>,
    /// Root of the git repository it works in, if any.
    pub repo: Option<String>,
    /// What it is working on, in its own words.
    pub summary: Option<String>,
    /// A session is attached to it right now.
    pub online: bool,
    /// How it receives messages while online.
    pub delivery: Delivery,
    /// Last time it was active (ms since the epoch, the hosting node's clock).
    pub last_seen_ms: u64,
}

/// A node's account of itself: its name and the agents it hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Human name of the node.
    pub node_name: NodeName,
    /// Software version (`agentmesh/0.1.0`).
    pub version: String,
    /// Increases with every announcement of this node (ms clock, kept monotonic).
    pub seq: u64,
    /// How often the node re-announces; receivers expire it after three missed ones.
    pub heartbeat_ms: u64,
    /// The agents it hosts.
    pub agents: Vec<AgentInfo>,
}

/// Why an announcement is refused: over a limit every receiver enforces.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnouncementError {
    /// More agents than [`MAX_AGENTS_PER_NODE`].
    #[error("{0} agents (limit {MAX_AGENTS_PER_NODE})")]
    TooManyAgents(usize),
    /// A heartbeat outside 100 ms to 1 h.
    #[error("heartbeat {0} ms out of range")]
    Heartbeat(u64),
    /// A path or summary over its limit.
    #[error("agent {0} has an oversized field")]
    OversizedField(AgentName),
    /// A kind over 32 bytes.
    #[error("agent {0} has an oversized kind")]
    OversizedKind(AgentName),
}

impl Announcement {
    /// Checks the limits a receiver enforces.
    pub fn check(&self) -> Result<(), AnnouncementError> {
        if self.agents.len() > MAX_AGENTS_PER_NODE {
            return Err(AnnouncementError::TooManyAgents(self.agents.len()));
        }
        if self.heartbeat_ms < 100 || self.heartbeat_ms > 3_600_000 {
            return Err(AnnouncementError::Heartbeat(self.heartbeat_ms));
        }
        for a in &self.agents {
            let long = |s: &Option<String>, max| s.as_ref().is_some_and(|s| s.len() > max);
            if long(&a.cwd, MAX_PATH_BYTES) || long(&a.repo, MAX_PATH_BYTES) || long(&a.summary, 4096) {
                return Err(AnnouncementError::OversizedField(a.name.clone()));
            }
            if a.kind.len() > 32 {
                return Err(AnnouncementError::OversizedKind(a.name.clone()));
            }
        }
        Ok(())
    }
}

/// Payload of a message on the directory topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryGossip {
    /// A node's current announcement.
    Announce(Announcement),
}

/// Payload of a message on a user topic. The publishing node is the gossipsub `source`,
/// verified by its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicEnvelope {
    /// Unique id, chosen by the publisher.
    pub id: MessageId,
    /// The topic; must match the gossipsub topic it arrived on.
    pub topic: TopicName,
    /// Publishing agent, vouched for by the publishing node.
    pub from: AgentName,
    /// Publisher's clock (ms since the epoch).
    pub sent_at_ms: u64,
    /// The message this one answers, if any.
    pub reply_to: Option<MessageId>,
    /// The text (UTF-8, untrusted).
    pub text: String,
}

impl TopicEnvelope {
    /// Whether a message from another node may be taken, by gossip or by catch-up: on the
    /// `topic` it came for, not empty, at most `max_text` bytes.
    pub fn acceptable(&self, topic: &TopicName, max_text: usize) -> bool {
        self.topic == *topic && !self.text.trim().is_empty() && self.text.len() <= max_text
    }
}

/// Request on `/agentmesh/sync/1`. Answered only with publications of the answering node's
/// own agents, so every message fetched is vouched for by the node it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Ids of what the answering node's agents published on `topic` at or after `since_ms`
    /// (the asker's subscription start), later in its log than `after`.
    Digest {
        /// The topic.
        topic: TopicName,
        /// The log `after` refers to ([`SyncResponse::Digest::log`] of an earlier answer); a
        /// different log (a new store) means "from the start".
        log: u64,
        /// Position in that log already covered (0: none).
        after: u64,
        /// Only messages sent at or after this time (ms since the epoch, the publisher's clock).
        since_ms: u64,
    },
    /// These publications of the answering node on `topic` (ids from a digest).
    Fetch {
        /// The topic.
        topic: TopicName,
        /// The ids (at most [`MAX_SYNC_IDS`]).
        ids: Vec<MessageId>,
    },
}

/// Response on `/agentmesh/sync/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Answer to [`SyncRequest::Digest`].
    Digest {
        /// The answering node's log (changes only when its store is replaced).
        log: u64,
        /// Ids of its publications, in log order (at most [`MAX_SYNC_IDS`]).
        ids: Vec<MessageId>,
        /// The position covered by this answer: ask from here next time.
        next: u64,
        /// There is more after `next`.
        more: bool,
    },
    /// Answer to [`SyncRequest::Fetch`]: the messages found, in the order asked (those not
    /// found, or not fitting in [`SYNC_FETCH_TEXT_BYTES`], are left out).
    Messages(Vec<TopicEnvelope>),
    /// Not now (busy, shutting down, disk trouble); ask again later.
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;
    use std::io;

    fn msg(text: &str) -> WireMessage {
        WireMessage {
            id: MessageId::new(),
            from: AgentName::new("a").unwrap(),
            to: AgentName::new("b").unwrap(),
            sent_at_ms: 1,
            reply_to: None,
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn codec_round_trips_and_enforces_limits() {
        let mut codec = PostcardCodec::<DmRequest, DmResponse>::new(1024, 1024);
        let req = DmRequest::Deliver(vec![msg("hello")]);
        let mut buf = futures::io::Cursor::new(Vec::new());
        codec.write_request(&DM_PROTOCOL, &mut buf, req.clone()).await.unwrap();
        let bytes = buf.into_inner();
        let got = codec
            .read_request(&DM_PROTOCOL, &mut futures::io::Cursor::new(bytes.clone()))
            .await
            .unwrap();
        assert_eq!(got, req);

        // A reader with a smaller limit refuses before allocating.
        let mut small = PostcardCodec::<DmRequest, DmResponse>::new(8, 8);
        let err = small
            .read_request(&DM_PROTOCOL, &mut futures::io::Cursor::new(bytes))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");

        // A writer refuses to send more than its limit.
        let big = DmRequest::Deliver(vec![msg(&"x".repeat(2000))]);
        let mut sink = futures::io::Cursor::new(Vec::new());
        assert!(codec.write_request(&DM_PROTOCOL, &mut sink, big).await.is_err());

        // Garbage is an error, not a panic.
        let err = codec
            .read_request(&DM_PROTOCOL, &mut futures::io::Cursor::new(vec![3, 0xff, 0xff, 0xff]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        // A huge declared length is refused without reading it.
        let err = codec
            .read_request(
                &DM_PROTOCOL,
                &mut futures::io::Cursor::new(vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            )
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn gossip_ids_differ_for_identical_texts() {
        let topic = TopicName::new("t").unwrap();
        let env = |id| TopicEnvelope {
            id,
            topic: topic.clone(),
            from: AgentName::new("a").unwrap(),
            sent_at_ms: 5,
            reply_to: None,
            text: "same".into(),
        };
        let mesh = Membership::generate();
        let m = |e: &TopicEnvelope| gossipsub::Message {
            source: None,
            data: postcard::to_allocvec(e).unwrap(),
            sequence_number: None,
            topic: gossip_topic(&mesh, &topic).hash(),
        };
        let a = env(MessageId::new());
        let b = env(MessageId::new());
        assert_ne!(gossip_message_id(&m(&a)), gossip_message_id(&m(&b)));
        assert_eq!(gossip_message_id(&m(&a)), gossip_message_id(&m(&a)));
        // Topic names on the wire are per-mesh tags, not the names.
        assert!(!gossip_topic(&mesh, &topic).hash().as_str().contains("/t/t"));
        assert_ne!(
            gossip_topic(&mesh, &topic).hash(),
            gossip_topic(&Membership::generate(), &topic).hash()
        );
    }
}

/// A round of a hole punch from a fresh port (`/agentmesh/punch/1`), asked by the member
/// with the smaller PeerId of two that reach each other through relays only. Each round
/// pairs a TCP port of each side that no earlier round used, so connection tracking left
/// by a failed round (a router that answered a punch packet with a reset) cannot spoil it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchRequest {
    /// The asker will punch from `from` (its public address and port for this round): a
    /// fresh port when `fresh` (its router keeps port numbers), else its listening port.
    Prepare {
        /// The round, counted by the asker.
        round: u32,
        /// Where the asker's packets will come from.
        from: std::net::SocketAddr,
        /// `from` is a fresh port (the answerer punches from its listening port), else the
        /// answerer must punch from a fresh port.
        fresh: bool,
    },
    /// Send the first packet: the answerer when this arrives, plus half the round trip;
    /// the asker when the answer arrives.
    Fire {
        /// The round prepared.
        round: u32,
    },
}

/// The answer to a [`PunchRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PunchResponse {
    /// Ready for the round: the answerer punches from `from`; `None` when it cannot take
    /// part (no public TCP address known, or its router does not keep port numbers when a
    /// fresh port is needed on its side).
    Prepared {
        /// The round.
        round: u32,
        /// Where the answerer's packets will come from.
        from: Option<std::net::SocketAddr>,
    },
    /// Firing now (plus half the round trip).
    Firing {
        /// The round.
        round: u32,
    },
    /// Not now: no such round prepared, too many rounds, or a direct connection exists.
    Refused,
}
