//! The local API: how the CLI and MCP adapters talk to their node's daemon.
//!
//! A Unix domain socket in the home (`mesh.sock`, mode 0600, owner-only). Each frame is a
//! 4-byte big-endian length followed by a postcard value; frames over the configured
//! maximum are refused. The client speaks first with [`ClientHello`]; the server answers
//! [`ServerHello`]. Then the client sends [`ClientFrame`]s (each with its own id, any
//! number in flight) and the server sends [`ServerFrame`]s: one `Reply` per request, and
//! `Event`s once the client asked to [`Request::Watch`]. See `docs/PROTOCOL.md`.

pub mod calls;
pub mod client;
mod error;
mod network;
pub mod page;
mod request;
mod views;

pub use calls::LocalApi;
pub use error::*;
pub use network::{
    ConnectionView, NatView, PathView, PublicNetView, PunchAttemptsView, PunchView, ReachView, ReservationView,
    StoreView, UpnpStatusView, UpnpView,
};
pub use request::*;
pub use views::*;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// Version of the local API. A client and daemon of different versions refuse each other
/// with a message saying which to restart.
pub const API_VERSION: u32 = 11;
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
    /// To `OpenPage`.
    Page(PageView),
    /// To `AskPermission` and `AnswerPermission`.
    Permission(PermissionView),
    /// To `Permissions`: those waiting, oldest first.
    Permissions(Vec<PermissionView>),
    /// To `Pair`, `PairWait` and `AnswerPairing`.
    Pairing(PairingView),
    /// To `Pairings`: nodes asking this one to admit them, oldest first.
    Pairings(Vec<PairingView>),
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
    /// The recipient of a sent message was shown it (its read receipt came; sent by the
    /// recipient's node unless it turned receipts off).
    Read {
        /// Message id.
        id: MessageId,
        /// Sending local agent.
        from: String,
        /// Recipient address.
        to: String,
        /// When it was shown (ms since the epoch, the recipient node's clock).
        at_ms: u64,
    },
    /// A permission request of a local agent's session was asked or answered.
    Permission(PermissionView),
    /// A pairing changed: a node asks to be admitted (its comparison code can now be
    /// shown), or a pairing was decided, joined, or failed.
    Pairing(PairingView),
}
