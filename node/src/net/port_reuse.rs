//! Dialing from the listening port, and falling back to a fresh port when it is taken.
//!
//! libp2p's TCP transport dials from the port it listens on (so a NAT that maps by
//! source port gives the outgoing and the incoming connection the same public address,
//! which hole punching relies on). It binds that port on the *unspecified* address
//! (`0.0.0.0:P`) even when the listener sits on one address (`127.0.0.1:P`). Another
//! socket holding port `P` on some other address of the host then makes the bind fail
//! with "address already in use", and libp2p gives up on the dial (it only retries on
//! "address not available"). A node listening on one address could then not dial at all
//! whenever any other program happened to get the same port number elsewhere.
//!
//! [`FreshPortFallback`] dials again from a fresh port when, and only when, the bind for
//! port reuse fails that way.
//!
//! It also hands over connections made outside libp2p: a hole punch from a fresh port
//! (`net::reach::fresh`) opens its TCP connection itself and [`Parked`] keeps it until
//! the swarm dials that remote address, which then gets the connection as it is.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};

/// TCP connections already open, by remote address, waiting for the swarm to dial that
/// address (cheap to clone). Taken once; one left unclaimed is dropped (closed) by
/// [`Parked::expire`].
#[derive(Clone, Default)]
pub struct Parked {
    inner: Arc<Mutex<HashMap<SocketAddr, (tokio::net::TcpStream, std::time::Instant)>>>,
}

impl Parked {
    /// Keeps `stream` (connected to `remote`) for the next dial of `remote`.
    pub(crate) fn park(&self, remote: SocketAddr, stream: tokio::net::TcpStream) {
        self.lock().insert(remote, (stream, std::time::Instant::now()));
    }

    /// The connection kept for `remote`, if any.
    pub(crate) fn take(&self, remote: &SocketAddr) -> Option<tokio::net::TcpStream> {
        self.lock().remove(remote).map(|(s, _)| s)
    }

