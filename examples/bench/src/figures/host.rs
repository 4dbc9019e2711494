//! Figures 5 and 7: a daemon on its host, idle among peers, and finding a LAN neighbour.

use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_node::api::{Request, Response};

use crate::daemons::{self, Lab, connect};
use crate::stats::{Row, Samples, ms};

/// Figure 5: idle CPU and memory with 5 peers.
pub async fn idle_rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    let dur = Duration::from_secs(if quick { 5 } else { 60 });
    let (cpu, mem) = idle(lab, 5, dur).await?;
    let mib = |b: u64| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
    Ok(vec![
        Row::new("5. idle daemon, 5 peers: RSS", mib(mem.rss), "MiB")
            .target("< 20 MiB", mib(mem.rss) < 20.0)
            .note(format!(
                "peak {} MiB; {} MiB private, {} MiB mapped program code",
                mib(mem.peak),
                mib(mem.anon),
                mib(mem.file)
            )),
        Row::new("5. idle daemon, 5 peers: CPU", (cpu * 1000.0).round() / 1000.0, "%")
            .target("< 0.5%", cpu < 0.5)
            .note(format!("over {} s", dur.as_secs())),
    ])
}

/// Figure 7: LAN discovery (skipped without root).
pub async fn discovery_rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    Ok(match discovery(lab, if quick { 3 } else { 20 }).await? {
        Some((start, ready)) => {
            let p99 = ms(start.pct(99.0));
            vec![
                Row::new("7. LAN discovery, start to admitted peer p99", p99, "ms")
                    .target("< 1 s", p99 < 1000.0)
                    .note(format!(
                        "p50 {} ms; from ready p50 {} / p99 {} ms; {} trials",
                        ms(start.pct(50.0)),
                        ms(ready.pct(50.0)),
                        ms(ready.pct(99.0)),
                        start.len()
                    )),
            ]
        }
        None => vec![Row::new("7. LAN discovery", 0.0, "ms").note("skipped: needs root")],
    })
}

/// Figure 5: a daemon with `peers` connected peers, idle for `dur`: CPU share and RSS.
pub async fn idle(lab: &mut Lab, peers: usize, dur: Duration) -> anyhow::Result<(f64, daemons::Memory)> {
    let center = lab.node("center")?;
    let c = center.client().await?;
    let mut others = Vec::new();
    for i in 0..peers {
        let o = lab.node(&format!("p{i}"))?;
        connect(&c, &o).await?;
        others.push(o);
    }
    drop(c);
    // Let start-up work (announcements, DHT bootstrap) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = center.pid();
    let cpu0 = daemons::cpu_time(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(dur).await;
    let cpu = daemons::cpu_time(pid)? - cpu0;
    let share = cpu.as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;
    let mem = daemons::memory(pid)?;
    // Still connected to all of them?
    let c = center.client().await?;
    if let Response::Status(s) = c.call(Request::Status).await?
        && s.connected as usize != peers
    {
        bail!("idle daemon lost peers: {} of {peers} connected", s.connected);
    }
    Ok((share, mem))
}

/// Figure 7: LAN discovery in network namespaces, `trials` times: from starting a node to
/// it having admitted a node already on the LAN (found by mDNS). None when not root.
pub async fn discovery(lab: &mut Lab, trials: usize) -> anyhow::Result<Option<(Samples, Samples)>> {
    let Some(mut net) = crate::netns::Lab::new("bench") else {
        return Ok(None);
    };
    let seg = net.segment("sw", [10, 78, 1]);
    let h1 = net.host("h1", &seg, 1);
    let h2 = net.host("h2", &seg, 2);
    let home = lab.home("")?;
    let first = daemons::start(h1.command(&lab.bin), home, "first", &[])?;
    let mut from_start = Samples::default();
    let mut from_ready = Samples::default();
    for i in 0..trials {
        let home = lab.home("")?;
        let t0 = Instant::now();
        let node = daemons::start(h2.command(&lab.bin), home, &format!("new{i}"), &[])?;
        let ready = Instant::now();
        let c = node.client().await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Response::Peers(list) = c.call(Request::Peers).await?
                && list.iter().any(|p| p.peer_id == first.info.peer_id && p.connected)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("trial {i}: the node on the LAN was not found within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        from_start.push(t0.elapsed());
        from_ready.push(ready.elapsed());
        drop(c);
        drop(node);
    }
    drop(first);
    Ok(Some((from_start, from_ready)))
}
