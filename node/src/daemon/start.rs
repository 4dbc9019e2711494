//! `Daemon::start`: home, lock, config, identity, mesh, store, socket, then the network,
//! the core loop and the tasks around them, in that order; a start that fails part way
//! stops everything it started.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Daemon, DaemonError, DaemonOptions, ReadyInfo, login_agent, private_file};
use crate::config::{Config, Overrides};
use crate::home::Home;
use crate::identity;
use crate::ids::{AgentName, NodeName};
use crate::mesh::Membership;
use crate::metrics::Metrics;
use crate::net::{self, NetHandle};
use crate::node::{COURIER_QUEUE, Node, Parts, SyncRequestIn};
use crate::store::{Store, StoreError};
use crate::{courier, dnssd, server};

fn take_lock(home: &Home) -> Result<File, DaemonError> {
    let path = home.lock_path();
    let mut file = private_file()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| DaemonError::Other(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = writeln!(file, "{}", std::process::id());
            let _ = file.sync_all();
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut s = String::new();
            let _ = file.read_to_string(&mut s);
            Err(DaemonError::AlreadyRunning {
                home: home.path().to_path_buf(),
                pid: s.trim().parse().ok(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(DaemonError::Other(format!("cannot lock {}: {e}", path.display()))),
    }
}

impl Daemon {
    /// Starts a daemon on the current tokio runtime; returns once it listens and serves the
    /// local API.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let l = Loaded::load(opts.home, &opts.overrides).await?;

        let metrics = Arc::new(Metrics::new());
        let (swarm, listeners, guard) = net::build(&l.keypair, &l.config, &l.mesh, &metrics)?;
        let cancel = CancellationToken::new();
        let hard = CancellationToken::new();
        let (net, net_events, net_task) = net::spawn(
            swarm,
            listeners,
            guard,
            &l.config,
            l.mesh.clone(),
            l.name.to_string(),
            metrics.clone(),
            hard.clone(),
        );
        let (courier_tx, courier_rx) = mpsc::channel(COURIER_QUEUE);
        let (sync_tx, sync_rx) = mpsc::channel(crate::sync::SYNC_QUEUE);
        let (sync_requests, sync_requests_rx) = mpsc::channel(crate::sync::SYNC_REQUESTS_QUEUE);
        let node = Node::new(Parts {
            peer_id: l.peer_id,
            keypair: l.keypair.clone(),
            mesh: l.mesh,
            metrics: metrics.clone(),
            name: l.name.clone(),
            home: l.home.clone(),
            config: l.config.clone(),
            store: l.store,
            net: net.clone(),
            courier: courier_tx,
            sync: sync_tx,
            sync_requests,
            shutdown: cancel.clone(),
        });
        let core_task = tokio::spawn(node.clone().run_core(net_events, hard.clone()));
        let mut tasks = background_tasks(&node, courier_rx, sync_rx, sync_requests_rx, &cancel);
        let user = opts.user.unwrap_or_else(login_agent);
        let serving = serve(&node, &l.config, l.listener, user, &cancel, &mut tasks).await;
        let (metrics_addr, listen) = match serving {
            Ok(up) => up,
            Err(e) => {
                // A start that fails part way stops everything it started.
                cancel.cancel();
                hard.cancel();
                return Err(e);
            }
        };
        let dnssd = start_dnssd(&l.config, l.peer_id, &l.name, &listen, &net, &cancel);
        let info = ReadyInfo {
            peer_id: l.peer_id,
            name: l.name.to_string(),
            listen,
            home: l.home.path().to_path_buf(),
            pid: std::process::id(),
            metrics: metrics_addr,
        };
        tracing::info!(peer_id = %info.peer_id, name = %info.name, "node ready");
        Ok(Daemon {
            node,
            cancel,
            hard,
            tasks,
            net_task,
            core_task,
            dnssd,
            info,
            socket: l.home.socket_path(),
            _lock: l.lock,
        })
    }
}

/// What a start loads before anything runs, in order: the home and its lock, the config,
/// the identity, the mesh, the store, the socket.
struct Loaded {
    home: Home,
    lock: File,
    config: Config,
    keypair: libp2p::identity::Keypair,
    peer_id: PeerId,
    mesh: Membership,
    store: Store,
    listener: tokio::net::UnixListener,
    name: NodeName,
}

impl Loaded {
    async fn load(home: Home, overrides: &Overrides) -> Result<Self, DaemonError> {
        home.create()?;
        home.check_files()?;
        let lock = take_lock(&home)?;
        let config = Config::load(&home.config_path(), overrides)?;
        let keypair = identity::load_or_create(&home.identity_path())?;
        let peer_id = keypair.public().to_peer_id();
        let mesh = load_mesh(&home, &config, peer_id)?;
        let store = open_store(&home.store_path(), peer_id).await?;
        let listener = server::bind(&home.socket_path())?;
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| NodeName::from_hostname(&gethostname::gethostname().to_string_lossy()));
        Ok(Loaded {
            home,
            lock,
            config,
            keypair,
            peer_id,
            mesh,
            store,
            listener,
            name,
        })
    }
}

/// The tasks that finish their work in flight at a stop: the courier and catch-up.
fn background_tasks(
    node: &Node,
    courier_rx: mpsc::Receiver<PeerId>,
    sync_rx: mpsc::Receiver<PeerId>,
    sync_requests_rx: mpsc::Receiver<SyncRequestIn>,
    cancel: &CancellationToken,
) -> Vec<(&'static str, JoinHandle<()>)> {
    vec![
        (
            "courier",
            tokio::spawn(courier::run(node.clone(), courier_rx, cancel.clone())),
        ),
        (
            "catch-up",
            tokio::spawn(crate::sync::run(
                node.clone(),
                sync_rx,
                sync_requests_rx,
                cancel.clone(),
            )),
        ),
    ]
}

/// The mesh this node belongs to (every node, in open mode), the node itself listed in it.
fn load_mesh(home: &Home, config: &Config, peer_id: PeerId) -> Result<Membership, DaemonError> {
    if config.open {
        tracing::warn!("OPEN MODE: any agentmesh node in open mode on reachable networks is admitted without a secret");
        return Ok(Membership::open());
    }
    let mut mesh = Membership::load_or_create(&home.mesh_path())?;
    // A node is a member of its own mesh (a founder lists itself; a joiner is listed by its
    // inviter already).
    if mesh.add_member(peer_id) {
        mesh.save(&home.mesh_path())?;
    }
    Ok(mesh)
}

/// With the network and the core loop running: the metrics endpoint (if asked for), the
/// node's start from its store, the local API, then the wait for every listener's address.
/// Returns where metrics are served and the listen addresses.
async fn serve(
    node: &Node,
    config: &Config,
    listener: tokio::net::UnixListener,
    user: AgentName,
    cancel: &CancellationToken,
    tasks: &mut Vec<(&'static str, JoinHandle<()>)>,
) -> Result<(Option<SocketAddr>, Vec<Multiaddr>), DaemonError> {
    let metrics_addr = match config.metrics {
        Some(addr) => {
            let (local, task) = serve_metrics(node, addr, cancel).await?;
            tasks.push(("metrics", task));
            Some(local)
        }
        None => None,
    };
    if let Err(e) = node.start(user).await {
        return Err(DaemonError::Other(format!("startup failed: {e}")));
    }
    if config.web.enabled {
        // The node runs without its page rather than not at all; `mesh open` says why.
        if let Err(e) = node.page().await {
            tracing::warn!(error = %e, "the page is not served");
        }
    }
    // Requests are served once the node knows what its store knows (agents, nodes,
    // subscriptions); clients connecting earlier wait in the socket's backlog.
    tasks.push((
        "api",
        tokio::spawn(server::serve(listener, node.clone(), cancel.clone())),
    ));

    // Wait until every listener has reported its address.
    let mut listening = node.0.net.listening();
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        listening.wait_for(|l| l.complete && !l.addrs.is_empty()),
    )
    .await;
    match ready {
        Ok(Ok(l)) => Ok((metrics_addr, l.addrs.clone())),
        _ => Err(DaemonError::Other(
            "the network listeners did not come up within 10 s".into(),
        )),
    }
}

/// The `/metrics` endpoint at `addr`, refreshed from the node at each scrape.
async fn serve_metrics(
    node: &Node,
    addr: SocketAddr,
    cancel: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), DaemonError> {
    let n = node.clone();
    let refresh = move || {
        let n = n.clone();
        async move { n.refresh_metrics().await }
    };
    match crate::metrics::serve(addr, node.0.metrics.clone(), refresh, cancel.clone()).await {
        Ok((local, task)) => {
            tracing::info!(addr = %local, "serving metrics at http://{local}/metrics");
            Ok((local, task))
        }
        Err(e) => Err(DaemonError::Other(format!("cannot serve metrics on {addr}: {e}"))),
    }
}

/// DNS-SD advertisement and browsing, when the config asks for it and the host allows it.
fn start_dnssd(
    config: &Config,
    peer_id: PeerId,
    name: &NodeName,
    listen: &[Multiaddr],
    net: &NetHandle,
    cancel: &CancellationToken,
) -> Option<dnssd::DnsSd> {
    if !config.dnssd() {
        return None;
    }
    match dnssd::DnsSd::start(peer_id, name, listen, net.clone(), cancel.clone()) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "DNS-SD advertisement unavailable");
            None
        }
    }
}

async fn open_store(path: &Path, owner: PeerId) -> Result<Store, StoreError> {
    // We hold the daemon lock, so "in use" can only be a previous daemon of this same
    // process still letting go of the file; give it a moment.
    for _ in 0..100 {
        match Store::open(path, owner) {
            Err(StoreError::Locked(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => return other,
        }
    }
    Store::open(path, owner)
}
