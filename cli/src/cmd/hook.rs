//! `mesh hook`: run by the hooks and the plugin that `mesh install` sets up, never by hand.
//! It shows a session's new mail to its model, or waits for mail and wakes the idle
//! session. A hook must never break the client's turn: every failure ends quietly (exit 0,
//! a line on stderr), and only a wake exits 2 (Claude Code's signal to wake the model).

use std::io::{BufRead, Read, Write};
use std::time::Duration;

use mesh_mcp::wake::{self, HookInput, Quiet, Waker};
use mesh_node::api::client::{Client, ClientError};
use mesh_node::settings::StopMark;

use super::{Ctx, ExitWith};
use crate::cli::{HookAction, HookArgs, HookClient};

/// Most of a hook's stdin read (the client's JSON about the event).
const STDIN_MAX: u64 = 1024 * 1024;
/// Longest the plugin may take to say it showed a batch before it is offered again.
const ACK_WAIT: Duration = Duration::from_secs(60);

pub async fn run(ctx: &Ctx, a: HookArgs) -> anyhow::Result<()> {
    let outcome = match a.action {
        HookAction::Context => context(ctx, a.client).await,
        HookAction::Wake => wake_once(ctx, Duration::from_secs(a.max_wait_s)).await,
        HookAction::Follow => follow(ctx).await,
    };
    match outcome {
        Ok(code) if code == 0 => Ok(()),
        Ok(code) => Err(ExitWith(code).into()),
        Err(e) => {
            // Said on stderr (the client logs it), never a failed hook.
            eprintln!("agentmesh hook: {e:#}");
            Ok(())
        }
    }
}

fn read_input() -> HookInput {
    let mut text = String::new();
    let _ = std::io::stdin().take(STDIN_MAX).read_to_string(&mut text);
    HookInput::parse(&text)
}

async fn connect(ctx: &Ctx) -> Result<Option<Client>, ClientError> {
    match Client::connect(&ctx.home, concat!("mesh-hook/", env!("CARGO_PKG_VERSION"))).await {
        Ok(c) => Ok(Some(c)),
        // No node, no mail to show: nothing to say.
        Err(ClientError::NotRunning { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Shows the session's unread mail as context for the model (UserPromptSubmit, PostToolUse,
/// SessionStart): the client adds the hook's output to what the model reads next.
async fn context(ctx: &Ctx, client_kind: HookClient) -> anyhow::Result<u8> {
    let input = read_input();
    let Some(client) = connect(ctx).await? else {
        return Ok(0);
    };
    let Some(agent) = wake::find_agent(&client, &input, wake::CONTEXT_FIND_WAIT).await? else {
        return Ok(0);
    };
    let Some(text) = wake::take_mail(&client, &agent).await? else {
        return Ok(0);
    };
    let event = input.hook_event_name.as_deref().unwrap_or("UserPromptSubmit");
    let out = match client_kind {
        // Both read `hookSpecificOutput.additionalContext` from a command hook's stdout.
        HookClient::ClaudeCode | HookClient::Codex => serde_json::json!({
            "hookSpecificOutput": { "hookEventName": event, "additionalContext": text }
        })
        .to_string(),
        HookClient::Opencode => text,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{out}")?;
    stdout.flush()?;
    Ok(0)
}

/// Claude Code's `asyncRewake` hook: waits for mail to the session's agent, then prints it
/// on stderr and exits 2, which wakes the idle model with it. Quiet exits (0): another hook
/// already waits, the session ended, the node is down or was stopped, `max` passed.
async fn wake_once(ctx: &Ctx, max: Duration) -> anyhow::Result<u8> {
    let input = read_input();
    let Some(client) = connect(ctx).await? else {
        return Ok(0);
    };
    let Some(agent) = wake::find_agent(&client, &input, wake::WAKE_FIND_WAIT).await? else {
        return Ok(0);
    };
    drop(client);
    let mut waker = match Waker::hold(&ctx.home, agent).await? {
        Ok(w) => w,
        Err(_) => return Ok(0),
    };
    match waker.next(max).await? {
        Ok(list) => {
            let n = wake::fitting(&list);
            let ids = list[..n].iter().map(|m| m.id).collect();
            let text = wake::render_mail(waker.agent(), &list[..n], n < list.len());
            wake::mark_read(waker.client(), &waker.agent().name, ids).await?;
            let mut stderr = std::io::stderr().lock();
            write!(stderr, "{text}")?;
            stderr.flush()?;
            Ok(2)
        }
        Err(Quiet::DaemonGone) if StopMark::is_set(&ctx.home) => Ok(0),
        Err(_) => Ok(0),
    }
}

/// The OpenCode plugin's companion: holds the waker of the session's agent for as long as
/// the plugin runs, and writes one JSON line per batch of new mail,
/// `{"agent", "count", "text"}`. The plugin injects `text` into the session and answers
/// `ok` (marked read) or `no` (offered again with the next mail) on stdin.
async fn follow(ctx: &Ctx) -> anyhow::Result<u8> {
    let input = HookInput {
        cwd: std::env::current_dir().ok().map(|d| d.display().to_string()),
        ..HookInput::default()
    };
    let (acks_tx, mut acks) = tokio::sync::mpsc::channel::<bool>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if acks_tx.blocking_send(line.trim() == "ok").is_err() {
                break;
            }
        }
    });
    let mut pause = Duration::from_millis(200);
    loop {
        if StopMark::is_set(&ctx.home) {
            return Ok(0);
        }
        let Some(client) = connect(ctx).await? else {
            // The node is down: wait for it (bounded steps; the plugin ends us with its
            // process).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(wake::RECONNECT_WAIT / 10);
            continue;
        };
        let Some(agent) = wake::find_agent(&client, &input, wake::WAKE_FIND_WAIT).await? else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(wake::RECONNECT_WAIT / 10);
            continue;
        };
        drop(client);
        let mut waker = match Waker::hold(&ctx.home, agent).await? {
            Ok(w) => w,
            Err(_) => {
                tokio::time::sleep(wake::CLIENT_CHECK).await;
                continue;
            }
        };
        pause = Duration::from_millis(200);
        loop {
            match waker.next(Duration::from_secs(3600)).await? {
                Ok(list) => {
                    let n = wake::fitting(&list);
                    let ids: Vec<_> = list[..n].iter().map(|m| m.id).collect();
                    let line = serde_json::json!({
                        "agent": waker.agent().address,
                        "count": n,
                        "text": wake::render_mail(waker.agent(), &list[..n], n < list.len()),
                    });
                    {
                        let mut stdout = std::io::stdout().lock();
                        writeln!(stdout, "{line}")?;
                        stdout.flush()?;
                    }
                    match tokio::time::timeout(ACK_WAIT, acks.recv()).await {
                        Ok(Some(true)) => wake::mark_read(waker.client(), &waker.agent().name, ids).await?,
                        Ok(None) => return Ok(0),
                        // Not shown: offered again once more mail comes (or at the next
                        // look after a reconnection); never marked read unseen.
                        Ok(Some(false)) | Err(_) => {
                            tokio::time::sleep(wake::CLIENT_CHECK).await;
                        }
                    }
                }
                Err(Quiet::ClientGone) => return Ok(0),
                Err(Quiet::TimedOut) => {}
                Err(Quiet::DaemonGone | Quiet::Taken) => break,
            }
        }
    }
}
