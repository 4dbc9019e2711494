//! Drives the real `mesh` binary: daemons as child processes, commands with a deadline.

#![allow(dead_code, missing_docs)]

pub mod mcp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use mesh_node::daemon::{ReadyInfo, ReadyLine};
use wait_timeout::ChildExt;

/// The login name daemons and commands run under (so the default agent is known).
pub const TEST_USER: &str = "tester";

/// Upper bound for one command.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(30);

pub const FAST_CONFIG: &str = r#"
[limits]
# These tests push hundreds of messages a second through one agent (crash tests); the
# limits have tests of their own.
agent_sends_per_minute = 0
[presence]
heartbeat = "300ms"
[delivery]
retry_min = "50ms"
retry_max = "300ms"
send_wait = "3s"
request_timeout = "3s"
"#;

pub fn mesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mesh"))
}

/// The mesh the homes of this test binary belong to (written as `mesh.key`, as `mesh join`
/// would), so nodes admit each other; [`Home::alone`] makes an outsider.
pub fn test_mesh() -> &'static mesh_node::mesh::Membership {
    static MESH: std::sync::OnceLock<mesh_node::mesh::Membership> = std::sync::OnceLock::new();
    MESH.get_or_init(|| {
        let mut m = mesh_node::mesh::Membership::generate();
        m.add_member(founder().public().to_peer_id());
        m
    })
}

/// The founding member of the test mesh: it vouches for every home given the mesh, as an
/// inviter does in `mesh join`.
pub fn founder() -> &'static libp2p::identity::Keypair {
    static KEY: std::sync::OnceLock<libp2p::identity::Keypair> = std::sync::OnceLock::new();
    KEY.get_or_init(libp2p::identity::Keypair::generate_ed25519)
}

/// A home directory in a temp dir, with the fast test config, in the test mesh.
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        let h = Home::alone();
        test_mesh()
            .provision(&h.path().join("identity.key"), &h.path().join("mesh.key"), founder())
            .expect("mesh key");
        h
    }

    /// A home that will start a mesh of its own (not a member of the test mesh).
    pub fn alone() -> Home {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // MESH_TEST_KEEP=1 keeps homes (and daemon logs, `<home>.log`) for a post-mortem.
        if std::env::var_os("MESH_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping test home {}", dir.path().display());
        }
        let h = Home { dir };
        std::fs::create_dir_all(h.path()).expect("mkdir");
        std::fs::write(h.path().join("config.toml"), FAST_CONFIG).expect("config");
        h
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("h")
    }

    /// Runs `mesh --home <home> args...` and waits for it (bounded).
    pub fn run(&self, args: &[&str]) -> Out {
        run_in(&self.path(), args, None)
    }

    /// Same, with `stdin` piped in.
    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        run_in(&self.path(), args, Some(stdin))
    }

    /// Starts a foreground daemon as a child; returns once it reported ready.
    pub fn start(&self, name: &str, port: u16) -> Daemon {
        start_daemon(&self.path(), name, port, &[])
    }
}

