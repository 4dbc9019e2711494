//! The local API as typed calls: one method per request, each returning its own answer
//! type, over anything that can send a [`Request`] ([`LocalApi::call`]): a [`Client`]
//! connection, or the MCP adapter's backend that reconnects and repeats what may be
//! repeated (`ClientError::may_repeat`). An answer of the wrong kind is a
//! [`ClientError::Protocol`] error, written here once for every caller.
//!
//! [`Client`]: super::client::Client

use std::future::Future;

use libp2p::PeerId;

use super::client::ClientError;
use super::*;

/// The answer to `Forget`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forgotten {
    /// The node.
    pub peer: PeerId,
    /// It had been remembered (dialed explicitly) until now.
    pub was: bool,
}

/// The answer to `Ping`.
#[derive(Clone, Debug)]
pub struct Pong {
    /// The node.
    pub peer: PeerId,
    /// Round trip, in microseconds.
    pub rtt_us: u64,
    /// The connection the ping went over.
    pub connection: ConnectionView,
}

/// The answer to `Counts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unread {
    /// Unread messages not yet pushed to a session.
    pub new: u64,
    /// Unread messages pushed to a session already.
    pub notified: u64,
}

/// The answer to `Subscribe` and `Unsubscribe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The topic, as the daemon spells it.
    pub topic: String,
    /// The request changed something (not already subscribed, or unsubscribed).
    pub changed: bool,
}

/// What answered `request` when another kind of answer was expected.
fn unexpected(request: &str, answer: Response) -> ClientError {
    ClientError::Protocol(format!("unexpected answer to {request}: {answer:?}"))
}

