//! What a client asks: every request of the local API, and which may be repeated.

use super::*;

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
    Send(SendRequest),
    /// Read an agent's inbox, one page at a time: an answer holds what fits one frame
    /// (and `max_bytes`), at least one message; [`InboxPage`] says how many remain and
    /// where the next page starts.
    Inbox(InboxQuery),
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
    Publish(PublishRequest),
    /// Message history, in the order this node recorded it, one page at a time: an answer
    /// holds what fits one frame (and `max_bytes`), at least one entry; [`HistoryPage`]
    /// says whether older or newer entries remain, and where they start.
    History(HistoryQuery),
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
    /// The human's page (`mesh open`): served from now on if it was not, and a one-time
    /// login address for it.
    OpenPage,
    /// A session of a local agent asks for permission to use a tool (its adapter relays
    /// Claude Code's request). Answered with the request as listed; the answer comes later
    /// as [`Event::Permission`].
    AskPermission {
        /// The local agent.
        agent: String,
        /// The request.
        ask: PermissionAsk,
    },
    /// The permission requests waiting for an answer (this node's sessions', and with
    /// `[permissions] receive` the other members').
    Permissions {
        /// Asked as this local agent, which must be named in `[permissions] answer_agents`
        /// (none: asked by the user).
        agent: Option<String>,
    },
    /// Answer a permission request: the first answer wins (for another node's request, the
    /// first to reach that node).
    AnswerPermission {
        /// Its id (`agent:id` when two agents share one, `agent@node:id` for another
        /// node's).
        id: String,
        /// Allow (else deny).
        allow: bool,
        /// Who answers, as shown to others (ignored when `agent` is set).
        by: String,
        /// Answered by this local agent, which must be named in `[permissions]
        /// answer_agents` (none: by the user).
        agent: Option<String>,
    },
    /// Ask a nearby node (not in this node's mesh) to admit this one: answered once both
    /// sides can show the comparison code. The node then asks again every second until
    /// that node's user decides (see `PairWait`), and joins if approved and this node's
    /// user confirmed the codes match (`PairConfirm`).
    Pair {
        /// The node: its PeerId, the name it gave, or an address ending in `/p2p/<id>`.
        node: String,
    },
    /// Waits until the pairing with `node` (started by `Pair`) is decided: answered with
    /// its final state (joined, refused, expired, failed).
    PairWait {
        /// As given to `Pair`, or its PeerId.
        node: String,
    },
    /// The user of this (asking) node compared the codes of the pairing with `node`:
    /// `same` lets it join once the member approves; otherwise it is given up.
    PairConfirm {
        /// As given to `Pair`, or its PeerId.
        node: String,
        /// Both show the same code.
        same: bool,
    },
    /// The nodes asking this one to admit them.
    Pairings,
    /// Admit (or refuse) a node asking to: the first answer counts.
    AnswerPairing {
        /// Its comparison code (spaces ignored) or PeerId.
        id: String,
        /// Admit (else refuse).
        allow: bool,
    },
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
            Request::Send(SendRequest { .. }) => "Send",
            Request::Inbox(InboxQuery { .. }) => "Inbox",
            Request::MarkRead { .. } => "MarkRead",
            Request::MarkNotified { .. } => "MarkNotified",
            Request::Counts { .. } => "Counts",
            Request::Subscribe { .. } => "Subscribe",
            Request::Unsubscribe { .. } => "Unsubscribe",
            Request::Topics => "Topics",
            Request::Publish(PublishRequest { .. }) => "Publish",
            Request::History(HistoryQuery { .. }) => "History",
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
            Request::OpenPage => "OpenPage",
            Request::AskPermission { .. } => "AskPermission",
            Request::Permissions { .. } => "Permissions",
            Request::AnswerPermission { .. } => "AnswerPermission",
            Request::Pair { .. } => "Pair",
            Request::PairWait { .. } => "PairWait",
            Request::PairConfirm { .. } => "PairConfirm",
            Request::Pairings => "Pairings",
            Request::AnswerPairing { .. } => "AnswerPairing",
        }
    }

    /// Whether doing this request twice has the same effect as once, so a client may send
    /// it again when the connection broke before the answer came. Sending and publishing
    /// are, when the client chose the message id (the daemon recognises the repeat); without
    /// one a repeat is a second message. An inbox read that marks messages read is not (the
    /// first may have marked what the second no longer shows).
    pub fn is_repeatable(&self) -> bool {
        match self {
            Request::Send(SendRequest { id, .. }) | Request::Publish(PublishRequest { id, .. }) => id.is_some(),
            Request::Shutdown => false,
            Request::Invite { .. } | Request::Join { .. } | Request::Remove { .. } | Request::Leave => false,
            // A repeat is refused ("already answered"), which the first answer's sender would
            // take for a failure.
            Request::AnswerPermission { .. } => false,
            Request::Pair { .. } | Request::AnswerPairing { .. } | Request::PairConfirm { .. } => false,
            Request::Inbox(InboxQuery { mark_read, .. }) => !mark_read,
            Request::Claim { .. }
            | Request::Register { attach: true, .. }
            | Request::Watch { .. }
            | Request::Waker { .. } => false,
            _ => true,
        }
    }
}

