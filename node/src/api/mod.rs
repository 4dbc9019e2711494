//! The local API: how the CLI and MCP adapters talk to their node's daemon.
//!
//! A Unix domain socket in the home (`mesh.sock`, mode 0600, owner-only). Each frame is a
//! 4-byte big-endian length followed by a postcard value; frames over the configured
//! maximum are refused. The client speaks first with [`ClientHello`]; the server answers
//! [`ServerHello`]. Then the client sends [`ClientFrame`]s (each with its own id, any
//! number in flight) and the server sends [`ServerFrame`]s: one `Reply` per request, and
//! `Event`s once the client asked to [`Request::Watch`]. See `docs/PROTOCOL.md`.

pub mod client;
mod network;
pub mod page;
pub mod server;

pub use network::{ConnectionView, NatView, PathView, PunchView, ReachView, ReservationView, StoreView};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// Version of the local API. A client and daemon of different versions refuse each other
/// with a message saying which to restart.
pub const API_VERSION: u32 = 4;
/// First bytes of every client hello.
pub const MAGIC: [u8; 8] = *b"AGNTMESH";
/// Frame limit used before the server's own limit is known (the hello exchange).
pub const HELLO_FRAME_LIMIT: usize = 64 * 1024;

/// First frame from the client.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientHello {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// The client's [`API_VERSION`].
    pub version: u32,
    /// Free text naming the client (`mesh-cli 0.1.0`).
    pub client: String,
}

/// First frame from the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ServerHello {
    /// Accepted.
    Welcome {
        /// The daemon's [`API_VERSION`].
        version: u32,
        /// Who the daemon is.
        node: NodeIdentity,
        /// Largest frame the daemon accepts.
        max_frame: u32,
    },
    /// Refused (version mismatch, wrong user, ...).
    Refused {
        /// Why, for a human.
        reason: String,
    },
}

/// A node's identity as the API reports it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The node's PeerId.
    pub peer_id: PeerId,
    /// Its human name.
    pub name: String,
    /// Software version.
    pub version: String,
}

/// A request with its id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// The request.
    pub request: Request,
}

/// What the server sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ServerFrame {
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// Its outcome.
        result: Result<Response, ApiError>,
    },
    /// Something happened (after `Watch`).
    Event(Event),
}

