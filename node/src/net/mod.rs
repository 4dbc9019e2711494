//! The network actor: the one task that owns the libp2p `Swarm`.
//!
//! Everything else talks to it through a [`NetHandle`] (bounded command channel, a oneshot
//! per reply) and hears from it through a bounded [`NetEvent`] channel and a `watch` of the
//! connected peers. The loop never awaits anything that can block: replies go out with
//! `send` on oneshots, events with `try_send` (a full channel drops informational events and
//! answers inbound deliveries with "unavailable", so the sender retries).

mod admit;
mod behaviour;
pub mod gate;
pub mod guard;
mod reach;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
pub use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, mdns, ping};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use admit::{ADMIT_TIMEOUT, OutsiderInfo};
pub use behaviour::{Behaviour, BehaviourEvent, HOP_PROTOCOL, KAD_PROTOCOL, PING_PROTOCOL, build};
pub use reach::{NatStatus, PunchStats, ReachInfo, ReservationInfo};

use crate::config::Config;
use crate::ids::{TopicName, now_ms};
use crate::mesh::{Grant, Invite, Membership, OpenError, Voucher};
use crate::ratelimit::RateLimiter;
use crate::wire::{
    self, Announcement, DirectoryGossip, DmRequest, DmResponse, JoinResponse, SyncRequest, SyncResponse, TopicEnvelope,
};

/// Capacity of the command channel into the actor.
pub const COMMAND_QUEUE: usize = 1024;
/// Capacity of the event channel out of the actor.
pub const EVENT_QUEUE: usize = 4096;
/// Hello requests held while this node has no announcement yet (only at startup).
pub const MAX_EARLY_HELLOS: usize = 256;
/// Non-agentmesh peers remembered (not redialed); the set is cleared when full.
pub const MAX_FOREIGN: usize = 1024;
/// Most addresses remembered per peer.
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// How long two direct connections to one peer may both stay up before one is closed.
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(5);
/// Idle connections are closed after this long (presence traffic keeps mesh peers busy).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest ping interval. Pings go every presence heartbeat (at least every second) with a
/// timeout of two heartbeats (3 to 10 s); a connection whose pings fail twice in a row is
/// closed, so a peer that vanished without closing (cable pulled, partition, new IP) is
/// noticed within about six heartbeats (20-40 s with the default heartbeat).
pub const PING_INTERVAL: Duration = Duration::from_secs(10);

/// Ping interval and timeout for a presence heartbeat.
pub fn ping_timing(heartbeat: Duration) -> (Duration, Duration) {
    (
        heartbeat.clamp(Duration::from_secs(1), PING_INTERVAL),
        heartbeat.saturating_mul(2).clamp(Duration::from_secs(3), PING_INTERVAL),
    )
}
/// Reachability upkeep interval.
pub const REACH_UPKEEP: Duration = Duration::from_secs(2);
/// During a clean stop, connections stay open this long after the last delivery answer
/// went out, so the sender reads it before the connection closes (a sender whose
/// connection closes first retries, and the batch arrives twice).
pub const ANSWER_LINGER: Duration = Duration::from_millis(250);
/// Software version announced to peers.
pub const AGENT_VERSION: &str = concat!("agentmesh/", env!("CARGO_PKG_VERSION"));

/// Errors of network operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NetError {
    /// The address cannot be dialed.
    #[error("cannot dial {addr}: {why}")]
    Dial {
        /// The address.
        addr: String,
        /// Why.
        why: String,
    },
    /// A request to a peer failed.
    #[error("request to {peer} failed: {why}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        why: String,
    },
    /// Publishing failed.
    #[error("publish failed: {0}")]
    Publish(String),
    /// The actor has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// Starting the swarm failed.
    #[error("cannot start networking: {0}")]
    Start(String),
}

/// How a peer was found on the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Discovery {
    /// libp2p mDNS.
    Mdns,
    /// DNS-SD (`_agentmesh._udp.local`).
    DnsSd,
}

/// What the actor reports.
#[derive(Debug)]
pub enum NetEvent {
    /// A listen address became active.
    Listening(Multiaddr),
    /// A peer proved membership (on its first connection of this visit).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on this connection.
        addr: Multiaddr,
        /// We dialed it.
        dialed: bool,
    },
    /// Last connection to an admitted peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A member was identified, with the addresses it listens on.
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// Its listen addresses.
        listen_addrs: Vec<Multiaddr>,
    },
    /// A peer was found on the LAN.
    PeerDiscovered {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// A peer's announcement (from hello or the sealed directory topic; the node is
    /// verified and admitted).
    Announcement {
        /// The announcing node.
        peer: PeerId,
        /// What it said.
        announcement: Announcement,
    },
    /// A peer delivers direct messages; answer with [`NetHandle::respond_dm`].
    InboundDms {
        /// The sending node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// The messages, in send order.
        messages: Vec<wire::WireMessage>,
    },
    /// A peer asks for topic catch-up; answer with [`NetHandle::respond_sync`].
    SyncRequest {
        /// The asking node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// What it asks.
        body: SyncRequest,
    },
    /// A topic message from another node (signature verified, well formed).
    Topic {
        /// The publishing node.
        source: PeerId,
        /// The message.
        envelope: TopicEnvelope,
    },
    /// A peer subscribed to a user topic.
    TopicSubscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: TopicName,
    },
    /// Reachability changed: NAT status, relay slots, a hole punch.
    ReachChanged,
    /// The mesh key chain changed (renewed by a member, or a removal): persist it.
    MembershipChanged(Box<Membership>),
    /// A node asks to join with a join code; answer with [`NetHandle::respond_join`].
    JoinRequest {
        /// The asking node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// The code it holds (signature not yet checked).
        invite: Box<Invite>,
        /// The name it gives.
        node_name: String,
    },
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// The peer's address on it.
    pub addr: Multiaddr,
    /// We dialed it (else the peer did).
    pub dialed: bool,
    /// Direct over the LAN, direct over the internet, or through a relay.
    pub path: Path,
    /// The relay, for a relayed connection.
    pub via: Option<PeerId>,
    /// `tcp` or `quic` (of the hop to the relay, when relayed).
    pub transport: String,
}

impl ConnectionInfo {
    fn of(addr: &Multiaddr, dialed: bool) -> Self {
        let via = relay_of(addr);
        let transport = if addr.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic)) {
            "quic"
        } else if addr.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
            "tcp"
        } else {
            "other"
        };
        Self {
            addr: addr.clone(),
            dialed,
            path: path_of(addr),
            via,
            transport: transport.to_string(),
        }
    }

    /// `direct over tcp (LAN)`, `relayed via 12D3… (quic)`.
    pub fn describe(&self) -> String {
        match (self.path, &self.via) {
            (Path::Relayed, Some(r)) => format!("relayed via {r} ({})", self.transport),
            (Path::Relayed, None) => format!("relayed ({})", self.transport),
            (Path::Lan, _) => format!("direct over {} (LAN)", self.transport),
            (Path::Internet, _) => format!("direct over {} (internet)", self.transport),
        }
    }
}