/// A direct message to send ([`Request::Send`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// Sending local agent (created if new).
    pub from: String,
    /// Recipient address (`agent@node` or `agent`).
    pub to: String,
    /// The text.
    pub text: String,
    /// The message answered.
    pub reply_to: Option<MessageId>,
    /// The new message's id, chosen by the client (a fresh ULID) to make the request
    /// safe to repeat: sending again with the same id and content answers with the
    /// first send's receipt instead of sending a second message. `None`: the daemon
    /// picks one (and a repeat is a new message).
    pub id: Option<MessageId>,
}

/// Which page of an inbox to read ([`Request::Inbox`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InboxQuery {
    /// The local agent.
    pub agent: String,
    /// All messages (the newest `limit`), not only unread ones.
    pub all: bool,
    /// At most this many (over all pages).
    pub limit: u32,
    /// Mark read exactly the messages returned (in the step that selects them).
    pub mark_read: bool,
    /// Leave out unread messages already pushed to a session (`notified`).
    pub skip_notified: bool,
    /// Continue after this position: the `next` of an earlier answer. The messages
    /// after it, oldest first (with `all`, the oldest `limit` of them).
    pub after: Option<String>,
    /// Fill the page up to this many encoded bytes only (a page still holds one
    /// message, if one fits a frame). `None`: as much as a frame holds.
    pub max_bytes: Option<u32>,
}

/// A topic message to publish ([`Request::Publish`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PublishRequest {
    /// Publishing local agent (created if new).
    pub agent: String,
    /// The topic.
    pub topic: String,
    /// The text.
    pub text: String,
    /// The message answered.
    pub reply_to: Option<MessageId>,
    /// The new message's id, chosen by the client to make the request safe to repeat
    /// (as for `Send`).
    pub id: Option<MessageId>,
}

/// Which page of the history to read ([`Request::History`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only this local agent's messages.
    pub agent: Option<String>,
    /// An agent address or a topic (`#name`).
    pub target: Option<String>,
    /// Only texts containing this.
    pub grep: Option<String>,
    /// At most this many: the newest `limit` between `after` and `before` (with
    /// `forward` and `after`: the oldest `limit` after `after`).
    pub limit: u32,
    /// Only entries older than this position (the `older` of an earlier answer).
    pub before: Option<String>,
    /// Only entries newer than this position (the `newer` of an earlier answer).
    pub after: Option<String>,
    /// Read forward in time: the page starts at the oldest entry of the selection, and
    /// the rest is read with `after` = the answer's `newer`. Else the page ends at the
    /// newest, and older entries are read with `before` = the answer's `older`.
    pub forward: bool,
    /// Fill the page up to this many encoded bytes only (a page still holds one
    /// entry, if one fits a frame). `None`: as much as a frame holds.
    pub max_bytes: Option<u32>,
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
