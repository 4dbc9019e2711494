//! `mesh inbox`.

use mesh_node::api::client::Client;
use mesh_node::api::{AgentSpec, Event, InboxPage, InboxQuery, LocalApi, MessageView};

use super::Ctx;
use crate::cli::InboxArgs;
use crate::output;

fn print(ctx: &Ctx, m: &MessageView) -> anyhow::Result<()> {
    if ctx.json {
        return output::json_line(m);
    }
    let via = m.topic.as_ref().map(|t| format!(" on #{t}")).unwrap_or_default();
    let reply = m.reply_to.map(|r| format!(" (reply to {r})")).unwrap_or_default();
    crate::outln!(
        "{}  {}  from {}{via}{reply}",
        m.id,
        output::time(m.received_at_ms),
        output::field(&m.from)
    );
    for line in output::clean(&m.text).lines() {
        crate::outln!("    {line}");
    }
    Ok(())
}

/// Marks `list` read, once it has been written out (a reader that went away mid-way, as
/// `mesh inbox | head -1` does, stops the command before this: nothing unseen is marked).
async fn mark_shown(client: &Client, agent: &str, list: &[MessageView]) -> anyhow::Result<()> {
    let ids: Vec<_> = list.iter().filter(|m| m.state != "read").map(|m| m.id).collect();
    if ids.is_empty() {
        return Ok(());
    }
    let marked = client.mark_read(agent, ids).await;
    match marked {
        Ok(_) => Ok(()),
        // A full or read-only disk: shown, but not marked; they show again next time.
        Err(mesh_node::api::client::ClientError::Api(e)) if e.code == mesh_node::api::ErrorCode::Storage => {
            eprintln!("warning: these messages could not be marked read ({e}); they will show again");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// One page of `agent`'s inbox, read without marking (the caller marks what it printed).
async fn page(client: &Client, agent: &str, all: bool, limit: u32, after: Option<String>) -> anyhow::Result<InboxPage> {
    Ok(client
        .inbox(InboxQuery {
            agent: agent.to_string(),
            all,
            limit,
            after,
            ..InboxQuery::default()
        })
        .await?)
}

pub async fn run(ctx: &Ctx, a: InboxArgs) -> anyhow::Result<()> {
    let agent = ctx.agent(&a.who.agent);
    let client = ctx.client().await?;
    if a.follow {
        follow(ctx, &client, &agent).await
    } else {
        read(ctx, &client, &agent, &a).await
    }
}

/// Page by page: each is written out, then (unread ones) marked read, so a reader that
/// goes away leaves unread what it did not get.
async fn read(ctx: &Ctx, client: &Client, agent: &str, a: &InboxArgs) -> anyhow::Result<()> {
    let mut json = ctx.json.then(output::JsonArray::default);
    let mut wanted = a.limit.max(1);
    let (mut shown, mut after) = (0u64, None);
    let remaining = loop {
        let page = page(client, agent, a.all, wanted, after.take()).await?;
        for m in &page.messages {
            match json.as_mut() {
                Some(array) => array.push(m)?,
                None => print(ctx, m)?,
            }
        }
        if !a.all {
            mark_shown(client, agent, &page.messages).await?;
        }
        shown += page.messages.len() as u64;
        wanted = wanted.saturating_sub(page.messages.len() as u32);
        match page.next {
            Some(next) if wanted > 0 && !page.messages.is_empty() => after = Some(next),
            _ => break page.remaining,
        }
    };
    match json {
        Some(array) => array.finish(),
        None if shown == 0 => crate::outln!("no {}messages", if a.all { "" } else { "unread " }),
        None => {}
    }
    if remaining > 0 && !a.all {
        let hint = format!(
            "{remaining} more unread message{} (over --limit): run `{} inbox` again to read on",
            if remaining == 1 { "" } else { "s" },
            ctx.mesh()
        );
        if ctx.json {
            eprintln!("{hint}");
        } else {
            crate::outln!("({hint})");
        }
    }
    Ok(())
}

/// Every unread message not in `seen`, printed and marked read, page by page.
async fn catch_up(
    ctx: &Ctx,
    client: &Client,
    agent: &str,
    seen: &mut std::collections::HashSet<mesh_node::ids::MessageId>,
) -> anyhow::Result<()> {
    let mut after = None;
    loop {
        let page = page(client, agent, false, u32::MAX, after.take()).await?;
        for m in &page.messages {
            if seen.insert(m.id) {
                print(ctx, m)?;
            }
        }
        mark_shown(client, agent, &page.messages).await?;
        match page.next {
            Some(next) if !page.messages.is_empty() => after = Some(next),
            _ => return Ok(()),
        }
    }
}

/// Follow: online while running; watch first so nothing falls between the two.
async fn follow(ctx: &Ctx, client: &Client, agent: &str) -> anyhow::Result<()> {
    let human = AgentSpec {
        name: agent.to_string(),
        kind: "human".into(),
        push: true,
        ..Default::default()
    };
    client.register(human, true).await?;
    let mut events = client.watch(vec![agent.to_string()]).await?;
    let mut seen = std::collections::HashSet::new();
    let mut lagged = true;
    loop {
        if lagged {
            catch_up(ctx, client, agent, &mut seen).await?;
            lagged = false;
        }
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match ev {
            None => anyhow::bail!("the daemon closed the connection (it was stopped?)"),
            Some(Event::Message(m)) if m.agent == agent => {
                if seen.insert(m.id) {
                    print(ctx, &m)?;
                    mark_shown(client, agent, std::slice::from_ref(&m)).await?;
                }
            }
            Some(Event::Lagged { .. }) => lagged = true,
            Some(_) => {}
        }
    }
}