/// The relay a relayed address goes through (the PeerId before `/p2p-circuit`).
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// A connected peer, for `mesh peers` / `mesh status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectedPeer {
    /// The peer.
    pub peer: PeerId,
    /// Remote addresses of open connections.
    pub addrs: Vec<Multiaddr>,
    /// The open connections.
    pub connections: Vec<ConnectionInfo>,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// Its software version (from identify).
    pub agent_version: Option<String>,
}

/// A snapshot of the network state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NetInfo {
    /// Active listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Connected members.
    pub peers: Vec<ConnectedPeer>,
    /// Nodes seen that are not members.
    pub outsiders: Vec<OutsiderInfo>,
    /// Addresses known per peer (connected or not).
    pub known_addrs: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Reachability.
    pub reach: ReachInfo,
    /// Peers this node keeps redialing.
    pub pinned: Vec<PeerId>,
}

type PingReply = oneshot::Sender<Result<(Duration, ConnectionInfo), NetError>>;

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    DialPeer {
        peer: PeerId,
    },
    AddAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        discovered: bool,
    },
    SendDm {
        peer: PeerId,
        request: DmRequest,
        reply: oneshot::Sender<Result<DmResponse, NetError>>,
    },
    RespondDm {
        request: InboundRequestId,
        response: DmResponse,
    },
    Sync {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    RespondSync {
        request: InboundRequestId,
        response: Box<SyncResponse>,
    },
    Publish {
        topic: TopicName,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<u32, NetError>>,
    },
    Subscribe(TopicName),
    Unsubscribe(TopicName),
    SetMembership {
        mesh: Box<Membership>,
        reset: bool,
    },
    Join {
        invite: Box<Invite>,
        reply: oneshot::Sender<Result<(Grant, Voucher), NetError>>,
    },
    RespondJoin {
        request: InboundRequestId,
        response: Box<JoinResponse>,
    },
    DropOutsider(PeerId),
    SetAnnouncement(Box<Announcement>),
    Info(oneshot::Sender<NetInfo>),
    Ping {
        peer: PeerId,
        reply: PingReply,
    },
    Find {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, NetError>>,
    },
    Pin(PeerId),
    Unpin {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    CloseConnections(Vec<ConnectionId>),
    Stop {
        flush: Duration,
        reply: oneshot::Sender<()>,
    },
}

/// Handle to the network actor. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    /// The actor's event queue, to read its depth (does not keep it open).
    events: mpsc::WeakSender<NetEvent>,
    connected: watch::Receiver<Arc<BTreeSet<PeerId>>>,
    listening: watch::Receiver<Listening>,
    local_peer: PeerId,
    /// Topic messages taken per publishing node: by gossip here and by catch-up, one
    /// allowance for both.
    topic_rate: SharedTopicRate,
}

/// One publisher allowance (`limits.peer_topic_messages_per_minute`) per node.
pub(crate) type SharedTopicRate = Arc<std::sync::Mutex<RateLimiter<PeerId>>>;

