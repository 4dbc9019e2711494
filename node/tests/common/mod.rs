//! In-process nodes on 127.0.0.1 for integration tests: each with its own temp home, no
//! LAN discovery, fast timers, and a local API client. Waiting is done on events with a
//! deadline, never by sleeping.
//!
//! Nodes started with [`TestNode::start`] are members of one mesh (the test binary's
//! [`test_mesh`], written to each home's `mesh.key` as `mesh join` would);
//! [`TestNode::start_alone`] gives a node a mesh of its own.

#![allow(dead_code, missing_docs)]

use std::time::Duration;

use mesh_node::api::client::Client;
use mesh_node::api::{AgentSpec, Event, MessageView, Request, Response, SendReceipt, SendRequest};
use mesh_node::config::Overrides;
use mesh_node::daemon::{Daemon, DaemonOptions};
use mesh_node::home::Home;
use mesh_node::ids::{AgentName, NodeName};
use mesh_node::mesh::Membership;
use tokio::sync::mpsc;

/// `MESH_TEST_LOG=<filter>` (e.g. `mesh_node=debug`) prints the nodes' logs.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Ok(filter) = std::env::var("MESH_TEST_LOG") {
        ONCE.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        });
    }
}

/// The founding member of the test mesh: it vouches for every node given the mesh, as an
/// inviter does in `mesh join`.
pub fn founder() -> &'static libp2p::identity::Keypair {
    static KEY: std::sync::OnceLock<libp2p::identity::Keypair> = std::sync::OnceLock::new();
    KEY.get_or_init(libp2p::identity::Keypair::generate_ed25519)
}

/// The mesh shared by the nodes of this test binary.
pub fn test_mesh() -> &'static Membership {
    static MESH: std::sync::OnceLock<Membership> = std::sync::OnceLock::new();
    MESH.get_or_init(|| {
        let mut m = Membership::generate();
        m.add_member(founder().public().to_peer_id());
        m
    })
}

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

pub const FAST_CONFIG: &str = r#"
[presence]
heartbeat = "300ms"
[delivery]
retry_min = "50ms"
retry_max = "400ms"
send_wait = "3s"
request_timeout = "3s"
"#;

pub struct TestNode {
    pub name: String,
    pub dir: tempfile::TempDir,
    pub home: Home,
    pub daemon: Option<Daemon>,
    pub client: Client,
    pub port: u16,
}

impl TestNode {
    /// Starts a node named `name` (its user agent is `user`).
    pub async fn start(name: &str) -> TestNode {
        Self::start_with(name, FAST_CONFIG).await
    }

    pub async fn start_with(name: &str, config: &str) -> TestNode {
        Self::start_in(name, config, Some(test_mesh())).await
    }

    /// Starts a node in a mesh of its own (an outsider to the others).
    pub async fn start_alone(name: &str) -> TestNode {
        Self::start_in(name, FAST_CONFIG, None).await
    }

    /// Starts a node in `mesh` (None: it creates its own).
    pub async fn start_in(name: &str, config: &str, mesh: Option<&Membership>) -> TestNode {
        Self::start_full(name, config, mesh, 0).await
    }

    /// Starts a node in `mesh` listening on TCP `port` (0: any).
    pub async fn start_full(name: &str, config: &str, mesh: Option<&Membership>, port: u16) -> TestNode {
        init_logs();
        let dir = tempfile::tempdir().expect("tempdir");
        let home = Home::resolve(Some(dir.path().join("home"))).expect("home");
        home.create().expect("create home");
        std::fs::write(home.config_path(), config).expect("config");
        if let Some(m) = mesh {
            m.provision(&home.identity_path(), &home.mesh_path(), founder())
                .expect("mesh key");
        }
        let (daemon, port) = launch(&home, name, port).await;
        let client = connect(&home).await;
        TestNode {
            name: name.to_string(),
            dir,
            home,
            daemon: Some(daemon),
            client,
            port,
        }
    }

