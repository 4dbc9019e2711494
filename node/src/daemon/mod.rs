//! Starting and stopping a node daemon: home, lock, config, identity, store, socket,
//! swarm, and the tasks that run them.
//!
//! One daemon per home: `daemon.lock` is held with `flock` for the daemon's life, so a
//! second daemon on the same home refuses to start (it names the running one's pid), and
//! a daemon that died leaves nothing that blocks the next start (a stale socket is
//! replaced).

mod detach;
mod on_demand;
mod start;
mod stop;

use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Overrides};
use crate::home::{Home, HomeError};
use crate::identity::IdentityError;
use crate::ids::AgentName;
use crate::mesh::MeshError;
use crate::net::NetError;
use crate::node::Node;
use crate::store::StoreError;
use crate::{dnssd, server, settings};

pub use detach::{Detached, ReadyLine, detach, report_ready, spawn_detached};
pub use on_demand::{ON_DEMAND_ENV, START_RACE_WAIT, connect_or_spawn, started_by_adapter};

/// Environment variable telling `mesh up` to report readiness on stdout as one JSON line
/// (set by [`spawn_detached`]).
pub const READY_ENV: &str = "MESH_DAEMON_READY";
/// Longest wait for a detached daemon to report.
pub const DETACH_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait, at a clean stop, for work in flight (API requests, deliveries out and in)
/// to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(8);
/// Longest wait, at a clean stop, for the network to send its last answers and close its
/// connections.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a task to end once told to.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Home directory problem.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// Config file problem.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Identity problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Mesh key problem.
    #[error(transparent)]
    Mesh(#[from] MeshError),
    /// Store problem.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Socket problem.
    #[error(transparent)]
    Socket(#[from] server::SocketError),
    /// Networking problem.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Saved settings problem.
    #[error(transparent)]
    Settings(#[from] settings::SettingsError),
    /// The node was stopped with `mesh down`: only `mesh up` starts it again.
    #[error("the agentmesh node was stopped with `mesh down`; run `mesh up` (or `mesh up --detach`) to start it again")]
    StoppedByUser,
    /// A daemon already runs on this home.
    #[error("a daemon is already running for home {home}{}; stop it with: mesh down", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning {
        /// The home.
        home: PathBuf,
        /// Its pid, if recorded.
        pid: Option<u32>,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// What it takes to start a daemon.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// The home directory.
    pub home: Home,
    /// Values from flags and environment, merged by `mesh up` with the settings it saved
    /// ([`crate::settings`]).
    pub overrides: Overrides,
    /// The local user's agent name (default: the login name).
    pub user: Option<AgentName>,
}

/// What a started daemon reports.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadyInfo {
    /// Its PeerId.
    pub peer_id: PeerId,
    /// Its name.
    pub name: String,
    /// Its listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Its home.
    pub home: PathBuf,
    /// Its process id.
    pub pid: u32,
    /// Where it serves metrics, if it does.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
}

/// A running daemon.
pub struct Daemon {
    node: Node,
    /// Asks for a stop: new work is refused, work in flight finishes.
    cancel: CancellationToken,
    /// Ends the network and core tasks at once (after the clean part of a stop, or when
    /// the start fails).
    hard: CancellationToken,
    /// Tasks that finish their work in flight when `cancel` fires.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    /// The network actor and the core loop: stopped last.
    net_task: JoinHandle<()>,
    core_task: JoinHandle<()>,
    dnssd: Option<dnssd::DnsSd>,
    info: ReadyInfo,
    socket: PathBuf,
    _lock: File,
}

/// Options for a file of the daemon's own in the home (its lock, its log): created
/// owner-only (0600), never opened through a symbolic link.
fn private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    options
}

/// The OS login name as an agent name.
pub fn login_agent() -> AgentName {
    let login = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| Some(whoami::username()))
        .unwrap_or_default();
    AgentName::from_login(&login)
}

impl Daemon {
    /// What the daemon reported at start.
    pub fn info(&self) -> &ReadyInfo {
        &self.info
    }

    /// The node service.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A token that stops the daemon when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until something asks the daemon to stop (API `Shutdown`, or the token), then
    /// stops it cleanly.
    pub async fn run_until_stopped(self) {
        self.cancel.cancelled().await;
        self.stop().await;
    }
}

/// Runs a daemon in the foreground until SIGINT/SIGTERM or `mesh down`.
pub async fn run_foreground(opts: DaemonOptions, ready: impl FnOnce(&ReadyInfo)) -> Result<(), DaemonError> {
    let daemon = Daemon::start(opts).await?;
    ready(daemon.info());
    let cancel = daemon.cancel_token();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
            _ = term.recv() => tracing::info!("terminated; stopping"),
            _ = cancel.cancelled() => {}
        }
        cancel.cancel();
    });
    daemon.run_until_stopped().await;
    Ok(())
}
