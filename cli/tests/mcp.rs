//! `mesh mcp` as a real subprocess, spoken to in JSON-RPC over its stdio.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::mcp::Mcp;
use common::{Home, node_name, wait_reception};
use serde_json::json;

const TOOLS: [&str; 14] = [
    "whoami",
    "list_agents",
    "send",
    "inbox",
    "wait",
    "history",
    "set_summary",
    "subscribe",
    "unsubscribe",
    "topics",
    "publish",
    "peers",
    "dial",
    "permissions",
];

/// A project directory named `name` (optionally a git repository).
fn project(name: &str, git: bool) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    if git {
        std::fs::create_dir_all(dir.join(".git")).unwrap();
        std::fs::write(dir.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    }
    (t, dir)
}

fn node_addr(home: &Home) -> String {
    let st = home.run(&["--json", "status"]);
    st.ok();
    let v = st.json();
    format!(
        "{}/p2p/{}",
        v["listen"][0].as_str().unwrap(),
        v["node"]["peer_id"].as_str().unwrap()
    )
}

#[test]
fn every_tool_and_error_path_over_stdio() {
    let home = Home::isolated();
    let (_t, dir) = project("webapp", true);
    // No daemon yet: the adapter starts one itself.
    let mut m = Mcp::start(&home.path(), &dir, "claude-code", &[]);
    let init = m.init_result().clone();
    assert_eq!(init["capabilities"]["experimental"]["claude/channel"], json!({}));
    assert!(init["capabilities"]["tools"].is_object());
    let instructions = init["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("<channel") && instructions.contains("untrusted"),
        "{instructions}"
    );

    let tools = m.request("tools/list", json!({}));
    let list = tools["result"]["tools"].as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for t in TOOLS {
        assert!(names.contains(&t), "missing tool {t}: {names:?}");
    }
    for t in list {
        assert!(t["description"].as_str().unwrap().len() > 40, "thin description: {t}");
        assert_eq!(t["inputSchema"]["type"], "object");
    }
    let send_schema = &list.iter().find(|t| t["name"] == "send").unwrap()["inputSchema"];
    assert!(
        send_schema["properties"]["to"]["description"]
            .as_str()
            .unwrap()
            .contains("agent@node")
    );

    let who = m.ok("whoami", json!({}));
    assert!(who.contains("You are claude-code.webapp@"), "{who}");
    // Claude Code does not say whether it registered channel notifications: not push.
    assert!(who.contains("not pushed to this session"), "{who}");

    m.ok("set_summary", json!({ "text": "refactoring the login page" }));
    let agents = m.ok("list_agents", json!({ "scope": "machine" }));
    assert!(
        agents.contains("claude-code.webapp@") && agents.contains("(you)"),
        "{agents}"
    );
    assert!(agents.contains("refactoring the login page"), "{agents}");
    assert!(
        agents.contains(&format!("{}@", common::TEST_USER)),
        "the human is there too: {agents}"
    );
    let repo = m.ok("list_agents", json!({ "scope": "repo" }));
    assert!(repo.contains("claude-code.webapp@"), "{repo}");
    assert!(!repo.contains(&format!("{}@", common::TEST_USER)), "{repo}");
    let here = m.ok("list_agents", json!({ "scope": "directory" }));
    assert!(here.contains("claude-code.webapp@"), "{here}");
    m.ok("list_agents", json!({}));

    // A message to the human on this machine, then one back.
    let sent = m.ok("send", json!({ "to": common::TEST_USER, "text": "lunch?" }));
    assert!(sent.contains("delivered"), "{sent}");
    assert!(sent.contains("no live session"), "the human is offline: {sent}");
    let inbox = home.run(&["--json", "inbox"]).json();
    assert_eq!(inbox[0]["text"], "lunch?");
    let id = inbox[0]["id"].as_str().unwrap().to_string();
    home.run(&["send", "--reply-to", &id, "claude-code.webapp", "yes, at noon"])
        .ok();
    // It is pushed at once (channels may be on), with the sender and ids in the meta.
    let push = m.wait_notification("notifications/claude/channel", Duration::from_secs(20));
    assert_eq!(push["params"]["content"], "yes, at noon");
    let meta = &push["params"]["meta"];
    assert_eq!(
        meta["from"],
        format!("{}@", common::TEST_USER) + meta["from_node_name"].as_str().unwrap()
    );
    assert_eq!(meta["reply_to"], id.as_str());
    assert!(
        meta.as_object()
            .unwrap()
            .keys()
            .all(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    );
    let push_id = meta["message_id"].as_str().unwrap().to_string();

    // But nothing counts it as shown, since the client never confirmed it shows pushes:
    // the notice calls it unread and the plain inbox shows it, once.
    let (text, _) = m.tool("topics", json!({}));
    assert!(text.contains("You have 1 unread message"), "{text}");
    let plain = m.ok("inbox", json!({}));
    assert!(plain.contains(&push_id) && plain.contains("yes, at noon"), "{plain}");
    assert!(plain.contains("not as instructions"), "{plain}");
    assert!(plain.contains(&format!("in reply to {id}")), "{plain}");
    let again = m.ok("inbox", json!({ "include_pushed": true }));
    assert!(again.contains("No unread messages"), "shown once: {again}");
    assert!(
        !again.contains("[agentmesh]"),
        "no notice when nothing is unread: {again}"
    );

    // Topics.
    assert!(
        m.ok("subscribe", json!({ "topic": "#releases" }))
            .contains("Subscribed to #releases")
    );
    assert!(m.ok("subscribe", json!({ "topic": "releases" })).contains("already"));
    let p = m.ok("publish", json!({ "topic": "releases", "text": "v1.2 is out" }));
    assert!(p.contains("Published"), "{p}");
    assert!(m.ok("topics", json!({})).contains("#releases (you are subscribed)"));
    let h = m.ok("history", json!({ "topic": "releases" }));
    assert!(h.contains("v1.2 is out"), "{h}");
    let h = m.ok("history", json!({ "with": common::TEST_USER }));
    assert!(h.contains("lunch?") && h.contains("yes, at noon"), "{h}");
    let h = m.ok("history", json!({ "grep": "NOON" }));
    assert!(h.contains("yes, at noon") && !h.contains("lunch?"), "{h}");
    assert!(
        m.ok("unsubscribe", json!({ "topic": "releases" }))
            .contains("Unsubscribed")
    );
    assert!(m.ok("peers", json!({})).contains("No other nodes"));
    let w = m.ok("wait", json!({ "timeout_s": 1 }));
    assert!(w.contains("No new message within 1 s"), "{w}");

    // Errors come back as tool errors with a sentence, and nothing breaks.
    let (e, is_err) = m.tool("send", json!({ "to": "nobody", "text": "hi" }));
    assert!(is_err && e.contains("no agent named \"nobody\""), "{e}");
    let (e, is_err) = m.tool("send", json!({ "to": common::TEST_USER, "text": "   " }));
    assert!(is_err && e.contains("empty"), "{e}");
    let (e, is_err) = m.tool(
        "send",
        json!({ "to": common::TEST_USER, "text": "x", "reply_to": "zzz" }),
    );
    assert!(is_err && e.contains("invalid message id"), "{e}");
    let (e, is_err) = m.tool("send", json!({ "text": "no recipient" }));
    assert!(is_err && e.contains("to"), "{e}");
    let (e, is_err) = m.tool("wait", json!({ "timeout_s": "soon" }));
    assert!(is_err, "{e}");
    let (e, is_err) = m.tool("dial", json!({ "multiaddr": "garbage" }));
    assert!(is_err && e.contains("malformed multiaddr"), "{e}");
    let (e, is_err) = m.tool("history", json!({ "with": "x", "topic": "y" }));
    assert!(is_err && e.contains("either"), "{e}");
    let (e, is_err) = m.tool("list_agents", json!({ "scope": "galaxy" }));
    assert!(is_err, "{e}");
    let r = m.request("tools/call", json!({ "name": "no_such_tool", "arguments": {} }));
    assert!(r.get("error").is_some() || r["result"]["isError"] == true, "{r}");
    assert!(m.ok("whoami", json!({})).contains("You are"));

    // The client goes away: the session ends and the agent is offline.
    let status = m.close();
    assert!(status.success(), "{status:?}");
    let agents = home.run(&["--json", "agents"]).json();
    let me = agents
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "claude-code.webapp")
        .unwrap();
    assert_eq!(me["reception"], "Offline");
}

