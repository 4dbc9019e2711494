//! `connect_or_spawn`: a client's connection to its home's daemon, which it starts when none
//! runs, unless the node was stopped with `mesh down`.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use super::DaemonError;
use super::detach::{Detached, spawn_on_demand};
use crate::home::Home;
use crate::settings;

/// Set by [`connect_or_spawn`] on the `mesh up` it starts: a start on demand, which a
/// `mesh down` that came in between must still stop.
pub const ON_DEMAND_ENV: &str = "MESH_STARTED_ON_DEMAND";

/// Whether this process is a `mesh up` started on demand by [`connect_or_spawn`].
pub fn started_by_adapter() -> bool {
    std::env::var_os(ON_DEMAND_ENV).is_some()
}

/// How long [`connect_or_spawn`] keeps trying to reach a daemon that another process is
/// starting at the same moment.
pub const START_RACE_WAIT: Duration = Duration::from_secs(15);

/// Connects to the daemon of `home`, starting one (`exe --home <home> up`, detached) if none
/// runs, unless the node was stopped with `mesh down` ([`DaemonError::StoppedByUser`]). Two callers racing end up on the same daemon: the loser's start reports "already
/// running" and it connects to the winner once its socket answers.
pub async fn connect_or_spawn(
    home: &Home,
    exe: &Path,
    client_name: &str,
) -> Result<crate::api::client::Client, DaemonError> {
    use crate::api::client::{Client, ClientError};
    // Connect; if nobody answers, start a daemon (or let a racing starter win) and try
    // again. A daemon that just died (its lock still held for a moment, its socket
    // resetting connections) is waited out the same way.
    let deadline = tokio::time::Instant::now() + START_RACE_WAIT;
    let mut step = Duration::from_millis(10);
    let mut started: Option<Detached> = None;
    let mut last_spawn = None;
    loop {
        match Client::connect(home, client_name).await {
            Ok(c) => return Ok(c),
            Err(ClientError::NotRunning { .. }) => {}
            Err(e) => return Err(DaemonError::Other(e.to_string())),
        }
        // Stopped with `mesh down`: the user's word holds until `mesh up`.
        if settings::StopMark::is_set(home) {
            return Err(DaemonError::StoppedByUser);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(DaemonError::Other(match started {
                Some(Detached::Started(i)) => format!("a daemon was started (pid {}) but cannot be reached", i.pid),
                Some(Detached::AlreadyRunning(m)) => format!("a daemon holds the home but does not answer: {m}"),
                None => "no daemon could be started".into(),
            }));
        }
        // Start one unless one was started here, or another starter won less than a second
        // ago (it is opening its socket).
        let recently = last_spawn.is_some_and(|t: tokio::time::Instant| t.elapsed() < Duration::from_secs(1));
        if !matches!(started, Some(Detached::Started(_))) && !recently {
            last_spawn = Some(tokio::time::Instant::now());
            let args: Vec<OsString> = vec!["--home".into(), home.path().into(), "up".into()];
            let (h, x) = (home.clone(), exe.to_path_buf());
            let outcome = tokio::task::spawn_blocking(move || spawn_on_demand(&x, &args, &h))
                .await
                .map_err(|e| DaemonError::Other(e.to_string()))?;
            let outcome = match outcome {
                Err(_) if settings::StopMark::is_set(home) => return Err(DaemonError::StoppedByUser),
                other => other?,
            };
            if let Detached::Started(info) = &outcome {
                tracing::info!(peer_id = %info.peer_id, pid = info.pid, "started a daemon");
            }
            started = Some(outcome);
        }
        // A daemon started by someone else may still be opening its socket.
        tokio::time::sleep(step).await;
        step = (step * 2).min(Duration::from_millis(200));
    }
}
