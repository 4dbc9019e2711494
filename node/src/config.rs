//! Node configuration: `config.toml` in the home, overridden by environment and flags.
//!
//! Precedence is CLI flag > environment variable > file > default. The CLI (clap) folds
//! flags and environment into [`Overrides`]; [`Config::load`] applies them over the file.
//!
//! ```
//! let cfg: mesh_node::config::Config = toml::from_str(r#"
//!     name = "laptop"
//!     mdns = false
//!     [delivery]
//!     ttl = "2d"
//! "#).unwrap();
//! assert_eq!(cfg.delivery.ttl, std::time::Duration::from_secs(2 * 86400));
//! assert_eq!(cfg.limits.max_message_bytes, 64 * 1024);
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use crate::ids::NodeName;

/// Everything a node can be configured with. Every field has a safe default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Human name of this node as other nodes see it (default: the host name).
    pub name: Option<NodeName>,
    /// Addresses to listen on (default: all IPv4 and IPv6 interfaces, TCP and QUIC, ports
    /// chosen by the OS).
    pub listen: Vec<Multiaddr>,
    /// Addresses this node is known to be reachable at from the internet (e.g. a VPS's
    /// public IP when it sits behind 1:1 NAT); advertised without waiting for AutoNAT.
    pub external: Vec<Multiaddr>,
    /// LAN discovery with mDNS and DNS-SD (`_agentmesh._udp.local`); the master switch
    /// (`--no-mdns` turns it off).
    pub mdns: bool,
    /// The two LAN discovery mechanisms, each on its own (used when `mdns` is on).
    pub lan: Lan,
    /// Size limits.
    pub limits: Limits,
    /// Direct-message delivery.
    pub delivery: Delivery,
    /// Presence of nodes and agents.
    pub presence: Presence,
    /// Relaying: serving as a relay, and the relays this node uses when unreachable.
    pub relay: Relay,
    /// Being reachable from the internet by other means than relays.
    pub internet: Internet,
    /// Open mode (`mesh up --open`): admit any node that is also in open mode, with no
    /// secret. Only for trusted lab networks: anyone there can reach your agents.
    pub open: bool,
    /// Serve Prometheus metrics on this address (`--metrics 127.0.0.1:9464`): `GET
    /// /metrics`. Off by default.
    pub metrics: Option<std::net::SocketAddr>,
    /// The human's page (`mesh open`).
    pub web: Web,
    /// Permission requests of agent sessions (`mesh permissions`, the page).
    pub permissions: PermissionSettings,
}

/// Where permission requests of agent sessions are shown and who may answer them. A
/// session's own node always lists its requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PermissionSettings {
    /// Also list the requests of the other member nodes' sessions here (those whose
    /// `send_to` names this node), so that they can be answered from this machine.
    pub receive: bool,
    /// The member nodes (names or PeerIds; `*`: every member) this node sends its
    /// sessions' requests to when they ask (`receive`), and lets answer them. None by
    /// default: requests are answered on this node only.
    pub send_to: Vec<String>,
    /// Agents of this node that may list and answer the requests this node lists (their
    /// MCP tools `permissions` and `answer_permission`). None by default.
    pub answer_agents: Vec<crate::ids::AgentName>,
}

/// The human's page: a live view of the mesh served on loopback (`mesh open`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Web {
    /// Serve it from the start (otherwise from the first `mesh open` on).
    pub enabled: bool,
    /// Where: a loopback address (port 0: any free port).
    pub listen: std::net::SocketAddr,
}

impl Default for Web {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 7717)),
        }
    }
}

/// Relay settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Relay {
    /// Offer relay service to other members (`mesh up --relay`).
    pub serve: bool,
    /// Relay for any node, member or not (`mesh up --relay-for-anyone`): a public relay.
    /// Non-members still get nothing else from this node.
    pub for_anyone: bool,
    /// Relays to reserve a slot on when this node is not reachable from the internet
    /// (multiaddrs with `/p2p/<id>`); reachable mesh members that relay are used too.
    pub nodes: Vec<Multiaddr>,
    /// Longest life of one relayed connection (then it is re-established).
    #[serde(with = "humantime_serde")]
    pub max_circuit_duration: Duration,
    /// Most bytes one relayed connection may carry (each way).
    pub max_circuit_bytes: u64,
    /// Most reservations this relay holds at once.
    pub max_reservations: usize,
    /// Most relayed connections this relay carries at once.
    pub max_circuits: usize,
    /// Most relayed connections per peer.
    pub max_circuits_per_peer: usize,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            serve: false,
            for_anyone: false,
            nodes: Vec::new(),
            max_circuit_duration: Duration::from_secs(2 * 3600),
            max_circuit_bytes: 1 << 30,
            max_reservations: 128,
            max_circuits: 64,
            max_circuits_per_peer: 8,
        }
    }
}

