//! `mesh up`.

use anyhow::Context;
use mesh_node::config::Overrides;
use mesh_node::daemon::{self, DaemonError, DaemonOptions, Detached, ReadyInfo, ReadyLine};
use mesh_node::ids::NodeName;
use mesh_node::settings;

use super::Ctx;
use crate::cli::UpArgs;
use crate::output;

fn overrides(a: &UpArgs) -> anyhow::Result<Overrides> {
    let name = a.name.as_deref().map(NodeName::new).transpose()?;
    let listen = a
        .listen
        .iter()
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("malformed --listen address {s:?}: {e} (example: /ip4/0.0.0.0/tcp/4001)"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let external = a
        .external
        .iter()
        .map(|s| {
            s.trim().parse().map_err(|e| {
                anyhow::anyhow!("malformed --external address {s:?}: {e} (example: /ip4/203.0.113.7/tcp/4001)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Overrides {
        name,
        listen,
        no_mdns: a.no_mdns,
        relay: a.relay,
        external,
        open: a.open,
        relay_for_anyone: a.relay_for_anyone,
        metrics: a.metrics,
    })
}

fn print_ready(ctx: &Ctx, info: &ReadyInfo, detached: bool) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(info);
    }
    crate::outln!(
        "agentmesh node {} is {}",
        info.name,
        if detached { "running in the background" } else { "up" }
    );
    crate::outln!("  peer id  {}", info.peer_id);
    crate::outln!("  home     {}", info.home.display());
    for a in &info.listen {
        crate::outln!("  listen   {a}/p2p/{}", info.peer_id);
    }
    if let Some(m) = info.metrics {
        crate::outln!("  metrics  http://{m}/metrics");
    }
    if detached {
        crate::outln!("  pid      {}  (log: {})", info.pid, ctx.home.log_path().display());
        crate::outln!("stop it with: {} down", ctx.mesh());
    }
    Ok(())
}

/// The settings this start uses: the ones given now over the ones saved before (none with
/// `--reset`), and what to save once the node is up (`None`: nothing changed). Saved only
/// after a successful start, so a start that fails (another node runs, a bad address)
/// leaves the saved settings as they were.
fn effective(ctx: &Ctx, given: Overrides, reset: bool) -> anyhow::Result<(Overrides, Option<Overrides>)> {
    let saved = if reset {
        Overrides::default()
    } else {
        settings::load(&ctx.home)?
    };
    let both = settings::merged(&given, &saved);
    let save = (reset || both != saved).then(|| both.clone());
    Ok((both, save))
}

/// Saves what `mesh up` was told, for every later start (also one an MCP adapter makes).
fn remember(ctx: &Ctx, save: Option<Overrides>) {
    if let Some(s) = save {
        match settings::save(&ctx.home, &s) {
            Ok(()) if !ctx.json => {
                crate::outln!(
                    "settings saved for every later start ({} up --reset forgets them)",
                    ctx.mesh()
                )
            }
            Ok(()) => {}
            Err(e) => eprintln!("warning: {e}; later starts will not use these settings"),
        }
    }
}

pub async fn run(ctx: &Ctx, a: UpArgs) -> anyhow::Result<()> {
    let given = overrides(&a)?;
    // A daemon spawned by a starter (`--detach`, an MCP adapter) saves nothing: its
    // starter decides. One an adapter starts refuses once the user stopped the node with
    // `mesh down` (the adapter checked, but `mesh down` may have come in between).
    let spawned = std::env::var_os(daemon::READY_ENV).is_some();
    if spawned && daemon::started_by_adapter() && settings::StopMark::is_set(&ctx.home) {
        daemon::report_ready(&ReadyLine::Failed(DaemonError::StoppedByUser.to_string()));
        return Err(DaemonError::StoppedByUser.into());
    }
    ctx.home.create()?;
    // Before anything in the home is read (a linked settings.toml would be read as us).
    ctx.home.check_files()?;
    let (ov, save) = effective(ctx, given, a.reset)?;
    if !spawned {
        // The user starts the node: adapters may start it again from now on.
        settings::StopMark::clear(&ctx.home)?;
    }
    let save = if spawned { None } else { save };
    if a.detach {
        let exe = std::env::current_exe().context("cannot find the mesh executable")?;
        let args = detached_args(ctx, &ov, a.reset);
        let home = ctx.home.clone();
        let outcome = tokio::task::spawn_blocking(move || daemon::spawn_detached(&exe, &args, &home)).await??;
        return match outcome {
            Detached::Started(info) => {
                print_ready(ctx, &info, true)?;
                remember(ctx, save);
                Ok(())
            }
            Detached::AlreadyRunning(msg) => anyhow::bail!("{msg}"),
        };
    }
    foreground(ctx, ov, save, spawned).await
}

/// The arguments of the detached daemon's own `mesh up`: these settings, the same home.
fn detached_args(ctx: &Ctx, ov: &Overrides, reset: bool) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["--home".into(), ctx.home.path().into(), "up".into()];
    let mut flag = |name: &str, value: Option<String>| {
        args.push(name.into());
        args.extend(value.map(Into::into));
    };
    if let Some(n) = &ov.name {
        flag("--name", Some(n.to_string()));
    }
    for l in &ov.listen {
        flag("--listen", Some(l.to_string()));
    }
    for (set, name) in [
        (ov.no_mdns, "--no-mdns"),
        (ov.relay, "--relay"),
        (ov.relay_for_anyone, "--relay-for-anyone"),
        (ov.open, "--open"),
    ] {
        if set {
            flag(name, None);
        }
    }
    if let Some(m) = ov.metrics {
        flag("--metrics", Some(m.to_string()));
    }
    for e in &ov.external {
        flag("--external", Some(e.to_string()));
    }
    if reset {
        flag("--reset", None);
    }
    args
}

/// Runs the daemon in this process until it stops; a spawned one reports its start (or
/// why it failed) to its starter.
async fn foreground(ctx: &Ctx, ov: Overrides, save: Option<Overrides>, report: bool) -> anyhow::Result<()> {
    let opts = DaemonOptions {
        home: ctx.home.clone(),
        overrides: ov,
        user: None,
    };
    let result = daemon::run_foreground(opts, |info| {
        if report {
            daemon::report_ready(&ReadyLine::Ready(info.clone()));
        } else if let Err(e) = print_ready(ctx, info, false) {
            tracing::warn!(error = %e, "cannot print the ready message");
        }
        remember(ctx, save);
    })
    .await;
    if let Err(e) = &result
        && report
    {
        let line = match e {
            DaemonError::AlreadyRunning { .. } => ReadyLine::AlreadyRunning(e.to_string()),
            _ => ReadyLine::Failed(e.to_string()),
        };
        daemon::report_ready(&line);
    }
    Ok(result?)
}
