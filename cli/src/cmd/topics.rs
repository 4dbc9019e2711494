//! `mesh subscribe`, `mesh unsubscribe`, `mesh topics`, `mesh publish`.

use mesh_node::api::calls::Subscription;
use mesh_node::api::{LocalApi, PublishRequest};

use super::{Ctx, id_arg, text_arg};
use crate::cli::{PublishArgs, TopicArgs};
use crate::output;

pub async fn subscribe(ctx: &Ctx, a: TopicArgs, on: bool) -> anyhow::Result<()> {
    let agent = ctx.agent(&a.who.agent);
    let Subscription { topic, changed } = if on {
        ctx.subscribe(&agent, &a.topic).await?
    } else {
        ctx.unsubscribe(&agent, &a.topic).await?
    };
    if ctx.json {
        return output::json(
            &serde_json::json!({ "topic": topic, "agent": agent, "subscribed": on, "changed": changed }),
        );
    }
    match (on, changed) {
        (true, true) => crate::outln!("{agent} subscribed to #{topic}"),
        (true, false) => crate::outln!("{agent} was already subscribed to #{topic}"),
        (false, true) => crate::outln!("{agent} unsubscribed from #{topic}"),
        (false, false) => crate::outln!("{agent} was not subscribed to #{topic}"),
    }
    Ok(())
}

pub async fn list(ctx: &Ctx) -> anyhow::Result<()> {
    let topics = ctx.topics().await?;
    if ctx.json {
        return output::json(&topics);
    }
    if topics.is_empty() {
        crate::outln!("no topics yet ({} subscribe <topic>)", ctx.mesh());
        return Ok(());
    }
    let rows = topics
        .iter()
        .map(|t| {
            vec![
                format!("#{}", t.topic),
                if t.subscribers.is_empty() {
                    "-".into()
                } else {
                    t.subscribers.join(", ")
                },
                t.messages.to_string(),
                t.last_ms.map(output::ago).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(&["TOPIC", "SUBSCRIBERS HERE", "MESSAGES", "LAST"], rows);
    Ok(())
}

pub async fn publish(ctx: &Ctx, a: PublishArgs) -> anyhow::Result<()> {
    let r = ctx
        .publish(PublishRequest {
            agent: ctx.agent(&a.message.who.agent),
            topic: a.topic,
            text: text_arg(&a.message.text)?,
            reply_to: id_arg(&a.message.reply_to)?,
            id: Some(id_arg(&a.message.id)?.unwrap_or_default()),
        })
        .await?;
    if ctx.json {
        return output::json(&r);
    }
    let local = if r.local_subscribers > 0 {
        format!(", {} local subscriber(s)", r.local_subscribers)
    } else {
        String::new()
    };
    if r.peers_reached > 0 {
        crate::outln!(
            "{}  published on #{}: reached {} peer(s){local}",
            r.id,
            r.topic,
            r.peers_reached
        );
    } else {
        crate::outln!(
            "{}  stored on #{}: no subscribers reached yet{local} (it is sent when a node subscribes)",
            r.id,
            r.topic
        );
    }
    Ok(())
}