impl NetHandle {
    /// The allowance of topic messages per publishing node, shared by gossip and catch-up.
    pub(crate) fn topic_rate(&self) -> &SharedTopicRate {
        &self.topic_rate
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Commands and events waiting in the actor's queues.
    pub fn queue_depths(&self) -> (usize, usize) {
        let commands = self.tx.max_capacity() - self.tx.capacity();
        let events = self
            .events
            .upgrade()
            .map(|e| e.max_capacity() - e.capacity())
            .unwrap_or(0);
        (commands, events)
    }

    /// This node's PeerId.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// Dials an address; resolves with the PeerId once connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Dials a known peer at its remembered addresses (no-op if connected or dialing).
    pub async fn dial_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.tx
            .send(Command::DialPeer { peer })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Remembers addresses of a peer; `discovered` ones are dialed at once if not connected.
    pub async fn add_addrs(&self, peer: PeerId, addrs: Vec<Multiaddr>, discovered: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::AddAddrs {
                peer,
                addrs,
                discovered,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a delivery request and waits for the response.
    pub async fn send_dm(&self, peer: PeerId, request: DmRequest) -> Result<DmResponse, NetError> {
        self.call(|reply| Command::SendDm { peer, request, reply }).await?
    }

    /// Answers an inbound delivery.
    pub async fn respond_dm(&self, request: InboundRequestId, response: DmResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondDm { request, response })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a topic catch-up request and waits for the response.
    pub async fn sync(&self, peer: PeerId, request: SyncRequest) -> Result<SyncResponse, NetError> {
        self.call(|reply| Command::Sync { peer, request, reply }).await?
    }

    /// Answers a topic catch-up request.
    pub async fn respond_sync(&self, request: InboundRequestId, response: SyncResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondSync {
                request,
                response: Box::new(response),
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Seals `data` (an encoded [`TopicEnvelope`]) for the mesh and publishes it on the
    /// topic; returns how many subscribed members it was handed to.
    pub async fn publish(&self, topic: TopicName, data: Vec<u8>) -> Result<u32, NetError> {
        self.call(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Joins a topic's gossip.
    pub async fn subscribe(&self, topic: TopicName) -> Result<(), NetError> {
        self.tx
            .send(Command::Subscribe(topic))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Leaves a topic's gossip.
    pub async fn unsubscribe(&self, topic: TopicName) -> Result<(), NetError> {
        self.tx
            .send(Command::Unsubscribe(topic))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Replaces the membership: after a removal (`reset == false`), or a join or leave
    /// (`reset`: every connection starts over under the new mesh).
    pub async fn set_membership(&self, mesh: Membership, reset: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::SetMembership {
                mesh: Box::new(mesh),
                reset,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Dials the inviter of a join code and trades the code for membership.
    pub async fn join(&self, invite: Invite) -> Result<(Grant, Voucher), NetError> {
        self.call(|reply| Command::Join {
            invite: Box::new(invite),
            reply,
        })
        .await?
    }

    /// Answers a join request.
    pub async fn respond_join(&self, request: InboundRequestId, response: JoinResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondJoin {
                request,
                response: Box::new(response),
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Replaces this node's announcement and gossips it now.
    pub async fn set_announcement(&self, a: Announcement) -> Result<(), NetError> {
        self.tx
            .send(Command::SetAnnouncement(Box::new(a)))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// A snapshot of listen addresses and connections.
    pub async fn info(&self) -> Result<NetInfo, NetError> {
        self.call(Command::Info).await
    }

    /// One round trip to `peer` over its current connection: time and path.
    pub async fn ping(&self, peer: PeerId) -> Result<(Duration, ConnectionInfo), NetError> {
        self.call(|reply| Command::Ping { peer, reply }).await?
    }

    /// Looks `peer` up in the DHT and dials it; resolves with the addresses found.
    pub async fn find(&self, peer: PeerId) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::Find { peer, reply }).await?
    }

    /// Keeps `peer` connected: redialed with backoff after restarts and network loss.
    pub async fn pin(&self, peer: PeerId) -> Result<(), NetError> {
        self.tx.send(Command::Pin(peer)).await.map_err(|_| NetError::Stopped)
    }

    /// Stops redialing `peer`; true if it was remembered.
    pub async fn unpin(&self, peer: PeerId) -> Result<bool, NetError> {
        self.call(|reply| Command::Unpin { peer, reply }).await
    }

    /// Stops the actor cleanly: answers already handed to it (deliveries committed here)
    /// are sent, then every connection is closed, within `flush`. Returns once it stopped.
    pub async fn stop(&self, flush: Duration) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { flush, reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The set of connected members, updated on every change.
    pub fn connected(&self) -> watch::Receiver<Arc<BTreeSet<PeerId>>> {
        self.connected.clone()
    }

    /// Listen addresses, and whether every listener has reported.
    pub fn listening(&self) -> watch::Receiver<Listening> {
        self.listening.clone()
    }

    /// Whether `peer` is connected and admitted now.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.borrow().contains(peer)
    }
}

/// Listen addresses as they come up.
#[derive(Clone, Debug, Default)]
pub struct Listening {
    /// Active addresses.
    pub addrs: Vec<Multiaddr>,
    /// Every listener started at build time has reported an address (or failed).
    pub complete: bool,
}

struct Conn {
    addr: Multiaddr,
    dialed: bool,
    since: std::time::Instant,
    /// The relay, for a relayed connection.
    via: Option<PeerId>,
}

#[derive(Default)]
struct PeerState {
    /// Open connections.
    connections: HashMap<ConnectionId, Conn>,
    rtt: Option<Duration>,
    agent_version: Option<String>,
    agentmesh: bool,
    /// Proved membership on this visit.
    admitted: bool,
    /// Failed admission on this visit.
    refused: bool,
    /// What identify said: protocols and dialable listen addresses.
    identified: Option<(Vec<libp2p::StreamProtocol>, Vec<Multiaddr>)>,
    /// Hello requests sent again after failures.
    hello_retries: u32,
    /// Our membership proof sent again after failures.
    proof_resends: u32,
}

/// What a gossipsub topic of ours carries.
#[derive(Clone, Debug, PartialEq, Eq)]
enum TopicKind {
    Directory,
    User(TopicName),
}

/// The actor's state.
pub struct NetActor {
    swarm: Swarm<Behaviour>,
    /// The TCP transport's door: opened for each admitted inbound connection.
    guard: guard::Guard,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    connected_tx: watch::Sender<Arc<BTreeSet<PeerId>>>,
    listening_tx: watch::Sender<Listening>,
    listeners_expected: usize,
    listeners_reported: HashSet<libp2p::core::transport::ListenerId>,
    peers: HashMap<PeerId, PeerState>,
    addrs: HashMap<PeerId, VecDeque<Multiaddr>>,
    /// Peers that turned out not to be agentmesh nodes; not dialed again.
    foreign: HashSet<PeerId>,
    dials: HashMap<ConnectionId, ExplicitDial>,
    dm_out: HashMap<OutboundRequestId, Waiting<DmResponse>>,
    dm_in: HashMap<InboundRequestId, ResponseChannel<DmResponse>>,
    sync_out: HashMap<OutboundRequestId, Waiting<SyncResponse>>,
    sync_in: HashMap<InboundRequestId, ResponseChannel<SyncResponse>>,
    /// Delivery answers handed to the swarm and not yet sent (flushed before stopping).
    dm_answering: HashSet<InboundRequestId>,
    /// When the last delivery answer went out.
    last_answer: Option<Instant>,
    /// Stopping: no redials, answers flushed, then connections closed.
    stopping: bool,
    stop: Option<StopState>,
    announcement: Option<Announcement>,
    reach: reach::Reach,
    pings: HashMap<OutboundRequestId, (Instant, PingReply)>,
    self_tx: mpsc::Sender<Command>,
    /// Hello requests that arrived before this node had an announcement to answer with.
    early_hellos: Vec<ResponseChannel<Announcement>>,
    heartbeat: Duration,
    max_text: usize,
    adm: admit::Admission,
    /// Our gossipsub topics (directory, subscribed and published user topics) by hash.
    topics: HashMap<TopicHash, (IdentTopic, TopicKind)>,
    /// User topics this node is subscribed to.
    subscribed: HashSet<TopicName>,
    /// Topic messages accepted per publishing node (shared with catch-up).
    topic_rate: SharedTopicRate,
    topic_rate_warned: Option<Instant>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// The caller waiting for the answer to one of our requests.
type Waiting<R> = oneshot::Sender<Result<R, NetError>>;

/// Hands the answer to an outbound request (or why there is none) to its caller, if it is
/// still waiting.
fn hand_over<R>(
    waiting: &mut HashMap<OutboundRequestId, Waiting<R>>,
    id: OutboundRequestId,
    result: Result<R, NetError>,
) {
    if let Some(reply) = waiting.remove(&id) {
        let _ = reply.send(result);
    }
}

/// A clean stop in progress.
struct StopState {
    /// Answers are flushed until then, then connections closed until `deadline`.
    flush_until: Instant,
    deadline: Instant,
    closing: bool,
    reply: Option<oneshot::Sender<()>>,
}

/// Starts the actor on the current runtime. Returns its handle, its event stream and the
/// task handle (which ends after [`NetHandle::stop`], or at once when `cancel` fires).
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    swarm: Swarm<Behaviour>,
    listeners: usize,
    guard: guard::Guard,
    config: &Config,
    mesh: Membership,
    node_name: String,
    metrics: Arc<crate::metrics::Metrics>,
    cancel: CancellationToken,
) -> (NetHandle, mpsc::Receiver<NetEvent>, tokio::task::JoinHandle<()>) {
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    let events_weak = events.downgrade();
    let (connected_tx, connected) = watch::channel(Arc::new(BTreeSet::new()));
    let (listening_tx, listening) = watch::channel(Listening::default());
    let local_peer = *swarm.local_peer_id();
    let topic_rate = Arc::new(std::sync::Mutex::new(RateLimiter::per_minute(
        config.limits.peer_topic_messages_per_minute,
    )));
    let listeners_expected = listeners;
    let mut actor = NetActor {
        swarm,
        guard,
        self_tx: tx.clone(),
        reach: reach::Reach::new(
            &config.relay.nodes,
            config.relay.serve,
            config.relay.serve && config.relay.for_anyone,
            &config.external,
        ),
        pings: HashMap::new(),
        commands,
        events,
        connected_tx,
        listening_tx,
        listeners_expected,
        listeners_reported: HashSet::new(),
        peers: HashMap::new(),
        addrs: HashMap::new(),
        foreign: HashSet::new(),
        dials: HashMap::new(),
        dm_out: HashMap::new(),
        dm_in: HashMap::new(),
        sync_out: HashMap::new(),
        sync_in: HashMap::new(),
        dm_answering: HashSet::new(),
        last_answer: None,
        stopping: false,
        stop: None,
        announcement: None,
        early_hellos: Vec::new(),
        heartbeat: config.presence.heartbeat,
        max_text: config.limits.max_topic_message_bytes,
        adm: admit::Admission::new(mesh, node_name),
        topics: HashMap::new(),
        subscribed: HashSet::new(),
        topic_rate: topic_rate.clone(),
        topic_rate_warned: None,
        metrics,
    };
    actor.rebuild_topics();
    let task = tokio::spawn(actor.run(cancel));
    (
        NetHandle {
            tx,
            events: events_weak,
            connected,
            listening,
            local_peer,
            topic_rate,
        },
        events_rx,
        task,
    )
}

impl NetActor {
    async fn run(mut self, cancel: CancellationToken) {
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Reachability upkeep (redials, relay slots) when something is due, and at least
        // every few seconds to follow connection changes.
        let mut upkeep = tokio::time::interval(REACH_UPKEEP);
        upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.start_reach();
        loop {
            if self.stop_done() {
                break;
            }
            let due = match &self.stop {
                Some(st) if !st.closing => match self.last_answer {
                    Some(t) if self.dm_answering.is_empty() => (t + ANSWER_LINGER).min(st.flush_until),
                    _ => st.flush_until,
                },
                Some(st) => st.deadline,
                None => self
                    .reach
                    .next_deadline()
                    .unwrap_or_else(|| Instant::now() + REACH_UPKEEP),
            };
            let due = tokio::time::Instant::from_std(due);
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = heartbeat.tick(), if !self.stopping => self.announce(),
                _ = upkeep.tick(), if !self.stopping => {
                    self.admission_upkeep();
                    self.close_duplicates();
                    self.maintain_reach();
                }
                _ = tokio::time::sleep_until(due) => {
                    if !self.stopping {
                        self.maintain_reach();
                    }
                }
            }
        }
        if let Some(reply) = self.stop.as_mut().and_then(|s| s.reply.take()) {
            let _ = reply.send(());
        }
        tracing::debug!("network task stopped");
    }

    /// During a clean stop: flush the delivery answers, then close every connection; true
    /// once both are done (or their time is up).
    fn stop_done(&mut self) -> bool {
        let now = Instant::now();
        let answered = self.dm_answering.is_empty() && self.answers_read_by(now);
        let Some(st) = self.stop.as_mut() else { return false };
        if !st.closing && (answered || now >= st.flush_until) {
            if !self.dm_answering.is_empty() {
                tracing::warn!(
                    count = self.dm_answering.len(),
                    "stopping with delivery answers unsent (their senders will retry)"
                );
            }
            st.closing = true;
            let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            tracing::debug!(peers = peers.len(), "closing connections");
            for p in peers {
                let _ = self.swarm.disconnect_peer_id(p);
            }
        }
        st.closing && (self.swarm.connected_peers().next().is_none() || now >= st.deadline)
    }

    /// Whether the last delivery answer has had [`ANSWER_LINGER`] to reach its sender.
    fn answers_read_by(&self, now: Instant) -> bool {
        self.last_answer.is_none_or(|t| now >= t + ANSWER_LINGER)
    }

    fn emit(&self, event: NetEvent) {
        if let Err(e) = self.events.try_send(event) {
            tracing::warn!(event = ?e.into_inner(), "event queue full; dropping a network event");
        }
    }

    fn publish_connected(&self) {
        let set: BTreeSet<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| !s.connections.is_empty() && s.admitted)
            .map(|(p, _)| *p)
            .collect();
        self.connected_tx.send_if_modified(|cur| {
            if **cur != set {
                *cur = Arc::new(set);
                true
            } else {
                false
            }
        });
    }

    fn update_listening(&self) {
        let addrs: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let complete = self.listeners_reported.len() >= self.listeners_expected;
        self.listening_tx.send_replace(Listening { addrs, complete });
    }

    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = strip_p2p(addr);
        let list = self.addrs.entry(peer).or_default();
        if let Some(pos) = list.iter().position(|a| a == &addr) {
            list.remove(pos);
        }
        list.push_front(addr);
        list.truncate(MAX_ADDRS_PER_PEER);
    }

    /// A dial the user asked for: it goes ahead even if a background dial is under way
    /// (the duplicate rule keeps one connection).
    fn explicit_dial(&mut self, dial: ExplicitDial) {
        let opts = match dial.peer {
            Some(p) => {
                let o = DialOpts::peer_id(p)
                    .addresses(vec![dial.addr.clone()])
                    .condition(PeerCondition::Always);
                if dial.fresh_port {
                    o.allocate_new_port().build()
                } else {
                    o.build()
                }
            }
            None => {
                let o = DialOpts::unknown_peer_id().address(dial.addr.clone());
                if dial.fresh_port {
                    o.allocate_new_port().build()
                } else {
                    o.build()
                }
            }
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, dial);
            }
            Err(e) => {
                let _ = dial.reply.send(Err(NetError::Dial {
                    addr: dial.addr.to_string(),
                    why: dial_error_text(&e),
                }));
            }
        }
    }

    fn dial_known(&mut self, peer: PeerId) {
        if self.foreign.contains(&peer)
            || self.swarm.is_connected(&peer)
            || peer == *self.swarm.local_peer_id()
            || self.adm.backing_off(&peer)
        {
            return;
        }
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&peer)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        if addrs.is_empty() {
            // No address: ask the DHT where it is (the lookup dials it when found).
            self.lookup(peer, None);
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// The directory topic and every user topic we use, under the current mesh's names.
    fn rebuild_topics(&mut self) {
        let mesh = &self.adm.mesh;
        let dir = wire::directory_topic(mesh);
        let mut topics = HashMap::new();
        topics.insert(dir.hash(), (dir.clone(), TopicKind::Directory));
        for t in &self.subscribed {
            let g = wire::gossip_topic(mesh, t);
            topics.insert(g.hash(), (g, TopicKind::User(t.clone())));
        }
        self.topics = topics;
        let gs = self.swarm.behaviour_mut().gossipsub.inner();
        if let Err(e) = gs.subscribe(&dir) {
            tracing::warn!(error = %e, "cannot join the directory topic");
        }
        let subs: Vec<IdentTopic> = self
            .topics
            .values()
            .filter(|(_, k)| matches!(k, TopicKind::User(_)))
            .map(|(g, _)| g.clone())
            .collect();
        for g in subs {
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.inner().subscribe(&g) {
                tracing::warn!(error = %e, "subscribe failed");
            }
        }
    }

    fn user_topic(&mut self, topic: &TopicName) -> IdentTopic {
        let g = wire::gossip_topic(&self.adm.mesh, topic);
        self.topics
            .entry(g.hash())
            .or_insert_with(|| (g.clone(), TopicKind::User(topic.clone())));
        g
    }

    fn directory_hash(&self) -> TopicHash {
        wire::directory_topic(&self.adm.mesh).hash()
    }

    fn announce(&mut self) {
        let Some(a) = self.announcement.as_mut() else { return };
        a.seq = now_ms().max(a.seq + 1);
        let payload = match postcard::to_allocvec(&DirectoryGossip::Announce(a.clone())) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode announcement");
                return;
            }
        };
        let topic = self.directory_hash();
        let me = *self.swarm.local_peer_id();
        let sealed = self.adm.mesh.seal(topic.as_str(), &me, &payload);
        match self.swarm.behaviour_mut().gossipsub.inner().publish(topic, sealed) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "announcement not published"),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                // The node is the last `/p2p/` part (in a relayed address the first one is
                // the relay).
                let relayed = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                let peer = match addr.iter().last() {
                    Some(Protocol::P2p(id)) => Some(id),
                    _ if relayed => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: addr.to_string(),
                            why: "a relayed address must end with /p2p/<the node's PeerId>".into(),
                        }));
                        return;
                    }
                    _ => addr.iter().find_map(|p| match p {
                        Protocol::P2p(id) => Some(id),
                        _ => None,
                    }),
                };
                if peer == Some(*self.swarm.local_peer_id()) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: addr.to_string(),
                        why: "that is this node's own address".into(),
                    }));
                    return;
                }
                if let Some(p) = peer
                    && self.swarm.is_connected(&p)
                {
                    let _ = reply.send(Ok(p));
                    return;
                }
                self.explicit_dial(ExplicitDial {
                    addr,
                    peer,
                    reply,
                    fresh_port: false,
                });
            }
            Command::DialPeer { peer } => self.dial_known(peer),
            Command::AddAddrs {
                peer,
                addrs,
                discovered,
            } => {
                if peer == *self.swarm.local_peer_id() {
                    return;
                }
                for a in addrs {
                    self.remember(peer, a);
                }
                if discovered {
                    self.dial_known(peer);
                }
            }
            Command::SendDm { peer, request, reply } => {
                if !self.is_admitted(&peer) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: "not connected".into(),
                    }));
                    return;
                }
                let id = self.swarm.behaviour_mut().dm.inner().send_request(&peer, request);
                self.dm_out.insert(id, reply);
            }
            Command::RespondDm { request, response } => {
                if let Some(ch) = self.dm_in.remove(&request) {
                    match self.swarm.behaviour_mut().dm.inner().send_response(ch, response) {
                        Ok(()) => {
                            self.dm_answering.insert(request);
                        }
                        Err(_) => {
                            tracing::debug!("delivery response not sent: connection gone (sender will retry)")
                        }
                    }
                }
            }
            Command::Sync { peer, request, reply } => {
                if !self.is_admitted(&peer) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: "not connected".into(),
                    }));
                    return;
                }
                let id = self.swarm.behaviour_mut().sync.inner().send_request(&peer, request);
                self.sync_out.insert(id, reply);
            }
            Command::RespondSync { request, response } => {
                if let Some(ch) = self.sync_in.remove(&request)
                    && self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .inner()
                        .send_response(ch, *response)
                        .is_err()
                {
                    tracing::debug!("catch-up response not sent: connection gone");
                }
            }
            Command::Publish { topic, data, reply } => {
                let hash = self.user_topic(&topic).hash();
                let me = *self.swarm.local_peer_id();
                let sealed = self.adm.mesh.seal(hash.as_str(), &me, &data);
                let gs = self.swarm.behaviour_mut().gossipsub.inner();
                let result = match gs.publish(hash.clone(), sealed) {
                    Ok(_) => {
                        let n = gs.all_peers().filter(|(_, topics)| topics.contains(&&hash)).count();
                        Ok(n as u32)
                    }
                    Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(0),
                    Err(gossipsub::PublishError::Duplicate) => Ok(0),
                    Err(e) => Err(NetError::Publish(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Command::Subscribe(topic) => {
                let g = self.user_topic(&topic);
                self.subscribed.insert(topic.clone());
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.inner().subscribe(&g) {
                    tracing::warn!(topic = %topic, error = %e, "subscribe failed");
                }
            }
            Command::Unsubscribe(topic) => {
                let g = self.user_topic(&topic);
                self.subscribed.remove(&topic);
                self.swarm.behaviour_mut().gossipsub.inner().unsubscribe(&g);
            }
            Command::SetMembership { mesh, reset } => self.set_membership(*mesh, reset),
            Command::Join { invite, reply } => self.start_join(*invite, reply),
            Command::RespondJoin { request, response } => self.respond_join(request, *response),
            Command::DropOutsider(peer) => self.drop_outsider(peer),
            Command::SetAnnouncement(a) => {
                let first = self.announcement.is_none();
                let seq = self.announcement.as_ref().map(|x| x.seq).unwrap_or(0);
                let mut a = *a;
                a.seq = a.seq.max(seq);
                self.announcement = Some(a.clone());
                self.announce();
                if first {
                    // Answer and greet whoever came before we had anything to say.
                    for ch in std::mem::take(&mut self.early_hellos) {
                        let _ = self.swarm.behaviour_mut().hello.inner().send_response(ch, a.clone());
                    }
                    let members: Vec<PeerId> = self.peers.iter().filter(|(_, s)| s.admitted).map(|(p, _)| *p).collect();
                    for p in members {
                        self.swarm.behaviour_mut().hello.inner().send_request(&p, a.clone());
                    }
                }
            }
            Command::Ping { peer, reply } => {
                if !self.is_admitted(&peer) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: "not connected".into(),
                    }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .probe
                    .inner()
                    .send_request(&peer, rand::random::<u64>());
                self.pings.insert(id, (Instant::now(), reply));
            }
            Command::Find { peer, reply } => {
                if self.is_admitted(&peer) {
                    let addrs = self
                        .addrs
                        .get(&peer)
                        .map(|l| l.iter().cloned().collect())
                        .unwrap_or_default();
                    let _ = reply.send(Ok(addrs));
                } else {
                    self.lookup(peer, Some(reply));
                }
            }
            Command::Pin(peer) => self.pin(peer),
            Command::Unpin { peer, reply } => {
                let _ = reply.send(self.unpin(&peer));
            }
            Command::Stop { flush, reply } => {
                self.stopping = true;
                let now = Instant::now();
                self.stop = Some(StopState {
                    flush_until: now + flush / 2,
                    deadline: now + flush,
                    closing: false,
                    reply: Some(reply),
                });
            }
            Command::CloseConnections(ids) => {
                for id in ids {
                    self.swarm.close_connection(id);
                }
            }
            Command::Info(reply) => {
                let peers = self
                    .peers
                    .iter()
                    .filter(|(_, s)| !s.connections.is_empty() && s.admitted)
                    .map(|(p, s)| ConnectedPeer {
                        peer: *p,
                        addrs: s.connections.values().map(|c| c.addr.clone()).collect(),
                        connections: s
                            .connections
                            .values()
                            .map(|c| ConnectionInfo::of(&c.addr, c.dialed))
                            .collect(),
                        rtt: s.rtt,
                        agent_version: s.agent_version.clone(),
                    })
                    .collect();
                let mut outsiders = self.adm.outsiders();
                for o in &mut outsiders {
                    o.connected = self.swarm.is_connected(&o.peer);
                }
                let _ = reply.send(NetInfo {
                    listen: self.swarm.listeners().cloned().collect(),
                    peers,
                    outsiders,
                    known_addrs: self
                        .addrs
                        .iter()
                        .map(|(p, l)| (*p, l.iter().cloned().collect()))
                        .collect(),
                    reach: self.reach_info(),
                    pinned: self.pinned(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        {
            use libp2p::metrics::Recorder;
            let m = &self.metrics.libp2p;
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
                SwarmEvent::Behaviour(_) => {}
                other => m.record(other),
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                tracing::info!(%address, "listening");
                self.listeners_reported.insert(listener_id);
                self.reach_on_new_listen_addr(listener_id, &address);
                // A relay is run on purpose on a public address: say so without waiting for
                // AutoNAT (whose servers only answer on connections the tester dialed, which
                // a relay rarely does).
                if self.reach_serving() && path_of(&address) == Path::Internet {
                    self.swarm.add_external_address(address.clone());
                }
                self.update_listening();
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.update_listening();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                addresses,
            } => {
                if !self.reach_on_listener_closed(listener_id, &addresses, &reason) {
                    tracing::warn!(?reason, "listener closed");
                    self.listeners_reported.insert(listener_id);
                }
                self.update_listening();
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.reach_changed();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.reach_changed();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                endpoint,
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), ?cause, "connection closed");
                if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    let was_member = self.peers.remove(&peer_id).is_some_and(|s| s.admitted);
                    self.adm.pending.remove(&peer_id);
                    self.reach_on_disconnected(peer_id);
                    self.publish_connected();
                    if was_member {
                        if !self.stopping && !self.adm.mesh.is_revoked(&peer_id) {
                            self.reach_on_member_lost(peer_id);
                        }
                        self.emit(NetEvent::PeerDisconnected { peer: peer_id });
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                tracing::debug!(peer = ?peer_id, error = %error, "dial failed");
                if let Some(p) = peer_id {
                    self.join_dial_failed(p, dial_error_text(&error));
                }
                if let Some(mut dial) = self.dials.remove(&connection_id) {
                    match dial.peer {
                        // The other side dialed us meanwhile: that connection will do.
                        Some(p) if self.swarm.is_connected(&p) => {
                            let _ = dial.reply.send(Ok(p));
                        }
                        // Two nodes dialing each other from their listening ports at the
                        // same moment can meet in one TCP connection that both think they
                        // opened, and its handshake fails on both sides: once more, each
                        // from a port of its own.
                        Some(_) if !dial.fresh_port && matches!(error, libp2p::swarm::DialError::Transport(_)) => {
                            tracing::debug!(addr = %dial.addr, "dial failed; once more from a fresh port");
                            dial.fresh_port = true;
                            self.explicit_dial(dial);
                        }
                        _ => {
                            let _ = dial.reply.send(Err(NetError::Dial {
                                addr: dial.addr.to_string(),
                                why: dial_error_text(&error),
                            }));
                        }
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Simultaneous dials leave two direct connections to one peer. Once both have been up
    /// for [`DUPLICATE_GRACE`], both sides keep the one dialed by the smaller PeerId and
    /// close the other, so they agree without talking. Not at once: a short-lived second
    /// connection (an AutoNAT dial-back) must not take down the one carrying traffic.
    fn close_duplicates(&mut self) {
        let me = *self.swarm.local_peer_id();
        let mut close = Vec::new();
        for (peer, state) in &self.peers {
            let direct = |d: bool| -> Vec<(ConnectionId, std::time::Instant)> {
                state
                    .connections
                    .iter()
                    .filter(|(_, c)| c.via.is_none() && c.dialed == d)
                    .map(|(id, c)| (*id, c.since))
                    .collect()
            };
            let (by_me, by_them) = (direct(true), direct(false));
            if by_me.is_empty() || by_them.is_empty() {
                continue;
            }
            if by_me
                .iter()
                .chain(&by_them)
                .any(|(_, since)| since.elapsed() < DUPLICATE_GRACE)
            {
                continue;
            }
            tracing::debug!(%peer, "closing duplicate connections");
            close.extend(if me < *peer { by_them } else { by_me }.into_iter().map(|(id, _)| id));
        }
        for id in close {
            self.swarm.close_connection(id);
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let _span = tracing::debug_span!("peer", %peer, conn = %id).entered();
        let dialed = endpoint.is_dialer();
        // An inbound relayed connection has only `/p2p/<peer>` as remote address; the
        // circuit shows on our side (the relayed address we listen on).
        let addr = match &endpoint {
            ConnectedPoint::Listener { local_addr, .. } if relay_of(local_addr).is_some() => local_addr.clone(),
            _ => endpoint.get_remote_address().clone(),
        };
        let via = relay_of(&addr);
        tracing::debug!(%peer, %addr, dialed, relayed = via.is_some(), "connection established");
        if let Some(dial) = self.dials.remove(&id) {
            let _ = dial.reply.send(Ok(peer));
        }
        if dialed {
            self.remember(peer, endpoint.get_remote_address().clone());
        }
        let state = self.peers.entry(peer).or_default();
        let first = state.connections.is_empty();
        state.connections.insert(
            id,
            Conn {
                addr: addr.clone(),
                dialed,
                since: std::time::Instant::now(),
                via,
            },
        );

        // A direct connection supersedes relayed ones: close them shortly (after the
        // hole-punch protocol that may have opened this one has finished on them).
        let relayed: Vec<ConnectionId> = if via.is_none() {
            state
                .connections
                .iter()
                .filter(|(_, c)| c.via.is_some())
                .map(|(c, _)| *c)
                .collect()
        } else {
            Vec::new()
        };

        if !relayed.is_empty() {
            tracing::info!(%peer, "direct connection up; dropping the relayed one");
            let tx = self.self_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(reach::RELAYED_GRACE).await;
                let _ = tx.send(Command::CloseConnections(relayed)).await;
            });
            self.reach_changed();
        }
        self.reach_on_connected(peer);
        if self.is_admitted(&peer) {
            if !dialed {
                self.guard.open(&addr);
            }
        } else {
            self.bound_unadmitted(id);
        }
        if first {
            // Nothing but identify, ping and the relay runs until the peer proves membership.
            self.begin_admission(peer);
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != wire::IDENTIFY_PROTOCOL_VERSION {
                    if self.reach_serving_anyone() || self.reach_uses_relay(&peer_id) {
                        // A relay client or our relay: it may stay, it gets nothing else.
                        return;
                    }
                    tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not an agentmesh node; disconnecting");
                    if self.foreign.len() >= MAX_FOREIGN {
                        self.foreign.clear();
                    }
                    self.foreign.insert(peer_id);
                    self.addrs.remove(&peer_id);
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.agentmesh = true;
                    s.agent_version = Some(info.agent_version.clone());
                }
                // Keep what can be dialed from here: loopback only if the peer is on this
                // machine, never link-local IPv6 (it needs a zone we do not know).
                let local = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|s| s.connections.values().any(|c| is_loopback(&c.addr)));
                let listen: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .map(strip_p2p)
                    .filter(|a| (local || !is_loopback(a)) && !is_link_local_v6(a))
                    .collect();
                for a in listen.iter().take(MAX_ADDRS_PER_PEER) {
                    self.remember(peer_id, a.clone());
                }
                self.reach_on_identify(peer_id, &info.protocols);
                if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.identified = Some((info.protocols.clone(), listen.clone()));
                }
                if self.is_admitted(&peer_id) {
                    self.feed_kad(peer_id);
                    self.emit(NetEvent::PeerIdentified {
                        peer: peer_id,
                        listen_addrs: listen,
                    });
                }
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) => {
                    if let Some(s) = self.peers.get_mut(&peer) {
                        s.rtt = Some(rtt);
                    }
                }
                Err(ping::Failure::Unsupported) => {}
                Err(e) => {
                    tracing::info!(%peer, error = %e, "ping failed; closing the connection");
                    self.swarm.close_connection(connection);
                }
            },
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (p, a) in list {
                    by_peer.entry(p).or_default().push(a);
                }
                for (peer, addrs) in by_peer {
                    if self.foreign.contains(&peer) || peer == *self.swarm.local_peer_id() {
                        continue;
                    }
                    for a in &addrs {
                        self.remember(peer, a.clone());
                    }
                    self.emit(NetEvent::PeerDiscovered {
                        peer,
                        addrs: addrs.clone(),
                    });
                    self.dial_known(peer);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Admit(e) => self.on_admit(e),
            BehaviourEvent::Join(e) => self.on_join(e),
            BehaviourEvent::Limits(v) => match v {},
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Dm(e) => self.on_dm(e),
            BehaviourEvent::Hello(e) => self.on_hello(e),
            BehaviourEvent::Sync(e) => self.on_sync(e),
            BehaviourEvent::Rekey(e) => self.on_rekey(e),
            BehaviourEvent::Probe(e) => self.on_probe(e),
            BehaviourEvent::RelayClient(e) => self.on_relay_client(e),
            BehaviourEvent::RelayServer(e) => self.on_relay_server(e),
            BehaviourEvent::Dcutr(e) => self.on_dcutr(e),
            BehaviourEvent::AutonatClient(e) => self.on_autonat(e),
            BehaviourEvent::AutonatServer(e) => {
                tracing::debug!(client = %e.client, addr = %e.tested_addr, ok = e.result.is_ok(), "served an AutoNAT test");
            }
            BehaviourEvent::Kad(e) => self.on_kad(e),
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let (acceptance, verdict) = match self.check_gossip(&message) {
                    Ok(ev) => (MessageAcceptance::Accept, Some(ev)),
                    Err(a) => {
                        let reason = match a {
                            MessageAcceptance::Reject => "rejected",
                            _ => "ignored",
                        };
                        crate::metrics::Metrics::count(&self.metrics.topic_dropped, reason);
                        (a, None)
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .inner()
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if let Some(ev) = verdict {
                    self.emit(ev);
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some((_, TopicKind::User(t))) = self.topics.get(&topic) {
                    let t = t.clone();
                    self.emit(NetEvent::TopicSubscribed {
                        peer: peer_id,
                        topic: t,
                    });
                }
            }
            _ => {}
        }
    }

    /// Opens and checks a gossip message: the event it makes, or how to judge it.
    fn check_gossip(&mut self, message: &gossipsub::Message) -> Result<NetEvent, MessageAcceptance> {
        let source = message.source.ok_or(MessageAcceptance::Reject)?;
        let Some((_, kind)) = self.topics.get(&message.topic) else {
            return Err(MessageAcceptance::Ignore);
        };
        let kind = kind.clone();
        let plain = match self
            .adm
            .mesh
            .open_sealed(message.topic.as_str(), &source, &message.data)
        {
            Ok(p) => p,
            // Sealed with a key we do not have yet (a rotation on its way to us).
            Err(OpenError::UnknownEpoch(e)) => {
                tracing::debug!(%source, epoch = e, "gossip sealed with an unknown key; ignoring");
                return Err(MessageAcceptance::Ignore);
            }
            Err(e) => {
                tracing::debug!(%source, error = %e, "rejecting gossip");
                return Err(MessageAcceptance::Reject);
            }
        };
        match kind {
            TopicKind::Directory => {
                let DirectoryGossip::Announce(a) =
                    postcard::from_bytes::<DirectoryGossip>(&plain).map_err(|_| MessageAcceptance::Reject)?;
                if let Err(why) = a.check() {
                    tracing::debug!(%source, %why, "rejecting announcement");
                    return Err(MessageAcceptance::Reject);
                }
                Ok(NetEvent::Announcement {
                    peer: source,
                    announcement: a,
                })
            }
            TopicKind::User(topic) => {
                let envelope: TopicEnvelope = postcard::from_bytes(&plain).map_err(|_| MessageAcceptance::Reject)?;
                if !envelope.acceptable(&topic, self.max_text) {
                    tracing::debug!(%source, "rejecting malformed topic message");
                    return Err(MessageAcceptance::Reject);
                }
                if source != *self.swarm.local_peer_id()
                    && let Err(wait) =
                        self.topic_rate
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take(&source, 1, Instant::now())
                {
                    let quiet = self
                        .topic_rate_warned
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                    if !quiet {
                        tracing::warn!(%source, retry_in = ?wait, "a node publishes faster than limits.peer_topic_messages_per_minute; dropping its topic messages");
                        self.topic_rate_warned = Some(Instant::now());
                    }
                    return Err(MessageAcceptance::Ignore);
                }
                Ok(NetEvent::Topic { source, envelope })
            }
        }
    }

    fn on_dm(&mut self, event: request_response::Event<DmRequest, DmResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request: DmRequest::Deliver(messages),
                    channel,
                } => {
                    if !self.is_admitted(&peer) {
                        // The gate makes this impossible; never deliver for a non-member.
                        tracing::warn!(%peer, "delivery from a peer that is not admitted; dropping");
                        return;
                    }
                    self.dm_in.insert(request_id, channel);
                    let ev = NetEvent::InboundDms {
                        peer,
                        request: request_id,
                        messages,
                    };
                    if let Err(e) = self.events.try_send(ev) {
                        tracing::warn!("event queue full; asking {peer} to retry its delivery");
                        drop(e);
                        if let Some(ch) = self.dm_in.remove(&request_id) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .dm
                                .inner()
                                .send_response(ch, DmResponse::Unavailable("recipient node is busy".into()));
                        }
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    hand_over(&mut self.dm_out, request_id, Ok(response));
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let why = error.to_string();
                hand_over(&mut self.dm_out, request_id, Err(NetError::Request { peer, why }));
            }
            request_response::Event::InboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
                self.dm_in.remove(&request_id);
                self.dm_answering.remove(&request_id);
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.dm_answering.remove(&request_id);
                self.last_answer = Some(Instant::now());
            }
        }
    }

    fn on_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    if !self.is_admitted(&peer) {
                        tracing::warn!(%peer, "catch-up request from a peer that is not admitted; dropping");
                        return;
                    }
                    self.sync_in.insert(request_id, channel);
                    let ev = NetEvent::SyncRequest {
                        peer,
                        request: request_id,
                        body: request,
                    };
                    if self.events.try_send(ev).is_err()
                        && let Some(ch) = self.sync_in.remove(&request_id)
                    {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .inner()
                            .send_response(ch, SyncResponse::Unavailable("node is busy".into()));
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    hand_over(&mut self.sync_out, request_id, Ok(response));
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let why = error.to_string();
                hand_over(&mut self.sync_out, request_id, Err(NetError::Request { peer, why }));
            }
            request_response::Event::InboundFailure { request_id, .. } => {
                self.sync_in.remove(&request_id);
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_probe(&mut self, event: request_response::Event<u64, u64>) {
        match event {
            request_response::Event::Message {
                peer,
                message,
                connection_id,
            } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let _ = self.swarm.behaviour_mut().probe.inner().send_response(channel, request);
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some((start, reply)) = self.pings.remove(&request_id) {
                        let conn = self
                            .peers
                            .get(&peer)
                            .and_then(|s| s.connections.get(&connection_id))
                            .map(|c| ConnectionInfo::of(&c.addr, c.dialed));
                        let _ = reply.send(match conn {
                            Some(c) => Ok((start.elapsed(), c)),
                            None => Err(NetError::Request {
                                peer,
                                why: "the connection closed during the ping".into(),
                            }),
                        });
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, reply)) = self.pings.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }

    fn on_hello(&mut self, event: request_response::Event<Announcement, Announcement>) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let theirs = match message {
                    request_response::Message::Request { request, channel, .. } => {
                        match self.announcement.clone() {
                            Some(mine) => {
                                let _ = self.swarm.behaviour_mut().hello.inner().send_response(channel, mine);
                            }
                            None if self.early_hellos.len() < MAX_EARLY_HELLOS => self.early_hellos.push(channel),
                            None => {}
                        }
                        request
                    }
                    request_response::Message::Response { response, .. } => response,
                };
                match theirs.check() {
                    Ok(()) => self.emit(NetEvent::Announcement {
                        peer,
                        announcement: theirs,
                    }),
                    Err(why) => tracing::debug!(%peer, %why, "ignoring bad hello"),
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "hello failed");
                // A duplicate connection closing under it is the usual cause; try again on
                // the surviving connection, a few times at most.
                let again = self.peers.get_mut(&peer).is_some_and(|s| {
                    s.hello_retries += 1;
                    s.hello_retries <= 3
                });
                if again
                    && self.is_admitted(&peer)
                    && let Some(a) = self.announcement.clone()
                {
                    self.swarm.behaviour_mut().hello.inner().send_request(&peer, a);
                }
            }
            _ => {}
        }
    }
}

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Path {
    /// A private, loopback or link-local address.
    Lan,
    /// A public address.
    Internet,
    /// Through a relay (`/p2p-circuit`).
    Relayed,
}

/// Classifies a connection's remote address.
pub fn path_of(a: &Multiaddr) -> Path {
    if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return Path::Relayed;
    }
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_private() || ip.is_loopback() || ip.is_link_local() => Path::Lan,
        Some(Protocol::Ip6(ip)) if ip.is_loopback() || is_link_local_v6(a) || (ip.segments()[0] & 0xfe00) == 0xfc00 => {
            Path::Lan
        }
        // A dialed name stays a name in the connection's address.
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h))
            if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".local") =>
        {
            Path::Lan
        }
        _ => Path::Internet,
    }
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

