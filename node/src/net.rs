//! The network actor: the one task that owns the libp2p `Swarm`.
//!
//! Everything else talks to it through a [`NetHandle`] (bounded command channel, a oneshot
//! per reply) and hears from it through a bounded [`NetEvent`] channel and a `watch` of the
//! connected peers. The loop never awaits anything that can block: replies go out with
//! `send` on oneshots, events with `try_send` (a full channel drops informational events and
//! answers inbound deliveries with "unavailable", so the sender retries).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, TopicHash};
pub use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, identity::Keypair, mdns, noise, ping, tcp, yamux};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ids::{TopicName, now_ms};
use crate::wire::{
    self, Announcement, DIRECTORY_TOPIC, DirectoryGossip, DmRequest, DmResponse, PostcardCodec, TopicEnvelope,
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
/// Idle connections are closed after this long (presence traffic keeps mesh peers busy).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Ping interval; a ping that times out closes the connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// Software version announced to peers.
pub const AGENT_VERSION: &str = concat!("agentmesh/", env!("CARGO_PKG_VERSION"));

type DmBehaviour = request_response::Behaviour<PostcardCodec<DmRequest, DmResponse>>;
type HelloBehaviour = request_response::Behaviour<PostcardCodec<Announcement, Announcement>>;

#[allow(missing_docs)]
mod behaviour {
    use super::*;

    /// The composed libp2p behaviour of a node.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
        pub(super) gossipsub: gossipsub::Behaviour,
        pub(super) dm: DmBehaviour,
        pub(super) hello: HelloBehaviour,
    }
}
pub use behaviour::{Behaviour, BehaviourEvent};

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
    /// First connection to a peer opened.
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on this connection.
        addr: Multiaddr,
        /// We dialed it.
        dialed: bool,
    },
    /// Last connection to a peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A peer was identified as an agentmesh node, with the addresses it listens on.
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
    /// A peer's announcement (from hello or the directory topic; the node is verified).
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
}

/// A connected peer, for `mesh peers` / `mesh status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectedPeer {
    /// The peer.
    pub peer: PeerId,
    /// Remote addresses of open connections.
    pub addrs: Vec<Multiaddr>,
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
    /// Connected agentmesh peers.
    pub peers: Vec<ConnectedPeer>,
    /// Addresses known per peer (connected or not).
    pub known_addrs: Vec<(PeerId, Vec<Multiaddr>)>,
}

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
    Publish {
        topic: IdentTopic,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<u32, NetError>>,
    },
    Subscribe(IdentTopic),
    Unsubscribe(IdentTopic),
    SetAnnouncement(Box<Announcement>),
    Info(oneshot::Sender<NetInfo>),
}

/// Handle to the network actor. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    connected: watch::Receiver<Arc<BTreeSet<PeerId>>>,
    listening: watch::Receiver<Listening>,
    local_peer: PeerId,
}

