//! `mesh invite`, `mesh join` (a code, or pairing with a nearby node), `mesh pairings`, `mesh members`, `mesh remove`, `mesh leave`.

use mesh_node::api::{LocalApi, MeshView, PairingState};

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

/// Whether a `mesh approve` / `mesh deny` argument names a pairing (a comparison code,
/// digits with spaces allowed, or the asking node's PeerId), not a permission request id
/// (letters).
pub fn is_code(id: &str) -> bool {
    let d: String = id.chars().filter(|c| !c.is_whitespace()).collect();
    (!d.is_empty() && d.chars().all(|c| c.is_ascii_digit())) || d.parse::<mesh_node::PeerId>().is_ok()
}

fn digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

pub async fn pairings(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.pairings().await?;
    if ctx.json {
        return output::json(&list);
    }
    if list.is_empty() {
        crate::outln!("no node is asking to be admitted");
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|p| {
            vec![
                p.code.clone(),
                output::field(&p.name),
                p.peer.to_string(),
                output::ago(p.asked_ms),
            ]
        })
        .collect();
    output::table(&["CODE", "NAME (its claim)", "PEER", "ASKED"], rows);
    crate::outln!("admit one only if the node shows the same code: mesh approve <code>  (or mesh deny <code>)");
    Ok(())
}

pub async fn answer_pairing(ctx: &Ctx, id: &str, allow: bool) -> anyhow::Result<()> {
    let p = ctx.answer_pairing(id, allow).await?;
    if ctx.json {
        return output::json(&p);
    }
    if allow {
        crate::outln!(
            "admitted {} ({}): it joins the mesh now",
            output::field(&p.name),
            p.peer
        );
    } else {
        crate::outln!("refused {} ({})", output::field(&p.name), p.peer);
    }
    Ok(())
}

/// `mesh join <nearby node>`: pairing by comparison code. Joins only once the member's user
/// approved and this one confirmed that both codes match.
async fn pair(ctx: &Ctx, node: &str, confirm: Option<&str>) -> anyhow::Result<()> {
    let p = ctx.pair(node).await?;
    let peer = p.peer.to_string();
    let name = output::field(&p.name);
    if !ctx.json {
        crate::outln!(
            "asked {name} ({peer}) to admit this node.\n\n    comparison code: {}\n\ncheck that {name} shows the same code; its user approves there (mesh approve {}, or its page).\njoining leaves this node's mesh.",
            p.code,
            digits(&p.code),
        );
    }
    let same = match confirm {
        Some(c) => digits(c) == digits(&p.code),
        None => {
            // The question goes to stderr (like any prompt), the answer comes from stdin.
            eprint!("does {name} show the same code? type yes to join (anything else gives up): ");
            let line = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await??;
            matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
        }
    };
    if let Err(e) = ctx.pair_confirm(&peer, same).await {
        // It ended while the question waited: say how.
        if let Ok(done) = ctx.pair_wait(&peer).await
            && let PairingState::Refused(why) = done.state
        {
            anyhow::bail!("not admitted: {why}");
        }
        return Err(e.into());
    }
    if !same {
        anyhow::bail!("not joined: the codes were not confirmed to match (the request to {name} is given up)");
    }
    if !ctx.json {
        crate::outln!("waiting for {name}'s answer (until {})...", output::time(p.expires_ms));
    }
    let done = ctx.pair_wait(&peer).await?;
    if ctx.json {
        output::json(&done)?;
    }
    match done.state {
        PairingState::Joined => {
            if !ctx.json {
                crate::outln!("joined the mesh of {}", output::field(&done.name));
                crate::outln!("members appear in `{} members` as they connect", ctx.mesh());
            }
            Ok(())
        }
        PairingState::Refused(why) => anyhow::bail!("not admitted: {why}"),
        other => anyhow::bail!("the pairing ended as {other:?}"),
    }
}

pub async fn join(ctx: &Ctx, code: &str, confirm: Option<&str>) -> anyhow::Result<()> {
    if !code.trim().starts_with(mesh_node::mesh::INVITE_PREFIX) {
        return pair(ctx, code, confirm).await;
    }
    if confirm.is_some() {
        anyhow::bail!("--confirm is for pairing with a nearby node (mesh join <node>), not for a join code");
    }
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
