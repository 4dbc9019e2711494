//! The MCP server over an in-memory pipe with a scripted fake backend: session naming,
//! push semantics and re-attachment, without a daemon or timing games.

#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_mcp::backend::Backend;
use mesh_mcp::server::{MeshServer, SessionConfig};
use mesh_node::api::client::ClientError;
use mesh_node::api::{AgentSpec, AgentView, Event, LocalApi, MessageView, Reception, Request, Response};
use mesh_node::ids::MessageId;
use rmcp::ServiceExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Script {
    /// Every request, in order (as debug text).
    log: Vec<String>,
    /// (spec, exact) of each attach.
    attaches: Vec<(AgentSpec, bool)>,
    /// The event sender of the current attachment.
    events: Option<mpsc::Sender<Event>>,
    counts: (u64, u64),
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Script>>, Arc<tokio::sync::Notify>);

impl LocalApi for Fake {
    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let mut s = self.0.lock().unwrap();
        s.log.push(format!("{request:?}"));
        Ok(match request {
            Request::Counts { .. } => Response::Counts {
                new: s.counts.0,
                notified: s.counts.1,
            },
            Request::MarkNotified { ids, .. } => {
                s.counts = (s.counts.0.saturating_sub(1), s.counts.1 + ids.len() as u64);
                Response::Marked {
                    count: ids.len() as u32,
                }
            }
            Request::Topics => Response::Topics(vec![]),
            other => panic!("unexpected request {other:?}"),
        })
    }
}

impl Backend for Fake {
    async fn attach(&self, spec: AgentSpec, exact: bool) -> Result<(AgentView, mpsc::Receiver<Event>), ClientError> {
        let (tx, rx) = mpsc::channel(16);
        let mut s = self.0.lock().unwrap();
        s.attaches.push((spec.clone(), exact));
        s.events = Some(tx);
        self.1.notify_one();
        Ok((view(&spec.name), rx))
    }
}

fn view(name: &str) -> AgentView {
    AgentView {
        address: format!("{name}@box"),
        name: name.into(),
        node_name: "box".into(),
        node: mesh_node::PeerId::random(),
        local: true,
        kind: "claude-code".into(),
        cwd: None,
        repo: None,
        summary: None,
        reception: Reception::Push,
        last_seen_ms: 0,
        unread: Some(0),
        pid: None,
    }
}

fn message(agent: &str) -> MessageView {
    MessageView {
        id: MessageId::new(),
        agent: agent.into(),
        from: "bob@laptop".into(),
        from_agent: "bob".into(),
        from_node: mesh_node::PeerId::random(),
        from_node_name: Some("laptop".into()),
        topic: None,
        text: "ping".into(),
        sent_at_ms: 1,
        received_at_ms: 1,
        reply_to: None,
        state: "new".into(),
    }
}

struct Client {
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    next: u64,
    notes: Vec<Value>,
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.write.write_all(format!("{v}\n").as_bytes()).await.unwrap();
    }

    async fn next_line(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    async fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        loop {
            let v = self.next_line().await;
            if v["id"] == id {
                return v;
            }
            self.notes.push(v);
        }
    }

    async fn notification(&mut self, method: &str) -> Value {
        if let Some(i) = self.notes.iter().position(|n| n["method"] == method) {
            return self.notes.remove(i);
        }
        loop {
            let v = self.next_line().await;
            if v["method"] == method {
                return v;
            }
            self.notes.push(v);
        }
    }
}

async fn start(fake: Fake, client_name: &str, explicit: Option<&str>, dir: &std::path::Path) -> Client {
    start_with(fake, client_name, json!({}), explicit, dir).await
}

/// A session whose client declares `capabilities` in `initialize`.
async fn start_with(
    fake: Fake,
    client_name: &str,
    capabilities: Value,
    explicit: Option<&str>,
    dir: &std::path::Path,
) -> Client {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let server = MeshServer::new(
        fake,
        SessionConfig {
            explicit_name: explicit.map(str::to_string),
            cwd: dir.to_path_buf(),
            client_pid: None,
        },
    );
    let (r, w) = tokio::io::split(theirs);
    tokio::spawn(async move {
        let svc = server.serve((r, w)).await.unwrap();
        let _ = svc.waiting().await;
    });
    let (r, w) = tokio::io::split(ours);
    let mut c = Client {
        write: w,
        lines: BufReader::new(r).lines(),
        next: 0,
        notes: vec![],
    };
    let init = c
        .request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": capabilities, "clientInfo": {"name": client_name, "version": "1"}}),
        )
        .await;
    assert!(init["result"].is_object(), "{init}");
    c.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .await;
    c
}

