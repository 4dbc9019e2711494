//! Metrics in the Prometheus text format: libp2p's own (connections, bandwidth, identify,
//! ping, gossipsub, Kademlia, relay, DCUtR) and the node's (messages, queues, topics,
//! admission, peers by path, hole punching, local API requests and latencies).
//!
//! Counters are kept always (they are a few atomics); `mesh up --metrics ADDR` serves them
//! over HTTP (`GET /metrics`). Gauges that describe state (queue depths, connected peers)
//! are read from the store and the network when a scrape comes in.
//!
//! ```
//! let m = mesh_node::metrics::Metrics::new();
//! m.dm_delivered.inc();
//! assert!(m.encode_counters().contains("agentmesh_dm_delivered_total 1"));
//! ```

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Scrapes served at once; more wait.
pub const MAX_SCRAPES: usize = 8;
/// Longest HTTP request head read, in bytes.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time allowed to read a request.
pub const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A label with one value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The value.
    pub kind: &'static str,
}

/// A local API request kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// `Send`, `Inbox`, ...
    pub request: &'static str,
    /// `ok` or the error code.
    pub outcome: &'static str,
}

/// A state label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// The state.
    pub state: &'static str,
}

/// A connection path label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// `lan`, `internet` or `relayed`.
    pub path: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 16))
}

/// Every metric of a node. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Mutex<Registry>,
    /// libp2p's recorders (fed by the network actor).
    pub libp2p: libp2p::metrics::Metrics,
    /// Direct messages written to the outbox by local agents.
    pub dm_sent: Counter,
    /// Direct messages acknowledged by the recipient node.
    pub dm_delivered: Counter,
    /// Direct messages in delivery attempts that failed (to be retried).
    pub dm_retried: Counter,
    /// Direct messages that became dead letters.
    pub dm_dead: Counter,
    /// Direct messages whose recipient was shown them (read receipts recorded).
    pub dm_read: Counter,
    /// Direct messages stored for local agents from other nodes.
    pub dm_received: Counter,
    /// Inbound direct messages that were duplicates.
    pub dm_duplicates: Counter,
    /// Inbound direct messages refused for good (unknown agent, too large, ...).
    pub dm_rejected: Counter,
    /// Inbound delivery requests answered "busy" or "rate limited" (in part or whole).
    pub dm_throttled: Counter,
    /// Topic messages published by local agents.
    pub topic_out: Counter,
    /// Topic messages from other nodes stored here.
    pub topic_in: Counter,
    /// Topic messages fetched by catch-up (gossip had not brought them).
    pub topic_synced: Counter,
    /// Topic messages from other nodes not taken, by reason.
    pub topic_dropped: Family<KindLabel, Counter>,
    /// Admission verdicts: `admitted`, `refused`.
    pub admissions: Family<KindLabel, Counter>,
    /// Hole punches: `attempt`, `success`, `failure`.
    pub hole_punches: Family<KindLabel, Counter>,
    /// Local API requests, by kind and outcome.
    pub api_requests: Family<RequestLabel, Counter>,
    /// Local API request latency in seconds, by kind and outcome.
    pub api_latency: HistogramFamily<RequestLabel>,
    /// Outbox entries by state (set at scrape time).
    pub outbox: Family<StateLabel, Gauge>,
    /// Inbox entries by state (set at scrape time).
    pub inbox: Family<StateLabel, Gauge>,
    /// Connected members by best path (set at scrape time).
    pub peers: Family<PathLabel, Gauge>,
    /// Nodes seen nearby that are not members (set at scrape time).
    pub outsiders: Gauge,
    /// Topic messages stored (set at scrape time).
    pub topic_messages: Gauge,
    /// Local agents with a live session (set at scrape time).
    pub agents_online: Gauge,
    /// Items waiting in each internal queue (set at scrape time).
    pub queue_depth: Family<QueueLabel, Gauge>,
    /// Tasks alive in the daemon's runtime (set at scrape time).
    pub tasks_alive: Gauge,
    /// Open local API connections.
    pub api_connections: Gauge,
}

