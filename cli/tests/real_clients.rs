//! The real agent clients, as users run them: Claude Code, Codex and OpenCode installed
//! from npm at the versions pinned in `cli/tests/clients/package.json` (`.ci/run` installs
//! them there), each started offline in a network namespace with only loopback, with
//! a dummy API key and a fake model API on loopback (`clients/fake_model_api.py`), no
//! account. For each: `mesh install`, the client's own `mcp list` shows the server, a real
//! session starts the real `mesh mcp` and its agent appears on the mesh; mail sent to the
//! idle session reaches its model (the fake API sees the mail's text in a request), and the
//! sender was told how it would be received.
//!
//! Needs root (namespaces) and tmux (the interactive clients run in it); skipped with a
//! message without them or without the clients, and failed instead under CI (`CI=true`).
//! Run by hand: `npm install --prefix cli/tests/clients --no-save && cargo test -p mesh-cli --test
//! real_clients -- --nocapture`; `MESH_TEST_KEEP=1` keeps the homes (client logs, debug
//! logs, the fake API's request log) for a post-mortem.

#![allow(clippy::unwrap_used)]

mod common;
mod netns;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netns::Lab;
use serde_json::Value;

/// Where the pinned clients are installed.
fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// How long a client may take to do something a user would wait for.
const CLIENT_WAIT: Duration = Duration::from_secs(90);

/// The dummy Anthropic key; Claude Code remembers approved keys by their last 20 characters.
const CLAUDE_KEY: &str = "sk-ant-api03-agentmesh-test-dummy-key-0123456789abcdefXYZ";

/// A machine with no network: a loopback-only namespace with a fake model API, a user home
/// for the client, a mesh home, a project directory and a tmux server for the client's
/// terminal. Everything is removed on drop (processes in the namespace are killed).
struct Offline {
    tag: String,
    ns: String,
    tmux: String,
    dir: tempfile::TempDir,
    mesh: common::Home,
    api: Child,
    port: u16,
    /// Held for its drop, last: it kills what still runs in the namespace.
    _lab: Lab,
}

