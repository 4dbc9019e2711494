//! `mesh invite`, `mesh join`, `mesh members`, `mesh remove`, `mesh leave`.

use mesh_node::api::{LocalApi, MeshView};

use super::Ctx;
use crate::cli::InviteArgs;
use crate::output;

fn mesh_line(m: &MeshView) -> String {
    if m.open {
        return "OPEN MODE: every node in open mode is admitted, with no secret".into();
    }
    format!(
        "mesh {} (key generation {}, {} member{} known{})",
        m.id,
        m.epoch,
        m.members,
        if m.members == 1 { "" } else { "s" },
        if m.removed > 0 {
            format!(", {} removed", m.removed)
        } else {
            String::new()
        }
    )
}

pub async fn invite(ctx: &Ctx, a: InviteArgs) -> anyhow::Result<()> {
    let v = ctx.invite(a.ttl.as_secs(), a.uses).await?;
    if ctx.json {
        return output::json(&v);
    }
    crate::outln!("{}", v.code);
    eprintln!(
        "\nJoin code for mesh {}: valid until {}, for {} join{}. On the other node run:\n  mesh join {}\n\
         Treat it like a password until it is used: whoever holds it can join.",
        v.mesh,
        output::time(v.expires_ms),
        v.uses,
        if v.uses == 1 { "" } else { "s" },
        v.code
    );
    Ok(())
}

pub async fn join(ctx: &Ctx, code: &str) -> anyhow::Result<()> {
    // Check the code first: a damaged paste deserves an answer even without a daemon.
    mesh_node::mesh::Invite::decode(code).map_err(|e| anyhow::anyhow!(e))?;
    let v = ctx.join(code).await?;
    if ctx.json {
        return output::json(&v);
    }
    crate::outln!(
        "joined mesh {} through {} ({}); left mesh {}",
        v.mesh.id,
        output::field(&v.inviter_name),
        v.inviter,
        v.left
    );
    crate::outln!("members appear in `{} members` as they connect", ctx.mesh());
    Ok(())
}

pub async fn members(ctx: &Ctx) -> anyhow::Result<()> {
    let v = ctx.members().await?;
    if ctx.json {
        return output::json(&v);
    }
    crate::outln!("{}", mesh_line(&v.mesh));
    let rows = v
        .members
        .iter()
        .map(|m| {
            vec![
                m.name.as_deref().map(output::clean).unwrap_or_else(|| "?".into()),
                m.peer_id.to_string(),
                if m.this_node {
                    "this node".into()
                } else if m.connected {
                    "connected".into()
                } else {
                    format!("seen {}", output::ago(m.last_seen_ms.unwrap_or(0)))
                },
                m.since_ms.map(output::time).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(&["NAME", "PEER ID", "STATE", "MEMBER SINCE"], rows);
    Ok(())
}

pub async fn remove(ctx: &Ctx, node: &str) -> anyhow::Result<()> {
    let v = ctx.remove(node).await?;
    if ctx.json {
        return output::json(&v);
    }
    crate::outln!(
        "removed {}{} from the mesh; new key generation {} handed to {} connected member{} (the others get it when they next connect)",
        v.peer,
        v.name
            .as_deref()
            .map(|n| format!(" ({})", output::field(n)))
            .unwrap_or_default(),
        v.epoch,
        v.rekeyed,
        if v.rekeyed == 1 { "" } else { "s" }
    );
    Ok(())
}

pub async fn leave(ctx: &Ctx) -> anyhow::Result<()> {
    let v = ctx.leave().await?;
    if ctx.json {
        return output::json(&v);
    }
    crate::outln!(
        "left the mesh; this node is now alone in a new mesh {} (invite others: {} invite)",
        v.id,
        ctx.mesh()
    );
    Ok(())
}

/// The mesh line of `mesh status`.
pub fn status_line(m: &MeshView) -> String {
    mesh_line(m)
}
