#![doc = include_str!("../README.md")]

use std::time::Duration;

use anyhow::{Context, bail};
use mesh_node::api::client::Client;
use mesh_node::api::{AgentSpec, Event, InboxQuery, PublishRequest, Request, Response, SendReceipt, SendRequest};
use mesh_node::config::Overrides;
use mesh_node::daemon::{Daemon, DaemonOptions};
use mesh_node::home::Home;
use mesh_node::ids::{AgentName, MessageId, NodeName};

const WAIT: Duration = Duration::from_secs(15);

async fn start(dir: &std::path::Path, name: &str, port: u16) -> anyhow::Result<(Daemon, Client)> {
    let home = Home::resolve(Some(dir.join(name)))?;
    home.create()?;
    // Quick retries so the "back online" step does not wait long.
    std::fs::write(
        home.config_path(),
        "[delivery]\nretry_min = \"100ms\"\nretry_max = \"1s\"\n",
    )?;
    let daemon = Daemon::start(DaemonOptions {
        home: home.clone(),
        overrides: Overrides {
            name: Some(NodeName::new(name)?),
            listen: vec![format!("/ip4/127.0.0.1/tcp/{port}").parse()?],
            no_mdns: true,
            ..Overrides::default()
        },
        user: Some(AgentName::new("user")?),
    })
    .await?;
    let client = Client::connect(&home, "two-nodes example").await?;
    Ok((daemon, client))
}

fn tcp_port(d: &Daemon) -> u16 {
    d.info()
        .listen
        .iter()
        .find_map(|a| {
            a.iter().find_map(|p| match p {
                mesh_node::net::Protocol::Tcp(p) => Some(p),
                _ => None,
            })
        })
        .unwrap_or(0)
}

async fn next_message(events: &mut tokio::sync::mpsc::Receiver<Event>) -> anyhow::Result<mesh_node::api::MessageView> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message(m))) => return Ok(m),
            Ok(Some(_)) => {}
            Ok(None) => bail!("event stream closed"),
            Err(_) => bail!("no message within {WAIT:?}"),
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (alpha, a) = start(dir.path(), "alpha", 0).await?;
    let (beta, b) = start(dir.path(), "beta", 0).await?;
    let beta_port = tcp_port(&beta);
    println!("alpha is {}\nbeta  is {}", a.node().peer_id, b.node().peer_id);

    // bob lives on beta and is online (attached) while this connection lives.
    let bob = Client::connect(&beta_home(dir.path())?, "bob").await?;
    bob.call(Request::Register {
        agent: AgentSpec {
            name: "bob".into(),
            kind: "other".into(),
            push: true,
            ..Default::default()
        },
        attach: true,
    })
    .await?;
    let mut bob_events = bob.watch(vec!["bob".into()]).await?;

    join(&a, &b, beta_port).await?;
    println!("\n1. alpha is connected to beta; alice sends bob a message");
    let sent = send(&a, "alice", "bob@beta", "hello bob").await?;
    println!(
        "   send: {} {:?} (bob receives by {:?})",
        sent.id, sent.status, sent.reception
    );
    let m = next_message(&mut bob_events).await?;
    println!("   bob got {:?} from {} (node {})", m.text, m.from, m.from_node);

    println!("\n2. bob replies");
    bob.call(Request::Send(SendRequest {
        from: "bob".into(),
        to: "alice@alpha".into(),
        text: "hi alice".into(),
        reply_to: Some(m.id),
        id: None,
    }))
    .await?;

    println!("\n3. beta goes down; alice writes anyway");
    drop(bob_events);
    drop(bob);
    drop(b);
    beta.stop().await;
    let queued = send(&a, "alice", "bob@beta", "are you back?").await?;
    println!("   send: {:?}", queued.status);
    let (beta, _b) = start(dir.path(), "beta", beta_port).await.context("restart beta")?;
    let bob = Client::connect(&beta_home(dir.path())?, "bob").await?;
    let mut bob_events = bob.watch(vec!["bob".into()]).await?;
    let back = queued_message(&bob, &mut bob_events, queued.id).await?;
    println!("   beta is back; bob got {:?} ({})", back.text, back.id);

    topics(&a, &bob, &mut bob_events).await?;

    beta.stop().await;
    alpha.stop().await;
    println!("\ndone");
    Ok(())
}

fn beta_home(dir: &std::path::Path) -> anyhow::Result<Home> {
    Ok(Home::resolve(Some(dir.join("beta")))?)
}

/// Each node starts a mesh of its own; nothing reaches an agent from outside it. beta
/// makes a join code, alpha uses it: now they are one mesh. Then alpha dials beta.
async fn join(a: &Client, b: &Client, beta_port: u16) -> anyhow::Result<()> {
    let code = match b.call(Request::Invite { ttl_s: 600, uses: 1 }).await? {
        Response::Invite(i) => i.code,
        other => bail!("unexpected {other:?}"),
    };
    println!("\n0. beta made a join code: {}…", &code[..32]);
    match a.call(Request::Join { code }).await? {
        Response::Joined(j) => println!("   alpha joined mesh {} (left its own, {})", j.mesh.id, j.left),
        other => bail!("unexpected {other:?}"),
    }
    let beta_addr = format!("/ip4/127.0.0.1/tcp/{beta_port}/p2p/{}", b.node().peer_id);
    a.call(Request::Dial {
        addr: beta_addr.clone(),
    })
    .await?;
    Ok(())
}

/// `from` (an agent of the node behind `c`) sends `to` a message.
async fn send(c: &Client, from: &str, to: &str, text: &str) -> anyhow::Result<SendReceipt> {
    match c
        .call(Request::Send(SendRequest {
            from: from.into(),
            to: to.into(),
            text: text.into(),
            reply_to: None,
            id: None,
        }))
        .await?
    {
        Response::Sent(r) => Ok(r),
        other => bail!("unexpected {other:?}"),
    }
}

/// The message `id`, sent while bob's node was down: already in bob's inbox (delivered
/// while we reconnected), or else on its way.
async fn queued_message(
    bob: &Client,
    bob_events: &mut tokio::sync::mpsc::Receiver<Event>,
    id: MessageId,
) -> anyhow::Result<mesh_node::api::MessageView> {
    let inbox = match bob
        .call(Request::Inbox(InboxQuery {
            agent: "bob".into(),
            all: false,
            limit: 10,
            mark_read: true,
            skip_notified: false,
            after: None,
            max_bytes: None,
        }))
        .await?
    {
        Response::Inbox(page) => page.messages,
        other => bail!("unexpected {other:?}"),
    };
    match inbox.into_iter().find(|m| m.id == id) {
        Some(m) => Ok(m),
        None => next_message(bob_events).await,
    }
}

/// bob subscribes to a topic, alice publishes on it.
async fn topics(a: &Client, bob: &Client, bob_events: &mut tokio::sync::mpsc::Receiver<Event>) -> anyhow::Result<()> {
    println!("\n4. topics");
    bob.call(Request::Subscribe {
        agent: "bob".into(),
        topic: "build".into(),
    })
    .await?;
    // If alpha has not heard of the subscription yet, the message is stored and sent as
    // soon as it does: either way bob gets it.
    if let Response::Published(p) = a
        .call(Request::Publish(PublishRequest {
            agent: "alice".into(),
            topic: "build".into(),
            text: "build is green".into(),
            reply_to: None,
            id: None,
        }))
        .await?
    {
        println!("   published {} (reached {} peers now)", p.id, p.peers_reached);
    }
    let m = next_message(bob_events).await?;
    println!("   bob got {:?} on #{}", m.text, m.topic.unwrap_or_default());
    Ok(())
}
