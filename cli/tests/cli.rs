//! The `mesh` binary end to end, against real daemons in temp homes.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Home, runtime};
use mesh_node::api::{Event, HistoryQuery, Request, Response, SendRequest};

#[test]
fn detach_status_down_and_second_daemon_refused() {
    let h = Home::new();
    let up = h.run(&[
        "--json",
        "up",
        "--detach",
        "--no-mdns",
        "--name",
        "solo",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    up.ok();
    let info = up.json();
    assert_eq!(info["name"], "solo");
    let peer = info["peer_id"].as_str().unwrap().to_string();

    let st = h.run(&["--json", "status"]);
    st.ok();
    let st = st.json();
    assert_eq!(st["node"]["peer_id"], peer.as_str());
    assert_eq!(st["node"]["name"], "solo");
    assert_eq!(st["mdns"], false);
    // The login user is an agent of the node from the start.
    assert_eq!(st["agents"].as_array().unwrap().len(), 1);

    // Identity and key file are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.path().join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(h.path().join("mesh.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second daemon on the same home says who holds it.
    let again = h.run(&["up", "--detach", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already running"), "{}", again.stderr);
    let fg = h.run(&["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(fg.code, 1);
    assert!(
        fg.stderr.contains("already running") && fg.stderr.contains("mesh down"),
        "{}",
        fg.stderr
    );

    h.run(&["down"]).ok();
    assert!(!h.path().join("mesh.sock").exists(), "socket removed on clean stop");
    let st = h.run(&["status"]);
    assert_eq!(st.code, 3);
    assert!(st.stderr.contains("no agentmesh daemon is running"), "{}", st.stderr);
    assert!(st.stderr.contains("up --detach"), "says how to start it: {}", st.stderr);

    // Same identity after a restart.
    let up = h.run(&[
        "--json",
        "up",
        "--detach",
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ]);
    up.ok();
    assert_eq!(up.json()["peer_id"], peer.as_str());
    h.run(&["down"]).ok();
    // Stopping what is not running is not an error.
    assert_eq!(h.run(&["down"]).code, 0);
}

#[test]
fn commands_without_a_daemon_explain_themselves() {
    let h = Home::new();
    for args in [
        vec!["send", "bob", "hi"],
        vec!["inbox"],
        vec!["peers"],
        vec!["agents"],
        vec!["publish", "t", "x"],
        vec!["history"],
        vec!["outbox"],
        vec!["topics"],
    ] {
        let out = h.run(&args);
        assert_eq!(out.code, 3, "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains("mesh --home"), "{args:?}: {}", out.stderr);
    }
    // A malformed address is reported as such, daemon or not.
    let out = h.run(&["dial", "not-a-multiaddr"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("malformed multiaddr"), "{}", out.stderr);
    // Completions need nothing.
    let out = h.run(&["completions", "bash"]);
    out.ok();
    assert!(out.stdout.contains("mesh"));
    // Bad flags are usage errors.
    assert_eq!(h.run(&["send"]).code, 2);
    let out = h.run(&["up", "--listen", "garbage"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("--listen"), "{}", out.stderr);
}

#[test]
fn two_daemons_talk_through_the_cli() {
    let (ha, hb) = (Home::new(), Home::new());
    let a = ha.start("alpha", 0);
    let b = hb.start("beta", 0);
    ha.run(&["dial", &b.addr()]).ok();

    let user = common::TEST_USER.to_string();
    let sent = ha.run(&["--json", "send", "--as", "alice", "tester@beta", "hello beta"]);
    sent.ok();
    let receipt = sent.json();
    assert_eq!(receipt["status"], "Delivered");
    assert_eq!(receipt["to"], "tester@beta");
    let id = receipt["id"].as_str().unwrap().to_string();

    let inbox = hb.run(&["--json", "inbox", "--as", &user]);
    inbox.ok();
    let msgs = inbox.json();
    assert_eq!(msgs.as_array().unwrap().len(), 1);
    assert_eq!(msgs[0]["id"], id.as_str());
    assert_eq!(msgs[0]["from"], "alice@alpha");
    assert_eq!(msgs[0]["from_node"], a.info.peer_id.to_string());
    assert_eq!(msgs[0]["text"], "hello beta");
    // Read now: the next look shows nothing new, --all still shows it.
    assert_eq!(
        hb.run(&["--json", "inbox", "--as", &user])
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        hb.run(&["--json", "inbox", "--all", "--as", &user])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Reply by id, from standard input.
    let r = hb.run_stdin(
        &["send", "--as", &user, "--reply-to", &id, "alice@alpha", "-"],
        b"multi\nline reply\n",
    );
    r.ok();
    assert!(r.stdout.contains("delivered to alice@alpha"), "{}", r.stdout);
    let back = ha.run(&["--json", "inbox", "--as", "alice"]).json();
    assert_eq!(back[0]["reply_to"], id.as_str());
    assert_eq!(back[0]["text"], "multi\nline reply");

    // History on both sides, with a filter.
    let hist = ha.run(&["--json", "history", "--grep", "REPLY"]).json();
    assert_eq!(hist.as_array().unwrap().len(), 1);
    assert_eq!(hist[0]["kind"], "in");
    let hist = ha.run(&["--json", "history", &format!("{user}@beta")]).json();
    assert_eq!(hist.as_array().unwrap().len(), 2);

    // Topics.
    hb.run(&["subscribe", "--as", &user, "#ops"]).ok();
    ha.run(&["subscribe", "--as", "alice", "ops"]).ok();
    let topics = hb.run(&["--json", "topics"]).json();
    assert_eq!(topics[0]["topic"], "ops");
    let p = ha
        .run(&["--json", "publish", "--as", "alice", "ops", "deploying"])
        .json();
    let pid = p["id"].as_str().unwrap().to_string();
    // Delivery is asynchronous: follow beta's inbox until the message shows up.
    let rt = runtime();
    rt.block_on(async {
        let c = common::client(&hb.path()).await;
        let mut ev = c.watch(vec![user.clone()]).await.unwrap();
        let have = match c
            .call(Request::History(HistoryQuery {
                agent: None,
                target: Some("#ops".into()),
                grep: None,
                limit: 10,
                before: None,
                after: None,
                forward: false,
                max_bytes: None,
            }))
            .await
            .unwrap()
        {
            Response::History(h) => h.entries.iter().any(|x| x.id.to_string() == pid),
            _ => false,
        };
        if !have {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                match tokio::time::timeout_at(deadline, ev.recv()).await {
                    Ok(Some(Event::Message(m))) if m.id.to_string() == pid => break,
                    Ok(Some(_)) => {}
                    _ => panic!("topic message never arrived"),
                }
            }
        }
    });
    let hist = hb.run(&["--json", "history", "#ops"]).json();
    assert!(hist.as_array().unwrap().iter().any(|x| x["id"] == pid.as_str()));

    // Errors: unknown recipient, empty, oversized, bad reply id.
    let e = ha.run(&["send", "nobody@beta", "x"]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("no agent \"nobody\" on node beta"), "{}", e.stderr);
    let e = ha.run(&["send", &format!("{user}@beta"), ""]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("empty"), "{}", e.stderr);
    let big = vec![b'x'; 64 * 1024 + 1];
    let e = ha.run_stdin(&["send", &format!("{user}@beta"), "-"], &big);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("limit is 65536"), "{}", e.stderr);
    let e = ha.run(&["send", "--reply-to", "garbage", &format!("{user}@beta"), "x"]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("invalid message id"), "{}", e.stderr);
    let e = ha.run(&["dial", "/ip4/127.0.0.1/tcp/1"]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("cannot dial"), "{}", e.stderr);

    // Peers and agents see each other.
    let peers = ha.run(&["--json", "peers"]).json();
    assert_eq!(peers[0]["name"], "beta");
    assert_eq!(peers[0]["connected"], true);
    let agents = ha.run(&["--json", "agents"]).json();
    assert!(
        agents
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["address"] == format!("{user}@beta"))
    );
    // Human output works too.
    ha.run(&["peers"]).ok();
    ha.run(&["agents"]).ok();
    ha.run(&["status"]).ok();
    ha.run(&["outbox", "--all"]).ok();
    drop((a, b));
}

#[test]
fn damaged_or_foreign_store_is_refused_and_left_alone() {
    let h = Home::new();
    std::fs::write(h.path().join("store.redb"), vec![0x5a; 10_000]).unwrap();
    let out = h.run(&["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("damaged or is not an agentmesh store"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("mv "), "says how to recover: {}", out.stderr);
    assert_eq!(std::fs::read(h.path().join("store.redb")).unwrap(), vec![0x5a; 10_000]);

    // Another node's store with this node's identity.
    let other = Home::new();
    let d = other.start("other", 0);
    let other_peer = d.info.peer_id;
    assert_eq!(other.run(&["down"]).code, 0);
    drop(d);
    std::fs::remove_file(h.path().join("store.redb")).unwrap();
    std::fs::copy(other.path().join("store.redb"), h.path().join("store.redb")).unwrap();
    let out = h.run(&["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("belongs to node"), "{}", out.stderr);

    // A real store, cut short (a copy interrupted, a disk that lost its tail).
    let whole = std::fs::read(other.path().join("store.redb")).unwrap();
    let cut = whole[..whole.len() / 2].to_vec();
    std::fs::write(other.path().join("store.redb"), &cut).unwrap();
    let out = other.run(&["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("damaged") && out.stderr.contains("mv "),
        "{}",
        out.stderr
    );
    assert!(
        std::fs::read(other.path().join("store.redb")).unwrap() == cut,
        "left as it was"
    );
    // The documented way out: move it aside; the node starts empty, same identity.
    std::fs::rename(other.path().join("store.redb"), other.path().join("store.redb.broken")).unwrap();
    let d = other.start("other", 0);
    assert_eq!(d.info.peer_id, other_peer);
    drop(d);

    // A bad config file names the problem.
    std::fs::write(h.path().join("config.toml"), "mdsn = false\n").unwrap();
    let out = h.run(&["up", "--no-mdns"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("config") && out.stderr.contains("mdsn"),
        "{}",
        out.stderr
    );
}

/// Sends with the API client (fast) and returns the ids.
fn send_many(home: &std::path::Path, from: &str, to: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let rt = runtime();
    rt.block_on(async {
        let c = common::client(home).await;
        let mut ids = Vec::new();
        for i in range {
            match c
                .call(Request::Send(SendRequest {
                    from: from.into(),
                    to: to.into(),
                    text: format!("m{i}"),
                    reply_to: None,
                    id: None,
                }))
                .await
                .unwrap()
            {
                Response::Sent(r) => ids.push(r.id.to_string()),
                other => panic!("{other:?}"),
            }
        }
        ids
    })
}

/// Waits (on events) until `agent` on `home` has `n` messages from `from`, then returns
/// all its direct messages' ids in inbox order.
fn wait_inbox(home: &std::path::Path, agent: &str, from: &str, n: usize) -> Vec<String> {
    let ids = runtime().block_on(common::wait_direct(home, agent, from, n));
    ids.iter().map(|id| id.to_string()).collect()
}

#[test]
fn sender_killed_after_send_delivers_exactly_once_after_restart() {
    let (ha, hb) = (Home::new(), Home::new());
    let a = ha.start("alpha", 0);
    let b = hb.start("beta", 0);
    hb.run(&["subscribe", "--as", "bob", "x"]).ok(); // creates bob
    ha.run(&["dial", &b.addr()]).ok();
    let (a_port, b_port) = (a.port(), b.port());

    // The recipient is down: the send is queued in the sender's outbox.
    b.kill9();
    let ids = send_many(&ha.path(), "alice", "bob@beta", 0..5);
    let out = ha.run(&["--json", "outbox"]).json();
    assert_eq!(out.as_array().unwrap().len(), 5);
    // Crash the sender before it could deliver anything.
    a.kill9();

    // Both come back (the sender remembered the recipient's address).
    let _b = hb.start("beta", b_port);
    let _a = ha.start("alpha", a_port);
    let got = wait_inbox(&hb.path(), "bob", "alice", 5);
    assert_eq!(got, ids, "every message exactly once, in send order");
    // And the sender knows they were delivered.
    let rt = runtime();
    rt.block_on(async {
        let c = common::client(&ha.path()).await;
        let mut ev = c.watch(vec!["alice".into()]).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pending = match c
                .call(Request::Outbox {
                    agent: None,
                    delivered: false,
                    limit: 100,
                })
                .await
                .unwrap()
            {
                Response::Outbox(l) => l.len(),
                other => panic!("{other:?}"),
            };
            if pending == 0 {
                break;
            }
            tokio::time::timeout_at(deadline, ev.recv())
                .await
                .expect("acks never recorded");
        }
    });
}

#[test]
fn recipient_killed_mid_stream_loses_and_duplicates_nothing() {
    let (ha, hb) = (Home::new(), Home::new());
    let _a = ha.start("alpha", 0);
    let b = hb.start("beta", 0);
    hb.run(&["subscribe", "--as", "bob", "x"]).ok();
    ha.run(&["dial", &b.addr()]).ok();
    let b_port = b.port();

    // Kill the recipient while a stream of messages is being delivered to it, at a moment
    // that varies with the machine's timing.
    let sender_home = ha.path();
    let sender = std::thread::spawn(move || send_many(&sender_home, "alice", "bob@beta", 0..300));
    let first = wait_inbox(&hb.path(), "bob", "alice", 20);
    assert!(first.len() >= 20);
    b.kill9();
    let mut ids = sender.join().unwrap();
    assert_eq!(ids.len(), 300);

    let b = hb.start("beta", b_port);
    // Another crash right after it comes back, while the backlog drains.
    let _ = wait_inbox(&hb.path(), "bob", "alice", first.len() + 1);
    b.kill9();
    let _b = hb.start("beta", b_port);
    ids.extend(send_many(&ha.path(), "alice", "bob@beta", 300..310));

    let got = wait_inbox(&hb.path(), "bob", "alice", 310);
    assert_eq!(got.len(), 310, "no duplicates");
    assert_eq!(got, ids, "all delivered, in send order");
}

#[test]
fn install_and_uninstall_round_trip_on_existing_configs() {
    let h = Home::new();
    let dir = tempfile::tempdir().unwrap();
    // A HOME of its own: nothing touches this user's real client settings.
    let user_home = dir.path().join("user");
    let run = |args: &[&str]| common::run_in_env(&h.path(), args, None, &[("HOME", user_home.as_os_str())]);
    let json = dir.path().join("claude.json");
    let original = "{\n  // keep this comment\n  \"mcpServers\": {\n    \"other\": { \"command\": \"x\" }\n  },\n  \"theme\": \"dark\"\n}\n";
    std::fs::write(&json, original).unwrap();
    // Only the MCP entry (--no-wake): the hooks would go to this user's own settings.
    let cfg = json.to_str().unwrap();
    let out = run(&["--json", "install", "claude-code", "--no-wake", "--config", cfg]);
    out.ok();
    assert_eq!(out.json()["files"][0]["change"], "added");
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(
        text.contains("// keep this comment") && text.contains("\"other\"") && text.contains("\"agentmesh\""),
        "{text}"
    );
    // The entry runs this very binary, with the home it was installed for.
    assert!(
        text.contains(common::mesh_bin().canonicalize().unwrap().to_str().unwrap()),
        "{text}"
    );
    assert!(text.contains(h.path().to_str().unwrap()), "{text}");
    let again = run(&["--json", "install", "claude-code", "--no-wake", "--config", cfg]);
    assert_eq!(again.json()["files"][0]["change"], "unchanged");
    let human = run(&["install", "claude-code", "--no-wake", "--config", cfg]);
    assert!(
        human
            .stdout
            .contains("--dangerously-load-development-channels server:agentmesh"),
        "{}",
        human.stdout
    );
    let un = run(&["--json", "uninstall", "claude-code", "--config", cfg]);
    assert_eq!(un.json()["files"][0]["change"], "removed");
    let back = std::fs::read_to_string(&json).unwrap();
    assert!(
        back.contains("// keep this comment") && back.contains("\"other\"") && !back.contains("agentmesh"),
        "{back}"
    );

    let toml = dir.path().join("config.toml");
    std::fs::write(&toml, "# codex\n[mcp_servers.docs]\ncommand = \"d\" # mine\n").unwrap();
    run(&["install", "codex", "--no-wake", "--config", toml.to_str().unwrap()]).ok();
    let t = std::fs::read_to_string(&toml).unwrap();
    assert!(t.contains("# mine") && t.contains("[mcp_servers.agentmesh]"), "{t}");
    run(&["uninstall", "codex", "--config", toml.to_str().unwrap()]).ok();
    assert!(!std::fs::read_to_string(&toml).unwrap().contains("agentmesh"));

    // A broken file is reported and left alone.
    std::fs::write(&json, "{ broken").unwrap();
    let e = run(&["install", "claude-code", "--no-wake", "--config", cfg]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("not valid JSON"), "{}", e.stderr);
    assert_eq!(std::fs::read_to_string(&json).unwrap(), "{ broken");
}

#[test]
fn dial_by_dns_quic_and_ipv6_and_stay_connected_until_forgotten() {
    let (ha, hb) = (Home::new(), Home::new());
    let _a = ha.start("alpha", 0);
    // B listens on TCP and QUIC, IPv4 and IPv6 loopback.
    let b = common::start_daemon(
        &hb.path(),
        "beta",
        0,
        &["--listen", "/ip4/127.0.0.1/udp/0/quic-v1", "--listen", "/ip6/::1/tcp/0"],
    );
    let peer = b.info.peer_id.to_string();
    let port = |pred: &dyn Fn(&str) -> bool| -> String {
        let a = b
            .info
            .listen
            .iter()
            .map(|a| a.to_string())
            .find(|a| pred(a))
            .expect("listen address");
        a.rsplit('/')
            .nth(if a.ends_with("quic-v1") { 1 } else { 0 })
            .unwrap()
            .to_string()
    };
    let tcp4 = port(&|a| a.starts_with("/ip4/") && a.contains("/tcp/"));
    let quic = port(&|a| a.contains("quic-v1"));
    let tcp6 = port(&|a| a.starts_with("/ip6/"));

    // By DNS name (resolved by the node), without /p2p: the node is learned on the way.
    let out = ha.run(&["--json", "dial", &format!("/dns4/localhost/tcp/{tcp4}")]);
    out.ok();
    assert_eq!(out.json()["peer_id"], peer.as_str());
    // Over QUIC and IPv6, with /p2p.
    ha.run(&["dial", &format!("/ip4/127.0.0.1/udp/{quic}/quic-v1/p2p/{peer}")])
        .ok();
    ha.run(&["dial", &format!("/ip6/::1/tcp/{tcp6}/p2p/{peer}")]).ok();
    // The wrong node at an address is refused clearly.
    let other = libp2p::PeerId::random();
    let e = ha.run(&["dial", &format!("/ip4/127.0.0.1/tcp/{tcp4}/p2p/{other}")]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("not the one in the address"), "{}", e.stderr);
    // A relayed address must name the node at its end.
    let e = ha.run(&["dial", &format!("/ip4/127.0.0.1/tcp/{tcp4}/p2p/{peer}/p2p-circuit")]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("must end with /p2p/"), "{}", e.stderr);

    // Remembered: B restarts on the same port and A reconnects by itself.
    let peers = ha.run(&["--json", "peers"]).json();
    assert_eq!(peers[0]["remembered"], true);
    drop(b);
    let b = common::start_daemon(&hb.path(), "beta", tcp4.parse().unwrap(), &[]);
    let rt = runtime();
    rt.block_on(async {
        let c = common::client(&ha.path()).await;
        let mut ev = c.watch(vec![]).await.unwrap();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let connected = match c.call(Request::Peers).await.unwrap() {
                Response::Peers(p) => p.iter().any(|x| x.peer_id == b.info.peer_id && x.connected),
                _ => false,
            };
            if connected {
                break;
            }
            tokio::time::timeout_at(deadline, ev.recv())
                .await
                .expect("A never redialed B");
        }
    });
    let out = ha.run(&["ping", "beta", "--count", "2"]);
    out.ok();
    assert!(
        out.stdout.contains("direct over tcp (LAN)") && out.stdout.contains("round trips"),
        "{}",
        out.stdout
    );

    // Forgotten: no longer remembered (by name, PeerId or address).
    let out = ha.run(&["--json", "dial", "--forget", "beta"]);
    out.ok();
    assert_eq!(out.json()["forgotten"], true);
    assert_eq!(
        ha.run(&["--json", "dial", "--forget", &peer]).json()["forgotten"],
        false
    );
    assert_eq!(ha.run(&["--json", "peers"]).json()[0]["remembered"], false);
    assert_eq!(ha.run(&["dial", "--forget", "nobody-here"]).code, 1);

    // `mesh addr` has something to share even on a LAN-only node.
    let addr = hb.run(&["--json", "addr"]).json();
    assert_eq!(addr["peer_id"], peer.as_str());
    let st = hb.run(&["status"]);
    assert!(
        st.stdout.contains("nat ") && st.stdout.contains("punch "),
        "{}",
        st.stdout
    );
}

#[test]
fn a_command_repeated_with_its_id_sends_once() {
    let (ha, hb) = (Home::new(), Home::new());
    let _a = ha.start("alpha", 0);
    let b = hb.start("beta", 0);
    hb.run(&["subscribe", "--as", "bob", "news"]).ok();
    ha.run(&["dial", &b.addr()]).ok();
    let id = mesh_node::ids::MessageId::new().to_string();

    // A script that retries: the same command twice is one message.
    for _ in 0..2 {
        let out = ha.run(&["--json", "send", "--as", "alice", "--id", &id, "bob@beta", "once"]);
        out.ok();
        assert_eq!(out.json()["id"], id.as_str());
        assert_eq!(out.json()["status"], "Delivered");
    }
    let inbox = hb.run(&["--json", "inbox", "--all", "--as", "bob"]).json();
    let got: Vec<&serde_json::Value> = inbox
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == id.as_str())
        .collect();
    assert_eq!(got.len(), 1, "{inbox}");
    let outbox = ha.run(&["--json", "outbox", "--all"]).json();
    assert_eq!(
        outbox
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["id"] == id.as_str())
            .count(),
        1
    );

    // The same id for another message is refused, and nothing is sent.
    let out = ha.run(&["send", "--as", "alice", "--id", &id, "bob@beta", "something else"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("already used by another message"), "{}", out.stderr);
    let out = ha.run(&["send", "--id", "not-an-id", "bob@beta", "x"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("invalid message id"), "{}", out.stderr);

    // Publishing too.
    let pid = mesh_node::ids::MessageId::new().to_string();
    for _ in 0..2 {
        ha.run(&["publish", "--as", "alice", "--id", &pid, "news", "headline"])
            .ok();
    }
    let hist = ha.run(&["--json", "history", "#news"]).json();
    assert_eq!(
        hist.as_array()
            .unwrap()
            .iter()
            .filter(|m| m["id"] == pid.as_str())
            .count(),
        1
    );
}

#[test]
fn an_inbox_cut_short_by_its_reader_marks_nothing_read() {
    let h = Home::new();
    let _d = h.start("solo", 0);
    let user = common::TEST_USER;
    let text = "a line long enough to fill a pipe buffer soon ".repeat(40);
    for _ in 0..60 {
        h.run(&["send", "--as", "a", user, &text]).ok();
    }
    // `mesh inbox | head -1`: the reader goes away after one line.
    let mut child = std::process::Command::new(common::mesh_bin())
        .arg("--home")
        .arg(h.path())
        .args(["inbox", "--as", user])
        .env("USER", user)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first).unwrap();
    assert!(first.contains("from a@solo"), "{first}");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing was marked read behind the reader's back: all 60 are still unread.
    let unread = h.run(&["--json", "inbox", "--as", user]).json();
    assert_eq!(unread.as_array().unwrap().len(), 60);
    // And that read (written out whole) marked them.
    assert_eq!(
        h.run(&["--json", "inbox", "--as", user])
            .json()
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// A stand-in daemon on a home's socket: answers the hello, reads one request per
/// connection, and either hangs up without answering (the first `drop_first` connections)
/// or answers it as sent. Returns the message ids it was asked to send, in order.
fn flaky_daemon(home: &std::path::Path, drop_first: usize, conns: usize) -> std::thread::JoinHandle<Vec<String>> {
    use mesh_node::api::{ClientFrame, NodeIdentity, Reception, SendReceipt, SendStatus, ServerFrame, ServerHello};
    use std::io::{Read, Write};
    std::fs::create_dir_all(home).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(home.join("mesh.sock")).unwrap();
    std::thread::spawn(move || {
        let read_frame = |s: &mut std::os::unix::net::UnixStream| -> Option<Vec<u8>> {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).ok()?;
            Some(body)
        };
        let write_frame = |s: &mut std::os::unix::net::UnixStream, body: Vec<u8>| {
            let _ = s.write_all(&(body.len() as u32).to_be_bytes());
            let _ = s.write_all(&body);
        };
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let mut ids = Vec::new();
        for n in 0..conns {
            let Ok((mut s, _)) = listener.accept() else { break };
            s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let Some(_hello) = read_frame(&mut s) else { continue };
            let welcome = ServerHello::Welcome {
                version: mesh_node::api::API_VERSION,
                node: NodeIdentity {
                    peer_id: peer,
                    name: "flaky".into(),
                    version: "test".into(),
                },
                max_frame: 1 << 20,
            };
            write_frame(&mut s, postcard::to_allocvec(&welcome).unwrap());
            let Some(req) = read_frame(&mut s) else { continue };
            let frame: ClientFrame = postcard::from_bytes(&req).unwrap();
            let mesh_node::api::Request::Send(mesh_node::api::SendRequest { id: Some(id), .. }) = frame.request else {
                panic!("expected a send with an id: {:?}", frame.request)
            };
            ids.push(id.to_string());
            if n < drop_first {
                continue; // hang up: the client cannot know whether it was done
            }
            let answer = ServerFrame::Reply {
                id: frame.id,
                result: Ok(mesh_node::api::Response::Sent(SendReceipt {
                    id,
                    to: "bob@flaky".into(),
                    to_node: peer,
                    status: SendStatus::Delivered,
                    reception: Reception::Offline,
                })),
            };
            write_frame(&mut s, postcard::to_allocvec(&answer).unwrap());
        }
        ids
    })
}

#[test]
fn a_send_whose_daemon_hangs_up_is_repeated_with_its_id_or_explained() {
    // The daemon goes away mid-request and is back: the CLI sends the same request again
    // (same id, so the daemon would recognise it), and succeeds.
    let h = Home::new();
    let daemon = flaky_daemon(&h.path(), 1, 2);
    let out = h.run(&["send", "bob@flaky", "hello"]);
    out.ok();
    let ids = daemon.join().unwrap();
    assert_eq!(ids.len(), 2, "asked twice");
    assert_eq!(ids[0], ids[1], "with the same message id");
    assert!(out.stdout.contains(&ids[0]), "{}", out.stdout);

    // It never comes back: the CLI gives up after a while and says how to repeat safely.
    let h = Home::new();
    let daemon = flaky_daemon(&h.path(), 1, 1);
    let out = h.run(&["send", "bob@flaky", "hello"]);
    assert_eq!(out.code, 1);
    let ids = daemon.join().unwrap();
    assert!(
        out.stderr.contains("may or may not have been stored") && out.stderr.contains(&format!("--id {}", ids[0])),
        "{}",
        out.stderr
    );
}

/// Every process below `pid` (by parent links in /proc), as a client that "kills its MCP
/// server's process tree" finds them.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse::<u32>().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (c, pp) in &parents {
            if *pp == p && !out.contains(c) {
                out.push(*c);
                frontier.push(*c);
            }
        }
    }
    out
}

#[test]
fn the_daemon_belongs_to_the_user_settings_stick_and_mesh_down_stays_down() {
    let h = Home::isolated();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    // Settings given to `mesh up` are kept in the home.
    h.run(&["up", "--detach", "--name", "keeper", "--no-mdns"]).ok();
    let saved = std::fs::read_to_string(h.path().join("settings.toml")).unwrap();
    assert!(
        saved.contains("name = \"keeper\"") && saved.contains("no_mdns = true"),
        "{saved}"
    );
    // A daemon that dies (not `mesh down`) is started again by the next session, with them.
    let pid = std::fs::read_to_string(h.path().join("daemon.lock")).unwrap();
    std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    let mut session = common::mcp::Mcp::start(&h.path(), &work, "opencode", &[]);
    let who = session.ok("whoami", serde_json::json!({}));
    assert!(
        who.contains("on node keeper"),
        "the adapter's daemon kept the name: {who}"
    );
    let st = h.run(&["--json", "status"]).json();
    assert_eq!(st["node"]["name"], "keeper");
    assert_eq!(st["mdns"], false);
    let daemon_pid: u32 = std::fs::read_to_string(h.path().join("daemon.lock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The client kills its server's whole process tree (as OpenCode does on exit): the
    // daemon is not in it, and keeps running.
    let adapter = session.child.id();
    let tree = descendants(adapter);
    assert!(
        !tree.contains(&daemon_pid),
        "the daemon is not below the adapter: {tree:?}"
    );
    for p in tree.iter().chain([&adapter]) {
        let _ = std::process::Command::new("kill").args(["-9", &p.to_string()]).status();
    }
    let _ = session.child.wait();
    h.run(&["status"]).ok();
    assert!(
        std::path::Path::new(&format!("/proc/{daemon_pid}")).exists(),
        "the same daemon still runs"
    );

    // `mesh down` stays down: a session reports it at once instead of restarting the node.
    h.run(&["down"]).ok();
    assert!(h.path().join("stopped").exists());
    let started = std::time::Instant::now();
    let mut session = common::mcp::Mcp::start(&h.path(), &work, "opencode", &[]);
    let (text, is_err) = session.tool("whoami", serde_json::json!({}));
    assert!(
        is_err && text.contains("stopped with `mesh down`") && text.contains("mesh up"),
        "{text}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "said at once");
    assert_eq!(h.run(&["status"]).code, 3, "no daemon was started");
    // `mesh up` lifts it, with the saved settings, and the session attaches by itself.
    h.run(&["up", "--detach"]).ok();
    assert!(!h.path().join("stopped").exists());
    assert_eq!(h.run(&["--json", "status"]).json()["node"]["name"], "keeper");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (text, is_err) = session.tool("whoami", serde_json::json!({}));
        if !is_err {
            assert!(text.contains("on node keeper"), "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never came back: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // `--reset` forgets the saved settings.
    h.run(&["down"]).ok();
    h.run(&["up", "--detach", "--reset"]).ok();
    assert!(!h.path().join("settings.toml").exists());
    assert_ne!(h.run(&["--json", "status"]).json()["node"]["name"], "keeper");
}

#[test]
fn install_sets_up_each_clients_wake_path_and_uninstall_takes_only_it_away() {
    let h = Home::new();
    let user = tempfile::tempdir().unwrap();
    let env: Vec<(&str, &std::ffi::OsStr)> = vec![
        ("HOME", user.path().as_os_str()),
        // No Codex here: the hooks are written, and the user is told how to trust them.
        ("PATH", std::ffi::OsStr::new("/usr/bin:/bin")),
    ];
    let run = |args: &[&str]| common::run_in_env(&h.path(), args, None, &env);
    let exe = common::mesh_bin().canonicalize().unwrap();

    // Claude Code: the MCP entry, and hooks beside the user's own.
    let settings = user.path().join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let mine = serde_json::json!({
        "model": "opus",
        "hooks": { "Stop": [{ "hooks": [{ "type": "command", "command": "notify-send done" }] }] }
    });
    std::fs::write(&settings, serde_json::to_string_pretty(&mine).unwrap()).unwrap();
    let out = run(&["--json", "install", "claude-code"]);
    out.ok();
    let files = out.json()["files"].clone();
    assert_eq!(files[0]["change"], "added", "{files}");
    assert_eq!(files[1]["change"], "added", "{files}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(v["model"], "opus");
    let cmds = |event: &str| -> Vec<serde_json::Value> {
        v["hooks"][event]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["hooks"].as_array().unwrap().clone())
            .collect()
    };
    let stop = cmds("Stop");
    assert_eq!(stop[0]["command"], "notify-send done", "the user's hook stays first");
    let wake = &stop[1];
    assert!(
        wake["command"].as_str().unwrap().ends_with("hook claude-code wake"),
        "{wake}"
    );
    assert!(wake["command"].as_str().unwrap().contains(exe.to_str().unwrap()));
    assert!(
        wake["command"].as_str().unwrap().contains(h.path().to_str().unwrap()),
        "its home"
    );
    assert_eq!(wake["asyncRewake"], true);
    assert!(wake["timeout"].as_u64().unwrap() >= 3600);
    let start = cmds("SessionStart");
    assert!(start.iter().any(|c| c["asyncRewake"] == true));
    assert!(
        start
            .iter()
            .any(|c| c["command"].as_str().unwrap().ends_with("hook claude-code context"))
    );
    for event in ["UserPromptSubmit", "PostToolUse"] {
        assert!(
            cmds(event)[0]["command"]
                .as_str()
                .unwrap()
                .ends_with("hook claude-code context")
        );
    }
    let mcp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(user.path().join(".claude.json")).unwrap()).unwrap();
    assert_eq!(mcp["mcpServers"]["agentmesh"]["command"], exe.to_str().unwrap());
    assert_eq!(
        run(&["--json", "install", "claude-code"]).json()["files"][1]["change"],
        "unchanged"
    );
    run(&["uninstall", "claude-code"]).ok();
    let back: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(back, mine, "uninstall leaves exactly the user's settings");

    // Codex: the MCP entry with a tool timeout above `wait`, hooks.json, and how to trust.
    let out = run(&["install", "codex"]);
    out.ok();
    assert!(out.stdout.contains("/hooks"), "{}", out.stdout);
    let config = std::fs::read_to_string(user.path().join(".codex/config.toml")).unwrap();
    assert!(config.contains("tool_timeout_sec = 660"), "{config}");
    let hooks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(user.path().join(".codex/hooks.json")).unwrap()).unwrap();
    let stop = hooks["hooks"]["Stop"][0]["hooks"][0]["command"].as_str().unwrap();
    assert!(stop.ends_with("hook codex wake"), "{stop}");
    assert!(hooks["hooks"]["Stop"][0]["hooks"][0].get("asyncRewake").is_none());
    run(&["uninstall", "codex"]).ok();
    let hooks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(user.path().join(".codex/hooks.json")).unwrap()).unwrap();
    assert!(!hooks.to_string().contains("hook codex"), "{hooks}");

    // OpenCode: the plugin, running this binary with this home.
    run(&["install", "opencode"]).ok();
    let plugin = user.path().join(".config/opencode/plugin/agentmesh.js");
    let js = std::fs::read_to_string(&plugin).unwrap();
    assert!(
        js.contains(&serde_json::to_string(exe.to_str().unwrap()).unwrap()),
        "{js}"
    );
    assert!(js.contains("\"follow\"") && !js.contains("__MESH_ARGV__"));
    run(&["uninstall", "opencode"]).ok();
    assert!(!plugin.exists());
}

fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn a_home_with_planted_links_or_of_another_user_is_refused_and_nothing_is_written() {
    if !running_as_root() {
        // Root is who a planted link would hurt, and only root can hand a home to another
        // user here.
        common::skip("the home ownership test needs root");
        return;
    }
    let h = Home::new();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let up = ["up", "--detach", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"];
    // A link planted as the lock or the log: refused, and the file it names untouched.
    for planted in [
        "daemon.lock",
        "daemon.log",
        "identity.key",
        "store.redb",
        "settings.toml",
    ] {
        let link = h.path().join(planted);
        // (The test home has an identity already: the link takes its place.)
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let out = h.run(&up);
        assert_eq!(out.code, 1, "{planted}: {out:?}");
        assert!(
            out.stderr.contains(planted) && out.stderr.contains("symbolic link"),
            "{planted}: {}",
            out.stderr
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "{planted}");
        std::fs::remove_file(&link).unwrap();
    }
    // A home that belongs to someone else: refused before anything is written in it.
    let nobody = 65534;
    std::os::unix::fs::chown(h.path(), Some(nobody), Some(nobody)).unwrap();
    let out = h.run(&up);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("belongs to uid 65534"), "{}", out.stderr);
    assert!(!h.path().join("daemon.lock").exists(), "nothing written");
    std::os::unix::fs::chown(h.path(), Some(0), Some(0)).unwrap();
    // Its own again: it starts.
    h.run(&up).ok();
    h.run(&["down"]).ok();
}

#[test]
fn history_and_inbox_larger_than_one_api_frame_come_out_whole() {
    let h = Home::new();
    let _d = h.start("solo", 0);
    let user = common::TEST_USER;
    // Twenty 60 KB messages from a to the user: 1.2 MB received and 1.2 MB sent, more
    // than one 1 MiB API frame holds.
    let texts: Vec<String> = (0..20).map(|i| format!("{i:02} {}", "y".repeat(60_000))).collect();
    let ids: Vec<String> = runtime().block_on(async {
        let c = common::client(&h.path()).await;
        let mut ids = Vec::new();
        for t in &texts {
            match c
                .call(Request::Send(SendRequest {
                    from: "a".into(),
                    to: user.into(),
                    text: t.clone(),
                    reply_to: None,
                    id: None,
                }))
                .await
                .unwrap()
            {
                Response::Sent(r) => ids.push(r.id.to_string()),
                other => panic!("{other:?}"),
            }
        }
        ids
    });

    // The export has every entry (each message once sent, once received), oldest first.
    let out = h.run(&["--json", "history", "--limit", "1000"]);
    out.ok();
    let rows = out.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 40, "every entry of the history");
    for (i, id) in ids.iter().enumerate() {
        let mine: Vec<_> = rows.iter().filter(|r| r["id"] == id.as_str()).collect();
        assert_eq!(mine.len(), 2, "message {i} sent and received");
        assert!(mine.iter().all(|r| r["text"] == texts[i].as_str()), "message {i} whole");
    }
    let order: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let mut sorted = order.clone();
    sorted.dedup();
    assert_eq!(sorted, ids, "oldest first");

    // The newest 25, still oldest first, across pages; and what came before them.
    let out = h.run(&["--json", "history", "--limit", "25"]);
    out.ok();
    let newest = out.json();
    assert_eq!(newest.as_array().unwrap()[..], rows[15..]);
    let cursor = out
        .stderr
        .split("--before ")
        .nth(1)
        .unwrap_or_else(|| panic!("no cursor for the older ones: {}", out.stderr))
        .trim()
        .to_string();
    let older = h.run(&["--json", "history", "--limit", "1000", "--before", &cursor]);
    older.ok();
    assert_eq!(older.json().as_array().unwrap()[..], rows[..15]);
    assert!(!older.stderr.contains("--before"), "nothing older: {}", older.stderr);
    let human = h.run(&["history", "--limit", "3"]);
    human.ok();
    assert_eq!(human.stdout.matches(" -> ").count(), 3, "{}", human.stdout);
    assert!(
        human.stdout.contains("(older messages: add --before h"),
        "{}",
        human.stdout
    );
    let bad = h.run(&["history", "--before", "yesterday"]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr.contains("bad history cursor \"yesterday\""),
        "{}",
        bad.stderr
    );

    // The inbox shows all twenty once, and marks them read; past --limit it says what is
    // left.
    let first = h.run(&["--json", "inbox", "--as", user, "--limit", "2"]);
    first.ok();
    assert_eq!(first.json().as_array().unwrap().len(), 2);
    assert!(first.stderr.contains("18 more unread messages"), "{}", first.stderr);
    let inbox = h.run(&["--json", "inbox", "--as", user]);
    inbox.ok();
    let shown: Vec<String> = inbox
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(shown, ids[2..]);
    assert!(!inbox.stderr.contains("more unread"), "{}", inbox.stderr);
    let again = h.run(&["--json", "inbox", "--as", user]);
    assert_eq!(again.json().as_array().unwrap().len(), 0);
    let all = h.run(&["--json", "inbox", "--all", "--as", user, "--limit", "1000"]);
    assert_eq!(all.json().as_array().unwrap().len(), 20, "every message, read now");
}
