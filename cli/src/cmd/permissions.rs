//! `mesh permissions`, `mesh approve`, `mesh deny`: agent sessions' permission requests.

use mesh_node::api::LocalApi;

use super::Ctx;
use crate::output;

pub async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let list = ctx.permissions(None).await?;
    if ctx.json {
        return output::json(&list);
    }
    if list.is_empty() {
        crate::outln!("no permission requests waiting");
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                output::field(&p.agent),
                output::ago(p.asked_ms),
                output::field(&p.tool),
                mesh_node::text::field(&p.description, 60),
                mesh_node::text::field(&p.input_preview, 60),
            ]
        })
        .collect();
    output::table(&["ID", "AGENT", "ASKED", "TOOL", "WHAT", "INPUT (untrusted)"], rows);
    crate::outln!("answer with: mesh approve <id>  or  mesh deny <id>");
    Ok(())
}

pub async fn answer(ctx: &Ctx, id: &str, allow: bool) -> anyhow::Result<()> {
    let by = format!("{} (cli)", ctx.agent(&None));
    let p = ctx.answer_permission(id, allow, &by, None).await?;
    if ctx.json {
        return output::json(&p);
    }
    crate::outln!(
        "{} {} of {} ({}): the session gets the answer now",
        if allow { "allowed" } else { "denied" },
        p.id,
        output::field(&p.agent),
        output::field(&p.tool)
    );
    Ok(())
}
