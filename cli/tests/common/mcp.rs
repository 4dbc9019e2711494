//! A minimal MCP client for tests: spawns `mesh mcp`, speaks newline-delimited JSON-RPC on
//! its stdio, keeps notifications aside. Every wait has a deadline.

#![allow(dead_code, missing_docs)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Mcp {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
    pub notifications: VecDeque<Value>,
    stash: Vec<Value>,
    next_id: u64,
}

impl Mcp {
    /// `mesh --home <home> mcp [args]` in directory `cwd`, as client `client_name`
    /// (initialize is done).
    pub fn start(home: &Path, cwd: &Path, client_name: &str, args: &[&str]) -> Mcp {
        Self::start_with(home, cwd, client_name, json!({}), args)
    }

    /// [`Mcp::start`] declaring these client `capabilities` in `initialize`.
    pub fn start_with(home: &Path, cwd: &Path, client_name: &str, capabilities: Value, args: &[&str]) -> Mcp {
        let mut cmd = Command::new(super::mesh_bin());
        cmd.arg("--home").arg(home).arg("mcp").args(args);
        Self::spawn_with(cmd, cwd, client_name, capabilities)
    }

    pub fn spawn(cmd: Command, cwd: &Path, client_name: &str) -> Mcp {
        Self::spawn_with(cmd, cwd, client_name, json!({}))
    }

    /// `mesh mcp` started with no handshake (for the stateless revision).
    pub fn spawn_raw(mut cmd: Command, cwd: &Path, client_name: &str) -> Mcp {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(cwd.join(format!("mcp-{client_name}.log")))
            .expect("log");
        let mut child = cmd
            .current_dir(cwd)
            .env("USER", super::TEST_USER)
            .env("MESH_LOG", "debug")
            .env_remove("MESH_AGENT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn mesh mcp");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("stdout is not JSON-RPC ({e}): {line}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Mcp {
            child,
            stdin,
            lines: rx,
            notifications: VecDeque::new(),
            stash: Vec::new(),
            next_id: 1,
        }
    }

    pub fn spawn_with(cmd: Command, cwd: &Path, client_name: &str, capabilities: Value) -> Mcp {
        let mut m = Self::spawn_raw(cmd, cwd, client_name);
        let init = m.request(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": capabilities,
                "clientInfo": { "name": client_name, "version": "1.0.0" }
            }),
        );
        assert!(init.get("result").is_some(), "initialize failed: {init}");
        m.notify("notifications/initialized", json!({}));
        m.stash.push(init);
        m
    }

    /// The initialize response.
    pub fn init_result(&self) -> &Value {
        &self.stash[0]["result"]
    }

    fn write(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{v}").expect("write to mesh mcp");
        stdin.flush().expect("flush");
    }

    pub fn notify(&mut self, method: &str, params: Value) {
        self.write(&json!({ "jsonrpc": "2.0", "method": method, "params": params }));
    }

    /// Sends a request and waits for its response (notifications are kept aside).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        self.response(id)
    }

    /// Sends a request without waiting; returns its id.
    pub fn send_request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }));
        id
    }

    pub fn response(&mut self, id: u64) -> Value {
        if let Some(pos) = self.stash.iter().position(|v| v["id"] == id) {
            return self.stash.remove(pos);
        }
        let deadline = Instant::now() + RPC_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v.get("id").is_some() && v["id"] == id && v.get("method").is_none() => return v,
                Ok(v) if v.get("method").is_some() && v.get("id").is_none() => self.notifications.push_back(v),
                Ok(v) => self.stash.push(v),
                Err(RecvTimeoutError::Timeout) => panic!("no response to request {id} within {RPC_TIMEOUT:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("mesh mcp exited before answering request {id}"),
            }
        }
    }

    /// Calls a tool; returns (text, is_error).
    pub fn tool(&mut self, name: &str, args: Value) -> (String, bool) {
        let r = self.request("tools/call", json!({ "name": name, "arguments": args }));
        let result = r
            .get("result")
            .unwrap_or_else(|| panic!("tools/call {name} failed: {r}"));
        let text = result["content"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        (text, result["isError"].as_bool().unwrap_or(false))
    }

    /// Calls a tool that must succeed; returns its text.
    #[track_caller]
    pub fn ok(&mut self, name: &str, args: Value) -> String {
        let (text, err) = self.tool(name, args);
        assert!(!err, "{name} failed: {text}");
        text
    }

    /// Waits for a notification with this method.
    pub fn wait_notification(&mut self, method: &str, timeout: Duration) -> Value {
        if let Some(pos) = self.notifications.iter().position(|n| n["method"] == method) {
            return self.notifications.remove(pos).expect("present");
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["method"] == method => return v,
                Ok(v) if v.get("method").is_some() && v.get("id").is_none() => self.notifications.push_back(v),
                Ok(v) => self.stash.push(v),
                Err(_) => panic!("no {method} notification within {timeout:?}"),
            }
        }
    }

    /// Closes stdin (the client went away) and waits for the process to exit.
    pub fn close(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        wait_exit(&mut self.child)
    }
}

pub fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    use wait_timeout::ChildExt;
    match child.wait_timeout(RPC_TIMEOUT).expect("wait") {
        Some(s) => s,
        None => {
            let _ = child.kill();
            panic!("mesh mcp did not exit within {RPC_TIMEOUT:?}");
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
