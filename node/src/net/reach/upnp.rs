//! Port mapping on the home router (UPnP IGD, libp2p's `upnp` behaviour): what it came to,
//! for `mesh status`. The behaviour itself maps each listening port, renews the mapping and
//! confirms the router's address as an external one; this only keeps the outcome.

use libp2p::Multiaddr;

/// How UPnP port mapping stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum UpnpStatus {
    /// Turned off (`[internet] upnp = false`, or listening on loopback only).
    #[default]
    Off,
    /// Looking for the router, or asking it.
    Searching,
    /// No UPnP router answered on this network.
    NoGateway,
    /// The router answered, but its own address is not a public one (a NAT behind it).
    NotRoutable,
    /// The router forwards ports to this node (the addresses are in [`UpnpInfo::mapped`]).
    Mapped,
}

/// Port mapping as it stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpnpInfo {
    /// The state.
    pub status: UpnpStatus,
    /// The router's addresses that lead to this node.
    pub mapped: Vec<Multiaddr>,
}

impl UpnpInfo {
    /// At start: searching when turned on.
    pub(in crate::net) fn new(on: bool) -> Self {
        Self {
            status: if on { UpnpStatus::Searching } else { UpnpStatus::Off },
            mapped: Vec::new(),
        }
    }

    /// Takes one event of the behaviour; what to log about it.
    pub(in crate::net) fn on_event(&mut self, e: libp2p::upnp::Event) -> String {
        use libp2p::upnp::Event;
        match e {
            Event::NewExternalAddr { external_addr, .. } => {
                let said = format!("the router forwards {external_addr} to this node (UPnP)");
                if !self.mapped.contains(&external_addr) {
                    self.mapped.push(external_addr);
                }
                self.status = UpnpStatus::Mapped;
                said
            }
            Event::ExpiredExternalAddr { external_addr, .. } => {
                self.mapped.retain(|a| a != &external_addr);
                if self.mapped.is_empty() {
                    self.status = UpnpStatus::Searching;
                }
                format!("the router's UPnP mapping {external_addr} could not be renewed")
            }
            Event::GatewayNotFound => {
                self.status = UpnpStatus::NoGateway;
                "no UPnP router on this network".into()
            }
            Event::NonRoutableGateway => {
                self.status = UpnpStatus::NotRoutable;
                "the UPnP router has no public address (another NAT behind it): no port mapping".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::upnp::Event;

    #[test]
    fn mappings_come_and_go_and_the_state_follows() {
        let mut u = UpnpInfo::new(true);
        assert_eq!(u.status, UpnpStatus::Searching);
        let local: Multiaddr = "/ip4/10.32.0.10/tcp/4001".parse().unwrap();
        let ext: Multiaddr = "/ip4/5.0.0.3/tcp/4001".parse().unwrap();
        let said = u.on_event(Event::NewExternalAddr {
            local_addr: local.clone(),
            external_addr: ext.clone(),
        });
        assert!(said.contains("5.0.0.3"), "{said}");
        assert_eq!((u.status, u.mapped.clone()), (UpnpStatus::Mapped, vec![ext.clone()]));
        u.on_event(Event::ExpiredExternalAddr {
            local_addr: local,
            external_addr: ext,
        });
        assert_eq!((u.status, u.mapped.len()), (UpnpStatus::Searching, 0));
        u.on_event(Event::GatewayNotFound);
        assert_eq!(u.status, UpnpStatus::NoGateway);
        u.on_event(Event::NonRoutableGateway);
        assert_eq!(u.status, UpnpStatus::NotRoutable);
        assert_eq!(UpnpInfo::new(false).status, UpnpStatus::Off);
    }
}
