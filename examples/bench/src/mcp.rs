//! A minimal MCP client: `mesh mcp` as a child process, newline-delimited JSON-RPC.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

pub const RPC_WAIT: Duration = Duration::from_secs(30);

pub struct Mcp {
    child: Child,
    stdin: ChildStdin,
    /// Every line from stdout, with the time it was read.
    lines: mpsc::Receiver<(Instant, Value)>,
    next_id: u64,
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Mcp {
    /// Spawns `mesh --home <home> mcp --name <name>` without initializing.
    pub fn spawn(bin: &Path, home: &Path, name: &str) -> anyhow::Result<Mcp> {
        let mut child = Command::new(bin)
            .arg("--home")
            .arg(home)
            .args(["mcp", "--name", name])
            .env("MESH_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawning mesh mcp")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = mpsc::channel(4096);
        tokio::spawn(async move {
            let mut r = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let at = Instant::now();
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send((at, v)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Mcp {
            child,
            stdin,
            lines,
            next_id: 1,
        })
    }

    pub async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        let mut s = serde_json::to_string(v)?;
        s.push('\n');
        self.stdin.write_all(s.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Sends a request; returns its id.
    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await?;
        Ok(id)
    }

    /// Waits for the response to `id` (other lines are dropped).
    pub async fn response(&mut self, id: u64) -> anyhow::Result<(Instant, Value)> {
        let deadline = tokio::time::Instant::now() + RPC_WAIT;
        loop {
            let (at, v) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .context("no response from mesh mcp")?
                .context("mesh mcp exited")?;
            if v["id"] == id {
                if v.get("error").is_some() {
                    bail!("mesh mcp error: {v}");
                }
                return Ok((at, v));
            }
        }
    }

    /// Waits for a notification `method` (other lines are dropped).
    pub async fn notification(&mut self, method: &str) -> anyhow::Result<(Instant, Value)> {
        let deadline = tokio::time::Instant::now() + RPC_WAIT;
        loop {
            let (at, v) = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .with_context(|| format!("no {method} notification"))?
                .context("mesh mcp exited")?;
            if v["method"] == method {
                return Ok((at, v));
            }
        }
    }

    /// The initialize exchange, as Claude Code would open it.
    pub async fn initialize(&mut self) -> anyhow::Result<Instant> {
        let id = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "claude-code", "version": "2.0.0"}
                }),
            )
            .await?;
        let (at, _) = self.response(id).await?;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await?;
        Ok(at)
    }

    /// Calls a tool and returns its text.
    pub async fn tool(&mut self, name: &str, args: Value) -> anyhow::Result<String> {
        let id = self
            .request("tools/call", json!({"name": name, "arguments": args}))
            .await?;
        let (_, v) = self.response(id).await?;
        let text = v["result"]["content"][0]["text"].as_str().unwrap_or("").to_string();
        if v["result"]["isError"] == true {
            bail!("{name} failed: {text}");
        }
        Ok(text)
    }
}
