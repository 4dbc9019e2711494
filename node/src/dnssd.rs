//! DNS-SD advertisement and browsing (`_agentmesh._udp.local`), next to libp2p's own mDNS.
//!
//! Standard tools list agentmesh nodes on a LAN (`avahi-browse -r _agentmesh._udp`); nodes
//! found this way are dialed like mDNS ones. TXT keys: `peer_id`, `name`, `version`, and
//! `tcp` / `quic` ports (the SRV port is the QUIC port when there is one, else TCP).

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio_util::sync::CancellationToken;

use crate::ids::NodeName;
use crate::net::{AGENT_VERSION, NetHandle};

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_agentmesh._udp.local.";

/// A running advertisement and browser.
pub struct DnsSd {
    daemon: ServiceDaemon,
    fullname: String,
}

/// The TCP and QUIC ports of the first IPv4 (else any) listen addresses.
pub fn ports(listen: &[Multiaddr]) -> (Option<u16>, Option<u16>) {
    let mut tcp = None;
    let mut quic = None;
    let mut sorted: Vec<&Multiaddr> = listen.iter().collect();
    sorted.sort_by_key(|a| !matches!(a.iter().next(), Some(Protocol::Ip4(_))));
    for a in sorted {
        let parts: Vec<Protocol> = a.iter().collect();
        match parts.as_slice() {
            [_, Protocol::Tcp(p), ..] if tcp.is_none() => tcp = Some(*p),
            [_, Protocol::Udp(p), Protocol::QuicV1, ..] if quic.is_none() => quic = Some(*p),
            _ => {}
        }
    }
    (tcp, quic)
}

/// Why DNS-SD could not start (the node runs on without it; mDNS still works).
#[derive(Debug, thiserror::Error)]
pub enum DnsSdError {
    /// Nothing to advertise.
    #[error("no TCP or QUIC listen address to advertise")]
    NoPort,
    /// The DNS-SD daemon failed.
    #[error(transparent)]
    MdnsSd(#[from] mdns_sd::Error),
}

impl DnsSd {
    /// Advertises this node and dials agentmesh nodes found on the LAN until `cancel`.
    pub fn start(
        peer: PeerId,
        name: &NodeName,
        listen: &[Multiaddr],
        net: NetHandle,
        cancel: CancellationToken,
    ) -> Result<Self, DnsSdError> {
        let (tcp, quic) = ports(listen);
        let port = quic.or(tcp).ok_or(DnsSdError::NoPort)?;
        let daemon = ServiceDaemon::new()?;
        let id = peer.to_string();
        let instance = format!("{name}-{}", &id[id.len().saturating_sub(6)..]);
        let host = format!(
            "{}.local.",
            NodeName::from_hostname(&gethostname::gethostname().to_string_lossy())
        );
        let mut props: Vec<(&str, String)> = vec![
            ("peer_id", id.clone()),
            ("name", name.to_string()),
            ("version", AGENT_VERSION.to_string()),
        ];
        if let Some(p) = tcp {
            props.push(("tcp", p.to_string()));
        }
        if let Some(p) = quic {
            props.push(("quic", p.to_string()));
        }
        let info = ServiceInfo::new(SERVICE_TYPE, &instance, &host, "", port, props.as_slice())?.enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    _ = cancel.cancelled() => break,
                    ev = events.recv_async() => match ev {
                        Ok(ev) => ev,
                        Err(_) => break,
                    },
                };
                let ServiceEvent::ServiceResolved(svc) = ev else {
                    continue;
                };
                let Some(their) = svc
                    .get_property_val_str("peer_id")
                    .and_then(|s| s.parse::<PeerId>().ok())
                else {
                    continue;
                };
                if their == peer {
                    continue;
                }
                let tcp: Option<u16> = svc.get_property_val_str("tcp").and_then(|p| p.parse().ok());
                let quic: Option<u16> = svc.get_property_val_str("quic").and_then(|p| p.parse().ok());
                let mut addrs = Vec::new();
                for ip in svc.get_addresses_v4() {
                    if let Some(p) = tcp {
                        addrs.push(Multiaddr::empty().with(Protocol::Ip4(ip)).with(Protocol::Tcp(p)));
                    }
                    if let Some(p) = quic {
                        addrs.push(
                            Multiaddr::empty()
                                .with(Protocol::Ip4(ip))
                                .with(Protocol::Udp(p))
                                .with(Protocol::QuicV1),
                        );
                    }
                }
                if !addrs.is_empty() {
                    tracing::debug!(peer = %their, ?addrs, "found over DNS-SD");
                    let _ = net.add_addrs(their, addrs, true).await;
                }
            }
        });
        Ok(Self { daemon, fullname })
    }

    /// Withdraws the advertisement (goodbye packets) and stops.
    pub fn stop(self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(1));
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_ipv4_ports() {
        let l: Vec<Multiaddr> = [
            "/ip6/::1/tcp/9",
            "/ip4/10.0.0.1/tcp/4001",
            "/ip4/10.0.0.1/udp/4002/quic-v1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(ports(&l), (Some(4001), Some(4002)));
        assert_eq!(ports(&[]), (None, None));
    }
}