impl Home {
    /// A home whose daemon (when an adapter starts one) stays on loopback, without LAN
    /// discovery: tests send traffic nowhere else.
    pub fn isolated() -> Home {
        let h = Home::new();
        std::fs::write(
            h.path().join("config.toml"),
            format!("mdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n{FAST_CONFIG}"),
        )
        .expect("config");
        h
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // Stop a daemon an adapter may have started in the background.
        if self.path().join("mesh.sock").exists() {
            let _ = run_in(&self.path(), &["down"], None);
        }
    }
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

/// A command's result.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "command failed\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

pub fn run_in(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Out {
    run_in_env(home, args, stdin, &[])
}

/// [`run_in`] with more environment variables (a `HOME` of the test's own, say).
pub fn run_in_env(home: &Path, args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &std::ffi::OsStr)]) -> Out {
    let mut cmd = Command::new(mesh_bin());
    cmd.arg("--home")
        .arg(home)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .env_remove("MESH_DAEMON_READY")
        .env("USER", TEST_USER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn mesh");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut i = child.stdin.take().expect("stdin");
        i.write_all(input).expect("write stdin");
    }
    // Drain the pipes on threads so a chatty command cannot block on a full pipe.
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut so, &mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut se, &mut s);
        s
    });
    let status = match child.wait_timeout(CMD_TIMEOUT).expect("wait") {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mesh {args:?} did not finish within {CMD_TIMEOUT:?}");
        }
    };
    Out {
        code: status.code().unwrap_or(-1),
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// A daemon child process. Dropping it kills it (SIGKILL).
pub struct Daemon {
    pub child: Child,
    pub info: ReadyInfo,
    pub home: PathBuf,
}

impl Daemon {
    pub fn port(&self) -> u16 {
        self.info
            .listen
            .iter()
            .find_map(|a| {
                a.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Tcp(p) => Some(p),
                    _ => None,
                })
            })
            .expect("tcp port")
    }

    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.port(), self.info.peer_id)
    }

    /// SIGKILL, like a crash or power loss.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_daemon(home: &Path, name: &str, port: u16, extra: &[&str]) -> Daemon {
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut args = vec!["--no-mdns", "--name", name, "--listen", &listen];
    args.extend_from_slice(extra);
    spawn_daemon(Command::new(mesh_bin()), home, &args)
}

/// Runs `<cmd> --home <home> up <args>` (cmd is the mesh binary, possibly behind
/// `ip netns exec`) and waits for its ready line.
pub fn spawn_daemon(mut cmd: Command, home: &Path, args: &[&str]) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(home.with_extension("log"))
        .expect("log");
    let mut child = cmd
        .arg("--home")
        .arg(home)
        .arg("up")
        .args(args)
        .env("MESH_DAEMON_READY", "1")
        .env("USER", TEST_USER)
        .env(
            "MESH_LOG",
            "info,mesh_node=debug,libp2p_relay=debug,libp2p_dcutr=debug,libp2p_autonat=debug",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn daemon");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(CMD_TIMEOUT).expect("daemon did not report ready");
    match serde_json::from_str::<ReadyLine>(line.trim()) {
        Ok(ReadyLine::Ready(info)) => Daemon {
            child,
            info,
            home: home.to_path_buf(),
        },
        other => {
            let _ = child.kill();
            let log = std::fs::read_to_string(home.with_extension("log")).unwrap_or_default();
            panic!("daemon failed to start: {other:?} / {line}\nlog:\n{log}");
        }
    }
}

/// A tokio runtime for tests that use the API client directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
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

/// The seed of a randomized test: `MESH_TEST_SEED` to replay one, else a fresh one. Printed
/// either way, so a failure can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("MESH_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("MESH_TEST_SEED must be a number"),
        Err(_) => rand::random::<u64>() >> 12,
    };
    eprintln!("{test}: seed {seed} (replay with MESH_TEST_SEED={seed})");
    seed
}

