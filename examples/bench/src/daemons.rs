//! Real daemons (`mesh up` processes) in temporary homes, all members of one mesh, and
//! API clients to them.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_node::api::client::Client;
use mesh_node::api::{AgentSpec, Event, Request, Response};
use mesh_node::daemon::{ReadyInfo, ReadyLine};
use mesh_node::home::Home;
use mesh_node::mesh::Membership;
use tokio::sync::mpsc;

/// Settings for benchmark daemons: no rate limits (they are what is measured), LAN
/// discovery off (explicit dials), everything else default.
pub const CONFIG: &str = r#"
[limits]
agent_sends_per_minute = 0
peer_messages_per_minute = 0
peer_topic_messages_per_minute = 0
"#;

/// The `mesh` binary next to this one (`cargo build --release --workspace` builds both).
pub fn mesh_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("mesh");
    if !bin.exists() {
        bail!(
            "{} not found: build it next to this binary first (cargo build --release --workspace)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A daemon process; killed when dropped.
pub struct Node {
    pub child: Child,
    pub info: ReadyInfo,
    pub home: Home,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// `/ip4/127.0.0.1/tcp/<port>/p2p/<id>`.
    pub fn addr(&self) -> String {
        let a = self
            .info
            .listen
            .iter()
            .find(|a| a.to_string().contains("/tcp/"))
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!("{a}/p2p/{}", self.info.peer_id)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.home, "mesh-bench").await?)
    }
}

/// Homes for a run: one temp dir, one mesh.
pub struct Lab {
    pub dir: tempfile::TempDir,
    pub mesh: Membership,
    /// The mesh's founding member: vouches for every home, as an inviter would.
    founder: libp2p::identity::Keypair,
    pub bin: PathBuf,
    n: usize,
}