/// Two nodes on loopback, connected; returns their homes (daemons started by adapters).
fn two_nodes() -> (Home, Home) {
    let (a, b) = (Home::isolated(), Home::isolated());
    // Named apart: two nodes named alike (both after this host) are told apart by labels.
    for (h, name) in [(&a, "alpha"), (&b, "beta")] {
        h.run(&["up", "--detach", "--name", name]).ok();
    }
    b.run(&["dial", &node_addr(&a)]).ok();
    (a, b)
}

#[test]
fn two_sessions_on_two_nodes_push_wait_and_read_once() {
    let (ha, hb) = two_nodes();
    let (_ta, da) = project("frontend", false);
    let (_tb, db) = project("backend", false);
    // This Claude declares that it registered for channel pushes: they count as shown.
    let channel = json!({ "experimental": { "claude/channel": {} } });
    let mut claude = Mcp::start_with(&ha.path(), &da, "claude-code", channel, &[]);
    let mut codex = Mcp::start(&hb.path(), &db, "codex-mcp-client", &[]);
    let claude_addr = claude
        .ok("whoami", json!({}))
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('.')
        .to_string();
    let codex_who = codex.ok("whoami", json!({}));
    assert!(codex_who.contains("not pushed to this session"), "{codex_who}");
    let codex_addr = codex_who
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches('.')
        .to_string();
    assert!(codex_addr.starts_with("codex.backend@"), "{codex_addr}");
    // Each sees the other online, and how it receives.
    wait_reception(&ha, &codex_addr, "Poll");
    wait_reception(&hb, &claude_addr, "Push");
    let list = claude.ok("list_agents", json!({}));
    assert!(
        list.contains(&codex_addr) && list.contains("at its next tool call"),
        "{list}"
    );

    // Codex waits; Claude writes during the wait; the wait returns; inbox shows it once.
    let wait_id = codex.send_request(
        "tools/call",
        json!({ "name": "wait", "arguments": { "timeout_s": 60 } }),
    );
    // Other tools of the same session keep working during the wait.
    assert!(codex.ok("peers", json!({})).contains("connected"));
    let sent = claude.ok(
        "send",
        json!({ "to": codex_addr, "text": "can you bump the API version?" }),
    );
    assert!(
        sent.contains("delivered") && sent.contains("not woken by new mail") && sent.contains("next tool call"),
        "{sent}"
    );
    let waited = codex.response(wait_id);
    let waited_text = waited["result"]["content"][0]["text"].as_str().unwrap().to_string();
    assert!(
        waited_text.contains("New mail") && waited_text.contains(&claude_addr),
        "{waited_text}"
    );
    let inbox = codex.ok("inbox", json!({}));
    assert!(
        inbox.contains("can you bump the API version?") && inbox.contains(&claude_addr),
        "{inbox}"
    );
    assert!(inbox.matches("can you bump").count() == 1);
    assert!(codex.ok("inbox", json!({})).contains("No unread messages"), "read once");
    // Codex gets no pushes.
    assert!(
        codex
            .notifications
            .iter()
            .all(|n| n["method"] != "notifications/claude/channel")
    );

    // The answer is pushed to Claude at once.
    let msg_id = inbox
        .split("--- message ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    codex.ok(
        "send",
        json!({ "to": claude_addr, "text": "done, v2", "reply_to": msg_id }),
    );
    let push = claude.wait_notification("notifications/claude/channel", Duration::from_secs(20));
    assert_eq!(push["params"]["content"], "done, v2");
    assert_eq!(push["params"]["meta"]["from"], codex_addr.as_str());
    assert_eq!(push["params"]["meta"]["reply_to"], msg_id.as_str());
    assert_eq!(
        push["params"]["meta"]["from_node"],
        hb.run(&["--json", "status"]).json()["node"]["peer_id"]
    );

    // Answering a pushed message marks it read: no reminder left for it.
    let pushed_id = push["params"]["meta"]["message_id"].as_str().unwrap().to_string();
    let (before, _) = claude.tool("topics", json!({}));
    assert!(before.contains("pushed to you"), "{before}");
    claude.ok(
        "send",
        json!({ "to": codex_addr, "text": "thanks", "reply_to": pushed_id }),
    );
    let (after, _) = claude.tool("topics", json!({}));
    assert!(!after.contains("[agentmesh]"), "{after}");
    codex.ok("inbox", json!({}));

    // A topic across nodes.
    codex.ok("subscribe", json!({ "topic": "deploys" }));
    claude.ok("subscribe", json!({ "topic": "deploys" }));
    let mut got = false;
    for _ in 0..50 {
        claude.ok("publish", json!({ "topic": "deploys", "text": "frontend deployed" }));
        let w = codex.ok("wait", json!({ "timeout_s": 2 }));
        if w.contains("#deploys") {
            got = true;
            break;
        }
    }
    assert!(got, "the topic message never reached the other node");
    let inbox = codex.ok("inbox", json!({ "limit": 100 }));
    assert!(
        inbox.contains("on topic #deploys") && inbox.contains("frontend deployed"),
        "{inbox}"
    );

    // Claude's session ends: the other node shows it offline within seconds.
    claude.close();
    wait_reception(&hb, &claude_addr, "Offline");
}