/// `MESH_LONG_TESTS=1` runs the long variants of the reliability tests (more messages,
/// more crashes, more load). `.ci/run --long` sets it.
pub fn long_tests() -> bool {
    std::env::var("MESH_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// A client of one home that rides out daemon crashes: a request that fails because the
/// daemon went away (or is not back yet) is sent again on a new connection, until it is
/// answered or `deadline` passes. Only for requests that are safe to repeat (sends and
/// publishes carry their message id).
pub struct Resilient {
    pub home: mesh_node::home::Home,
    client: Option<mesh_node::api::client::Client>,
    /// Requests sent again after a broken connection or an unavailable daemon.
    pub retries: u64,
}

impl Resilient {
    pub fn new(home: &Path) -> Resilient {
        Resilient {
            home: mesh_node::home::Home::resolve(Some(home.to_path_buf())).expect("home"),
            client: None,
            retries: 0,
        }
    }

    pub async fn call(
        &mut self,
        request: mesh_node::api::Request,
        deadline: tokio::time::Instant,
    ) -> mesh_node::api::Response {
        use mesh_node::api::ErrorCode;
        use mesh_node::api::client::{Client, ClientError};
        assert!(
            request.is_repeatable(),
            "only repeatable requests are retried: {request:?}"
        );
        loop {
            if tokio::time::Instant::now() > deadline {
                panic!("no answer to {} before the deadline", request.kind());
            }
            let client = match &self.client {
                Some(c) if !c.is_closed() => c.clone(),
                _ => match Client::connect(&self.home, "resilient-test").await {
                    Ok(c) => {
                        self.client = Some(c.clone());
                        c
                    }
                    Err(_) => {
                        // Down, or starting: try again shortly.
                        tokio::time::sleep(Duration::from_millis(25)).await;
                        continue;
                    }
                },
            };
            let Ok(answer) = tokio::time::timeout_at(deadline, client.call(request.clone())).await else {
                panic!("no answer to {} before the deadline", request.kind());
            };
            match answer {
                Ok(r) => return r,
                Err(ClientError::Closed | ClientError::NotSent) => {
                    self.client = None;
                }
                Err(ClientError::Api(e)) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Busy) => {}
                Err(e) => panic!("{} failed for good: {e}", request.kind()),
            }
            self.retries += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// `GET /metrics` from a daemon started with `--metrics` (blocking, bounded).
pub fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, CMD_TIMEOUT).expect("connect to metrics");
    s.set_read_timeout(Some(CMD_TIMEOUT)).expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    out
}

/// The value of the sample `series` (exact name and labels) in a scrape.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// A local API client for the daemon of `home`.
pub async fn client(home: &Path) -> mesh_node::api::client::Client {
    let h = mesh_node::home::Home::resolve(Some(home.to_path_buf())).expect("home");
    mesh_node::api::client::Client::connect(&h, "test")
        .await
        .expect("connect to the daemon")
}

/// Everything in `agent`'s inbox, read or not, oldest first, marking nothing read.
pub async fn whole_inbox(
    c: &mesh_node::api::client::Client,
    agent: &str,
) -> Result<Vec<mesh_node::api::MessageView>, mesh_node::api::client::ClientError> {
    inbox_pages(c, agent, true, false).await
}

/// `agent`'s inbox (unread messages, or `all`), oldest first, page by page (following the
/// cursor, so that pages that cannot be marked read are not read again).
pub async fn inbox_pages(
    c: &mesh_node::api::client::Client,
    agent: &str,
    all: bool,
    mark_read: bool,
) -> Result<Vec<mesh_node::api::MessageView>, mesh_node::api::client::ClientError> {
    c.inbox_pages(agent, all, mark_read).await
}

/// Every history entry of `target` (an agent or `#topic`), oldest first, page by page.
pub async fn whole_history(
    c: &mesh_node::api::client::Client,
    target: &str,
) -> Result<Vec<mesh_node::api::HistoryView>, mesh_node::api::client::ClientError> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let r = c
            .call(mesh_node::api::Request::History(mesh_node::api::HistoryQuery {
                agent: None,
                target: Some(target.into()),
                grep: None,
                limit: u32::MAX,
                before: before.take(),
                after: None,
                forward: false,
                max_bytes: None,
            }))
            .await?;
        let page = match r {
            mesh_node::api::Response::History(p) => p,
            other => panic!("a history request answered {other:?}"),
        };
        out.splice(0..0, page.entries);
        match page.older {
            Some(older) => before = Some(older),
            None => return Ok(out),
        }
    }
}