    /// Drops connections kept longer than `age` (their dial never came).
    pub(crate) fn expire(&self, age: std::time::Duration) {
        self.lock().retain(|_, (_, at)| at.elapsed() < age);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (tokio::net::TcpStream, std::time::Instant)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The socket address of `/ip4/<ip>/tcp/<port>` or `/ip6/<ip>/tcp/<port>` (a trailing
/// `/p2p/<id>` allowed).
pub(crate) fn tcp_socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip: std::net::IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let Protocol::Tcp(port) = it.next()? else { return None };
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// A TCP transport whose port-reusing dials fall back to a fresh port on `EADDRINUSE`,
/// and whose dials of an address with a [`Parked`] connection get that connection.
pub(crate) struct FreshPortFallback<T> {
    inner: T,
    parked: Parked,
}

impl<T> FreshPortFallback<T> {
    pub(crate) fn new(inner: T, parked: Parked) -> Self {
        Self { inner, parked }
    }
}

impl<T> Transport for FreshPortFallback<T>
where
    T: Transport<Error = io::Error, Output = libp2p::tcp::tokio::TcpStream> + Unpin,
    T::Dial: Send + 'static,
{
    type Output = T::Output;
    type Error = io::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = BoxFuture<'static, Result<T::Output, io::Error>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        if let Some(stream) = tcp_socket_addr(&addr).and_then(|a| self.parked.take(&a)) {
            tracing::debug!(%addr, "handing over a connection opened by a hole punch");
            return Ok(futures::future::ready(Ok(libp2p::tcp::tokio::TcpStream(stream))).boxed());
        }
        let first = self.inner.dial(addr.clone(), opts)?;
        if opts.port_use == PortUse::New {
            return Ok(first.boxed());
        }
        // The transport only makes a socket here; binding and connecting wait for the
        // future to be polled. The spare socket is closed unused unless the bind fails.
        let fresh = self.inner.dial(
            addr,
            DialOpts {
                port_use: PortUse::New,
                ..opts
            },
        )?;
        Ok(async move {
            match first.await {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::debug!("the listening port is taken on another address; dialing from a fresh port");
                    fresh.await
                }
                other => other,
            }
        }
        .boxed())
    }

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Pin::new(&mut self.get_mut().inner).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};

    use libp2p::core::Endpoint;
    use libp2p::multiaddr::Protocol;
    use libp2p::tcp;

    use super::*;

    fn dial_opts() -> DialOpts {
        DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        }
    }

    /// A transport listening on 127.0.0.1, whose listening port is taken on 127.0.0.2 by
    /// another socket that does not share it.
    async fn listening_with_port_taken_elsewhere() -> (tcp::tokio::Transport, TcpListener) {
        let mut t = tcp::tokio::Transport::new(tcp::Config::new());
        t.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let port = loop {
            match futures::future::poll_fn(|cx| Pin::new(&mut t).poll(cx)).await {
                TransportEvent::NewAddress { listen_addr, .. } => {
                    break listen_addr
                        .iter()
                        .find_map(|p| match p {
                            Protocol::Tcp(port) => Some(port),
                            _ => None,
                        })
                        .unwrap();
                }
                _ => continue,
            }
        };
        let squatter = TcpListener::bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2), port))).unwrap();
        (t, squatter)
    }

    fn addr_of(l: &TcpListener) -> Multiaddr {
        let a = l.local_addr().unwrap();
        format!("/ip4/{}/tcp/{}", a.ip(), a.port()).parse().unwrap()
    }

    #[tokio::test]
    async fn a_dial_falls_back_to_a_fresh_port_when_the_listening_port_is_taken_elsewhere() {
        let (inner, _squatter) = listening_with_port_taken_elsewhere().await;
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut t = FreshPortFallback::new(inner, Parked::default());
        let stream = t.dial(addr_of(&target), dial_opts()).unwrap().await;
        assert!(stream.is_ok(), "the dial failed: {:?}", stream.err());
        assert!(target.accept().is_ok());
    }

    #[tokio::test]
    async fn a_dial_of_an_address_with_a_parked_connection_gets_that_connection() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let remote = target.local_addr().unwrap();
        let opened = tokio::net::TcpStream::connect(remote).await.unwrap();
        let local = opened.local_addr().unwrap();
        let parked = Parked::default();
        parked.park(remote, opened);
        let mut t = FreshPortFallback::new(tcp::tokio::Transport::new(tcp::Config::new()), parked.clone());
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", remote.port(), libp2p::PeerId::random())
            .parse()
            .unwrap();
        let got = t.dial(addr.clone(), dial_opts()).unwrap().await.unwrap();
        assert_eq!(
            got.0.local_addr().unwrap(),
            local,
            "the parked connection, not a new one"
        );
        assert!(parked.take(&remote).is_none(), "taken once");
        // The next dial of the address is an ordinary one.
        let again = t.dial(addr, dial_opts()).unwrap().await.unwrap();
        assert_ne!(again.0.local_addr().unwrap(), local);
    }

    #[test]
    fn tcp_socket_addresses_are_read_from_multiaddrs() {
        let a = |s: &str| tcp_socket_addr(&s.parse().unwrap());
        assert_eq!(a("/ip4/5.0.0.2/tcp/4001"), Some("5.0.0.2:4001".parse().unwrap()));
        assert_eq!(
            a("/ip4/5.0.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"),
            Some("5.0.0.2:4001".parse().unwrap())
        );
        assert_eq!(a("/ip6/::1/tcp/7"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(a("/ip4/5.0.0.2/udp/4001/quic-v1"), None);
        assert_eq!(
            a("/ip4/5.0.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"),
            None
        );
    }

    #[tokio::test]
    async fn without_the_fallback_such_a_dial_fails() {
        // What the fallback is for: libp2p alone refuses this dial. If it ever stops
        // refusing it, the fallback can go.
        let (mut inner, _squatter) = listening_with_port_taken_elsewhere().await;
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let err = inner.dial(addr_of(&target), dial_opts()).unwrap().await.err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::AddrInUse));
    }
}