impl Offline {
    fn new(tag: &str, bin: &str) -> Option<Offline> {
        let exe = clients_dir().join("node_modules/.bin").join(bin);
        if !exe.exists() {
            return netns::skip(
                tag,
                &format!(
                    "{} is not installed; run: npm install --no-save --prefix {}",
                    exe.display(),
                    clients_dir().display()
                ),
            );
        }
        if Command::new("tmux").arg("-V").output().is_err() {
            return netns::skip(tag, "tmux is missing (apt-get install tmux; .ci/run installs it)");
        }
        let mut lab = Lab::new(tag)?;
        let ns = lab.offline("host");
        let mut dir = tempfile::tempdir().unwrap();
        if std::env::var_os("MESH_TEST_KEEP").is_some() {
            dir.disable_cleanup(true);
            eprintln!("keeping {tag} files in {}", dir.path().display());
        }
        for d in ["user", "work"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let port_file = dir.path().join("api.port");
        let api = Command::new("ip")
            .args(["netns", "exec", &ns, "python3"])
            .arg(clients_dir().join("fake_model_api.py"))
            .arg(dir.path().join("api.jsonl"))
            .arg(&port_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake model API");
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file) {
                break p.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the fake model API did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mesh = common::Home::isolated();
        Some(Offline {
            tag: tag.to_string(),
            tmux: format!("am{}-{tag}", std::process::id()),
            ns,
            dir,
            mesh,
            api,
            port,
            _lab: lab,
        })
    }

    fn user(&self) -> PathBuf {
        self.dir.path().join("user")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// The environment of every client command: its own HOME, the pinned clients first on
    /// PATH, nothing from this machine's user.
    fn env(&self) -> Vec<(String, OsString)> {
        let path = format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            clients_dir().join("node_modules/.bin").display()
        );
        vec![
            ("HOME".into(), self.user().into()),
            ("PATH".into(), path.into()),
            ("TERM".into(), "xterm-256color".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("USER".into(), common::TEST_USER.into()),
        ]
    }

    /// `program args...` inside the namespace, in the project directory, with `extra`
    /// environment on top of [`Offline::env`].
    fn command(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, "env", "-i"]);
        for (k, v) in self.env() {
            let mut kv = OsString::from(format!("{k}="));
            kv.push(v);
            c.arg(kv);
        }
        for (k, v) in extra {
            c.arg(format!("{k}={v}"));
        }
        c.arg(program).args(args).current_dir(self.work());
        c
    }

    /// Runs a command in the namespace to its end (bounded); returns stdout, panics on failure.
    #[track_caller]
    fn run(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) -> String {
        use wait_timeout::ChildExt;
        let mut child = self
            .command(program, args, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = match child.wait_timeout(CLIENT_WAIT).unwrap() {
            Some(s) => s,
            None => {
                let _ = child.kill();
                panic!("{program} {args:?} did not finish within {CLIENT_WAIT:?}");
            }
        };
        let mut out = String::new();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(status.success(), "{program} {args:?}: {status}\n{out}\n{err}");
        out
    }

    /// `mesh --home <mesh home> args...` inside the namespace.
    #[track_caller]
    fn mesh(&self, args: &[&str]) -> String {
        let exe = common::mesh_bin();
        let home = self.mesh.path();
        let mut all = vec!["--home", home.to_str().unwrap()];
        all.extend(args);
        self.run(exe.to_str().unwrap(), &all, &[])
    }

    /// Starts `program args...` in a terminal (tmux, 200x50) inside the namespace.
    fn terminal(&self, program: &str, args: &[&str], extra: &[(&str, &str)]) {
        let c = self.command(program, args, extra);
        let mut line: Vec<String> = vec![c.get_program().to_string_lossy().to_string()];
        line.extend(
            c.get_args()
                .map(|a| mesh_mcp::install::shell_word(&a.to_string_lossy())),
        );
        let script = format!(
            "cd {} && exec {}",
            mesh_mcp::install::shell_word(&self.work().to_string_lossy()),
            line.join(" ")
        );
        let ok = Command::new("tmux")
            .args([
                "-L",
                &self.tmux,
                "new-session",
                "-d",
                "-s",
                "c",
                "-x",
                "200",
                "-y",
                "50",
            ])
            .arg(script)
            .status()
            .unwrap();
        assert!(ok.success(), "tmux did not start {program}");
    }

    /// Types `text` and Enter into the terminal.
    fn type_line(&self, text: &str) {
        for keys in [vec!["-l", text], vec!["Enter"]] {
            let ok = Command::new("tmux")
                .args(["-L", &self.tmux, "send-keys", "-t", "c"])
                .args(keys)
                .status()
                .unwrap();
            assert!(ok.success());
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Closes the terminal: the client gets a hangup, as when its window is closed.
    fn close_terminal(&self) {
        let _ = Command::new("tmux").args(["-L", &self.tmux, "kill-server"]).status();
    }

    /// What the terminal shows.
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.tmux, "capture-pane", "-p", "-t", "c"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Every request the fake model API received, in order.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("api.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until a model request contains `needle`; returns it.
    #[track_caller]
    fn wait_model_saw(&self, needle: &str) -> Value {
        let deadline = Instant::now() + CLIENT_WAIT;
        loop {
            if let Some(r) = self
                .requests()
                .into_iter()
                .find(|r| r["body"].to_string().contains(needle))
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the model was never shown {needle:?} ({} requests); the terminal shows:\n{}",
                self.tag,
                self.requests().len(),
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the mesh has a local agent of `kind` received as `reception`; returns its
    /// name.
    #[track_caller]
    fn wait_agent(&self, kind: &str, reception: &str) -> String {
        let deadline = Instant::now() + CLIENT_WAIT;
        loop {
            let out = common::run_in(&self.mesh.path(), &["--json", "agents"], None);
            if out.code == 0
                && let Some(a) = out
                    .json()
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|a| a["kind"] == kind && a["local"] == true && a["reception"] == reception)
            {
                return a["name"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {kind} agent {reception} on the mesh: {}\nthe terminal shows:\n{}",
                self.tag,
                out.stdout,
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Sends `text` to `agent` as the user; returns the receipt.
    fn send(&self, agent: &str, text: &str) -> Value {
        let out = common::run_in(&self.mesh.path(), &["--json", "send", agent, text], None);
        out.ok();
        out.json()
    }
}

impl Drop for Offline {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.tmux, "kill-server"]).status();
        let _ = self.api.kill();
        let _ = self.api.wait();
        // Then `lab` (dropped last) kills what still runs in the namespace: the daemon,
        // Codex's app-server.
    }
}

/// A token the model must be shown.
fn token(tag: &str) -> String {
    format!("{tag}-{}", mesh_node::ids::MessageId::new())
}

/// Claude Code's user state for an offline start: onboarding done, the project trusted,
/// the dummy key approved; `channels` seeds its cached remote feature flag for channels
/// (offline it is off, and nothing else turns it on). Returns the environment to run it.
fn claude_state(t: &Offline, channels: bool) -> Vec<(&'static str, String)> {
    let work = t.work();
    let last20 = &CLAUDE_KEY[CLAUDE_KEY.len() - 20..];
    let mut state = serde_json::json!({
        "hasCompletedOnboarding": true,
        "lastOnboardingVersion": "2.1.332",
        "theme": "dark",
        "customApiKeyResponses": { "approved": [last20], "rejected": [] },
        "projects": { work.to_str().unwrap(): { "hasTrustDialogAccepted": true, "hasCompletedProjectOnboarding": true } }
    });
    if channels {
        state["cachedGrowthBookFeatures"] = serde_json::json!({ "tengu_harbor": true });
    }
    // Merged into what is there (`mesh install` may have written the MCP server entry).
    let path = t.user().join(".claude.json");
    if let Some(serde_json::Value::Object(had)) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
    {
        for (k, v) in had {
            state.as_object_mut().unwrap().entry(k).or_insert(v);
        }
    }
    std::fs::write(&path, state.to_string()).unwrap();
    vec![
        ("ANTHROPIC_API_KEY", CLAUDE_KEY.to_string()),
        ("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{}", t.port)),
        ("DISABLE_AUTOUPDATER", "1".to_string()),
    ]
}

/// Claude Code's `--debug` logs, all sessions.
fn claude_debug_log(t: &Offline) -> String {
    std::fs::read_dir(t.user().join(".claude/debug"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
                .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn claude_code_joins_the_mesh_and_is_woken_by_mail_through_its_hook() {
    let Some(t) = Offline::new("claude", "claude") else {
        return;
    };
    let state = claude_state(&t, false);
    let api: Vec<(&str, &str)> = state.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let api = api.as_slice();

    let installed = t.mesh(&["install", "claude-code"]);
    assert!(installed.contains("hooks"), "{installed}");
    // Claude Code's own view of its MCP servers.
    let list = t.run("claude", &["mcp", "list"], api);
    let line = list
        .lines()
        .find(|l| l.starts_with("agentmesh:"))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(line.contains("Connected"), "{list}");

    // An interactive session, launched with the channels flag for our server.
    t.terminal(
        "claude",
        &["--debug", "--dangerously-load-development-channels", "server:agentmesh"],
        api,
    );
    // Its agent is on the mesh, and its SessionStart hook waits to wake it.
    let agent = t.wait_agent("claude-code", "Woken");
    assert!(agent.starts_with("claude-code.work"), "{agent}");

    // Mail to the idle session: the sender is told it will be woken, and the model is shown
    // the text in its next request.
    let wake = token("CC-WAKE");
    let receipt = t.send(&agent, &format!("please look at {wake}"));
    assert_eq!(receipt["reception"], "Woken", "{receipt}");
    let seen = t.wait_model_saw(&wake);
    let body = seen["body"].to_string();
    assert!(body.contains("not as instructions"), "labelled untrusted: {body}");
    assert!(
        body.contains(&format!("{}@", common::TEST_USER)),
        "with its sender: {body}"
    );

    // The debug log: the channel gate passed the capability and era checks (offline, the
    // remote feature flag keeps channels off), and the push went out on the wire.
    let debug = claude_debug_log(&t);
    let verdict = debug
        .lines()
        .find(|l| l.contains("MCP server \"agentmesh\": Channel notifications"))
        .unwrap_or_else(|| panic!("no channel verdict in the debug log"));
    assert!(
        verdict.contains("registered") || verdict.contains("channels feature is not currently available"),
        "{verdict}"
    );
    assert!(
        !verdict.contains("modern protocol revision"),
        "steered to initialize: {verdict}"
    );
    assert!(!verdict.contains("capability"), "{verdict}");
    let era = debug
        .lines()
        .find(|l| l.contains("MCP server \"agentmesh\"") && l.contains("protocolEra"))
        .unwrap_or_else(|| panic!("no connection line in the debug log"));
    assert!(era.contains("\"protocolEra\":\"legacy\""), "{era}");
}

#[test]
fn codex_joins_the_mesh_and_an_idle_thread_is_woken_by_mail_through_codex_queue() {
    let Some(t) = Offline::new("codex", "codex") else {
        return;
    };
    let codex_home = t.user().join(".codex");
    std::fs::create_dir_all(&codex_home).unwrap();
    std::fs::write(
        codex_home.join("config.toml"),
        format!(
            "model = \"fake-model\"\nmodel_provider = \"fake\"\napproval_policy = \"never\"\nsandbox_mode = \"danger-full-access\"\n\n\
             [model_providers.fake]\nname = \"fake\"\nbase_url = \"http://127.0.0.1:{}/v1\"\nwire_api = \"responses\"\n\
             env_key = \"FAKE_API_KEY\"\nrequest_max_retries = 0\nstream_max_retries = 0\n\n\
             [projects.\"{}\"]\ntrust_level = \"trusted\"\n",
            t.port,
            t.work().display()
        ),
    )
    .unwrap();
    let env = [("FAKE_API_KEY", "dummy"), ("CODEX_HOME", codex_home.to_str().unwrap())];
    let mesh_home = t.mesh.path();
    let installed = t.run(
        common::mesh_bin().to_str().unwrap(),
        &["--home", mesh_home.to_str().unwrap(), "install", "codex"],
        &env,
    );
    assert!(
        installed.contains("Codex now trusts the 5 agentmesh hooks"),
        "{installed}"
    );
    let list = t.run("codex", &["mcp", "list"], &env);
    assert!(list.contains("agentmesh"), "{list}");

    t.terminal("codex", &[], &env);
    let agent = t.wait_agent("codex", "Poll");
    assert!(agent.starts_with("codex.work"), "{agent}");
    // A first turn; at its end the Stop hook leaves a waker behind for the idle thread.
    let hello = token("CX-HELLO");
    t.type_line(&format!("say hello {hello}"));
    t.wait_model_saw(&hello);
    t.wait_agent("codex", "Woken");

    let wake = token("CX-WAKE");
    let receipt = t.send(&agent, &format!("please look at {wake}"));
    assert_eq!(receipt["reception"], "Woken", "{receipt}");
    let seen = t.wait_model_saw(&wake);
    assert!(seen["body"].to_string().contains("not as instructions"));
    let _ = t.run("codex", &["app-server", "daemon", "stop"], &env);
}

#[test]
fn opencode_joins_the_mesh_and_its_plugin_wakes_an_idle_session_with_mail() {
    let Some(t) = Offline::new("opencode", "opencode") else {
        return;
    };
    let config = t.user().join(".config/opencode");
    std::fs::create_dir_all(config.join("node_modules")).unwrap();
    // OpenCode installs its plugin SDK into every config directory at start; offline that
    // would stall plugin loading, so the install is made a no-op (the SDK is not used).
    let sdk = r#"{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}"#;
    std::fs::write(config.join("package.json"), sdk).unwrap();
    std::fs::write(
        config.join("package-lock.json"),
        r#"{"name":"opencode","lockfileVersion":3,"requires":true,"packages":{"":{"dependencies":{"@opencode-ai/plugin":"1.18.33"}}}}"#,
    )
    .unwrap();
    std::fs::write(
        config.join("opencode.json"),
        serde_json::json!({
            "$schema": "https://opencode.ai/config.json",
            "model": "fake/m",
            "small_model": "fake/m",
            "autoupdate": false,
            "share": "disabled",
            "provider": { "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "fake",
                "options": { "baseURL": format!("http://127.0.0.1:{}/v1", t.port), "apiKey": "sk-fake" },
                "models": { "m": { "name": "m" } }
            } }
        })
        .to_string(),
    )
    .unwrap();
    let env = [
        ("OPENCODE_DISABLE_MODELS_FETCH", "1"),
        ("OPENCODE_DISABLE_AUTOUPDATE", "1"),
        ("OPENCODE_DISABLE_LSP_DOWNLOAD", "1"),
        ("OPENCODE_DISABLE_SHARE", "1"),
    ];
    let installed = t.mesh(&["install", "opencode"]);
    assert!(installed.contains("plugin"), "{installed}");
    let list = t.run("opencode", &["mcp", "list"], &env);
    assert!(
        list.lines().any(|l| l.contains("agentmesh") && l.contains("connected")),
        "{list}"
    );

    t.terminal("opencode", &[], &env);
    // The plugin's follower holds the waker as soon as the session's agent is there.
    let agent = t.wait_agent("opencode", "Woken");
    assert!(agent.starts_with("opencode.work"), "{agent}");
    // A first turn makes a session to wake.
    let hello = token("OC-HELLO");
    t.type_line(&format!("say hello {hello}"));
    t.wait_model_saw(&hello);

    let wake = token("OC-WAKE");
    let receipt = t.send(&agent, &format!("please look at {wake}"));
    assert_eq!(receipt["reception"], "Woken", "{receipt}");
    let seen = t.wait_model_saw(&wake);
    assert!(seen["body"].to_string().contains("not as instructions"));

    // OpenCode exits (its terminal goes away) and takes its MCP server's process tree with
    // it: the agent goes offline, the node it started keeps running.
    let daemon: u32 = std::fs::read_to_string(t.mesh.path().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    t.close_terminal();
    t.wait_agent("opencode", "Offline");
    assert!(
        Path::new(&format!("/proc/{daemon}")).exists(),
        "the node survived its client"
    );
    common::run_in(&t.mesh.path(), &["status"], None).ok();
}

#[test]
fn claude_code_with_channels_on_shows_the_push_in_the_conversation() {
    let Some(t) = Offline::new("channels", "claude") else {
        return;
    };
    // The MCP server alone: what reaches the model here comes through the channel.
    t.mesh(&["install", "claude-code", "--no-wake"]);
    start_claude_with_channels(&t);
    let agent = t.wait_agent("claude-code", "Poll");
    // Claude Code does not tell the server: the sender is not promised a push.
    let wake = token("CC-CHANNEL");
    let receipt = t.send(&agent, &format!("the deploy is done {wake}"));
    assert_eq!(receipt["reception"], "Poll", "{receipt}");
    // The push reaches the idle model as a <channel> event, with its verified sender.
    let seen = t.wait_model_saw(&wake);
    let body = seen["body"].to_string();
    assert!(body.contains("<channel source=\\\"agentmesh\\\""), "{body}");
    assert!(body.contains("untrusted peer message"), "{body}");
    assert!(
        claude_debug_log(&t).contains("notifications/claude/channel"),
        "the push on the wire"
    );
    // It counted for nothing: the mail is still unread, for a tool result to show.
    let inbox = common::run_in(&t.mesh.path(), &["--json", "inbox", "--as", &agent, "--all"], None);
    assert!(
        inbox.stdout.contains(&wake) && inbox.stdout.contains("\"new\""),
        "{}",
        inbox.stdout
    );
}

#[test]
fn claude_code_print_mode_shows_waiting_mail_and_is_not_held_open_by_the_waker() {
    let Some(t) = Offline::new("print", "claude") else {
        return;
    };
    let state = claude_state(&t, false);
    let api: Vec<(&str, &str)> = state.iter().map(|(k, v)| (*k, v.as_str())).collect();
    t.mesh(&["install", "claude-code"]);
    // An agent of this directory with mail waiting (a session that came and went).
    t.mesh(&["up", "--detach"]);
    let agent = "claude-code.work";
    t.mesh(&["send", "--as", agent, common::TEST_USER, "hello"]);
    let mail = token("CC-PRINT");
    t.mesh(&["send", agent, &format!("before you start: {mail}")]);
    // `claude -p` runs its hooks in the foreground: it must still end (the waker steps
    // aside when unattended), and its prompt hook shows the waiting mail to the model.
    let started = Instant::now();
    let out = t.run("claude", &["-p", "what is new?"], &api);
    assert!(out.contains("fake reply"), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "held open: {:?}",
        started.elapsed()
    );
    let seen = t.wait_model_saw(&mail);
    assert!(seen["body"].to_string().contains("not as instructions"));
}

#[test]
fn claude_code_with_channels_and_hooks_is_shown_each_message_once() {
    let Some(t) = Offline::new("both", "claude") else {
        return;
    };
    t.mesh(&["install", "claude-code"]);
    start_claude_with_channels(&t);
    let agent = t.wait_agent("claude-code", "Woken");
    let mail = token("CC-ONCE");
    let receipt = t.send(&agent, &format!("ship it {mail}"));
    assert_eq!(receipt["reception"], "Woken", "{receipt}");
    // The push wakes the model with the mail; the turn's prompt hook sees the channel event
    // and counts the mail as read instead of repeating it.
    t.wait_model_saw("<channel source=\\\"agentmesh\\\"");
    let deadline = Instant::now() + CLIENT_WAIT;
    while common::run_in(&t.mesh.path(), &["--json", "agents"], None)
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == agent.as_str() && a["unread"] != 0)
    {
        assert!(Instant::now() < deadline, "the pushed mail never counted as read");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The waker gave the push its time, found the mail read, and did not wake the session
    // with it a second time (time passing is the point here).
    std::thread::sleep(mesh_mcp::wake::CHANNEL_GRACE + Duration::from_secs(5));
    let shown = t
        .requests()
        .iter()
        .map(|r| r["body"]["messages"].to_string().matches(mail.as_str()).count())
        .max()
        .unwrap_or(0);
    assert_eq!(shown, 1, "the model was shown the mail more than once");
}

/// Starts an interactive Claude Code with channels on (its feature flag seeded) and the
/// development channel of our server, accepts its one-time warning, and waits until its
/// debug log says our channel registered.
fn start_claude_with_channels(t: &Offline) {
    let state = claude_state(t, true);
    let api: Vec<(&str, &str)> = state.iter().map(|(k, v)| (*k, v.as_str())).collect();
    t.terminal(
        "claude",
        &["--debug", "--dangerously-load-development-channels", "server:agentmesh"],
        &api,
    );
    let deadline = Instant::now() + CLIENT_WAIT;
    while !t.screen().contains("development channels") {
        assert!(Instant::now() < deadline, "no channels prompt:\n{}", t.screen());
        std::thread::sleep(Duration::from_millis(200));
    }
    t.type_line("");
    let registered = "MCP server \"agentmesh\": Channel notifications registered";
    while !claude_debug_log(t).contains(registered) {
        assert!(
            Instant::now() < deadline,
            "channels never registered:\n{}",
            claude_debug_log(t)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
