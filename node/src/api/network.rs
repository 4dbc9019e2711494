//! The local API's own views of the network and the store, converted at the boundary
//! (`From`), so that a field added to the network actor's or the store's types does not
//! silently change the API's encoding. Field for field as they were when the API owned
//! none of them, so the encoding did not change with the move.

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// What the store holds (`mesh status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreView {
    /// Local agents.
    pub agents: u64,
    /// Inbox entries (all agents).
    pub inbox: u64,
    /// Unread inbox entries.
    pub unread: u64,
    /// Outbox entries (all states).
    pub outbox: u64,
    /// Outbox entries awaiting delivery.
    pub pending: u64,
    /// Topic messages stored.
    pub topic_messages: u64,
    /// Local publications that reached no peer yet.
    pub topic_pending: u64,
    /// Read receipts waiting to go to the nodes whose agents sent the messages.
    pub receipts_pending: u64,
    /// Known peers.
    pub peers: u64,
    /// Size of the file in bytes.
    pub file_bytes: u64,
}

impl From<crate::store::StoreStats> for StoreView {
    fn from(s: crate::store::StoreStats) -> Self {
        Self {
            agents: s.agents,
            inbox: s.inbox,
            unread: s.unread,
            outbox: s.outbox,
            pending: s.pending,
            topic_messages: s.topic_messages,
            topic_pending: s.topic_pending,
            receipts_pending: s.receipts_pending,
            peers: s.peers,
            file_bytes: s.file_bytes,
        }
    }
}

/// Whether this node is reachable from the internet.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum NatView {
    /// Not known yet (no test done).
    #[default]
    Unknown,
    /// An external address of ours was confirmed reachable by another node.
    Public,
    /// Other nodes tried and could not reach us: behind NAT or a firewall.
    Private,
}

impl From<crate::net::NatStatus> for NatView {
    fn from(s: crate::net::NatStatus) -> Self {
        match s {
            crate::net::NatStatus::Unknown => NatView::Unknown,
            crate::net::NatStatus::Public => NatView::Public,
            crate::net::NatStatus::Private => NatView::Private,
        }
    }
}

/// A relay slot this node holds (or is asking for).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReservationView {
    /// The relay.
    pub relay: PeerId,
    /// The address others can reach us at through it (`.../p2p/<relay>/p2p-circuit`).
    pub addr: Option<Multiaddr>,
    /// The relay accepted it.
    pub accepted: bool,
    /// When it was (last) accepted, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Renewals so far.
    pub renewals: u32,
}

/// Hole-punching outcomes since start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PunchView {
    /// Attempts to turn a relayed connection into a direct one.
    pub attempts: u64,
    /// Attempts that gave a direct connection.
    pub successes: u64,
    /// Attempts that failed (the relayed connection stays).
    pub failures: u64,
}

/// The reachability part of `mesh status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReachView {
    /// AutoNAT's verdict.
    pub nat: NatView,
    /// Confirmed external addresses (reachable from the internet).
    pub external: Vec<Multiaddr>,
    /// Relay slots.
    pub reservations: Vec<ReservationView>,
    /// Hole punching.
    pub punch: PunchView,
    /// This node offers relay service.
    pub relay_serving: bool,
    /// Relayed connections this node carries for others right now.
    pub relay_circuits: u32,
    /// Port mapping on the home router (API 5).
    pub upnp: UpnpView,
    /// The public network option (API 5).
    pub public: PublicNetView,
}

/// How this node uses the public libp2p network (`[internet] public_network`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicNetView {
    /// The option is on.
    pub enabled: bool,
    /// Public DHT nodes in this node's routing table.
    pub dht_peers: u32,
    /// When the rendezvous record was last published, ms since the epoch.
    pub published_ms: Option<u64>,
    /// Members found through the rendezvous since start.
    pub found: u32,
}

impl From<crate::net::PublicNetInfo> for PublicNetView {
    fn from(p: crate::net::PublicNetInfo) -> Self {
        Self {
            enabled: p.enabled,
            dht_peers: p.dht_peers,
            published_ms: p.published_ms,
            found: p.found,
        }
    }
}

/// How UPnP port mapping stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpnpStatusView {
    /// Turned off (`[internet] upnp = false`, or listening on loopback only).
    #[default]
    Off,
    /// Looking for the router, or asking it.
    Searching,
    /// No UPnP router answered on this network.
    NoGateway,
    /// The router's own address is not a public one.
    NotRoutable,
    /// The router forwards ports to this node.
    Mapped,
}

