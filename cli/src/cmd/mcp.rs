//! `mesh mcp`: stdout belongs to the MCP protocol; everything else goes to stderr.

use anyhow::Context;

use super::Ctx;
use crate::cli::McpArgs;

pub async fn run(ctx: &Ctx, a: McpArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the mesh executable")?;
    let opts = mesh_mcp::Options {
        home: ctx.home.clone(),
        name: a.name.filter(|n| !n.trim().is_empty()),
        exe,
    };
    mesh_mcp::run_stdio(opts).await?;
    Ok(())
}
