//! One module per subcommand.

mod agents;
mod completions;
mod down;
mod history;
mod hook;
mod inbox;
mod install;
mod mcp;
mod members;
mod messages;
mod open;
mod peers;
mod permissions;
mod status;
mod topics;
mod up;

use std::io::Read;

use anyhow::Context;
use mesh_node::api::client::{Client, ClientError};
use mesh_node::api::{LocalApi, PublishRequest, Request, Response, SendRequest};
use mesh_node::home::Home;

use crate::cli::{Cli, Command};

/// How long a repeatable request waits for a daemon that went away mid-request to be back.
pub const REPEAT_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// What every command needs.
pub struct Ctx {
    pub home: Home,
    pub json: bool,
    pub home_flag: Option<String>,
}

/// End the process with this exit code, saying nothing more (a hook's answer to its client).
#[derive(Debug)]
pub struct ExitWith(pub u8);

impl std::error::Error for ExitWith {}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

/// The daemon is not running.
#[derive(Debug)]
pub struct NotRunning(pub String);

impl std::error::Error for NotRunning {}

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Ctx {
    /// `mesh` plus `--home DIR` when the home is not the default, for hints.
    pub fn mesh(&self) -> String {
        match &self.home_flag {
            Some(h) => format!("mesh --home {h}"),
            None => "mesh".to_string(),
        }
    }

    /// Connects to the daemon, or explains how to start one.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.connect().await.map_err(|e| self.for_user(e.into()))
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(&self.home, concat!("mesh-cli/", env!("CARGO_PKG_VERSION"))).await
    }

    /// An error as the user reads it: no daemon running is [`NotRunning`] (exit code 3),
    /// with the command that starts one for this home.
    pub fn for_user(&self, e: anyhow::Error) -> anyhow::Error {
        match e.downcast_ref::<ClientError>() {
            Some(ClientError::NotRunning { home, .. }) => NotRunning(format!(
                "no agentmesh daemon is running for home {}; start one with: {} up --detach",
                home.display(),
                self.mesh()
            ))
            .into(),
            _ => e,
        }
    }

    /// `request` once more after `first` failed, if it may be repeated
    /// ([`ClientError::may_repeat`]): on a new connection, as soon as the daemon is back
    /// within [`REPEAT_WINDOW`] (restarted by a supervisor, say).
    async fn repeat(&self, request: &Request, first: ClientError) -> Result<Response, ClientError> {
        if !first.may_repeat(request) {
            return Err(first);
        }
        let deadline = tokio::time::Instant::now() + REPEAT_WINDOW;
        let mut last = first;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            match self.connect().await {
                Ok(c) => match c.call(request.clone()).await {
                    Err(e) if e.may_repeat(request) => last = e,
                    other => return other,
                },
                Err(e @ ClientError::NotRunning { .. }) => last = e,
                // Back, but not usable (another version, say).
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
    /// The local agent to act as.
    pub fn agent(&self, given: &Option<String>) -> String {
        given
            .clone()
            .unwrap_or_else(|| mesh_node::daemon::login_agent().to_string())
    }
}

/// The commands' way to the daemon: a request that may be repeated is sent again when the
/// daemon went away before answering and is back within [`REPEAT_WINDOW`]; a send whose
/// outcome stays unknown says how to repeat it safely.
impl LocalApi for Ctx {
    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let first = match self.connect().await?.call(request.clone()).await {
            Err(e) => e,
            answer => return answer,
        };
        let sent = matches!(first, ClientError::Closed);
        match self.repeat(&request, first).await {
            Err(e) if sent && !matches!(e, ClientError::Api(_)) => match repeat_advice(&request) {
                Some(advice) => Err(ClientError::OutcomeUnknown(match e {
                    ClientError::Closed | ClientError::NotRunning { .. } => format!(
                        "the daemon went away before answering, and did not come back within {} s; {advice}",
                        REPEAT_WINDOW.as_secs()
                    ),
                    e => format!("the daemon went away before answering ({e}); {advice}"),
                })),
                None => Err(e),
            },
            answer => answer,
        }
    }
}

