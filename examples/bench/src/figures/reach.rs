//! Figure 11: internet reach in network namespaces. A relay on a "public" segment and two
//! nodes, each behind its own NAT router (iptables MASQUERADE); B holds a slot on the
//! relay, A dials B's relayed address after a varied delay and sends a message. Per
//! scenario and trial: whether a relay slot came up, the time from it to the first message,
//! whether (and when) the connection between A and B went direct within the window (the
//! nodes may find each other before A dials: members look each other up), and the hole
//! punches both counted.
//! Rates are figures over many trials, never a test's pass or fail.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_node::api::{AgentSpec, Event, LocalApi, PathView, SendRequest};

use crate::daemons::{self, Lab, Node};
use crate::netns::{self, Nat};
use crate::stats::{Row, Samples, ms};

/// How long a trial waits for the connection to go direct.
const WINDOW: Duration = Duration::from_secs(30);
/// How long a node may take to get a relay slot.
const SLOT_WAIT: Duration = Duration::from_secs(20);
/// Delays between B's relayed address appearing and A dialing it, taken in turn.
const DIAL_DELAYS_MS: [u64; 4] = [0, 1_000, 3_000, 8_000];

/// A topology: the public segment's range and the two routers' NATs.
struct Scenario {
    name: &'static str,
    public: [u8; 3],
    nat_a: Nat,
    nat_b: Nat,
    /// The connection is expected to go direct (both mappings endpoint-independent).
    punchable: bool,
    /// Every node runs in open mode (`--open`) instead of sharing a mesh key.
    open: bool,
    /// The routers drop unsolicited traffic silently (else they answer it with a TCP reset
    /// or an ICMP port unreachable, as a plain Linux router does).
    quiet: bool,
    /// B's router runs a UPnP IGD (miniupnpd): B gets a port forwarded, needs no slot, and
    /// A dials B's public address instead of a relayed one.
    upnp_b: bool,
    /// One-way latency from the public segment into each router (none: the namespaces'
    /// microseconds), as on a real path between two homes ([`crate::delay`]).
    latency: Duration,
}

/// Two endpoint-independent NATs behind quiet routers, members of one mesh, the public
/// segment in a global range: what each scenario changes.
const EIM_PAIR: Scenario = Scenario {
    name: "EIM pair, public segment in a global range",
    public: [5, 0, 0],
    nat_a: Nat::EndpointIndependent,
    nat_b: Nat::EndpointIndependent,
    punchable: true,
    open: false,
    quiet: true,
    upnp_b: false,
    latency: Duration::ZERO,
};

const SCENARIOS: [Scenario; 10] = [
    EIM_PAIR,
    Scenario {
        name: "EIM pair, public segment in 100.64.0.0/10",
        public: [100, 64, 0],
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM pair, relay segment in a private range",
        public: [10, 99, 0],
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM and symmetric",
        nat_b: Nat::Symmetric,
        punchable: false,
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM pair in open mode, public segment in a global range",
        open: true,
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM pair behind routers that answer unsolicited packets",
        quiet: false,
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM pair behind routers that answer unsolicited packets, 1 ms apart",
        quiet: false,
        latency: Duration::from_millis(1),
        ..EIM_PAIR
    },
    Scenario {
        name: "EIM pair behind routers that answer unsolicited packets, 10 ms apart",
        quiet: false,
        latency: Duration::from_millis(10),
        ..EIM_PAIR
    },
    Scenario {
        name: "both symmetric",
        nat_a: Nat::Symmetric,
        nat_b: Nat::Symmetric,
        punchable: false,
        ..EIM_PAIR
    },
    Scenario {
        name: "UPnP on B's router (A behind EIM, no UPnP)",
        upnp_b: true,
        ..EIM_PAIR
    },
];

/// What one trial saw.
#[derive(Default)]
struct Trial {
    /// No address of B (relayed, or public with UPnP) within [`SLOT_WAIT`].
    no_slot: bool,
    /// From B's address to the message in B's inbox.
    first_message: Option<Duration>,
    /// From B's address to a direct connection between A and B.
    direct: Option<Duration>,
    /// Hole punches both nodes counted: attempts, successes.
    punches: (u64, u64),
    /// Bytes in and out of the relay host during the trial (everything it carried).
    relay_bytes: u64,
}

