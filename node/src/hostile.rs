//! A hostile outsider, for the flood tests and the flood benchmark (not used by the node).
//!
//! [`flood`] runs many throw-away identities against a node. Each connects from one of
//! several loopback source addresses (`127.0.0.2` and up, so per-address bounds are not
//! the only thing holding), then writes into everything it can open: admission and join
//! frames that declare and carry far more than those protocols take, and requests on every
//! members-only protocol (direct messages, announcements, catch-up, key chains) that declare
//! megabytes and send as much as flow control lets through. Optionally it also holds
//! sockets that connect and never say a word. When the node hangs up on an identity, a new
//! one takes its place, until the time is up.
//!
//! With [`FloodPlan::member`] it is a member gone bad instead: one admitted identity keeping
//! [`MEMBER_STREAMS`] direct-message requests of 4 MiB in flight.
//!
//! Traffic goes only to the address given, which callers keep on loopback.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::prelude::*;
use libp2p::core::transport::{DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, muxing::StreamMuxerBox};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, Swarm, identify, noise, yamux};

use crate::wire;

/// What a flood does.
#[derive(Clone, Debug)]
pub struct FloodPlan {
    /// The node's TCP address (with or without `/p2p/`).
    pub target: Multiaddr,
    /// Identities connected at once.
    pub identities: usize,
    /// Loopback source addresses used in turn (`127.0.0.2` onwards).
    pub sources: u8,
    /// Idle sockets held open at once.
    pub idle_sockets: usize,
    /// How long it runs.
    pub duration: Duration,
    /// Flood as a member instead (one identity, admitted): its key and `mesh.key`.
    pub member: Option<(libp2p::identity::Keypair, crate::mesh::Membership)>,
}

/// What a flood did.
#[derive(Clone, Debug, Default)]
pub struct FloodReport {
    /// Identities that connected.
    pub identities: u64,
    /// Requests written.
    pub requests: u64,
    /// Idle sockets opened.
    pub sockets: u64,
}

/// The first 4 KiB of what the other side says.
async fn read_some<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    io.take(4096).read_to_end(&mut v).await?;
    Ok(v)
}

async fn write_all<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    io.write_all(bytes).await?;
    io.close().await
}

/// A codec writing whatever bytes it is given, as is: the attacker picks the length prefixes.
#[derive(Clone, Default)]
pub struct Raw;

