//! `mesh down`.

use std::time::Duration;

use mesh_node::api::LocalApi;
use mesh_node::settings;

use super::{Ctx, NotRunning};

/// How long `down` waits for the daemon to release its home (it first finishes the work
/// in flight: `mesh_node::daemon::DRAIN_TIMEOUT` plus `FLUSH_TIMEOUT` at most).
const WAIT: Duration = Duration::from_secs(30);

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    // First the mark, so that no MCP adapter starts the node again once it is gone: it
    // stays down until `mesh up`.
    // A home that cannot be written (a full or read-only disk) still gets its node stopped.
    if ctx.home.path().exists()
        && let Err(e) = settings::StopMark::set(&ctx.home)
    {
        eprintln!("warning: {e}; an agent client may start the node again before `mesh up`");
    }
    let client = match ctx.client().await {
        Ok(c) => c,
        Err(e) if e.downcast_ref::<NotRunning>().is_some() => {
            eprintln!(
                "no agentmesh daemon is running for home {}; it stays down until `mesh up`",
                ctx.home.path().display()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let name = client.node().name.clone();
    client.shutdown().await?;
    // The daemon holds daemon.lock until it has flushed and let go of everything.
    let lock = ctx.home.lock_path();
    let released = tokio::task::spawn_blocking(move || {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let r = std::fs::File::open(&lock).and_then(|f| f.lock());
            let _ = tx.send(r.is_ok());
        });
        rx.recv_timeout(WAIT).unwrap_or(false)
    })
    .await?;
    if !released {
        anyhow::bail!(
            "the daemon was asked to stop but still holds its home after {} s",
            WAIT.as_secs()
        );
    }
    if !ctx.json {
        crate::outln!("stopped node {name}; it stays down until `mesh up` (agents' adapters will not restart it)");
    } else {
        crate::output::json(&serde_json::json!({ "stopped": name }))?;
    }
    Ok(())
}