impl NetHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
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

    /// Publishes on a gossipsub topic; returns how many subscribed peers it was handed to.
    pub async fn publish(&self, topic: IdentTopic, data: Vec<u8>) -> Result<u32, NetError> {
        self.call(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Joins a gossipsub topic.
    pub async fn subscribe(&self, topic: IdentTopic) -> Result<(), NetError> {
        self.tx
            .send(Command::Subscribe(topic))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Leaves a gossipsub topic.
    pub async fn unsubscribe(&self, topic: IdentTopic) -> Result<(), NetError> {
        self.tx
            .send(Command::Unsubscribe(topic))
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

    /// The set of connected agentmesh peers, updated on every change.
    pub fn connected(&self) -> watch::Receiver<Arc<BTreeSet<PeerId>>> {
        self.connected.clone()
    }

    /// Listen addresses, and whether every listener has reported.
    pub fn listening(&self) -> watch::Receiver<Listening> {
        self.listening.clone()
    }

    /// Whether `peer` is connected now.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.borrow().contains(peer)
    }
}

/// Builds the swarm and starts listening. Listening on a configured address that fails is
/// an error; a default address that fails (e.g. no IPv6) is logged and skipped.
pub fn build(keypair: &Keypair, config: &Config) -> Result<(Swarm<Behaviour>, usize), NetError> {
    let max_req = config.max_wire_request_bytes();
    let gossip_max = (config.limits.max_message_bytes + 16 * 1024).max(wire::MAX_ANNOUNCEMENT_BYTES);
    let request_timeout = config.delivery.request_timeout;
    let mdns_on = config.libp2p_mdns();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::new().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Start(e.to_string()))?
        .with_quic()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .message_id_fn(wire::gossip_message_id)
                .max_transmit_size(gossip_max)
                .heartbeat_interval(Duration::from_secs(1))
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub =
                gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let mdns = if mdns_on {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), peer) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS unavailable; LAN discovery is off");
                        None
                    }
                }
            } else {
                None
            };
            let rr = request_response::Config::default().with_request_timeout(request_timeout);
            Ok(Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(wire::IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                        .with_agent_version(AGENT_VERSION.to_string()),
                ),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(Duration::from_secs(10)),
                ),
                mdns: mdns.into(),
                gossipsub,
                dm: request_response::Behaviour::with_codec(
                    PostcardCodec::new(max_req, wire::MAX_DM_RESPONSE_BYTES),
                    [(wire::DM_PROTOCOL, ProtocolSupport::Full)],
                    rr.clone(),
                ),
                hello: request_response::Behaviour::with_codec(
                    PostcardCodec::new(wire::MAX_ANNOUNCEMENT_BYTES, wire::MAX_ANNOUNCEMENT_BYTES),
                    [(wire::HELLO_PROTOCOL, ProtocolSupport::Full)],
                    rr,
                ),
            })
        })
        .map_err(|e| NetError::Start(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    let (addrs, defaults) = config.listen_addrs();
    let mut listening = 0;
    for addr in addrs {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => listening += 1,
            Err(e) if defaults => tracing::info!(%addr, error = %e, "skipping default listen address"),
            Err(e) => {
                return Err(NetError::Start(format!("cannot listen on {addr}: {e}")));
            }
        }
    }
    if listening == 0 {
        return Err(NetError::Start("no listen address could be used".into()));
    }
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&IdentTopic::new(DIRECTORY_TOPIC))
        .map_err(|e| NetError::Start(format!("gossipsub: {e}")))?;
    Ok((swarm, listening))
}

/// Listen addresses as they come up.
#[derive(Clone, Debug, Default)]
pub struct Listening {
    /// Active addresses.
    pub addrs: Vec<Multiaddr>,
    /// Every listener started at build time has reported an address (or failed).
    pub complete: bool,
}

#[derive(Default)]
struct PeerState {
    /// Open connections: id → (remote address, dialed by us).
    connections: HashMap<ConnectionId, (Multiaddr, bool)>,
    rtt: Option<Duration>,
    agent_version: Option<String>,
    agentmesh: bool,
}

/// The actor's state.
pub struct NetActor {
    swarm: Swarm<Behaviour>,
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
    dials: HashMap<ConnectionId, (Multiaddr, oneshot::Sender<Result<PeerId, NetError>>)>,
    dm_out: HashMap<OutboundRequestId, oneshot::Sender<Result<DmResponse, NetError>>>,
    dm_in: HashMap<InboundRequestId, ResponseChannel<DmResponse>>,
    announcement: Option<Announcement>,
    /// Hello requests that arrived before this node had an announcement to answer with.
    early_hellos: Vec<ResponseChannel<Announcement>>,
    heartbeat: Duration,
    max_text: usize,
    directory: TopicHash,
}

/// Starts the actor on the current runtime. Returns its handle, its event stream and the
/// task handle (which ends when `cancel` fires).
pub fn spawn(
    swarm: Swarm<Behaviour>,
    listeners: usize,
    config: &Config,
    cancel: CancellationToken,
) -> (NetHandle, mpsc::Receiver<NetEvent>, tokio::task::JoinHandle<()>) {
    let (tx, commands) = mpsc::channel(COMMAND_QUEUE);
    let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (connected_tx, connected) = watch::channel(Arc::new(BTreeSet::new()));
    let (listening_tx, listening) = watch::channel(Listening::default());
    let local_peer = *swarm.local_peer_id();
    let listeners_expected = listeners;
    let actor = NetActor {
        swarm,
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
        announcement: None,
        early_hellos: Vec::new(),
        heartbeat: config.presence.heartbeat,
        max_text: config.limits.max_message_bytes,
        directory: IdentTopic::new(DIRECTORY_TOPIC).hash(),
    };
    let task = tokio::spawn(actor.run(cancel));
    (
        NetHandle {
            tx,
            connected,
            listening,
            local_peer,
        },
        events_rx,
        task,
    )
}

