#![doc = include_str!("../README.md")]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use mesh_mcp::backend::DaemonBackend;
use mesh_mcp::server::{MeshServer, SessionConfig};
use mesh_node::config::Overrides;
use mesh_node::daemon::{Daemon, DaemonOptions};
use mesh_node::home::Home;
use mesh_node::ids::{AgentName, NodeName};
use rmcp::ServiceExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(20);

/// One MCP client session, speaking JSON-RPC to a `MeshServer` over a pipe.
struct Session {
    who: &'static str,
    write: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>>,
    next: u64,
    pending: Vec<Value>,
}

impl Session {
    async fn open(who: &'static str, client: &str, home: &Home, dir: &Path) -> anyhow::Result<Self> {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        // The mesh binary is only needed to start a daemon; ours is already running.
        let backend = DaemonBackend::new(home.clone(), "mesh".into());
        let server = MeshServer::new(
            backend,
            SessionConfig {
                explicit_name: None,
                cwd: dir.to_path_buf(),
                client_pid: None,
            },
        );
        let (r, w) = tokio::io::split(theirs);
        tokio::spawn(async move {
            if let Ok(svc) = server.serve((r, w)).await {
                let _ = svc.waiting().await;
            }
        });
        let (r, w) = tokio::io::split(ours);
        let mut s = Session {
            who,
            write: w,
            lines: BufReader::new(r).lines(),
            next: 0,
            pending: vec![],
        };
        s.request(
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": client, "version": "1"}}),
        )
        .await?;
        s.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(s)
    }

    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.write.write_all(format!("{v}\n").as_bytes()).await?;
        Ok(())
    }

    async fn line(&mut self) -> anyhow::Result<Value> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .context("no answer in time")??
            .context("the session closed")?;
        Ok(serde_json::from_str(&line)?)
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next += 1;
        let id = self.next;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        loop {
            let v = self.line().await?;
            if v["id"] == id {
                return Ok(v);
            }
            self.pending.push(v);
        }
    }

    async fn tool(&mut self, name: &str, args: Value) -> anyhow::Result<String> {
        println!("\n[{}] tools/call {name} {args}", self.who);
        let r = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await?;
        let text = r["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for l in text.lines() {
            println!("[{}]   {l}", self.who);
        }
        Ok(text)
    }

    async fn notification(&mut self, method: &str) -> anyhow::Result<Value> {
        if let Some(i) = self.pending.iter().position(|n| n["method"] == method) {
            return Ok(self.pending.remove(i));
        }
        loop {
            let v = self.line().await?;
            if v["method"] == method {
                return Ok(v);
            }
            self.pending.push(v);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let home = Home::resolve(Some(dir.path().join("home")))?;
    let daemon = start(&home).await?;
    let frontend = dir.path().join("frontend");
    let backend = dir.path().join("backend");
    std::fs::create_dir_all(&frontend)?;
    std::fs::create_dir_all(&backend)?;

    let mut claude = Session::open("claude-code", "claude-code", &home, &frontend).await?;
    let mut codex = Session::open("codex", "codex-mcp-client", &home, &backend).await?;

    claude.tool("whoami", json!({})).await?;
    codex.tool("set_summary", json!({"text": "owns the REST API"})).await?;
    claude.tool("list_agents", json!({"scope": "machine"})).await?;

    ask_and_answer(&mut claude, &mut codex).await?;

    let push = claude.notification("notifications/claude/channel").await?;
    println!("\n[claude-code] <- notifications/claude/channel {}", push["params"]);
    // Claude Code does not say whether it shows pushes (channels may be off), so the push
    // counts for nothing: the next tool result still says the message is unread.
    let reminder = claude.tool("topics", json!({})).await?;
    if !reminder.contains("1 unread message") {
        bail!("expected the unread reminder after an unconfirmed push");
    }

    drop(claude);
    drop(codex);
    daemon.stop().await;
    println!("\ndone");
    Ok(())
}

/// The daemon both sessions talk to, named `devbox`, on loopback.
async fn start(home: &Home) -> anyhow::Result<Daemon> {
    Ok(Daemon::start(DaemonOptions {
        home: home.clone(),
        overrides: Overrides {
            name: Some(NodeName::new("devbox")?),
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            no_mdns: true,
            ..Overrides::default()
        },
        user: Some(AgentName::new("you")?),
    })
    .await?)
}

/// codex waits for work; claude asks meanwhile; codex wakes, reads its inbox and replies.
async fn ask_and_answer(claude: &mut Session, codex: &mut Session) -> anyhow::Result<()> {
    codex.next += 1;
    let wait_id = codex.next;
    println!("\n[codex] tools/call wait {{\"timeout_s\":60}}  (blocks)");
    codex
        .send(json!({"jsonrpc": "2.0", "id": wait_id, "method": "tools/call",
                     "params": {"name": "wait", "arguments": {"timeout_s": 60}}}))
        .await?;
    claude
        .tool(
            "send",
            json!({"to": "codex.backend", "text": "Does GET /users support pagination?"}),
        )
        .await?;
    let woke = loop {
        let v = codex.line().await?;
        if v["id"] == wait_id {
            break v;
        }
    };
    println!(
        "[codex]   {}",
        woke["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .replace('\n', "\n[codex]   ")
    );
    let inbox = codex.tool("inbox", json!({})).await?;
    let id = inbox
        .split("--- message ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .context("no message in the inbox")?
        .to_string();
    codex
        .tool(
            "send",
            json!({"to": "claude-code.frontend", "reply_to": id, "text": "Yes: ?page=N&per_page=M, default 50."}),
        )
        .await?;
    Ok(())
}