/// Requests. Names (agents, topics, addresses) are sent as typed by the user and validated
/// by the daemon, which answers `BadRequest` with the reason.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    /// Identity, addresses, connections, agents, topics, store figures.
    Status,
    /// Known nodes.
    Peers,
    /// Agents on the whole mesh.
    Agents,
    /// Connect to a node by multiaddr; the node is remembered and kept connected (redialed
    /// after restarts and network loss) until forgotten.
    Dial {
        /// The address.
        addr: String,
    },
    /// Stop keeping a dialed node connected.
    Forget {
        /// PeerId, node name, or an address ending in `/p2p/<PeerId>`.
        node: String,
    },
    /// One round trip to a connected node.
    Ping {
        /// PeerId or node name.
        node: String,
    },
    /// The addresses other people can dial to reach this node.
    Addrs,
    /// Send a direct message.
    Send {
        /// Sending local agent (created if new).
        from: String,
        /// Recipient address (`agent@node` or `agent`).
        to: String,
        /// The text.
        text: String,
        /// The message answered.
        reply_to: Option<MessageId>,
        /// The new message's id, chosen by the client (a fresh ULID) to make the request
        /// safe to repeat: sending again with the same id and content answers with the
        /// first send's receipt instead of sending a second message. `None`: the daemon
        /// picks one (and a repeat is a new message).
        id: Option<MessageId>,
    },
    /// Read an agent's inbox, one page at a time: an answer holds what fits one frame
    /// (and `max_bytes`), at least one message; [`InboxPage`] says how many remain and
    /// where the next page starts.
    Inbox {
        /// The local agent.
        agent: String,
        /// All messages (the newest `limit`), not only unread ones.
        all: bool,
        /// At most this many (over all pages).
        limit: u32,
        /// Mark read exactly the messages returned (in the step that selects them).
        mark_read: bool,
        /// Leave out unread messages already pushed to a session (`notified`).
        skip_notified: bool,
        /// Continue after this position: the `next` of an earlier answer. The messages
        /// after it, oldest first (with `all`, the oldest `limit` of them).
        after: Option<String>,
        /// Fill the page up to this many encoded bytes only (a page still holds one
        /// message, if one fits a frame). `None`: as much as a frame holds.
        max_bytes: Option<u32>,
    },
    /// Mark messages read.
    MarkRead {
        /// The local agent.
        agent: String,
        /// Message ids.
        ids: Vec<MessageId>,
    },
    /// Mark messages as pushed to a live session (`notified`; they stay unread).
    MarkNotified {
        /// The local agent.
        agent: String,
        /// Message ids.
        ids: Vec<MessageId>,
    },
    /// Unread counts of an agent.
    Counts {
        /// The local agent.
        agent: String,
    },
    /// Subscribe an agent to a topic.
    Subscribe {
        /// The local agent (created if new).
        agent: String,
        /// The topic.
        topic: String,
    },
    /// Unsubscribe an agent from a topic.
    Unsubscribe {
        /// The local agent.
        agent: String,
        /// The topic.
        topic: String,
    },
    /// Topics known here.
    Topics,
    /// Publish on a topic.
    Publish {
        /// Publishing local agent (created if new).
        agent: String,
        /// The topic.
        topic: String,
        /// The text.
        text: String,
        /// The message answered.
        reply_to: Option<MessageId>,
        /// The new message's id, chosen by the client to make the request safe to repeat
        /// (as for `Send`).
        id: Option<MessageId>,
    },
    /// Message history, in the order this node recorded it, one page at a time: an answer
    /// holds what fits one frame (and `max_bytes`), at least one entry; [`HistoryPage`]
    /// says whether older or newer entries remain, and where they start.
    History {
        /// Only this local agent's messages.
        agent: Option<String>,
        /// An agent address or a topic (`#name`).
        target: Option<String>,
        /// Only texts containing this.
        grep: Option<String>,
        /// At most this many: the newest `limit` between `after` and `before` (with
        /// `forward` and `after`: the oldest `limit` after `after`).
        limit: u32,
        /// Only entries older than this position (the `older` of an earlier answer).
        before: Option<String>,
        /// Only entries newer than this position (the `newer` of an earlier answer).
        after: Option<String>,
        /// Read forward in time: the page starts at the oldest entry of the selection, and
        /// the rest is read with `after` = the answer's `newer`. Else the page ends at the
        /// newest, and older entries are read with `before` = the answer's `older`.
        forward: bool,
        /// Fill the page up to this many encoded bytes only (a page still holds one
        /// entry, if one fits a frame). `None`: as much as a frame holds.
        max_bytes: Option<u32>,
    },
    /// Sent messages not yet delivered, and dead letters.
    Outbox {
        /// Only this local agent's.
        agent: Option<String>,
        /// Include delivered ones too.
        delivered: bool,
        /// At most this many (the newest).
        limit: u32,
    },
    /// Create or update a local agent; with `attach`, it is online while this connection lives.
    Register {
        /// The agent.
        agent: AgentSpec,
        /// Hold it online for the life of this connection.
        attach: bool,
    },
    /// Take an agent name for a session and attach to it (online while this connection
    /// lives). With `exact`, `agent.name` is used as is (shared if another session holds
    /// it); otherwise the first of `name`, `name-2`, `name-3`, ... that no live session holds
    /// and that is not another directory's mailbox.
    Claim {
        /// The agent, with the wanted name.
        agent: AgentSpec,
        /// Use the name as is.
        exact: bool,
    },
    /// Set an agent's summary.
    SetSummary {
        /// The local agent.
        agent: String,
        /// The summary (None clears it).
        summary: Option<String>,
    },
    /// Start receiving events on this connection.
    Watch {
        /// Only messages for these local agents (empty: all agents).
        agents: Vec<String>,
    },
    /// Make a join code for this node's mesh.
    Invite {
        /// Valid for this long, in seconds.
        ttl_s: u64,
        /// Joins it allows.
        uses: u32,
    },
    /// Join the mesh of a join code's inviter (leaving this node's current mesh).
    Join {
        /// The join code.
        code: String,
    },
    /// This node's mesh and the members it knows.
    Members,
    /// Remove a node from the mesh: it is disconnected, and the mesh key is replaced by
    /// one it never gets.
    Remove {
        /// PeerId or node name.
        node: String,
    },
    /// Leave the mesh: this node starts a new mesh of its own.
    Leave,
    /// Make this connection a waker of a local agent: a hook or plugin that wakes the
    /// agent's client when mail arrives. While the connection lives the agent counts as
    /// [`Reception::Woken`]. The newest waker of an agent is the one that acts: an older
    /// one is told by [`Event::WakerReplaced`] (its session moved on to a new thread, say).
    Waker {
        /// The local agent.
        agent: String,
    },
    /// Stop the daemon cleanly.
    Shutdown,
}

