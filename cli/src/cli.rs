//! Command-line syntax. This surface is a contract: keep the names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// agentmesh: a peer-to-peer mesh where AI coding agents and their humans find each other
/// and talk, on one machine, across a LAN, and beyond.
#[derive(Parser, Debug)]
#[command(name = "mesh", version, about, max_term_width = 100)]
pub struct Cli {
    /// Node home directory (identity, config, store, socket).
    #[arg(long, global = true, env = "MESH_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Machine-readable output: one JSON document (JSON lines for streams).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the node (foreground unless --detach).
    Up(UpArgs),
    /// Stop the running node cleanly.
    Down,
    /// Identity, addresses, peers, agents, topics and store figures.
    Status,
    /// Known nodes: name, PeerId, addresses, connected or not, round-trip time.
    Peers,
    /// Agents on the whole mesh, with node, kind, directory, summary and status.
    Agents,
    /// Connect to a node by multiaddr (e.g. /ip4/192.168.1.20/tcp/4001/p2p/12D3KooW...,
    /// /dns4/example.org/udp/4001/quic-v1/p2p/..., or a relayed .../p2p-circuit/p2p/...);
    /// it is kept connected until forgotten.
    Dial {
        /// The address to dial (with --forget: a PeerId, node name, node label or address).
        multiaddr: String,
        /// Stop keeping this node connected.
        #[arg(long)]
        forget: bool,
    },
    /// Measure round trips to a connected node and show the path (direct or relayed).
    Ping {
        /// PeerId, node name, or node label (laptop~Xk3vQ9aB: a name and the end of a PeerId,
        /// as shown when names clash).
        node: String,
        /// How many round trips.
        #[arg(long, short, default_value_t = 4)]
        count: u32,
    },
    /// Print the addresses another person can dial to reach this node.
    Addr,
    /// Permission requests of this node's agent sessions (Claude Code asking to use a
    /// tool), waiting for an answer.
    Permissions,
    /// Allow a waiting permission request (the first answer, here, on the page or in the
    /// session's terminal, wins), or admit a node asking to join by its comparison code.
    Approve {
        /// Its id, as `mesh permissions` lists it (`agent:id` when two agents share one,
        /// `agent@node:id` for another node's).
        id: String,
    },
    /// Deny a waiting permission request, or refuse a node asking to join.
    Deny {
        /// Its id, as `mesh permissions` lists it, or a comparison code (`mesh pairings`).
        id: String,
    },
    /// Open the live page of the mesh in a browser (served on loopback from now on; the
    /// link logs in once).
    Open {
        /// Print the one-time login link instead of starting a browser.
        #[arg(long)]
        print: bool,
    },
    /// Make a join code for this node's mesh (one use, 24 h by default): the other node
    /// runs `mesh join <code>`.
    Invite(InviteArgs),
    /// Join the mesh of the node that made a join code, or ask a nearby member to admit
    /// this node (both show a comparison code; its user approves with `mesh approve
    /// <code>`). Leaves this node's mesh.
    Join {
        /// A join code (agentmesh:...), or a nearby node not in this mesh: the name it
        /// gave, its PeerId, or an address ending in `/p2p/<PeerId>` (`mesh peers` lists
        /// them).
        code: String,
        /// Pairing: the comparison code the other node shows, to confirm without being
        /// asked (otherwise you are asked to type yes once you compared them).
        #[arg(long, value_name = "DIGITS")]
        confirm: Option<String>,
    },
    /// Nodes asking this one to admit them (`mesh join <this node>` there), with the
    /// comparison code each shows.
    Pairings,
    /// The members of this node's mesh.
    Members,
    /// Remove a node from the mesh: it is disconnected and the mesh key is replaced by one
    /// it never gets, so it cannot come back with what it holds.
    Remove {
        /// PeerId, node name, or node label (laptop~Xk3vQ9aB: a name and the end of a PeerId,
        /// as shown when names clash).
        node: String,
    },
    /// Leave the mesh: this node starts a new mesh of its own.
    Leave,
    /// Send a direct message to an agent (agent@node, or a unique bare agent name).
    Send(SendArgs),
    /// Show unread messages (and mark them read).
    Inbox(InboxArgs),
    /// Subscribe an agent to a topic.
    Subscribe(TopicArgs),
    /// Unsubscribe an agent from a topic.
    Unsubscribe(TopicArgs),
    /// Topics known on this node, with local subscribers.
    Topics,
    /// Publish a message on a topic.
    Publish(PublishArgs),
    /// Message history, with an agent or on a topic (#name).
    History(HistoryArgs),
    /// Sent messages awaiting delivery, and dead letters.
    Outbox(OutboxArgs),
    /// Run as an MCP server on stdin/stdout (started by an agent client: Claude Code, Codex,
    /// OpenCode, ...). The session becomes one agent on the mesh.
    Mcp(McpArgs),
    /// Add agentmesh to an agent client's MCP configuration.
    Install(InstallArgs),
    /// Remove agentmesh from an agent client's MCP configuration.
    Uninstall(InstallArgs),
    /// Run by the hooks and the plugin that `mesh install` sets up (not by hand): shows a
    /// session's new mail to its model, or waits for mail and wakes the idle session.
    #[command(hide = true)]
    Hook(HookArgs),
    /// Print shell completions.
    Completions {
        /// Shell to generate for.
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Run in the background and return once the node is ready.
    #[arg(long, short)]
    pub detach: bool,
    /// Name of this node on the mesh (default: host name).
    #[arg(long, env = "MESH_NAME")]
    pub name: Option<String>,
    /// Address to listen on (repeatable; default all interfaces, TCP and QUIC, OS-chosen ports).
    #[arg(long, env = "MESH_LISTEN", value_delimiter = ',', value_name = "MULTIADDR")]
    pub listen: Vec<String>,
    /// Do not discover or advertise on the LAN (mDNS and DNS-SD).
    #[arg(long, env = "MESH_NO_MDNS")]
    pub no_mdns: bool,
    /// Offer relay service to the other members (for a node with a public address).
    #[arg(long, env = "MESH_RELAY")]
    pub relay: bool,
    /// Relay for any node, member or not (a public relay; implies --relay). Non-members
    /// still get nothing else from this node.
    #[arg(long, env = "MESH_RELAY_FOR_ANYONE")]
    pub relay_for_anyone: bool,
    /// Open mode, for trusted lab networks only: admit every node that is also in open
    /// mode, with no secret. Anyone on those networks can then reach your agents.
    #[arg(long, env = "MESH_OPEN")]
    pub open: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, env = "MESH_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// An address this node is reachable at from the internet (repeatable), e.g. a VPS's
    /// public IP behind 1:1 NAT: /ip4/203.0.113.7/tcp/4001.
    #[arg(long, env = "MESH_EXTERNAL", value_delimiter = ',', value_name = "MULTIADDR")]
    pub external: Vec<String>,
    /// Forget the settings saved by earlier `mesh up`s (name, listen, no-mdns, relay,
    /// open, metrics, external) before applying the ones given now.
    #[arg(long)]
    pub reset: bool,
}

#[derive(Args, Debug)]
pub struct InviteArgs {
    /// How long the code stays valid (e.g. 10m, 24h, 7d; at most 30 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    pub ttl: std::time::Duration,
    /// How many nodes may join with it.
    #[arg(long, default_value_t = 1)]
    pub uses: u32,
}

/// The local agent a command acts as.
#[derive(Args, Debug)]
pub struct AsAgent {
    /// Act as this local agent (default: your login name).
    #[arg(long = "as", value_name = "AGENT")]
    pub agent: Option<String>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// Recipient: agent@node (node name, PeerId, or node label such as laptop~Xk3vQ9aB, shown
    /// when names clash), or a bare agent name if unique.
    pub to: String,
    #[command(flatten)]
    pub message: Compose,
}

/// A message to send or publish: its text, who writes it, what it answers, its id.
#[derive(Args, Debug)]
pub struct Compose {
    /// The message text ("-" reads it from standard input).
    pub text: String,
    #[command(flatten)]
    pub who: AsAgent,
    /// Id of the message this one answers.
    #[arg(long, value_name = "ID")]
    pub reply_to: Option<String>,
    /// Id for the new message (a ULID; default: a fresh one). Running the command again
    /// with the same id and text sends the message once: for scripts that retry.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

#[derive(Args, Debug)]
pub struct InboxArgs {
    #[command(flatten)]
    pub who: AsAgent,
    /// Show read messages too (the newest --limit), without changing their state.
    #[arg(long)]
    pub all: bool,
    /// Keep running and print new messages as they arrive.
    #[arg(long, short)]
    pub follow: bool,
    /// Show at most this many (read from the daemon a page at a time).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct TopicArgs {
    /// Topic name (a leading # is accepted).
    pub topic: String,
    #[command(flatten)]
    pub who: AsAgent,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Topic name (a leading # is accepted).
    pub topic: String,
    #[command(flatten)]
    pub message: Compose,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// An agent (agent or agent@node) or a topic (#name); omit for everything.
    pub target: Option<String>,
    /// Only this local agent's messages.
    #[arg(long = "as", value_name = "AGENT")]
    pub agent: Option<String>,
    /// Show at most this many (the newest), oldest first. Any number: they are read from
    /// the daemon a page at a time, and with --json written out as they come.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only messages whose text contains this (case-insensitive).
    #[arg(long)]
    pub grep: Option<String>,
    /// Only messages older than this position: the cursor a previous `mesh history` gave
    /// when older messages were left out.
    #[arg(long, value_name = "CURSOR")]
    pub before: Option<String>,
}

#[derive(Args, Debug)]
pub struct OutboxArgs {
    /// Only this local agent's messages.
    #[arg(long = "as", value_name = "AGENT")]
    pub agent: Option<String>,
    /// Include delivered messages.
    #[arg(long)]
    pub all: bool,
    /// Show at most this many (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Args, Debug)]
pub struct McpArgs {
    /// The agent name for this session (default: derived from the client and directory,
    /// like claude-code.myrepo).
    #[arg(long, env = "MESH_AGENT")]
    pub name: Option<String>,
}

/// Agent clients `mesh install` knows.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Client {
    /// Claude Code (`~/.claude.json`, or `.mcp.json` in the project).
    ClaudeCode,
    /// Codex CLI (`~/.codex/config.toml`, or `.codex/config.toml` in the project).
    Codex,
    /// OpenCode (`~/.config/opencode/opencode.json[c]`, or `opencode.json[c]` in the project).
    Opencode,
}

/// Where `mesh install` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum Scope {
    /// For every project of this user.
    #[default]
    User,
    /// For the project in the current directory only.
    Project,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The agent client.
    pub client: Client,
    /// User-wide or this project only.
    #[arg(long, value_enum, default_value_t = Scope::User)]
    pub scope: Scope,
    /// Write this file instead of the client's usual one (the MCP server entry).
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Only the MCP server entry: no hooks or plugin (the session then sees mail only at
    /// its tool calls, and is never woken).
    #[arg(long)]
    pub no_wake: bool,
    /// The Codex binary used to trust the hooks (default: `codex` on PATH).
    #[arg(long, value_name = "PATH")]
    pub codex_bin: Option<std::path::PathBuf>,
}

/// The client a hook runs in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookClient {
    /// Claude Code.
    ClaudeCode,
    /// Codex CLI.
    Codex,
    /// OpenCode (its plugin).
    Opencode,
}

/// What a hook does.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookAction {
    /// Print the session's unread mail as context for the model (and mark it read).
    Context,
    /// Claude Code (`asyncRewake`): wait for mail, print it on stderr and exit 2. Codex:
    /// start a detached waker that queues mail as a turn (`codex queue`). OpenCode: as
    /// `follow`.
    Wake,
    /// Hold the session's waker and write each batch of new mail as a JSON line; `ok` or
    /// `no` on stdin says whether it was shown (the OpenCode plugin).
    Follow,
    /// The detached Codex waker that `codex wake` starts: queue new mail as a turn with
    /// `codex queue`.
    CodexQueue,
}

#[derive(Args, Debug)]
pub struct HookArgs {
    /// The agent client running the hook.
    #[arg(value_enum)]
    pub client: HookClient,
    /// What to do.
    #[arg(value_enum)]
    pub action: HookAction,
    /// With `wake`: give up (exit 0) after this many seconds without mail; keep it below
    /// the hook's own timeout.
    #[arg(long, default_value_t = 35_000)]
    pub max_wait_s: u64,
    /// With `codex-queue`: the Codex thread to queue mail on.
    #[arg(long)]
    pub thread: Option<String>,
    /// With `codex-queue`: the process ancestry of the hook that started it (comma-separated).
    #[arg(long)]
    pub pids: Option<String>,
    /// With `codex-queue`: the session's directory.
    #[arg(long)]
    pub cwd: Option<String>,
}
