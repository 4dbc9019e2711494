//! `mesh open`: the human's page in a browser.

use std::process::{Command, Stdio};

use mesh_node::api::LocalApi;

use super::Ctx;
use crate::output;

/// The programs tried, in order, to open an address: `$BROWSER`, then the desktop's opener.
fn openers() -> Vec<String> {
    let mut list: Vec<String> = std::env::var("BROWSER")
        .ok()
        .map(|b| b.split(':').filter(|s| !s.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    list.push(if cfg!(target_os = "macos") { "open" } else { "xdg-open" }.to_string());
    list
}

/// Starts a browser on `url`, detached; the program that took it.
fn launch(url: &str) -> Option<String> {
    openers().into_iter().find(|prog| {
        Command::new(prog)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .is_ok()
    })
}

pub async fn run(ctx: &Ctx, print: bool) -> anyhow::Result<()> {
    let page = ctx.open_page().await?;
    if ctx.json {
        return output::json(&page);
    }
    if print {
        crate::outln!("{}", page.login_url);
        crate::outln!("(this link logs in once, within 2 minutes; keep it to yourself)");
        return Ok(());
    }
    match launch(&page.login_url) {
        Some(prog) => crate::outln!("opening {} ({prog})", page.url),
        None => {
            crate::outln!("no browser could be started; open this link (it logs in once, within 2 minutes):");
            crate::outln!("{}", page.login_url);
        }
    }
    Ok(())
}
