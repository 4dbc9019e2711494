//! `mesh install` and `mesh uninstall`.

use anyhow::Context;
use mesh_mcp::install::{self, Change, Entry};

use super::Ctx;
use crate::cli::{Client, InstallArgs, Scope};
use crate::output;

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
    let path = match a.config {
        Some(p) => p,
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
    let change = if add {
        install::install(&path, client, &entry)?
    } else {
        install::uninstall(&path, client)?
    };
    let word = match change {
        Change::Added => "added",
        Change::Updated => "updated",
        Change::Unchanged => "unchanged",
        Change::Removed => "removed",
        Change::Absent => "absent",
    };
    if ctx.json {
        return output::json(&serde_json::json!({
            "client": client.label(),
            "path": path.display().to_string(),
            "change": word,
            "command": entry.command,
            "args": entry.args,
        }));
    }
    let what = format!(
        "{} MCP server \"{}\" in {}",
        client.label(),
        install::SERVER_NAME,
        path.display()
    );
    match change {
        Change::Added => crate::outln!("Added the {what}:\n    {} {}", entry.command, entry.args.join(" ")),
        Change::Updated => crate::outln!("Updated the {what}:\n    {} {}", entry.command, entry.args.join(" ")),
        Change::Unchanged => crate::outln!("The {what} is already set up; nothing changed."),
        Change::Removed => crate::outln!("Removed the {what}; everything else in the file is as it was."),
        Change::Absent => crate::outln!("There is no {what}; nothing changed."),
    }
    if add {
        crate::outln!("\n{}", install::next_steps(client));
    }
    Ok(())
}
