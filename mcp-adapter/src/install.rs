//! `mesh install` / `mesh uninstall`: add or remove the `agentmesh` MCP server entry in an
//! agent client's configuration, keeping everything else in the file (other servers,
//! settings, comments, formatting). Safe to run twice.

use std::path::{Path, PathBuf};

use jsonc_parser::ParseOptions;
use jsonc_parser::cst::{CstInputValue, CstObject, CstRootNode};

mod codex;
mod wake;

pub use codex::{CodexTrustError, trust_codex_hooks};
pub use wake::*;

/// Name of our entry in every client's configuration.
pub const SERVER_NAME: &str = "agentmesh";

/// Clients `mesh install` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// Claude Code.
    ClaudeCode,
    /// Codex CLI.
    Codex,
    /// OpenCode.
    OpenCode,
}

impl Client {
    /// Human name.
    pub fn label(self) -> &'static str {
        match self {
            Client::ClaudeCode => "Claude Code",
            Client::Codex => "Codex",
            Client::OpenCode => "OpenCode",
        }
    }
}

/// User-wide or one project.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every project of this user.
    User,
    /// The project in a directory.
    Project,
}

/// The command a client should run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path of the `mesh` binary.
    pub command: String,
    /// Its arguments (`mcp`, possibly `--home DIR` before it).
    pub args: Vec<String>,
}

/// What happened to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Our entry was added.
    Added,
    /// Our entry was there with other values and was replaced.
    Updated,
    /// Our entry was already exactly right; the file was not touched.
    Unchanged,
    /// Our entry was removed.
    Removed,
    /// There was no entry to remove; the file was not touched.
    Absent,
}

/// Errors of install/uninstall.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid for its format; it was not touched.
    #[error("{path} is not valid {format}: {message}; it was left unchanged (fix it, or pass --config FILE)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// JSON, JSONC or TOML.
        format: &'static str,
        /// Parser message.
        message: String,
    },
    /// The file has an unexpected shape where our entry goes.
    #[error("{path}: {message}; it was left unchanged")]
    Shape {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No home directory to find the user configuration in.
    #[error("cannot find your home directory; pass --config FILE")]
    NoHome,
}

/// The configuration file of `client` for `scope`. `project` is the project directory;
/// `existing` tells whether a path exists (to prefer an existing `.jsonc`).
pub fn config_path(client: Client, scope: Scope, project: &Path) -> Result<PathBuf, InstallError> {
    let home = || {
        directories::BaseDirs::new()
            .map(|b| b.home_dir().to_path_buf())
            .ok_or(InstallError::NoHome)
    };
    Ok(match (client, scope) {
        (Client::ClaudeCode, Scope::User) => home()?.join(".claude.json"),
        (Client::ClaudeCode, Scope::Project) => project.join(".mcp.json"),
        (Client::Codex, Scope::User) => match std::env::var_os("CODEX_HOME") {
            Some(h) if !h.is_empty() => PathBuf::from(h).join("config.toml"),
            _ => home()?.join(".codex").join("config.toml"),
        },
        (Client::Codex, Scope::Project) => project.join(".codex").join("config.toml"),
        (Client::OpenCode, scope) => {
            let dir = match scope {
                Scope::User => match std::env::var_os("XDG_CONFIG_HOME") {
                    Some(x) if !x.is_empty() => PathBuf::from(x).join("opencode"),
                    _ => home()?.join(".config").join("opencode"),
                },
                Scope::Project => project.to_path_buf(),
            };
            let jsonc = dir.join("opencode.jsonc");
            if jsonc.exists() {
                jsonc
            } else {
                dir.join("opencode.json")
            }
        }
    })
}

