//! Port mapping by PCP or NAT-PMP (RFC 6887, RFC 6886; the `crab_nat` client), for
//! routers that speak those and not UPnP (Apple's, many OpenWrt and miniupnpd setups).
//! Started when UPnP found no router: asks the default gateway to forward each listening
//! port (TCP, and UDP for QUIC), renews the mappings at half their lifetime, and removes
//! them when the node stops. The router's addresses then become external addresses, as
//! with UPnP. The task reports to the actor; the actor keeps the outcome in
//! [`super::UpnpInfo`] (one port-mapping line in `mesh status`).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMapping, PortMappingOptions, PortMappingType, TimeoutConfig};
use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Lifetime asked for a mapping (renewed at half of what the router grants).
pub(in crate::net) const MAPPING_LIFETIME: u32 = 3600;
/// The port PCP and NAT-PMP servers listen on.
const SERVER_PORT: u16 = 5351;

/// What the port-mapping task tells the actor.
#[derive(Debug)]
pub(in crate::net) enum PmpEvent {
    /// The router forwards these addresses to this node (by PCP or NAT-PMP).
    Mapped(Vec<Multiaddr>, &'static str),
    /// No mapping could be made; why.
    Failed(String),
}

/// A transport protocol to map a port of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::net) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn of(self) -> InternetProtocol {
        match self {
            Proto::Tcp => InternetProtocol::Tcp,
            Proto::Udp => InternetProtocol::Udp,
        }
    }
}

/// The listening ports to map: the TCP and UDP (QUIC) ports of `listen`'s IPv4 addresses.
pub(in crate::net) fn ports(listen: &[Multiaddr]) -> Vec<(Proto, u16)> {
    let mut out = Vec::new();
    for a in listen {
        let mut it = a.iter();
        let Some(Protocol::Ip4(ip)) = it.next() else { continue };
        if ip.is_loopback() {
            continue;
        }
        let p = match it.next() {
            Some(Protocol::Tcp(port)) => (Proto::Tcp, port),
            Some(Protocol::Udp(port)) if a.iter().any(|p| p == Protocol::QuicV1) => (Proto::Udp, port),
            _ => continue,
        };
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// The default IPv4 gateway, from the kernel's routing table (Linux); none elsewhere.
pub(in crate::net) fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    gateway_in(&table)
}

/// The gateway of the default route in a `/proc/net/route` table.
fn gateway_in(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 || f[1] != "00000000" {
            return None;
        }
        // Little-endian hex, as the kernel prints it.
        let g = u32::from_str_radix(f[2], 16).ok()?;
        (g != 0).then(|| Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// Maps `ports` on `gateway`, reports, renews until `cancel`, then removes the mappings.
pub(in crate::net) async fn run(
    gateway: Ipv4Addr,
    ports: Vec<(Proto, u16)>,
    report: mpsc::Sender<PmpEvent>,
    cancel: CancellationToken,
) {
    let client = match client_address(gateway) {
        Ok(ip) => ip,
        Err(e) => {
            let _ = report
                .send(PmpEvent::Failed(format!("no route to the router {gateway}: {e}")))
                .await;
            return;
        }
    };
    let quick = TimeoutConfig {
        initial_timeout: Duration::from_millis(250),
        max_retries: 3,
        max_retry_timeout: Some(Duration::from_secs(1)),
    };
    let mut mappings = Vec::new();
    for (proto, port) in ports {
        let Some(port) = NonZeroU16::new(port) else { continue };
        let options = PortMappingOptions {
            external_port: Some(port),
            lifetime_seconds: Some(MAPPING_LIFETIME),
            timeout_config: Some(quick),
        };
        let mapped = tokio::select! {
            _ = cancel.cancelled() => return,
            m = PortMapping::new(IpAddr::V4(gateway), IpAddr::V4(client), proto.of(), port, options) => m,
        };
        match mapped {
            Ok(m) => mappings.push(m),
            Err(e) => {
                let _ = report
                    .send(PmpEvent::Failed(format!("the router did not map port {port}: {e}")))
                    .await;
            }
        }
    }
    if mappings.is_empty() {
        return;
    }
    let external = match mappings[0].mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => Some(external_ip),
        PortMappingType::NatPmp => crab_nat::natpmp::external_address(IpAddr::V4(gateway), Some(quick))
            .await
            .ok()
            .map(IpAddr::V4),
    };
    let method = match mappings[0].mapping_type() {
        PortMappingType::Pcp { .. } => "PCP",
        PortMappingType::NatPmp => "NAT-PMP",
    };
    match external {
        Some(ip) => {
            let addrs = mappings.iter().filter_map(|m| external_addr(ip, m)).collect();
            let _ = report.send(PmpEvent::Mapped(addrs, method)).await;
        }
        None => {
            let _ = report
                .send(PmpEvent::Failed(
                    "the router mapped the ports but did not tell its address".into(),
                ))
                .await;
        }
    }
    loop {
        let next = mappings
            .iter()
            .map(|m| m.expiration() - Duration::from_secs(u64::from(m.lifetime()) / 2))
            .min()
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {
                for m in &mut mappings {
                    if let Err(e) = m.renew().await {
                        tracing::warn!(port = %m.internal_port(), error = %e, "the router did not renew a port mapping");
                    }
                }
            }
        }
    }
    for m in mappings {
        let port = m.internal_port();
        if let Err((e, _)) = m.try_drop().await {
            tracing::debug!(%port, error = %e, "the router did not remove a port mapping");
        }
    }
}

/// Our address on the way to `gateway` (no packet is sent).
fn client_address(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect((gateway, SERVER_PORT))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(std::io::Error::other("not an IPv4 route")),
    }
}

/// The router's address that leads to mapping `m`.
fn external_addr(ip: IpAddr, m: &PortMapping) -> Option<Multiaddr> {
    let IpAddr::V4(ip) = ip else { return None };
    let port = m.external_port().get();
    Some(match m.protocol() {
        InternetProtocol::Tcp => Multiaddr::empty().with(Protocol::Ip4(ip)).with(Protocol::Tcp(port)),
        InternetProtocol::Udp => Multiaddr::empty()
            .with(Protocol::Ip4(ip))
            .with(Protocol::Udp(port))
            .with(Protocol::QuicV1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_the_routing_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00001F0A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t01001F0A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(gateway_in(table), Some(Ipv4Addr::new(10, 31, 0, 1)));
        assert_eq!(gateway_in("Iface\tDestination\tGateway\n"), None, "no default route");
    }

    #[test]
    fn the_ports_to_map_are_the_tcp_and_quic_ports_beyond_loopback() {
        let listen: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.31.0.10/tcp/4001",
            "/ip4/10.31.0.10/udp/4002/quic-v1",
            "/ip4/192.168.1.5/tcp/4001",
            "/ip6/::1/tcp/4001",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(ports(&listen), vec![(Proto::Tcp, 4001), (Proto::Udp, 4002)]);
    }
}
