//! The node service: what the local API can ask of a node, and the core loop that reacts to
//! the network.
//!
//! [`Node`] is a cheap handle (an `Arc`) shared by the API connections, the core loop and
//! the courier. Its state is the store (durable), the directory and the sessions (memory,
//! behind short mutexes never held across an await), and handles to the network actor and
//! the courier.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{
    AgentSpec, AgentView, ApiError, ErrorCode, Event, HistoryPage, HistoryView, InboxPage, InviteView, JoinView,
    MemberView, MembersView, MeshView, MessageView, NodeIdentity, OutboxView, PeerView, PublishReceipt, Reception,
    RemovedView, SendReceipt, SendStatus, StatusView, TopicView,
    page::{PageBudget, PageFill},
};
use crate::config::Config;
use crate::directory::{Directory, Target, Update};
use crate::home::Home;
use crate::ids::{Address, AgentName, MessageId, NodeName, TopicName, now_ms};
use crate::mesh::{Invite, InviteBody, Membership, Voucher};
use crate::net::{AGENT_VERSION, NetEvent, NetHandle};
use crate::ratelimit::RateLimiter;
use crate::store::{
    self, AgentRecord, Channel, InboxEntry, InviteRecord, InviteUse, OutState, OutboxEntry, ReadState, Store, ops,
};
use crate::wire::{self, AgentInfo, Announcement, DmResponse, JoinRefusal, JoinResponse, TopicEnvelope, WireMessage};

/// Capacity of the event broadcast to API watchers.
pub const EVENT_BROADCAST: usize = 4096;
/// Inbound deliveries and topic messages being committed at once.
pub const MAX_INBOUND_IN_FLIGHT: usize = 256;
/// Kicks queued for the courier.
pub const COURIER_QUEUE: usize = 1024;
/// Topic catch-up requests from peers answered at once (more are told to ask again).
pub const MAX_SYNC_SERVING: usize = 8;
/// Longest `history` / `inbox` / `outbox` answer.
pub const MAX_LIST: u32 = 10_000;
/// Suffixes tried when a session's derived name is taken (`name-2` ... `name-99`).
pub const MAX_NAME_SUFFIX: u32 = 99;
/// Longest wait for a dial.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest wait, after a dial, for the node's announcement.
pub const ANNOUNCE_WAIT: Duration = Duration::from_secs(5);
/// Known peers redialed at start (most recently seen first).
pub const REDIAL_AT_START: usize = 64;
/// Longest validity of a join code.
pub const MAX_INVITE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most joins one code may allow.
pub const MAX_INVITE_USES: u32 = 100;
/// Longest wait, after a dial, for the peer's membership verdict.
pub const ADMIT_WAIT: Duration = Duration::from_secs(12);

/// The live holds on a local agent: attached MCP/API sessions (some receiving pushes), and
/// wakers (a hook or plugin blocked on its mail, ready to wake the client).
#[derive(Default)]
struct Session {
    attached: u32,
    push: u32,
    wakers: u32,
    /// Bumped by every new waker; the newest one acts.
    waker_generation: u64,
    pid: Option<u32>,
}

/// What a node is built from.
pub(crate) struct Parts {
    pub peer_id: PeerId,
    pub keypair: libp2p::identity::Keypair,
    pub mesh: Membership,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub name: NodeName,
    pub home: Home,
    pub config: Config,
    pub store: Store,
    pub net: NetHandle,
    pub courier: mpsc::Sender<PeerId>,
    pub sync: mpsc::Sender<PeerId>,
    pub shutdown: CancellationToken,
}

pub(crate) struct Inner {
    owner_uid: u32,
    pub peer_id: PeerId,
    keypair: libp2p::identity::Keypair,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The membership as last persisted (the network actor holds the live copy).
    mesh: Mutex<Membership>,
    /// One join, leave or removal at a time.
    mesh_ops: tokio::sync::Mutex<()>,
    send_rate: Mutex<RateLimiter<AgentName>>,
    peer_rate: Mutex<RateLimiter<PeerId>>,
    pub name: NodeName,
    pub home: Home,
    pub config: Config,
    pub store: Store,
    pub net: NetHandle,
    pub directory: Mutex<Directory>,
    sessions: Mutex<HashMap<AgentName, Session>>,
    claim_lock: tokio::sync::Mutex<()>,
    pub events: broadcast::Sender<Event>,
    pub courier: mpsc::Sender<PeerId>,
    /// Kicks for topic catch-up with a peer.
    sync: mpsc::Sender<PeerId>,
    /// Catch-up requests being answered at once.
    sync_serving: Arc<Semaphore>,
    announce: Notify,
    inbound: Arc<Semaphore>,
    started: Instant,
    pub shutdown: CancellationToken,
}

/// Handle to the node service. Cheap to clone.
#[derive(Clone)]
pub struct Node(pub(crate) Arc<Inner>);

/// What a [`SessionGuard`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hold {
    /// An attached session (receiving pushes or not).
    Session { push: bool },
    /// A waker: a hook or plugin that wakes the agent's client when mail arrives.
    Waker,
}

/// Keeps an agent online while alive (one per attached API connection, and one per waker).
pub struct SessionGuard {
    node: Node,
    agent: AgentName,
    hold: Hold,
}

impl Session {
    /// How the agent receives now: pushed into a session, woken by a waker, or read when an
    /// attached session next looks.
    fn reception(&self) -> Reception {
        if self.push > 0 {
            Reception::Push
        } else if self.wakers > 0 {
            Reception::Woken
        } else {
            Reception::Poll
        }
    }

    fn delivery(&self) -> wire::Delivery {
        match self.reception() {
            Reception::Push => wire::Delivery::Push,
            Reception::Woken => wire::Delivery::Woken,
            Reception::Poll | Reception::Offline => wire::Delivery::Poll,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.node.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(&self.agent) {
            match self.hold {
                Hold::Session { push } => {
                    s.attached = s.attached.saturating_sub(1);
                    if push {
                        s.push = s.push.saturating_sub(1);
                    }
                }
                Hold::Waker => s.wakers = s.wakers.saturating_sub(1),
            }
            if s.attached == 0 && s.wakers == 0 {
                sessions.remove(&self.agent);
            }
        }
        drop(sessions);
        // Record when it was last seen, then re-announce (both off this thread).
        let node = self.node.clone();
        let agent = self.agent.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let now = now_ms();
                let _ = node
                    .0
                    .store
                    .write("agent seen", move |t| ops::ensure_agent(t, &agent, "other", now))
                    .await;
                node.0.announce.notify_one();
            });
        }
    }
}

fn bad_len(what: &str, len: usize, max: usize, setting: &str) -> ApiError {
    ApiError::new(
        ErrorCode::TooLarge,
        format!("{what} is {len} bytes; the limit is {max} bytes ({setting} in config.toml)"),
    )
}

