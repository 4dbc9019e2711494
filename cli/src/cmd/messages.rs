//! `mesh send` and `mesh outbox`.

use mesh_node::api::{LocalApi, SendRequest, SendStatus};

use super::{Ctx, id_arg, text_arg};
use crate::cli::{OutboxArgs, SendArgs};
use crate::output;

pub async fn send(ctx: &Ctx, a: SendArgs) -> anyhow::Result<()> {
    let text = text_arg(&a.message.text)?;
    let reply_to = id_arg(&a.message.reply_to)?;
    let r = ctx
        .send(SendRequest {
            from: ctx.agent(&a.message.who.agent),
            to: a.to.clone(),
            text,
            reply_to,
            id: Some(id_arg(&a.message.id)?.unwrap_or_default()),
        })
        .await?;
    if ctx.json {
        output::json(&r)?;
    } else {
        match &r.status {
            SendStatus::Delivered => crate::outln!("{}  delivered to {}", r.id, r.to),
            SendStatus::Read { at_ms } => {
                crate::outln!("{}  delivered to {}, read {}", r.id, r.to, output::time(*at_ms))
            }
            SendStatus::Queued { reason } => crate::outln!("{}  queued for {}: {reason}", r.id, r.to),
            SendStatus::Rejected { .. } => {}
        }
    }
    if let SendStatus::Rejected { reason } = &r.status {
        anyhow::bail!("message {} to {} was refused: {reason}", r.id, r.to);
    }
    Ok(())
}

pub async fn outbox(ctx: &Ctx, a: OutboxArgs) -> anyhow::Result<()> {
    let list = ctx.outbox(a.agent, a.all, a.limit).await?;
    if ctx.json {
        return output::json(&list);
    }
    if list.is_empty() {
        crate::outln!("outbox empty: nothing pending, no dead letters");
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|e| {
            let mut state = e.state.clone();
            if let Some(at) = e.read_at_ms {
                state.push_str(&format!(" {}", output::time(at)));
            }
            if e.attempts > 0 {
                state.push_str(&format!(" ({} attempts)", e.attempts));
            }
            vec![
                e.id.to_string(),
                output::time(e.created_ms),
                format!("{} -> {}", e.from, output::field(&e.to)),
                state,
                output::field(e.reason.as_deref().unwrap_or("")),
                mesh_node::text::field(&e.text, 60),
            ]
        })
        .collect();
    output::table(&["ID", "SENT", "FROM -> TO", "STATE", "REASON", "TEXT"], rows);
    Ok(())
}
