//! What the daemon answers with: the views of status, peers, agents, messages, topics, history and the mesh.

use super::*;

/// Everything `mesh status` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusView {
    /// Who this node is.
    pub node: NodeIdentity,
    /// Home directory.
    pub home: String,
    /// Active listen addresses.
    pub listen: Vec<Multiaddr>,
    /// LAN discovery on.
    pub mdns: bool,
    /// Connected peers.
    pub connected: u32,
    /// Of those, reached over a local network (private, loopback or link-local address).
    pub connected_lan: u32,
    /// Of those, reached directly over the internet (public address).
    pub connected_internet: u32,
    /// Of those, reached only through a relay.
    pub connected_relayed: u32,
    /// Known peers.
    pub known: u32,
    /// Local agents.
    pub agents: Vec<AgentView>,
    /// Topics with local subscribers.
    pub topics: Vec<TopicView>,
    /// Store figures.
    pub store: StoreView,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// Reachability: NAT status, external addresses, relay slots, hole punching, relay service.
    pub reach: ReachView,
    /// Dialed nodes kept connected.
    pub remembered: u32,
    /// The mesh this node belongs to.
    pub mesh: MeshView,
    /// Nodes seen nearby that are not members (and were not admitted).
    pub outsiders: u32,
}

/// A node's mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshView {
    /// Mesh id (first 8 hex digits).
    pub id: String,
    /// Open mode: any node in open mode is admitted, with no secret.
    pub open: bool,
    /// Key generation (increases with each removal).
    pub epoch: u32,
    /// Members this node knows (itself included).
    pub members: u32,
    /// Nodes removed.
    pub removed: u32,
    /// This node relays for non-members too.
    pub relay_for_anyone: bool,
}

/// A join code.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InviteView {
    /// The code, to paste into `mesh join`.
    pub code: String,
    /// The mesh it joins.
    pub mesh: String,
    /// Expiry (ms since the epoch).
    pub expires_ms: u64,
    /// Joins it allows.
    pub uses: u32,
    /// The addresses the joiner will try.
    pub addrs: Vec<String>,
}

/// The outcome of a join.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinView {
    /// The mesh joined.
    pub mesh: MeshView,
    /// The inviter.
    pub inviter: PeerId,
    /// Its name (from the code).
    pub inviter_name: String,
    /// The mesh left (its id).
    pub left: String,
}

/// A member of the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    /// Its PeerId.
    pub peer_id: PeerId,
    /// Its name, as last announced.
    pub name: Option<String>,
    /// This node.
    pub this_node: bool,
    /// Connected now.
    pub connected: bool,
    /// First admitted (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Last contact (ms since the epoch).
    pub last_seen_ms: Option<u64>,
}

/// The answer to `Members`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MembersView {
    /// The mesh.
    pub mesh: MeshView,
    /// Its members known here, this node first.
    pub members: Vec<MemberView>,
}

/// The answer to `Remove`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemovedView {
    /// The removed node.
    pub peer: PeerId,
    /// Its name, if known.
    pub name: Option<String>,
    /// The new key generation.
    pub epoch: u32,
    /// Members handed the new key now (the others get it when they next connect).
    pub rekeyed: u32,
}

/// Addresses to give to someone who wants to reach this node (each ends in `/p2p/<id>`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddrsView {
    /// This node.
    pub peer_id: PeerId,
    /// Confirmed reachable from the internet.
    pub public: Vec<String>,
    /// Through relays this node holds a slot on.
    pub relayed: Vec<String>,
    /// On local networks only (same LAN, or VPN).
    pub lan: Vec<String>,
    /// Not confirmed either way (public-looking listen addresses not yet tested).
    pub unconfirmed: Vec<String>,
}

/// A known node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerView {
    /// Its PeerId.
    pub peer_id: PeerId,
    /// Its name, once announced.
    pub name: Option<String>,
    /// Addresses known for it.
    pub addrs: Vec<Multiaddr>,
    /// Connected now.
    pub connected: bool,
    /// Heard from within three heartbeats (directly or through the mesh).
    pub online: bool,
    /// Last ping round trip, in microseconds.
    pub rtt_us: Option<u64>,
    /// Its software version.
    pub version: Option<String>,
    /// Agents it hosts.
    pub agents: u32,
    /// Last time it was heard from (ms since the epoch).
    pub last_seen_ms: Option<u64>,
    /// Open connections: direct (LAN/internet) or relayed (via whom), and transport.
    pub connections: Vec<ConnectionView>,
    /// Dialed by the user: kept connected.
    pub remembered: bool,
    /// A member of this node's mesh (else a node seen nearby that was not admitted).
    pub member: bool,
    /// Why a non-member was not admitted.
    pub refused: Option<String>,
    /// Hole punching for it, while it is reached through relays only (API 5).
    pub punch: Option<PunchAttemptsView>,
}