fn read(path: &Path) -> Result<Option<String>, InstallError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes through a temporary file and a rename, keeping the original's permissions. A
/// symlinked file (dotfiles kept elsewhere) is written where the link points, the link
/// kept.
fn write(path: &Path, text: &str) -> Result<(), InstallError> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let path = target.as_path();
    let io = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("agentmesh-tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

fn to_cst(v: &serde_json::Value) -> CstInputValue {
    match v {
        serde_json::Value::Null => CstInputValue::Null,
        serde_json::Value::Bool(b) => CstInputValue::Bool(*b),
        serde_json::Value::Number(n) => CstInputValue::Number(n.to_string()),
        serde_json::Value::String(s) => CstInputValue::String(s.clone()),
        serde_json::Value::Array(a) => CstInputValue::Array(a.iter().map(to_cst).collect()),
        serde_json::Value::Object(o) => CstInputValue::Object(o.iter().map(|(k, v)| (k.clone(), to_cst(v))).collect()),
    }
}

/// The JSON value of our entry for a JSON-configured client.
fn json_entry(client: Client, entry: &Entry) -> (&'static str, serde_json::Value) {
    match client {
        Client::OpenCode => {
            let mut command = vec![serde_json::Value::String(entry.command.clone())];
            command.extend(entry.args.iter().cloned().map(serde_json::Value::String));
            (
                "mcp",
                serde_json::json!({ "type": "local", "command": command, "enabled": true }),
            )
        }
        _ => (
            "mcpServers",
            serde_json::json!({ "type": "stdio", "command": entry.command, "args": entry.args }),
        ),
    }
}

fn edit_json(path: &Path, client: Client, entry: Option<&Entry>) -> Result<Change, InstallError> {
    let format = if path.extension().is_some_and(|e| e == "jsonc") {
        "JSONC"
    } else {
        "JSON"
    };
    let text = match read(path)? {
        Some(t) if !t.trim().is_empty() => t,
        _ if entry.is_none() => return Ok(Change::Absent),
        _ if client == Client::OpenCode => "{\n  \"$schema\": \"https://opencode.ai/config.json\"\n}\n".to_string(),
        _ => "{}\n".to_string(),
    };
    let root = CstRootNode::parse(&text, &ParseOptions::default()).map_err(|e| InstallError::Parse {
        path: path.to_path_buf(),
        format,
        message: e.to_string(),
    })?;
    let shape = |message: String| InstallError::Shape {
        path: path.to_path_buf(),
        message,
    };
    let obj = match root.value() {
        None => root.object_value_or_set(),
        Some(v) => v
            .as_object()
            .ok_or_else(|| shape("the top level is not an object".into()))?,
    };
    let section_key = match client {
        Client::OpenCode => "mcp",
        _ => "mcpServers",
    };
    let change = match entry {
        Some(entry) => {
            let section = match obj.get(section_key) {
                Some(prop) => prop
                    .value()
                    .and_then(|v| v.as_object())
                    .ok_or_else(|| shape(format!("\"{section_key}\" is not an object")))?,
                None => obj.object_value_or_set(section_key),
            };
            set_json_entry(&section, &json_entry(client, entry).1)
        }
        None => remove_json_entry(&obj, section_key),
    };
    if matches!(change, Change::Added | Change::Updated | Change::Removed) {
        write(path, &root.to_string())?;
    }
    Ok(change)
}

/// Our entry in `section` made `want`.
fn set_json_entry(section: &CstObject, want: &serde_json::Value) -> Change {
    match section.get(SERVER_NAME) {
        Some(prop) => {
            let have = prop.value().and_then(|v| v.to_serde_value());
            if have.as_ref() == Some(want) {
                Change::Unchanged
            } else {
                prop.set_value(to_cst(want));
                Change::Updated
            }
        }
        None => {
            section.append(SERVER_NAME, to_cst(want));
            Change::Added
        }
    }
}

/// Our entry removed from `obj[section_key]`, if there.
fn remove_json_entry(obj: &CstObject, section_key: &str) -> Change {
    match obj
        .get(section_key)
        .and_then(|p| p.value())
        .and_then(|v| v.as_object())
        .and_then(|s| s.get(SERVER_NAME))
    {
        Some(prop) => {
            prop.remove();
            Change::Removed
        }
        None => Change::Absent,
    }
}

fn edit_toml(path: &Path, entry: Option<&Entry>) -> Result<Change, InstallError> {
    let original = read(path)?.unwrap_or_default();
    if original.trim().is_empty() && entry.is_none() {
        return Ok(Change::Absent);
    }
    let mut doc: toml_edit::DocumentMut = original
        .parse()
        .map_err(|e: toml_edit::TomlError| InstallError::Parse {
            path: path.to_path_buf(),
            format: "TOML",
            message: e.to_string(),
        })?;
    let shape = |message: &str| InstallError::Shape {
        path: path.to_path_buf(),
        message: message.to_string(),
    };
    let change = match entry {
        Some(entry) => {
            if !doc.contains_key("mcp_servers") {
                let mut t = toml_edit::Table::new();
                t.set_implicit(true);
                doc.insert("mcp_servers", toml_edit::Item::Table(t));
            }
            let servers = doc["mcp_servers"]
                .as_table_mut()
                .ok_or_else(|| shape("mcp_servers is not a table"))?;
            let mut args = toml_edit::Array::new();
            for a in &entry.args {
                args.push(a.as_str());
            }
            let same = servers.get(SERVER_NAME).and_then(|i| i.as_table()).is_some_and(|t| {
                t.get("tool_timeout_sec").and_then(|c| c.as_integer()) == Some(CODEX_TOOL_TIMEOUT_S)
                    && t.get("command").and_then(|c| c.as_str()) == Some(entry.command.as_str())
                    && t.get("args").and_then(|a| a.as_array()).is_some_and(|a| {
                        a.iter()
                            .map(|v| v.as_str().unwrap_or_default())
                            .eq(entry.args.iter().map(String::as_str))
                    })
            });
            if same {
                Change::Unchanged
            } else {
                // Our keys set in place: whatever else the user put in the entry (env,
                // startup_timeout_sec, enabled, ...) stays.
                let existed = servers.contains_key(SERVER_NAME);
                let t = servers
                    .entry(SERVER_NAME)
                    .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| shape("mcp_servers.agentmesh is not a table"))?;
                t["command"] = toml_edit::value(entry.command.as_str());
                t["args"] = toml_edit::value(args);
                // `wait` blocks for minutes; Codex ends tool calls after 60 s by default.
                t["tool_timeout_sec"] = toml_edit::value(CODEX_TOOL_TIMEOUT_S);
                if existed { Change::Updated } else { Change::Added }
            }
        }
        None => match doc.get_mut("mcp_servers").and_then(|i| i.as_table_mut()) {
            Some(servers) => {
                if servers.remove(SERVER_NAME).is_some() {
                    Change::Removed
                } else {
                    Change::Absent
                }
            }
            None => Change::Absent,
        },
    };
    if matches!(change, Change::Added | Change::Updated | Change::Removed) {
        write(path, &doc.to_string())?;
    }
    Ok(change)
}

