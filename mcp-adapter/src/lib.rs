//! mesh-mcp: the agentmesh MCP adapter.
//!
//! `mesh mcp` runs [`run_stdio`]: an MCP server on stdin/stdout (built with `rmcp`) that
//! makes the MCP client's session one named agent on the mesh. It reaches the node only
//! through the local API (starting the daemon if none runs), never libp2p or redb.
//!
//! * [`server::MeshServer`]: the tools (`whoami`, `list_agents`, `send`, `inbox`, `wait`,
//!   `history`, `set_summary`, `subscribe`, `unsubscribe`, `topics`, `publish`, `peers`,
//!   `dial`), the `claude/channel` push, the unread notice on every result.
//! * [`backend`]: the [`backend::Backend`] trait and the daemon-backed implementation.
//! * [`session`]: client kind, directory, git repository, derived agent name.
//! * [`render`]: how results read to a model.
//! * [`install`]: `mesh install` / `mesh uninstall` for Claude Code, Codex and OpenCode:
//!   the MCP server entry and each client's wake path (hooks, plugin).
//! * [`wake`]: mail for a session from outside its MCP connection (`mesh hook`): finding the
//!   session's agent, showing its mail as context, waking an idle client.
//!
//! Both MCP eras are served: the `initialize` handshake and the stateless 2026-07-28
//! revision (`server/discover`, client info in each request's `_meta`). The session
//! attaches on the first request that names the client, of either kind.
//!
//! ```
//! assert_eq!(mesh_mcp::session::client_kind("claude-code"), "claude-code");
//! assert!(mesh_mcp::render::notice(0, 0).is_none());
//! ```

pub mod backend;
pub mod install;
pub mod render;
pub mod server;
pub mod session;
pub mod wake;

use std::path::PathBuf;
use std::time::Duration;

use mesh_node::home::Home;
use rmcp::ServiceExt;

/// How often the adapter checks that the client that started it is still alive.
pub const PARENT_CHECK: Duration = Duration::from_secs(1);

/// What `mesh mcp` needs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node's home.
    pub home: Home,
    /// `--name` / `MESH_AGENT`.
    pub name: Option<String>,
    /// The `mesh` binary, to start a daemon when none runs.
    pub exe: PathBuf,
}

/// Errors that end the adapter.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// The MCP transport failed.
    #[error("MCP session failed: {0}")]
    Mcp(String),
    /// The working directory is unusable.
    #[error("cannot read the current directory: {0}")]
    Cwd(std::io::Error),
}

/// Serves one MCP session on stdin/stdout until the client goes away (stdin closes, or the
/// parent process dies). stdout carries only the protocol; logs go to stderr.
pub async fn run_stdio(opts: Options) -> Result<(), AdapterError> {
    let cwd = std::env::current_dir().map_err(AdapterError::Cwd)?;
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
    let backend = backend::DaemonBackend::new(opts.home.clone(), opts.exe.clone());
    let server = server::MeshServer::new(
        backend,
        server::SessionConfig {
            explicit_name: opts.name.clone(),
            cwd,
            client_pid: parent,
        },
    );
    let service = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| AdapterError::Mcp(e.to_string()))?;
    let token = service.cancellation_token();
    // If the client dies without closing our stdin (it was inherited elsewhere), we are
    // re-parented: end the session so the agent goes offline at once.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PARENT_CHECK);
        loop {
            tick.tick().await;
            let now = rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32);
            if now != parent {
                tracing::info!("the MCP client is gone; ending the session");
                token.cancel();
                break;
            }
        }
    });
    let reason = service.waiting().await.map_err(|e| AdapterError::Mcp(e.to_string()))?;
    tracing::info!(?reason, "MCP session ended");
    Ok(())
}