impl Request {
    /// The request's name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Status => "Status",
            Request::Peers => "Peers",
            Request::Agents => "Agents",
            Request::Dial { .. } => "Dial",
            Request::Forget { .. } => "Forget",
            Request::Ping { .. } => "Ping",
            Request::Addrs => "Addrs",
            Request::Send { .. } => "Send",
            Request::Inbox { .. } => "Inbox",
            Request::MarkRead { .. } => "MarkRead",
            Request::MarkNotified { .. } => "MarkNotified",
            Request::Counts { .. } => "Counts",
            Request::Subscribe { .. } => "Subscribe",
            Request::Unsubscribe { .. } => "Unsubscribe",
            Request::Topics => "Topics",
            Request::Publish { .. } => "Publish",
            Request::History { .. } => "History",
            Request::Outbox { .. } => "Outbox",
            Request::Register { .. } => "Register",
            Request::Claim { .. } => "Claim",
            Request::SetSummary { .. } => "SetSummary",
            Request::Watch { .. } => "Watch",
            Request::Invite { .. } => "Invite",
            Request::Join { .. } => "Join",
            Request::Members => "Members",
            Request::Remove { .. } => "Remove",
            Request::Leave => "Leave",
            Request::Waker { .. } => "Waker",
            Request::Shutdown => "Shutdown",
        }
    }

    /// Whether doing this request twice has the same effect as once, so a client may send
    /// it again when the connection broke before the answer came. Sending and publishing
    /// are, when the client chose the message id (the daemon recognises the repeat); without
    /// one a repeat is a second message. An inbox read that marks messages read is not (the
    /// first may have marked what the second no longer shows).
    pub fn is_repeatable(&self) -> bool {
        match self {
            Request::Send { id, .. } | Request::Publish { id, .. } => id.is_some(),
            Request::Shutdown => false,
            Request::Invite { .. } | Request::Join { .. } | Request::Remove { .. } | Request::Leave => false,
            Request::Inbox { mark_read, .. } => !mark_read,
            Request::Claim { .. }
            | Request::Register { attach: true, .. }
            | Request::Watch { .. }
            | Request::Waker { .. } => false,
            _ => true,
        }
    }
}

/// A local agent's description, as registered.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AgentSpec {
    /// Name on this node.
    pub name: String,
    /// `human`, `claude-code`, `codex`, `opencode`, `other`.
    pub kind: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Git repository root.
    pub repo: Option<String>,
    /// Git branch.
    pub branch: Option<String>,
    /// Summary.
    pub summary: Option<String>,
    /// The session receives pushes.
    pub push: bool,
    /// Process id of the session's client (kept while attached).
    pub pid: Option<u32>,
}

/// Responses, one variant per request kind.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    /// To `Status`.
    Status(Box<StatusView>),
    /// To `Peers`.
    Peers(Vec<PeerView>),
    /// To `Agents`.
    Agents(Vec<AgentView>),
    /// To `Dial`.
    Dialed {
        /// The node reached.
        peer: PeerId,
    },
    /// To `Forget`.
    Forgot {
        /// The node.
        peer: PeerId,
        /// It was remembered.
        was: bool,
    },
    /// To `Ping`.
    Pong {
        /// The node.
        peer: PeerId,
        /// Round trip, in microseconds.
        rtt_us: u64,
        /// The connection it went over.
        connection: ConnectionView,
    },
    /// To `Addrs`.
    Addrs(AddrsView),
    /// To `Send`.
    Sent(SendReceipt),
    /// To `Inbox`.
    Inbox(InboxPage),
    /// To `MarkRead` / `MarkNotified`.
    Marked {
        /// Entries that changed state.
        count: u32,
    },
    /// To `Counts`.
    Counts {
        /// Unread messages never pushed to a session.
        new: u64,
        /// Unread messages pushed to a session but not yet shown by a command or tool.
        notified: u64,
    },
    /// To `Subscribe` / `Unsubscribe`.
    Subscription {
        /// The topic.
        topic: String,
        /// Whether anything changed.
        changed: bool,
    },
    /// To `Topics`.
    Topics(Vec<TopicView>),
    /// To `Publish`.
    Published(PublishReceipt),
    /// To `History`.
    History(HistoryPage),
    /// To `Outbox`.
    Outbox(Vec<OutboxView>),
    /// To `Register` / `SetSummary`.
    Agent(AgentView),
    /// To `Invite`.
    Invite(InviteView),
    /// To `Join`.
    Joined(JoinView),
    /// To `Members`.
    Members(MembersView),
    /// To `Remove`.
    Removed(RemovedView),
    /// To `Leave`.
    Left(MeshView),
    /// To `Watch`, `Shutdown`.
    Ok,
    /// To `Waker`: this waker's generation (higher is newer).
    Waker {
        /// Compared with [`Event::WakerReplaced`].
        generation: u64,
    },
}

