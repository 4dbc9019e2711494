//! Detached start: the daemon double-forked into a session of its own, reporting on a ready
//! pipe (one JSON line on its stdout), logging to `<home>/daemon.log`.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{DETACH_TIMEOUT, DaemonError, ON_DEMAND_ENV, READY_ENV, ReadyInfo, private_file};
use crate::home::Home;

/// The line a daemon started by [`spawn_detached`] writes on stdout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ReadyLine {
    /// Started.
    Ready(ReadyInfo),
    /// Another daemon already runs on this home.
    AlreadyRunning(String),
    /// Could not start.
    Failed(String),
}

/// Writes the ready line for a detached daemon, then points stdout at /dev/null so nothing
/// else is written into the parent's pipe.
pub fn report_ready(line: &ReadyLine) {
    let Ok(text) = serde_json::to_string(line) else { return };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    drop(out);
    silence_stdout();
}

#[allow(unsafe_code)]
fn silence_stdout() {
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: both descriptors are open for the duration of the call, and dup2 only
        // replaces descriptor 1; `null` is closed afterwards, fd 1 keeps its own reference.
        unsafe {
            libc::dup2(null.as_raw_fd(), 1);
        }
    }
}

/// What [`spawn_detached`] found.
#[derive(Clone, Debug)]
pub enum Detached {
    /// A new daemon started.
    Started(ReadyInfo),
    /// One was already running.
    AlreadyRunning(String),
}

/// Makes `cmd` start a daemon that belongs to nobody: the process spawned starts a session
/// of its own (no terminal, its own process group, so Ctrl-C and a client that kills its
/// server's process group do not reach it), forks, and exits, so that the daemon is not a
/// descendant of the caller either (a client that kills its MCP server's whole process
/// tree, as OpenCode does, leaves it running).
#[allow(unsafe_code)]
pub fn detach(cmd: &mut Command) {
    // SAFETY: between fork and exec only async-signal-safe calls are made (setsid, fork,
    // _exit), and nothing is allocated. The intermediate process exits at once with
    // `_exit` (no destructors, no atexit handlers); the grandchild goes on to exec, so
    // std's exec-error pipe (close-on-exec) still reports a failed exec to the caller.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
}

pub(super) fn spawn_on_demand(exe: &Path, args: &[OsString], home: &Home) -> Result<Detached, DaemonError> {
    spawn_detached_with(exe, args, home, &[(ON_DEMAND_ENV, "1")])
}

/// Starts `exe args...` (which must be `mesh ... up ...` without `--detach`) as a daemon
/// that outlives its starter (see `detach`), logging to `<home>/daemon.log`, and waits
/// until it reports ready.
pub fn spawn_detached(exe: &Path, args: &[OsString], home: &Home) -> Result<Detached, DaemonError> {
    spawn_detached_with(exe, args, home, &[])
}

fn spawn_detached_with(
    exe: &Path,
    args: &[OsString],
    home: &Home,
    env: &[(&str, &str)],
) -> Result<Detached, DaemonError> {
    home.create()?;
    home.check_files()?;
    let log_path = home.log_path();
    let log = private_file()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| DaemonError::Other(format!("cannot open log {}: {e}", log_path.display())))?;
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .envs(env.iter().copied())
        .env(READY_ENV, "1")
        // Not the starter's directory (a project the user may want to delete or unmount).
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| DaemonError::Other(format!("cannot start {}: {e}", exe.display())))?;
    // The process spawned only forks the daemon and exits (see `detach`): reap it.
    let _ = child.wait();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| DaemonError::Other("no stdout pipe".into()))?;
    read_ready(stdout, &log_path)
}

/// The ready line the daemon writes on `stdout`, within [`DETACH_TIMEOUT`]; the end of its
/// log (at `log_path`) when it exits without one.
fn read_ready(stdout: ChildStdout, log_path: &Path) -> Result<Detached, DaemonError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(DETACH_TIMEOUT).map_err(|_| {
        DaemonError::Other(format!(
            "the daemon did not report ready within {} s; see {}",
            DETACH_TIMEOUT.as_secs(),
            log_path.display()
        ))
    })?;
    match serde_json::from_str::<ReadyLine>(line.trim()) {
        Ok(ReadyLine::Ready(info)) => Ok(Detached::Started(info)),
        Ok(ReadyLine::AlreadyRunning(msg)) => Ok(Detached::AlreadyRunning(msg)),
        Ok(ReadyLine::Failed(msg)) => Err(DaemonError::Other(msg)),
        Err(_) => {
            let tail = std::fs::read_to_string(log_path)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(5)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            Err(DaemonError::Other(format!(
                "the daemon exited before it was ready; last log lines:\n{tail}"
            )))
        }
    }
}
