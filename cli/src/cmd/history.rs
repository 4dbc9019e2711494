//! `mesh history`.

use mesh_node::api::{Request, Response};

use super::Ctx;
use crate::cli::HistoryArgs;
use crate::{expect, output};

pub async fn run(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    let request = Request::History {
        agent: a.agent,
        target: a.target,
        grep: a.grep,
        limit: a.limit,
        before: None,
        after: None,
        forward: false,
        max_bytes: None,
    };
    let rows = expect!(ctx.call(request).await?, Response::History(page) => page.entries);
    if ctx.json {
        return output::json(&rows);
    }
    if rows.is_empty() {
        crate::outln!("no messages");
    }
    for h in &rows {
        let state = h.state.as_ref().map(|s| format!("  [{s}]")).unwrap_or_default();
        let reply = h.reply_to.map(|r| format!(" (reply to {r})")).unwrap_or_default();
        crate::outln!(
            "{}  {}  {} -> {}{reply}{state}",
            output::time(h.at_ms),
            h.id,
            output::field(&h.from),
            output::field(&h.to)
        );
        for line in output::clean(&h.text).lines() {
            crate::outln!("    {line}");
        }
    }
    Ok(())
}
