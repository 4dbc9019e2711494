//! Trusting our hooks in Codex, which skips hooks nobody trusted: through its own
//! app-server, as Codex's `/hooks` review does.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Client;
use super::wake::is_our_hook;

/// How long the Codex app-server may take to answer while trusting our hooks.
const CODEX_TRUST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why Codex's hooks could not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum CodexTrustError {
    /// `codex app-server` did not start.
    #[error("cannot run {codex} app-server: {source}")]
    Start {
        /// The binary.
        codex: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Writing to it failed (it exited).
    #[error("Codex app-server: {0}")]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("the Codex app-server did not answer {0}")]
    NoAnswer(String),
    /// It answered with an error.
    #[error("Codex app-server refused {method}: {error}")]
    Refused {
        /// The request.
        method: String,
        /// Its error object.
        error: Value,
    },
}

/// A `codex app-server` child speaking JSON-RPC lines, killed when dropped.
struct AppServer {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<Value>,
    deadline: Instant,
}

impl AppServer {
    fn start(codex: &Path, cwd: &Path) -> Result<Self, CodexTrustError> {
        let mut child = Command::new(codex)
            .arg("app-server")
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| CodexTrustError::Start {
                codex: codex.display().to_string(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CodexTrustError::Io(std::io::Error::other(
                "no pipes to the Codex app-server",
            )));
        };
        let (tx, answers) = sync_channel::<Value>(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            stdin,
            answers,
            deadline: Instant::now() + CODEX_TRUST_TIMEOUT,
        })
    }

    fn send(&mut self, msg: &Value) -> Result<(), CodexTrustError> {
        writeln!(self.stdin, "{msg}")?;
        self.stdin.flush()?;
        Ok(())
    }

    /// A notification (no answer).
    fn notify(&mut self, method: &str) -> Result<(), CodexTrustError> {
        self.send(&json!({ "jsonrpc": "2.0", "method": method }))
    }

    /// A request, and its result (other messages in between are skipped).
    fn request(&mut self, id: u64, method: &str, params: Value) -> Result<Value, CodexTrustError> {
        self.send(&json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params }))?;
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let v = self
                .answers
                .recv_timeout(left)
                .map_err(|_| CodexTrustError::NoAnswer(method.to_string()))?;
            if v["id"] == id && v.get("method").is_none() {
                if let Some(error) = v.get("error") {
                    return Err(CodexTrustError::Refused {
                        method: method.to_string(),
                        error: error.clone(),
                    });
                }
                return Ok(v["result"].clone());
            }
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our hooks among those `hooks/list` answered, not yet trusted: key → `{trusted_hash}`.
fn untrusted_hooks_of_ours(listed: &Value) -> serde_json::Map<String, Value> {
    let mut trust = serde_json::Map::new();
    for set in listed["data"].as_array().into_iter().flatten() {
        for h in set["hooks"].as_array().into_iter().flatten() {
            let ours = h["command"].as_str().is_some_and(|c| is_our_hook(c, Client::Codex));
            if ours
                && h["trustStatus"] != "trusted"
                && let (Some(key), Some(hash)) = (h["key"].as_str(), h["currentHash"].as_str())
            {
                trust.insert(key.to_string(), json!({ "trusted_hash": hash }));
            }
        }
    }
    trust
}

/// Marks our hooks trusted in Codex: asks `codex app-server` (`codex` is the binary) for
/// the hooks it sees from `cwd` with their current hashes (`hooks/list`), and records ours
/// as trusted (`config/batchWrite` of `hooks.state`), as Codex's own `/hooks` review does.
/// Returns how many it trusted.
pub fn trust_codex_hooks(codex: &Path, cwd: &Path) -> Result<usize, CodexTrustError> {
    let mut server = AppServer::start(codex, cwd)?;
    let client_info =
        json!({ "name": "agentmesh", "title": "agentmesh installer", "version": env!("CARGO_PKG_VERSION") });
    server.request(1, "initialize", json!({ "clientInfo": client_info }))?;
    server.notify("initialized")?;
    let listed = server.request(2, "hooks/list", json!({ "cwds": [cwd] }))?;
    let trust = untrusted_hooks_of_ours(&listed);
    let n = trust.len();
    if n > 0 {
        let edits = json!([{ "keyPath": "hooks.state", "mergeStrategy": "upsert", "value": trust }]);
        server.request(
            3,
            "config/batchWrite",
            json!({ "edits": edits, "reloadUserConfig": true }),
        )?;
    }
    Ok(n)
}