async fn attaches(fake: &Fake, n: usize) -> Vec<(AgentSpec, bool)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = fake.0.lock().unwrap().attaches.clone();
        if a.len() >= n {
            return a;
        }
        let waited = tokio::time::timeout_at(deadline, fake.1.notified()).await;
        assert!(waited.is_ok(), "only {} attaches", a.len());
    }
}

#[tokio::test]
async fn derived_name_push_and_reattach_with_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let proj = dir.path().join("billing");
    std::fs::create_dir(&proj).unwrap();
    let fake = Fake::default();
    // A client that confirms it shows channel pushes.
    let channel = json!({ "experimental": { "claude/channel": {} } });
    let mut c = start_with(fake.clone(), "claude-code", channel, None, &proj).await;

    let a = attaches(&fake, 1).await;
    let (spec, exact) = &a[0];
    assert_eq!(spec.name, "claude-code.billing");
    assert!(!exact, "a derived name may get a suffix");
    assert!(spec.push);
    assert_eq!(spec.kind, "claude-code");
    assert_eq!(spec.cwd.as_deref(), Some(proj.to_str().unwrap()));

    // A message arrives: marked notified first, then pushed.
    fake.0.lock().unwrap().counts = (1, 0);
    let tx = fake.0.lock().unwrap().events.clone().unwrap();
    let m = message("claude-code.billing");
    tx.send(Event::Message(m.clone())).await.unwrap();
    let push = c.notification("notifications/claude/channel").await;
    assert_eq!(push["params"]["content"], "ping");
    assert_eq!(push["params"]["meta"]["message_id"], m.id.to_string());
    let log = fake.0.lock().unwrap().log.clone();
    assert!(log.iter().any(|l| l.starts_with("MarkNotified")), "{log:?}");
    // The next tool result carries the pushed-but-unconfirmed notice.
    let r = c
        .request("tools/call", json!({"name": "topics", "arguments": {}}))
        .await;
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("1 message pushed to you"), "{text}");

    // The daemon connection drops (its event stream ends): the session attaches again,
    // exactly, under the name it had.
    fake.0.lock().unwrap().events = None;
    drop(tx);
    let a = attaches(&fake, 2).await;
    assert_eq!(a[1].0.name, "claude-code.billing");
    assert!(a[1].1, "re-attach keeps the name");
}

#[tokio::test]
async fn explicit_names_are_exact_and_other_clients_are_not_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    let mut c = start(fake.clone(), "codex-mcp-client", Some("reviewer"), dir.path()).await;
    let a = attaches(&fake, 1).await;
    assert_eq!(a[0].0.name, "reviewer");
    assert!(a[0].1);
    assert!(!a[0].0.push, "codex shows no pushes");
    let tx = fake.0.lock().unwrap().events.clone().unwrap();
    tx.send(Event::Message(message("reviewer"))).await.unwrap();
    // No push for a client that cannot show it: the message stays new.
    fake.0.lock().unwrap().counts = (1, 0);
    let r = c
        .request("tools/call", json!({"name": "topics", "arguments": {}}))
        .await;
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("You have 1 unread message"), "{text}");
    assert!(c.notes.iter().all(|n| n["method"] != "notifications/claude/channel"));
    assert!(!fake.0.lock().unwrap().log.iter().any(|l| l.starts_with("MarkNotified")));
}

#[tokio::test]
async fn an_unconfirmed_push_goes_out_and_counts_for_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Fake::default();
    // Claude Code as it is: it never says whether channels are on.
    let mut c = start(fake.clone(), "claude-code", Some("plain"), dir.path()).await;
    let a = attaches(&fake, 1).await;
    assert!(!a[0].0.push, "not counted as push");
    let tx = fake.0.lock().unwrap().events.clone().unwrap();
    let m = message("plain");
    fake.0.lock().unwrap().counts = (1, 0);
    tx.send(Event::Message(m.clone())).await.unwrap();
    // Sent, in case channels are on...
    let push = c.notification("notifications/claude/channel").await;
    assert_eq!(push["params"]["meta"]["message_id"], m.id.to_string());
    // ...but not marked: the next result calls it unread, for inbox to show.
    let r = c
        .request("tools/call", json!({"name": "topics", "arguments": {}}))
        .await;
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("You have 1 unread message"), "{text}");
    assert!(!fake.0.lock().unwrap().log.iter().any(|l| l.starts_with("MarkNotified")));
}