/// How an agent receives messages now.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Reception {
    /// A live session receives pushes.
    Push,
    /// A live session that must poll (inbox / wait).
    Poll,
    /// No live session: mail is queued in its inbox.
    Offline,
    /// A hook or plugin wakes its session when mail arrives (Claude Code's `asyncRewake`
    /// hook, the OpenCode plugin), with the mail's text.
    Woken,
}

/// An agent anywhere on the mesh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentView {
    /// `agent@node-name`.
    pub address: String,
    /// Agent name.
    pub name: String,
    /// Hosting node's name.
    pub node_name: String,
    /// Hosting node.
    pub node: PeerId,
    /// On this node.
    pub local: bool,
    /// Kind.
    pub kind: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Git repository root.
    pub repo: Option<String>,
    /// Summary.
    pub summary: Option<String>,
    /// How it receives now.
    pub reception: Reception,
    /// Last activity (ms since the epoch).
    pub last_seen_ms: u64,
    /// Unread messages (local agents only).
    pub unread: Option<u64>,
    /// Process id of an attached session's client (local agents only).
    pub pid: Option<u32>,
}

/// Delivery status of a sent direct message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum SendStatus {
    /// Committed by the recipient's node.
    Delivered,
    /// In the outbox; will be delivered when the recipient node is reachable.
    Queued {
        /// Why it is not delivered yet.
        reason: String,
    },
    /// The recipient node refused it for good (now a dead letter).
    Rejected {
        /// Why.
        reason: String,
    },
    /// Delivered, and its recipient was shown it (a repeated send of a message read since).
    Read {
        /// When (ms since the epoch, the recipient node's clock).
        at_ms: u64,
    },
}

/// The answer to `Send`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendReceipt {
    /// The message id.
    pub id: MessageId,
    /// The recipient as resolved (`agent@node-name`).
    pub to: String,
    /// The recipient's node.
    pub to_node: PeerId,
    /// What happened to it.
    pub status: SendStatus,
    /// How the recipient receives now, as far as this node knows.
    pub reception: Reception,
}

/// A message in an inbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageView {
    /// Message id.
    pub id: MessageId,
    /// Recipient local agent.
    pub agent: String,
    /// Sender address (`agent@node-name`, verified node).
    pub from: String,
    /// Sending agent.
    pub from_agent: String,
    /// Sending node.
    pub from_node: PeerId,
    /// Sending node's name if known.
    pub from_node_name: Option<String>,
    /// Topic for topic messages.
    pub topic: Option<String>,
    /// The text: untrusted input from a peer.
    pub text: String,
    /// Sender's clock.
    pub sent_at_ms: u64,
    /// This node's clock at arrival.
    pub received_at_ms: u64,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// `new`, `notified` or `read` (before this request).
    pub state: String,
}

/// A page of an inbox: the answer to [`Request::Inbox`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InboxPage {
    /// The messages, oldest first.
    pub messages: Vec<MessageView>,
    /// Messages matching the request after these, not in this page (unread ones; with
    /// `all`, any). With `mark_read`, asking again without `after` returns them.
    pub remaining: u64,
    /// Where the next page starts: pass it as `after`. `None` when nothing remains.
    pub next: Option<String>,
}

/// A topic known here.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicView {
    /// Topic name.
    pub topic: String,
    /// Local subscribers.
    pub subscribers: Vec<String>,
    /// Messages stored.
    pub messages: u64,
    /// Newest message (ms since the epoch).
    pub last_ms: Option<u64>,
}

/// The answer to `Publish`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishReceipt {
    /// Message id.
    pub id: MessageId,
    /// Topic.
    pub topic: String,
    /// Peers it was handed to now (0: stored, no subscribers reached yet; it is sent
    /// when one subscribes).
    pub peers_reached: u32,
    /// Local agents it was delivered to.
    pub local_subscribers: u32,
}