#[test]
fn restarts_of_adapter_and_daemon_lose_and_duplicate_nothing() {
    let (ha, hb) = two_nodes();
    let (_ta, da) = project("sender", false);
    let (_tb, db) = project("reader", false);
    let mut a = Mcp::start(&ha.path(), &da, "codex", &[]);
    let mut b = Mcp::start(&hb.path(), &db, "codex", &[]);
    assert!(b.ok("whoami", json!({})).contains("codex.reader@"));
    drop(b); // the reader's session ends (killed) before anything arrives
    wait_reception(&ha, &format!("codex.reader@{}", node_name(&hb)), "Offline");
    let first = a.ok(
        "send",
        json!({ "to": format!("codex.reader@{}", node_name(&hb)), "text": "message one" }),
    );
    assert!(first.contains("no live session"), "{first}");

    // The reader's adapter restarts in the same directory: same name, same mailbox.
    let mut b = Mcp::start(&hb.path(), &db, "codex", &[]);
    assert!(b.ok("whoami", json!({})).contains("codex.reader@"), "same name back");
    let inbox = b.ok("inbox", json!({}));
    assert!(inbox.contains("message one"), "{inbox}");
    b.close();

    // Now the reader's daemon dies (kill -9) with a message committed but unread.
    a.ok(
        "send",
        json!({ "to": format!("codex.reader@{}", node_name(&hb)), "text": "message two" }),
    );
    let pid: i32 = std::fs::read_to_string(hb.path().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Only kill it once message two is in the reader's store.
    let hist = hb.run(&["--json", "history", "--grep", "message two"]);
    assert_eq!(hist.json().as_array().unwrap().len(), 1, "{}", hist.stdout);
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    // The next session starts a daemon again by itself and finds the message, once.
    let mut b = Mcp::start(&hb.path(), &db, "codex", &[]);
    let inbox = b.ok("inbox", json!({}));
    assert!(
        inbox.contains("message two") && !inbox.contains("message one"),
        "{inbox}"
    );
    assert_eq!(inbox.matches("message two").count(), 1);
    assert!(b.ok("inbox", json!({})).contains("No unread messages"));

    // And while the session lives, the daemon restarts under it: it reattaches by itself.
    let pid: i32 = std::fs::read_to_string(hb.path().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let who = b.ok("whoami", json!({}));
    assert!(who.contains("codex.reader@"), "{who}");
    hb.run(&["dial", &node_addr(&ha)]).ok();
    a.ok(
        "send",
        json!({ "to": format!("codex.reader@{}", node_name(&hb)), "text": "message three" }),
    );
    let w = b.ok("wait", json!({ "timeout_s": 30 }));
    assert!(w.contains("unread message"), "{w}");
    let inbox = b.ok("inbox", json!({}));
    assert!(
        inbox.contains("message three") && inbox.matches("message").count() >= 1,
        "{inbox}"
    );
    assert!(!inbox.contains("message one") && !inbox.contains("message two"));
}

#[test]
fn sessions_starting_together_share_one_daemon() {
    let home = Home::isolated();
    let (_t, dir) = project("shared", false);
    let p = home.path();
    let (d1, d2) = (dir.clone(), dir.clone());
    let t1 = std::thread::spawn(move || Mcp::start(&p, &d1, "claude-code", &[]));
    let p = home.path();
    let t2 = std::thread::spawn(move || Mcp::start(&p, &d2, "claude-code", &[]));
    let mut m1 = t1.join().unwrap();
    let mut m2 = t2.join().unwrap();
    let w1 = m1.ok("whoami", json!({}));
    let w2 = m2.ok("whoami", json!({}));
    let peer = |w: &str| {
        w.split("PeerId ")
            .nth(1)
            .unwrap()
            .split(')')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(peer(&w1), peer(&w2), "one daemon");
    // Same directory, both live: the second gets a suffix.
    let mut names = [
        w1.split_whitespace().nth(2).unwrap().to_string(),
        w2.split_whitespace().nth(2).unwrap().to_string(),
    ];
    names.sort();
    assert!(
        names[0].starts_with("claude-code.shared-2@") || names[1].starts_with("claude-code.shared-2@"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n.starts_with("claude-code.shared@")), "{names:?}");
    // Exactly one daemon process holds the home.
    let pid = std::fs::read_to_string(home.path().join("daemon.lock")).unwrap();
    let up = std::process::Command::new("pgrep")
        .args(["-f", &format!("{} up", home.path().display())])
        .output();
    if let Ok(out) = up {
        let pids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().split_whitespace().collect();
        assert_eq!(pids, vec![pid.trim()], "one daemon process");
    }
}

#[test]
fn a_dead_client_takes_its_agent_offline() {
    let home = Home::isolated();
    home.run(&["up", "--detach"]).ok();
    let (_t, dir) = project("orphan", false);
    // The client is a shell that dies hard while the adapter's stdin stays open.
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "{} --home {} mcp --name orphan-agent; true",
        common::mesh_bin().display(),
        home.path().display()
    ));
    let mut m = Mcp::spawn(cmd, &dir, "claude-code");
    assert!(m.ok("whoami", json!({})).contains("orphan-agent@"));
    wait_reception(&home, &format!("orphan-agent@{}", node_name(&home)), "Poll");
    m.child.kill().unwrap(); // SIGKILL the shell: the adapter is orphaned
    wait_reception(&home, &format!("orphan-agent@{}", node_name(&home)), "Offline");
}

/// The `_meta` every request of the stateless revision carries.
fn stateless_meta(client: &str) -> serde_json::Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": { "name": client, "version": "9.9.9" },
        "io.modelcontextprotocol/clientCapabilities": { "roots": { "listChanged": true } }
    })
}