/// Reachability from the internet, beside relays.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Internet {
    /// Ask the home router (UPnP IGD) to forward the listening ports to this node, so that
    /// it is reachable directly and needs no relay; the mapping is renewed while the node
    /// runs and removed when it stops (a node listening on loopback only never asks). It
    /// tells the router (nothing beyond it) that this
    /// machine runs a node on those ports.
    pub upnp: bool,
    /// When no UPnP router answers, ask the default gateway by PCP or NAT-PMP instead
    /// (Apple routers, many OpenWrt and miniupnpd setups), with the same effect and the
    /// same disclosure (the router learns that this machine runs a node on those ports).
    pub natpmp: bool,
    /// Use the public libp2p network to meet members when neither side has a public
    /// address and no member relays (off unless turned on): join the public DHT (Amino,
    /// `/ipfs/kad/1.0.0`) as a client, hold slots on public relays, and find members
    /// through a record only members can compute. It reveals this node's PeerId and IP
    /// addresses to public DHT nodes and relays, and to anyone watching the DHT which
    /// PeerIds belong to one mesh (not which mesh, nor anything they say).
    pub public_network: bool,
    /// Where to enter the public network (multiaddrs with `/p2p/<id>`); the public IPFS
    /// bootstrap nodes unless set.
    pub public_bootstrap: Vec<Multiaddr>,
}

/// The public libp2p network's bootstrap nodes (as listed by libp2p and IPFS).
pub const PUBLIC_BOOTSTRAP: [&str; 5] = [
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
    "/ip4/104.131.131.82/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
];

impl Default for Internet {
    fn default() -> Self {
        Self {
            upnp: true,
            natpmp: true,
            public_network: false,
            public_bootstrap: PUBLIC_BOOTSTRAP
                .iter()
                .map(|a| a.parse().expect("a valid bootstrap address"))
                .collect(),
        }
    }
}

/// LAN discovery mechanisms.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Lan {
    /// libp2p's mDNS (`_p2p._udp.local`): how libp2p nodes find each other.
    pub libp2p_mdns: bool,
    /// DNS-SD advertisement and browsing of `_agentmesh._udp.local`, visible to standard
    /// tools (`avahi-browse`, `dns-sd`).
    pub dnssd: bool,
}

impl Default for Lan {
    fn default() -> Self {
        Self {
            libp2p_mdns: true,
            dnssd: true,
        }
    }
}

/// Size and rate limits. Anything over them is refused with a clear error, never
/// truncated; nothing already stored is touched. A rate of 0 means unlimited.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest direct message text, in bytes.
    pub max_message_bytes: usize,
    /// Largest topic message text, in bytes.
    pub max_topic_message_bytes: usize,
    /// Largest local API frame, in bytes.
    pub max_api_frame_bytes: usize,
    /// Most messages sent to one peer in one delivery request.
    pub max_batch_messages: usize,
    /// Largest agent summary, in bytes.
    pub max_summary_bytes: usize,
    /// Messages one local agent may send (direct and topic) per minute, sustained; bursts
    /// of half that are allowed.
    pub agent_sends_per_minute: u32,
    /// Direct messages accepted from one peer node per minute (more are answered "busy",
    /// and the sender retries later); bursts of half that are allowed.
    pub peer_messages_per_minute: u32,
    /// Topic messages accepted from one publishing node per minute, by gossip and catch-up
    /// together; bursts of half that are allowed. More gossip is dropped, to be caught up
    /// later within the allowance.
    pub peer_topic_messages_per_minute: u32,
}

/// Direct-message delivery settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Delivery {
    /// A message not delivered within this time becomes a dead letter.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// First retry delay after a failed delivery attempt.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest retry delay (the backoff doubles up to this).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long `send` waits for the recipient node's ack before answering "queued".
    #[serde(with = "humantime_serde")]
    pub send_wait: Duration,
    /// How long one delivery request may take before it is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Tell the sending node when a local agent is first shown a direct message from it
    /// (a read receipt). Off: the senders see "delivered", never "read".
    pub read_receipts: bool,
}