impl Node {
    pub(crate) fn new(parts: Parts) -> Self {
        let Parts {
            peer_id,
            keypair,
            mesh,
            metrics,
            name,
            home,
            config,
            store,
            net,
            courier,
            sync,
            shutdown,
        } = parts;
        let (events, _) = broadcast::channel(EVENT_BROADCAST);
        let owner_uid = std::fs::metadata(home.path()).map(|m| m.uid()).unwrap_or(0);
        let send_rate = RateLimiter::per_minute(config.limits.agent_sends_per_minute);
        let peer_rate = RateLimiter::per_minute(config.limits.peer_messages_per_minute);
        Node(Arc::new(Inner {
            owner_uid,
            peer_id,
            keypair,
            metrics,
            mesh: Mutex::new(mesh),
            mesh_ops: tokio::sync::Mutex::new(()),
            send_rate: Mutex::new(send_rate),
            peer_rate: Mutex::new(peer_rate),
            name,
            home,
            config,
            store,
            net,
            directory: Mutex::new(Directory::new(peer_id)),
            sessions: Mutex::new(HashMap::new()),
            claim_lock: tokio::sync::Mutex::new(()),
            events,
            courier,
            sync,
            sync_serving: Arc::new(Semaphore::new(MAX_SYNC_SERVING)),
            announce: Notify::new(),
            inbound: Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT)),
            started: Instant::now(),
            shutdown,
        }))
    }

    /// This node's identity.
    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity {
            peer_id: self.0.peer_id,
            name: self.0.name.to_string(),
            version: AGENT_VERSION.to_string(),
        }
    }

    /// The user owning this node's home; only they (and root) may use the local API.
    pub fn owner_uid(&self) -> u32 {
        self.0.owner_uid
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.0.metrics
    }

    /// Sets the metrics' state gauges (queue depths, peers by path) before a scrape.
    pub async fn refresh_metrics(&self) {
        use crate::metrics::{PathLabel, StateLabel};
        let m = &self.0.metrics;
        if let Ok(st) = self.0.store.read(ops::stats).await {
            let set = |f: &prometheus_client::metrics::family::Family<
                StateLabel,
                prometheus_client::metrics::gauge::Gauge,
            >,
                       state: &'static str,
                       v: u64| {
                f.get_or_create(&StateLabel { state }).set(v as i64);
            };
            set(&m.outbox, "pending", st.pending);
            set(&m.outbox, "settled", st.outbox.saturating_sub(st.pending));
            set(&m.outbox, "topic_pending", st.topic_pending);
            set(&m.inbox, "unread", st.unread);
            set(&m.inbox, "read", st.inbox.saturating_sub(st.unread));
            m.topic_messages.set(st.topic_messages as i64);
        }
        if let Ok(info) = self.0.net.info().await {
            let mut paths = [0i64; 3];
            for p in &info.peers {
                let best = p.addrs.iter().map(crate::net::path_of).min_by_key(|x| *x as u8);
                match best {
                    Some(crate::net::Path::Lan) => paths[0] += 1,
                    Some(crate::net::Path::Internet) => paths[1] += 1,
                    Some(crate::net::Path::Relayed) => paths[2] += 1,
                    None => {}
                }
            }
            for (path, n) in ["lan", "internet", "relayed"].into_iter().zip(paths) {
                m.peers.get_or_create(&PathLabel { path }).set(n);
            }
            m.outsiders.set(info.outsiders.len() as i64);
        }
        let online = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner()).len();
        m.agents_online.set(online as i64);
        let (commands, events) = self.0.net.queue_depths();
        let depth = |c: &mpsc::Sender<PeerId>| (c.max_capacity() - c.capacity()) as i64;
        let inbound = MAX_INBOUND_IN_FLIGHT.saturating_sub(self.0.inbound.available_permits());
        for (queue, n) in [
            ("net_commands", commands as i64),
            ("net_events", events as i64),
            ("store_writes", self.0.store.queue_depth() as i64),
            ("courier_kicks", depth(&self.0.courier)),
            ("sync_kicks", depth(&self.0.sync)),
            ("events", self.0.events.len() as i64),
            ("inbound_in_flight", inbound as i64),
        ] {
            m.queue_depth
                .get_or_create(&crate::metrics::QueueLabel { queue })
                .set(n);
        }
        m.tasks_alive
            .set(tokio::runtime::Handle::current().metrics().num_alive_tasks() as i64);
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.0.config
    }

    /// Subscribes to node events.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.0.events.subscribe()
    }

    /// Asks the daemon to stop.
    pub fn request_shutdown(&self) {
        self.0.shutdown.cancel();
    }

    fn dir(&self) -> std::sync::MutexGuard<'_, Directory> {
        self.0.directory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mesh(&self) -> std::sync::MutexGuard<'_, Membership> {
        self.0.mesh.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one send from `agent`'s allowance.
    /// The send allowance, not charged for a request naming a message that exists already:
    /// a repeat (answered with the first receipt) or an id taken (refused) sends nothing.
    fn check_send_rate_unless_known(&self, agent: &AgentName, id: Option<MessageId>) -> Result<(), ApiError> {
        if let Some(id) = id
            && self.0.store.read_now(move |r| ops::id_known(r, &id))?
        {
            return Ok(());
        }
        self.check_send_rate(agent)
    }

    fn check_send_rate(&self, agent: &AgentName) -> Result<(), ApiError> {
        let mut r = self.0.send_rate.lock().unwrap_or_else(|e| e.into_inner());
        r.take(agent, 1, Instant::now()).map_err(|wait| {
            ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "agent {agent} is sending faster than allowed ({} messages a minute, limits.agent_sends_per_minute in config.toml); try again in {:.1} s",
                    self.0.config.limits.agent_sends_per_minute,
                    wait.as_secs_f64().max(0.1)
                ),
            )
        })
    }

    fn kick(&self, peer: PeerId) {
        // A full queue means the courier is already busy with many kicks; it rescans.
        let _ = self.0.courier.try_send(peer);
    }

    fn emit(&self, e: Event) {
        let _ = self.0.events.send(e);
    }

    /// How a node is labelled in what users and agents read: see [`Directory::label`].
    fn node_label(&self, peer: &PeerId, known: Option<&NodeName>) -> String {
        self.dir().label(peer, known, &self.0.name)
    }

    pub(crate) fn message_view(&self, e: &InboxEntry) -> MessageView {
        let node_name = e.from.node_name.clone().or_else(|| {
            if e.from.node == self.0.peer_id {
                Some(self.0.name.clone())
            } else {
                self.dir().name_of(&e.from.node)
            }
        });
        let label = self.node_label(&e.from.node, node_name.as_ref());
        MessageView {
            id: e.id,
            agent: e.agent.to_string(),
            from: format!("{}@{label}", e.from.agent),
            from_agent: e.from.agent.to_string(),
            from_node: e.from.node,
            from_node_name: node_name.map(|n| n.to_string()),
            topic: match &e.channel {
                Channel::Direct => None,
                Channel::Topic(t) => Some(t.to_string()),
            },
            text: e.text.clone(),
            sent_at_ms: e.sent_at_ms,
            received_at_ms: e.received_at_ms,
            reply_to: e.reply_to,
            state: match e.state {
                ReadState::New => "new",
                ReadState::Notified => "notified",
                ReadState::Read => "read",
            }
            .to_string(),
        }
    }

    fn outbox_to(&self, e: &OutboxEntry) -> String {
        format!("{}@{}", e.msg.to, self.node_label(&e.to_node, e.to_node_name.as_ref()))
    }

    fn local_reception(&self, agent: &AgentName) -> Reception {
        let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(agent).map_or(Reception::Offline, Session::reception)
    }

    // ------------------------------------------------------------------ announcements

    /// A command created a local agent on the fly: tell the mesh.
    fn agent_created(&self, created: bool) {
        if created {
            self.0.announce.notify_one();
        }
    }

    pub(crate) async fn build_announcement(&self) -> Result<Announcement, ApiError> {
        let agents = self.0.store.read(ops::agents).await?;
        let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let agents = agents
            .into_iter()
            .take(wire::MAX_AGENTS_PER_NODE)
            .map(|r| {
                let s = sessions.get(&r.name);
                AgentInfo {
                    online: s.is_some(),
                    delivery: s.map(Session::delivery).unwrap_or_default(),
                    name: r.name,
                    kind: r.kind,
                    cwd: r.cwd.filter(|c| c.len() <= wire::MAX_PATH_BYTES),
                    repo: r.repo.filter(|c| c.len() <= wire::MAX_PATH_BYTES),
                    summary: r.summary,
                    last_seen_ms: if s.is_some() { now_ms() } else { r.last_seen_ms },
                }
            })
            .collect();
        Ok(Announcement {
            node_name: self.0.name.clone(),
            version: AGENT_VERSION.to_string(),
            seq: now_ms(),
            heartbeat_ms: self.0.config.presence.heartbeat.as_millis() as u64,
            agents,
        })
    }

    async fn announce_now(&self) {
        match self.build_announcement().await {
            Ok(a) => {
                let _ = self.0.net.set_announcement(a).await;
                // Watchers on this node hear of its own agents' changes too.
                self.emit(Event::NodeUpdated {
                    peer: self.0.peer_id,
                    name: self.0.name.to_string(),
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot build announcement"),
        }
    }

    // ------------------------------------------------------------------ API verbs

    /// `mesh status`.
    pub async fn status(&self) -> Result<StatusView, ApiError> {
        let info = self.0.net.info().await.map_err(unavailable)?;
        let mut stats = self.0.store.read(ops::stats).await?;
        stats.file_bytes = std::fs::metadata(self.0.store.path()).map(|m| m.len()).unwrap_or(0);
        let agents = self.agents().await?.into_iter().filter(|a| a.local).collect();
        let topics = self
            .topics()
            .await?
            .into_iter()
            .filter(|t| !t.subscribers.is_empty())
            .collect();
        let known = self.dir().nodes().count() as u32;
        let mut paths = [0u32; 3];
        for p in &info.peers {
            // A peer counts by its best connection: direct LAN, then internet, then relay.
            let best = p.addrs.iter().map(crate::net::path_of).min_by_key(|x| match x {
                crate::net::Path::Lan => 0,
                crate::net::Path::Internet => 1,
                crate::net::Path::Relayed => 2,
            });
            match best {
                Some(crate::net::Path::Lan) => paths[0] += 1,
                Some(crate::net::Path::Internet) => paths[1] += 1,
                Some(crate::net::Path::Relayed) => paths[2] += 1,
                None => {}
            }
        }
        Ok(StatusView {
            node: self.identity(),
            home: self.0.home.path().display().to_string(),
            listen: info.listen,
            mdns: self.0.config.mdns,
            connected: info.peers.len() as u32,
            connected_lan: paths[0],
            connected_internet: paths[1],
            connected_relayed: paths[2],
            known,
            agents,
            topics,
            store: stats,
            uptime_s: self.0.started.elapsed().as_secs(),
            remembered: info.pinned.len() as u32,
            reach: info.reach,
            mesh: self.mesh_view().await?,
            outsiders: info.outsiders.len() as u32,
        })
    }

    /// `mesh peers`.
    pub async fn peers(&self) -> Result<Vec<PeerView>, ApiError> {
        let info = self.0.net.info().await.map_err(unavailable)?;
        let members: std::collections::HashSet<PeerId> = self
            .0
            .store
            .read(ops::members)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let now = Instant::now();
        let dir = self.dir();
        let outsider = |p: &PeerId| info.outsiders.iter().any(|o| o.peer == *p);
        let mut out: Vec<PeerView> = dir
            .nodes()
            .filter(|(p, _)| !outsider(p))
            .map(|(p, e)| {
                let conn = info.peers.iter().find(|c| c.peer == *p);
                let mut addrs = e.addrs.clone();
                if let Some((_, known)) = info.known_addrs.iter().find(|(k, _)| k == p) {
                    for a in known {
                        if !addrs.contains(a) {
                            addrs.push(a.clone());
                        }
                    }
                }
                PeerView {
                    peer_id: *p,
                    name: e.announcement.as_ref().map(|a| a.node_name.to_string()),
                    addrs,
                    connected: conn.is_some(),
                    online: dir.online(p, now),
                    rtt_us: conn.and_then(|c| c.rtt).map(|d| d.as_micros() as u64),
                    version: conn
                        .and_then(|c| c.agent_version.clone())
                        .or_else(|| e.announcement.as_ref().map(|a| a.version.clone())),
                    agents: e.announcement.as_ref().map(|a| a.agents.len() as u32).unwrap_or(0),
                    last_seen_ms: (e.last_seen_ms > 0).then_some(e.last_seen_ms),
                    connections: conn.map(|c| c.connections.clone()).unwrap_or_default(),
                    remembered: info.pinned.contains(p),
                    // Known from an earlier mesh of this node (before a join or leave)?
                    member: conn.is_some() || members.contains(p),
                    refused: (conn.is_none() && !members.contains(p))
                        .then(|| "not known as a member of this node's current mesh".to_string()),
                }
            })
            .collect();
        drop(dir);
        out.sort_by(|a, b| (b.connected, &a.name, a.peer_id).cmp(&(a.connected, &b.name, b.peer_id)));
        // Nodes nearby that are not members, so users see who is around (and can invite).
        for o in &info.outsiders {
            out.push(PeerView {
                peer_id: o.peer,
                name: o.claimed_name.as_deref().map(crate::ids::sanitize_text),
                addrs: o.addrs.clone(),
                connected: o.connected,
                online: false,
                rtt_us: None,
                version: None,
                agents: 0,
                last_seen_ms: Some(o.last_seen_ms),
                connections: Vec::new(),
                remembered: info.pinned.contains(&o.peer),
                member: false,
                refused: Some(o.reason.clone()),
            });
        }
        Ok(out)
    }

    /// `mesh agents`: local agents first, then every announced remote agent.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ApiError> {
        let locals = self.0.store.read(ops::agents).await?;
        let mut out = Vec::new();
        for r in locals {
            out.push(self.local_view(&r).await?);
        }
        let now = Instant::now();
        let dir = self.dir();
        let mut remote: Vec<AgentView> = dir
            .nodes()
            .filter_map(|(p, e)| e.announcement.as_ref().map(|a| (p, a)))
            .flat_map(|(p, a)| {
                let dir = &dir;
                let label = dir.label(p, Some(&a.node_name), &self.0.name);
                a.agents.iter().map(move |ag| AgentView {
                    address: format!("{}@{label}", ag.name),
                    name: ag.name.to_string(),
                    node_name: a.node_name.to_string(),
                    node: *p,
                    local: false,
                    kind: ag.kind.clone(),
                    cwd: ag.cwd.clone(),
                    repo: ag.repo.clone(),
                    summary: ag.summary.clone(),
                    reception: dir.reception(p, ag, now),
                    last_seen_ms: ag.last_seen_ms,
                    unread: None,
                    pid: None,
                })
            })
            .collect();
        remote.sort_by(|a, b| (&a.node_name, &a.name).cmp(&(&b.node_name, &b.name)));
        out.extend(remote);
        Ok(out)
    }

    /// `mesh dial`.
    pub async fn dial(&self, addr: &str) -> Result<PeerId, ApiError> {
        let ma = crate::net::parse_multiaddr(addr).map_err(ApiError::bad)?;
        let mut events = self.0.events.subscribe();
        let dial = self.0.net.dial(ma.clone());
        let peer = tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::Unavailable,
                    format!("dialing {ma} timed out after {} s", DIAL_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
        // Connected is not enough: it must prove it belongs to this mesh.
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        let mut watch = self.0.net.connected();
        loop {
            if watch.borrow_and_update().contains(&peer) {
                break;
            }
            let info = self.0.net.info().await.map_err(unavailable)?;
            if let Some(o) = info.outsiders.into_iter().find(|o| o.peer == peer) {
                return Err(ApiError::new(
                    ErrorCode::Denied,
                    format!(
                        "reached {peer}, but it is not a member of this mesh ({}). To bring it in, run `mesh invite` here and `mesh join <code>` there",
                        o.reason
                    ),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    format!("connected to {peer}, but it did not prove membership in time"),
                ));
            }
            // Woken by an admission, or look again for a refusal shortly.
            let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        }
        // Return once the node's agents are known, so an address can be used at once.
        let known = self.dir().get(&peer).is_some_and(|e| e.heard_at.is_some());
        if !known {
            let wait = async {
                loop {
                    match events.recv().await {
                        Ok(Event::NodeUpdated { peer: p, .. }) if p == peer => break,
                        Err(broadcast::error::RecvError::Closed) => break,
                        _ => {}
                    }
                }
            };
            if tokio::time::timeout(ANNOUNCE_WAIT, wait).await.is_err() {
                tracing::info!(%peer, "connected, but the node has not announced its agents yet");
            }
        }
        // Remember it: kept connected, redialed after restarts and network loss.
        let rec = {
            let mut dir = self.dir();
            dir.add_addrs(peer, std::slice::from_ref(&ma));
            dir.record(&peer)
        };
        let dialed = crate::net::strip_p2p(ma);
        self.0
            .store
            .write("dial", move |t| {
                if let Some(rec) = rec {
                    ops::put_peer(t, &rec)?;
                }
                ops::put_dialed(t, &peer, &dialed)
            })
            .await?;
        let _ = self.0.net.pin(peer).await;
        Ok(peer)
    }

    /// The node a user means: a PeerId, an address ending in `/p2p/<id>`, a node name or a
    /// label `name~suffix` (see [`Directory::node`]).
    fn resolve_node(&self, text: &str) -> Result<PeerId, ApiError> {
        let t = text.trim();
        if let Ok(p) = t.parse::<PeerId>() {
            return Ok(p);
        }
        if t.starts_with('/') {
            let ma = crate::net::parse_multiaddr(t).map_err(ApiError::bad)?;
            return match ma.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(p)) => Ok(p),
                _ => Err(ApiError::bad(format!("{t} does not end with /p2p/<PeerId>"))),
            };
        }
        self.dir().node(&t.parse()?, &self.0.name)
    }

    /// `peer`, unless it is this node: then an error saying so (and `advice`), with the
    /// labels of the other nodes named like this one, which the user may have meant.
    fn other_node(&self, peer: PeerId, advice: &str) -> Result<PeerId, ApiError> {
        if peer != self.0.peer_id {
            return Ok(peer);
        }
        let mut message = format!("that is this node{advice}");
        let dir = self.dir();
        let namesakes: Vec<String> = dir
            .named(&self.0.name)
            .iter()
            .map(|p| dir.label(p, None, &self.0.name))
            .collect();
        if !namesakes.is_empty() {
            message.push_str(&format!(
                "; other nodes named {:?}: {}",
                self.0.name.as_str(),
                namesakes.join(", ")
            ));
        }
        Err(ApiError::bad(message))
    }

    /// `mesh dial --forget`.
    pub async fn forget(&self, node: &str) -> Result<(PeerId, bool), ApiError> {
        let peer = self.other_node(self.resolve_node(node)?, "")?;
        let was_stored = self
            .0
            .store
            .write("forget", move |t| ops::remove_dialed(t, &peer))
            .await?;
        let was_pinned = self.0.net.unpin(peer).await.map_err(unavailable)?;
        Ok((peer, was_stored || was_pinned))
    }

    /// `mesh ping`: one round trip, and the connection it used.
    pub async fn ping(&self, node: &str) -> Result<(PeerId, Duration, crate::net::ConnectionView), ApiError> {
        let peer = self.other_node(self.resolve_node(node)?, "")?;
        if !self.0.net.is_connected(&peer) {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("node {node} is not connected (mesh dial it, or wait for discovery)"),
            ));
        }
        let (rtt, conn) = tokio::time::timeout(DIAL_TIMEOUT, self.0.net.ping(peer))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "no answer within 20 s"))?
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
        Ok((peer, rtt, conn))
    }

    /// `mesh addr`: what someone else can dial.
    pub async fn addrs(&self) -> Result<crate::api::AddrsView, ApiError> {
        use crate::net::{Path, path_of};
        let info = self.0.net.info().await.map_err(unavailable)?;
        let me = self.0.peer_id;
        let full = |a: &libp2p::Multiaddr| format!("{a}/p2p/{me}");
        let mut view = crate::api::AddrsView {
            peer_id: me,
            public: Vec::new(),
            relayed: Vec::new(),
            lan: Vec::new(),
            unconfirmed: Vec::new(),
        };
        for a in &info.reach.external {
            match path_of(a) {
                Path::Relayed => {}
                _ => view.public.push(full(a)),
            }
        }
        for r in &info.reach.reservations {
            if let (true, Some(a)) = (r.accepted, &r.addr) {
                view.relayed.push(full(&crate::net::strip_p2p(a.clone())));
            }
        }
        for a in &info.listen {
            if crate::net::is_loopback(a) || crate::net::is_link_local_v6(a) {
                continue;
            }
            match path_of(a) {
                Path::Lan => view.lan.push(full(a)),
                Path::Internet if !info.reach.external.contains(a) => view.unconfirmed.push(full(a)),
                _ => {}
            }
        }
        Ok(view)
    }

    // ------------------------------------------------------------------ membership

    async fn mesh_view(&self) -> Result<MeshView, ApiError> {
        let members = self.0.store.read(ops::members).await?;
        let m = self.mesh().clone();
        let me = self.0.peer_id;
        Ok(MeshView {
            id: m.id().short(),
            open: m.is_open(),
            epoch: m.current().number,
            members: 1 + members.iter().filter(|(p, _)| *p != me).count() as u32,
            removed: m.revoked().len() as u32,
            relay_for_anyone: self.0.config.relay.serve && self.0.config.relay.for_anyone,
        })
    }

    fn refuse_in_open_mode(&self, what: &str) -> Result<(), ApiError> {
        if self.mesh().is_open() {
            return Err(ApiError::bad(format!(
                "this node runs in open mode (--open), where every open node is admitted without a secret; {what} is for closed meshes. Restart without --open to use it"
            )));
        }
        Ok(())
    }

    /// `mesh invite`: a signed, expiring join code for this node's mesh.
    pub async fn invite(&self, ttl_s: u64, uses: u32) -> Result<InviteView, ApiError> {
        self.refuse_in_open_mode("mesh invite")?;
        let ttl = Duration::from_secs(ttl_s);
        if ttl < Duration::from_secs(1) || ttl > MAX_INVITE_TTL {
            return Err(ApiError::bad("--ttl must be between 1 second and 30 days"));
        }
        if uses == 0 || uses > MAX_INVITE_USES {
            return Err(ApiError::bad(format!("--uses must be between 1 and {MAX_INVITE_USES}")));
        }
        let view = self.addrs().await?;
        let info = self.0.net.info().await.map_err(unavailable)?;
        let loopback: Vec<String> = info
            .listen
            .iter()
            .filter(|a| crate::net::is_loopback(a))
            .map(|a| format!("{a}/p2p/{}", self.0.peer_id))
            .collect();
        let mut addrs: Vec<libp2p::Multiaddr> = view
            .public
            .iter()
            .chain(&view.relayed)
            .chain(&view.lan)
            .chain(&view.unconfirmed)
            .chain(&loopback)
            .filter_map(|a| a.parse().ok())
            .collect();
        addrs.dedup();
        addrs.truncate(crate::mesh::MAX_INVITE_ADDRS);
        if addrs.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                "this node has no address another node could dial (see mesh status)",
            ));
        }
        let mut token = [0u8; 16];
        rand::fill(&mut token[..]);
        let now = now_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        let rec = InviteRecord {
            expires_ms,
            uses_left: uses,
            created_ms: now,
        };
        self.0
            .store
            .write("invite", move |t| ops::put_invite(t, &token, &rec))
            .await?;
        let mesh = self.mesh().id();
        let body = InviteBody {
            mesh_id: mesh,
            inviter: self.0.peer_id,
            inviter_name: self.0.name.to_string(),
            addrs: addrs.clone(),
            token,
            expires_ms,
        };
        let invite = Invite::sign(body, &self.0.keypair).map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
        Ok(InviteView {
            code: invite.encode(),
            mesh: mesh.short(),
            expires_ms,
            uses,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
        })
    }

    /// `mesh join`: trade a join code for membership of the inviter's mesh.
    pub async fn join(&self, code: &str) -> Result<JoinView, ApiError> {
        self.refuse_in_open_mode("mesh join")?;
        let _one = self.0.mesh_ops.lock().await;
        let invite = Invite::decode(code).map_err(|e| ApiError::bad(e.to_string()))?;
        let now = now_ms();
        if invite.body.expires_ms <= now {
            return Err(ApiError::new(
                ErrorCode::Denied,
                format!(
                    "this join code expired {} ago; ask for a new one (mesh invite)",
                    crate::ids::human_duration(Duration::from_millis(now - invite.body.expires_ms))
                ),
            ));
        }
        let old = self.mesh().clone();
        if invite.body.mesh_id == old.id() {
            return Err(ApiError::bad(format!(
                "this node is already a member of mesh {}",
                old.id().short()
            )));
        }
        if invite.body.inviter == self.0.peer_id {
            return Err(ApiError::bad("this join code was made by this node"));
        }
        let inviter = invite.body.inviter;
        let inviter_name = crate::ids::sanitize_text(&invite.body.inviter_name);
        let addrs = invite.body.addrs.clone();
        let wait = crate::net::ADMIT_TIMEOUT * 3 + Duration::from_secs(5);
        let (grant, voucher) = tokio::time::timeout(wait, self.0.net.join(invite.clone()))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Unavailable, "the join did not finish in time"))?
            .map_err(|e| match e {
                crate::net::NetError::Request { why, .. } => {
                    ApiError::new(ErrorCode::Denied, format!("join refused: {why}"))
                }
                crate::net::NetError::Dial { why, .. } => ApiError::new(
                    ErrorCode::Unavailable,
                    format!("cannot reach the inviting node {inviter_name}: {why}"),
                ),
                other => unavailable(other),
            })?;
        if grant.mesh_id != invite.body.mesh_id {
            return Err(ApiError::new(
                ErrorCode::Denied,
                "the inviting node answered with another mesh than its code names; not joining",
            ));
        }
        if voucher.inviter != inviter || !voucher.verify(&grant.mesh_id, &self.0.peer_id) {
            return Err(ApiError::new(
                ErrorCode::Denied,
                "the inviting node's voucher for this node does not check out; not joining",
            ));
        }
        let mut mesh = Membership::from_grant(grant, Some(voucher)).map_err(|e| {
            ApiError::new(
                ErrorCode::Denied,
                format!("the inviting node sent a malformed key: {e}"),
            )
        })?;
        mesh.add_member(self.0.peer_id);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ApiError::new(ErrorCode::Storage, e.to_string()))?;
        let name = Some(inviter_name.clone());
        self.0
            .store
            .write("join", move |t| {
                ops::reset_mesh(t)?;
                ops::put_member(t, &inviter, name, now)?;
                for a in addrs.iter().rev() {
                    ops::put_dialed(t, &inviter, &crate::net::strip_p2p(a.clone()))?;
                }
                Ok(())
            })
            .await?;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, true).await.map_err(unavailable)?;
        let _ = self.0.net.pin(inviter).await;
        tracing::info!(mesh = %invite.body.mesh_id.short(), left = %old.id().short(), "joined a mesh");
        Ok(JoinView {
            mesh: self.mesh_view().await?,
            inviter,
            inviter_name,
            left: old.id().short(),
        })
    }

    /// `mesh members`.
    pub async fn members(&self) -> Result<MembersView, ApiError> {
        let records = self.0.store.read(ops::members).await?;
        let connected = self.0.net.connected().borrow().clone();
        let me = self.0.peer_id;
        let mut members = vec![MemberView {
            peer_id: me,
            name: Some(self.0.name.to_string()),
            this_node: true,
            connected: true,
            since_ms: None,
            last_seen_ms: None,
        }];
        let mut others: Vec<MemberView> = {
            let dir = self.dir();
            records
                .into_iter()
                .filter(|(p, _)| *p != me)
                .map(|(p, r)| MemberView {
                    peer_id: p,
                    name: dir.name_of(&p).map(|n| n.to_string()).or(r.name),
                    this_node: false,
                    connected: connected.contains(&p),
                    since_ms: Some(r.since_ms),
                    last_seen_ms: Some(r.last_seen_ms),
                })
                .collect()
        };
        others.sort_by(|a, b| (b.connected, &a.name).cmp(&(a.connected, &b.name)));
        members.extend(others);
        Ok(MembersView {
            mesh: self.mesh_view().await?,
            members,
        })
    }

    /// `mesh remove`: a new mesh key the removed node never gets.
    pub async fn remove(&self, node: &str) -> Result<RemovedView, ApiError> {
        self.refuse_in_open_mode("mesh remove")?;
        let _one = self.0.mesh_ops.lock().await;
        let records = self.0.store.read(ops::members).await?;
        let peer = match self.resolve_node(node) {
            Ok(p) => p,
            Err(e) => {
                // A member known by the name it gave when it joined.
                let hits: Vec<PeerId> = records
                    .iter()
                    .filter(|(_, r)| r.name.as_deref() == Some(node.trim()))
                    .map(|(p, _)| *p)
                    .collect();
                match hits.as_slice() {
                    [p] => *p,
                    _ => return Err(e),
                }
            }
        };
        let peer = self.other_node(peer, "; to leave the mesh use: mesh leave")?;
        let name = self.dir().name_of(&peer).map(|n| n.to_string()).or_else(|| {
            records
                .iter()
                .find(|(p, _)| *p == peer)
                .and_then(|(_, r)| r.name.clone())
        });
        // Everyone known as a member keeps its place (it may renew with the old key).
        let connected = self.0.net.connected().borrow().clone();
        let announced: Vec<PeerId> = self
            .dir()
            .nodes()
            .filter(|(_, e)| e.announcement.is_some())
            .map(|(p, _)| *p)
            .collect();
        let members: Vec<PeerId> = records
            .iter()
            .map(|(p, _)| *p)
            .chain(connected.iter().copied())
            .chain(announced)
            .chain(std::iter::once(self.0.peer_id))
            .filter(|p| *p != peer)
            .collect();
        let mut mesh = self.mesh().clone();
        mesh.rotate(peer, members);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ApiError::new(ErrorCode::Storage, e.to_string()))?;
        self.0
            .store
            .write("remove", move |t| {
                ops::remove_member(t, &peer)?;
                ops::remove_dialed(t, &peer)?;
                Ok(())
            })
            .await?;
        let _ = self.0.net.unpin(peer).await;
        let epoch = mesh.current().number;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, false).await.map_err(unavailable)?;
        let rekeyed = connected.iter().filter(|p| **p != peer).count() as u32;
        tracing::info!(%peer, epoch, "removed a node from the mesh");
        Ok(RemovedView {
            peer,
            name,
            epoch,
            rekeyed,
        })
    }

    /// `mesh leave`: start a new mesh of this node's own.
    pub async fn leave(&self) -> Result<MeshView, ApiError> {
        self.refuse_in_open_mode("mesh leave")?;
        let _one = self.0.mesh_ops.lock().await;
        let mut mesh = Membership::generate();
        mesh.add_member(self.0.peer_id);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ApiError::new(ErrorCode::Storage, e.to_string()))?;
        self.0.store.write("leave", ops::reset_mesh).await?;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, true).await.map_err(unavailable)?;
        self.mesh_view().await
    }

    fn check_text(&self, text: &str, topic: bool) -> Result<(), ApiError> {
        if text.trim().is_empty() {
            return Err(ApiError::bad("the message text is empty"));
        }
        let (max, setting) = if topic {
            (
                self.0.config.limits.max_topic_message_bytes,
                "limits.max_topic_message_bytes",
            )
        } else {
            (self.0.config.limits.max_message_bytes, "limits.max_message_bytes")
        };
        if text.len() > max {
            return Err(bad_len("the message text", text.len(), max, setting));
        }
        Ok(())
    }

    async fn check_reply_to(&self, reply_to: Option<MessageId>) -> Result<(), ApiError> {
        if let Some(id) = reply_to {
            let known = self.0.store.read(move |r| ops::message_known(r, &id)).await?;
            if !known {
                return Err(ApiError::not_found(format!(
                    "--reply-to {id}: no message with that id is stored on this node"
                )));
            }
        }
        Ok(())
    }

    async fn local_agent_names(&self) -> Result<Vec<AgentName>, ApiError> {
        Ok(self
            .0
            .store
            .read(ops::agents)
            .await?
            .into_iter()
            .map(|a| a.name)
            .collect())
    }

    /// `mesh send`. With a client-chosen `id`, a repeat of the same request (after a lost
    /// connection or a daemon restart) answers with the first one's receipt.
    pub async fn send(
        &self,
        from: &str,
        to: &str,
        text: String,
        reply_to: Option<MessageId>,
        id: Option<MessageId>,
    ) -> Result<SendReceipt, ApiError> {
        let from = AgentName::new(from)?;
        let addr: Address = to.parse()?;
        self.check_text(&text, false)?;
        self.check_reply_to(reply_to).await?;
        self.check_send_rate_unless_known(&from, id)?;
        let locals = self.local_agent_names().await?;
        let target = self.dir().resolve(&addr, &self.0.name, &locals)?;
        let now = now_ms();
        let chosen = id.is_some();
        let id = id.unwrap_or_default();
        match target {
            Target::Local(agent) => {
                let msg = WireMessage {
                    id,
                    from: from.clone(),
                    to: agent.clone(),
                    sent_at_ms: now,
                    reply_to,
                    text,
                };
                let (me, my_name) = (self.0.peer_id, self.0.name.clone());
                let f = from.clone();
                let stored = self
                    .0
                    .store
                    .write("send", move |t| {
                        if chosen && let Some(prev) = ops::sent_before(t, &msg, &me)? {
                            return Ok(Err(prev));
                        }
                        let created = ops::ensure_agent_new(t, &f, "human", now)?.1;
                        Ok(Ok((created, ops::send_local(t, msg, me, Some(my_name), now)?)))
                    })
                    .await?;
                let status = match stored {
                    Ok((created, (_, inbox))) => {
                        self.agent_created(created);
                        self.0.metrics.dm_sent.inc();
                        self.0.metrics.dm_delivered.inc();
                        self.emit(Event::Message(self.message_view(&inbox)));
                        SendStatus::Delivered
                    }
                    Err(prev) => settled_status(&prev.state).unwrap_or(SendStatus::Delivered),
                };
                Ok(SendReceipt {
                    id,
                    to: format!("{agent}@{}", self.0.name),
                    to_node: self.0.peer_id,
                    status,
                    reception: self.local_reception(&agent),
                })
            }
            Target::Remote { peer, node_name, agent } => {
                let msg = WireMessage {
                    id,
                    from: from.clone(),
                    to: agent.clone(),
                    sent_at_ms: now,
                    reply_to,
                    text,
                };
                let to_label = format!("{agent}@{}", self.node_label(&peer, node_name.as_ref()));
                let mut events = self.0.events.subscribe();
                let f = from.clone();
                let nn = node_name.clone();
                let stored = self
                    .0
                    .store
                    .write("send", move |t| {
                        if chosen && let Some(prev) = ops::sent_before(t, &msg, &peer)? {
                            return Ok(Err(prev));
                        }
                        let created = ops::ensure_agent_new(t, &f, "human", now)?.1;
                        ops::enqueue(t, msg, peer, nn, now)?;
                        Ok(Ok(created))
                    })
                    .await?;
                let settled = match stored {
                    Ok(created) => {
                        self.agent_created(created);
                        self.0.metrics.dm_sent.inc();
                        None
                    }
                    // A repeat: answer with what became of the first one.
                    Err(prev) => settled_status(&prev.state),
                };
                let reception = {
                    let dir = self.dir();
                    let info = dir
                        .get(&peer)
                        .and_then(|e| e.announcement.as_ref())
                        .and_then(|a| a.agents.iter().find(|x| x.name == agent).cloned());
                    match info {
                        Some(i) => dir.reception(&peer, &i, Instant::now()),
                        None => Reception::Offline,
                    }
                };
                let status = match settled {
                    Some(s) => s,
                    None => {
                        self.kick(peer);
                        // Wait for the ack (up to `send_wait`) when the node is connected, or
                        // heard from through the mesh since we lost it (the courier is dialing
                        // it); not for a node that is away.
                        let reachable = self.0.net.is_connected(&peer) || self.dir().reachable(&peer, Instant::now());
                        let status = if reachable {
                            self.wait_outcome(&mut events, id).await
                        } else {
                            None
                        };
                        match status {
                            Some(s) => s,
                            None => self.outbox_status(id, &peer).await?,
                        }
                    }
                };
                Ok(SendReceipt {
                    id,
                    to: to_label,
                    to_node: peer,
                    status,
                    reception,
                })
            }
        }
    }

    async fn wait_outcome(&self, events: &mut broadcast::Receiver<Event>, id: MessageId) -> Option<SendStatus> {
        let deadline = tokio::time::Instant::now() + self.0.config.delivery.send_wait;
        loop {
            // A stop answers at once: the courier is finishing, not starting deliveries, and
            // the client is better told "queued" now than cut off at the drain deadline.
            let next = tokio::select! {
                _ = self.0.shutdown.cancelled() => return None,
                next = tokio::time::timeout_at(deadline, events.recv()) => next,
            };
            match next {
                Err(_) => return None,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return None,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Ok(Event::Delivered { id: got, .. })) if got == id => return Some(SendStatus::Delivered),
                Ok(Ok(Event::DeadLetter { id: got, reason, .. })) if got == id => {
                    return Some(SendStatus::Rejected { reason });
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn outbox_status(&self, id: MessageId, peer: &PeerId) -> Result<SendStatus, ApiError> {
        let e = self.0.store.read(move |r| ops::outbox_by_id(r, &id)).await?;
        Ok(match e.and_then(|e| settled_status(&e.state)) {
            Some(settled) => settled,
            None => SendStatus::Queued {
                reason: if self.0.net.is_connected(peer) {
                    "the recipient node is connected; waiting for its acknowledgement".into()
                } else {
                    format!(
                        "the recipient node is not reachable now; it will be delivered when it connects (within {})",
                        crate::ids::human_duration(self.0.config.delivery.ttl)
                    )
                },
            },
        })
    }

    /// `mesh inbox`: one page of `agent`'s inbox (see [`Request::Inbox`]), filled up to
    /// `max_bytes` and what one API frame holds. With `q.mark_read`, exactly the returned
    /// messages are marked read, in the store write that selects them.
    ///
    /// [`Request::Inbox`]: crate::api::Request::Inbox
    pub async fn inbox(
        &self,
        agent: &str,
        q: store::InboxQuery,
        max_bytes: Option<u32>,
    ) -> Result<InboxPage, ApiError> {
        let agent = AgentName::new(agent)?;
        let budget = self.page_budget(max_bytes);
        let (node, a) = (self.clone(), agent.clone());
        let taken = self
            .0
            .store
            .write("inbox", move |t| {
                node.fill_inbox(budget, |admit| ops::take_inbox(t, &a, q, admit))
            })
            .await;
        let (page, fill) = match taken {
            Ok(p) => p,
            // Mail stays readable when the disk is full: shown without being marked read
            // (it shows again later; nothing is lost).
            Err(e) if e.is_storage() => {
                tracing::warn!(error = %e, "cannot mark messages read; listing them unchanged");
                let node = self.clone();
                self.0
                    .store
                    .read(move |r| node.fill_inbox(budget, |admit| ops::peek_inbox(r, &agent, q, admit)))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let next = page
            .entries
            .last()
            .filter(|_| page.remaining > 0)
            .map(|e| crate::api::page::inbox_cursor(e.seq));
        Ok(InboxPage {
            messages: fill.finish()?,
            remaining: page.remaining,
            next,
        })
    }

    fn page_budget(&self, max_bytes: Option<u32>) -> PageBudget {
        PageBudget::new(self.0.config.limits.max_api_frame_bytes, max_bytes, MAX_LIST as usize)
    }

    /// Runs `op` with an admission test that takes entries while their views fit `budget`;
    /// returns its page and the views of the entries it holds.
    fn fill_inbox<P>(
        &self,
        budget: PageBudget,
        op: impl FnOnce(ops::Admit<'_, InboxEntry>) -> Result<P, store::StoreError>,
    ) -> Result<(P, PageFill<MessageView>), store::StoreError> {
        let mut fill = PageFill::new(budget);
        let page = op(&mut |e: &InboxEntry| fill.offer(e.id, self.message_view(e)))?;
        Ok((page, fill))
    }

    /// Moves unread messages to `notified` (pushed to a session) or `read` (shown).
    pub async fn mark(&self, agent: &str, ids: Vec<MessageId>, state: ReadState) -> Result<u32, ApiError> {
        let agent = AgentName::new(agent)?;
        let n = self
            .0
            .store
            .write("mark", move |t| ops::mark_ids(t, &agent, &ids, state))
            .await?;
        Ok(n as u32)
    }

    /// Unread counts of an agent: (never pushed, pushed but not yet shown).
    pub async fn counts(&self, agent: &str) -> Result<(u64, u64), ApiError> {
        let agent = AgentName::new(agent)?;
        let a = agent.clone();
        if self.0.store.read(move |r| ops::agent(r, a.as_str())).await?.is_none() {
            return Err(ApiError::not_found(format!("no agent {agent:?} on this node")));
        }
        Ok(self
            .0
            .store
            .read(move |r| ops::unread_counts(r, agent.as_str()))
            .await?)
    }

    /// Takes a name for a session and attaches to it; see `Request::Claim`.
    pub async fn claim(&self, spec: AgentSpec, exact: bool) -> Result<(AgentView, SessionGuard), ApiError> {
        let base = AgentName::new(&spec.name)?;
        // One claim at a time, so two sessions starting together get different names.
        let _one = self.0.claim_lock.lock().await;
        let name = if exact {
            base
        } else {
            let agents = self.0.store.read(ops::agents).await?;
            // Held by an attached session (a waker alone keeps the name for its session).
            let live: Vec<AgentName> = {
                let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions
                    .iter()
                    .filter(|(_, s)| s.attached > 0)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let mut chosen = None;
            for i in 1..=MAX_NAME_SUFFIX {
                let cand = if i == 1 {
                    base.clone()
                } else {
                    let suffix = format!("-{i}");
                    let mut stem = base.as_str().to_string();
                    stem.truncate(crate::ids::MAX_NAME_LEN - suffix.len());
                    AgentName::new(format!("{stem}{suffix}"))?
                };
                if live.contains(&cand) {
                    continue;
                }
                // Another directory's mailbox is not ours to take over.
                let theirs = agents
                    .iter()
                    .any(|a| a.name == cand && a.cwd.is_some() && spec.cwd.is_some() && a.cwd != spec.cwd);
                if !theirs {
                    chosen = Some(cand);
                    break;
                }
            }
            chosen.ok_or_else(|| ApiError::new(ErrorCode::Busy, format!("no free name like {base:?}")))?
        };
        let spec = AgentSpec {
            name: name.to_string(),
            ..spec
        };
        let (view, guard) = self.register(spec, true).await?;
        let guard = guard.ok_or_else(|| ApiError::new(ErrorCode::Internal, "claim without a session"))?;
        Ok((view, guard))
    }

    /// `mesh subscribe`.
    pub async fn subscribe(&self, agent: &str, topic: &str) -> Result<(String, bool), ApiError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        let now = now_ms();
        let t = topic.clone();
        let (created, new) = self
            .0
            .store
            .write("subscribe", move |tx| {
                let created = ops::ensure_agent_new(tx, &agent, "human", now)?.1;
                Ok((created, ops::subscribe(tx, &agent, &t, now)?))
            })
            .await?;
        self.agent_created(created);
        self.0.net.subscribe(topic.clone()).await.map_err(unavailable)?;
        Ok((topic.to_string(), new))
    }

    /// `mesh unsubscribe`.
    pub async fn unsubscribe(&self, agent: &str, topic: &str) -> Result<(String, bool), ApiError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        let t = topic.clone();
        let (was, still) = self
            .0
            .store
            .write("unsubscribe", move |tx| {
                let was = ops::unsubscribe(tx, &agent, &t)?;
                Ok((was, ops::topic_has_subscribers(tx, &t)?))
            })
            .await?;
        if !still {
            self.0.net.unsubscribe(topic.clone()).await.map_err(unavailable)?;
        }
        Ok((topic.to_string(), was))
    }

    /// `mesh topics`.
    pub async fn topics(&self) -> Result<Vec<TopicView>, ApiError> {
        let subs = self.0.store.read(ops::subscriptions).await?;
        let stats = self.0.store.read(ops::topic_stats).await?;
        let mut by: std::collections::BTreeMap<String, TopicView> = std::collections::BTreeMap::new();
        for (t, a) in subs {
            by.entry(t.to_string())
                .or_insert_with(|| TopicView {
                    topic: t.to_string(),
                    subscribers: vec![],
                    messages: 0,
                    last_ms: None,
                })
                .subscribers
                .push(a.to_string());
        }
        for (t, n, last) in stats {
            let v = by.entry(t.to_string()).or_insert_with(|| TopicView {
                topic: t.to_string(),
                subscribers: vec![],
                messages: 0,
                last_ms: None,
            });
            v.messages = n;
            v.last_ms = Some(last);
        }
        Ok(by.into_values().collect())
    }

    /// `mesh publish`. With a client-chosen `id`, a repeat of the same request answers with
    /// the first one's receipt (and hands the message to the gossip again).
    pub async fn publish(
        &self,
        agent: &str,
        topic: &str,
        text: String,
        reply_to: Option<MessageId>,
        id: Option<MessageId>,
    ) -> Result<PublishReceipt, ApiError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        self.check_text(&text, true)?;
        self.check_reply_to(reply_to).await?;
        self.check_send_rate_unless_known(&agent, id)?;
        let now = now_ms();
        let chosen = id.is_some();
        let envelope = TopicEnvelope {
            id: id.unwrap_or_default(),
            topic: topic.clone(),
            from: agent.clone(),
            sent_at_ms: now,
            reply_to,
            text,
        };
        let (me, my_name) = (self.0.peer_id, self.0.name.clone());
        let env = envelope.clone();
        let stored = self
            .0
            .store
            .write("publish", move |t| {
                if chosen && let Some(prev) = ops::published_before(t, &env)? {
                    return Ok(Err(prev));
                }
                let created = ops::ensure_agent_new(t, &agent, "human", now)?.1;
                Ok(Ok((
                    created,
                    ops::record_topic(t, env, me, Some(my_name), true, 0, now)?,
                )))
            })
            .await?;
        let (rec, delivered) = match stored {
            Ok((created, recorded)) => {
                self.agent_created(created);
                self.0.metrics.topic_out.inc();
                let (rec, delivered) =
                    recorded.ok_or_else(|| ApiError::new(ErrorCode::Internal, "message id collision"))?;
                for e in &delivered {
                    self.emit(Event::Message(self.message_view(e)));
                }
                (rec, delivered.len() as u32)
            }
            // A repeat: the stored message goes out again (receivers keep one copy).
            Err(prev) => (prev, 0),
        };
        let payload =
            postcard::to_allocvec(&rec.envelope).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        let reached = self.0.net.publish(topic.clone(), payload).await.map_err(unavailable)?;
        if reached > rec.reached {
            // Not awaited: if it is lost in a crash the message is merely published again
            // later, and receivers drop it by id.
            let (t, seq, node) = (topic.clone(), rec.seq, self.clone());
            tokio::spawn(async move {
                if let Err(e) = node
                    .0
                    .store
                    .write("publish", move |tx| ops::topic_reached(tx, &t, seq, reached))
                    .await
                {
                    tracing::warn!(error = %e, "cannot record that a topic message reached peers");
                }
            });
        }
        Ok(PublishReceipt {
            id: rec.envelope.id,
            topic: topic.to_string(),
            peers_reached: reached.max(rec.reached),
            local_subscribers: delivered,
        })
    }

    /// `mesh history`: one page (see [`Request::History`]) of the history matching
    /// `filter` (its position, order and text fields), of `agent` and with `target` (an
    /// agent address or `#topic`), filled up to `max_bytes` and what one API frame holds.
    ///
    /// [`Request::History`]: crate::api::Request::History
    pub async fn history(
        &self,
        agent: Option<&str>,
        target: Option<&str>,
        mut filter: ops::HistoryFilter,
        max_bytes: Option<u32>,
    ) -> Result<HistoryPage, ApiError> {
        filter.agent = agent.map(AgentName::new).transpose()?;
        filter.grep = filter.grep.filter(|g| !g.is_empty());
        if let Some(t) = target.map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(topic) = t.strip_prefix('#') {
                filter.topic = Some(TopicName::new(topic)?);
            } else {
                let addr: Address = t.parse()?;
                let topic_known = TopicName::new(t).ok().filter(|_| addr.node.is_none());
                let known_topic = match &topic_known {
                    Some(tn) => {
                        let tn = tn.clone();
                        self.0
                            .store
                            .read(move |r| Ok(ops::topic_stats(r)?.iter().any(|(t, _, _)| t == &tn)))
                            .await?
                    }
                    None => false,
                };
                let locals = self.local_agent_names().await?;
                let resolved = self.dir().resolve(&addr, &self.0.name, &locals);
                filter.with = match (resolved, known_topic) {
                    (Ok(Target::Local(a)), false) => Some((a, Some(self.0.peer_id))),
                    (Ok(Target::Remote { peer, agent, .. }), false) => Some((agent, Some(peer))),
                    (Ok(_), true) => {
                        return Err(ApiError::new(
                            ErrorCode::Ambiguous,
                            format!(
                                "{t:?} is both an agent and a topic: write #{t} for the topic or {t}@<node> for the agent"
                            ),
                        ));
                    }
                    (Err(_), true) => {
                        filter.topic = topic_known;
                        None
                    }
                    // An agent no longer announced: still show what was exchanged with it.
                    (Err(e), false) if e.code == ErrorCode::NotFound && addr.node.is_none() => {
                        Some((addr.agent.clone(), None))
                    }
                    (Err(e), false) => return Err(e),
                };
            }
        }
        let budget = self.page_budget(max_bytes);
        let node = self.clone();
        let (page, fill) = self
            .0
            .store
            .read(move |r| {
                let mut fill = PageFill::new(budget);
                let page = ops::history(r, &filter, &mut |row| fill.offer(row.id(), node.history_view(row)))?;
                Ok((page, fill))
            })
            .await?;
        let cursor = |row: Option<&store::HistoryRow>| row.map(|r| crate::api::page::history_cursor(r.seq()));
        Ok(HistoryPage {
            older: cursor(page.rows.first()).filter(|_| page.older),
            newer: cursor(page.rows.last()).filter(|_| page.newer),
            entries: fill.finish()?,
        })
    }

    fn history_view(&self, row: &store::HistoryRow) -> HistoryView {
        let at_ms = row.at_ms();
        match row {
            store::HistoryRow::Received(e) => {
                let v = self.message_view(e);
                HistoryView {
                    id: e.id,
                    kind: "in".into(),
                    from: v.from,
                    to: format!("{}@{}", e.agent, self.0.name),
                    text: v.text,
                    at_ms,
                    reply_to: e.reply_to,
                    state: None,
                }
            }
            store::HistoryRow::Sent(e) => HistoryView {
                id: e.msg.id,
                kind: "out".into(),
                from: format!("{}@{}", e.msg.from, self.0.name),
                to: self.outbox_to(e),
                text: e.msg.text.clone(),
                at_ms,
                reply_to: e.msg.reply_to,
                state: Some(out_state(&e.state)),
            },
            store::HistoryRow::Topic(r) => HistoryView {
                id: r.envelope.id,
                kind: "topic".into(),
                from: format!(
                    "{}@{}",
                    r.envelope.from,
                    self.node_label(&r.from_node, r.from_node_name.as_ref())
                ),
                to: format!("#{}", r.envelope.topic),
                text: r.envelope.text.clone(),
                at_ms,
                reply_to: r.envelope.reply_to,
                state: r.local.then(|| {
                    if r.reached > 0 {
                        format!("reached {} peers", r.reached)
                    } else {
                        "no subscribers reached yet".to_string()
                    }
                }),
            },
        }
    }

    /// `mesh outbox`.
    pub async fn outbox(&self, agent: Option<&str>, delivered: bool, limit: u32) -> Result<Vec<OutboxView>, ApiError> {
        let agent = agent.map(AgentName::new).transpose()?;
        let limit = limit.clamp(1, MAX_LIST) as usize;
        let entries = self
            .0
            .store
            .read(move |r| ops::outbox(r, agent.as_ref(), delivered, limit))
            .await?;
        Ok(entries
            .iter()
            .map(|e| OutboxView {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
                text: e.msg.text.clone(),
                created_ms: e.created_ms,
                state: match &e.state {
                    OutState::Pending => "pending",
                    OutState::Delivered { .. } => "delivered",
                    OutState::Dead { .. } => "dead",
                }
                .into(),
                reason: match &e.state {
                    OutState::Dead { reason, .. } => Some(reason.clone()),
                    _ => e.last_error.clone(),
                },
                attempts: e.attempts,
            })
            .collect())
    }

    /// Creates or updates a local agent; with `attach`, returns a guard keeping it online.
    pub async fn register(&self, spec: AgentSpec, attach: bool) -> Result<(AgentView, Option<SessionGuard>), ApiError> {
        let name = AgentName::new(&spec.name)?;
        let max = self.0.config.limits.max_summary_bytes;
        if let Some(s) = &spec.summary
            && s.len() > max
        {
            return Err(bad_len("the summary", s.len(), max, "limits.max_summary_bytes"));
        }
        let kind = normalize_kind(&spec.kind);
        for (what, v) in [("cwd", &spec.cwd), ("repo", &spec.repo)] {
            if v.as_ref().is_some_and(|p| p.len() > wire::MAX_PATH_BYTES) {
                return Err(ApiError::bad(format!(
                    "{what} is longer than {} bytes",
                    wire::MAX_PATH_BYTES
                )));
            }
        }
        let now = now_ms();
        let n = name.clone();
        let rec = self
            .0
            .store
            .write("register", move |t| {
                let mut r = ops::ensure_agent(t, &n, &kind, now)?;
                r.kind = kind;
                r.cwd = spec.cwd;
                r.repo = spec.repo;
                r.branch = spec.branch;
                if spec.summary.is_some() {
                    r.summary = spec.summary;
                }
                ops::put_agent(t, &r)?;
                Ok(r)
            })
            .await?;
        let guard = attach.then(|| {
            let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let s = sessions.entry(name.clone()).or_default();
            s.attached += 1;
            if spec.push {
                s.push += 1;
            }
            if spec.pid.is_some() {
                s.pid = spec.pid;
            }
            SessionGuard {
                node: self.clone(),
                agent: name.clone(),
                hold: Hold::Session { push: spec.push },
            }
        });
        self.0.announce.notify_one();
        Ok((self.local_view(&rec).await?, guard))
    }

    /// Makes the caller a waker of local agent `agent` (a hook or plugin that wakes the
    /// agent's client when mail arrives) for as long as the guard lives: the agent counts as
    /// [`Reception::Woken`] meanwhile. The newest waker acts: older ones are told to stand
    /// down (`Event::WakerReplaced`), since their session moved on (a new thread, a
    /// restarted client). Returns the waker's generation.
    pub async fn hold_waker(&self, agent: &str) -> Result<(SessionGuard, u64), ApiError> {
        let name = AgentName::new(agent)?;
        let agents = self.0.store.read(ops::agents).await?;
        if !agents.iter().any(|a| a.name == name) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no local agent named {name}"),
            ));
        }
        let generation = {
            let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let s = sessions.entry(name.clone()).or_default();
            s.wakers += 1;
            s.waker_generation += 1;
            s.waker_generation
        };
        let _ = self.0.events.send(Event::WakerReplaced {
            agent: name.to_string(),
            generation,
        });
        self.0.announce.notify_one();
        Ok((
            SessionGuard {
                node: self.clone(),
                agent: name,
                hold: Hold::Waker,
            },
            generation,
        ))
    }

    /// Sets or clears an agent's summary.
    pub async fn set_summary(&self, agent: &str, summary: Option<String>) -> Result<AgentView, ApiError> {
        let name = AgentName::new(agent)?;
        let max = self.0.config.limits.max_summary_bytes;
        if let Some(s) = &summary
            && s.len() > max
        {
            return Err(bad_len("the summary", s.len(), max, "limits.max_summary_bytes"));
        }
        let now = now_ms();
        let rec = self
            .0
            .store
            .write("summary", move |t| {
                if !ops::agent_exists(t, &name)? {
                    return Err(store::StoreError::UnknownAgent(name.to_string()));
                }
                let mut r = ops::ensure_agent(t, &name, "other", now)?;
                r.summary = summary.filter(|s| !s.trim().is_empty());
                ops::put_agent(t, &r)?;
                Ok(r)
            })
            .await?;
        self.0.announce.notify_one();
        self.local_view(&rec).await
    }

    async fn local_view(&self, r: &AgentRecord) -> Result<AgentView, ApiError> {
        let name = r.name.clone();
        let unread = self.0.store.read(move |t| ops::unread_count(t, name.as_str())).await?;
        Ok(AgentView {
            address: format!("{}@{}", r.name, self.0.name),
            name: r.name.to_string(),
            node_name: self.0.name.to_string(),
            node: self.0.peer_id,
            local: true,
            kind: r.kind.clone(),
            cwd: r.cwd.clone(),
            repo: r.repo.clone(),
            summary: r.summary.clone(),
            reception: self.local_reception(&r.name),
            last_seen_ms: r.last_seen_ms,
            unread: Some(unread),
            pid: self
                .0
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.name)
                .and_then(|s| s.pid),
        })
    }

    // ------------------------------------------------------------------ core loop

    /// Startup work: the user's own agent, remembered peers, topic subscriptions, first
    /// announcement.
    pub(crate) async fn start(&self, user: AgentName) -> Result<(), ApiError> {
        let now = now_ms();
        self.0
            .store
            .write("user agent", move |t| ops::ensure_agent(t, &user, "human", now))
            .await?;
        let mut records = self.0.store.read(ops::peers).await?;
        records.sort_by_key(|r| std::cmp::Reverse(r.last_seen_ms));
        for r in records.iter().take(REDIAL_AT_START) {
            if !r.addrs.is_empty() {
                let _ = self.0.net.add_addrs(r.peer, r.addrs.clone(), true).await;
            }
        }
        self.dir().load(records);
        for (peer, addrs) in self.0.store.read(ops::dialed).await? {
            let _ = self.0.net.add_addrs(peer, addrs, false).await;
            let _ = self.0.net.pin(peer).await;
        }
        let subs = self.0.store.read(ops::subscriptions).await?;
        for (topic, _) in subs {
            self.0.net.subscribe(topic.clone()).await.map_err(unavailable)?;
        }
        self.announce_now().await;
        Ok(())
    }

    /// Waits until incoming deliveries and topic messages being stored are done (and their
    /// answers handed to the network); false if `deadline` came first.
    pub(crate) async fn drain_inbound(&self, deadline: tokio::time::Instant) -> bool {
        let all = MAX_INBOUND_IN_FLIGHT as u32;
        matches!(
            tokio::time::timeout_at(deadline, self.0.inbound.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Reacts to the network until its events end (the network actor stopped) or `cancel`.
    pub(crate) async fn run_core(self, mut net_events: mpsc::Receiver<NetEvent>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.0.announce.notified() => self.announce_now().await,
                ev = net_events.recv() => match ev {
                    Some(ev) => self.on_net_event(ev).await,
                    None => break,
                },
            }
        }
    }

    async fn persist_peer(&self, peer: PeerId) {
        let rec = self.dir().record(&peer);
        if let Some(rec) = rec {
            let store = self.0.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.write("peer", move |t| ops::put_peer(t, &rec)).await {
                    tracing::warn!(error = %e, "cannot persist peer");
                }
            });
        }
    }

    async fn on_net_event(&self, ev: NetEvent) {
        match ev {
            NetEvent::Listening(_) => {}
            NetEvent::PeerConnected { peer, addr, dialed } => {
                let name = {
                    let mut dir = self.dir();
                    dir.set_connected(peer, true, now_ms());
                    if dialed {
                        dir.add_addrs(peer, &[addr]);
                    }
                    dir.name_of(&peer)
                };
                self.kick(peer);
                self.emit(Event::PeerUp {
                    peer,
                    name: name.as_ref().map(|n| n.to_string()),
                });
                // Admitted: a member. Remember it (for `mesh members` and key rotation).
                let now = now_ms();
                let name = name.map(|n| n.to_string());
                let store = self.0.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store
                        .write("member", move |t| ops::put_member(t, &peer, name, now))
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record a member");
                    }
                });
            }
            NetEvent::PeerDisconnected { peer } => {
                let name = {
                    let mut dir = self.dir();
                    dir.set_connected(peer, false, now_ms());
                    dir.name_of(&peer)
                };
                self.persist_peer(peer).await;
                self.emit(Event::PeerDown {
                    peer,
                    name: name.map(|n| n.to_string()),
                });
            }
            NetEvent::PeerIdentified { peer, listen_addrs } => {
                let changed = self.dir().add_addrs(peer, &listen_addrs);
                if changed {
                    self.persist_peer(peer).await;
                }
            }
            NetEvent::PeerDiscovered { peer, addrs } => {
                // Only for nodes known as members; others are outsiders until admitted.
                let mut dir = self.dir();
                if dir.get(&peer).is_some() {
                    dir.add_addrs(peer, &addrs);
                }
            }
            NetEvent::Announcement { peer, announcement } => {
                let name = announcement.node_name.to_string();
                let update = self.dir().update(peer, announcement, Instant::now(), now_ms());
                if update == Update::Changed {
                    self.persist_peer(peer).await;
                    // Sealed for the mesh (or said by an admitted peer): a member.
                    let (now, n) = (now_ms(), Some(name.clone()));
                    if let Err(e) = self
                        .0
                        .store
                        .write("member", move |t| ops::put_member(t, &peer, n, now))
                        .await
                    {
                        tracing::warn!(error = %e, "cannot record a member");
                    }
                    self.emit(Event::NodeUpdated { peer, name });
                }
            }
            NetEvent::InboundDms {
                peer,
                request,
                messages,
            } => self.on_inbound_dms(peer, request, messages).await,
            NetEvent::Topic { source, envelope } => self.on_topic(source, envelope),
            NetEvent::SyncRequest { peer, request, body } => self.on_sync_request(peer, request, body),
            NetEvent::TopicSubscribed { peer: _, topic } => self.flush_topic(topic),
            NetEvent::ReachChanged => self.emit(Event::NetworkChanged),
            NetEvent::MembershipChanged(m) => {
                if let Err(e) = m.save(&self.0.home.mesh_path()) {
                    tracing::error!(error = %e, "cannot save the renewed mesh key; it will be renewed again after a restart");
                }
                *self.mesh() = *m;
                self.emit(Event::NetworkChanged);
            }
            NetEvent::JoinRequest {
                peer,
                request,
                invite,
                node_name,
            } => self.on_join_request(peer, request, *invite, node_name),
        }
    }

    /// A node presents a join code: check it is ours, use it once, hand over the mesh.
    fn on_join_request(
        &self,
        peer: PeerId,
        request: libp2p::request_response::InboundRequestId,
        invite: Invite,
        node_name: String,
    ) {
        let node = self.clone();
        tokio::spawn(async move {
            let mesh = node.mesh().clone();
            let response = if !invite.verify() || invite.body.inviter != node.0.peer_id {
                JoinResponse::Refused(JoinRefusal::NotOurs)
            } else if invite.body.mesh_id != mesh.id() {
                JoinResponse::Refused(JoinRefusal::LeftMesh)
            } else {
                let (now, token) = (now_ms(), invite.body.token);
                let name = Some(crate::ids::sanitize_text(&node_name)).filter(|n| !n.is_empty());
                let used = node
                    .0
                    .store
                    .write("join", move |t| {
                        let u = ops::use_invite(t, &token, now)?;
                        if matches!(u, InviteUse::Accepted(_)) {
                            ops::put_member(t, &peer, name, now)?;
                        }
                        Ok(u)
                    })
                    .await;
                match used {
                    Ok(InviteUse::Accepted(left)) => {
                        tracing::info!(%peer, name = %node_name, uses_left = left, "a node joined the mesh");
                        // The network actor records it as a member when the answer goes out.
                        let mut joined = mesh.clone();
                        joined.add_member(peer);
                        match Voucher::sign(&mesh.id(), &peer, &node.0.keypair) {
                            Ok(v) => JoinResponse::Granted(Box::new(joined.grant()), v),
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "cannot sign a voucher");
                                JoinResponse::Refused(JoinRefusal::Storage)
                            }
                        }
                    }
                    Ok(InviteUse::Unknown) => JoinResponse::Refused(JoinRefusal::Unknown),
                    Ok(InviteUse::Expired(at)) => JoinResponse::Refused(JoinRefusal::Expired(at)),
                    Ok(InviteUse::UsedUp) => JoinResponse::Refused(JoinRefusal::Used),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot record a join");
                        JoinResponse::Refused(JoinRefusal::Storage)
                    }
                }
            };
            let _ = node.0.net.respond_join(request, response).await;
        });
    }

    async fn on_inbound_dms(
        &self,
        peer: PeerId,
        request: libp2p::request_response::InboundRequestId,
        messages: Vec<WireMessage>,
    ) {
        if self.0.shutdown.is_cancelled() {
            // Stopping: what is in flight finishes, nothing new is taken.
            let _ = self
                .0
                .net
                .respond_dm(request, DmResponse::Unavailable("the node is shutting down".into()))
                .await;
            return;
        }
        let Ok(permit) = self.0.inbound.clone().try_acquire_owned() else {
            self.0.metrics.dm_throttled.inc();
            let _ = self
                .0
                .net
                .respond_dm(request, DmResponse::Unavailable("recipient node is busy".into()))
                .await;
            return;
        };
        // A node over its allowance gets the prefix there is room for now; the courier
        // sends the rest later, in order.
        let mut messages = messages;
        let limited = {
            let mut r = self.0.peer_rate.lock().unwrap_or_else(|e| e.into_inner());
            r.take_up_to(&peer, messages.len() as u32, Instant::now())
        };
        if let Ok(k) = limited
            && (k as usize) < messages.len()
        {
            self.0.metrics.dm_throttled.inc();
            messages.truncate(k as usize);
        }
        if let Err(wait) = limited {
            self.0.metrics.dm_throttled.inc();
            drop(permit);
            tracing::info!(%peer, "a node sends faster than limits.peer_messages_per_minute; asking it to wait");
            let _ = self
                .0
                .net
                .respond_dm(
                    request,
                    DmResponse::Unavailable(format!(
                        "rate limited: more than {} messages a minute from your node; retry in {:.1} s",
                        self.0.config.limits.peer_messages_per_minute,
                        wait.as_secs_f64()
                    )),
                )
                .await;
            return;
        }
        let node = self.clone();
        let from_name = self.dir().name_of(&peer);
        let max = self.0.config.limits.max_message_bytes;
        tokio::spawn(async move {
            let now = now_ms();
            let result = node
                .0
                .store
                .write("receive", move |t| ops::accept(t, peer, from_name, messages, max, now))
                .await;
            let response = match result {
                Ok((outcomes, stored)) => {
                    let m = &node.0.metrics;
                    m.dm_received.inc_by(stored.len() as u64);
                    for (_, o) in &outcomes {
                        match o {
                            crate::wire::Outcome::Duplicate => {
                                m.dm_duplicates.inc();
                            }
                            crate::wire::Outcome::Rejected(_) => {
                                m.dm_rejected.inc();
                            }
                            crate::wire::Outcome::Stored => {}
                        }
                    }
                    {
                        // The sending node vouches for its agents: a reply can go back at
                        // once, even before its next announcement says so.
                        let mut dir = node.dir();
                        for e in &stored {
                            dir.learn_agent(peer, &e.from.agent, e.received_at_ms);
                        }
                    }
                    for e in &stored {
                        node.emit(Event::Message(node.message_view(e)));
                    }
                    DmResponse::Outcomes(outcomes)
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot store inbound messages; sender will retry");
                    DmResponse::Unavailable(e.to_string())
                }
            };
            let _ = node.0.net.respond_dm(request, response).await;
            drop(permit);
        });
    }

    fn on_topic(&self, source: PeerId, envelope: TopicEnvelope) {
        let Ok(permit) = self.0.inbound.clone().try_acquire_owned() else {
            // Not lost: the catch-up with its publisher fetches it once there is room.
            tracing::info!(%source, "too many inbound messages in flight; a topic message will be caught up later");
            crate::metrics::Metrics::count(&self.0.metrics.topic_dropped, "busy");
            let _ = self.0.sync.try_send(source);
            return;
        };
        let node = self.clone();
        let name = self.dir().name_of(&source);
        tokio::spawn(async move {
            let now = now_ms();
            match node
                .0
                .store
                .write("topic", move |t| {
                    ops::record_topic(t, envelope, source, name, false, 0, now)
                })
                .await
            {
                Ok(Some((_, delivered))) => {
                    node.0.metrics.topic_in.inc();
                    for e in &delivered {
                        node.emit(Event::Message(node.message_view(e)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a topic message; it will be caught up later");
                    let _ = node.0.sync.try_send(source);
                }
            }
            drop(permit);
        });
    }

    /// Stores topic messages caught up from their publisher `peer` (checked by the caller).
    pub(crate) async fn store_synced(
        &self,
        peer: PeerId,
        envelopes: Vec<TopicEnvelope>,
        now: u64,
    ) -> Result<(), store::StoreError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let name = self.dir().name_of(&peer);
        let stored = self
            .0
            .store
            .write("catch-up", move |t| {
                let mut out = Vec::new();
                for env in envelopes {
                    if let Some(x) = ops::record_topic(t, env, peer, name.clone(), false, 0, now)? {
                        out.push(x);
                    }
                }
                Ok(out)
            })
            .await?;
        let m = &self.0.metrics;
        for (_, delivered) in &stored {
            m.topic_in.inc();
            m.topic_synced.inc();
            for e in delivered {
                self.emit(Event::Message(self.message_view(e)));
            }
        }
        if !stored.is_empty() {
            tracing::info!(%peer, count = stored.len(), "caught up topic messages that gossip did not bring");
        }
        Ok(())
    }

    /// A peer asks what this node's agents published on a topic (see [`crate::sync`]).
    fn on_sync_request(
        &self,
        peer: PeerId,
        request: libp2p::request_response::InboundRequestId,
        body: wire::SyncRequest,
    ) {
        use wire::SyncResponse;
        let node = self.clone();
        let Ok(permit) = self.0.sync_serving.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = node
                    .0
                    .net
                    .respond_sync(request, SyncResponse::Unavailable("busy; ask again later".into()))
                    .await;
            });
            return;
        };
        tokio::spawn(async move {
            let response = node.0.store.read(move |r| crate::sync::answer(r, body)).await;
            let response = response.unwrap_or_else(|e| {
                tracing::warn!(%peer, error = %e, "cannot answer a catch-up request");
                SyncResponse::Unavailable(e.to_string())
            });
            let _ = node.0.net.respond_sync(request, response).await;
            drop(permit);
        });
    }

    /// Re-publishes local messages that reached nobody, now that `topic` has a subscriber.
    fn flush_topic(&self, topic: TopicName) {
        let node = self.clone();
        tokio::spawn(async move {
            let t = topic.clone();
            let pending = match node.0.store.read(move |r| ops::topic_pending(r, &t)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read pending topic messages");
                    return;
                }
            };
            for rec in pending {
                let Ok(payload) = postcard::to_allocvec(&rec.envelope) else {
                    continue;
                };
                match node.0.net.publish(topic.clone(), payload).await {
                    Ok(n) if n > 0 => {
                        let (t, seq) = (topic.clone(), rec.seq);
                        let _ = node
                            .0
                            .store
                            .write("publish", move |tx| ops::topic_reached(tx, &t, seq, n))
                            .await;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "re-publish failed");
                        break;
                    }
                }
            }
        });
    }

    pub(crate) fn settled_event(&self, e: &OutboxEntry) -> Option<Event> {
        match &e.state {
            OutState::Delivered { .. } => Some(Event::Delivered {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
            }),
            OutState::Dead { reason, .. } => Some(Event::DeadLetter {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
                reason: reason.clone(),
            }),
            OutState::Pending => None,
        }
    }

    pub(crate) fn emit_settled(&self, entries: &[OutboxEntry]) {
        for e in entries {
            match e.state {
                OutState::Delivered { .. } => self.0.metrics.dm_delivered.inc(),
                OutState::Dead { .. } => self.0.metrics.dm_dead.inc(),
                OutState::Pending => 0,
            };
            if let Some(ev) = self.settled_event(e) {
                self.emit(ev);
            }
        }
    }
}

