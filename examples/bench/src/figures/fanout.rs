//! Figure 4: topic fan-out, one publisher and `n - 1` subscribers on as many daemons.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use mesh_node::api::client::Client;
use mesh_node::api::{Event, PublishRequest, Request, Response};

use crate::daemons::{Lab, Node, agents_online, connect};
use crate::stats::{Row, Samples, ms};

/// When each subscriber got each text.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// Figure 4: delivery ratio and latency by mesh size (the target is for 50 nodes;
/// smaller meshes first show the curve).
pub async fn rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    let (sizes, dur): (&[usize], _) = if quick {
        (&[10], Duration::from_secs(1))
    } else {
        (&[10, 25, 50], Duration::from_secs(10))
    };
    let mut rows = Vec::new();
    for &n in sizes {
        let f = fanout(lab, n, Duration::from_millis(10), dur).await?;
        let judged = n == 50 || quick;
        let mut row = Row::new(
            &format!("4. topic fan-out delivered, {n} nodes"),
            (f.ratio * 10000.0).round() / 100.0,
            "%",
        )
        .note(format!(
            "{} of {} messages published (publish call p50 {} ms) x {} subscribers",
            f.sent,
            dur.as_millis() / 10,
            ms(f.calls.pct(50.0)),
            n - 1
        ));
        if judged {
            row = row.target("100%", f.ratio >= 1.0);
        }
        rows.push(row);
        let p99 = ms(f.latency.pct(99.0));
        let mut row = Row::new(&format!("4. topic publish-to-receive p99, {n} nodes"), p99, "ms")
            .note(format!("p50 {} ms", ms(f.latency.pct(50.0))));
        if judged {
            row = row.target("< 100 ms", p99 < 100.0);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What figure 4 measured for one mesh size.
pub struct Fanout {
    /// Deliveries over expected deliveries.
    pub ratio: f64,
    /// Publish call to each subscriber's event.
    pub latency: Samples,
    /// The publish call alone.
    pub calls: Samples,
    pub sent: usize,
}

/// One publisher, `n` nodes, a message every `every` for `dur`: delivery ratio,
/// publish-to-receive latency.
pub async fn fanout(lab: &mut Lab, n: usize, every: Duration, dur: Duration) -> anyhow::Result<Fanout> {
    let (nodes, clients) = build_mesh(lab, n).await?;
    let (arrivals, watchers) = subscribe(&nodes).await?;
    let publisher = &clients[0];
    warm_up(publisher, &arrivals, n).await?;
    let (sent, calls) = publish_for(publisher, every, dur).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrivals = arrivals.lock().unwrap_or_else(|e| e.into_inner());
    let mut samples = Samples::default();
    let mut delivered = 0usize;
    for (text, t0) in &sent {
        if let Some(v) = arrivals.get(text) {
            delivered += v.len().min(n - 1);
            for at in v {
                samples.push(*at - *t0);
            }
        }
    }
    let expected = sent.len() * (n - 1);
    drop(watchers);
    // The nodes go now, before the next size starts.
    drop(nodes);
    Ok(Fanout {
        ratio: delivered as f64 / expected as f64,
        latency: samples,
        calls,
        sent: sent.len(),
    })
}

/// `n` daemons, each dialing the publisher (the first) and two earlier nodes: a mesh, not
/// a star. Returns them with a client to each.
async fn build_mesh(lab: &mut Lab, n: usize) -> anyhow::Result<(Vec<Node>, Vec<Client>)> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(lab.node(&format!("f{i}"))?);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await?);
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for (i, client) in clients.iter().enumerate().skip(1) {
        connect(client, &nodes[0]).await?;
        for _ in 0..2.min(i - 1) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let j = 1 + (rng as usize) % (i - 1);
            connect(client, &nodes[j]).await?;
        }
    }
    Ok((nodes, clients))
}

/// Subscribers on every node but the publisher, each with its own event stream; their
/// clients are kept open while the figure runs.
async fn subscribe(nodes: &[Node]) -> anyhow::Result<(Arrivals, Vec<Client>)> {
    let arrivals: Arrivals = Arc::new(Mutex::new(HashMap::new()));
    let mut watchers = Vec::new();
    for node in nodes.iter().skip(1) {
        let c = node.client().await?;
        let mut ev = agents_online(&c, &["sub".to_string()]).await?;
        c.call(Request::Subscribe {
            agent: "sub".into(),
            topic: "fanout".into(),
        })
        .await?;
        let arrivals = arrivals.clone();
        watchers.push(c);
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                let at = Instant::now();
                if let Event::Message(m) = e {
                    arrivals
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(m.text)
                        .or_default()
                        .push(at);
                }
            }
        });
    }
    Ok((arrivals, watchers))
}

fn publish(text: String) -> Request {
    Request::Publish(PublishRequest {
        agent: "pub".into(),
        topic: "fanout".into(),
        text,
        reply_to: None,
        id: None,
    })
}

/// Publishes until the publisher reaches its direct subscribers and everyone got one.
async fn warm_up(publisher: &Client, arrivals: &Arrivals, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut w = 0;
    loop {
        let text = format!("warm-up {w}");
        publisher.call(publish(text.clone())).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = arrivals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&text)
            .map(|v| v.len())
            .unwrap_or(0);
        if got == n - 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the gossip mesh did not form: {got} of {} subscribers reached", n - 1);
        }
        w += 1;
    }
}

/// A message every `every` for `dur`: each text with when its publish call began, and
/// how long the calls took.
async fn publish_for(
    publisher: &Client,
    every: Duration,
    dur: Duration,
) -> anyhow::Result<(Vec<(String, Instant)>, Samples)> {
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let mut calls = Samples::default();
    let start = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut i = 0;
    while start.elapsed() < dur {
        tick.tick().await;
        let text = format!("m{i}");
        let t0 = Instant::now();
        match publisher.call(publish(text.clone())).await? {
            Response::Published(_) => {}
            other => bail!("publish: {other:?}"),
        }
        calls.push(t0.elapsed());
        sent.push((text, t0));
        i += 1;
    }
    Ok((sent, calls))
}