impl request_response::Codec for Raw {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_some(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        read_some(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        write_all(io, &req).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()> {
        write_all(io, &res).await
    }
}

type RawBehaviour = request_response::Behaviour<Raw>;

#[allow(missing_docs)]
mod composed {
    use super::*;

    #[derive(NetworkBehaviour)]
    pub struct Flooder {
        pub identify: identify::Behaviour,
        pub admit: RawBehaviour,
        pub join: RawBehaviour,
        pub pair: RawBehaviour,
        pub dm: RawBehaviour,
        pub hello: RawBehaviour,
        pub sync: RawBehaviour,
        pub rekey: RawBehaviour,
        pub kad: RawBehaviour,
        pub probe: RawBehaviour,
        pub gossip: RawBehaviour,
        pub dcutr: RawBehaviour,
        pub autonat: RawBehaviour,
        pub hop: RawBehaviour,
    }
}
use composed::Flooder;

fn raw(protocol: StreamProtocol) -> RawBehaviour {
    request_response::Behaviour::with_codec(
        Raw,
        [(protocol, ProtocolSupport::Outbound)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(256),
    )
}

/// TCP that dials from a chosen local address (and listens nowhere).
struct FromSource(IpAddr);

impl Transport for FromSource {
    type Output = libp2p::tcp::tokio::TcpStream;
    type Error = io::Error;
    type ListenerUpgrade = BoxFuture<'static, io::Result<Self::Output>>;
    type Dial = BoxFuture<'static, io::Result<Self::Output>>;

    fn listen_on(&mut self, _: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        Err(TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: ListenerId) -> bool {
        false
    }

    fn dial(&mut self, addr: Multiaddr, _: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        let mut it = addr.iter();
        let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) = (it.next(), it.next()) else {
            return Err(TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.0;
        Ok(Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            let stream = socket.connect(SocketAddr::new(IpAddr::V4(ip), port)).await?;
            Ok(libp2p::tcp::tokio::TcpStream(stream))
        }))
    }

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Poll::Pending
    }
}

fn flooder(source: IpAddr, key: Option<libp2p::identity::Keypair>) -> io::Result<Swarm<Flooder>> {
    let key = key.unwrap_or_else(libp2p::identity::Keypair::generate_ed25519);
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
            Ok(FromSource(source)
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .map(|(p, m), _| (p, StreamMuxerBox::new(m))))
        })
        .map_err(io::Error::other)?
        .with_behaviour(|key| Flooder {
            identify: identify::Behaviour::new(identify::Config::new(
                wire::IDENTIFY_PROTOCOL_VERSION.into(),
                key.public(),
            )),
            admit: raw(wire::ADMIT_PROTOCOL),
            join: raw(wire::JOIN_PROTOCOL),
            pair: raw(wire::PAIR_PROTOCOL),
            dm: raw(wire::DM_PROTOCOL),
            hello: raw(wire::HELLO_PROTOCOL),
            sync: raw(wire::SYNC_PROTOCOL),
            rekey: raw(wire::REKEY_PROTOCOL),
            kad: raw(crate::net::KAD_PROTOCOL),
            probe: raw(crate::net::PING_PROTOCOL),
            gossip: raw(StreamProtocol::new("/meshsub/1.1.0")),
            dcutr: raw(StreamProtocol::new("/libp2p/dcutr")),
            autonat: raw(StreamProtocol::new("/libp2p/autonat/2/dial-request")),
            hop: raw(StreamProtocol::new(crate::net::HOP_PROTOCOL)),
        })
        .map_err(io::Error::other)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

/// A frame declaring `declared` bytes and carrying `sent` of them.
pub fn frame(declared: usize, sent: usize) -> Vec<u8> {
    let mut v = wire::length_prefix(declared);
    v.resize(v.len() + sent, 0xA5);
    v
}

/// One identity: connect, write into everything, until the node hangs up or time is up.
/// Returns whether it connected, and the requests it wrote.
async fn one_identity(target: Multiaddr, source: IpAddr, until: tokio::time::Instant) -> (bool, u64) {
    let Ok(mut s) = flooder(source, None) else {
        return (false, 0);
    };
    if s.dial(target).is_err() {
        return (false, 0);
    }
    let (mut connected, mut requests) = (false, 0);
    loop {
        let Ok(ev) = tokio::time::timeout_at(until, s.select_next_some()).await else {
            return (connected, requests);
        };
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                connected = true;
                let b = s.behaviour_mut();
                for _ in 0..4 {
                    b.admit.send_request(&peer_id, frame(512 * 1024, 512 * 1024));
                    b.join.send_request(&peer_id, frame(64 * 1024, 64 * 1024));
                    b.pair.send_request(&peer_id, frame(64 * 1024, 64 * 1024));
                }
                for _ in 0..8 {
                    b.dm.send_request(&peer_id, frame(4 << 20, 1 << 20));
                    b.hello.send_request(&peer_id, frame(256 * 1024, 256 * 1024));
                    b.sync.send_request(&peer_id, frame(64 * 1024, 64 * 1024));
                    b.rekey.send_request(&peer_id, frame(512 * 1024, 512 * 1024));
                    for other in [
                        &mut b.kad,
                        &mut b.probe,
                        &mut b.gossip,
                        &mut b.dcutr,
                        &mut b.autonat,
                        &mut b.hop,
                    ] {
                        other.send_request(&peer_id, frame(256 * 1024, 256 * 1024));
                    }
                }
                requests += 88;
            }
            SwarmEvent::ConnectionClosed { num_established: 0, .. } | SwarmEvent::OutgoingConnectionError { .. } => {
                return (connected, requests);
            }
            _ => {}
        }
    }
}

/// Sockets that connect and say nothing; each is opened again when the node drops it.
/// Returns the sockets opened.
async fn idle_sockets(target: SocketAddr, sources: u8, count: usize, until: tokio::time::Instant) -> u64 {
    let mut held: Vec<tokio::net::TcpStream> = Vec::new();
    let mut opened = 0u64;
    let mut n = 0u32;
    while tokio::time::Instant::now() < until {
        let mut probe = [0u8; 1];
        held.retain(|s| match s.try_read(&mut probe) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        });
        while held.len() < count && tokio::time::Instant::now() < until {
            let source = source_ip(n, sources);
            n = n.wrapping_add(1);
            let connect = async {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source, 0))?;
                socket.connect(target).await
            };
            match tokio::time::timeout(Duration::from_millis(200), connect).await {
                Ok(Ok(s)) => {
                    held.push(s);
                    opened += 1;
                }
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    opened
}

