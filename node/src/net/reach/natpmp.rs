//! Port mapping by PCP or NAT-PMP (RFC 6887, RFC 6886; the `crab_nat` client), for
//! routers that speak those and not UPnP (Apple's, many OpenWrt and miniupnpd setups).
//! Started when UPnP found no router: asks the default gateway to forward each listening
//! port (TCP, and UDP for QUIC), renews the mappings at half their lifetime, and removes
//! them when the node stops. The router's addresses then become external addresses, as
//! with UPnP. The task reports to the actor; the actor keeps the outcome in
//! [`super::UpnpInfo`] (one port-mapping line in `mesh status`).

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

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
    /// The router no longer forwards these addresses (a mapping ran out unrenewed).
    Lost(Vec<Multiaddr>),
}

/// How soon a renewal the router did not answer is tried again (at most: never past the
/// mapping's end).
const RENEW_RETRY: Duration = Duration::from_secs(30);

/// Where the renewal of one mapping stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Renewal {
    /// When the router's grant runs out.
    expires: Instant,
    /// The lifetime it granted.
    lifetime: Duration,
    /// The last renewal the router did not answer, if the one before it failed.
    failed: Option<Instant>,
}

/// What became of a mapping after a renewal attempt.
#[derive(Debug, PartialEq, Eq)]
enum Renewed {
    /// Renewed, or still running on the old grant (try again by [`Renewal::due`]).
    Held,
    /// Ran out: the router no longer forwards the port.
    Lost,
}

impl Renewal {
    /// When to renew: at half the granted lifetime; after a failure, [`RENEW_RETRY`] later,
    /// and at the latest when the grant ends.
    fn due(&self) -> Instant {
        match self.failed {
            None => self.expires - self.lifetime / 2,
            Some(at) => (at + RENEW_RETRY).min(self.expires),
        }
    }

    /// Takes the outcome of a renewal at `now` (`Ok` with the new grant's end and lifetime).
    fn after(&mut self, outcome: Result<(Instant, Duration), ()>, now: Instant) -> Renewed {
        match outcome {
            Ok((expires, lifetime)) => {
                *self = Renewal {
                    expires,
                    lifetime,
                    failed: None,
                };
                Renewed::Held
            }
            Err(()) if now >= self.expires => Renewed::Lost,
            Err(()) => {
                self.failed = Some(now);
                Renewed::Held
            }
        }
    }
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

/// How long after losing every mapping (a router that rebooted, say) they are asked for
/// again.
const REMAP_AFTER: Duration = Duration::from_secs(60);

/// Maps `ports` on `gateway`, reports, renews until `cancel`, then removes the mappings.
/// Mappings the router stops renewing are reported lost; when all are, they are asked for
/// again after [`REMAP_AFTER`] (a router that once mapped them speaks the protocol).
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
    let mut mapped_once = false;
    loop {
        if let Some((mappings, external)) = map_all(gateway, client, &ports, &report, &cancel).await {
            mapped_once = true;
            let kept = hold(mappings, external, &report, &cancel).await;
            if cancel.is_cancelled() {
                for m in kept {
                    let port = m.internal_port();
                    if let Err((e, _)) = m.try_drop().await {
                        tracing::debug!(%port, error = %e, "the router did not remove a port mapping");
                    }
                }
                return;
            }
        } else if !mapped_once || cancel.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(REMAP_AFTER) => {}
        }
    }
}

/// Timeouts for one request to the router: quick, it is on the LAN.
const QUICK: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 3,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

