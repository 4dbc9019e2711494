//! Joining, membership and the local API's owner check, through the `mesh` binary.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Home, start_daemon};

/// Runs `mesh --json <args>` until `check` accepts the output, for at most 20 s.
fn poll_json(home: &Home, args: &[&str], what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    loop {
        let out = home.run(&full);
        if out.code == 0 {
            let v = out.json();
            if check(&v) {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn join_in_two_commands_then_members_remove_and_leave() {
    let (ha, hb) = (Home::alone(), Home::alone());
    let da = start_daemon(&ha.path(), "a", 0, &[]);
    let db = start_daemon(&hb.path(), "b", 0, &[]);

    // A damaged code is explained without bothering anyone.
    let bad = hb.run(&["join", "agentmesh:AAAA"]);
    assert_eq!(bad.code, 1);
    assert!(bad.stderr.contains("damaged"), "{}", bad.stderr);

    // The two commands.
    let inv = ha.run(&["invite", "--ttl", "10m"]);
    inv.ok();
    let code = inv.stdout.trim().to_string();
    assert!(code.starts_with("agentmesh:") && !code.contains('\n'), "{code}");
    assert!(
        inv.stderr.contains("mesh join"),
        "tells what to do with it: {}",
        inv.stderr
    );
    // --confirm belongs to pairing: with a code it is refused, and the code stays unused.
    let mixed = hb.run(&["join", &code, "--confirm", "123456"]);
    assert_eq!(mixed.code, 1);
    assert!(mixed.stderr.contains("--confirm is for pairing"), "{}", mixed.stderr);
    let join = hb.run(&["join", &code]);
    join.ok();
    assert!(
        join.stdout.contains("joined mesh") && join.stdout.contains(" a "),
        "{}",
        join.stdout
    );

    // Members on both sides, connected.
    let a_id = da.info.peer_id.to_string();
    let b_id = db.info.peer_id.to_string();
    poll_json(&ha, &["members"], "b among a's members", |v| {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["peer_id"] == b_id.as_str() && m["connected"] == true)
    });
    let members = hb.run(&["members"]);
    members.ok();
    assert!(
        members.stdout.contains(&a_id) && members.stdout.contains("this node"),
        "{}",
        members.stdout
    );
    poll_json(&hb, &["agents"], "a's agents on b", |v| {
        v.as_array().unwrap().iter().any(|a| a["address"] == "tester@a")
    });
    hb.run(&["send", "tester@a", "hello, fellow member"]).ok();

    // The same code again: refused.
    let hc = Home::alone();
    let _dc = start_daemon(&hc.path(), "c", 0, &[]);
    let again = hc.run(&["join", &code]);
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("already used"), "{}", again.stderr);

    // Removal: b is out and cannot get back in.
    let rm = ha.run(&["remove", "b"]);
    rm.ok();
    assert!(
        rm.stdout.contains("removed") && rm.stdout.contains(&b_id),
        "{}",
        rm.stdout
    );
    let st = poll_json(&ha, &["status"], "a to drop b", |v| v["connected"] == 0);
    assert_eq!(st["mesh"]["epoch"], 2);
    assert_eq!(st["mesh"]["removed"], 1);
    let peers = ha.run(&["peers"]);
    assert!(
        peers.stdout.contains("not members") && peers.stdout.contains("removed from this mesh"),
        "{}",
        peers.stdout
    );
    let back = hb.run(&["dial", &da.addr()]);
    assert_eq!(back.code, 1);
    assert!(back.stderr.contains("not a member"), "{}", back.stderr);

    // Leaving: a new mesh of its own.
    let left = hb.run(&["leave"]);
    left.ok();
    assert!(left.stdout.contains("new mesh"), "{}", left.stdout);
    let st = hb.run(&["--json", "status"]);
    assert_eq!(st.json()["mesh"]["members"], 1);
}

#[test]
fn open_mode_is_announced_loudly() {
    let h = Home::alone();
    let _d = start_daemon(&h.path(), "lab", 0, &["--open"]);
    let st = h.run(&["status"]);
    st.ok();
    assert!(st.stdout.contains("OPEN MODE"), "{}", st.stdout);
    let inv = h.run(&["invite"]);
    assert_eq!(inv.code, 1);
    assert!(inv.stderr.contains("open mode"), "{}", inv.stderr);
}

#[test]
fn the_local_api_is_for_its_owner_only() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping the_local_api_is_for_its_owner_only: needs root (to run a command as another user)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let h = Home::new();
    let _d = start_daemon(&h.path(), "mine", 0, &[]);
    let as_nobody = || {
        let out = std::process::Command::new(common::mesh_bin())
            .arg("--home")
            .arg(h.path())
            .arg("status")
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    // The home and the socket are private: another user cannot even connect.
    let (code, err) = as_nobody();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("only the user who owns"), "{err}");
    // Even with the permissions opened up by mistake, the daemon checks who is calling.
    for p in [h.dir.path().to_path_buf(), h.path()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(h.path().join("mesh.sock"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (code, err) = as_nobody();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("may not use this daemon"), "{err}");
    // The owner still can, and the daemon is fine.
    h.run(&["status"]).ok();
}

#[test]
fn a_join_dials_again_when_the_inviting_node_comes_back_within_the_join_time() {
    let (ha, hb) = (Home::alone(), Home::alone());
    let da = start_daemon(&ha.path(), "a", 0, &[]);
    let port = da.port();
    let _db = start_daemon(&hb.path(), "b", 0, &[]);
    let inv = ha.run(&["invite", "--ttl", "10m"]);
    inv.ok();
    let code = inv.stdout.trim().to_string();
    // The inviting node is away (restarting, its relay slot or its network coming up)
    // when the join starts, and back a moment later at the address its code gave.
    drop(da);
    let joiner = {
        let hb_path = hb.path();
        let code = code.clone();
        std::thread::spawn(move || common::run_in(&hb_path, &["join", &code], None))
    };
    std::thread::sleep(Duration::from_millis(1500));
    let _da = start_daemon(&ha.path(), "a", port, &[]);
    let join = joiner.join().unwrap();
    join.ok();
    assert!(join.stdout.contains("joined mesh"), "{}", join.stdout);
}
