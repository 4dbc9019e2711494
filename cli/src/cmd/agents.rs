//! `mesh agents`.

use mesh_node::api::{LocalApi, Reception};

use super::Ctx;
use crate::output;

/// How an agent receives, in words.
pub fn reception(r: Reception) -> &'static str {
    match r {
        Reception::Push => "online (push)",
        Reception::Woken => "online (woken by hook)",
        Reception::Poll => "online (at next tool call)",
        Reception::Offline => "offline (mail queued)",
    }
}

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let agents = ctx.agents().await?;
    if ctx.json {
        return output::json(&agents);
    }
    let rows = agents
        .iter()
        .map(|a| {
            let mut where_ = a.repo.clone().or(a.cwd.clone()).unwrap_or_default();
            if let Some(s) = &a.summary {
                if !where_.is_empty() {
                    where_.push_str(" — ");
                }
                where_.push_str(s);
            }
            vec![
                output::field(&a.address),
                output::field(&a.kind),
                format!(
                    "{}{}",
                    reception(a.reception),
                    match a.unread {
                        Some(n) if n > 0 => format!(", {n} unread"),
                        _ => String::new(),
                    }
                ),
                output::ago(a.last_seen_ms),
                output::field(&where_),
            ]
        })
        .collect();
    output::table(&["ADDRESS", "KIND", "STATUS", "LAST SEEN", "WORKING ON"], rows);
    Ok(())
}
