//! Figures 1, 3 and 8: direct messages between agents of two daemons, latency and
//! throughput, and the breakdown of figure 1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_node::api::client::Client;
use mesh_node::api::{Request, SendRequest};
use tokio::sync::{Semaphore, oneshot};

use super::store::store_commit;
use super::{Baseline, Pair, Waiters, dispatch, expect_sent};
use crate::daemons::{Lab, agents_online, wait_known};
use crate::stats::{Row, Samples, ms};

/// Figure 1: agent-to-agent latency, one pair.
pub async fn latency_rows(p: &Pair, base: &Baseline, n: usize) -> anyhow::Result<Vec<Row>> {
    let s = dm_latency(p, "l1", 1, n).await?;
    let (p50, p99) = (ms(s.pct(50.0)), ms(s.pct(99.0)));
    Ok(vec![
        Row::new("1. DM latency p50, agent to agent (2 daemons)", p50, "ms")
            .baseline(base.p50)
            .target("<= 3x raw", p50 <= 3.0 * base.p50)
            .note(format!("{} samples", s.len())),
        Row::new("1. DM latency p99", p99, "ms")
            .baseline(base.p99)
            .target("< 5 ms", p99 < 5.0),
    ])
}

/// The breakdown of figure 1: to a local agent, a bare API round trip, one store commit.
pub async fn breakdown_rows(lab: &Lab, p: &Pair, n: usize) -> anyhow::Result<Vec<Row>> {
    let (local, api) = local_latency(p, n).await?;
    let mut rows = vec![
        Row::new("1a. breakdown: send to a local agent p50", ms(local.pct(50.0)), "ms")
            .note(format!("p99 {} ms (API, one commit, event)", ms(local.pct(99.0)))),
        Row::new("1b. breakdown: local API round trip p50", ms(api.pct(50.0)), "ms")
            .note(format!("p99 {} ms (Counts: a store read)", ms(api.pct(99.0)))),
    ];
    let commit = store_commit(lab, n).await?;
    rows.push(
        Row::new(
            "1c. breakdown: one durable store commit p50",
            ms(commit.pct(50.0)),
            "ms",
        )
        .note(format!("p99 {} ms (fsync'd; two per message)", ms(commit.pct(99.0)))),
    );
    Ok(rows)
}

/// Figure 3: durable throughput, one sending agent.
pub async fn throughput_rows(p: &Pair, base: &Baseline, quick: bool) -> anyhow::Result<Vec<Row>> {
    let total = if quick { 2000 } else { 20_000 };
    let tp = dm_throughput(p, "t3", 1, 128, total).await?;
    Ok(vec![
        Row::new("3. durable DM throughput (128 in flight)", tp.round(), "msg/s")
            .baseline(base.throughput.round())
            .target(">= 0.5x raw", tp >= 0.5 * base.throughput)
            .note(format!("{total} messages, committed both sides")),
    ])
}

/// Figure 8: latency and throughput with 1, 10 and 100 agents at once.
pub async fn scaling_rows(p: &Pair, base: &Baseline, quick: bool) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for k in [1usize, 10, 100] {
        let s = dm_latency(p, &format!("s{k}x"), k, if quick { 200 } else { 2000 }).await?;
        rows.push(
            Row::new(
                &format!("8. DM latency p50, {k} agent pairs at once"),
                ms(s.pct(50.0)),
                "ms",
            )
            .baseline(base.p50)
            .note(format!("p99 {} ms", ms(s.pct(99.0)))),
        );
        let total = if quick { 1000 } else { 10_000 };
        let tp = dm_throughput(p, &format!("s{k}t"), k, 128, total).await?;
        rows.push(
            Row::new(&format!("8. DM throughput, {k} sending agents"), tp.round(), "msg/s")
                .baseline(base.throughput.round()),
        );
    }
    Ok(rows)
}

