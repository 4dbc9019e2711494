//! A gate around a libp2p behaviour: its protocols only run with admitted peers.
//!
//! [`Gate`] wraps any [`NetworkBehaviour`]. On a connection to a peer that is not admitted
//! yet, the wrapped connection handler is neither polled (so it opens no stream and sends
//! nothing) nor handed the streams the peer opens (they are held, unread, up to
//! [`MAX_HELD_STREAMS`] per connection). When the peer is admitted ([`Gate::admit`]) every
//! one of its connections is opened: held streams go to the handler and it runs normally.
//! A peer that is never admitted is disconnected by the network actor; whatever it sent
//! is dropped unread with the connection.
//!
//! Streams are accepted rather than refused while closed because a refused protocol makes
//! the remote handler give up on it for the life of the connection (gossipsub does), and
//! an honest member's streams routinely arrive a round trip before its proof.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::{Context, Poll, Waker};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::handler::{ConnectionEvent, FullyNegotiatedInbound};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm, NetworkBehaviour,
    NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Streams held per connection while the peer is not admitted; more are dropped.
pub const MAX_HELD_STREAMS: usize = 4;

/// A behaviour whose protocols run only with admitted peers (see the module docs).
pub struct Gate<B> {
    inner: B,
    /// Let everyone through (a relay serving anyone).
    bypass: bool,
    admitted: HashSet<PeerId>,
    connections: HashMap<PeerId, HashSet<ConnectionId>>,
    opening: VecDeque<(PeerId, ConnectionId)>,
    waker: Option<Waker>,
}

impl<B> Gate<B> {
    /// Wraps `inner`; with `bypass` the gate is always open.
    pub fn new(inner: B, bypass: bool) -> Self {
        Self {
            inner,
            bypass,
            admitted: HashSet::new(),
            connections: HashMap::new(),
            opening: VecDeque::new(),
            waker: None,
        }
    }

    /// The wrapped behaviour.
    pub fn inner(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Opens the gate for `peer` on all its connections, now and until it disconnects.
    pub fn admit(&mut self, peer: PeerId) {
        if !self.admitted.insert(peer) || self.bypass {
            return;
        }
        if let Some(conns) = self.connections.get(&peer) {
            self.opening.extend(conns.iter().map(|c| (peer, *c)));
        }
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether `peer` is admitted.
    pub fn is_admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains(peer)
    }

    fn handler(&self, peer: &PeerId, inner: B::ConnectionHandler) -> GateHandler<B::ConnectionHandler>
    where
        B: NetworkBehaviour,
    {
        GateHandler {
            inner,
            open: self.bypass || self.admitted.contains(peer),
            held: Vec::new(),
        }
    }
}

/// What the gate tells a connection handler.
#[derive(Debug)]
pub enum GateIn<T> {
    /// The peer is admitted: run.
    Open,
    /// An event for the wrapped handler.
    Inner(T),
}

impl<B: NetworkBehaviour> NetworkBehaviour for Gate<B> {
    type ConnectionHandler = GateHandler<B::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_inbound_connection(id, peer, local, remote)?;
        Ok(self.handler(&peer, inner))
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addrs: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(id, peer, addrs, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        let inner = self
            .inner
            .handle_established_outbound_connection(id, peer, addr, role, port_use)?;
        Ok(self.handler(&peer, inner))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match &event {
            FromSwarm::ConnectionEstablished(e) => {
                self.connections.entry(e.peer_id).or_default().insert(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(set) = self.connections.get_mut(&e.peer_id) {
                    set.remove(&e.connection_id);
                    if set.is_empty() {
                        self.connections.remove(&e.peer_id);
                    }
                }
                if e.remaining_established == 0 {
                    // Admission is per visit: the next connection proves membership again.
                    self.admitted.remove(&e.peer_id);
                }
            }
            _ => {}
        }
        self.inner.on_swarm_event(event);
    }

    fn on_connection_handler_event(&mut self, peer: PeerId, id: ConnectionId, event: THandlerOutEvent<Self>) {
        self.inner.on_connection_handler_event(peer, id, event);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        if let Some((peer_id, id)) = self.opening.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(id),
                event: GateIn::Open,
            });
        }
        match self.inner.poll(cx) {
            Poll::Ready(e) => Poll::Ready(e.map_in(GateIn::Inner)),
            Poll::Pending => {
                self.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

type Inbound<H> =
    FullyNegotiatedInbound<<H as ConnectionHandler>::InboundProtocol, <H as ConnectionHandler>::InboundOpenInfo>;

/// The connection handler of a [`Gate`].
pub struct GateHandler<H: ConnectionHandler> {
    inner: H,
    open: bool,
    held: Vec<Inbound<H>>,
}

impl<H: ConnectionHandler> ConnectionHandler for GateHandler<H> {
    type FromBehaviour = GateIn<H::FromBehaviour>;
    type ToBehaviour = H::ToBehaviour;
    type InboundProtocol = H::InboundProtocol;
    type OutboundProtocol = H::OutboundProtocol;
    type InboundOpenInfo = H::InboundOpenInfo;
    type OutboundOpenInfo = H::OutboundOpenInfo;

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol, Self::InboundOpenInfo> {
        self.inner.listen_protocol()
    }

    fn connection_keep_alive(&self) -> bool {
        self.open && self.inner.connection_keep_alive()
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, Self::OutboundOpenInfo, Self::ToBehaviour>> {
        if !self.open {
            // Woken again by the connection task when the gate opens (a behaviour event).
            return Poll::Pending;
        }
        self.inner.poll(cx)
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<Option<Self::ToBehaviour>> {
        if !self.open {
            return Poll::Ready(None);
        }
        self.inner.poll_close(cx)
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {
            GateIn::Open => {
                if !self.open {
                    self.open = true;
                    for s in std::mem::take(&mut self.held) {
                        self.inner
                            .on_connection_event(ConnectionEvent::FullyNegotiatedInbound(s));
                    }
                }
            }
            GateIn::Inner(e) => self.inner.on_behaviour_event(e),
        }
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<
            Self::InboundProtocol,
            Self::OutboundProtocol,
            Self::InboundOpenInfo,
            Self::OutboundOpenInfo,
        >,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(s) if !self.open => {
                if self.held.len() < MAX_HELD_STREAMS {
                    self.held.push(s);
                }
                // else: dropped, which resets the stream.
            }
            ConnectionEvent::ListenUpgradeError(_) if !self.open => {}
            other => self.inner.on_connection_event(other),
        }
    }
}
