//! Records kept in the store (postcard-encoded values).

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentName, MessageId, NodeName, TopicName};
use crate::wire::{Announcement, TopicEnvelope, WireMessage};

/// A local agent: one mailbox on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Name on this node.
    pub name: AgentName,
    /// `human`, `claude-code`, `codex`, `opencode`, `other`.
    pub kind: String,
    /// Working directory.
    pub cwd: Option<String>,
    /// Root of its git repository.
    pub repo: Option<String>,
    /// Git branch.
    pub branch: Option<String>,
    /// What it is working on.
    pub summary: Option<String>,
    /// When the mailbox was created (ms since the epoch).
    pub created_ms: u64,
    /// Last activity (ms since the epoch).
    pub last_seen_ms: u64,
}

/// Who sent a message: the node is known from the authenticated transport (or the gossip
/// signature), the agent name is what that node vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// Agent name on the sending node.
    pub agent: AgentName,
    /// The sending node.
    pub node: PeerId,
    /// The sending node's name when the message arrived, if known.
    pub node_name: Option<NodeName>,
}

/// How a message reached an inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Sent to this agent directly.
    Direct,
    /// Published on a topic this agent subscribes to.
    Topic(TopicName),
}

/// Reading state of an inbox entry. See `docs/PROTOCOL.md`, "Delivery states".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadState {
    /// Committed to the inbox; no session has been told.
    New,
    /// Pushed to a live session, not yet shown in a tool/command result.
    Notified,
    /// Shown to the agent (inbox, follow, ...).
    Read,
}

/// One message in one agent's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxEntry {
    /// Local arrival order (unique across the node).
    pub seq: u64,
    /// The recipient agent on this node.
    pub agent: AgentName,
    /// Message id (sender's).
    pub id: MessageId,
    /// Verified sender.
    pub from: Sender,
    /// Direct or topic.
    pub channel: Channel,
    /// The text (untrusted).
    pub text: String,
    /// Sender's clock.
    pub sent_at_ms: u64,
    /// This node's clock at commit.
    pub received_at_ms: u64,
    /// The message it answers.
    pub reply_to: Option<MessageId>,
    /// Read state.
    pub state: ReadState,
}

/// Delivery state of a sent direct message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutState {
    /// Waiting for the recipient node's ack.
    Pending,
    /// Committed by the recipient node.
    Delivered {
        /// When the ack arrived.
        at_ms: u64,
    },
    /// Given up: expired or refused by the recipient node.
    Dead {
        /// When.
        at_ms: u64,
        /// Why.
        reason: String,
    },
    /// Delivered, and its recipient was shown it (a read receipt; last so that records
    /// written before it decode unchanged).
    Read {
        /// When the recipient node acknowledged it (this node's clock), or when the receipt
        /// came if that acknowledgement was never seen.
        delivered_ms: u64,
        /// When the recipient was shown it (the recipient node's clock).
        at_ms: u64,
    },
}

/// A read receipt waiting to be sent to the node whose agent sent the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReceipt {
    /// The message (the sender's id).
    pub id: MessageId,
    /// When the local recipient was shown it (ms since the epoch).
    pub at_ms: u64,
}

/// A direct message sent by a local agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Local send order.
    pub seq: u64,
    /// The message as it travels.
    pub msg: WireMessage,
    /// The recipient node.
    pub to_node: PeerId,
    /// Its name when the message was sent, if known.
    pub to_node_name: Option<NodeName>,
    /// When it was written (ms since the epoch).
    pub created_ms: u64,
    /// Delivery state.
    pub state: OutState,
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// A topic message this node saw (published here or received).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// Local order.
    pub seq: u64,
    /// The message.
    pub envelope: TopicEnvelope,
    /// Publishing node (gossip signature).
    pub from_node: PeerId,
    /// Its name, if known.
    pub from_node_name: Option<NodeName>,
    /// This node's clock when stored.
    pub received_at_ms: u64,
    /// Published by an agent of this node.
    pub local: bool,
    /// For local publications: peers it was handed to (0 = no subscribers reached yet).
    pub reached: u32,
}

/// A node this node knows of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// Its identity.
    pub peer: PeerId,
    /// Addresses it was reached at or announced.
    pub addrs: Vec<Multiaddr>,
    /// Last time it was heard from (ms since the epoch).
    pub last_seen_ms: u64,
    /// Its last announcement.
    pub announcement: Option<Announcement>,
}

/// Record counts, for `mesh status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Local agents.
    pub agents: u64,
    /// Inbox entries (all agents).
    pub inbox: u64,
    /// Unread inbox entries.
    pub unread: u64,
    /// Outbox entries (all states).
    pub outbox: u64,
    /// Outbox entries awaiting delivery.
    pub pending: u64,
    /// Topic messages stored.
    pub topic_messages: u64,
    /// Local publications that reached no peer yet.
    pub topic_pending: u64,
    /// Read receipts waiting to go to the nodes whose agents sent the messages.
    pub receipts_pending: u64,
    /// Known peers.
    pub peers: u64,
    /// Size of the file in bytes.
    pub file_bytes: u64,
}

/// A member of this node's mesh, as this node met it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its name, as last announced or given.
    pub name: Option<String>,
    /// First admitted (ms since the epoch).
    pub since_ms: u64,
    /// Last admitted or heard from (ms since the epoch).
    pub last_seen_ms: u64,
}

/// A join code this node issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Expiry (ms since the epoch).
    pub expires_ms: u64,
    /// Joins it still allows.
    pub uses_left: u32,
    /// When it was made (ms since the epoch).
    pub created_ms: u64,
}

/// What using a join code's token came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InviteUse {
    /// Accepted; this many joins remain.
    Accepted(u32),
    /// No such token here (never issued by this node, or from before it changed meshes).
    Unknown,
    /// Past its expiry.
    Expired(u64),
    /// Every allowed join was used.
    UsedUp,
}

/// How far a node's publications on a topic were caught up from it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCursor {
    /// That node's log the position refers to (see `SyncResponse::Digest`).
    pub log: u64,
    /// Position in it covered so far.
    pub after: u64,
}
