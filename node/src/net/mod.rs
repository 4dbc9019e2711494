//! The network actor: the one task that owns the libp2p `Swarm`.
//!
//! Everything else talks to it through a [`NetHandle`] (bounded command channel, a oneshot
//! per reply) and hears from it through a bounded [`NetEvent`] channel and a `watch` of the
//! connected peers. The loop never awaits anything that can block: replies go out with
//! `send` on oneshots, events with `try_send` (a full channel drops informational events and
//! answers inbound deliveries with "unavailable", so the sender retries).

mod addr;
mod admit;
mod behaviour;
mod commands;
mod events;
pub mod gate;
pub mod guard;
mod handle;
mod join;
mod pair;
mod port_reuse;
mod protocols;
mod public;
pub use public::{PUBLIC_KAD_PROTOCOL, PublicNetInfo, rendezvous_key};
mod reach;
mod rekey;
mod report;
mod rules;

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

use addr::dial_error_text;
pub use addr::{ConnectionInfo, MultiaddrError, Path, parse_multiaddr, path_of, relay_of, strip_p2p};
pub(crate) use addr::{is_link_local_v6, is_loopback, peer_of};
pub use admit::{ADMIT_TIMEOUT, OutsiderInfo, PAIR_KEEP};
pub use behaviour::{Behaviour, BehaviourEvent, HOP_PROTOCOL, KAD_PROTOCOL, PING_PROTOCOL, build};
use commands::Command;
pub use handle::NetHandle;
pub(crate) use handle::SharedTopicRate;
pub use reach::{NatStatus, PunchState, PunchStats, ReachInfo, ReservationInfo, UpnpInfo, UpnpStatus};
pub use report::{ConnectedPeer, Discovery, Listening, NetEvent, NetInfo};

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
/// How long a clean stop waits, after closing its listeners, for the router to remove the
/// ports it forwarded (UPnP): the removal runs in the background.
pub const UPNP_UNMAP_LINGER: Duration = Duration::from_millis(500);
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

type PingReply = oneshot::Sender<Result<(Duration, ConnectionInfo), NetError>>;

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
    public: public::Public,
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
    /// When the listeners were closed.
    closed_at: Option<Instant>,
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
            config.upnp(),
            config.natpmp(),
        ),
        public: public::Public::new(config.internet.public_network, &config.internet.public_bootstrap),
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
        self.start_public();
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
                None => [self.reach.next_deadline(), self.public.next_deadline()]
                    .into_iter()
                    .flatten()
                    .min()
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
                    self.maintain_public();
                }
                _ = tokio::time::sleep_until(due) => {
                    if !self.stopping {
                        self.maintain_reach();
                        self.maintain_public();
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
        let mapped = self.reach_upnp_mapped();
        let Some(st) = self.stop.as_mut() else { return false };
        if !st.closing && (answered || now >= st.flush_until) {
            if !self.dm_answering.is_empty() {
                tracing::warn!(
                    count = self.dm_answering.len(),
                    "stopping with delivery answers unsent (their senders will retry)"
                );
            }
            st.closing = true;
            // Listeners closed first: a port mapped on the router (UPnP) is removed with
            // its listener, while the connections close.
            for id in self.listeners_reported.iter().copied().collect::<Vec<_>>() {
                self.swarm.remove_listener(id);
            }
            if let Some(c) = self.reach.pmp_cancel() {
                c.cancel();
            }
            st.closed_at = Some(now);
            let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
            tracing::debug!(peers = peers.len(), "closing connections");
            for p in peers {
                let _ = self.swarm.disconnect_peer_id(p);
            }
        }
        // The router is asked to remove a mapped port in the background: give it a moment.
        let unmapped = !mapped || st.closed_at.is_some_and(|t| now >= t + UPNP_UNMAP_LINGER);
        st.closing && (self.swarm.connected_peers().next().is_none() && unmapped || now >= st.deadline)
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
}

/// A dial the user asked for, answered when it connects or fails.
struct ExplicitDial {
    addr: Multiaddr,
    peer: Option<PeerId>,
    reply: oneshot::Sender<Result<PeerId, NetError>>,
    /// Retried from a new port (not the listening one).
    fresh_port: bool,
}

/// Time a peer's announcement stays valid without a heartbeat.
pub fn presence_timeout(heartbeat_ms: u64) -> Duration {
    Duration::from_millis(heartbeat_ms.saturating_mul(3))
}