/// Presence settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Presence {
    /// How often a node re-announces its agents. A node not heard from for three
    /// heartbeats is shown offline, with its agents.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: None,
            listen: Vec::new(),
            external: Vec::new(),
            mdns: true,
            lan: Lan::default(),
            limits: Limits::default(),
            delivery: Delivery::default(),
            presence: Presence::default(),
            relay: Relay::default(),
            internet: Internet::default(),
            open: false,
            metrics: None,
            web: Web::default(),
            permissions: PermissionSettings::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_topic_message_bytes: 16 * 1024,
            max_api_frame_bytes: 1024 * 1024,
            max_batch_messages: 64,
            max_summary_bytes: 1024,
            agent_sends_per_minute: 600,
            peer_messages_per_minute: 3000,
            peer_topic_messages_per_minute: 1200,
        }
    }
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(7 * 24 * 3600),
            retry_min: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
            send_wait: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            read_receipts: true,
        }
    }
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// Listen addresses used when none are configured.
pub fn default_listen() -> Vec<Multiaddr> {
    [
        "/ip4/0.0.0.0/tcp/0",
        "/ip4/0.0.0.0/udp/0/quic-v1",
        "/ip6/::/tcp/0",
        "/ip6/::/udp/0/quic-v1",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

/// Values from the command line and environment, applied over the file. `mesh up` saves
/// them in the home ([`crate::settings`]) for every later start.
// Read leniently (unknown keys ignored): `settings.toml` written by another version must not
// stop a start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    /// `--name` / `MESH_NAME`.
    pub name: Option<NodeName>,
    /// `--listen` (repeatable) / `MESH_LISTEN` (comma-separated).
    pub listen: Vec<Multiaddr>,
    /// `--no-mdns` / `MESH_NO_MDNS`.
    pub no_mdns: bool,
    /// `--relay` / `MESH_RELAY`.
    pub relay: bool,
    /// `--external` (repeatable) / `MESH_EXTERNAL`.
    pub external: Vec<Multiaddr>,
    /// `--open` / `MESH_OPEN`.
    pub open: bool,
    /// `--relay-for-anyone` / `MESH_RELAY_FOR_ANYONE` (implies `--relay`).
    pub relay_for_anyone: bool,
    /// `--metrics` / `MESH_METRICS`.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// A `config.toml` text that is not valid TOML for this schema (the message names the line
/// and column).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ParseError(#[from] toml::de::Error);

impl Config {
    /// Reads `path` if it exists (defaults otherwise) and applies `overrides` on top.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut cfg = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(source) => {
                return Err(ConfigError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        if let Some(name) = &overrides.name {
            cfg.name = Some(name.clone());
        }
        if !overrides.listen.is_empty() {
            cfg.listen = overrides.listen.clone();
        }
        if overrides.no_mdns {
            cfg.mdns = false;
        }
        if overrides.relay {
            cfg.relay.serve = true;
        }
        if !overrides.external.is_empty() {
            cfg.external = overrides.external.clone();
        }
        if overrides.open {
            cfg.open = true;
        }
        if overrides.metrics.is_some() {
            cfg.metrics = overrides.metrics;
        }
        if overrides.relay_for_anyone {
            cfg.relay.serve = true;
            cfg.relay.for_anyone = true;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses the text of a `config.toml` (not yet validated: see [`Config::validate`]).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        Ok(toml::from_str::<Config>(text)?)
    }

    /// Checks ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.web.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "web.listen must be a loopback address (127.0.0.1 or ::1), not {}: the page is for this machine's user only",
                self.web.listen
            )));
        }
        let l = &self.limits;
        if l.max_message_bytes == 0 || l.max_message_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must be between 1 and 16 MiB".into(),
            ));
        }
        if l.max_topic_message_bytes == 0 || l.max_topic_message_bytes > 1024 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_topic_message_bytes must be between 1 and 1 MiB".into(),
            ));
        }
        if l.max_api_frame_bytes < l.max_message_bytes.max(l.max_topic_message_bytes) + 4096 {
            return Err(ConfigError::Invalid(format!(
                "limits.max_api_frame_bytes must be at least the largest message limit + 4096 ({})",
                l.max_message_bytes.max(l.max_topic_message_bytes) + 4096
            )));
        }
        if l.max_batch_messages == 0 || l.max_batch_messages > 4096 {
            return Err(ConfigError::Invalid(
                "limits.max_batch_messages must be between 1 and 4096".into(),
            ));
        }
        let d = &self.delivery;
        if d.retry_min.is_zero() || d.retry_max < d.retry_min {
            return Err(ConfigError::Invalid(
                "delivery.retry_min must be > 0 and <= delivery.retry_max".into(),
            ));
        }
        if d.ttl < Duration::from_secs(1) || d.request_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "delivery.ttl and delivery.request_timeout must be positive".into(),
            ));
        }
        for n in &self.relay.nodes {
            if !n.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(ConfigError::Invalid(format!(
                    "relay.nodes entry {n} has no /p2p/<peer id> part"
                )));
            }
        }
        for n in &self.internet.public_bootstrap {
            if !n.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))) {
                return Err(ConfigError::Invalid(format!(
                    "internet.public_bootstrap entry {n} has no /p2p/<peer id> part"
                )));
            }
        }
        if self.internet.public_network && self.internet.public_bootstrap.is_empty() {
            return Err(ConfigError::Invalid(
                "internet.public_network needs at least one internet.public_bootstrap node".into(),
            ));
        }
        if self.presence.heartbeat < Duration::from_millis(100) {
            return Err(ConfigError::Invalid("presence.heartbeat must be at least 100ms".into()));
        }
        // Upper bounds: past them a value means nothing useful (peers refuse announcements
        // with a heartbeat over an hour), and times that large overflow timer arithmetic.
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let too_long = [
            ("presence.heartbeat", self.presence.heartbeat, HOUR, "1h"),
            ("delivery.retry_max", d.retry_max, DAY, "1d"),
            (
                "delivery.send_wait",
                d.send_wait,
                10 * 60 * Duration::from_secs(1),
                "10min",
            ),
            ("delivery.request_timeout", d.request_timeout, HOUR, "1h"),
            ("delivery.ttl", d.ttl, 365 * DAY, "365d"),
            (
                "relay.max_circuit_duration",
                self.relay.max_circuit_duration,
                7 * DAY,
                "7d",
            ),
        ];
        for (name, value, max, text) in too_long {
            if value > max {
                return Err(ConfigError::Invalid(format!("{name} must be at most {text}")));
            }
        }
        Ok(())
    }

    /// Whether libp2p mDNS runs.
    pub fn libp2p_mdns(&self) -> bool {
        self.mdns && self.lan.libp2p_mdns
    }

    /// Whether UPnP port mapping runs: turned on, and some listen address is not loopback
    /// (a node only on loopback has nothing to map, and asks no router anything).
    pub fn upnp(&self) -> bool {
        self.internet.upnp && self.listens_beyond_loopback()
    }

    fn listens_beyond_loopback(&self) -> bool {
        let loopback = |a: &Multiaddr| match a.iter().next() {
            Some(libp2p::multiaddr::Protocol::Ip4(ip)) => ip.is_loopback(),
            Some(libp2p::multiaddr::Protocol::Ip6(ip)) => ip.is_loopback(),
            _ => false,
        };
        self.listen_addrs().0.iter().any(|a| !loopback(a))
    }

    /// Whether to try PCP / NAT-PMP when UPnP finds no router: on, and listening beyond
    /// loopback (as for [`Config::upnp`]).
    pub fn natpmp(&self) -> bool {
        self.internet.natpmp && self.listens_beyond_loopback()
    }

    /// Whether DNS-SD runs.
    pub fn dnssd(&self) -> bool {
        self.mdns && self.lan.dnssd
    }

    /// The configured listen addresses, or the defaults.
    pub fn listen_addrs(&self) -> (Vec<Multiaddr>, bool) {
        if self.listen.is_empty() {
            (default_listen(), true)
        } else {
            (self.listen.clone(), false)
        }
    }

    /// How often subscribed topics are caught up with each connected member (besides at
    /// every new connection): six heartbeats, between 1 s and 10 min.
    pub fn topic_sync_every(&self) -> Duration {
        self.presence
            .heartbeat
            .saturating_mul(6)
            .clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// Largest postcard-encoded delivery request a peer may send us.
    pub fn max_wire_request_bytes(&self) -> usize {
        // Each message carries its text plus at most a few hundred bytes of envelope.
        self.limits.max_batch_messages * (self.limits.max_message_bytes + 1024) + 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_network_is_off_by_default_and_needs_bootstrap_nodes_with_peer_ids() {
        let c = Config::default();
        assert!(!c.internet.public_network);
        assert_eq!(c.internet.public_bootstrap.len(), PUBLIC_BOOTSTRAP.len());
        assert!(c.validate().is_ok());
        let parse = |text: &str| {
            toml::from_str::<Config>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|e| e.to_string()))
        };
        assert!(parse("[internet]\npublic_network = true\n").is_ok(), "the default list");
        let none = parse("[internet]\npublic_network = true\npublic_bootstrap = []\n").unwrap_err();
        assert!(none.contains("at least one"), "{none}");
        let no_id = parse("[internet]\npublic_bootstrap = [\"/ip4/5.0.0.10/tcp/4001\"]\n").unwrap_err();
        assert!(no_id.contains("no /p2p/"), "{no_id}");
    }

    #[test]
    fn upnp_runs_only_when_on_and_listening_beyond_loopback() {
        let mut c = Config::default();
        assert!(c.upnp(), "default: every interface");
        c.listen = vec![
            "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
            "/ip6/::1/tcp/0".parse().unwrap(),
        ];
        assert!(!c.upnp(), "loopback only: no router is asked");
        assert!(!c.natpmp(), "nor by PCP / NAT-PMP");
        c.listen.push("/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap());
        assert!(c.upnp() && c.natpmp());
        c.internet.upnp = false;
        assert!(!c.upnp() && c.natpmp(), "each has its own switch");
        c.internet.natpmp = false;
        assert!(!c.natpmp());
    }

    #[test]
    fn the_page_is_off_by_default_and_served_on_loopback_only() {
        let c = Config::default();
        assert!(!c.web.enabled);
        assert!(c.web.listen.ip().is_loopback());
        let on = Config::parse("[web]\nenabled = true\nlisten = \"[::1]:8080\"\n").unwrap();
        assert!(on.validate().is_ok());
        let wide = Config::parse("[web]\nlisten = \"0.0.0.0:7717\"\n").unwrap();
        let err = wide.validate().unwrap_err().to_string();
        assert!(err.contains("loopback"), "{err}");
    }

    #[test]
    fn flags_override_file() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        std::fs::write(
            &p,
            "name = \"from-file\"\nmdns = true\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n",
        )
        .unwrap();
        let cfg = Config::load(&p, &Overrides::default()).unwrap();
        assert_eq!(cfg.name.as_ref().unwrap().as_str(), "from-file");
        assert!(cfg.mdns);
        let ov = Overrides {
            name: Some(NodeName::new("from-flag").unwrap()),
            listen: vec![],
            no_mdns: true,
            relay: true,
            external: vec![],
            open: false,
            relay_for_anyone: false,
            metrics: None,
        };
        let cfg = Config::load(&p, &ov).unwrap();
        assert_eq!(cfg.name.as_ref().unwrap().as_str(), "from-flag");
        assert!(!cfg.mdns);
        assert!(cfg.relay.serve);
        assert_eq!(cfg.listen.len(), 1);
    }

    #[test]
    fn missing_file_gives_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = Config::load(&tmp.path().join("none.toml"), &Overrides::default()).unwrap();
        assert_eq!(cfg, Config::default());
        assert!(cfg.listen_addrs().1);
    }

    #[test]
    fn bad_files_are_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("config.toml");
        std::fs::write(&p, "nmae = \"typo\"\n").unwrap();
        let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("nmae"), "{err}");
        std::fs::write(&p, "name = \"bad name\"\n").unwrap();
        let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("not allowed"), "{err}");
        std::fs::write(&p, "[limits]\nmax_message_bytes = 0\n").unwrap();
        assert!(Config::load(&p, &Overrides::default()).is_err());
        std::fs::write(&p, "listen = [\"not an addr\"]\n").unwrap();
        assert!(Config::load(&p, &Overrides::default()).is_err());
        std::fs::write(&p, "[relay]\nnodes = [\"/ip4/1.2.3.4/tcp/1\"]\n").unwrap();
        let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("/p2p/"), "{err}");
        // Times too long to mean anything are refused (they used to overflow a timer and
        // stop the daemon at start).
        for (text, name) in [
            (
                "[presence]\nheartbeat = \"18000000000000000000s\"\n",
                "presence.heartbeat",
            ),
            ("[delivery]\nretry_max = \"400d\"\n", "delivery.retry_max"),
            ("[delivery]\nsend_wait = \"1h\"\n", "delivery.send_wait"),
            ("[delivery]\nrequest_timeout = \"2h\"\n", "delivery.request_timeout"),
            ("[delivery]\nttl = \"1000y\"\n", "delivery.ttl"),
            (
                "[relay]\nmax_circuit_duration = \"30d\"\n",
                "relay.max_circuit_duration",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let err = Config::load(&p, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains("at most"), "{text}: {err}");
        }
        std::fs::write(&p, "[presence]\nheartbeat = \"1h\"\n[delivery]\nttl = \"365d\"\n").unwrap();
        assert!(
            Config::load(&p, &Overrides::default()).is_ok(),
            "the bounds themselves are allowed"
        );
    }
}
