//! Figures 2 and 6: the clients, `mesh mcp` and `mesh send`, as agents run them.

use std::time::Instant;

use anyhow::bail;
use serde_json::json;

use super::{Baseline, Pair};
use crate::daemons::{Lab, agents_online, wait_known};
use crate::mcp::Mcp;
use crate::stats::{Row, Samples, ms};

/// Figure 2: MCP send to channel push.
pub async fn mcp_rows(lab: &Lab, p: &Pair, base: &Baseline, quick: bool) -> anyhow::Result<Vec<Row>> {
    let s = mcp_latency(lab, p, if quick { 50 } else { 500 }).await?;
    let p50 = ms(s.pct(50.0));
    Ok(vec![
        Row::new("2. MCP send to channel push p50 (2 adapters)", p50, "ms")
            .baseline(base.p50)
            .target("< 2 ms", p50 < 2.0)
            .note(format!("p99 {} ms, {} samples", ms(s.pct(99.0)), s.len())),
    ])
}

/// Figure 6: the commands as whole processes.
pub async fn command_rows(lab: &Lab, p: &Pair, quick: bool) -> anyhow::Result<Vec<Row>> {
    let (send, init) = commands(lab, p, if quick { 5 } else { 30 }).await?;
    let (s50, i50) = (ms(send.pct(50.0)), ms(init.pct(50.0)));
    Ok(vec![
        Row::new("6. `mesh send` whole process p50", s50, "ms")
            .target("15 ms", s50 <= 15.0)
            .note(format!("p99 {} ms", ms(send.pct(99.0)))),
        Row::new("6. `mesh mcp` spawn to initialize p50", i50, "ms")
            .target("50 ms", i50 <= 50.0)
            .note(format!("p99 {} ms", ms(init.pct(99.0)))),
    ])
}

/// Figure 2: tools/call `send` on one `mesh mcp` to `notifications/claude/channel` on
/// another, through two daemons.
pub async fn mcp_latency(lab: &Lab, p: &Pair, n: usize) -> anyhow::Result<Samples> {
    let mut rx = Mcp::spawn(&lab.bin, p.b.home.path(), "bench-rx")?;
    rx.initialize().await?;
    let mut tx = Mcp::spawn(&lab.bin, p.a.home.path(), "bench-tx")?;
    tx.initialize().await?;
    // Any tool waits for the session to be attached; then the recipient must be known.
    tx.tool("whoami", json!({})).await?;
    rx.tool("whoami", json!({})).await?;
    wait_known(&p.ca, "bench-rx@b").await?;
    let mut samples = Samples::default();
    for i in 0..n + n / 10 {
        let t0 = Instant::now();
        let id = tx
            .request(
                "tools/call",
                json!({"name": "send", "arguments": {"to": "bench-rx@b", "text": format!("ping {i}")}}),
            )
            .await?;
        let (at, push) = rx.notification("notifications/claude/channel").await?;
        if push["params"]["content"] != format!("ping {i}") {
            bail!("unexpected push {push}");
        }
        tx.response(id).await?;
        if i >= n / 10 {
            samples.push(at - t0);
        }
    }
    Ok(samples)
}

/// Figure 6: `mesh send` as a whole process, and `mesh mcp` from spawn to initialize.
pub async fn commands(lab: &Lab, p: &Pair, n: usize) -> anyhow::Result<(Samples, Samples)> {
    let rx = p.b.client().await?;
    let _ev = agents_online(&rx, &["cmdsink".to_string()]).await?;
    wait_known(&p.ca, "cmdsink@b").await?;
    let mut send = Samples::default();
    for i in 0..n + 2 {
        let (bin, home) = (lab.bin.clone(), p.a.home.path().to_path_buf());
        let took = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let out = std::process::Command::new(&bin)
                .arg("--home")
                .arg(&home)
                .args(["send", "cmdsink@b", &format!("cmd {i}")])
                .output()?;
            if !out.status.success() {
                bail!("mesh send failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(t0.elapsed())
        })
        .await??;
        if i >= 2 {
            send.push(took);
        }
    }
    let mut init = Samples::default();
    for i in 0..n + 2 {
        let t0 = Instant::now();
        let mut m = Mcp::spawn(&lab.bin, p.a.home.path(), &format!("probe{i}"))?;
        let at = m.initialize().await?;
        if i >= 2 {
            init.push(at - t0);
        }
    }
    Ok((send, init))
}