/// Asks for every port and reports what came of it: the mappings made and the router's
/// address, or `None` when none was made (or the router did not tell its address).
async fn map_all(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    ports: &[(Proto, u16)],
    report: &mpsc::Sender<PmpEvent>,
    cancel: &CancellationToken,
) -> Option<(Vec<PortMapping>, IpAddr)> {
    let mut mappings = Vec::new();
    for &(proto, port) in ports {
        let Some(port) = NonZeroU16::new(port) else { continue };
        let options = PortMappingOptions {
            external_port: Some(port),
            lifetime_seconds: Some(MAPPING_LIFETIME),
            timeout_config: Some(QUICK),
        };
        let mapped = tokio::select! {
            _ = cancel.cancelled() => return None,
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
    let first = mappings.first()?;
    let (external, method) = match first.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (Some(external_ip), "PCP"),
        PortMappingType::NatPmp => (
            crab_nat::natpmp::external_address(IpAddr::V4(gateway), Some(QUICK))
                .await
                .ok()
                .map(IpAddr::V4),
            "NAT-PMP",
        ),
    };
    let Some(ip) = external else {
        let _ = report
            .send(PmpEvent::Failed(
                "the router mapped the ports but did not tell its address".into(),
            ))
            .await;
        return None;
    };
    let addrs = mappings.iter().filter_map(|m| external_addr(ip, m)).collect();
    let _ = report.send(PmpEvent::Mapped(addrs, method)).await;
    Some((mappings, ip))
}

/// Renews `mappings` until `cancel` (then returns those still held) or until all ran out
/// unrenewed (reported [`PmpEvent::Lost`] one by one as they do).
async fn hold(
    mappings: Vec<PortMapping>,
    external: IpAddr,
    report: &mpsc::Sender<PmpEvent>,
    cancel: &CancellationToken,
) -> Vec<PortMapping> {
    let mut held: Vec<(PortMapping, Renewal)> = mappings
        .into_iter()
        .map(|m| {
            let r = Renewal {
                expires: m.expiration(),
                lifetime: Duration::from_secs(u64::from(m.lifetime())),
                failed: None,
            };
            (m, r)
        })
        .collect();
    while !held.is_empty() {
        let next = held.iter().map(|(_, r)| r.due()).min().unwrap_or_else(Instant::now);
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
        }
        let mut lost = Vec::new();
        let mut i = 0;
        while i < held.len() {
            let (m, r) = &mut held[i];
            if r.due() > Instant::now() {
                i += 1;
                continue;
            }
            let outcome = match m.renew().await {
                Ok(()) => Ok((m.expiration(), Duration::from_secs(u64::from(m.lifetime())))),
                Err(e) => {
                    tracing::warn!(port = %m.internal_port(), error = %e, "the router did not renew a port mapping");
                    Err(())
                }
            };
            if r.after(outcome, Instant::now()) == Renewed::Lost {
                let (m, _) = held.remove(i);
                lost.extend(external_addr(external, &m));
            } else {
                i += 1;
            }
        }
        if !lost.is_empty() {
            let _ = report.send(PmpEvent::Lost(lost)).await;
        }
    }
    held.into_iter().map(|(m, _)| m).collect()
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

    #[test]
    fn a_mapping_is_renewed_at_half_its_lifetime_retried_when_the_router_is_silent_and_lost_when_it_runs_out() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut r = Renewal {
            expires: t0 + hour,
            lifetime: hour,
            failed: None,
        };
        assert_eq!(r.due(), t0 + hour / 2);
        // A renewal the router answers: the new grant counts.
        let now = t0 + hour / 2;
        assert_eq!(r.after(Ok((now + hour, hour)), now), Renewed::Held);
        assert_eq!(r.due(), now + hour / 2);
        // The router goes silent: tried again soon, while the grant lasts.
        let silent = now + hour / 2;
        assert_eq!(r.after(Err(()), silent), Renewed::Held);
        assert_eq!(r.due(), silent + RENEW_RETRY);
        // Near the end, the last try is at the end itself, not past it.
        let late = now + hour - Duration::from_secs(10);
        assert_eq!(r.after(Err(()), late), Renewed::Held);
        assert_eq!(r.due(), now + hour);
        // At the end, unrenewed: the router no longer forwards the port.
        assert_eq!(r.after(Err(()), now + hour), Renewed::Lost);
    }
}