/// Error codes of the local API.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed or invalid input.
    BadRequest,
    /// Unknown agent, node, topic or message.
    NotFound,
    /// The name matches several agents or nodes; the message lists them.
    Ambiguous,
    /// Over a size limit.
    TooLarge,
    /// The network or a peer could not do it now.
    Unavailable,
    /// The store could not do it (disk full, I/O); nothing was changed.
    Storage,
    /// Too much at once; retry.
    Busy,
    /// Over a rate limit; retry later (the message says when).
    RateLimited,
    /// Not allowed (not a member, refused, a used or expired join code).
    Denied,
    /// A bug.
    Internal,
}

/// An error answer: a code for programs and a sentence for people.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of error.
    pub code: ErrorCode,
    /// What happened and what to do.
    pub message: String,
}

impl ErrorCode {
    /// The code's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "BadRequest",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::Ambiguous => "Ambiguous",
            ErrorCode::TooLarge => "TooLarge",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Storage => "Storage",
            ErrorCode::Busy => "Busy",
            ErrorCode::RateLimited => "RateLimited",
            ErrorCode::Denied => "Denied",
            ErrorCode::Internal => "Internal",
        }
    }
}

impl ApiError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `BadRequest`.
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    /// `NotFound`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError as S;
        let code = match &e {
            S::UnknownAgent(_) | S::UnknownMessage(_) => ErrorCode::NotFound,
            S::IdTaken(_) => ErrorCode::BadRequest,
            S::Busy => ErrorCode::Busy,
            S::Closed => ErrorCode::Unavailable,
            _ => ErrorCode::Storage,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<crate::ids::InvalidName> for ApiError {
    fn from(e: crate::ids::InvalidName) -> Self {
        ApiError::bad(e.to_string())
    }
}

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
    /// For sent messages: `pending`, `delivered`, `dead: reason`.
    pub state: Option<String>,
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
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// Why it is dead, or why the last attempt failed.
    pub reason: Option<String>,
    /// Failed attempts.
    pub attempts: u32,
}

/// Events sent to watching connections.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    /// A message was committed to a local agent's inbox.
    Message(MessageView),
    /// A sent message was acknowledged by the recipient's node.
    Delivered {
        /// Message id.
        id: MessageId,
        /// Sending local agent.
        from: String,
        /// Recipient address.
        to: String,
    },
    /// A sent message became a dead letter.
    DeadLetter {
        /// Message id.
        id: MessageId,
        /// Sending local agent.
        from: String,
        /// Recipient address.
        to: String,
        /// Why.
        reason: String,
    },
    /// A node connected.
    PeerUp {
        /// The node.
        peer: PeerId,
        /// Its name if known.
        name: Option<String>,
    },
    /// A node disconnected.
    PeerDown {
        /// The node.
        peer: PeerId,
        /// Its name if known.
        name: Option<String>,
    },
    /// A node's announcement changed (its name, agents, their status or summaries).
    NodeUpdated {
        /// The node.
        peer: PeerId,
        /// Its name.
        name: String,
    },
    /// Reachability changed (NAT status, relay slots, a connection upgraded to direct).
    NetworkChanged,
    /// Events were dropped because this connection read too slowly; re-read the inbox.
    Lagged {
        /// How many.
        missed: u64,
    },
    /// A newer waker holds a local agent: wakers of an older generation stand down.
    WakerReplaced {
        /// The local agent.
        agent: String,
        /// The newer waker's generation (see `Response::Waker`).
        generation: u64,
    },
}