/// Waits (on events, 60 s at most) until `agent` at `home` has at least `n` direct messages
/// from the agent named `from`, then returns the ids of all of them in inbox order.
pub async fn wait_direct(home: &Path, agent: &str, from: &str, n: usize) -> Vec<mesh_node::ids::MessageId> {
    use mesh_node::api::Event;
    let c = client(home).await;
    let mut ev = c.watch(vec![agent.into()]).await.expect("watch");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ids: Vec<_> = whole_inbox(&c, agent)
            .await
            .expect("inbox")
            .into_iter()
            .filter(|m| m.from_agent == from && m.topic.is_none())
            .map(|m| m.id)
            .collect();
        if ids.len() >= n {
            return ids;
        }
        // Wait for the next arrival.
        loop {
            match tokio::time::timeout_at(deadline, ev.recv()).await {
                Ok(Some(Event::Message(_) | Event::Lagged { .. })) => break,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the daemon went away"),
                Err(_) => panic!("only {} of {n} messages arrived", ids.len()),
            }
        }
    }
}

/// Waits until `check` holds (`Ok`) on the daemon of `home`, looking again at every event of
/// the daemon and at least every 250 ms; connects again whenever the daemon went away (so it
/// serves tests that kill daemons too). Panics at `deadline`, with the last `Err`.
pub async fn wait_until<T>(
    home: &Path,
    what: &str,
    deadline: tokio::time::Instant,
    mut check: impl AsyncFnMut(&mesh_node::api::client::Client) -> Result<T, String>,
) -> T {
    let h = mesh_node::home::Home::resolve(Some(home.to_path_buf())).expect("home");
    let mut last = String::new();
    loop {
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not reached before the deadline: {last}");
        }
        let Ok(c) = mesh_node::api::client::Client::connect(&h, "test").await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(mut ev) = c.watch(vec![]).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            match tokio::time::timeout_at(deadline, check(&c)).await {
                Ok(Ok(v)) => return v,
                Ok(Err(e)) => last = e,
                Err(_) => panic!("{what}: a check did not finish before the deadline: {last}"),
            }
            if tokio::time::Instant::now() > deadline {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(250), ev.recv()).await {
                Ok(Some(_)) | Err(_) => {}
                Ok(None) => break,
            }
        }
    }
}

/// Waits until `home`'s node lists `address` with `reception` (on the node's events).
pub fn wait_reception(home: &Home, address: &str, reception: &str) {
    let rt = runtime();
    rt.block_on(async {
        let c = client(&home.path()).await;
        let mut ev = c.watch(vec![]).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let mesh_node::api::Response::Agents(list) = c.call(mesh_node::api::Request::Agents).await.unwrap()
                && list
                    .iter()
                    .any(|a| a.address == address && format!("{:?}", a.reception) == reception)
            {
                return;
            }
            match tokio::time::timeout_at(deadline, ev.recv()).await {
                Ok(Some(_)) => {}
                _ => panic!("{address} never showed as {reception} on {:?}", home.path()),
            }
        }
    });
}

/// The node's name.
pub fn node_name(home: &Home) -> String {
    home.run(&["--json", "status"]).json()["node"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Skips a test that this machine cannot run (no root, a missing tool), saying why; under
/// CI (`CI=true`) fails it instead: a suite that passes by skipping proves nothing.
#[track_caller]
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why} (CI=true: this test must run, not skip)");
    }
    eprintln!("SKIPPED: {why}");
}

/// Waits (up to `deadline`) until the node behind `c` has nothing left to deliver: every
/// message it sent is delivered or dead. Snapshot checks read the inboxes again after
/// this, so that a delivery repeated while the senders settled would show.
pub async fn outbox_settled(c: &mesh_node::api::client::Client, deadline: tokio::time::Instant) {
    loop {
        let r = c
            .call(mesh_node::api::Request::Outbox {
                agent: None,
                delivered: false,
                limit: 100_000,
            })
            .await;
        match r {
            Ok(mesh_node::api::Response::Outbox(l)) if l.is_empty() => return,
            Ok(mesh_node::api::Response::Outbox(l)) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} messages still not settled: {:?}",
                    l.len(),
                    l.first().map(|e| &e.state)
                );
            }
            other => panic!("outbox: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
