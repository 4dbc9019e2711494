#![doc = include_str!("../README.md")]

mod daemons;
mod delay;
mod figures;
mod mcp;
#[path = "../../../cli/tests/netns/mod.rs"]
mod netns;
mod raw;
mod stats;

use std::path::PathBuf;

use anyhow::Context;
use serde_json::json;

/// What to run.
pub struct Plan {
    /// Small sample counts and short durations (seconds in all): the CI smoke run.
    pub quick: bool,
    /// Only these figures (empty: all).
    pub only: Vec<u32>,
}

impl Plan {
    fn wants(&self, figure: u32) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu": cpu,
        "kernel": kernel,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}

fn main() -> anyhow::Result<()> {
    let mut plan = Plan {
        quick: false,
        only: Vec::new(),
    };
    let mut out = PathBuf::from("bench-results.json");
    if std::env::args().nth(1).as_deref() == Some(daemons::STAND_IN_ARG) {
        return daemons::stand_in_main(std::env::args().skip(2).collect());
    }
    if std::env::args().nth(1).as_deref() == Some(delay::DELAY_ARG) {
        return delay::delay_main(std::env::args().skip(2).collect());
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => plan.quick = true,
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--only" => {
                plan.only = args
                    .next()
                    .context("--only needs figure numbers, e.g. 1,3")?
                    .split(',')
                    .map(|x| x.trim().parse())
                    .collect::<Result<_, _>>()
                    .context("--only takes figure numbers, e.g. 1,3")?;
            }
            "-h" | "--help" => {
                println!(
                    "mesh-bench [--quick] [--only 1,3,...] [--out FILE]\n\n{}",
                    include_str!("../README.md")
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if cfg!(debug_assertions) && !plan.quick {
        eprintln!("note: a debug build; figures mean little (build with --release)");
    }
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let rows = rt.block_on(figures::run(&plan))?;
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    stats::print_table(&rows);
    let doc = json!({
        "machine": machine(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "quick": plan.quick,
        "took_s": started.elapsed().as_secs(),
        "rows": rows,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    println!("\nwrote {} ({} s)", out.display(), started.elapsed().as_secs());
    Ok(())
}
