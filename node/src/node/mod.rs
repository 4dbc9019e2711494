//! The node service: what the local API can ask of a node, and the core loop that reacts to
//! the network.
//!
//! [`Node`] is a cheap handle (an `Arc`) shared by the API connections, the core loop and
//! the courier. Its state is the store (durable), the directory and the sessions (memory,
//! behind short mutexes never held across an await), and handles to the network actor and
//! the courier.

mod dm;
mod event_loop;
mod membership;
mod page;
pub(crate) mod pairing;
mod peers;
pub(crate) mod permissions;
mod receipts;
mod sessions;
mod topics;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{
    AgentSpec, AgentView, Event, HistoryPage, HistoryView, InboxPage, InviteView, JoinView, MemberView, MembersView,
    MeshView, MessageView, NodeIdentity, OutboxView, PeerView, PublishReceipt, Reception, RemovedView, SendReceipt,
    SendStatus, StatusView, TopicView,
    page::{PageBudget, PageFill},
};
use crate::config::Config;
use crate::directory::{Directory, Target, Update};
use crate::error::ServiceError;
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
    /// Catch-up requests from peers, for the catch-up task to answer.
    pub sync_requests: mpsc::Sender<SyncRequestIn>,
    pub shutdown: CancellationToken,
}

/// A catch-up request from a peer, handed to the catch-up task (`sync.rs`) to answer.
pub type SyncRequestIn = (PeerId, libp2p::request_response::InboundRequestId, wire::SyncRequest);

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
    /// Catch-up requests from peers, to the catch-up task.
    sync_requests: mpsc::Sender<SyncRequestIn>,
    announce: Notify,
    inbound: Arc<Semaphore>,
    started: Instant,
    pub shutdown: CancellationToken,
    /// The user's own agent (the human's; set at start).
    user: std::sync::OnceLock<AgentName>,
    /// The page, once served (`mesh open`, `[web] enabled`).
    web: tokio::sync::Mutex<Option<Arc<crate::web::Site>>>,
    /// Permission requests of local sessions.
    permissions: Mutex<permissions::Permissions>,
    /// Nodes asking this one to admit them.
    pairings: Mutex<pairing::Pairings>,
    /// Pairings this node asked for, by the member asked.
    pair_out: Mutex<HashMap<PeerId, pairing::Asking>>,
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

fn bad_len(what: &str, len: usize, max: usize, setting: &str) -> ServiceError {
    ServiceError::too_large(format!(
        "{what} is {len} bytes; the limit is {max} bytes ({setting} in config.toml)"
    ))
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
            sync_requests,
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
            sync_requests,
            announce: Notify::new(),
            inbound: Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT)),
            started: Instant::now(),
            shutdown,
            user: std::sync::OnceLock::new(),
            web: tokio::sync::Mutex::new(None),
            permissions: Mutex::new(permissions::Permissions::default()),
            pairings: Mutex::new(pairing::Pairings::default()),
            pair_out: Mutex::new(HashMap::new()),
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
    fn check_send_rate_unless_known(&self, agent: &AgentName, id: Option<MessageId>) -> Result<(), ServiceError> {
        if let Some(id) = id
            && self.0.store.read_now(move |r| ops::id_known(r, &id))?
        {
            return Ok(());
        }
        self.check_send_rate(agent)
    }

    fn check_send_rate(&self, agent: &AgentName) -> Result<(), ServiceError> {
        let mut r = self.0.send_rate.lock().unwrap_or_else(|e| e.into_inner());
        r.take(agent, 1, Instant::now()).map_err(|wait| {
            ServiceError::rate_limited(format!(
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
}

fn unavailable(e: crate::net::NetError) -> ServiceError {
    ServiceError::unavailable(e.to_string())
}

/// The answer for a message that is settled already (`None` while pending).
fn settled_status(s: &OutState) -> Option<SendStatus> {
    match s {
        OutState::Pending => None,
        OutState::Delivered { .. } => Some(SendStatus::Delivered),
        OutState::Read { at_ms, .. } => Some(SendStatus::Read { at_ms: *at_ms }),
        OutState::Dead { reason, .. } => Some(SendStatus::Rejected { reason: reason.clone() }),
    }
}

/// When the recipient of a sent message was shown it, if a receipt said so.
fn read_at(s: &OutState) -> Option<u64> {
    match s {
        OutState::Read { at_ms, .. } => Some(*at_ms),
        _ => None,
    }
}

fn out_state(s: &OutState) -> String {
    match s {
        OutState::Pending => "pending".into(),
        OutState::Delivered { .. } => "delivered".into(),
        OutState::Read { .. } => "read".into(),
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

pub use crate::ids::short_peer;
pub use pairing::comparison_code;