/// Figure 11 rows: one per scenario (skipped without root).
pub async fn rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    if netns::Lab::new("reach-probe").is_none() {
        return Ok(vec![
            Row::new("11. internet reach", 0.0, "%").note("skipped: needs root"),
        ]);
    }
    let (trials, scenarios) = if quick {
        (1, &SCENARIOS[..1])
    } else {
        (10, &SCENARIOS[..])
    };
    if scenarios.iter().any(|s| s.upnp_b)
        && std::process::Command::new("miniupnpd")
            .arg("--version")
            .output()
            .is_err()
    {
        bail!("miniupnpd is missing (apt-get install miniupnpd-nftables; .ci/run installs it)");
    }
    // MESH_BENCH_REACH=<words>: only the scenarios whose name contains them.
    let only = std::env::var("MESH_BENCH_REACH").unwrap_or_default();
    let mut rows = Vec::new();
    for sc in scenarios.iter().filter(|s| s.name.contains(only.as_str())) {
        let mut seen = Vec::new();
        for i in 0..trials {
            let delay = Duration::from_millis(DIAL_DELAYS_MS[i % DIAL_DELAYS_MS.len()]);
            seen.push(
                trial(lab, sc, delay)
                    .await
                    .with_context(|| format!("{}, trial {i}", sc.name))?,
            );
        }
        rows.push(row(sc, &seen));
    }
    if !quick && super::rendezvous::NAME.contains(only.as_str()) {
        rows.push(super::rendezvous::row(lab, trials).await?);
    }
    Ok(rows)
}

fn row(sc: &Scenario, seen: &[Trial]) -> Row {
    let n = seen.len();
    let direct = seen.iter().filter(|t| t.direct.is_some()).count();
    let share = (direct as f64 * 1000.0 / n as f64).round() / 10.0;
    let mut first = Samples::default();
    let mut to_direct = Samples::default();
    for t in seen {
        first.0.extend(t.first_message);
        to_direct.0.extend(t.direct);
    }
    let no_slot = seen.iter().filter(|t| t.no_slot).count();
    let (attempts, successes) = seen.iter().fold((0, 0), |(a, s), t| (a + t.punches.0, s + t.punches.1));
    let delivered = first.len();
    let mut relay_kib: Vec<u64> = seen.iter().map(|t| t.relay_bytes / 1024).collect();
    relay_kib.sort_unstable();
    let row = Row::new(&format!("11. reach, {}: direct within 30 s of the slot", sc.name), share, "%").note(format!(
        "{direct}/{n} direct (p50 {} ms from the slot); {delivered}/{n} first messages (p50 {} ms); {successes}/{attempts} hole punches succeeded; {no_slot} trials without a relay slot or address; relay host traffic p50 {} KiB (max {}); dial delays {:?} ms",
        ms(to_direct.pct(50.0)),
        ms(first.pct(50.0)),
        relay_kib.get(relay_kib.len() / 2).copied().unwrap_or(0),
        relay_kib.last().copied().unwrap_or(0),
        DIAL_DELAYS_MS
    ));
    if sc.punchable {
        row.target(">= 95%", share >= 95.0)
    } else {
        row.target("relayed, nothing lost", delivered == n)
    }
}

/// The world of a trial: the namespaces and the three daemons (dropped in reverse).
struct World {
    a: Node,
    b: Node,
    _relay: Node,
    _delays: Vec<crate::delay::Delay>,
    relay_ns: String,
    net: netns::Lab,
}

impl World {
    /// Bytes the relay host received and sent so far.
    fn relay_bytes(&self) -> u64 {
        host_bytes(&self.net, &self.relay_ns)
    }
}

/// Bytes in and out of the `eth0` of namespace `ns` so far.
pub(super) fn host_bytes(net: &netns::Lab, ns: &str) -> u64 {
    ["rx_bytes", "tx_bytes"]
        .iter()
        .map(|f| {
            let out = net.exec(ns, &["cat", &format!("/sys/class/net/eth0/statistics/{f}")]);
            String::from_utf8_lossy(&out.stdout).trim().parse::<u64>().unwrap_or(0)
        })
        .sum()
}

