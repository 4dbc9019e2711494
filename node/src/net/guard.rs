//! The door: what a host that can reach our TCP port gets before it is admitted.
//!
//! Two bounds live below libp2p, in the TCP transport, because nothing above it can
//! enforce them:
//!
//! * **Handshakes.** At most [`MAX_HANDSHAKES`] inbound connections are in their Noise and
//!   Yamux handshake at once. When a new one arrives and the table is full, the oldest
//!   handshake of the busiest source address is dropped (and a source already holding
//!   [`MAX_HANDSHAKES_PER_IP`] loses its own oldest first). A flood of idle connections
//!   therefore evicts itself; the newest connection, a member's or a joiner's, always gets
//!   its turn. (libp2p's own pending limit refuses the *newest* instead, which is how 64
//!   idle sockets used to lock everyone out.)
//! * **Bytes before admission.** An inbound connection reads at most
//!   [`PREADMIT_BYTES`] from its socket until the network actor opens it ([`Guard::open`])
//!   because the peer proved membership (or is a relay client we serve). Past that the
//!   socket is simply not read: TCP flow control stops the sender, nothing is buffered,
//!   and the admission timeout closes the connection. So whatever an outsider opens
//!   (streams of gated protocols, held unread; Yamux windows; half-sent frames) costs this
//!   node at most that many bytes per connection.
//!
//! Dialed connections are not metered: we chose to dial them.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use futures::channel::oneshot;
use futures::{AsyncRead, AsyncWrite, FutureExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, TransportError, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{ConnectedPoint, Transport};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, noise, tcp, yamux};

/// Inbound TCP handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 64;
/// Inbound TCP handshakes in progress at once from one IP address.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;
/// Bytes an inbound TCP connection reads before it is admitted: room for the handshakes,
/// identify, a proof and a key chain ([`crate::wire::MAX_GRANT_BYTES`]) with margin.
pub const PREADMIT_BYTES: usize = crate::wire::MAX_GRANT_BYTES + 128 * 1024;
/// Streams one connection may have open (Yamux).
pub const MAX_STREAMS_PER_CONNECTION: usize = 128;

/// Shared state of the door: handshakes in progress and the meters of inbound
/// connections. Cheap to clone.
#[derive(Clone, Default)]
pub struct Guard {
    inner: Arc<Mutex<State>>,
    /// Relay serving anyone: outsiders legitimately carry traffic, nothing is metered.
    unmetered: bool,
    /// Connections opened by hole punches, waiting for their dial.
    parked: super::port_reuse::Parked,
}

#[derive(Default)]
struct State {
    next: u64,
    /// Handshakes by arrival: source IP and the switch that drops it.
    handshakes: BTreeMap<u64, (IpAddr, Option<oneshot::Sender<()>>)>,
    /// Inbound connections by remote address.
    meters: HashMap<Multiaddr, Weak<Meter>>,
    evicted: u64,
}

