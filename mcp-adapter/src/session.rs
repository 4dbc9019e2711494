//! Who a session is: the client's kind, its directory and git repository, and the agent
//! name derived from them.

use std::path::{Path, PathBuf};

use mesh_node::ids::AgentName;

/// The agent clients agentmesh knows by name.
pub fn client_kind(client_name: &str) -> &'static str {
    let n = client_name.to_ascii_lowercase();
    if n.contains("claude") {
        "claude-code"
    } else if n.contains("codex") {
        "codex"
    } else if n.contains("opencode") {
        "opencode"
    } else {
        "other"
    }
}

/// How an MCP connection was set up, which decides whether the server can reach the client
/// unasked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// The `initialize` handshake (revisions up to 2025-11-25): one session per connection;
    /// the server may send notifications at any time.
    Initialize,
    /// The stateless revision 2026-07-28: no handshake, the client info and capabilities
    /// come in each request's `_meta`; no unsolicited notifications on stdio.
    Stateless,
}

/// The protocol revisions `server/discover` offers a client of `kind`. Claude Code takes
/// the stateless revision when it is offered, and registers channel notifications only on
/// a connection that used the `initialize` handshake; so it is offered only the revisions
/// that have one, and falls back to `initialize`. Every other client is offered all.
pub fn offered_versions(kind: &str) -> Vec<rmcp::model::ProtocolVersion> {
    use rmcp::model::ProtocolVersion;
    ProtocolVersion::KNOWN_VERSIONS
        .iter()
        .filter(|v| kind != "claude-code" || v.has_initialize())
        .cloned()
        .collect()
}

/// What the adapter does with a message that arrives for its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Nothing: the client cannot be reached unasked (stateless era, or a client that
    /// drops custom notifications). Tool results, hooks and plugins show the mail.
    Never,
    /// Send `notifications/claude/channel`, but count nothing as shown: Claude Code on a
    /// handshake-era connection shows the push only if channels are enabled for this server
    /// (a launch flag, an allowlist, its own feature gate), and it tells the server nothing
    /// about that. So the message stays new, and the hook or a tool result shows it too.
    Attempt,
    /// Send it and count it as shown (marked `notified`): the client itself declared the
    /// `claude/channel` capability, i.e. that it registered for the notifications.
    Confirmed,
}

/// How to push to a client named `client_name` on a connection of `era` that declared
/// `capabilities`.
pub fn push_policy(client_name: &str, era: Era, capabilities: &rmcp::model::ClientCapabilities) -> Push {
    if client_kind(client_name) != "claude-code" || era != Era::Initialize {
        return Push::Never;
    }
    let declared = capabilities
        .experimental
        .as_ref()
        .is_some_and(|e| e.contains_key(crate::server::CHANNEL_CAPABILITY));
    if declared { Push::Confirmed } else { Push::Attempt }
}

/// The git repository around a directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitInfo {
    /// Root of the working tree.
    pub root: Option<PathBuf>,
    /// Current branch (`None` when detached or unknown).
    pub branch: Option<String>,
}

/// Finds the repository containing `dir` by looking for `.git` upwards (a directory, or a
/// file pointing elsewhere as in worktrees and submodules), and reads the branch from
/// `HEAD`. Never runs `git`.
pub fn git_info(dir: &Path) -> GitInfo {
    for d in dir.ancestors() {
        let dot = d.join(".git");
        let git_dir = if dot.is_dir() {
            dot
        } else if dot.is_file() {
            match std::fs::read_to_string(&dot) {
                Ok(s) => match s.trim().strip_prefix("gitdir:") {
                    Some(p) => {
                        let p = PathBuf::from(p.trim());
                        if p.is_absolute() { p } else { d.join(p) }
                    }
                    None => continue,
                },
                Err(_) => continue,
            }
        } else {
            continue;
        };
        let branch = std::fs::read_to_string(git_dir.join("HEAD"))
            .ok()
            .and_then(|h| h.trim().strip_prefix("ref: refs/heads/").map(|b| b.to_string()));
        return GitInfo {
            root: Some(d.to_path_buf()),
            branch,
        };
    }
    GitInfo::default()
}

/// The name a session gets when none is given: `<kind>.<repo or directory name>`, e.g.
/// `claude-code.myrepo` (the daemon adds `-2`, `-3`, ... only when that name is taken).
pub fn derived_name(kind: &str, cwd: &Path, git: &GitInfo) -> AgentName {
    let place = git.root.as_deref().unwrap_or(cwd);
    let base = place
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let text = if base.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}.{base}")
    };
    AgentName::sanitize(&text).unwrap_or_else(|| AgentName::from_login(kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_from_client_names() {
        assert_eq!(client_kind("claude-code"), "claude-code");
        assert_eq!(client_kind("Claude Code"), "claude-code");
        assert_eq!(client_kind("codex-mcp-client"), "codex");
        assert_eq!(client_kind("opencode"), "opencode");
        assert_eq!(client_kind("cursor"), "other");
    }

    #[test]
    fn push_only_where_it_can_be_shown_and_counted_only_when_confirmed() {
        use rmcp::model::ClientCapabilities;
        let plain = ClientCapabilities::default();
        let mut declared = ClientCapabilities::default();
        declared.experimental = Some(
            [(crate::server::CHANNEL_CAPABILITY.to_string(), serde_json::Map::new())]
                .into_iter()
                .collect(),
        );
        assert_eq!(push_policy("claude-code", Era::Initialize, &plain), Push::Attempt);
        assert_eq!(push_policy("claude-code", Era::Initialize, &declared), Push::Confirmed);
        assert_eq!(push_policy("claude-code", Era::Stateless, &declared), Push::Never);
        assert_eq!(push_policy("codex-mcp-client", Era::Initialize, &declared), Push::Never);
        assert_eq!(push_policy("opencode", Era::Initialize, &plain), Push::Never);
    }

    #[test]
    fn claude_code_is_offered_only_handshake_revisions() {
        let claude = offered_versions("claude-code");
        assert!(
            !claude.is_empty() && claude.iter().all(|v| v.has_initialize()),
            "{claude:?}"
        );
        let others = offered_versions("codex");
        assert!(
            others.contains(&rmcp::model::ProtocolVersion::V_2026_07_28),
            "{others:?}"
        );
    }

    #[test]
    fn finds_repository_and_branch() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("my repo");
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref: refs/heads/feature/x\n").unwrap();
        let sub = repo.join("src/deep");
        std::fs::create_dir_all(&sub).unwrap();
        let g = git_info(&sub);
        assert_eq!(g.root.as_deref(), Some(repo.as_path()));
        assert_eq!(g.branch.as_deref(), Some("feature/x"));
        assert_eq!(derived_name("claude-code", &sub, &g).as_str(), "claude-code.my-repo");

        // A worktree: .git is a file naming the real git dir.
        let wt = tmp.path().join("wt");
        let real = tmp.path().join("real-gitdir");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::create_dir_all(&wt).unwrap();
        std::fs::write(real.join("HEAD"), "0123456789abcdef\n").unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", real.display())).unwrap();
        let g = git_info(&wt);
        assert_eq!(g.root.as_deref(), Some(wt.as_path()));
        assert_eq!(g.branch, None, "detached head has no branch");

        let plain = tmp.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let g = git_info(&plain);
        // The temp dir may sit inside some repository; only check the name shape.
        let name = derived_name("codex", &plain, &GitInfo::default());
        assert_eq!(name.as_str(), "codex.plain");
        let _ = g;
    }
}