impl NetActor {
    async fn run(mut self, cancel: CancellationToken) {
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = heartbeat.tick() => self.announce(),
            }
        }
        tracing::debug!("network task stopped");
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
            .filter(|(_, s)| !s.connections.is_empty())
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

    fn dial_known(&mut self, peer: PeerId) {
        if self.foreign.contains(&peer) || self.swarm.is_connected(&peer) || peer == *self.swarm.local_peer_id() {
            return;
        }
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&peer)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        if addrs.is_empty() {
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
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.directory.clone(), payload)
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "announcement not published"),
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => {
                let peer = addr.iter().find_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                });
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
                // An explicit dial goes ahead even if a background dial is under way; the
                // duplicate rule keeps one connection.
                let opts = match peer {
                    Some(p) => DialOpts::peer_id(p)
                        .addresses(vec![addr.clone()])
                        .condition(PeerCondition::Always)
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                let id = opts.connection_id();
                match self.swarm.dial(opts) {
                    Ok(()) => {
                        self.dials.insert(id, (addr, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NetError::Dial {
                            addr: addr.to_string(),
                            why: dial_error_text(&e),
                        }));
                    }
                }
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
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: "not connected".into(),
                    }));
                    return;
                }
                let id = self.swarm.behaviour_mut().dm.send_request(&peer, request);
                self.dm_out.insert(id, reply);
            }
            Command::RespondDm { request, response } => {
                if let Some(ch) = self.dm_in.remove(&request)
                    && self.swarm.behaviour_mut().dm.send_response(ch, response).is_err()
                {
                    tracing::debug!("delivery response not sent: connection gone (sender will retry)");
                }
            }
            Command::Publish { topic, data, reply } => {
                let hash = topic.hash();
                let gs = &mut self.swarm.behaviour_mut().gossipsub;
                let result = match gs.publish(hash.clone(), data) {
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
                if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&topic) {
                    tracing::warn!(topic = %topic, error = %e, "subscribe failed");
                }
            }
            Command::Unsubscribe(topic) => {
                self.swarm.behaviour_mut().gossipsub.unsubscribe(&topic);
            }
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
                        let _ = self.swarm.behaviour_mut().hello.send_response(ch, a.clone());
                    }
                    let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                    for p in connected {
                        self.swarm.behaviour_mut().hello.send_request(&p, a.clone());
                    }
                }
            }
            Command::Info(reply) => {
                let peers = self
                    .peers
                    .iter()
                    .filter(|(_, s)| !s.connections.is_empty() && s.agentmesh)
                    .map(|(p, s)| ConnectedPeer {
                        peer: *p,
                        addrs: s.connections.values().map(|(a, _)| a.clone()).collect(),
                        rtt: s.rtt,
                        agent_version: s.agent_version.clone(),
                    })
                    .collect();
                let _ = reply.send(NetInfo {
                    listen: self.swarm.listeners().cloned().collect(),
                    peers,
                    known_addrs: self
                        .addrs
                        .iter()
                        .map(|(p, l)| (*p, l.iter().cloned().collect()))
                        .collect(),
                });
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                tracing::info!(%address, "listening");
                self.listeners_reported.insert(listener_id);
                self.update_listening();
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.update_listening();
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                tracing::warn!(?reason, "listener closed");
                self.listeners_reported.insert(listener_id);
                self.update_listening();
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
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                if let Some(s) = self.peers.get_mut(&peer_id) {
                    s.connections.remove(&connection_id);
                }
                if num_established == 0 {
                    let was_mesh = self.peers.remove(&peer_id).is_some_and(|s| s.agentmesh);
                    self.publish_connected();
                    if was_mesh || !self.foreign.contains(&peer_id) {
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
                if let Some((addr, reply)) = self.dials.remove(&connection_id) {
                    let _ = reply.send(Err(NetError::Dial {
                        addr: addr.to_string(),
                        why: dial_error_text(&error),
                    }));
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let dialed = endpoint.is_dialer();
        let addr = endpoint.get_remote_address().clone();
        if let Some((_, reply)) = self.dials.remove(&id) {
            let _ = reply.send(Ok(peer));
        }
        if dialed {
            self.remember(peer, addr.clone());
        }
        let me = *self.swarm.local_peer_id();
        let state = self.peers.entry(peer).or_default();
        let first = state.connections.is_empty();
        state.connections.insert(id, (addr.clone(), dialed));

        // Simultaneous dials leave two connections. Both sides keep the one dialed by the
        // smaller PeerId and close the other, so they agree without talking.
        let by_me: Vec<ConnectionId> = state
            .connections
            .iter()
            .filter(|(_, (_, d))| *d)
            .map(|(c, _)| *c)
            .collect();
        let by_them: Vec<ConnectionId> = state
            .connections
            .iter()
            .filter(|(_, (_, d))| !*d)
            .map(|(c, _)| *c)
            .collect();
        if !by_me.is_empty() && !by_them.is_empty() {
            let close = if me < peer { by_them } else { by_me };
            for c in close {
                tracing::debug!(%peer, "closing duplicate connection");
                self.swarm.close_connection(c);
            }
        }
        if first {
            self.publish_connected();
            self.emit(NetEvent::PeerConnected { peer, addr, dialed });
            if let Some(a) = self.announcement.clone() {
                self.swarm.behaviour_mut().hello.send_request(&peer, a);
            }
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                if info.protocol_version != wire::IDENTIFY_PROTOCOL_VERSION {
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
                    let newly = !s.agentmesh;
                    s.agentmesh = true;
                    s.agent_version = Some(info.agent_version.clone());
                    let _ = newly;
                }
                // Keep what can be dialed from here: loopback only if the peer is on this
                // machine, never link-local IPv6 (it needs a zone we do not know).
                let local = self
                    .peers
                    .get(&peer_id)
                    .is_some_and(|s| s.connections.values().any(|(a, _)| is_loopback(a)));
                let listen: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .map(strip_p2p)
                    .filter(|a| (local || !is_loopback(a)) && !is_link_local_v6(a))
                    .collect();
                for a in listen.iter().take(MAX_ADDRS_PER_PEER) {
                    self.remember(peer_id, a.clone());
                }
                self.emit(NetEvent::PeerIdentified {
                    peer: peer_id,
                    listen_addrs: listen,
                });
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
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Dm(e) => self.on_dm(e),
            BehaviourEvent::Hello(e) => self.on_hello(e),
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let verdict = self.check_gossip(&message);
                let acceptance = if verdict.is_some() {
                    MessageAcceptance::Accept
                } else {
                    MessageAcceptance::Reject
                };
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                    &message_id,
                    &propagation_source,
                    acceptance,
                );
                if let Some(ev) = verdict {
                    self.emit(ev);
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(t) = wire::user_topic(&topic) {
                    self.emit(NetEvent::TopicSubscribed {
                        peer: peer_id,
                        topic: t,
                    });
                }
            }
            _ => {}
        }
    }

    /// Decodes and checks a gossip message; `None` means reject.
    fn check_gossip(&self, message: &gossipsub::Message) -> Option<NetEvent> {
        let source = message.source?;
        if message.topic == self.directory {
            let DirectoryGossip::Announce(a) = postcard::from_bytes::<DirectoryGossip>(&message.data).ok()?;
            if let Err(why) = a.check() {
                tracing::debug!(%source, %why, "rejecting announcement");
                return None;
            }
            return Some(NetEvent::Announcement {
                peer: source,
                announcement: a,
            });
        }
        let topic = wire::user_topic(&message.topic)?;
        let envelope: TopicEnvelope = postcard::from_bytes(&message.data).ok()?;
        if envelope.topic != topic || envelope.text.len() > self.max_text || envelope.text.trim().is_empty() {
            tracing::debug!(%source, "rejecting malformed topic message");
            return None;
        }
        Some(NetEvent::Topic { source, envelope })
    }

    fn on_dm(&mut self, event: request_response::Event<DmRequest, DmResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request: DmRequest::Deliver(messages),
                    channel,
                } => {
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
                                .send_response(ch, DmResponse::Unavailable("recipient node is busy".into()));
                        }
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.dm_out.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.dm_out.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
                self.dm_in.remove(&request_id);
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_hello(&mut self, event: request_response::Event<Announcement, Announcement>) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let theirs = match message {
                    request_response::Message::Request { request, channel, .. } => {
                        match self.announcement.clone() {
                            Some(mine) => {
                                let _ = self.swarm.behaviour_mut().hello.send_response(channel, mine);
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
                // A duplicate connection closing under it is the usual cause; try once more
                // on the surviving connection.
                if matches!(error, request_response::OutboundFailure::ConnectionClosed)
                    && self.swarm.is_connected(&peer)
                    && let Some(a) = self.announcement.clone()
                {
                    self.swarm.behaviour_mut().hello.send_request(&peer, a);
                }
            }
            _ => {}
        }
    }
}

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        _ => Path::Internet,
    }
}

fn is_loopback(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn is_link_local_v6(a: &Multiaddr) -> bool {
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