/// Figure 1 / 8: agent-to-agent latency through the local API of two daemons, `k` agent
/// pairs at once, each doing sequential round trips: send call to recipient's event.
pub async fn dm_latency(p: &Pair, tag: &str, k: usize, total: usize) -> anyhow::Result<Samples> {
    let receivers: Vec<String> = (0..k).map(|i| format!("{tag}r{i}")).collect();
    let rx_client = p.b.client().await?;
    let events = agents_online(&rx_client, &receivers).await?;
    let (waiters, _) = dispatch(events);
    wait_known(&p.ca, &format!("{}@b", receivers[k - 1])).await?;
    let per = total.div_ceil(k);
    let clients = {
        let mut v = Vec::new();
        for _ in 0..k.div_ceil(32) {
            v.push(p.a.client().await?);
        }
        Arc::new(v)
    };
    let samples = Arc::new(Mutex::new(Samples::default()));
    let mut tasks = Vec::new();
    for i in 0..k {
        let (clients, waiters, samples) = (clients.clone(), waiters.clone(), samples.clone());
        let to = format!("{tag}r{i}@b");
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let client = &clients[i % clients.len()];
            for j in 0..per + 5 {
                let text = format!("{tag}:{i}:{j}");
                let took = round_trip(client, &waiters, format!("{tag}s{i}"), to.clone(), text).await?;
                // The first few of each agent warm up.
                if j >= 5 {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(took);
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let s = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(s)
}

/// One message from `from` to `to` through `client`: from the send call to the event that
/// brings it (`waiters` is fed by the recipient's events).
async fn round_trip(
    client: &Client,
    waiters: &Waiters,
    from: String,
    to: String,
    text: String,
) -> anyhow::Result<Duration> {
    let (tx, rx) = oneshot::channel();
    waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(text.clone(), tx);
    let t0 = Instant::now();
    let send = client.call(Request::Send(SendRequest {
        from,
        to,
        text,
        reply_to: None,
        id: None,
    }));
    let (sent, arrived) = tokio::join!(send, tokio::time::timeout(Duration::from_secs(20), rx));
    expect_sent(sent?)?;
    let at = arrived.context("a message never arrived")??;
    Ok(at - t0)
}

/// A breakdown of figure 1: the same, to an agent on the sending node (local API, one
/// commit, the event), and a bare local API round trip (`Counts`).
pub async fn local_latency(p: &Pair, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let rx = p.a.client().await?;
    let events = agents_online(&rx, &["localsink".to_string()]).await?;
    let (waiters, _) = dispatch(events);
    let mut local = Samples::default();
    for j in 0..n + n / 10 {
        let text = format!("local:{j}");
        let took = round_trip(&p.ca, &waiters, "localsrc".into(), "localsink".into(), text).await?;
        if j >= n / 10 {
            local.push(took);
        }
    }
    let mut api = Samples::default();
    for j in 0..n + n / 10 {
        let t0 = Instant::now();
        p.ca.call(Request::Counts {
            agent: "localsink".into(),
        })
        .await?;
        if j >= n / 10 {
            api.push(t0.elapsed());
        }
    }
    Ok((local, api))
}

/// Figure 3 / 8: durable messages per second, `k` sending agents, `in_flight` send calls
/// outstanding, `total` messages, until the last one is in the recipient's inbox.
pub async fn dm_throughput(p: &Pair, tag: &str, k: usize, in_flight: usize, total: usize) -> anyhow::Result<f64> {
    let rx_client = p.b.client().await?;
    let events = agents_online(&rx_client, &[format!("{tag}sink")]).await?;
    let (_, received) = dispatch(events);
    wait_known(&p.ca, &format!("{tag}sink@b")).await?;
    let clients = {
        let mut v = Vec::new();
        for _ in 0..in_flight.div_ceil(48) {
            v.push(p.a.client().await?);
        }
        Arc::new(v)
    };
    // The daemon serves at most 64 requests at once per connection: each client gets its
    // own share of the slots.
    let per_client = in_flight.div_ceil(clients.len());
    let slots: Vec<Arc<Semaphore>> = (0..clients.len())
        .map(|_| Arc::new(Semaphore::new(per_client)))
        .collect();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let c = n % clients.len();
        let permit = slots[c].clone().acquire_owned().await?;
        let clients = clients.clone();
        let from = format!("{tag}s{}", n % k);
        let to = format!("{tag}sink@b");
        tasks.spawn(async move {
            let r = clients[c]
                .call(Request::Send(SendRequest {
                    from,
                    to,
                    text: format!("{n} {}", "x".repeat(200)),
                    reply_to: None,
                    id: None,
                }))
                .await;
            drop(permit);
            r
        });
        while let Some(done) = tasks.try_join_next() {
            expect_sent(done??)?;
        }
    }
    while let Some(done) = tasks.join_next().await {
        expect_sent(done??)?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while received.load(std::sync::atomic::Ordering::Relaxed) < total as u64 {
        if Instant::now() > deadline {
            bail!("not every message arrived");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