    pub fn peer_id(&self) -> libp2p::PeerId {
        self.client.node().peer_id
    }

    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.port, self.peer_id())
    }

    /// Stops the daemon cleanly (the home is kept).
    pub async fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop().await;
        }
    }

    /// Starts the daemon again on the same home and port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let (daemon, port) = launch(&self.home, &self.name, self.port).await;
        self.daemon = Some(daemon);
        self.port = port;
        self.client = connect(&self.home).await;
    }

    pub async fn call(&self, r: Request) -> Result<Response, mesh_node::api::client::ClientError> {
        self.client.call(r).await
    }

    /// Dials `other` and returns once its agents are known.
    pub async fn dial(&self, other: &TestNode) {
        let r = self.call(Request::Dial { addr: other.addr() }).await.expect("dial");
        assert!(matches!(r, Response::Dialed { peer } if peer == other.peer_id()));
    }

    pub async fn register(&self, agent: &str) {
        self.call(Request::Register {
            agent: AgentSpec {
                name: agent.into(),
                kind: "other".into(),
                ..Default::default()
            },
            attach: false,
        })
        .await
        .expect("register");
    }

    pub async fn send(&self, from: &str, to: &str, text: &str) -> SendReceipt {
        match self
            .call(Request::Send(SendRequest {
                from: from.into(),
                to: to.into(),
                text: text.into(),
                reply_to: None,
                id: None,
            }))
            .await
            .expect("send")
        {
            Response::Sent(r) => r,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Everything in `agent`'s inbox, read or not, marking nothing read (page by page).
    pub async fn whole_inbox(&self, agent: &str) -> Vec<MessageView> {
        self.inbox_pages(agent, true, false).await
    }

    /// The unread messages of `agent`, marking them read (page by page).
    pub async fn inbox(&self, agent: &str) -> Vec<MessageView> {
        self.inbox_pages(agent, false, true).await
    }

    async fn inbox_pages(&self, agent: &str, all: bool, mark_read: bool) -> Vec<MessageView> {
        self.client.inbox_pages(agent, all, mark_read).await.expect("inbox")
    }

    /// A fresh connection watching `agents` (empty: all).
    pub async fn watch(&self, agents: &[&str]) -> Watch {
        let client = connect(&self.home).await;
        let rx = client
            .watch(agents.iter().map(|s| s.to_string()).collect())
            .await
            .expect("watch");
        Watch { rx, _client: client }
    }
}

/// An event stream and the connection it comes over.
pub struct Watch {
    pub rx: mpsc::Receiver<Event>,
    _client: Client,
}

async fn launch(home: &Home, name: &str, port: u16) -> (Daemon, u16) {
    let opts = DaemonOptions {
        home: home.clone(),
        overrides: Overrides {
            name: Some(NodeName::new(name).expect("node name")),
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("addr")],
            no_mdns: true,
            ..Overrides::default()
        },
        user: Some(AgentName::new("user").expect("agent")),
    };
    let daemon = tokio::time::timeout(WAIT, Daemon::start(opts))
        .await
        .expect("daemon start timed out")
        .expect("daemon start");
    let port = daemon
        .info()
        .listen
        .iter()
        .find_map(|a| {
            a.iter().find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
                _ => None,
            })
        })
        .expect("tcp port");
    (daemon, port)
}

async fn connect(home: &Home) -> Client {
    Client::connect(home, "test").await.expect("connect")
}

/// Waits for an event matching `pred`, or panics after [`WAIT`].
pub async fn wait_event(w: &mut Watch, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, w.rx.recv()).await {
            Ok(Some(e)) if pred(&e) => return e,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream closed while waiting for {what}"),
            Err(_) => panic!("timed out waiting for {what}"),
        }
    }
}

/// Collects `n` messages for `agent` from a watch stream.
pub async fn wait_messages(w: &mut Watch, agent: &str, n: usize) -> Vec<MessageView> {
    let mut got = Vec::new();
    while got.len() < n {
        let e = wait_event(
            w,
            &format!("message {} of {n} for {agent}", got.len() + 1),
            |e| matches!(e, Event::Message(m) if m.agent == agent),
        )
        .await;
        if let Event::Message(m) = e {
            got.push(m);
        }
    }
    got
}

/// Awaits a request and unwraps the expected response variant.
#[macro_export]
macro_rules! get {
    ($call:expr, $variant:ident) => {
        match $call.await.expect("request failed") {
            mesh_node::api::Response::$variant(x) => x,
            other => panic!("unexpected answer {other:?}"),
        }
    };
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
