//! Figure 11, public-network row: two members behind NATs with no public address and no
//! member relay (`[internet] public_network` on, stand-in public nodes in namespaces). B
//! joins A's mesh with a code carrying A's relayed address on a public relay; then both
//! move (new public and LAN addresses), the relay they used disappears and another one
//! appears, and A writes to B. Per trial: whether the message arrived (the members found
//! each other again through the rendezvous), how long after the move, whether the
//! connection went direct, and the traffic the relays carried.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_node::api::{AgentSpec, Event, LocalApi, SendRequest};

use super::reach::host_bytes;
use crate::daemons::{self, Lab};
use crate::netns::{self, Nat};
use crate::stats::{Row, Samples, ms};

/// The row's scenario name (`MESH_BENCH_REACH` matches it).
pub const NAME: &str = "public network, both moved and their relay gone";
/// How long a trial waits for each message.
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Trial {
    /// From the move to the message in B's inbox.
    after_move: Option<Duration>,
    /// From the move to a direct connection.
    direct: Option<Duration>,
    /// Bytes in and out of both relay hosts over the trial.
    relay_bytes: u64,
}

pub async fn row(lab: &mut Lab, trials: usize) -> anyhow::Result<Row> {
    let mut seen = Vec::new();
    for i in 0..trials {
        seen.push(trial(lab).await.with_context(|| format!("{NAME}, trial {i}"))?);
    }
    let n = seen.len();
    let mut after = Samples::default();
    let mut direct = Samples::default();
    for t in &seen {
        after.0.extend(t.after_move);
        direct.0.extend(t.direct);
    }
    let delivered = after.len();
    let mut kib: Vec<u64> = seen.iter().map(|t| t.relay_bytes / 1024).collect();
    kib.sort_unstable();
    let share = (delivered as f64 * 1000.0 / n as f64).round() / 10.0;
    Ok(Row::new(&format!("11. reach, {NAME}: message after the move"), share, "%")
        .note(format!(
            "{delivered}/{n} delivered (p50 {} ms after the move); {}/{n} direct (p50 {} ms); relay hosts' traffic p50 {} KiB (max {})",
            ms(after.pct(50.0)),
            direct.len(),
            ms(direct.pct(50.0)),
            kib.get(kib.len() / 2).copied().unwrap_or(0),
            kib.last().copied().unwrap_or(0),
        ))
        .target("nothing lost", delivered == n))
}

async fn trial(lab: &mut Lab) -> anyhow::Result<Trial> {
    let mut net = netns::Lab::new("rdv").context("network namespaces")?;
    let inet = net.segment("inet", [5, 0, 0]);
    let lan_a = net.segment("lana", [10, 41, 0]);
    let lan_b = net.segment("lanb", [10, 42, 0]);
    let (p0_host, r1_host, r2_host) = (
        net.host("p0", &inet, 10),
        net.host("r1", &inet, 11),
        net.host("r2", &inet, 12),
    );
    let mut ra = net.router("ra", &inet, 2, &lan_a, Nat::EndpointIndependent);
    let mut rb = net.router("rb", &inet, 3, &lan_b, Nat::EndpointIndependent);
    let mut host_a = net.host_via("a", &lan_a, 10, ra.lan_ip);
    let mut host_b = net.host_via("b", &lan_b, 10, rb.lan_ip);
    let me = std::env::current_exe()?;
    let p0 = daemons::stand_in(p0_host.command(&me), p0_host.ip, false, &[])?;
    let r1 = daemons::stand_in(r1_host.command(&me), r1_host.ip, true, &[&p0.addr])?;
    let config = format!(
        "\n[internet]\npublic_network = true\npublic_bootstrap = [\"{}\"]\n",
        p0.addr
    );
    let listen = daemons::LISTEN_ANY;
    let a = daemons::start(host_a.command(&lab.bin), lab.home(&config)?, "alpha", &listen)?;
    let b = daemons::start(host_b.command(&lab.bin), lab.alone(&config)?, "beta", &listen)?;
    let (ca, cb) = (a.client().await?, b.client().await?);
    let relays_before = host_bytes(&net, &r1_host.ns) + host_bytes(&net, &r2_host.ns);
    // A's relayed address, in its invite code.
    let deadline = Instant::now() + WINDOW;
    while ca.addrs().await?.relayed.is_empty() {
        if Instant::now() > deadline {
            bail!("no slot on the public relay");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = ca.invite(600, 1).await?.code;
    cb.join(&code).await?;
    let cb = b.client().await?;
    cb.register(
        AgentSpec {
            name: "bob".into(),
            kind: "other".into(),
            ..Default::default()
        },
        false,
    )
    .await?;
    let mut inbox = cb.watch(vec!["bob".into()]).await?;
    let b_peer = b.info.peer_id;
    let send = |text: &str| SendRequest {
        from: "alice".into(),
        to: format!("bob@{b_peer}"),
        text: text.into(),
        reply_to: None,
        id: None,
    };
    ca.send(send("before the move")).await?;
    if !arrived(&mut inbox, WINDOW).await {
        bail!("the first message did not arrive");
    }
    // Both move while their relay goes away and another one appears.
    drop(r1);
    let _r2 = daemons::stand_in(r2_host.command(&me), r2_host.ip, true, &[&p0.addr])?;
    net.renumber_router(&mut ra, 22);
    net.renumber_host(&mut host_a, 20, ra.lan_ip);
    net.renumber_router(&mut rb, 33);
    net.renumber_host(&mut host_b, 30, rb.lan_ip);
    let moved = Instant::now();
    ca.send(send("after the move")).await?;
    let mut seen = Trial::default();
    while moved.elapsed() < WINDOW && (seen.after_move.is_none() || seen.direct.is_none()) {
        if seen.after_move.is_none() && arrived(&mut inbox, Duration::from_millis(50)).await {
            seen.after_move = Some(moved.elapsed());
        }
        if seen.direct.is_none() && super::reach::direct(&ca, b_peer).await? {
            seen.direct = Some(moved.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.relay_bytes = (host_bytes(&net, &r1_host.ns) + host_bytes(&net, &r2_host.ns)).saturating_sub(relays_before);
    Ok(seen)
}

/// Whether a message reaches the watched inbox within `within`.
async fn arrived(inbox: &mut tokio::sync::mpsc::Receiver<Event>, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, inbox.recv()).await {
            Ok(Some(Event::Message(_))) => return true,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return false,
        }
    }
}
