//! `mesh history`.

use mesh_node::api::{HistoryQuery, HistoryView, LocalApi};

use super::Ctx;
use crate::cli::HistoryArgs;
use crate::output;

fn print(h: &HistoryView) {
    let state = match (&h.state, h.read_at_ms) {
        (Some(s), Some(at)) => format!("  [{s} {}]", output::time(at)),
        (Some(s), None) => format!("  [{s}]"),
        (None, _) => String::new(),
    };
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

/// Reads the newest `--limit` entries oldest first, a page at a time, and writes each page
/// out as it comes: an export of any size holds one page in memory.
pub async fn run(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    let mut json = ctx.json.then(output::JsonArray::default);
    let mut wanted = a.limit.max(1);
    let mut shown = 0u64;
    let mut after = None;
    let mut older = None;
    loop {
        let first = after.is_none();
        let page = ctx
            .history(HistoryQuery {
                agent: a.agent.clone(),
                target: a.target.clone(),
                grep: a.grep.clone(),
                limit: wanted,
                before: a.before.clone(),
                after: after.take(),
                forward: true,
                max_bytes: None,
            })
            .await?;
        if first {
            older = page.older;
        }
        for h in &page.entries {
            match json.as_mut() {
                Some(array) => array.push(h)?,
                None => print(h),
            }
        }
        shown += page.entries.len() as u64;
        wanted = wanted.saturating_sub(page.entries.len() as u32);
        match page.newer {
            Some(newer) if wanted > 0 && !page.entries.is_empty() => after = Some(newer),
            _ => break,
        }
    }
    match json {
        Some(array) => array.finish(),
        None if shown == 0 => crate::outln!("no messages"),
        None => {}
    }
    if let Some(cursor) = older {
        let hint = format!("older messages: add --before {cursor}");
        if ctx.json {
            eprintln!("{hint}");
        } else {
            crate::outln!("({hint})");
        }
    }
    Ok(())
}
