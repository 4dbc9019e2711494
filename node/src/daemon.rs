//! Starting and stopping a node daemon: home, lock, config, identity, store, socket,
//! swarm, and the tasks that run them.
//!
//! One daemon per home: `daemon.lock` is held with `flock` for the daemon's life, so a
//! second daemon on the same home refuses to start (it names the running one's pid), and
//! a daemon that died leaves nothing that blocks the next start (a stale socket is
//! replaced).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Overrides};
use crate::home::{Home, HomeError};
use crate::identity::{self, IdentityError};
use crate::ids::{AgentName, NodeName};
use crate::mesh::{Membership, MeshError};
use crate::metrics::Metrics;
use crate::net::{self, NetError};
use crate::node::{COURIER_QUEUE, Node, Parts};
use crate::server;
use crate::store::{Store, StoreError};
use crate::{courier, dnssd, settings};

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

fn take_lock(home: &Home) -> Result<File, DaemonError> {
    let path = home.lock_path();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
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
    /// Starts a daemon on the current tokio runtime; returns once it listens and serves the
    /// local API.
    pub async fn start(opts: DaemonOptions) -> Result<Daemon, DaemonError> {
        let home = opts.home;
        home.create()?;
        home.check_files()?;
        let lock = take_lock(&home)?;
        let config = Config::load(&home.config_path(), &opts.overrides)?;
        let keypair = identity::load_or_create(&home.identity_path())?;
        let peer_id = keypair.public().to_peer_id();
        let mesh = if config.open {
            tracing::warn!(
                "OPEN MODE: any agentmesh node in open mode on reachable networks is admitted without a secret"
            );
            Membership::open()
        } else {
            let mut mesh = Membership::load_or_create(&home.mesh_path())?;
            // A node is a member of its own mesh (a founder lists itself; a joiner is
            // listed by its inviter already).
            if mesh.add_member(peer_id) {
                mesh.save(&home.mesh_path())?;
            }
            mesh
        };
        let store = open_store(&home.store_path(), peer_id).await?;
        let listener = server::bind(&home.socket_path())?;
        let name = config
            .name
            .clone()
            .unwrap_or_else(|| NodeName::from_hostname(&gethostname::gethostname().to_string_lossy()));

        let metrics = std::sync::Arc::new(Metrics::new());
        let (swarm, listeners, guard) = net::build(&keypair, &config, &mesh, &metrics)?;
        let cancel = CancellationToken::new();
        let hard = CancellationToken::new();
        // A start that fails part way stops everything it started.
        let abort = {
            let (c, h) = (cancel.clone(), hard.clone());
            move || {
                c.cancel();
                h.cancel();
            }
        };
        let (net, net_events, net_task) = net::spawn(
            swarm,
            listeners,
            guard,
            &config,
            mesh.clone(),
            name.to_string(),
            metrics.clone(),
            hard.clone(),
        );
        let (courier_tx, courier_rx) = mpsc::channel(COURIER_QUEUE);
        let (sync_tx, sync_rx) = mpsc::channel(crate::sync::SYNC_QUEUE);
        let (sync_requests, sync_requests_rx) = mpsc::channel(crate::sync::SYNC_REQUESTS_QUEUE);
        let node = Node::new(Parts {
            peer_id,
            keypair: keypair.clone(),
            mesh,
            metrics: metrics.clone(),
            name: name.clone(),
            home: home.clone(),
            config: config.clone(),
            store,
            net: net.clone(),
            courier: courier_tx,
            sync: sync_tx,
            sync_requests,
            shutdown: cancel.clone(),
        });
        let core_task = tokio::spawn(node.clone().run_core(net_events, hard.clone()));
        let mut tasks = Vec::new();
        tasks.push((
            "courier",
            tokio::spawn(courier::run(node.clone(), courier_rx, cancel.clone())),
        ));
        tasks.push((
            "catch-up",
            tokio::spawn(crate::sync::run(
                node.clone(),
                sync_rx,
                sync_requests_rx,
                cancel.clone(),
            )),
        ));
        let metrics_addr = match config.metrics {
            Some(addr) => {
                let n = node.clone();
                let refresh = move || {
                    let n = n.clone();
                    async move { n.refresh_metrics().await }
                };
                match crate::metrics::serve(addr, metrics.clone(), refresh, cancel.clone()).await {
                    Ok((local, task)) => {
                        tracing::info!(addr = %local, "serving metrics at http://{local}/metrics");
                        tasks.push(("metrics", task));
                        Some(local)
                    }
                    Err(e) => {
                        abort();
                        return Err(DaemonError::Other(format!("cannot serve metrics on {addr}: {e}")));
                    }
                }
            }
            None => None,
        };
        let user = opts.user.unwrap_or_else(login_agent);
        if let Err(e) = node.start(user).await {
            abort();
            return Err(DaemonError::Other(format!("startup failed: {e}")));
        }
        // Requests are served once the node knows what its store knows (agents, nodes,
        // subscriptions); clients connecting earlier wait in the socket's backlog.
        tasks.push((
            "api",
            tokio::spawn(server::serve(listener, node.clone(), cancel.clone())),
        ));

        // Wait until every listener has reported its address.
        let mut listening = net.listening();
        let ready = tokio::time::timeout(
            Duration::from_secs(10),
            listening.wait_for(|l| l.complete && !l.addrs.is_empty()),
        )
        .await;
        let listen = match ready {
            Ok(Ok(l)) => l.addrs.clone(),
            _ => {
                abort();
                return Err(DaemonError::Other(
                    "the network listeners did not come up within 10 s".into(),
                ));
            }
        };
        let dnssd = if config.dnssd() {
            match dnssd::DnsSd::start(peer_id, &name, &listen, net.clone(), cancel.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!(error = %e, "DNS-SD advertisement unavailable");
                    None
                }
            }
        } else {
            None
        };
        let info = ReadyInfo {
            peer_id,
            name: name.to_string(),
            listen,
            home: home.path().to_path_buf(),
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
            socket: home.socket_path(),
            _lock: lock,
        })
    }

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

    /// Stops cleanly, in order: no new work is taken (API requests, deliveries); what is in
    /// flight finishes: API requests are answered, outgoing deliveries get their answers and
    /// are settled, incoming ones are committed and answered; then the network sends its last
    /// answers and closes every connection, the store commits what is queued, the socket is
    /// removed and the lock released. Bounded by [`DRAIN_TIMEOUT`] and [`FLUSH_TIMEOUT`]:
    /// what does not finish in time is done again after the next start (the sender retries,
    /// the recipient drops the duplicate), never lost.
    pub async fn stop(self) {
        let started = std::time::Instant::now();
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(task = name, "task did not finish its work in time");
                task.abort();
            }
        }
        if !self.node.drain_inbound(deadline).await {
            tracing::warn!("incoming deliveries still being stored at the deadline (their senders will retry)");
        }
        self.node.0.net.stop(FLUSH_TIMEOUT).await;
        self.hard.cancel();
        for (name, mut task) in [("network", self.net_task), ("core", self.core_task)] {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!(task = name, "task did not stop in time");
                task.abort();
            }
        }
        if let Some(d) = self.dnssd {
            let _ = tokio::task::spawn_blocking(move || d.stop()).await;
        }
        self.node.0.store.close().await;
        let _ = std::fs::remove_file(&self.socket);
        drop(self.node);
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "daemon stopped");
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

