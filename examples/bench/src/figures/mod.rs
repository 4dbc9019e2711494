//! The figures of `docs/benchmarks.md`, each measured against its target (and, where one
//! exists, against the raw stack in the same run).

mod clients;
mod dm;
mod fanout;
mod flood;
mod host;
mod page;
mod reach;
mod rendezvous;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_node::api::client::Client;
use mesh_node::api::{Event, Response};
use tokio::sync::{mpsc, oneshot};

use crate::daemons::{Lab, Node, connect};
use crate::stats::{Row, ms};
use crate::{Plan, raw};

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// Routes message events to whoever waits for that text, with the time they arrived.
fn dispatch(mut events: mpsc::Receiver<Event>) -> (Waiters, Arc<std::sync::atomic::AtomicU64>) {
    let waiters: Waiters = Arc::new(Mutex::new(HashMap::new()));
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (w, c) = (waiters.clone(), count.clone());
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let at = Instant::now();
            if let Event::Message(m) = e {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(tx) = w.lock().unwrap_or_else(|e| e.into_inner()).remove(&m.text) {
                    let _ = tx.send(at);
                }
            }
        }
    });
    (waiters, count)
}

fn expect_sent(r: Response) -> anyhow::Result<()> {
    match r {
        Response::Sent(_) => Ok(()),
        other => bail!("send: {other:?}"),
    }
}

/// Two daemons, A and B, connected; clients to both.
pub struct Pair {
    pub a: Node,
    pub b: Node,
    pub ca: Client,
}

pub async fn pair(lab: &mut Lab) -> anyhow::Result<Pair> {
    let a = lab.node("a")?;
    let b = lab.node("b")?;
    let ca = a.client().await?;
    connect(&ca, &b).await?;
    Ok(Pair { a, b, ca })
}

/// The raw stack's figures, measured first in the same run: what the daemon's are
/// compared with.
pub struct Baseline {
    /// Request-response round trip p50, in ms.
    pub p50: f64,
    /// Its p99, in ms.
    pub p99: f64,
    /// Requests per second, 64 in flight.
    pub throughput: f64,
}

impl Baseline {
    async fn measure(quick: bool, n: usize) -> anyhow::Result<(Self, Vec<Row>)> {
        let raw_rt = raw::round_trips(n, 32).await?;
        let raw_tp = raw::throughput(64, 256, Duration::from_secs(if quick { 1 } else { 3 })).await?;
        let base = Baseline {
            p50: ms(raw_rt.pct(50.0)),
            p99: ms(raw_rt.pct(99.0)),
            throughput: raw_tp,
        };
        let rows = vec![
            Row::new("0. raw libp2p request-response p50 (32 B)", base.p50, "ms").note(format!(
                "p99 {} ms, {} samples",
                ms(raw_rt.pct(99.0)),
                raw_rt.len()
            )),
            Row::new("0. raw libp2p request-response, 64 in flight", raw_tp.round(), "req/s"),
        ];
        Ok((base, rows))
    }
}

/// Runs everything the plan asks for.
pub async fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut lab = Lab::new()?;
    let q = plan.quick;
    let n_lat = if q { 100 } else { 2000 };

    // The raw stack, measured first in this same run.
    let (base, mut rows) = Baseline::measure(q, n_lat).await?;

    let p = pair(&mut lab).await?;
    if plan.wants(1) {
        rows.extend(dm::latency_rows(&p, &base, n_lat).await?);
        rows.extend(dm::breakdown_rows(&lab, &p, n_lat).await?);
    }
    if plan.wants(2) {
        rows.extend(clients::mcp_rows(&lab, &p, &base, q).await?);
    }
    if plan.wants(3) {
        rows.extend(dm::throughput_rows(&p, &base, q).await?);
    }
    if plan.wants(8) {
        rows.extend(dm::scaling_rows(&p, &base, q).await?);
    }
    if plan.wants(6) {
        rows.extend(clients::command_rows(&lab, &p, q).await?);
    }
    drop(p);
    if plan.wants(4) {
        rows.extend(fanout::rows(&mut lab, q).await?);
    }
    if plan.wants(5) {
        rows.extend(host::idle_rows(&mut lab, q).await?);
    }
    if plan.wants(10) {
        rows.extend(flood::rows(&mut lab, q).await?);
    }
    if plan.wants(9) {
        rows.extend(store::check_rows(&lab, q).await?);
    }
    if plan.wants(7) {
        rows.extend(host::discovery_rows(&mut lab, q).await?);
    }
    if plan.wants(11) {
        rows.extend(reach::rows(&mut lab, q).await?);
    }
    if plan.wants(12) {
        rows.extend(page::rows(&mut lab, q).await?);
    }
    Ok(rows)
}
