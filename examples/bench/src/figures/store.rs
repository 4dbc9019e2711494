//! Figure 9 and the store commit of figure 1's breakdown: the store on its own, opened
//! in this process.

use std::time::Instant;

use crate::daemons::Lab;
use crate::stats::{Row, Samples, ms};

/// Figure 9: the checks at start, by store size.
pub async fn check_rows(lab: &Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let sizes: &[usize] = if quick { &[1000] } else { &[10_000, 100_000] };
    for &n in sizes {
        let (s, size) = store_check(lab, n, if quick { 2 } else { 5 }).await?;
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
    Ok(rows)
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
