//! The figures of `docs/benchmarks.md`, each measured against its target (and, where one
//! exists, against the raw stack in the same run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_node::api::client::Client;
use mesh_node::api::{Event, PublishRequest, Request, Response, SendRequest};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::daemons::{self, Lab, Node, agents_online, connect, wait_known};
use crate::mcp::Mcp;
use crate::stats::{Row, Samples, ms};
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
                let (tx, rx) = oneshot::channel();
                waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(text.clone(), tx);
                let t0 = Instant::now();
                let send = client.call(Request::Send(SendRequest {
                    from: format!("{tag}s{i}"),
                    to: to.clone(),
                    text,
                    reply_to: None,
                    id: None,
                }));
                let (sent, arrived) = tokio::join!(send, tokio::time::timeout(Duration::from_secs(20), rx));
                expect_sent(sent?)?;
                let at = arrived.context("a message never arrived")??;
                // The first few of each agent warm up.
                if j >= 5 {
                    samples.lock().unwrap_or_else(|e| e.into_inner()).push(at - t0);
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

/// A breakdown of figure 1: the same, to an agent on the sending node (local API, one
/// commit, the event), and a bare local API round trip (`Counts`).
pub async fn local_latency(p: &Pair, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let rx = p.a.client().await?;
    let events = agents_online(&rx, &["localsink".to_string()]).await?;
    let (waiters, _) = dispatch(events);
    let mut local = Samples::default();
    for j in 0..n + n / 10 {
        let text = format!("local:{j}");
        let (tx, rx) = oneshot::channel();
        waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(text.clone(), tx);
        let t0 = Instant::now();
        let send = p.ca.call(Request::Send(SendRequest {
            from: "localsrc".into(),
            to: "localsink".into(),
            text,
            reply_to: None,
            id: None,
        }));
        let (sent, arrived) = tokio::join!(send, tokio::time::timeout(Duration::from_secs(20), rx));
        expect_sent(sent?)?;
        let at = arrived.context("a message never arrived")??;
        if j >= n / 10 {
            local.push(at - t0);
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

/// A breakdown of figure 1: one durable commit of the store (the one-writer queue, a small
/// write transaction, `Durability::Immediate`), as a daemon does twice per message.
pub async fn store_commit(lab: &Lab, n: usize) -> anyhow::Result<Samples> {
    let dir = lab.dir.path().join("commit-probe");
    std::fs::create_dir_all(&dir)?;
    let me = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    let store = mesh_node::store::Store::open(&dir.join("store.redb"), me)?;
    let addr: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/1".parse()?;
    let mut s = Samples::default();
    for j in 0..n + n / 10 {
        let a = addr.clone();
        let t0 = Instant::now();
        store
            .write("probe", move |t| mesh_node::store::ops::put_dialed(t, &me, &a))
            .await?;
        if j >= n / 10 {
            s.push(t0.elapsed());
        }
    }
    store.close().await;
    Ok(s)
}

/// Figure 9: the checks a store gets at every start (every record read and decoded, page
/// checksums on a scratch copy), for a store holding `n` messages. Returns the open times
/// of `trials` opens and the file size.
pub async fn store_check(lab: &Lab, n: usize, trials: usize) -> anyhow::Result<(Samples, u64)> {
    use mesh_node::ids::{AgentName, MessageId};
    use mesh_node::store::{Store, ops};
    use mesh_node::wire::WireMessage;
    let dir = lab.dir.path().join(format!("check-probe-{n}"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("store.redb");
    let me = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
    {
        let store = Store::open(&path, me)?;
        let bob = AgentName::new("bob")?;
        let b = bob.clone();
        store
            .write("agent", move |t| ops::ensure_agent(t, &b, "human", 1))
            .await?;
        for chunk in 0..n.div_ceil(1000) {
            let batch: Vec<WireMessage> = (0..1000.min(n - chunk * 1000))
                .map(|i| WireMessage {
                    id: MessageId::new(),
                    from: bob.clone(),
                    to: bob.clone(),
                    sent_at_ms: 1,
                    reply_to: None,
                    text: format!("message {chunk}/{i}: a line of text an agent might send, about this long"),
                })
                .collect();
            store
                .write("fill", move |t| ops::accept(t, peer, None, batch, 100_000, 1))
                .await?;
        }
        store.close().await;
    }
    let size = std::fs::metadata(&path)?.len();
    let mut s = Samples::default();
    for _ in 0..trials {
        let t0 = Instant::now();
        let store = Store::open(&path, me)?;
        s.push(t0.elapsed());
        store.close().await;
    }
    Ok((s, size))
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

/// Figure 2: tools/call `send` on one `mesh mcp` to `notifications/claude/channel` on
/// another, through two daemons.
pub async fn mcp_latency(lab: &Lab, p: &Pair, n: usize) -> anyhow::Result<Samples> {
    let mut rx = Mcp::spawn(&lab.bin, p.b.home.path(), "bench-rx")?;
    rx.initialize().await?;
    let mut tx = Mcp::spawn(&lab.bin, p.a.home.path(), "bench-tx")?;
    tx.initialize().await?;
    // Any tool waits for the session to be attached; then the recipient must be known.
    tx.tool("whoami", json!({})).await?;
    rx.tool("whoami", json!({})).await?;
    wait_known(&p.ca, "bench-rx@b").await?;
    let mut samples = Samples::default();
    for i in 0..n + n / 10 {
        let t0 = Instant::now();
        let id = tx
            .request(
                "tools/call",
                json!({"name": "send", "arguments": {"to": "bench-rx@b", "text": format!("ping {i}")}}),
            )
            .await?;
        let (at, push) = rx.notification("notifications/claude/channel").await?;
        if push["params"]["content"] != format!("ping {i}") {
            bail!("unexpected push {push}");
        }
        tx.response(id).await?;
        if i >= n / 10 {
            samples.push(at - t0);
        }
    }
    Ok(samples)
}

/// Figure 4: one publisher, `n` nodes, a message every `every` for `dur`: delivery ratio,
/// publish-to-receive latency.
pub struct Fanout {
    /// Deliveries over expected deliveries.
    pub ratio: f64,
    /// Publish call to each subscriber's event.
    pub latency: Samples,
    /// The publish call alone.
    pub calls: Samples,
    pub sent: usize,
}

pub async fn fanout(lab: &mut Lab, n: usize, every: Duration, dur: Duration) -> anyhow::Result<Fanout> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(lab.node(&format!("f{i}"))?);
    }
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await?);
    }
    // Every node dials the publisher and two earlier nodes: a mesh, not a star.
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
    // Subscribers on every node but the publisher, each with its own event stream.
    let arrivals: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::new(Mutex::new(HashMap::new()));
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
    let publisher = &clients[0];
    let publish = |text: String| {
        Request::Publish(PublishRequest {
            agent: "pub".into(),
            topic: "fanout".into(),
            text,
            reply_to: None,
            id: None,
        })
    };
    // Warm up until the publisher reaches its direct subscribers and everyone got one.
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
            break;
        }
        if Instant::now() > deadline {
            bail!("the gossip mesh did not form: {got} of {} subscribers reached", n - 1);
        }
        w += 1;
    }
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

/// Figure 6: `mesh send` as a whole process, and `mesh mcp` from spawn to initialize.
pub async fn commands(lab: &Lab, p: &Pair, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let rx = p.b.client().await?;
    let _ev = agents_online(&rx, &["cmdsink".to_string()]).await?;
    wait_known(&p.ca, "cmdsink@b").await?;
    let mut send = Samples::default();
    for i in 0..n + 2 {
        let (bin, home) = (lab.bin.clone(), p.a.home.path().to_path_buf());
        let took = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let out = std::process::Command::new(&bin)
                .arg("--home")
                .arg(&home)
                .args(["send", "cmdsink@b", &format!("cmd {i}")])
                .output()?;
            if !out.status.success() {
                bail!("mesh send failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(t0.elapsed())
        })
        .await??;
        if i >= 2 {
            send.push(took);
        }
    }
    let mut init = Samples::default();
    for i in 0..n + 2 {
        let t0 = Instant::now();
        let mut m = Mcp::spawn(&lab.bin, p.a.home.path(), &format!("probe{i}"))?;
        let at = m.initialize().await?;
        if i >= 2 {
            init.push(at - t0);
        }
    }
    Ok((send, init))
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

/// Runs everything the plan asks for.
pub async fn run(plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut lab = Lab::new()?;
    let q = plan.quick;
    let n_lat = if q { 100 } else { 2000 };

    // The raw stack, measured first in this same run.
    let raw_rt = raw::round_trips(n_lat, 32).await?;
    let raw_tp = raw::throughput(64, 256, Duration::from_secs(if q { 1 } else { 3 })).await?;
    let raw_p50 = ms(raw_rt.pct(50.0));
    rows.push(
        Row::new("0. raw libp2p request-response p50 (32 B)", raw_p50, "ms").note(format!(
            "p99 {} ms, {} samples",
            ms(raw_rt.pct(99.0)),
            raw_rt.len()
        )),
    );
    rows.push(Row::new(
        "0. raw libp2p request-response, 64 in flight",
        raw_tp.round(),
        "req/s",
    ));

    let p = pair(&mut lab).await?;
    if plan.wants(1) {
        let s = dm_latency(&p, "l1", 1, n_lat).await?;
        let (p50, p99) = (ms(s.pct(50.0)), ms(s.pct(99.0)));
        rows.push(
            Row::new("1. DM latency p50, agent to agent (2 daemons)", p50, "ms")
                .baseline(raw_p50)
                .target("<= 3x raw", p50 <= 3.0 * raw_p50)
                .note(format!("{} samples", s.len())),
        );
        rows.push(
            Row::new("1. DM latency p99", p99, "ms")
                .baseline(ms(raw_rt.pct(99.0)))
                .target("< 5 ms", p99 < 5.0),
        );
    }
    if plan.wants(1) {
        let (local, api) = local_latency(&p, n_lat).await?;
        rows.push(
            Row::new("1a. breakdown: send to a local agent p50", ms(local.pct(50.0)), "ms")
                .note(format!("p99 {} ms (API, one commit, event)", ms(local.pct(99.0)))),
        );
        rows.push(
            Row::new("1b. breakdown: local API round trip p50", ms(api.pct(50.0)), "ms")
                .note(format!("p99 {} ms (Counts: a store read)", ms(api.pct(99.0)))),
        );
        let commit = store_commit(&lab, n_lat).await?;
        rows.push(
            Row::new(
                "1c. breakdown: one durable store commit p50",
                ms(commit.pct(50.0)),
                "ms",
            )
            .note(format!("p99 {} ms (fsync'd; two per message)", ms(commit.pct(99.0)))),
        );
    }
    if plan.wants(2) {
        let s = mcp_latency(&lab, &p, if q { 50 } else { 500 }).await?;
        let p50 = ms(s.pct(50.0));
        rows.push(
            Row::new("2. MCP send to channel push p50 (2 adapters)", p50, "ms")
                .baseline(raw_p50)
                .target("< 2 ms", p50 < 2.0)
                .note(format!("p99 {} ms, {} samples", ms(s.pct(99.0)), s.len())),
        );
    }
    if plan.wants(3) {
        let total = if q { 2000 } else { 20_000 };
        let tp = dm_throughput(&p, "t3", 1, 128, total).await?;
        rows.push(
            Row::new("3. durable DM throughput (128 in flight)", tp.round(), "msg/s")
                .baseline(raw_tp.round())
                .target(">= 0.5x raw", tp >= 0.5 * raw_tp)
                .note(format!("{total} messages, committed both sides")),
        );
    }
    if plan.wants(8) {
        for k in [1usize, 10, 100] {
            let s = dm_latency(&p, &format!("s{k}x"), k, if q { 200 } else { 2000 }).await?;
            rows.push(
                Row::new(
                    &format!("8. DM latency p50, {k} agent pairs at once"),
                    ms(s.pct(50.0)),
                    "ms",
                )
                .baseline(raw_p50)
                .note(format!("p99 {} ms", ms(s.pct(99.0)))),
            );
            let total = if q { 1000 } else { 10_000 };
            let tp = dm_throughput(&p, &format!("s{k}t"), k, 128, total).await?;
            rows.push(
                Row::new(&format!("8. DM throughput, {k} sending agents"), tp.round(), "msg/s")
                    .baseline(raw_tp.round()),
            );
        }
    }
    if plan.wants(6) {
        let (send, init) = commands(&lab, &p, if q { 5 } else { 30 }).await?;
        let (s50, i50) = (ms(send.pct(50.0)), ms(init.pct(50.0)));
        rows.push(
            Row::new("6. `mesh send` whole process p50", s50, "ms")
                .target("15 ms", s50 <= 15.0)
                .note(format!("p99 {} ms", ms(send.pct(99.0)))),
        );
        rows.push(
            Row::new("6. `mesh mcp` spawn to initialize p50", i50, "ms")
                .target("50 ms", i50 <= 50.0)
                .note(format!("p99 {} ms", ms(init.pct(99.0)))),
        );
    }
    drop(p);
    if plan.wants(4) {
        // The target is for 50 nodes; smaller meshes first show the curve.
        let (sizes, dur): (&[usize], _) = if q {
            (&[10], Duration::from_secs(1))
        } else {
            (&[10, 25, 50], Duration::from_secs(10))
        };
        for &n in sizes {
            let f = fanout(&mut lab, n, Duration::from_millis(10), dur).await?;
            let judged = n == 50 || q;
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
    }
    if plan.wants(5) {
        let dur = Duration::from_secs(if q { 5 } else { 60 });
        let (cpu, mem) = idle(&mut lab, 5, dur).await?;
        let mib = |b: u64| (b as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0;
        rows.push(
            Row::new("5. idle daemon, 5 peers: RSS", mib(mem.rss), "MiB")
                .target("< 20 MiB", mib(mem.rss) < 20.0)
                .note(format!(
                    "peak {} MiB; {} MiB private, {} MiB mapped program code",
                    mib(mem.peak),
                    mib(mem.anon),
                    mib(mem.file)
                )),
        );
        rows.push(
            Row::new("5. idle daemon, 5 peers: CPU", (cpu * 1000.0).round() / 1000.0, "%")
                .target("< 0.5%", cpu < 0.5)
                .note(format!("over {} s", dur.as_secs())),
        );
    }
    if plan.wants(10) {
        let f = flood(
            &mut lab,
            Duration::from_secs(if q { 8 } else { 30 }),
            if q { 3 } else { 20 },
            // The smoke run keeps the socket churn low: attacker and daemon share this
            // host's ephemeral ports, which a long run of evicted sockets can exhaust.
            if q { 0 } else { 100 },
        )
        .await?;
        let grew = f.peak_rss.saturating_sub(f.idle_rss) as f64 / 1048576.0;
        rows.push(
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
        );
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
    }
    if plan.wants(9) {
        let sizes: &[usize] = if q { &[1000] } else { &[10_000, 100_000] };
        for &n in sizes {
            let (s, size) = store_check(&lab, n, if q { 2 } else { 5 }).await?;
            let p50 = ms(s.pct(50.0));
            let mut row = Row::new(&format!("9. store checked at start, {n} messages"), p50, "ms").note(format!(
                "file {:.1} MiB; every record decoded, checksums on a scratch copy",
                size as f64 / 1048576.0
            ));
            if n == 100_000 {
                row = row.target("< 1 s", p50 < 1000.0);
            }
            rows.push(row);
        }
    }
    if plan.wants(7) {
        match discovery(&mut lab, if q { 3 } else { 20 }).await? {
            Some((start, ready)) => {
                let p99 = ms(start.pct(99.0));
                rows.push(
                    Row::new("7. LAN discovery, start to admitted peer p99", p99, "ms")
                        .target("< 1 s", p99 < 1000.0)
                        .note(format!(
                            "p50 {} ms; from ready p50 {} / p99 {} ms; {} trials",
                            ms(start.pct(50.0)),
                            ms(ready.pct(50.0)),
                            ms(ready.pct(99.0)),
                            start.len()
                        )),
                );
            }
            None => rows.push(Row::new("7. LAN discovery", 0.0, "ms").note("skipped: needs root")),
        }
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