/// One typed method: sends the request, keeps the expected answer.
macro_rules! calls {
    ($(
        $(#[$doc:meta])*
        fn $method:ident($($arg:ident: $ty:ty),*) -> $out:ty {
            $request:expr => $answer:pat => $value:expr
        }
    )*) => {$(
        $(#[$doc])*
        fn $method(&self $(, $arg: $ty)*) -> impl Future<Output = Result<$out, ClientError>> + Send {
            async move {
                let request = $request;
                let kind = request.kind();
                match self.call(request).await? {
                    $answer => Ok($value),
                    other => Err(unexpected(kind, other)),
                }
            }
        }
    )*};
}

/// The local API's requests as methods. Implementors provide [`LocalApi::call`]; every
/// other method is one request and its answer.
pub trait LocalApi: Sync {
    /// Sends one request and waits for its answer.
    fn call(&self, request: Request) -> impl Future<Output = Result<Response, ClientError>> + Send;

    calls! {
        /// Identity, addresses, connections, agents, topics, store figures.
        fn status() -> StatusView { Request::Status => Response::Status(s) => *s }
        /// Known nodes.
        fn peers() -> Vec<PeerView> { Request::Peers => Response::Peers(p) => p }
        /// Agents on the whole mesh.
        fn agents() -> Vec<AgentView> { Request::Agents => Response::Agents(a) => a }
        /// Connects to a node by multiaddr (and keeps it connected until forgotten).
        fn dial(addr: &str) -> PeerId {
            Request::Dial { addr: addr.into() } => Response::Dialed { peer } => peer
        }
        /// Stops keeping a dialed node connected.
        fn forget(node: &str) -> Forgotten {
            Request::Forget { node: node.into() } => Response::Forgot { peer, was } => Forgotten { peer, was }
        }
        /// One round trip to a connected node.
        fn ping(node: &str) -> Pong {
            Request::Ping { node: node.into() }
                => Response::Pong { peer, rtt_us, connection } => Pong { peer, rtt_us, connection }
        }
        /// The addresses other people can dial to reach this node.
        fn addrs() -> AddrsView { Request::Addrs => Response::Addrs(a) => a }
        /// Sends a direct message.
        fn send(message: SendRequest) -> SendReceipt {
            Request::Send(message) => Response::Sent(r) => r
        }
        /// One page of an agent's inbox.
        fn inbox(query: InboxQuery) -> InboxPage {
            Request::Inbox(query) => Response::Inbox(page) => page
        }
        /// Marks messages read; answers how many changed.
        fn mark_read(agent: &str, ids: Vec<MessageId>) -> u32 {
            Request::MarkRead { agent: agent.into(), ids } => Response::Marked { count } => count
        }
        /// Marks messages as pushed to a live session; answers how many changed.
        fn mark_notified(agent: &str, ids: Vec<MessageId>) -> u32 {
            Request::MarkNotified { agent: agent.into(), ids } => Response::Marked { count } => count
        }
        /// Unread counts of an agent.
        fn counts(agent: &str) -> Unread {
            Request::Counts { agent: agent.into() } => Response::Counts { new, notified } => Unread { new, notified }
        }
        /// Subscribes an agent to a topic.
        fn subscribe(agent: &str, topic: &str) -> Subscription {
            Request::Subscribe { agent: agent.into(), topic: topic.into() }
                => Response::Subscription { topic, changed } => Subscription { topic, changed }
        }
        /// Unsubscribes an agent from a topic.
        fn unsubscribe(agent: &str, topic: &str) -> Subscription {
            Request::Unsubscribe { agent: agent.into(), topic: topic.into() }
                => Response::Subscription { topic, changed } => Subscription { topic, changed }
        }
        /// Topics known here.
        fn topics() -> Vec<TopicView> { Request::Topics => Response::Topics(t) => t }
        /// Publishes on a topic.
        fn publish(message: PublishRequest) -> PublishReceipt {
            Request::Publish(message) => Response::Published(r) => r
        }
        /// One page of the message history.
        fn history(query: HistoryQuery) -> HistoryPage {
            Request::History(query) => Response::History(page) => page
        }
        /// Sent messages not yet delivered (with `delivered`, those too), and dead letters.
        fn outbox(agent: Option<String>, delivered: bool, limit: u32) -> Vec<OutboxView> {
            Request::Outbox { agent, delivered, limit } => Response::Outbox(o) => o
        }
        /// Creates or updates a local agent (with `attach`, online while the connection lives).
        fn register(agent: AgentSpec, attach: bool) -> AgentView {
            Request::Register { agent, attach } => Response::Agent(a) => a
        }
        /// Takes an agent name for a session and attaches to it.
        fn claim(agent: AgentSpec, exact: bool) -> AgentView {
            Request::Claim { agent, exact } => Response::Agent(a) => a
        }
        /// Sets (or with `None` clears) an agent's summary.
        fn set_summary(agent: &str, summary: Option<String>) -> AgentView {
            Request::SetSummary { agent: agent.into(), summary } => Response::Agent(a) => a
        }
        /// Makes a join code for this node's mesh.
        fn invite(ttl_s: u64, uses: u32) -> InviteView {
            Request::Invite { ttl_s, uses } => Response::Invite(i) => i
        }
        /// Joins the mesh of a join code's inviter.
        fn join(code: &str) -> JoinView { Request::Join { code: code.into() } => Response::Joined(j) => j }
        /// This node's mesh and the members it knows.
        fn members() -> MembersView { Request::Members => Response::Members(m) => m }
        /// Removes a node from the mesh.
        fn remove(node: &str) -> RemovedView {
            Request::Remove { node: node.into() } => Response::Removed(r) => r
        }
        /// Leaves the mesh: this node starts a new mesh of its own.
        fn leave() -> MeshView { Request::Leave => Response::Left(m) => m }
        /// Makes this connection a waker of a local agent; answers its generation.
        fn waker(agent: &str) -> u64 {
            Request::Waker { agent: agent.into() } => Response::Waker { generation } => generation
        }
        /// Stops the daemon cleanly.
        fn shutdown() -> () { Request::Shutdown => Response::Ok => () }
        /// Serves the human's page (if it was not) and makes a one-time login address.
        fn open_page() -> PageView { Request::OpenPage => Response::Page(p) => p }
        /// Relays a session's permission request.
        fn ask_permission(agent: &str, ask: PermissionAsk) -> PermissionView {
            Request::AskPermission { agent: agent.into(), ask } => Response::Permission(p) => p
        }
        /// The permission requests waiting.
        fn permissions(agent: Option<&str>) -> Vec<PermissionView> {
            Request::Permissions { agent: agent.map(Into::into) } => Response::Permissions(p) => p
        }
        /// Asks a nearby node to admit this one (answered with the comparison code).
        fn pair(node: &str) -> PairingView { Request::Pair { node: node.into() } => Response::Pairing(p) => p }
        /// Waits until a pairing started with `pair` is decided.
        fn pair_wait(node: &str) -> PairingView { Request::PairWait { node: node.into() } => Response::Pairing(p) => p }
        /// Says whether both sides of a pairing show the same code.
        fn pair_confirm(node: &str, same: bool) -> PairingView {
            Request::PairConfirm { node: node.into(), same } => Response::Pairing(p) => p
        }
        /// The nodes asking this one to admit them.
        fn pairings() -> Vec<PairingView> { Request::Pairings => Response::Pairings(p) => p }
        /// Admits (or refuses) a node asking to.
        fn answer_pairing(id: &str, allow: bool) -> PairingView {
            Request::AnswerPairing { id: id.into(), allow } => Response::Pairing(p) => p
        }
        /// Answers a permission request.
        fn answer_permission(id: &str, allow: bool, by: &str, agent: Option<&str>) -> PermissionView {
            Request::AnswerPermission { id: id.into(), allow, by: by.into(), agent: agent.map(Into::into) }
                => Response::Permission(p) => p
        }
    }
}
