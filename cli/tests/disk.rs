//! Disk trouble: a store on a full file system (clear errors, nothing lost, recovery when
//! space returns), on one that goes read-only under the daemon (clear errors, nothing
//! stored damaged), and a home that is read-only at start. Uses a small tmpfs and an ext4
//! file system on a loop device, so it needs root; skips with a message otherwise.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{CMD_TIMEOUT, runtime, start_daemon};
use mesh_node::api::client::{Client, ClientError};
use mesh_node::api::{ErrorCode, Request, Response, SendRequest};

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn full_disk_gives_clear_errors_keeps_data_and_recovers() {
    if !is_root() {
        common::skip("the full-disk test needs root to mount a tmpfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("fs");
    std::fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1500k", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs");
    let _fs = Tmpfs(mnt.clone());
    // The daemon's log (next to the home) is on the full disk too, as daemon.log is.
    let home = mnt.join("h");
    std::fs::create_dir(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        "[limits]\nmax_message_bytes = 200000\nmax_api_frame_bytes = 400000\n",
    )
    .unwrap();
    let d = start_daemon(&home, "full", 0, &[]);

    let rt = runtime();
    let kept = rt.block_on(async {
        let c = common::client(&home).await;
        let big = "y".repeat(150_000);
        let send = |text: String| {
            Request::Send(SendRequest {
                from: "a".into(),
                to: common::TEST_USER.into(),
                text,
                reply_to: None,
                id: None,
            })
        };
        let mut stored = 0;
        let mut full = None;
        for _ in 0..30 {
            match c.call(send(big.clone())).await {
                Ok(Response::Sent(_)) => stored += 1,
                Err(ClientError::Api(e)) => {
                    full = Some(e);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let e = full.expect("the disk never filled up");
        assert_eq!(e.code, ErrorCode::Storage);
        assert!(
            e.message.contains("disk is full") && e.message.contains("nothing was changed"),
            "{}",
            e.message
        );
        assert!(stored > 0);
        eprintln!("disk full after {stored} messages: {}", e.message);
        // A second attempt fails the same clear way (not a poisoned database message).
        match c.call(send(big.clone())).await {
            Err(ClientError::Api(e)) => assert!(e.message.contains("disk is full"), "{}", e.message),
            other => panic!("{other:?}"),
        }
        // The daemon is up and what was stored is readable.
        assert!(matches!(c.call(Request::Status).await.unwrap(), Response::Status(_)));
        let inbox = common::inbox_pages(&c, common::TEST_USER, false, true).await.unwrap();
        assert_eq!(inbox.len(), stored);

        // Space comes back: it works again without a restart.
        let ok = Command::new("mount")
            .args(["-o", "remount,size=8m"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount");
        match c.call(send("after".into())).await.unwrap() {
            Response::Sent(_) => {}
            other => panic!("{other:?}"),
        }
        let all = common::whole_inbox(&c, common::TEST_USER).await.unwrap();
        assert_eq!(all.len(), stored + 1, "nothing lost, nothing duplicated");
        all_mail(&c).await
    });
    // The store the disk filled up passes the checks at the next start, unchanged.
    let down = common::run_in(&home, &["down"], None);
    assert_eq!(down.code, 0, "{}", down.stderr);
    drop(d);
    let _d = start_daemon(&home, "full", 0, &[]);
    let after = rt.block_on(async { all_mail(&common::client(&home).await).await });
    assert_eq!(after, kept, "everything as it was before the restart");
    let _ = CMD_TIMEOUT;
}

/// Runs a command; true if it succeeded.
fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// An ext4 file system in a file, on a loop device, that goes read-only on errors (as a
/// system disk is usually mounted). Unmounted on drop.
struct Ext4 {
    image: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl Ext4 {
    fn new(dir: &std::path::Path) -> Option<Ext4> {
        let image = dir.join("fs.img");
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(32 * 1024 * 1024).unwrap();
        drop(f);
        let img = image.to_str().unwrap();
        if !sh(&["mkfs.ext4", "-q", "-F", img]) {
            common::skip("mkfs.ext4 is missing (package e2fsprogs; .ci/run installs it)");
            return None;
        }
        let fs = Ext4 { image, mnt };
        if !fs.mount() {
            eprintln!("SKIPPED: cannot mount a loop device here");
            return None;
        }
        Some(fs)
    }

    fn mount(&self) -> bool {
        sh(&[
            "mount",
            "-o",
            "loop,errors=remount-ro",
            self.image.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ])
    }

    fn device(&self) -> String {
        let out = Command::new("findmnt")
            .args(["-no", "SOURCE"])
            .arg(&self.mnt)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// What the kernel does when it finds the file system damaged: it goes read-only.
    /// False where the kernel does not let us trigger that.
    fn fail(&self) -> bool {
        let dev = self.device();
        let name = dev.rsplit('/').next().unwrap().to_string();
        std::fs::write(format!("/sys/fs/ext4/{name}/trigger_fs_error"), "1").is_ok()
    }

    /// Unmounted, checked and repaired, mounted again (what an administrator does).
    fn repair(&self) {
        assert!(sh(&["umount", self.mnt.to_str().unwrap()]), "umount");
        // e2fsck exits 1 when it fixed something.
        let _ = Command::new("e2fsck").args(["-fy"]).arg(&self.image).output();
        assert!(self.mount(), "mount again");
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn send_req(text: &str) -> Request {
    Request::Send(SendRequest {
        from: "a".into(),
        to: common::TEST_USER.into(),
        text: text.into(),
        reply_to: None,
        id: Some(mesh_node::ids::MessageId::new()),
    })
}

async fn all_mail(c: &Client) -> Vec<(String, String)> {
    common::whole_inbox(c, common::TEST_USER)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id.to_string(), m.text))
        .collect()
}

#[test]
fn a_file_system_gone_read_only_gives_clear_errors_and_damages_nothing() {
    if !is_root() {
        common::skip("the read-only test needs root to mount a file system");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Ext4::new(dir.path()) else { return };
    let home = fs.mnt.join("h");
    std::fs::create_dir(&home).unwrap();
    let d = start_daemon(&home, "ro", 0, &[]);
    let rt = runtime();
    let before = rt.block_on(async {
        let c = common::client(&home).await;
        for i in 0..20 {
            assert!(matches!(
                c.call(send_req(&format!("kept {i}"))).await.unwrap(),
                Response::Sent(_)
            ));
        }
        all_mail(&c).await
    });
    assert_eq!(before.len(), 20);

    if !fs.fail() {
        eprintln!("SKIPPED: this kernel does not let us trigger an ext4 error (/sys/fs/ext4/*/trigger_fs_error)");
        return;
    }
    rt.block_on(async {
        let c = common::client(&home).await;
        for _ in 0..2 {
            match c.call(send_req("refused")).await {
                Err(ClientError::Api(e)) => {
                    assert_eq!(e.code, ErrorCode::Storage, "{}", e.message);
                    assert!(
                        e.message.contains("read-only") && e.message.contains("nothing was changed"),
                        "{}",
                        e.message
                    );
                }
                other => panic!("a write on a read-only file system: {other:?}"),
            }
        }
        // Still up, and what was stored is readable (unread mail is listed without being
        // marked read).
        assert!(matches!(c.call(Request::Status).await.unwrap(), Response::Status(_)));
        let unread = common::inbox_pages(&c, common::TEST_USER, false, true).await.unwrap();
        assert_eq!(unread.len(), 20);
    });
    // It stops cleanly even so.
    let home_str = home.to_str().unwrap().to_string();
    let down = common::run_in(std::path::Path::new(&home_str), &["down"], None);
    assert_eq!(down.code, 0, "{}", down.stderr);
    drop(d);

    // Repaired and mounted again: everything stored is there, unchanged, and it works.
    fs.repair();
    let _d = start_daemon(&home, "ro", 0, &[]);
    rt.block_on(async {
        let c = common::client(&home).await;
        assert_eq!(all_mail(&c).await, before, "nothing stored was damaged");
        assert!(matches!(c.call(send_req("after")).await.unwrap(), Response::Sent(_)));
    });
}

#[test]
fn a_read_only_home_is_refused_at_start_with_a_clear_message() {
    if !is_root() {
        common::skip("the read-only home test needs root to mount a read-only file system");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    std::fs::create_dir(&home).unwrap();
    assert!(sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=8m",
        "tmpfs",
        home.to_str().unwrap()
    ]));
    let _fs = Tmpfs(home.clone());
    let d = start_daemon(&home, "ro", 0, &[]);
    assert_eq!(common::run_in(&home, &["down"], None).code, 0);
    drop(d);
    let store_before = std::fs::read(home.join("store.redb")).unwrap();
    assert!(
        sh(&["mount", "-o", "remount,ro", home.to_str().unwrap()]),
        "remount read-only"
    );
    let out = common::run_in(&home, &["up", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"], None);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("Read-only file system"), "{}", out.stderr);
    assert!(std::fs::read(home.join("store.redb")).unwrap() == store_before);
}