fn source_ip(n: u32, sources: u8) -> IpAddr {
    let k = (n % u32::from(sources.max(1))) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k))
}

/// A member gone bad: proves its membership, then keeps [`MEMBER_STREAMS`] direct-message
/// requests of 4 MiB each (the most a node takes) in flight on one connection, each sent
/// whole, until time is up. Returns the requests written.
async fn member(
    target: Multiaddr,
    key: libp2p::identity::Keypair,
    mesh: crate::mesh::Membership,
    until: tokio::time::Instant,
) -> u64 {
    let me = key.public().to_peer_id();
    let Ok(mut s) = flooder(IpAddr::V4(Ipv4Addr::LOCALHOST), Some(key)) else {
        return 0;
    };
    if s.dial(target).is_err() {
        return 0;
    }
    let big = || frame(4 << 20, 4 << 20);
    let mut requests = 0u64;
    let mut node = None;
    loop {
        let Ok(ev) = tokio::time::timeout_at(until, s.select_next_some()).await else {
            return requests;
        };
        match ev {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if node.is_none() => {
                node = Some(peer_id);
                let prove = wire::AdmitRequest::Prove {
                    node_name: "mallory".into(),
                    proof: mesh.prove(&me, &peer_id),
                    voucher: mesh.voucher().cloned(),
                };
                let body = postcard::to_allocvec(&prove).unwrap_or_default();
                let mut req = frame(body.len(), 0);
                req.extend(body);
                s.behaviour_mut().admit.send_request(&peer_id, req);
            }
            // Admitted (or not: the node decides): the flood starts, and each request
            // that ends is replaced.
            SwarmEvent::Behaviour(composed::FlooderEvent::Admit(request_response::Event::Message { peer, .. })) => {
                for _ in 0..MEMBER_STREAMS {
                    s.behaviour_mut().dm.send_request(&peer, big());
                    requests += 1;
                }
            }
            SwarmEvent::Behaviour(composed::FlooderEvent::Dm(
                request_response::Event::Message { peer, .. } | request_response::Event::OutboundFailure { peer, .. },
            )) => {
                s.behaviour_mut().dm.send_request(&peer, big());
                requests += 1;
            }
            SwarmEvent::ConnectionClosed { num_established: 0, .. } => return requests,
            _ => {}
        }
    }
}

/// Direct-message requests a flooding member keeps in flight.
pub const MEMBER_STREAMS: usize = 64;

/// Runs the flood described by `plan` (see the module docs).
pub async fn flood(plan: FloodPlan) -> FloodReport {
    if let Some((key, mesh)) = plan.member.clone() {
        let until = tokio::time::Instant::now() + plan.duration;
        return FloodReport {
            identities: 1,
            requests: member(plan.target.clone(), key, mesh, until).await,
            sockets: 0,
        };
    }
    let until = tokio::time::Instant::now() + plan.duration;
    let stop = Instant::now() + plan.duration;
    let mut report = FloodReport::default();
    let target_socket = plan.target.iter().collect::<Vec<_>>();
    let socket_addr = match (target_socket.first(), target_socket.get(1)) {
        (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) => Some(SocketAddr::new(IpAddr::V4(*ip), *port)),
        _ => None,
    };
    let idle = match socket_addr {
        Some(a) if plan.idle_sockets > 0 => Some(tokio::spawn(idle_sockets(a, plan.sources, plan.idle_sockets, until))),
        _ => None,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u32;
    while Instant::now() < stop {
        while tasks.len() < plan.identities {
            tasks.spawn(one_identity(plan.target.clone(), source_ip(n, plan.sources), until));
            n = n.wrapping_add(1);
        }
        match tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await {
            Ok(Some(Ok((connected, requests)))) => {
                report.identities += u64::from(connected);
                report.requests += requests;
            }
            Ok(None) if plan.identities == 0 => tokio::time::sleep_until(until).await,
            _ => {}
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok((connected, requests)) = r {
            report.identities += u64::from(connected);
            report.requests += requests;
        }
    }
    if let Some(t) = idle {
        report.sockets = t.await.unwrap_or(0);
    }
    report
}
