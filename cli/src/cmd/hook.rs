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
/// Pause before a batch the plugin could not show is offered again (doubling up to
/// [`OFFER_PAUSE_MAX`] while it keeps failing).
const OFFER_PAUSE: Duration = Duration::from_secs(2);
/// Longest pause between offers of a batch that could not be shown.
const OFFER_PAUSE_MAX: Duration = Duration::from_secs(120);
/// Longest `codex queue` may take.
const CODEX_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);

fn kind(client: HookClient) -> &'static str {
    match client {
        HookClient::ClaudeCode => "claude-code",
        HookClient::Codex => "codex",
        HookClient::Opencode => "opencode",
    }
}

pub async fn run(ctx: &Ctx, a: HookArgs) -> anyhow::Result<()> {
    let max = Duration::from_secs(a.max_wait_s);
    let outcome = match (a.action, a.client) {
        (HookAction::Context, client) => context(ctx, client).await,
        (HookAction::Wake, HookClient::ClaudeCode) => wake_once(ctx, max).await,
        (HookAction::Wake, HookClient::Codex) => start_codex_waker(ctx, &a),
        (HookAction::Wake, HookClient::Opencode) | (HookAction::Follow, _) => follow(ctx, a.client).await,
        (HookAction::CodexQueue, _) => codex_queue(ctx, &a, max).await,
    };
    match outcome {
        Ok(0) => Ok(()),
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
    connect_within(ctx, Duration::ZERO).await
}

/// Connects to the node, waiting up to `wait` for one to come up: at the start of a
/// session the client's MCP adapter may be starting it right now. `None`: no node (or it
/// was stopped with `mesh down`), so no mail to show.
async fn connect_within(ctx: &Ctx, wait: Duration) -> Result<Option<Client>, ClientError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut step = Duration::from_millis(50);
    loop {
        match Client::connect(&ctx.home, concat!("mesh-hook/", env!("CARGO_PKG_VERSION"))).await {
            Ok(c) => return Ok(Some(c)),
            Err(ClientError::NotRunning { .. }) => {
                if StopMark::is_set(&ctx.home) || tokio::time::Instant::now() + step > deadline {
                    return Ok(None);
                }
                tokio::time::sleep(step).await;
                step = (step * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Shows the session's unread mail as context for the model (UserPromptSubmit, PostToolUse,
/// SessionStart): the client adds the hook's output to what the model reads next.
async fn context(ctx: &Ctx, client_kind: HookClient) -> anyhow::Result<u8> {
    let input = read_input();
    let event = input.hook_event_name.as_deref().unwrap_or("UserPromptSubmit");
    // Only at the start may the session (and the node) still be coming up; later a session
    // without an agent has none, and every prompt and tool call would pay for the wait.
    let wait = if event == "SessionStart" {
        wake::CONTEXT_FIND_WAIT
    } else {
        Duration::ZERO
    };
    let Some(client) = connect_within(ctx, wait).await? else {
        return Ok(0);
    };
    let ancestry = wake::ancestors();
    let cwd = input.cwd.as_deref();
    let Some(agent) = wake::find_agent(&client, kind(client_kind), &ancestry, cwd, wait).await? else {
        return Ok(0);
    };
    // A turn a channel push started: the messages in its `<channel>` events are being shown
    // right now, so they are read, and not repeated as context.
    if let Some(prompt) = &input.prompt {
        wake::mark_pushed_in_prompt(&client, &agent.name, prompt, mesh_mcp::install::SERVER_NAME).await?;
    }
    let Some(text) = wake::take_mail(&client, &agent).await? else {
        return Ok(0);
    };
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
/// on stderr and exits 2, which wakes the idle model with it. Quiet exits (0): a newer
/// waker took over, the session ended, the node is down or was stopped, `max` passed.
async fn wake_once(ctx: &Ctx, max: Duration) -> anyhow::Result<u8> {
    let input = read_input();
    // Unattended (`claude -p`, the Agent SDK) Claude Code runs `asyncRewake` hooks in the
    // foreground and waits for them: a waker would hold the run open. Such a run ends after
    // its turn; its context hooks still show the mail.
    if std::env::var("CLAUDE_CODE_SESSION_ATTENDED").is_ok_and(|v| v == "0") {
        return Ok(0);
    }
    let Some(client) = connect_within(ctx, wake::WAKE_FIND_WAIT).await? else {
        return Ok(0);
    };
    let ancestry = wake::ancestors();
    let cwd = input.cwd.as_deref();
    let found = wake::find_agent(&client, "claude-code", &ancestry, cwd, wake::WAKE_FIND_WAIT).await?;
    let Some(agent) = found else {
        return Ok(0);
    };
    drop(client);
    // With channels possibly on, the push comes first: wake only for what it did not
    // get read (the model answering it, or a tool showing it).
    let grace = match agent.pid {
        Some(p) if wake::launched_with_channels(p) => wake::CHANNEL_GRACE,
        _ => Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + max;
    let mut waker = Waker::hold(&ctx.home, agent).await?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut list = match waker.next(left).await? {
            Ok(list) => list,
            // Replaced, the session ended, the node is down or stopped, time is up: quiet.
            Err(_) => return Ok(0),
        };
        if !grace.is_zero() {
            tokio::time::sleep(grace).await;
            list = wake::unread(waker.client(), &waker.agent().name, false).await?;
            if list.is_empty() {
                continue;
            }
        }
        let batch = wake::render_batch(waker.agent(), &list);
        let text = batch.text.clone();
        wake::mark_shown(waker.client(), &waker.agent().name, batch).await?;
        let mut stderr = std::io::stderr().lock();
        write!(stderr, "{text}")?;
        stderr.flush()?;
        return Ok(2);
    }
}

/// The OpenCode plugin's companion: holds the waker of the session's agent for as long as
/// the plugin runs, and writes one JSON line per batch of new mail,
/// `{"batch", "agent", "count", "text"}`. The plugin injects `text` into the session and
/// answers `ok <batch>` (marked read) or `no <batch>` (offered again after a pause) on
/// stdin; an answer naming another batch is ignored.
async fn follow(ctx: &Ctx, client: HookClient) -> anyhow::Result<u8> {
    let cwd = std::env::current_dir().ok().map(|d| d.display().to_string());
    let ancestry = wake::ancestors();
    let (acks_tx, mut acks) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if acks_tx.blocking_send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    let mut pause = Duration::from_millis(200);
    let mut batch: u64 = 0;
    loop {
        if StopMark::is_set(&ctx.home) {
            return Ok(0);
        }
        let Some(conn) = connect(ctx).await? else {
            // The node is down: wait for it (the plugin ends us with its process).
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(wake::RECONNECT_WAIT / 10);
            continue;
        };
        let found = wake::find_agent(&conn, kind(client), &ancestry, cwd.as_deref(), wake::WAKE_FIND_WAIT).await?;
        let Some(agent) = found else {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(wake::RECONNECT_WAIT / 10);
            continue;
        };
        drop(conn);
        let mut waker = Waker::hold(&ctx.home, agent).await?;
        pause = Duration::from_millis(200);
        let mut offer_pause = OFFER_PAUSE;
        loop {
            // The plugin ending (its OpenCode exits) closes our stdin: end with it.
            let next = tokio::select! {
                next = waker.next(Duration::from_secs(3600)) => next?,
                () = closed(&mut acks) => return Ok(0),
            };
            match next {
                Ok(list) => {
                    batch += 1;
                    let shown = wake::render_batch(waker.agent(), &list);
                    let line = serde_json::json!({
                        "batch": batch,
                        "agent": waker.agent().address,
                        "count": shown.whole.len() + shown.cut.len(),
                        "text": shown.text,
                    });
                    {
                        let mut stdout = std::io::stdout().lock();
                        writeln!(stdout, "{line}")?;
                        stdout.flush()?;
                    }
                    match answer(&mut acks, batch).await {
                        Answer::Shown => {
                            wake::mark_shown(waker.client(), &waker.agent().name, shown).await?;
                            offer_pause = OFFER_PAUSE;
                        }
                        Answer::Closed => return Ok(0),
                        // Not shown (no session yet, OpenCode busy refusing): never marked
                        // read unseen; offered again after a pause that grows while it fails.
                        Answer::NotShown => {
                            tokio::select! {
                                () = tokio::time::sleep(offer_pause) => {}
                                () = closed(&mut acks) => return Ok(0),
                            }
                            offer_pause = (offer_pause * 2).min(OFFER_PAUSE_MAX);
                        }
                    }
                }
                Err(Quiet::ClientGone | Quiet::Replaced) => return Ok(0),
                Err(Quiet::TimedOut) => {}
                Err(Quiet::DaemonGone) => break,
            }
        }
    }
}

/// The plugin's answer about a batch.
enum Answer {
    Shown,
    NotShown,
    Closed,
}

/// Waits (at most [`ACK_WAIT`]) for the answer about `batch`, dropping answers about others.
async fn answer(acks: &mut tokio::sync::mpsc::Receiver<String>, batch: u64) -> Answer {
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        match tokio::time::timeout_at(deadline, acks.recv()).await {
            Err(_) => return Answer::NotShown,
            Ok(None) => return Answer::Closed,
            Ok(Some(line)) => {
                let mut words = line.split_whitespace();
                let verdict = words.next();
                if words.next().and_then(|n| n.parse::<u64>().ok()) != Some(batch) {
                    continue;
                }
                return match verdict {
                    Some("ok") => Answer::Shown,
                    _ => Answer::NotShown,
                };
            }
        }
    }
}

/// Resolves once the plugin closed our stdin (answers that come unasked are dropped).
async fn closed(acks: &mut tokio::sync::mpsc::Receiver<String>) {
    while acks.recv().await.is_some() {}
}

/// Codex's Stop and SessionStart hooks: Codex waits for its hooks, so the waiting is done by
/// a detached `mesh hook codex codex-queue` that outlives this one (started once per turn;
/// it replaces the one started before, which stands down). It is given this hook's thread
/// id and process ancestry, since it is not a descendant of Codex.
fn start_codex_waker(ctx: &Ctx, a: &HookArgs) -> anyhow::Result<u8> {
    let input = read_input();
    let Some(thread) = input.session_id.filter(|t| !t.is_empty()) else {
        return Ok(0);
    };
    let pids = wake::ancestors()
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let exe = std::env::current_exe()?;
    // What it has to say goes to the home's hook log (it has no terminal and no client).
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ctx.home.path().join("hooks.log"))
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--home")
        .arg(ctx.home.path())
        .args(["hook", "codex", "codex-queue", "--thread", &thread, "--pids", &pids])
        .arg("--max-wait-s")
        .arg(a.max_wait_s.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    if let Some(cwd) = &input.cwd {
        cmd.arg("--cwd").arg(cwd);
    }
    mesh_node::daemon::detach(&mut cmd);
    let mut child = cmd.spawn()?;
    // The spawned process forks the waker and exits at once.
    let _ = child.wait();
    Ok(0)
}

/// The detached Codex waker: waits for mail to the agent of the Codex process among
/// `--pids`, then queues it as a user turn on the thread with `codex queue` (a new turn at
/// once if the thread is idle, the next one if it is busy), and marks it read once Codex
/// took it. A newer waker (the next turn's, or a new thread's) replaces it.
async fn codex_queue(ctx: &Ctx, a: &HookArgs, max: Duration) -> anyhow::Result<u8> {
    let (Some(thread), Some(pids)) = (&a.thread, &a.pids) else {
        anyhow::bail!("codex-queue needs --thread and --pids");
    };
    let ancestry: Vec<u32> = pids.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    let Some(client) = connect_within(ctx, wake::WAKE_FIND_WAIT).await? else {
        return Ok(0);
    };
    let found = wake::find_agent(&client, "codex", &ancestry, a.cwd.as_deref(), wake::WAKE_FIND_WAIT).await?;
    let Some(agent) = found else {
        return Ok(0);
    };
    drop(client);
    let codex = agent
        .pid
        .and_then(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .filter(|exe| exe.file_name().is_some_and(|n| n.to_string_lossy().contains("codex")))
        .unwrap_or_else(|| "codex".into());
    let mut waker = Waker::hold(&ctx.home, agent).await?;
    let Ok(list) = waker.next(max).await? else {
        return Ok(0);
    };
    let batch = wake::render_batch(waker.agent(), &list);
    let queued = tokio::process::Command::new(&codex)
        .args(["queue", "--thread", thread, "--message", &batch.text])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(CODEX_QUEUE_TIMEOUT, queued).await {
        Ok(Ok(o)) if o.status.success() => {
            wake::mark_shown(waker.client(), &waker.agent().name, batch).await?;
            Ok(0)
        }
        // Left unread: the next turn's hooks or a tool result show it.
        Ok(Ok(o)) => anyhow::bail!(
            "{} queue failed ({}): {}",
            codex.display(),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(Err(e)) => anyhow::bail!("cannot run {}: {e}", codex.display()),
        Err(_) => anyhow::bail!(
            "{} queue did not finish within {} s",
            codex.display(),
            CODEX_QUEUE_TIMEOUT.as_secs()
        ),
    }
}