fn unavailable(e: crate::net::NetError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, e.to_string())
}

/// The answer for a message that is settled already (`None` while pending).
fn settled_status(s: &OutState) -> Option<SendStatus> {
    match s {
        OutState::Pending => None,
        OutState::Delivered { .. } => Some(SendStatus::Delivered),
        OutState::Dead { reason, .. } => Some(SendStatus::Rejected { reason: reason.clone() }),
    }
}

fn out_state(s: &OutState) -> String {
    match s {
        OutState::Pending => "pending".into(),
        OutState::Delivered { .. } => "delivered".into(),
        OutState::Dead { reason, .. } => format!("dead: {reason}"),
    }
}

/// The agent kinds agentmesh knows; anything else is `other`.
pub fn normalize_kind(kind: &str) -> String {
    match kind.trim().to_ascii_lowercase().as_str() {
        "human" | "cli" | "user" => "human",
        "claude-code" | "claude" | "claude code" => "claude-code",
        "codex" | "codex-cli" => "codex",
        "opencode" => "opencode",
        _ => "other",
    }
    .to_string()
}

/// The last 8 characters of a PeerId, for display when no name is known.
pub fn short_peer(p: &PeerId) -> String {
    let s = p.to_string();
    format!("…{}", &s[s.len().saturating_sub(8)..])
}