/// How much an inbound connection has read, and whether it may read more.
struct Meter {
    read: AtomicUsize,
    open: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Meter {
    fn new(open: bool) -> Self {
        Self {
            read: AtomicUsize::new(0),
            open: AtomicBool::new(open),
            waker: Mutex::new(None),
        }
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
}

impl Guard {
    /// A door; `unmetered` when this node relays for anyone.
    pub fn new(unmetered: bool) -> Self {
        Self {
            inner: Arc::default(),
            unmetered,
            parked: Default::default(),
        }
    }

    /// Connections opened outside libp2p, handed to the dial of their remote address.
    pub(crate) fn parked(&self) -> &super::port_reuse::Parked {
        &self.parked
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lifts the pre-admission limit of the inbound connection from `remote` (its peer
    /// was admitted). Unknown addresses (dialed or closed connections) are ignored.
    pub fn open(&self, remote: &Multiaddr) {
        let meter = self.state().meters.get(remote).and_then(Weak::upgrade);
        if let Some(m) = meter {
            m.open();
        }
    }

    /// Handshakes in progress now, and handshakes dropped to make room since the start.
    pub fn handshakes(&self) -> (usize, u64) {
        let s = self.state();
        (s.handshakes.len(), s.evicted)
    }

    /// Takes a handshake slot for a connection from `ip`, evicting as the module docs say.
    fn admit_handshake(&self, ip: IpAddr) -> (u64, oneshot::Receiver<()>) {
        let mut s = self.state();
        let same_ip = s.handshakes.values().filter(|(i, _)| *i == ip).count();
        let victim_ip = if same_ip >= MAX_HANDSHAKES_PER_IP {
            Some(ip)
        } else if s.handshakes.len() >= MAX_HANDSHAKES {
            let mut counts: HashMap<IpAddr, usize> = HashMap::new();
            for (i, _) in s.handshakes.values() {
                *counts.entry(*i).or_default() += 1;
            }
            counts.into_iter().max_by_key(|(_, n)| *n).map(|(i, _)| i)
        } else {
            None
        };
        if let Some(victim_ip) = victim_ip {
            let oldest = s.handshakes.iter().find(|(_, (i, _))| *i == victim_ip).map(|(k, _)| *k);
            if let Some(k) = oldest
                && let Some((_, Some(tx))) = s.handshakes.remove(&k)
            {
                let _ = tx.send(());
                s.evicted += 1;
            }
        }
        let (tx, rx) = oneshot::channel();
        let id = s.next;
        s.next += 1;
        s.handshakes.insert(id, (ip, Some(tx)));
        (id, rx)
    }

    fn handshake_done(&self, id: u64) {
        self.state().handshakes.remove(&id);
    }

    fn meter(&self, endpoint: &ConnectedPoint) -> Arc<Meter> {
        match endpoint {
            ConnectedPoint::Listener { send_back_addr, .. } if !self.unmetered => {
                let m = Arc::new(Meter::new(false));
                let mut s = self.state();
                s.meters.retain(|_, w| w.strong_count() > 0);
                s.meters.insert(send_back_addr.clone(), Arc::downgrade(&m));
                m
            }
            _ => Arc::new(Meter::new(true)),
        }
    }
}

/// The TCP transport of a node: TCP, Noise, Yamux, behind the [`Guard`].
pub fn tcp_transport(key: &Keypair, guard: Guard) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let mut mux = yamux::Config::default();
    mux.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
    let metering = guard.clone();
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    let upgraded = super::port_reuse::FreshPortFallback::new(tcp, guard.parked().clone())
        .map(move |stream, endpoint| Metered {
            inner: stream,
            meter: metering.meter(&endpoint),
        })
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(mux)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .map_err(io::Error::other);
    Ok(Door { inner: upgraded, guard }.boxed())
}

/// A socket that stops reading at [`PREADMIT_BYTES`] until its meter is opened.
struct Metered<S> {
    inner: S,
    meter: Arc<Meter>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let meter = self.meter.clone();
        let mut buf = buf;
        if !meter.open.load(Ordering::Acquire) {
            let left = PREADMIT_BYTES.saturating_sub(meter.read.load(Ordering::Relaxed));
            if left == 0 {
                *meter.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
                // Opened between the check and registering the waker: read on.
                if !meter.open.load(Ordering::Acquire) {
                    return Poll::Pending;
                }
            } else if buf.len() > left {
                buf = &mut buf[..left];
            }
        }
        let n = std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        meter.read.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The upgraded transport with a handshake slot per inbound connection.
struct Door<T> {
    inner: T,
    guard: Guard,
}

type Upgrade<O> = futures::future::BoxFuture<'static, Result<O, io::Error>>;

/// An inbound handshake: finishes, fails, or is dropped to make room.
struct Handshake<O> {
    upgrade: Upgrade<O>,
    evicted: oneshot::Receiver<()>,
    slot: u64,
    guard: Guard,
}

impl<O> Drop for Handshake<O> {
    fn drop(&mut self) {
        self.guard.handshake_done(self.slot);
    }
}

impl<O> std::future::Future for Handshake<O> {
    type Output = Result<O, io::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(Ok(())) = self.evicted.poll_unpin(cx) {
            return Poll::Ready(Err(io::Error::other(
                "handshake dropped to make room for newer connections",
            )));
        }
        self.upgrade.poll_unpin(cx)
    }
}

/// The IP address in `addr`, if any.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl<T> Transport for Door<T>
where
    T: Transport<Error = io::Error> + Unpin,
    T::ListenerUpgrade: Send + 'static,
    T::Output: 'static,
{
    type Output = T::Output;
    type Error = io::Error;
    type ListenerUpgrade = Upgrade<T::Output>;
    type Dial = T::Dial;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(&mut self, addr: Multiaddr, opts: DialOpts) -> Result<Self::Dial, TransportError<io::Error>> {
        self.inner.dial(addr, opts)
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        let event = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let guard = self.guard.clone();
        Poll::Ready(match event {
            TransportEvent::Incoming {
                listener_id,
                upgrade,
                local_addr,
                send_back_addr,
            } => {
                let upgrade: Upgrade<T::Output> = match ip_of(&send_back_addr) {
                    Some(ip) => {
                        let (slot, evicted) = guard.admit_handshake(ip);
                        Box::pin(Handshake {
                            upgrade: Box::pin(upgrade),
                            evicted,
                            slot,
                            guard,
                        })
                    }
                    None => Box::pin(upgrade),
                };
                TransportEvent::Incoming {
                    listener_id,
                    upgrade,
                    local_addr,
                    send_back_addr,
                }
            }
            other => other.map_upgrade(|u| -> Upgrade<T::Output> { Box::pin(u) }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8, c: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(10, a, b, c))
    }

    #[test]
    fn a_full_table_evicts_the_busiest_sources_oldest_handshake() {
        let g = Guard::new(false);
        let flood = ip(0, 0, 66);
        let mut flooded = Vec::new();
        for i in 0..MAX_HANDSHAKES_PER_IP {
            flooded.push((i, g.admit_handshake(flood)));
        }
        // One more from the same address: its own oldest goes, nobody else's.
        let honest_ip = ip(0, 0, 7);
        let (_, mut honest) = g.admit_handshake(honest_ip);
        let (_, _) = g.admit_handshake(flood);
        let (_, (_, first)) = &mut flooded[0];
        assert_eq!(
            first.try_recv(),
            Ok(Some(())),
            "the flood's oldest handshake is dropped"
        );
        assert_eq!(honest.try_recv(), Ok(None), "another source keeps its handshake");
        let (_, (_, second)) = &mut flooded[1];
        assert_eq!(second.try_recv(), Ok(None));
        assert_eq!(g.handshakes(), (MAX_HANDSHAKES_PER_IP + 1, 1));
    }

    #[test]
    fn the_total_is_capped_by_evicting_from_the_busiest_source() {
        let g = Guard::new(false);
        let mut all = Vec::new();
        // Many sources, a few handshakes each, one source with the most.
        for n in 0..MAX_HANDSHAKES {
            let source = if n < 10 { ip(1, 0, 1) } else { ip(2, (n / 4) as u8, 1) };
            all.push(g.admit_handshake(source));
        }
        let (_, mut newest) = g.admit_handshake(ip(9, 9, 9));
        assert_eq!(all[0].1.try_recv(), Ok(Some(())), "busiest source's oldest is dropped");
        for (_, rx) in all.iter_mut().skip(1) {
            assert_eq!(rx.try_recv(), Ok(None));
        }
        assert_eq!(newest.try_recv(), Ok(None));
        assert_eq!(g.handshakes().0, MAX_HANDSHAKES);
    }
}