/// The line a daemon started by [`spawn_detached`] writes on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadyLine {
    /// Started.
    Ready(ReadyInfo),
    /// Another daemon already runs on this home.
    AlreadyRunning(String),
    /// Could not start.
    Failed(String),
}

/// Writes the ready line for a detached daemon, then points stdout at /dev/null so nothing
/// else is written into the parent's pipe.
pub fn report_ready(line: &ReadyLine) {
    let Ok(text) = serde_json::to_string(line) else { return };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    drop(out);
    silence_stdout();
}

#[allow(unsafe_code)]
fn silence_stdout() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open for the duration of the call, and dup2 only
        // replaces descriptor 1; `null` is closed afterwards, fd 1 keeps its own reference.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// What [`spawn_detached`] found.
#[derive(Clone, Debug)]
pub enum Detached {
    /// A new daemon started.
    Started(ReadyInfo),
    /// One was already running.
    AlreadyRunning(String),
}

/// Makes `cmd` start a daemon that belongs to nobody: the process spawned starts a session
/// of its own (no terminal, its own process group, so Ctrl-C and a client that kills its
/// server's process group do not reach it), forks, and exits, so that the daemon is not a
/// descendant of the caller either (a client that kills its MCP server's whole process
/// tree, as OpenCode does, leaves it running).
#[allow(unsafe_code)]
pub fn detach(cmd: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls are made (setsid, fork,
    // _exit), and nothing is allocated. The intermediate process exits at once with
    // `_exit` (no destructors, no atexit handlers); the grandchild goes on to exec, so
    // std's exec-error pipe (close-on-exec) still reports a failed exec to the caller.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
}

fn spawn_on_demand(exe: &Path, args: &[OsString], home: &Home) -> Result<Detached, DaemonError> {
    spawn_detached_with(exe, args, home, &[(ON_DEMAND_ENV, "1")])
}

/// Starts `exe args...` (which must be `mesh ... up ...` without `--detach`) as a daemon
/// that outlives its starter (see `detach`), logging to `<home>/daemon.log`, and waits
/// until it reports ready.
pub fn spawn_detached(exe: &Path, args: &[OsString], home: &Home) -> Result<Detached, DaemonError> {
    spawn_detached_with(exe, args, home, &[])
}

fn spawn_detached_with(
    exe: &Path,
    args: &[OsString],
    home: &Home,
    env: &[(&str, &str)],
) -> Result<Detached, DaemonError> {
    home.create()?;
    home.check_files()?;
    let log_path = home.log_path();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .map_err(|e| DaemonError::Other(format!("cannot open log {}: {e}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().copied())
        .env(READY_ENV, "1")
        // Not the starter's directory (a project the user may want to delete or unmount).
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| DaemonError::Other(format!("cannot start {}: {e}", exe.display())))?;
    // The process spawned only forks the daemon and exits (see `detach`): reap it.
    let _ = child.wait();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| DaemonError::Other("no stdout pipe".into()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DETACH_TIMEOUT).map_err(|_| {
        DaemonError::Other(format!(
            "the daemon did not report ready within {} s; see {}",
            DETACH_TIMEOUT.as_secs(),
            log_path.display()
        ))
    })?;
    match serde_json::from_str::<ReadyLine>(line.trim()) {
        Ok(ReadyLine::Ready(info)) => Ok(Detached::Started(info)),
        Ok(ReadyLine::AlreadyRunning(msg)) => Ok(Detached::AlreadyRunning(msg)),
        Ok(ReadyLine::Failed(msg)) => Err(DaemonError::Other(msg)),
        Err(_) => {
            let tail = std::fs::read_to_string(&log_path)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            Err(DaemonError::Other(format!(
                "the daemon exited before it was ready; last log lines:\n{tail}"
            )))
        }
    }
}

/// Set by [`connect_or_spawn`] on the `mesh up` it starts: a start on demand, which a
/// `mesh down` that came in between must still stop.
pub const ON_DEMAND_ENV: &str = "MESH_STARTED_ON_DEMAND";

/// Whether this process is a `mesh up` started on demand by [`connect_or_spawn`].
pub fn started_by_adapter() -> bool {
    std::env::var_os(ON_DEMAND_ENV).is_some()
}

/// How long [`connect_or_spawn`] keeps trying to reach a daemon that another process is
/// starting at the same moment.
pub const START_RACE_WAIT: Duration = Duration::from_secs(15);

/// Connects to the daemon of `home`, starting one (`exe --home <home> up`, detached) if none
/// runs, unless the node was stopped with `mesh down` ([`DaemonError::StoppedByUser`]). Two callers racing end up on the same daemon: the loser's start reports "already
/// running" and it connects to the winner once its socket answers.
pub async fn connect_or_spawn(
    home: &Home,
    exe: &Path,
    client_name: &str,
) -> Result<crate::api::client::Client, DaemonError> {
    use crate::api::client::{Client, ClientError};
    // Connect; if nobody answers, start a daemon (or let a racing starter win) and try
    // again. A daemon that just died (its lock still held for a moment, its socket
    // resetting connections) is waited out the same way.
    let deadline = tokio::time::Instant::now() + START_RACE_WAIT;
    let mut step = Duration::from_millis(10);
    let mut started: Option<Detached> = None;
    let mut last_spawn = None;
    loop {
        match Client::connect(home, client_name).await {
            Ok(c) => return Ok(c),
            Err(ClientError::NotRunning { .. }) => {}
            Err(e) => return Err(DaemonError::Other(e.to_string())),
        }
        // Stopped with `mesh down`: the user's word holds until `mesh up`.
        if settings::StopMark::is_set(home) {
            return Err(DaemonError::StoppedByUser);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DaemonError::Other(match started {
                Some(Detached::Started(i)) => format!("a daemon was started (pid {}) but cannot be reached", i.pid),
                Some(Detached::AlreadyRunning(m)) => format!("a daemon holds the home but does not answer: {m}"),
                None => "no daemon could be started".into(),
            }));
        }
        // Start one unless one was started here, or another starter won less than a second
        // ago (it is opening its socket).
        let recently = last_spawn.is_some_and(|t: tokio::time::Instant| t.elapsed() < Duration::from_secs(1));
        if !matches!(started, Some(Detached::Started(_))) && !recently {
            last_spawn = Some(tokio::time::Instant::now());
            let args: Vec<OsString> = vec!["--home".into(), home.path().into(), "up".into()];
            let (h, x) = (home.clone(), exe.to_path_buf());
            let outcome = tokio::task::spawn_blocking(move || spawn_on_demand(&x, &args, &h))
                .await
                .map_err(|e| DaemonError::Other(e.to_string()))?;
            let outcome = match outcome {
                Err(_) if settings::StopMark::is_set(home) => return Err(DaemonError::StoppedByUser),
                other => other?,
            };
            if let Detached::Started(info) = &outcome {
                tracing::info!(peer_id = %info.peer_id, pid = info.pid, "started a daemon");
            }
            started = Some(outcome);
        }
        // A daemon started by someone else may still be opening its socket.
        tokio::time::sleep(step).await;
        step = (step * 2).min(Duration::from_millis(200));
    }
}