/// Adds (or fixes) our entry in `path`.
pub fn install(path: &Path, client: Client, entry: &Entry) -> Result<Change, InstallError> {
    match client {
        Client::Codex => edit_toml(path, Some(entry)),
        _ => edit_json(path, client, Some(entry)),
    }
}

/// Removes our entry from `path`, touching nothing else.
pub fn uninstall(path: &Path, client: Client) -> Result<Change, InstallError> {
    match client {
        Client::Codex => edit_toml(path, None),
        _ => edit_json(path, client, None),
    }
}

/// What the user should know after installing for `client`.
pub fn next_steps(client: Client) -> &'static str {
    match client {
        Client::ClaudeCode => {
            "Start Claude Code as usual: each session becomes an agent on the mesh. Its hooks show new mail on every \
             prompt and tool result, and wake an idle session when mail arrives (agents see you as \"woken by hook\").\n\
             Channels (research preview) can also push each message into the conversation as it arrives; to allow \
             them, start Claude Code with:\n    claude --dangerously-load-development-channels server:agentmesh\n\
             Claude Code does not tell servers whether channels are on, so mail stays unread until a tool, a hook or \
             your reply shows it: a pushed message may be shown twice, never lost."
        }
        Client::Codex => {
            "Start Codex as usual: each session becomes an agent on the mesh. Its hooks show new mail on every prompt \
             and tool result, and when mail arrives for an idle session it is queued as a new turn (codex queue), \
             which wakes it. Codex drops MCP notifications, so there is no push."
        }
        Client::OpenCode => {
            "Start OpenCode as usual: each session becomes an agent on the mesh. The agentmesh plugin injects new mail \
             into the session as a message, which wakes it when idle; every agentmesh tool result also says when mail \
             is unread."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            command: "/usr/local/bin/mesh".into(),
            args: vec!["mcp".into()],
        }
    }

    #[test]
    fn claude_json_keeps_other_entries_and_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".claude.json");
        let original = r#"{
  "numStartups": 12,
  "mcpServers": {
    "github": { "type": "stdio", "command": "gh-mcp", "args": [] }
  },
  "theme": "dark"
}
"#;
        std::fs::write(&p, original).unwrap();
        assert_eq!(install(&p, Client::ClaudeCode, &entry()).unwrap(), Change::Added);
        let after = std::fs::read_to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&after).unwrap();
        assert_eq!(v["numStartups"], 12);
        assert_eq!(v["theme"], "dark");
        assert_eq!(v["mcpServers"]["github"]["command"], "gh-mcp");
        assert_eq!(v["mcpServers"]["agentmesh"]["command"], "/usr/local/bin/mesh");
        assert_eq!(v["mcpServers"]["agentmesh"]["args"][0], "mcp");
        // Twice changes nothing.
        assert_eq!(install(&p, Client::ClaudeCode, &entry()).unwrap(), Change::Unchanged);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), after);
        // A new binary path updates the entry.
        let moved = Entry {
            command: "/opt/mesh".into(),
            ..entry()
        };
        assert_eq!(install(&p, Client::ClaudeCode, &moved).unwrap(), Change::Updated);
        // Uninstall restores the original content.
        assert_eq!(uninstall(&p, Client::ClaudeCode).unwrap(), Change::Removed);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let o: serde_json::Value = serde_json::from_str(original).unwrap();
        assert_eq!(v, o);
        assert_eq!(uninstall(&p, Client::ClaudeCode).unwrap(), Change::Absent);
    }

    #[test]
    fn opencode_jsonc_keeps_comments() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("opencode.jsonc");
        let original = "{\n  // my model\n  \"model\": \"anthropic/claude\",\n  \"mcp\": {\n    /* the docs server */\n    \"docs\": { \"type\": \"remote\", \"url\": \"https://example.invalid/mcp\" },\n  },\n}\n";
        std::fs::write(&p, original).unwrap();
        assert_eq!(install(&p, Client::OpenCode, &entry()).unwrap(), Change::Added);
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(
            after.contains("// my model") && after.contains("/* the docs server */"),
            "{after}"
        );
        assert!(after.contains("\"agentmesh\""), "{after}");
        assert!(
            after.contains("\"command\": [\"/usr/local/bin/mesh\", \"mcp\"]") || after.contains("/usr/local/bin/mesh")
        );
        assert_eq!(install(&p, Client::OpenCode, &entry()).unwrap(), Change::Unchanged);
        assert_eq!(uninstall(&p, Client::OpenCode).unwrap(), Change::Removed);
        let back = std::fs::read_to_string(&p).unwrap();
        assert!(back.contains("// my model") && back.contains("/* the docs server */") && back.contains("\"docs\""));
        assert!(!back.contains("agentmesh"));
    }

    #[test]
    fn new_files_are_created() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("proj/.mcp.json");
        assert_eq!(uninstall(&p, Client::ClaudeCode).unwrap(), Change::Absent);
        assert!(!p.exists());
        assert_eq!(install(&p, Client::ClaudeCode, &entry()).unwrap(), Change::Added);
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["mcpServers"]["agentmesh"]["type"], "stdio");
        let o = tmp.path().join("opencode.json");
        install(&o, Client::OpenCode, &entry()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&o).unwrap()).unwrap();
        assert_eq!(v["mcp"]["agentmesh"]["type"], "local");
        assert_eq!(v["mcp"]["agentmesh"]["enabled"], true);
        assert_eq!(v["$schema"], "https://opencode.ai/config.json");
    }

    #[test]
    fn codex_toml_keeps_comments_and_tables() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        let original = "# my codex settings\nmodel = \"o4\"\n\n[mcp_servers.docs]\ncommand = \"docs-mcp\" # keep me\nargs = [\"--fast\"]\n\n[profiles.work]\nmodel = \"o3\"\n";
        std::fs::write(&p, original).unwrap();
        assert_eq!(install(&p, Client::Codex, &entry()).unwrap(), Change::Added);
        let after = std::fs::read_to_string(&p).unwrap();
        assert!(
            after.contains("# my codex settings") && after.contains("# keep me"),
            "{after}"
        );
        assert!(after.contains("[mcp_servers.agentmesh]"), "{after}");
        let v: toml_edit::DocumentMut = after.parse().unwrap();
        assert_eq!(
            v["mcp_servers"]["agentmesh"]["command"].as_str(),
            Some("/usr/local/bin/mesh")
        );
        assert_eq!(v["profiles"]["work"]["model"].as_str(), Some("o3"));
        assert_eq!(install(&p, Client::Codex, &entry()).unwrap(), Change::Unchanged);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), after);
        assert_eq!(uninstall(&p, Client::Codex).unwrap(), Change::Removed);
        let back = std::fs::read_to_string(&p).unwrap();
        assert!(back.contains("# keep me") && back.contains("[mcp_servers.docs]") && !back.contains("agentmesh"));
        // Keys the user added to our entry survive a reinstall that changes it.
        std::fs::write(
            &p,
            "[mcp_servers.agentmesh]\ncommand = \"/old/mesh\"\nargs = [\"mcp\"]\nenv = { MESH_AGENT = \"rev\" }\n",
        )
        .unwrap();
        assert_eq!(install(&p, Client::Codex, &entry()).unwrap(), Change::Updated);
        let v: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        assert_eq!(v["mcp_servers"]["agentmesh"]["env"]["MESH_AGENT"].as_str(), Some("rev"));
        assert_eq!(
            v["mcp_servers"]["agentmesh"]["command"].as_str(),
            Some("/usr/local/bin/mesh")
        );
        assert_eq!(
            v["mcp_servers"]["agentmesh"]["tool_timeout_sec"].as_integer(),
            Some(660)
        );
        // A fresh file gets a proper table.
        let fresh = tmp.path().join("new/config.toml");
        install(&fresh, Client::Codex, &entry()).unwrap();
        let text = std::fs::read_to_string(&fresh).unwrap();
        assert!(text.starts_with("[mcp_servers.agentmesh]"), "{text}");
    }

    #[test]
    fn broken_files_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(".claude.json");
        std::fs::write(&p, "{ \"a\": ").unwrap();
        let e = install(&p, Client::ClaudeCode, &entry()).unwrap_err();
        assert!(matches!(e, InstallError::Parse { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{ \"a\": ");
        std::fs::write(&p, "{ \"mcpServers\": [] }").unwrap();
        assert!(matches!(
            install(&p, Client::ClaudeCode, &entry()),
            Err(InstallError::Shape { .. })
        ));
        let t = tmp.path().join("c.toml");
        std::fs::write(&t, "mcp_servers = 3\n").unwrap();
        assert!(install(&t, Client::Codex, &entry()).is_err());
        std::fs::write(&t, "[[[").unwrap();
        assert!(matches!(
            install(&t, Client::Codex, &entry()),
            Err(InstallError::Parse { .. })
        ));
    }
}