/// A history line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryView {
    /// Message id.
    pub id: MessageId,
    /// `in`, `out` or `topic`.
    pub kind: String,
    /// Sender address.
    pub from: String,
    /// Recipient address or `#topic`.
    pub to: String,
    /// The text (untrusted if from a peer).
    pub text: String,
    /// Local time of the record (ms since the epoch).
    pub at_ms: u64,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// For sent messages: `pending`, `delivered`, `read`, `dead: reason`.
    pub state: Option<String>,
    /// For sent messages: when the recipient was shown it (ms since the epoch, the
    /// recipient node's clock), once its read receipt came.
    pub read_at_ms: Option<u64>,
}

/// A page of history: the answer to [`Request::History`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The entries, oldest first.
    pub entries: Vec<HistoryView>,
    /// Older entries match too (after the request's `after`): pass this as `before` to
    /// read them. `None` when there are none.
    pub older: Option<String>,
    /// Newer entries match too (before the request's `before`): pass this as `after`, with
    /// `forward`, to read them. `None` when there are none.
    pub newer: Option<String>,
}

/// A sent message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxView {
    /// Message id.
    pub id: MessageId,
    /// Sending local agent.
    pub from: String,
    /// Recipient address.
    pub to: String,
    /// The text.
    pub text: String,
    /// When it was sent (ms since the epoch).
    pub created_ms: u64,
    /// `pending`, `delivered`, `read` or `dead`.
    pub state: String,
    /// Why it is dead, or why the last attempt failed.
    pub reason: Option<String>,
    /// Failed attempts.
    pub attempts: u32,
    /// When the recipient was shown it (ms since the epoch, the recipient node's clock),
    /// once its read receipt came.
    pub read_at_ms: Option<u64>,
}

/// The human's page: the answer to `OpenPage`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageView {
    /// Its address (`http://127.0.0.1:7717/`).
    pub url: String,
    /// The address to open once: with a login token (valid 2 minutes, one use) in its
    /// fragment. Secret: it logs in whoever opens it first.
    pub login_url: String,
}

/// A session's request for permission to use a tool, as Claude Code relays it
/// (`notifications/claude/channel/permission_request`). The texts are untrusted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PermissionAsk {
    /// The client's id for it (five lowercase letters).
    pub request_id: String,
    /// The tool (`Bash`, `Write`, ...).
    pub tool_name: String,
    /// What the call does, in the client's words.
    pub description: String,
    /// The call's input, cut short by the client.
    pub input_preview: String,
}

/// A permission request as this node lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PermissionView {
    /// The request id (answer with it, or with `agent:id` when two agents share one).
    pub id: String,
    /// The local agent whose session asks.
    pub agent: String,
    /// The tool.
    pub tool: String,
    /// What the call does (untrusted text).
    pub description: String,
    /// The call's input, cut short (untrusted text).
    pub input_preview: String,
    /// When it was asked (ms since the epoch).
    pub asked_ms: u64,
    /// The answer, once given.
    pub answer: Option<PermissionAnswer>,
}

/// How a permission request was answered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PermissionAnswer {
    /// Allowed (else denied).
    pub allow: bool,
    /// Who answered (`tester (page)`, `tester (cli)`).
    pub by: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// A pairing: a node asking to be admitted to a mesh by a member nearby, on either side.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairingView {
    /// The other node.
    pub peer: PeerId,
    /// The name it gave (a claim).
    pub name: String,
    /// The comparison code both sides show (`482 913`); empty until both nonces are known.
    pub code: String,
    /// This node asks to be admitted (else the other node asks this one).
    pub asking: bool,
    /// Asking side: this node's user confirmed that both codes match (it joins only then).
    pub confirmed: bool,
    /// When it was asked (ms since the epoch).
    pub asked_ms: u64,
    /// When it expires undecided (ms since the epoch, this node's clock).
    pub expires_ms: u64,
    /// Where it stands.
    pub state: PairingState,
}

/// Where a pairing stands.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PairingState {
    /// Waiting for the member's user.
    Waiting,
    /// Approved (on the asking side: joining now).
    Approved,
    /// Refused, expired, or failed, and why.
    Refused(String),
    /// The asking node is a member now (the asking side).
    Joined,
}