/// An internal queue.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// `net_commands`, `net_events`, `store_writes`, `courier_kicks`, `sync_kicks`,
    /// `events`, `inbound_in_flight`.
    pub queue: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let libp2p = libp2p::metrics::Metrics::new(&mut registry);
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            libp2p,
            dm_sent: Counter::default(),
            dm_delivered: Counter::default(),
            dm_retried: Counter::default(),
            dm_dead: Counter::default(),
            dm_read: Counter::default(),
            dm_received: Counter::default(),
            dm_duplicates: Counter::default(),
            dm_rejected: Counter::default(),
            dm_throttled: Counter::default(),
            topic_out: Counter::default(),
            topic_in: Counter::default(),
            topic_synced: Counter::default(),
            topic_dropped: Family::default(),
            admissions: Family::default(),
            hole_punches: Family::default(),
            api_requests: Family::default(),
            api_latency: Family::new_with_constructor(latency_histogram),
            outbox: Family::default(),
            inbox: Family::default(),
            peers: Family::default(),
            outsiders: Gauge::default(),
            topic_messages: Gauge::default(),
            agents_online: Gauge::default(),
            queue_depth: Family::default(),
            tasks_alive: Gauge::default(),
            api_connections: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("agentmesh");
        m.register_messages(r);
        m.register_state(r);
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }

    /// Registers the message counters (direct and topic) under `r`.
    fn register_messages(&self, r: &mut Registry) {
        r.register("dm_sent", "Direct messages sent by local agents", self.dm_sent.clone());
        r.register(
            "dm_delivered",
            "Direct messages acknowledged by the recipient node",
            self.dm_delivered.clone(),
        );
        r.register(
            "dm_retried",
            "Direct messages in failed delivery attempts (retried later)",
            self.dm_retried.clone(),
        );
        r.register(
            "dm_dead_lettered",
            "Direct messages that became dead letters",
            self.dm_dead.clone(),
        );
        r.register(
            "dm_read",
            "Direct messages sent here whose recipient was shown them (read receipts)",
            self.dm_read.clone(),
        );
        r.register(
            "dm_received",
            "Direct messages from other nodes stored for local agents",
            self.dm_received.clone(),
        );
        r.register(
            "dm_duplicates",
            "Inbound direct messages already stored (retries)",
            self.dm_duplicates.clone(),
        );
        r.register(
            "dm_rejected",
            "Inbound direct messages refused for good",
            self.dm_rejected.clone(),
        );
        r.register(
            "dm_throttled",
            "Inbound delivery requests answered busy or rate limited",
            self.dm_throttled.clone(),
        );
        r.register(
            "topic_out",
            "Topic messages published by local agents",
            self.topic_out.clone(),
        );
        r.register(
            "topic_in",
            "Topic messages from other nodes stored here",
            self.topic_in.clone(),
        );
        r.register(
            "topic_synced",
            "Topic messages fetched by catch-up from their publisher (missed by gossip)",
            self.topic_synced.clone(),
        );
        r.register(
            "topic_dropped",
            "Topic messages from other nodes not taken, by reason",
            self.topic_dropped.clone(),
        );
    }

    /// Registers the rest under `r`: admissions, hole punches, the local API, store and
    /// network state, queues and tasks.
    fn register_state(&self, r: &mut Registry) {
        r.register("admissions", "Admission verdicts on peers", self.admissions.clone());
        r.register(
            "hole_punches",
            "Hole punch attempts and outcomes",
            self.hole_punches.clone(),
        );
        r.register("api_requests", "Local API requests", self.api_requests.clone());
        r.register(
            "api_request_seconds",
            "Local API request latency",
            self.api_latency.clone(),
        );
        r.register("outbox_messages", "Outbox entries by state", self.outbox.clone());
        r.register("inbox_messages", "Inbox entries by state", self.inbox.clone());
        r.register("connected_peers", "Connected members by best path", self.peers.clone());
        r.register("outsiders", "Nodes nearby that are not members", self.outsiders.clone());
        r.register("topic_messages", "Topic messages stored", self.topic_messages.clone());
        r.register(
            "agents_online",
            "Local agents with a live session",
            self.agents_online.clone(),
        );
        r.register(
            "queue_depth",
            "Items waiting in an internal queue (every queue is bounded)",
            self.queue_depth.clone(),
        );
        r.register("tasks_alive", "Tasks alive in the daemon", self.tasks_alive.clone());
        r.register(
            "api_connections",
            "Open local API connections",
            self.api_connections.clone(),
        );
    }

    /// The registry, to register more metrics (libp2p's bandwidth counters at swarm build).
    pub fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one local API request.
    pub fn api_request(&self, request: &'static str, outcome: &'static str, took: Duration) {
        let l = RequestLabel { request, outcome };
        self.api_requests.get_or_create(&l).inc();
        self.api_latency.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// Counts one kind in a labelled counter family.
    pub fn count(family: &Family<KindLabel, Counter>, kind: &'static str) {
        family.get_or_create(&KindLabel { kind }).inc();
    }

    /// Everything, in the Prometheus text format (gauges as last set).
    pub fn encode_counters(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until `cancel`; `refresh` is called before each scrape
/// to set the gauges. Returns once listening (binding errors are returned).
pub async fn serve<F, Fut>(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: F,
    cancel: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let refresh = Arc::new(refresh);
    let slots = Arc::new(Semaphore::new(MAX_SCRAPES));
    let task = tokio::spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (metrics, refresh) = (metrics.clone(), refresh.clone());
            tokio::spawn(async move {
                let head = tokio::time::timeout(SCRAPE_READ_TIMEOUT, read_head(&mut stream)).await;
                let response = match head {
                    Ok(Ok(h)) if h.starts_with("GET /metrics ") || h.starts_with("GET /metrics?") => {
                        let started = Instant::now();
                        refresh().await;
                        let body = metrics.encode_counters();
                        tracing::debug!(took = ?started.elapsed(), bytes = body.len(), "metrics scraped");
                        http(
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            &body,
                        )
                    }
                    Ok(Ok(h)) if h.starts_with("GET ") => http("404 Not Found", "text/plain", "try /metrics\n"),
                    Ok(Ok(_)) => http("405 Method Not Allowed", "text/plain", "GET /metrics only\n"),
                    _ => http("400 Bad Request", "text/plain", "bad request\n"),
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
                drop(permit);
            });
        }
    });
    Ok((local, task))
}

async fn read_head(stream: &mut tokio::net::TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            break;
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
