//! `mesh install` and `mesh uninstall`: the MCP server entry and the client's wake path
//! (Claude Code and Codex hooks, the OpenCode plugin).

use std::path::{Path, PathBuf};

use anyhow::Context;
use mesh_mcp::install::{self, Change, Entry};

use super::Ctx;
use crate::cli::{Client, InstallArgs, Scope};
use crate::output;

fn word(change: Change) -> &'static str {
    match change {
        Change::Added => "added",
        Change::Updated => "updated",
        Change::Unchanged => "unchanged",
        Change::Removed => "removed",
        Change::Absent => "absent",
    }
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// One file changed by the command, for the report.
struct Done {
    what: String,
    path: PathBuf,
    change: Change,
}

fn say(done: &[Done], notes: &[String], add: bool, client: install::Client, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(&serde_json::json!({
            "client": client.label(),
            "files": done.iter().map(|d| serde_json::json!({
                "what": d.what, "path": d.path.display().to_string(), "change": word(d.change),
            })).collect::<Vec<_>>(),
            "notes": notes,
        }));
    }
    for d in done {
        let path = d.path.display();
        match d.change {
            Change::Added => crate::outln!("Added the {} in {path}", d.what),
            Change::Updated => crate::outln!("Updated the {} in {path}", d.what),
            Change::Unchanged => crate::outln!("The {} in {path} is already set up; nothing changed.", d.what),
            Change::Removed => crate::outln!(
                "Removed the {} from {path}; everything else in it is as it was.",
                d.what
            ),
            Change::Absent => crate::outln!("There is no {} in {path}; nothing changed.", d.what),
        }
    }
    for n in notes {
        crate::outln!("\n{n}");
    }
    if add {
        crate::outln!("\n{}", install::next_steps(client));
    }
    Ok(())
}

pub fn run(ctx: &Ctx, a: InstallArgs, add: bool) -> anyhow::Result<()> {
    let client = match a.client {
        Client::ClaudeCode => install::Client::ClaudeCode,
        Client::Codex => install::Client::Codex,
        Client::Opencode => install::Client::OpenCode,
    };
    let scope = match a.scope {
        Scope::User => install::Scope::User,
        Scope::Project => install::Scope::Project,
    };
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let path = match &a.config {
        Some(p) => p.clone(),
        None => install::config_path(client, scope, &cwd)?,
    };
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("cannot find the mesh executable")?;
    let mut args = Vec::new();
    if ctx.home_flag.is_some() {
        args.push("--home".to_string());
        args.push(ctx.home.path().display().to_string());
    }
    args.push("mcp".to_string());
    let entry = Entry {
        command: exe.display().to_string(),
        args,
    };
    let mut done = Vec::new();
    let mut notes = Vec::new();
    let server = format!("{} MCP server \"{}\"", client.label(), install::SERVER_NAME);
    let change = if add {
        install::install(&path, client, &entry)?
    } else {
        install::uninstall(&path, client)?
    };
    done.push(Done {
        what: server,
        path,
        change,
    });
    // The wake path: removed by uninstall whatever --no-wake says.
    let wake = (add && !a.no_wake).then_some(&entry);
    match client {
        install::Client::OpenCode => {
            let path = install::plugin_path(scope, &cwd)?;
            let change = install::edit_plugin(&path, wake)?;
            done.push(Done {
                what: "agentmesh plugin (wakes idle sessions)".into(),
                path,
                change,
            });
        }
        _ => {
            if let Some(path) = install::hooks_path(client, scope, &cwd)? {
                let change = install::edit_hooks(&path, client, wake)?;
                done.push(Done {
                    what: format!("{} hooks of agentmesh (mail as context, idle wake)", client.label()),
                    path,
                    change,
                });
            }
            if client == install::Client::Codex && wake.is_some() {
                notes.push(trust_codex(&a, &cwd));
            }
        }
    }
    say(&done, &notes, add, client, ctx.json)
}

/// Codex runs only hooks that were trusted: trust ours through its app-server, or say how.
fn trust_codex(a: &InstallArgs, cwd: &Path) -> String {
    let manual = "Codex runs new hooks only once you trust them: start codex and review them with /hooks.";
    let Some(codex) = a.codex_bin.clone().or_else(|| on_path("codex")) else {
        return format!("Codex was not found on PATH (or pass --codex-bin). {manual}");
    };
    match install::trust_codex_hooks(&codex, cwd) {
        Ok(0) => "The agentmesh hooks were already trusted by Codex.".to_string(),
        Ok(n) => format!("Codex now trusts the {n} agentmesh hooks (as its /hooks review would)."),
        Err(e) => format!("Could not trust the hooks through {}: {e}. {manual}", codex.display()),
    }
}
