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

/// The settings this start uses: the ones given now over the ones saved before (unless
/// `--reset`), saved for every later start, also one an MCP adapter makes. A daemon spawned
/// by a starter (`--detach`, an adapter) saves nothing: its starter decided.
fn remember(ctx: &Ctx, given: Overrides, reset: bool) -> anyhow::Result<Overrides> {
    let home = &ctx.home;
    home.create()?;
    let saved = if reset {
        Overrides::default()
    } else {
        settings::load(home)?
    };
    let both = settings::merged(&given, &saved);
    if reset || both != saved {
        settings::save(home, &both)?;
    }
    // The user starts the node: adapters may start it again from now on.
    settings::StopMark::clear(home)?;
    Ok(both)
}

pub async fn run(ctx: &Ctx, a: UpArgs) -> anyhow::Result<()> {
    let given = overrides(&a)?;
    let spawned = std::env::var_os(daemon::READY_ENV).is_some();
    let ov = if spawned { given } else { remember(ctx, given, a.reset)? };
    if a.detach {
        let exe = std::env::current_exe().context("cannot find the mesh executable")?;
        let mut args: Vec<std::ffi::OsString> = vec!["--home".into(), ctx.home.path().into(), "up".into()];
        if let Some(n) = &ov.name {
            args.push("--name".into());
            args.push(n.to_string().into());
        }
        for l in &ov.listen {
            args.push("--listen".into());
            args.push(l.to_string().into());
        }
        if ov.no_mdns {
            args.push("--no-mdns".into());
        }
        if ov.relay {
            args.push("--relay".into());
        }
        if ov.relay_for_anyone {
            args.push("--relay-for-anyone".into());
        }
        if ov.open {
            args.push("--open".into());
        }
        if let Some(m) = ov.metrics {
            args.push("--metrics".into());
            args.push(m.to_string().into());
        }
        for e in &ov.external {
            args.push("--external".into());
            args.push(e.to_string().into());
        }
        let home = ctx.home.clone();
        let outcome = tokio::task::spawn_blocking(move || daemon::spawn_detached(&exe, &args, &home)).await??;
        return match outcome {
            Detached::Started(info) => print_ready(ctx, &info, true),
            Detached::AlreadyRunning(msg) => anyhow::bail!("{msg}"),
        };
    }

    let report = spawned;
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
