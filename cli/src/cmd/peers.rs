//! `mesh peers` and `mesh dial`.

use mesh_node::api::LocalApi;
use mesh_node::api::calls::{Forgotten, Pong};

use super::Ctx;
use crate::output;

pub async fn peers(ctx: &Ctx) -> anyhow::Result<()> {
    let peers = ctx.peers().await?;
    if ctx.json {
        return output::json(&peers);
    }
    if peers.is_empty() {
        crate::outln!(
            "no other nodes known yet (LAN nodes appear by themselves; to bring one into this mesh: {} invite)",
            ctx.mesh()
        );
        return Ok(());
    }
    let (members, outsiders): (Vec<_>, Vec<_>) = peers.iter().partition(|p| p.member);
    if members.is_empty() {
        crate::outln!("no other members known yet (invite a node: {} invite)", ctx.mesh());
    } else {
        let rows = members
            .iter()
            .map(|p| {
                vec![
                    p.name.clone().map(|n| output::field(&n)).unwrap_or_else(|| "?".into()),
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
                    p.connections
                        .iter()
                        .map(|c| c.describe())
                        .chain(p.punch.as_ref().map(|x| output::field(&x.describe())))
                        .collect::<Vec<_>>()
                        .join("; "),
                    p.agents.to_string(),
                    p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" "),
                ]
            })
            .collect();
        output::table(
            &["NAME", "PEER ID", "STATE", "RTT", "PATH", "AGENTS", "ADDRESSES"],
            rows,
        );
    }
    if !outsiders.is_empty() {
        crate::outln!("\nnearby, not members of this mesh (nothing of theirs reaches your agents):");
        let rows = outsiders
            .iter()
            .map(|p| {
                vec![
                    p.name
                        .clone()
                        .map(|n| format!("{} (claimed)", output::field(&n)))
                        .unwrap_or_else(|| "?".into()),
                    p.peer_id.to_string(),
                    format!("seen {}", output::ago(p.last_seen_ms.unwrap_or(0))),
                    p.refused.as_deref().map(output::field).unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["NAME", "PEER ID", "STATE", "NOT ADMITTED BECAUSE"], rows);
        crate::outln!(
            "to bring one in: `{} invite` here, then `mesh join <code>` on that node",
            ctx.mesh()
        );
    }
    Ok(())
}

pub async fn dial(ctx: &Ctx, addr: &str, forget: bool) -> anyhow::Result<()> {
    if forget {
        let Forgotten { peer, was } = ctx.forget(addr).await?;
        if ctx.json {
            return output::json(&serde_json::json!({ "peer_id": peer.to_string(), "forgotten": was }));
        }
        if was {
            crate::outln!("{peer} forgotten: it will not be redialed");
        } else {
            crate::outln!("{peer} was not remembered");
        }
        return Ok(());
    }
    // Check the syntax first: a typo deserves an answer even without a daemon.
    mesh_node::net::parse_multiaddr(addr).map_err(|e| anyhow::anyhow!(e))?;
    let peer = ctx.dial(addr).await?;
    if ctx.json {
        return output::json(&serde_json::json!({ "peer_id": peer.to_string() }));
    }
    crate::outln!(
        "connected to {peer} (kept connected; `{} dial --forget {peer}` to stop)",
        ctx.mesh()
    );
    Ok(())
}

pub async fn ping(ctx: &Ctx, node: &str, count: u32) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let count = count.clamp(1, 1000);
    let mut rtts = Vec::new();
    let mut pinged = None;
    for i in 0..count {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        let Pong {
            peer,
            rtt_us,
            connection: conn,
        } = client.ping(node).await?;
        rtts.push(rtt_us);
        pinged = Some(peer);
        if ctx.json {
            output::json_line(&serde_json::json!({
                "peer_id": peer.to_string(), "rtt_us": rtt_us, "path": conn.describe(), "connection": conn
            }))?;
        } else {
            crate::outln!("{peer}: time={:.2} ms, {}", rtt_us as f64 / 1000.0, conn.describe());
        }
    }
    // Reached through relays only: say how punching for a direct connection goes.
    if !ctx.json
        && let Some(pinged) = pinged
        && let Some(punch) = ctx
            .peers()
            .await?
            .into_iter()
            .find(|p| p.peer_id == pinged)
            .and_then(|p| p.punch)
    {
        crate::outln!("{}", output::field(&punch.describe()));
    }
    if !ctx.json && rtts.len() > 1 {
        let min = rtts.iter().min().copied().unwrap_or(0) as f64 / 1000.0;
        let max = rtts.iter().max().copied().unwrap_or(0) as f64 / 1000.0;
        let avg = rtts.iter().sum::<u64>() as f64 / rtts.len() as f64 / 1000.0;
        crate::outln!(
            "{} round trips: min {min:.2} / avg {avg:.2} / max {max:.2} ms",
            rtts.len()
        );
    }
    Ok(())
}

pub async fn addr(ctx: &Ctx) -> anyhow::Result<()> {
    let a = ctx.addrs().await?;
    if ctx.json {
        return output::json(&a);
    }
    let section = |title: &str, list: &[String]| {
        if !list.is_empty() {
            crate::outln!("{title}");
            for x in list {
                crate::outln!("  {x}");
            }
        }
    };
    section("reachable from the internet:", &a.public);
    section("through a relay (works behind NAT):", &a.relayed);
    section(
        "not confirmed reachable yet (public-looking, untested):",
        &a.unconfirmed,
    );
    section("on this local network only:", &a.lan);
    if a.public.is_empty() && a.relayed.is_empty() {
        crate::outln!(
            "\nNo internet-reachable address yet. Behind NAT, this node becomes reachable through a relay: dial a \
             node that runs `mesh up --relay` (or set relay.nodes in config.toml)."
        );
    }
    crate::outln!("\nThe other person runs: mesh dial <one of these>");
    Ok(())
}
