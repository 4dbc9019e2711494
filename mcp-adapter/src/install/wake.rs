//! The wake paths `mesh install` sets up next to the MCP entry: Claude Code and Codex hooks
//! (`hooks`, `edit_hooks`) and the OpenCode plugin (`edit_plugin`).

use std::path::{Path, PathBuf};

use super::*;

/// One hook `mesh install` sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookSpec {
    /// The client's event name (`UserPromptSubmit`, ...).
    pub event: &'static str,
    /// The `mesh hook <client> <action>` action.
    pub action: &'static str,
    /// Claude Code: run in the background and wake the model on exit 2.
    pub rewake: bool,
    /// The client's time limit for it, in seconds.
    pub timeout_s: u64,
}

/// How long Claude Code lets a waking hook wait (its default, 10 min, would end it while
/// the session idles); `mesh hook ... wake --max-wait-s` stays below it.
pub const WAKE_HOOK_TIMEOUT_S: u64 = 36_000;

/// The hooks of `client`: mail shown as context on every prompt and tool result, and a
/// waker armed at the start of the session and at the end of every turn (when the session
/// goes idle). OpenCode has a plugin instead ([`OPENCODE_PLUGIN`]).
pub fn hooks(client: Client) -> &'static [HookSpec] {
    const fn context(event: &'static str) -> HookSpec {
        HookSpec {
            event,
            action: "context",
            rewake: false,
            timeout_s: 10,
        }
    }
    // Claude Code runs a waking hook in the background (`asyncRewake`); Codex waits for
    // every hook, so its `wake` only starts a detached waker and returns.
    const fn wake(event: &'static str, rewake: bool) -> HookSpec {
        HookSpec {
            event,
            action: "wake",
            rewake,
            timeout_s: if rewake { WAKE_HOOK_TIMEOUT_S } else { 10 },
        }
    }
    const CLAUDE: &[HookSpec] = &[
        context("SessionStart"),
        wake("SessionStart", true),
        context("UserPromptSubmit"),
        context("PostToolUse"),
        wake("Stop", true),
    ];
    const CODEX: &[HookSpec] = &[
        context("SessionStart"),
        wake("SessionStart", false),
        context("UserPromptSubmit"),
        context("PostToolUse"),
        wake("Stop", false),
    ];
    match client {
        Client::ClaudeCode => CLAUDE,
        Client::Codex => CODEX,
        Client::OpenCode => &[],
    }
}

/// The client's name in `mesh hook <client> ...`.
fn hook_client(client: Client) -> &'static str {
    match client {
        Client::ClaudeCode => "claude-code",
        Client::Codex => "codex",
        Client::OpenCode => "opencode",
    }
}