pub(crate) fn is_link_local_v6(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Ip6(ip)) if ip.segments()[0] & 0xffc0 == 0xfe80)
}

/// Parses a multiaddr typed by a user, with an example in the error.
pub fn parse_multiaddr(s: &str) -> Result<Multiaddr, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("malformed multiaddr {s:?}: {e} (example: /ip4/192.168.1.20/tcp/4001)"))
}

/// The address without its trailing `/p2p/<id>`.
pub fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// A dial the user asked for, answered when it connects or fails.
struct ExplicitDial {
    addr: Multiaddr,
    peer: Option<PeerId>,
    reply: oneshot::Sender<Result<PeerId, NetError>>,
    /// Retried from a new port (not the listening one).
    fresh_port: bool,
}

fn dial_error_text(e: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match e {
        DialError::LocalPeerId { .. } => "that is this node's own address".into(),
        DialError::NoAddresses => "no address to dial".into(),
        DialError::WrongPeerId { obtained, .. } => {
            format!("the node there has PeerId {obtained}, not the one in the address")
        }
        DialError::Transport(errs) => errs
            .iter()
            .map(|(a, e)| format!("{a}: {}", transport_error_text(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn transport_error_text(e: &libp2p::TransportError<std::io::Error>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => format!("address not supported ({a})"),
        libp2p::TransportError::Other(io) => {
            let mut s = io.to_string();
            let mut src = std::error::Error::source(io);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// Time a peer's announcement stays valid without a heartbeat.
pub fn presence_timeout(heartbeat_ms: u64) -> Duration {
    Duration::from_millis(heartbeat_ms.saturating_mul(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_by_address() {
        let p = |s: &str| path_of(&s.parse().unwrap());
        assert_eq!(p("/ip4/192.168.1.2/tcp/1"), Path::Lan);
        assert_eq!(p("/ip4/127.0.0.1/tcp/1"), Path::Lan);
        assert_eq!(p("/ip6/::1/tcp/1"), Path::Lan);
        assert_eq!(p("/ip6/fd00::2/tcp/1"), Path::Lan);
        assert_eq!(p("/dns4/localhost/tcp/1"), Path::Lan);
        assert_eq!(p("/dns/printer.local/tcp/1"), Path::Lan);
        assert_eq!(p("/ip4/5.0.0.10/tcp/1"), Path::Internet);
        assert_eq!(p("/dns4/example.org/tcp/1"), Path::Internet);
        let relayed = "/ip4/5.0.0.10/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";
        assert_eq!(p(relayed), Path::Relayed);
    }
}
