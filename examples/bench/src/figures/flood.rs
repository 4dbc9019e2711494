//! Figure 10: outsiders flooding a daemon at its connection cap while nodes join through it.

use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_node::api::client::Client;
use mesh_node::api::{Request, Response};

use crate::daemons::{self, Lab};
use crate::stats::{Row, Samples, ms};

/// Figure 10: memory under the flood, and joins through it.
pub async fn rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    let f = flood(
        lab,
        Duration::from_secs(if quick { 8 } else { 30 }),
        if quick { 3 } else { 20 },
        // The smoke run keeps the socket churn low: attacker and daemon share this
        // host's ephemeral ports, which a long run of evicted sockets can exhaust.
        if quick { 0 } else { 100 },
    )
    .await?;
    let grew = f.peak_rss.saturating_sub(f.idle_rss) as f64 / 1048576.0;
    let mut rows = vec![
        Row::new(
            "10. outsider flood at the connection cap: peak RSS above idle",
            grew,
            "MiB",
        )
        .target("< 64 MiB", grew < 64.0)
        .note(format!(
            "idle {:.1} MiB, peak {:.1} MiB; {} identities, {} requests, {} idle sockets",
            f.idle_rss as f64 / 1048576.0,
            f.peak_rss as f64 / 1048576.0,
            f.report.identities,
            f.report.requests,
            f.report.sockets
        )),
    ];
    if f.joins.len() > 0 {
        rows.push(
            Row::new("10. join latency during the flood p50", ms(f.joins.pct(50.0)), "ms").note(format!(
                "max {} ms, {} joins; without the flood p50 {} ms",
                ms(f.joins.pct(100.0)),
                f.joins.len(),
                ms(f.quiet_joins.pct(50.0))
            )),
        );
    }
    Ok(rows)
}

/// What figure 10 measured.
pub struct Flood {
    /// RSS of the target daemon before the flood.
    pub idle_rss: u64,
    /// Highest RSS sampled while the flood ran.
    pub peak_rss: u64,
    /// Join latency (code handed to a fresh node to its `Joined` answer) during the flood.
    pub joins: Samples,
    /// The same before the flood.
    pub quiet_joins: Samples,
    /// What the flood did.
    pub report: mesh_node::hostile::FloodReport,
}

/// Figure 10: outsiders flood a `mesh up` daemon at its connection cap (64 throw-away
/// identities at a time from 8 loopback addresses, every protocol written into, plus idle
/// sockets) for `dur`; meanwhile fresh nodes join through it, one after another.
pub async fn flood(lab: &mut Lab, dur: Duration, joins: usize, idle_sockets: usize) -> anyhow::Result<Flood> {
    let target = lab.node("target")?;
    let c = target.client().await?;
    let mut n = 0;
    let mut quiet_joins = Samples::default();
    for _ in 0..joins.div_ceil(4) {
        quiet_joins.push(join_once(lab, &c, &mut n).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = target.pid();
    let idle_rss = daemons::memory(pid)?.rss;
    let addr: libp2p::Multiaddr = target.addr().parse()?;
    let attack = tokio::spawn(mesh_node::hostile::flood(mesh_node::hostile::FloodPlan {
        target: addr,
        identities: 64,
        sources: 8,
        idle_sockets,
        duration: dur,
        member: None,
    }));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let on = sampling.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            let stop = Instant::now() + dur + Duration::from_secs(30);
            while on.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < stop {
                if let Ok(m) = daemons::memory(pid) {
                    peak = peak.max(m.rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    // Let the flood reach the cap, then join through it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = Samples::default();
    let stop = Instant::now() + dur.saturating_sub(Duration::from_secs(3));
    for _ in 0..joins {
        if Instant::now() >= stop {
            break;
        }
        samples.push(join_once(lab, &c, &mut n).await?);
    }
    let report = attack.await?;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let peak_rss = sampler.join().map_err(|_| anyhow::anyhow!("sampler"))?;
    Ok(Flood {
        idle_rss,
        peak_rss,
        joins: samples,
        quiet_joins,
        report,
    })
}

/// A fresh node joins the mesh of the node behind `c` with a code it made: how long from
/// handing the code over to the `Joined` answer.
async fn join_once(lab: &mut Lab, c: &Client, n: &mut usize) -> anyhow::Result<Duration> {
    let code = match c.call(Request::Invite { ttl_s: 600, uses: 1 }).await? {
        Response::Invite(v) => v.code,
        other => bail!("invite: {other:?}"),
    };
    *n += 1;
    let joiner = lab.outsider(&format!("joiner{n}"))?;
    let jc = joiner.client().await?;
    let t0 = Instant::now();
    match jc.call(Request::Join { code }).await? {
        Response::Joined(_) => Ok(t0.elapsed()),
        other => bail!("a join failed: {other:?}"),
    }
}