fn world(lab: &mut Lab, sc: &Scenario) -> anyhow::Result<World> {
    let mut net = netns::Lab::new("reach").context("network namespaces")?;
    let inet = net.segment("inet", sc.public);
    let lan_a = net.segment("lana", [10, 31, 0]);
    let lan_b = net.segment("lanb", [10, 32, 0]);
    let relay_host = net.host("relay", &inet, 10);
    let ra = net.router_with("ra", &inet, 2, &lan_a, sc.nat_a, sc.quiet);
    let rb = net.router_with("rb", &inet, 3, &lan_b, sc.nat_b, sc.quiet);
    let host_a = net.host_via("a", &lan_a, 10, ra.lan_ip);
    let host_b = net.host_via("b", &lan_b, 10, rb.lan_ip);
    if sc.upnp_b {
        net.upnp(&rb).context("miniupnpd")?;
    }
    let mut delays = Vec::new();
    if !sc.latency.is_zero() {
        for (queue, r) in [(1, &ra), (2, &rb)] {
            delays.push(crate::delay::inbound(&r.ns, queue, sc.latency)?);
        }
    }
    let open: &[&str] = if sc.open { &["--open"] } else { &[] };
    let relay_args = [
        "--relay",
        "--no-mdns",
        "--listen",
        "/ip4/0.0.0.0/tcp/4001",
        "--listen",
        "/ip4/0.0.0.0/udp/4001/quic-v1",
    ];
    let relay = daemons::start(
        relay_host.command(&lab.bin),
        lab.home("")?,
        "relay",
        &[&relay_args[..], open].concat(),
    )?;
    let relays = format!(
        "\n[relay]\nnodes = [\"/ip4/{}/tcp/4001/p2p/{}\"]\n",
        relay_host.ip, relay.info.peer_id
    );
    let listen = [&daemons::LISTEN_ANY[..], open].concat();
    let a = daemons::start(host_a.command(&lab.bin), lab.home(&relays)?, "alpha", &listen)?;
    let b = daemons::start(host_b.command(&lab.bin), lab.home(&relays)?, "beta", &listen)?;
    Ok(World {
        a,
        b,
        _relay: relay,
        _delays: delays,
        relay_ns: relay_host.ns.clone(),
        net,
    })
}

async fn trial(lab: &mut Lab, sc: &Scenario, delay: Duration) -> anyhow::Result<Trial> {
    let w = world(lab, sc)?;
    let (ca, cb) = (w.a.client().await?, w.b.client().await?);
    let bob = AgentSpec {
        name: "bob".into(),
        kind: "other".into(),
        ..Default::default()
    };
    cb.register(bob, false).await?;
    let mut inbox = cb.watch(vec!["bob".into()]).await?;
    let Some(relayed) = b_address(&cb, sc.upnp_b).await? else {
        return Ok(Trial {
            no_slot: true,
            ..Trial::default()
        });
    };
    let t0 = Instant::now();
    let relay_before = w.relay_bytes();
    tokio::time::sleep(delay).await;
    let b_peer = w.b.info.peer_id;
    let mut seen = Trial::default();
    if ca.dial(&relayed).await.is_err() {
        return Ok(seen);
    }
    ca.send(SendRequest {
        from: "alice".into(),
        to: format!("bob@{b_peer}"),
        text: "hello over whatever path there is".into(),
        reply_to: None,
        id: None,
    })
    .await?;
    while t0.elapsed() < WINDOW && (seen.first_message.is_none() || seen.direct.is_none()) {
        while let Ok(event) = inbox.try_recv() {
            if matches!(event, Event::Message(_)) && seen.first_message.is_none() {
                seen.first_message = Some(t0.elapsed());
            }
        }
        if seen.direct.is_none() && direct(&ca, b_peer).await? {
            seen.direct = Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for c in [&ca, &cb] {
        let punch = c.status().await?.reach.punch;
        seen.punches.0 += punch.attempts;
        seen.punches.1 += punch.successes;
    }
    seen.relay_bytes = w.relay_bytes().saturating_sub(relay_before);
    Ok(seen)
}

/// B's relayed address once it holds a slot, or (`public`: its router forwards a port)
/// its public address once confirmed.
async fn b_address(c: &mesh_node::api::client::Client, public: bool) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + SLOT_WAIT;
    while Instant::now() < deadline {
        let addrs = c.addrs().await?;
        if let Some(a) = if public { addrs.public } else { addrs.relayed }.into_iter().next() {
            return Ok(Some(a));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// A has a direct connection to `peer`.
pub(super) async fn direct(c: &mesh_node::api::client::Client, peer: mesh_node::PeerId) -> anyhow::Result<bool> {
    let peers = c.peers().await?;
    let Some(p) = peers.iter().find(|p| p.peer_id == peer) else {
        return Ok(false);
    };
    // A node connected but not (yet, or again) admitted is listed without connections.
    Ok(p.connections.iter().any(|c| c.path != PathView::Relayed))
}