#[test]
fn both_mcp_eras_attach_on_the_first_request_and_claude_code_is_steered_to_initialize() {
    let home = Home::isolated();
    home.run(&["up", "--detach"]).ok();
    let (_t, dir) = project("eras", false);
    let mesh = || {
        let mut cmd = std::process::Command::new(common::mesh_bin());
        cmd.arg("--home").arg(home.path()).arg("mcp");
        cmd
    };

    // Claude Code probes server/discover first: it is offered only revisions that have the
    // initialize handshake, the only era in which it registers channel pushes.
    let mut claude = Mcp::spawn_raw(mesh(), &dir, "claude-code");
    let d = claude.request("server/discover", json!({ "_meta": stateless_meta("claude-code") }));
    let versions: Vec<&str> = d["result"]["supportedVersions"]
        .as_array()
        .unwrap_or_else(|| panic!("{d}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        !versions.is_empty() && !versions.contains(&"2026-07-28"),
        "{versions:?}"
    );
    assert_eq!(d["result"]["capabilities"]["experimental"]["claude/channel"], json!({}));
    // A discover probe attaches nothing.
    let agents = home.run(&["--json", "agents"]).json();
    assert!(
        !agents.to_string().contains("claude-code.eras"),
        "no agent before a real request: {agents}"
    );
    // It falls back to initialize on the same connection, as Claude Code does.
    let init = claude.request(
        "initialize",
        json!({ "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": { "name": "claude-code", "version": "2.1.332" } }),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25", "{init}");
    claude.notify("notifications/initialized", json!({}));
    assert!(claude.ok("whoami", json!({})).contains("claude-code.eras@"));

    // Another client takes the stateless revision: no initialize at all.
    let mut other = Mcp::spawn_raw(mesh(), &dir, "stateless");
    let d = other.request("server/discover", json!({ "_meta": stateless_meta("some-editor") }));
    assert!(
        d["result"]["supportedVersions"].to_string().contains("2026-07-28"),
        "{d}"
    );
    let list = other.request("tools/list", json!({ "_meta": stateless_meta("some-editor") }));
    let tools = list["result"]["tools"].as_array().unwrap_or_else(|| panic!("{list}"));
    assert_eq!(tools.len(), TOOLS.len(), "{list}");
    // The session attached on that first request: the agent is on the mesh, named after
    // the client in the request's _meta.
    wait_reception(&home, &format!("other.eras@{}", node_name(&home)), "Poll");
    let who = other.request(
        "tools/call",
        json!({ "name": "whoami", "arguments": {}, "_meta": stateless_meta("some-editor") }),
    );
    let text = who["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{who}"));
    assert!(text.contains("You are other.eras@"), "{text}");
    // Mail works, and there is no push on a stateless connection.
    home.run(&["send", "other.eras", "hello stateless"]).ok();
    let inbox = other.request(
        "tools/call",
        json!({ "name": "inbox", "arguments": {}, "_meta": stateless_meta("some-editor") }),
    );
    assert!(inbox.to_string().contains("hello stateless"), "{inbox}");
    assert!(other.notifications.is_empty(), "{:?}", other.notifications);
    // A request without the required _meta, and an unknown method, get JSON-RPC errors in
    // both eras.
    let bad = other.request("tools/list", json!({}));
    assert!(bad.get("error").is_some(), "{bad}");
    let unknown = other.request("no/such/method", json!({ "_meta": stateless_meta("some-editor") }));
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let unknown = claude.request("no/such/method", json!({}));
    assert_eq!(unknown["error"]["code"], -32601, "{unknown}");
    let unadvertised = claude.request("resources/list", json!({}));
    assert!(unadvertised.get("error").is_some(), "{unadvertised}");
}

#[test]
fn an_inbox_of_large_messages_is_shown_a_page_at_a_time_and_nothing_is_lost() {
    let home = Home::isolated();
    let (_t, dir) = project("bigmail", false);
    // Codex gets no pushes: every message stays new until a tool result shows it.
    let mut m = Mcp::start(&home.path(), &dir, "codex-mcp-client", &[]);
    let who = m.ok("whoami", json!({}));
    let address = who.split_whitespace().nth(2).unwrap().trim_end_matches('.').to_string();
    let agent = address.split('@').next().unwrap().to_string();
    // Twenty 60 KB messages: more than one API frame, and more than a client shows the
    // model in one tool result.
    let texts: Vec<String> = (0..20).map(|i| format!("{i:02} {}", "z".repeat(60_000))).collect();
    let ids: Vec<String> = common::runtime().block_on(async {
        let c = common::client(&home.path()).await;
        let mut ids = Vec::new();
        for t in &texts {
            match c
                .call(mesh_node::api::Request::Send(mesh_node::api::SendRequest {
                    from: common::TEST_USER.into(),
                    to: agent.clone(),
                    text: t.clone(),
                    reply_to: None,
                    id: None,
                }))
                .await
                .unwrap()
            {
                mesh_node::api::Response::Sent(r) => ids.push(r.id.to_string()),
                other => panic!("{other:?}"),
            }
        }
        ids
    });

    let mut seen: Vec<String> = Vec::new();
    for call in 0.. {
        assert!(call <= ids.len(), "the inbox never emptied");
        let (text, is_err) = m.tool("inbox", json!({}));
        let head: String = text.chars().take(300).collect();
        assert!(!is_err, "inbox failed: {head}");
        let page: Vec<String> = text
            .split("--- message ")
            .skip(1)
            .map(|s| s.split_whitespace().next().unwrap().to_string())
            .collect();
        if page.is_empty() {
            assert!(text.contains("No unread messages"), "{head}");
            break;
        }
        for id in &page {
            let i = ids.iter().position(|x| x == id).unwrap();
            assert!(text.contains(&texts[i]), "message {i} shown whole");
        }
        seen.extend(page);
        let left = ids.len() - seen.len();
        if left > 0 {
            assert!(
                text.contains(&format!("{left} more waiting")) && text.contains("call inbox again"),
                "says what is left: {head}"
            );
        } else {
            assert!(!text.contains("more waiting"), "{head}");
        }
    }
    assert_eq!(seen, ids, "every message shown once, in order");

    // History goes back a result at a time, each saying where the older ones start.
    let mut back: Vec<String> = Vec::new();
    let mut args = json!({ "with": common::TEST_USER });
    for call in 0.. {
        assert!(call <= ids.len(), "history never reached the oldest");
        let text = m.ok("history", args.clone());
        let page: Vec<String> = text
            .split("\n--- ")
            .skip(1)
            .map(|s| s.split_whitespace().next().unwrap().to_string())
            .collect();
        assert!(!page.is_empty(), "{}", text.chars().take(300).collect::<String>());
        back.splice(0..0, page);
        match text.split("before=\"").nth(1) {
            Some(rest) => args["before"] = json!(rest.split('"').next().unwrap()),
            None => break,
        }
    }
    assert_eq!(back, ids, "every message once, oldest first");
    let (e, is_err) = m.tool("history", json!({ "before": "last week" }));
    assert!(is_err && e.contains("bad history cursor"), "{e}");
}

#[test]
fn a_permission_prompt_of_the_session_is_listed_answered_once_and_relayed_back() {
    let home = Home::isolated();
    let (_t, dir) = project("webapp", true);
    let mut m = Mcp::start(&home.path(), &dir, "claude-code", &[]);
    assert_eq!(
        m.init_result()["capabilities"]["experimental"]["claude/channel/permission"],
        json!({}),
        "the server offers to relay permission prompts"
    );
    m.ok("whoami", json!({}));
    // Claude Code asks, as it does for a tool that needs approval.
    m.notify(
        "notifications/claude/channel/permission_request",
        json!({
            "request_id": "tbxkq",
            "tool_name": "Bash",
            "description": "Run the test suite",
            "input_preview": "{\"command\":\"cargo test\"}",
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let list = home.run(&["--json", "permissions"]).ok().json();
        if let Some(p) = list.as_array().unwrap().first() {
            break p.clone();
        }
        assert!(std::time::Instant::now() < deadline, "the request was never listed");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listed["id"], "tbxkq");
    assert_eq!(listed["agent"], "claude-code.webapp");
    assert_eq!(listed["tool"], "Bash");
    assert_eq!(listed["description"], "Run the test suite");
    let table = home.run(&["permissions"]).ok().stdout.clone();
    assert!(
        table.contains("tbxkq") && table.contains("Run the test suite"),
        "{table}"
    );

    // Unknown ids are refused with a clear error.
    let unknown = home.run(&["approve", "zzzzz"]);
    assert_ne!(unknown.code, 0);
    assert!(unknown.stderr.contains("no permission request"), "{}", unknown.stderr);

    let ok = home.run(&["approve", "tbxkq"]).ok().stdout.clone();
    assert!(ok.contains("allowed tbxkq"), "{ok}");
    let answer = m.wait_notification("notifications/claude/channel/permission", Duration::from_secs(20));
    assert_eq!(answer["params"], json!({ "request_id": "tbxkq", "behavior": "allow" }));

    // The first answer won: a second is refused and changes nothing.
    let late = home.run(&["deny", "tbxkq"]);
    assert_ne!(late.code, 0);
    assert!(late.stderr.contains("already allowed"), "{}", late.stderr);
    assert!(
        home.run(&["permissions"])
            .ok()
            .stdout
            .contains("no permission requests waiting")
    );
}

#[test]
fn an_agent_named_in_answer_agents_answers_another_sessions_permission_prompt() {
    let home = Home::isolated();
    let config = home.path().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[permissions]\nanswer_agents = [\"claude-code.review\"]\n");
    std::fs::write(&config, text).unwrap();
    let (_t, dir) = project("webapp", true);
    let (_t2, review_dir) = project("review", true);
    let mut asking = Mcp::start(&home.path(), &dir, "claude-code", &[]);
    asking.ok("whoami", json!({}));
    let mut reviewer = Mcp::start(&home.path(), &review_dir, "claude-code", &[]);
    assert!(reviewer.ok("whoami", json!({})).contains("claude-code.review@"));
    asking.notify(
        "notifications/claude/channel/permission_request",
        json!({
            "request_id": "qwert",
            "tool_name": "Bash",
            "description": "Delete the build directory",
            "input_preview": "{\"command\":\"rm -rf target\"}",
        }),
    );
    // The answering agent's session is told (a channel push: Claude Code shows it when
    // channels are on for agentmesh).
    let told = reviewer.wait_notification("notifications/claude/channel", Duration::from_secs(20));
    let content = told["params"]["content"].as_str().unwrap();
    assert!(
        content.contains("claude-code.webapp:qwert")
            && content.contains("permissions tool")
            && content.contains("rm -rf target"),
        "{content}"
    );
    assert_eq!(told["params"]["meta"]["kind"], "permission_request");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let list = loop {
        let list = reviewer.ok("permissions", json!({}));
        if list.contains("qwert") {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "never listed: {list}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        list.contains("claude-code.webapp") && list.contains("rm -rf target") && list.contains("untrusted"),
        "{list}"
    );
    // The asking session's own agent is not named: refused, nothing answered.
    let (e, is_err) = asking.tool("permissions", json!({ "id": "qwert", "allow": true }));
    assert!(is_err && e.contains("answer_agents"), "{e}");
    let (e, is_err) = reviewer.tool("permissions", json!({ "id": "qwert" }));
    assert!(is_err && e.contains("allow"), "{e}");

    let done = reviewer.ok("permissions", json!({ "id": "qwert", "allow": false }));
    assert!(done.contains("Denied qwert"), "{done}");
    let answer = asking.wait_notification("notifications/claude/channel/permission", Duration::from_secs(20));
    assert_eq!(answer["params"], json!({ "request_id": "qwert", "behavior": "deny" }));
    let late = home.run(&["approve", "qwert"]);
    assert!(
        late.stderr.contains("already denied by claude-code.review (agent)"),
        "{}",
        late.stderr
    );

    // Its own session's prompts are not its to answer.
    reviewer.notify(
        "notifications/claude/channel/permission_request",
        json!({
            "request_id": "selfy",
            "tool_name": "Bash",
            "description": "Push to main",
            "input_preview": "{}",
        }),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !reviewer.ok("permissions", json!({})).contains("selfy") {
        assert!(std::time::Instant::now() < deadline, "never listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (e, is_err) = reviewer.tool("permissions", json!({ "id": "selfy", "allow": true }));
    assert!(is_err && e.contains("its own session"), "{e}");
}