impl Lab {
    pub fn new() -> anyhow::Result<Lab> {
        let founder = libp2p::identity::Keypair::generate_ed25519();
        let mut mesh = Membership::generate();
        mesh.add_member(founder.public().to_peer_id());
        let mut dir = tempfile::tempdir()?;
        if std::env::var_os("MESH_BENCH_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping the lab's homes in {}", dir.path().display());
        }
        Ok(Lab {
            dir,
            mesh,
            founder,
            bin: mesh_bin()?,
            n: 0,
        })
    }

    /// A fresh home in the lab's mesh.
    pub fn home(&mut self, extra_config: &str) -> anyhow::Result<Home> {
        self.n += 1;
        let home = Home::resolve(Some(self.dir.path().join(format!("h{}", self.n))))?;
        home.create()?;
        std::fs::write(home.config_path(), format!("{CONFIG}{extra_config}"))?;
        self.mesh
            .provision(&home.identity_path(), &home.mesh_path(), &self.founder)
            .map_err(anyhow::Error::msg)?;
        Ok(home)
    }

    /// A fresh home of a mesh of its own (not the lab's: a node that can join it).
    pub fn alone(&mut self, extra_config: &str) -> anyhow::Result<Home> {
        self.n += 1;
        let home = Home::resolve(Some(self.dir.path().join(format!("h{}", self.n))))?;
        home.create()?;
        std::fs::write(home.config_path(), format!("{CONFIG}{extra_config}"))?;
        Ok(home)
    }

    /// Starts `mesh up` on a new home of a mesh of its own (not the lab's: a node that
    /// can join it), listening on 127.0.0.1.
    pub fn outsider(&mut self, name: &str) -> anyhow::Result<Node> {
        self.n += 1;
        let home = Home::resolve(Some(self.dir.path().join(format!("h{}", self.n))))?;
        home.create()?;
        std::fs::write(home.config_path(), CONFIG)?;
        start(
            Command::new(&self.bin),
            home,
            name,
            &["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
        )
    }

    /// Starts `mesh up` on a new home, listening on 127.0.0.1.
    pub fn node(&mut self, name: &str) -> anyhow::Result<Node> {
        let home = self.home("")?;
        start(
            Command::new(&self.bin),
            home,
            name,
            &["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
        )
    }
}

/// Runs `<cmd> --home H up --name N <args>` and waits for its ready line.
pub fn start(mut cmd: Command, home: Home, name: &str, args: &[&str]) -> anyhow::Result<Node> {
    let log = std::fs::File::create(home.path().join("bench-daemon.log"))?;
    let mut child = cmd
        .arg("--home")
        .arg(home.path())
        .args(["up", "--name", name])
        .args(args)
        .env("MESH_DAEMON_READY", "1")
        // MESH_BENCH_LOG=<filter>: the daemons' log level (each writes
        // `<home>/bench-daemon.log`; MESH_BENCH_KEEP=1 keeps the homes).
        .env(
            "MESH_LOG",
            std::env::var("MESH_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("spawning mesh up")?;
    let line = first_line(&mut child, Duration::from_secs(30)).context("the daemon did not report ready")?;
    match serde_json::from_str::<ReadyLine>(line.trim()) {
        Ok(ReadyLine::Ready(info)) => Ok(Node { child, info, home }),
        other => {
            let _ = child.kill();
            bail!("daemon failed to start: {other:?} {line}")
        }
    }
}

/// `a` dials `b`; returns once `b`'s agents are known to `a`.
pub async fn connect(a: &Client, b: &Node) -> anyhow::Result<()> {
    match a.call(Request::Dial { addr: b.addr() }).await? {
        Response::Dialed { .. } => Ok(()),
        other => bail!("dial: {other:?}"),
    }
}

/// Creates agents `names` on the node behind `c`, attached (online) while `c` lives, and
/// returns the stream of their events.
pub async fn agents_online(c: &Client, names: &[String]) -> anyhow::Result<mpsc::Receiver<Event>> {
    for n in names {
        c.call(Request::Register {
            agent: AgentSpec {
                name: n.clone(),
                kind: "other".into(),
                push: true,
                ..Default::default()
            },
            attach: true,
        })
        .await?;
    }
    Ok(c.watch(names.to_vec()).await?)
}

/// Waits until the node behind `c` knows `agent@node` (its announcement arrived).
pub async fn wait_known(c: &Client, address: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Response::Agents(list) = c.call(Request::Agents).await?
            && list.iter().any(|a| a.address == address)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{address} never became known");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time (user + system) of a process, from /proc.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15 (1-based); here 0-based after the state field.
    let total = ticks(11) + ticks(12);
    let hz = clock_ticks();
    Ok(Duration::from_secs_f64(total as f64 / hz))
}

fn clock_ticks() -> f64 {
    // Linux reports times in USER_HZ, which is 100 on every mainstream configuration.
    100.0
}

/// Memory of a process, in bytes, from /proc.
pub struct Memory {
    /// Resident set size: private memory plus the mapped pages of the program file.
    pub rss: u64,
    /// Peak resident set size.
    pub peak: u64,
    /// Private (anonymous) resident memory: what this daemon costs beyond shared files.
    pub anon: u64,
    /// Resident pages of mapped files (the program's code, shared and evictable).
    pub file: u64,
}

/// Memory of `pid`, from /proc.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(Memory {
        rss: kb("VmRSS:"),
        peak: kb("VmHWM:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
    })
}

/// The hidden first argument that makes this binary a stand-in public node.
pub const STAND_IN_ARG: &str = "--stand-in";

/// A stand-in node of the public libp2p network ([`mesh_node::stand_in`]) in its own
/// process (this binary, run with [`STAND_IN_ARG`]); killed when dropped.
pub struct StandIn {
    child: Child,
    /// `/ip4/<ip>/tcp/4001/p2p/<id>`.
    pub addr: String,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a stand-in public node on port 4001 of `ip` through `cmd` (this binary, perhaps
/// behind `ip netns exec`): a relay too when `relay`, entering the DHT through `bootstrap`.
pub fn stand_in(mut cmd: Command, ip: std::net::Ipv4Addr, relay: bool, bootstrap: &[&str]) -> anyhow::Result<StandIn> {
    let mut child = cmd
        .arg(STAND_IN_ARG)
        .arg(ip.to_string())
        .arg(if relay { "relay" } else { "dht" })
        .args(bootstrap)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning a stand-in public node")?;
    let line = first_line(&mut child, Duration::from_secs(20)).context("the stand-in public node did not start")?;
    let peer: mesh_node::PeerId = line.trim().parse().context("the stand-in's PeerId")?;
    Ok(StandIn {
        child,
        addr: format!("/ip4/{ip}/tcp/4001/p2p/{peer}"),
    })
}

/// The stand-in's process: `<ip> relay|dht [bootstrap...]`; prints its PeerId, then runs
/// until killed.
pub fn stand_in_main(args: Vec<String>) -> anyhow::Result<()> {
    let [ip, role, bootstrap @ ..] = args.as_slice() else {
        bail!("{STAND_IN_ARG} <ip> relay|dht [bootstrap multiaddr...]");
    };
    let opts = mesh_node::stand_in::StandIn {
        key: libp2p::identity::Keypair::generate_ed25519(),
        port: 4001,
        external: vec![
            format!("/ip4/{ip}/tcp/4001").parse()?,
            format!("/ip4/{ip}/udp/4001/quic-v1").parse()?,
        ],
        bootstrap: bootstrap.iter().map(|b| b.parse()).collect::<Result<_, _>>()?,
        relay: role == "relay",
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(mesh_node::stand_in::run(opts, |peer| {
        use std::io::Write;
        println!("{peer}");
        let _ = std::io::stdout().flush();
    }))?;
    Ok(())
}

/// The first line `child` writes to its (piped) stdout, within `within`.
fn first_line(child: &mut Child, within: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    Ok(rx.recv_timeout(within)?)
}

/// `mesh up` arguments for a node in a namespace: no mDNS, TCP and QUIC on every interface.
pub const LISTEN_ANY: [&str; 5] = [
    "--no-mdns",
    "--listen",
    "/ip4/0.0.0.0/tcp/0",
    "--listen",
    "/ip4/0.0.0.0/udp/0/quic-v1",
];
