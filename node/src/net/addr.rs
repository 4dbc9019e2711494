//! Addresses as the actor sees them: how a connection reaches its peer (LAN, internet,
//! relayed), the relay of a relayed address, user-typed multiaddrs, dial errors in words.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// One open connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionInfo {
    /// The peer's address on it.
    pub addr: Multiaddr,
    /// We dialed it (else the peer did).
    pub dialed: bool,
    /// Direct over the LAN, direct over the internet, or through a relay.
    pub path: Path,
    /// The relay, for a relayed connection.
    pub via: Option<PeerId>,
    /// `tcp` or `quic` (of the hop to the relay, when relayed).
    pub transport: String,
}

impl ConnectionInfo {
    pub(super) fn of(addr: &Multiaddr, dialed: bool) -> Self {
        let via = relay_of(addr);
        let transport = if addr.iter().any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic)) {
            "quic"
        } else if addr.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
            "tcp"
        } else {
            "other"
        };
        Self {
            addr: addr.clone(),
            dialed,
            path: path_of(addr),
            via,
            transport: transport.to_string(),
        }
    }

    /// `direct over tcp (LAN)`, `relayed via 12D3… (quic)`.
    pub fn describe(&self) -> String {
        match (self.path, &self.via) {
            (Path::Relayed, Some(r)) => format!("relayed via {r} ({})", self.transport),
            (Path::Relayed, None) => format!("relayed ({})", self.transport),
            (Path::Lan, _) => format!("direct over {} (LAN)", self.transport),
            (Path::Internet, _) => format!("direct over {} (internet)", self.transport),
        }
    }
}

/// The relay a relayed address goes through (the PeerId before `/p2p-circuit`).
pub fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// How a connection reaches its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Path {
    /// A private, loopback or link-local address.
    Lan,
    /// A public address.
    Internet,
    /// Through a relay (`/p2p-circuit`).
    Relayed,
}

/// Classifies a connection's remote address.
pub fn path_of(a: &Multiaddr) -> Path {
    if a.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
        return Path::Relayed;
    }
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) if ip.is_private() || ip.is_loopback() || ip.is_link_local() => Path::Lan,
        Some(Protocol::Ip6(ip)) if ip.is_loopback() || is_link_local_v6(a) || (ip.segments()[0] & 0xfe00) == 0xfc00 => {
            Path::Lan
        }
        // A dialed name stays a name in the connection's address.
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h))
            if h.eq_ignore_ascii_case("localhost") || h.to_ascii_lowercase().ends_with(".local") =>
        {
            Path::Lan
        }
        _ => Path::Internet,
    }
}

pub(crate) fn is_loopback(a: &Multiaddr) -> bool {
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

pub(crate) fn is_link_local_v6(a: &Multiaddr) -> bool {
    matches!(a.iter().next(), Some(Protocol::Ip6(ip)) if ip.segments()[0] & 0xffc0 == 0xfe80)
}

/// A multiaddr typed by a user that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed multiaddr {input:?}: {why} (example: /ip4/192.168.1.20/tcp/4001)")]
pub struct MultiaddrError {
    /// What was typed.
    pub input: String,
    /// Why it does not parse.
    pub why: String,
}

/// Parses a multiaddr typed by a user, with an example in the error.
pub fn parse_multiaddr(s: &str) -> Result<Multiaddr, MultiaddrError> {
    s.trim().parse().map_err(|e: libp2p::multiaddr::Error| MultiaddrError {
        input: s.to_string(),
        why: e.to_string(),
    })
}

/// The PeerId an address ends with (`.../p2p/<id>`), if any.
pub(crate) fn peer_of(addr: &Multiaddr) -> Option<libp2p::PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// The address without its trailing `/p2p/<id>`.
pub fn strip_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

pub(super) fn dial_error_text(e: &libp2p::swarm::DialError) -> String {
    use libp2p::swarm::DialError;
    match e {
        DialError::LocalPeerId { .. } => "that is this node's own address".into(),
        DialError::NoAddresses => "no address to dial".into(),
        DialError::WrongPeerId { obtained, .. } => {
            format!("the node there has PeerId {obtained}, not the one in the address")
        }
        DialError::Transport(errs) => errs
            .iter()
            .map(|(a, e)| format!("{a}: {}", transport_error_text(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn transport_error_text(e: &libp2p::TransportError<std::io::Error>) -> String {
    match e {
        libp2p::TransportError::MultiaddrNotSupported(a) => format!("address not supported ({a})"),
        libp2p::TransportError::Other(io) => {
            let mut s = io.to_string();
            let mut src = std::error::Error::source(io);
            while let Some(inner) = src {
                s = format!("{s}: {inner}");
                src = inner.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_by_address() {
        let p = |s: &str| path_of(&s.parse().unwrap());
        assert_eq!(p("/ip4/192.168.1.2/tcp/1"), Path::Lan);
        assert_eq!(p("/ip4/127.0.0.1/tcp/1"), Path::Lan);
        assert_eq!(p("/ip6/::1/tcp/1"), Path::Lan);
        assert_eq!(p("/ip6/fd00::2/tcp/1"), Path::Lan);
        assert_eq!(p("/dns4/localhost/tcp/1"), Path::Lan);
        assert_eq!(p("/dns/printer.local/tcp/1"), Path::Lan);
        assert_eq!(p("/ip4/5.0.0.10/tcp/1"), Path::Internet);
        assert_eq!(p("/dns4/example.org/tcp/1"), Path::Internet);
        let relayed = "/ip4/5.0.0.10/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit";
        assert_eq!(p(relayed), Path::Relayed);
    }
}
