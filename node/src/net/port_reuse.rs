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

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::Multiaddr;
use libp2p::core::Transport;
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportError, TransportEvent};

/// A TCP transport whose port-reusing dials fall back to a fresh port on `EADDRINUSE`.
pub(crate) struct FreshPortFallback<T> {
    inner: T,
}

impl<T> FreshPortFallback<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self { inner }
    }
}

impl<T> Transport for FreshPortFallback<T>
where
    T: Transport<Error = io::Error> + Unpin,
    T::Dial: Send + 'static,
    T::Output: Send + 'static,
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
        let mut t = FreshPortFallback::new(inner);
        let stream = t.dial(addr_of(&target), dial_opts()).unwrap().await;
        assert!(stream.is_ok(), "the dial failed: {:?}", stream.err());
        assert!(target.accept().is_ok());
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
