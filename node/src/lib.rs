//! mesh-node: the agentmesh node.
//!
//! A node is one daemon per machine (per home directory). It owns a libp2p swarm (TCP and
//! QUIC, Noise, Yamux, identify, ping, mDNS, gossipsub, request-response), a redb store,
//! and a local API on a Unix socket. The `mesh` CLI and the MCP adapter reach it only
//! through that API ([`api::client::Client`]); only this crate talks to libp2p and redb.
//!
//! Module map:
//!
//! * [`daemon`]: start/stop a node (lock, config, identity, store, socket, tasks).
//! * [`node`]: the service behind the API verbs, and the core loop reacting to the network.
//! * [`net`]: the network actor, sole owner of the `Swarm`.
//! * [`courier`]: outbox delivery with batching, ordering, retries and TTL.
//! * [`directory`]: nodes, their agents, presence, address resolution.
//! * [`store`]: redb tables and operations, one writer thread with grouped commits.
//! * [`mesh`]: membership (the mesh secret), admission proofs, sealing, join codes.
//! * [`metrics`]: counters and gauges, served in the Prometheus text format.
//! * [`wire`]: peer-to-peer messages and the postcard codec.
//! * [`api`]: local API types, server and client.
//! * [`dnssd`]: DNS-SD advertisement and browsing.
//! * [`config`], [`home`], [`identity`], [`ids`]: settings, paths, keys, names.
//! * [`text`]: peer-supplied text made safe to show (one cleaner for the CLI and the adapter).
//! * [`settings`]: what `mesh up` was told, kept for every later start; the `mesh down` mark.
//!
//! ```
//! use mesh_node::ids::Address;
//! let a: Address = "bob@laptop".parse().unwrap();
//! assert_eq!(a.agent.as_str(), "bob");
//! ```

pub mod api;
pub mod config;
pub mod courier;
pub mod daemon;
pub mod directory;
pub mod dnssd;
pub mod error;
pub mod fuzzing;
pub mod home;
#[doc(hidden)]
pub mod hostile;
pub mod identity;
pub mod ids;
pub mod mesh;
pub mod metrics;
pub mod net;
pub mod node;
mod peer_tasks;
pub mod ratelimit;
pub mod server;
pub mod settings;
pub mod stand_in;
pub mod store;
pub mod sync;
pub mod text;
pub mod web;
pub mod webdriver;
pub mod wire;

pub use libp2p::{Multiaddr, PeerId};