/// A word for `sh -c`: quoted when it holds anything but plain path characters.
pub fn shell_word(w: &str) -> String {
    if !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c)) {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

/// The shell command of a hook: `mesh [--home DIR] hook <client> <action>`.
pub fn hook_command(entry: &Entry, client: Client, action: &str) -> String {
    let mut words = vec![shell_word(&entry.command)];
    // The entry's args end with `mcp`; what comes before it (`--home DIR`) applies here too.
    let global = entry.args.iter().take_while(|a| a.as_str() != "mcp");
    words.extend(global.map(|a| shell_word(a)));
    words.extend(["hook".to_string(), hook_client(client).to_string(), action.to_string()]);
    words.join(" ")
}

/// Whether a hook command is one of ours (any `mesh` binary, any home).
pub(super) fn is_our_hook(command: &str, client: Client) -> bool {
    command.contains(&format!(" hook {} ", hook_client(client)))
}

/// Where the hooks of `client` go: Claude Code's settings, Codex's `hooks.json` beside its
/// config; OpenCode has none (its plugin, see [`plugin_path`]).
pub fn hooks_path(client: Client, scope: Scope, project: &Path) -> Result<Option<PathBuf>, InstallError> {
    let home = || {
        directories::BaseDirs::new()
            .map(|b| b.home_dir().to_path_buf())
            .ok_or(InstallError::NoHome)
    };
    Ok(match (client, scope) {
        (Client::ClaudeCode, Scope::User) => Some(match std::env::var_os("CLAUDE_CONFIG_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("settings.json"),
            _ => home()?.join(".claude").join("settings.json"),
        }),
        (Client::ClaudeCode, Scope::Project) => Some(project.join(".claude").join("settings.json")),
        (Client::Codex, scope) => config_path(Client::Codex, scope, project)?
            .parent()
            .map(|d| d.join("hooks.json")),
        (Client::OpenCode, _) => None,
    })
}

fn hook_group(spec: &HookSpec, entry: &Entry, client: Client) -> serde_json::Value {
    let mut hook = serde_json::json!({
        "type": "command",
        "command": hook_command(entry, client, spec.action),
        "timeout": spec.timeout_s,
    });
    if spec.rewake {
        hook["asyncRewake"] = true.into();
        hook["rewakeMessage"] = "New agentmesh mail arrived while you were idle:".into();
        hook["rewakeSummary"] = "agentmesh: new mail".into();
    }
    serde_json::json!({ "hooks": [hook] })
}

/// Adds our hooks to (or, with `entry` None, removes them from) a hooks file in the shape
/// Claude Code and Codex share, `{"hooks": {"<Event>": [{"matcher"?, "hooks": [...]}]}}`,
/// keeping every other key and hook.
pub fn edit_hooks(path: &Path, client: Client, entry: Option<&Entry>) -> Result<Change, InstallError> {
    let original = read(path)?;
    let text = match &original {
        Some(t) if !t.trim().is_empty() => t.clone(),
        _ if entry.is_none() => return Ok(Change::Absent),
        _ => "{}".to_string(),
    };
    let shape = |message: &str| InstallError::Shape {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let before: serde_json::Value = serde_json::from_str(&text).map_err(|e| InstallError::Parse {
        path: path.to_path_buf(),
        format: "JSON",
        message: e.to_string(),
    })?;
    let mut root = before.clone();
    let obj = root
        .as_object_mut()
        .ok_or_else(|| shape("the top level is not an object"))?;
    if !obj.contains_key("hooks") && entry.is_none() {
        return Ok(Change::Absent);
    }
    let hooks = obj
        .entry("hooks")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| shape("\"hooks\" is not an object"))?;
    // Take ours out wherever they are.
    let mut had = false;
    for (_, groups) in hooks.iter_mut() {
        let Some(groups) = groups.as_array_mut() else { continue };
        for g in groups.iter_mut() {
            if let Some(list) = g.get_mut("hooks").and_then(|h| h.as_array_mut()) {
                let n = list.len();
                list.retain(|h| !h["command"].as_str().is_some_and(|c| is_our_hook(c, client)));
                had |= list.len() != n;
            }
        }
        groups.retain(|g| g.get("hooks").and_then(|h| h.as_array()).is_none_or(|l| !l.is_empty()));
    }
    hooks.retain(|_, groups| groups.as_array().is_none_or(|g| !g.is_empty()));
    if let Some(entry) = entry {
        for spec in self::hooks(client) {
            let groups = hooks
                .entry(spec.event)
                .or_insert_with(|| serde_json::json!([]))
                .as_array_mut()
                .ok_or_else(|| shape(&format!("hooks.{} is not a list", spec.event)))?;
            groups.push(hook_group(spec, entry, client));
        }
    } else if hooks.is_empty()
        && !before
            .get("hooks")
            .is_some_and(|h| h.as_object().is_some_and(|o| o.is_empty()))
    {
        obj.remove("hooks");
    }
    if root == before {
        return Ok(if entry.is_some() {
            Change::Unchanged
        } else {
            Change::Absent
        });
    }
    let mut out = serde_json::to_string_pretty(&root).map_err(|e| shape(&e.to_string()))?;
    out.push('\n');
    write(path, &out)?;
    Ok(match (entry.is_some(), had) {
        (true, false) => Change::Added,
        (true, true) => Change::Updated,
        (false, _) => Change::Removed,
    })
}

/// Sets Codex's `tool_timeout_sec` on our MCP entry in `config.toml`, so that `wait` can
/// block for longer than Codex's default 60 s.
pub const CODEX_TOOL_TIMEOUT_S: i64 = 660;

/// The agentmesh plugin for OpenCode (`mesh install opencode` writes it with the `mesh`
/// command filled in).
pub const OPENCODE_PLUGIN: &str = include_str!("../opencode-plugin.js");

/// Where the OpenCode plugin goes: `plugin/agentmesh.js` in OpenCode's config directory
/// (user) or in the project's `.opencode/`.
pub fn plugin_path(scope: Scope, project: &Path) -> Result<PathBuf, InstallError> {
    Ok(match scope {
        Scope::User => config_path(Client::OpenCode, Scope::User, project)?
            .parent()
            .map(|d| d.join("plugin").join("agentmesh.js"))
            .ok_or(InstallError::NoHome)?,
        Scope::Project => project.join(".opencode").join("plugin").join("agentmesh.js"),
    })
}

/// The plugin's text for this `mesh` entry.
pub fn plugin_text(entry: &Entry) -> String {
    let mut argv = vec![entry.command.clone()];
    argv.extend(entry.args.iter().take_while(|a| a.as_str() != "mcp").cloned());
    let argv = serde_json::to_string(&argv).unwrap_or_else(|_| "[\"mesh\"]".into());
    OPENCODE_PLUGIN.replace("__MESH_ARGV__", &argv)
}

/// Writes (or, with `entry` None, removes) the OpenCode plugin at `path`.
pub fn edit_plugin(path: &Path, entry: Option<&Entry>) -> Result<Change, InstallError> {
    let have = read(path)?;
    match entry {
        Some(entry) => {
            let want = plugin_text(entry);
            match have {
                Some(h) if h == want => Ok(Change::Unchanged),
                Some(_) => write(path, &want).map(|_| Change::Updated),
                None => write(path, &want).map(|_| Change::Added),
            }
        }
        None => match have {
            Some(_) => std::fs::remove_file(path)
                .map(|_| Change::Removed)
                .map_err(|source| InstallError::Io {
                    path: path.to_path_buf(),
                    source,
                }),
            None => Ok(Change::Absent),
        },
    }
}