/// What to do about a send or publish whose outcome is unknown.
fn repeat_advice(request: &Request) -> Option<String> {
    match request {
        Request::Send(SendRequest { id: Some(id), .. }) | Request::Publish(PublishRequest { id: Some(id), .. }) => {
            Some(format!(
                "message {id} may or may not have been stored. Once the daemon runs again, repeat the same command with --id {id}: it is sent once either way"
            ))
        }
        _ => None,
    }
}

/// Reads a message text: the argument, or standard input for "-".
pub fn text_arg(text: &str) -> anyhow::Result<String> {
    if text == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the message from standard input")?;
        Ok(s.trim_end_matches('\n').to_string())
    } else {
        Ok(text.to_string())
    }
}

/// A message id argument.
pub fn id_arg(id: &Option<String>) -> anyhow::Result<Option<mesh_node::ids::MessageId>> {
    id.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e: mesh_node::ids::InvalidName| anyhow::anyhow!("{e}"))
        })
        .transpose()
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::resolve(cli.home.clone())?;
    let ctx = Ctx {
        home,
        json: cli.json,
        home_flag: cli.home.as_ref().map(|h| h.display().to_string()),
    };
    let done = match cli.command {
        Command::Up(a) => up::run(&ctx, a).await,
        Command::Down => down::run(&ctx).await,
        Command::Status => status::run(&ctx).await,
        Command::Peers => peers::peers(&ctx).await,
        Command::Agents => agents::run(&ctx).await,
        Command::Dial { multiaddr, forget } => peers::dial(&ctx, &multiaddr, forget).await,
        Command::Ping { node, count } => peers::ping(&ctx, &node, count).await,
        Command::Addr => peers::addr(&ctx).await,
        Command::Open { print } => open::run(&ctx, print).await,
        Command::Permissions => permissions::list(&ctx).await,
        Command::Approve { id } if members::is_code(&id) => members::answer_pairing(&ctx, &id, true).await,
        Command::Deny { id } if members::is_code(&id) => members::answer_pairing(&ctx, &id, false).await,
        Command::Approve { id } => permissions::answer(&ctx, &id, true).await,
        Command::Deny { id } => permissions::answer(&ctx, &id, false).await,
        Command::Pairings => members::pairings(&ctx).await,
        Command::Invite(a) => members::invite(&ctx, a).await,
        Command::Join { code, confirm } => members::join(&ctx, &code, confirm.as_deref()).await,
        Command::Members => members::members(&ctx).await,
        Command::Remove { node } => members::remove(&ctx, &node).await,
        Command::Leave => members::leave(&ctx).await,
        Command::Send(a) => messages::send(&ctx, a).await,
        Command::Inbox(a) => inbox::run(&ctx, a).await,
        Command::Subscribe(a) => topics::subscribe(&ctx, a, true).await,
        Command::Unsubscribe(a) => topics::subscribe(&ctx, a, false).await,
        Command::Topics => topics::list(&ctx).await,
        Command::Publish(a) => topics::publish(&ctx, a).await,
        Command::History(a) => history::run(&ctx, a).await,
        Command::Outbox(a) => messages::outbox(&ctx, a).await,
        Command::Mcp(a) => mcp::run(&ctx, a).await,
        Command::Install(a) => install::run(&ctx, a, true),
        Command::Uninstall(a) => install::run(&ctx, a, false),
        Command::Hook(a) => hook::run(&ctx, a).await,
        Command::Completions { shell } => completions::run(shell),
    };
    done.map_err(|e| ctx.for_user(e))
}

/// Exit code for an error: 3 when no daemon runs, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(ExitWith(code)) = e.downcast_ref::<ExitWith>() {
        *code
    } else if e.downcast_ref::<NotRunning>().is_some() {
        3
    } else {
        1
    }
}
