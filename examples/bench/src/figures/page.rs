//! Figure 12: the human's page (`mesh open`) with a large store, in headless Chromium:
//! 100 agents and 100,000 direct messages (quick: 10 and 1,000) written into the store
//! before the daemon starts. Time to first paint, to the mesh on screen (agents, nodes,
//! topics and the newest page of the conversation: the page's `mesh-ready` mark), to load
//! one agent's conversation, and an older page of it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_node::api::LocalApi;
use mesh_node::ids::{AgentName, MessageId, now_ms};
use mesh_node::store::{Store, ops};
use mesh_node::webdriver::Browser;
use mesh_node::wire::WireMessage;

use crate::daemons::{Lab, start};
use crate::stats::{Row, Samples, ms};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Fresh page loads measured (each with its own login).
const LOADS: usize = 5;
/// Conversations opened, each of another agent.
const OPENS: usize = 10;

/// Fills the store of the home at `path` (owner `me`) with `agents` agents and `messages`
/// messages between them (every tenth answers the one before).
async fn fill(path: &Path, me: libp2p::PeerId, agents: usize, messages: usize) -> anyhow::Result<()> {
    let store = Store::open(path, me)?;
    let names: Vec<AgentName> = (0..agents)
        .map(|i| AgentName::new(format!("agent-{i:03}")))
        .collect::<Result<_, _>>()?;
    let all = names.clone();
    store
        .write("agents", move |t| {
            for n in &all {
                ops::ensure_agent(t, n, "claude-code", 1)?;
            }
            Ok(())
        })
        .await?;
    let now = now_ms();
    let mut last: Option<MessageId> = None;
    for chunk in 0..messages.div_ceil(1000) {
        let batch: Vec<WireMessage> = (0..1000.min(messages - chunk * 1000))
            .map(|i| {
                let k = chunk * 1000 + i;
                let id = MessageId::new();
                let reply_to = if k % 10 == 9 { last } else { None };
                last = Some(id);
                WireMessage {
                    id,
                    from: names[k % agents].clone(),
                    to: names[(k * 7 + 1) % agents].clone(),
                    sent_at_ms: now,
                    reply_to,
                    text: format!(
                        "message {k}: the parser change is ready for review, see the branch and the failing test"
                    ),
                }
            })
            .collect();
        store
            .write("fill", move |t| {
                for m in batch {
                    ops::send_local(t, m, me, None, now)?;
                }
                Ok(())
            })
            .await?;
    }
    store.close().await;
    Ok(())
}

pub async fn rows(lab: &mut Lab, quick: bool) -> anyhow::Result<Vec<Row>> {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        bail!("chromium or chromedriver is missing (apt-get install chromium chromium-driver; .ci/run installs them)");
    }
    let (agents, messages) = if quick { (10, 1_000) } else { (100, 100_000) };
    let home = lab.home("[web]\nlisten = \"127.0.0.1:0\"\n")?;
    let me = mesh_node::identity::load_or_create(&home.identity_path())?
        .public()
        .to_peer_id();
    fill(&home.store_path(), me, agents, messages).await?;
    let node = start(
        Command::new(&lab.bin),
        home,
        "page",
        &["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"],
    )?;
    let client = node.client().await?;
    let mut logins = Vec::new();
    for _ in 0..LOADS {
        logins.push(client.open_page().await?.login_url);
    }
    let measured = tokio::task::spawn_blocking(move || measure(&logins, agents)).await??;
    drop(node);
    let (paint, ready, open, older) = measured;
    let scale = format!("{agents} agents, {messages} messages in the store");
    Ok(vec![
        Row::new("12. page: first paint", ms(paint.pct(50.0)), "ms").note(format!("p50 of {LOADS} loads; {scale}")),
        Row::new(
            "12. page: the mesh on screen (agents, nodes, newest page)",
            ms(ready.pct(50.0)),
            "ms",
        )
        .target("< 1 s", ms(ready.pct(50.0)) < 1000.0)
        .note(format!(
            "p50 of {LOADS} loads, max {:.0} ms; {scale}",
            ms(ready.pct(100.0))
        )),
        Row::new("12. page: one agent's conversation loaded", ms(open.pct(50.0)), "ms")
            .target("< 300 ms", ms(open.pct(50.0)) < 300.0)
            .note(format!(
                "p50 of {OPENS} agents, max {:.0} ms; 50 rows a page",
                ms(open.pct(100.0))
            )),
        Row::new("12. page: an older page of history", ms(older.pct(50.0)), "ms").note(format!("p50 of {OPENS}")),
    ])
}

type Timings = (Samples, Samples, Samples, Samples);

/// In the browser: each login loaded fresh, then conversations opened and paged back.
fn measure(logins: &[String], agents: usize) -> anyhow::Result<Timings> {
    let browser = Browser::start(Path::new(CHROMEDRIVER), Path::new(CHROMIUM))?;
    let (mut paint, mut ready, mut open, mut older) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    let wait = Duration::from_secs(120);
    let millis = |v: serde_json::Value| -> anyhow::Result<Duration> {
        let f = v.as_f64().with_context(|| format!("not a time: {v}"))?;
        Ok(Duration::from_secs_f64(f / 1000.0))
    };
    for url in logins {
        browser.go(url)?;
        browser.wait(
            "the mesh-ready mark",
            "return performance.getEntriesByName('mesh-ready').length > 0",
            wait,
        )?;
        ready.push(millis(
            browser.js("return performance.getEntriesByName('mesh-ready')[0].startTime")?,
        )?);
        paint.push(millis(browser.js(
            "return performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint').startTime",
        )?)?);
        let shown = browser.js(r#"return document.querySelectorAll('#agents .agent[data-agent^="agent-"]').length"#)?;
        if shown.as_u64() != Some(agents as u64) {
            bail!("the page shows {shown} agents, not {agents}");
        }
    }
    for i in 0..OPENS {
        let who = format!("agent-{:03}@page", (i * 13) % agents);
        let t = browser.js_async(&format!(
            "const t0 = performance.now(); await openConversation('{who}'); \
             if (!document.querySelectorAll('#messages li.msg').length) return 'error: empty'; \
             return performance.now() - t0;"
        ))?;
        open.push(millis(t)?);
        let t = browser.js_async(
            "if (!page.older) return 0; const t0 = performance.now(); await loadOlder(); return performance.now() - t0;",
        )?;
        older.push(millis(t)?);
    }
    Ok((paint, ready, open, older))
}