/// Port mapping on the home router.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpnpView {
    /// The state.
    pub status: UpnpStatusView,
    /// The router's addresses that lead to this node.
    pub mapped: Vec<Multiaddr>,
}

impl From<crate::net::UpnpInfo> for UpnpView {
    fn from(u: crate::net::UpnpInfo) -> Self {
        use crate::net::UpnpStatus as S;
        Self {
            status: match u.status {
                S::Off => UpnpStatusView::Off,
                S::Searching => UpnpStatusView::Searching,
                S::NoGateway => UpnpStatusView::NoGateway,
                S::NotRoutable => UpnpStatusView::NotRoutable,
                S::Mapped => UpnpStatusView::Mapped,
            },
            mapped: u.mapped,
        }
    }
}

impl From<crate::net::ReachInfo> for ReachView {
    fn from(r: crate::net::ReachInfo) -> Self {
        Self {
            nat: r.nat.into(),
            external: r.external,
            reservations: r
                .reservations
                .into_iter()
                .map(|s| ReservationView {
                    relay: s.relay,
                    addr: s.addr,
                    accepted: s.accepted,
                    since_ms: s.since_ms,
                    renewals: s.renewals,
                })
                .collect(),
            punch: PunchView {
                attempts: r.punch.attempts,
                successes: r.punch.successes,
                failures: r.punch.failures,
            },
            relay_serving: r.relay_serving,
            relay_circuits: r.relay_circuits,
            upnp: r.upnp.into(),
            public: r.public.into(),
        }
    }
}

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathView {
    /// A private, loopback or link-local address.
    Lan,
    /// A public address.
    Internet,
    /// Through a relay (`/p2p-circuit`).
    Relayed,
}

impl From<crate::net::Path> for PathView {
    fn from(p: crate::net::Path) -> Self {
        match p {
            crate::net::Path::Lan => PathView::Lan,
            crate::net::Path::Internet => PathView::Internet,
            crate::net::Path::Relayed => PathView::Relayed,
        }
    }
}

/// Hole punching for a node reached through relays only: tried again while that lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchAttemptsView {
    /// Fresh relayed connections dialed to punch again (each one a DCUtR attempt).
    pub retries: u32,
    /// Why the last punch failed, as DCUtR said.
    pub last_failure: Option<String>,
}

impl From<crate::net::PunchState> for PunchAttemptsView {
    fn from(p: crate::net::PunchState) -> Self {
        Self {
            retries: p.retries,
            last_failure: p.last_failure,
        }
    }
}

impl PunchAttemptsView {
    /// For people: `punching for a direct connection (3 tries; last: ...)`.
    pub fn describe(&self) -> String {
        let tries = match self.retries {
            0 => "first try".to_string(),
            1 => "tried again once".to_string(),
            n => format!("tried again {n} times"),
        };
        match &self.last_failure {
            Some(why) => format!("punching for a direct connection ({tries}; last failed: {why})"),
            None => format!("punching for a direct connection ({tries})"),
        }
    }
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionView {
    /// The peer's address on it.
    pub addr: Multiaddr,
    /// We dialed it (else the peer did).
    pub dialed: bool,
    /// Direct over the LAN, direct over the internet, or through a relay.
    pub path: PathView,
    /// The relay, for a relayed connection.
    pub via: Option<PeerId>,
    /// `tcp` or `quic` (of the hop to the relay, when relayed).
    pub transport: String,
}

impl ConnectionView {
    /// `direct over tcp (LAN)`, `relayed via 12D3… (quic)`.
    pub fn describe(&self) -> String {
        match (self.path, &self.via) {
            (PathView::Relayed, Some(r)) => format!("relayed via {r} ({})", self.transport),
            (PathView::Relayed, None) => format!("relayed ({})", self.transport),
            (PathView::Lan, _) => format!("direct over {} (LAN)", self.transport),
            (PathView::Internet, _) => format!("direct over {} (internet)", self.transport),
        }
    }
}

impl From<crate::net::ConnectionInfo> for ConnectionView {
    fn from(c: crate::net::ConnectionInfo) -> Self {
        Self {
            addr: c.addr,
            dialed: c.dialed,
            path: c.path.into(),
            via: c.via,
            transport: c.transport,
        }
    }
}
