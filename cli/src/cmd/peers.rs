//! `mesh peers` and `mesh dial`.

use mesh_node::api::{Request, Response};

use super::Ctx;
use crate::{expect, output};

pub async fn peers(ctx: &Ctx) -> anyhow::Result<()> {
    let peers = expect!(ctx.call(Request::Peers).await?, Response::Peers(p) => p);
    if ctx.json {
        return output::json(&peers);
    }
    if peers.is_empty() {
        println!(
            "no other nodes known yet (LAN nodes appear by themselves; others: {} dial <multiaddr>)",
            ctx.mesh()
        );
        return Ok(());
    }
    let rows = peers
        .iter()
        .map(|p| {
            vec![
                p.name.clone().map(|n| output::clean(&n)).unwrap_or_else(|| "?".into()),
                p.peer_id.to_string(),
                if p.connected {
                    "connected".into()
                } else if p.online {
                    "online".into()
                } else {
                    format!("offline, seen {}", output::ago(p.last_seen_ms.unwrap_or(0)))
                },
                p.rtt_us
                    .map(|us| format!("{:.2} ms", us as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                p.agents.to_string(),
                p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "),
            ]
        })
        .collect();
    output::table(&["NAME", "PEER ID", "STATE", "RTT", "AGENTS", "ADDRESSES"], rows);
    Ok(())
}

pub async fn dial(ctx: &Ctx, addr: &str) -> anyhow::Result<()> {
    // Check the syntax first: a typo deserves an answer even without a daemon.
    mesh_node::net::parse_multiaddr(addr).map_err(|e| anyhow::anyhow!(e))?;
    let peer = expect!(ctx.call(Request::Dial { addr: addr.to_string() }).await?, Response::Dialed { peer } => peer);
    if ctx.json {
        return output::json(&serde_json::json!({ "peer_id": peer.to_string() }));
    }
    println!("connected to {peer}");
    Ok(())
}
