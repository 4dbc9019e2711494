//! Reachability across the internet: what AutoNAT says about us, the relay slots we hold
//! while we are not reachable, the peers we keep redialing, DHT lookups, hole-punch counts.
//!
//! The decisions (which relays, when to redial or ask again, the NAT verdict) are plain
//! structs fed events and the time in [`plan`], [`redial`] and [`slots`]; the actor feeds
//! them here and applies the [`ReachAction`]s they return. DHT lookups are in [`dht`].

mod dht;
#[cfg(test)]
mod fake;
mod fresh;
pub(super) use fresh::Fired;
mod natpmp;
pub(super) use natpmp::PmpEvent;
mod plan;
mod punch;
pub use punch::PunchState;
mod redial;
mod slots;
mod upnp;
pub use upnp::{UpnpInfo, UpnpStatus};

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::{Multiaddr, PeerId, Swarm, autonat, dcutr, kad, relay};
use serde::{Deserialize, Serialize};

use super::behaviour::HOP_PROTOCOL;
use super::{Behaviour, NetActor, NetEvent, Path, PeerState, path_of, strip_p2p};
use crate::ids::now_ms;
use plan::{Links, ReachAction, ReachPlan};
use redial::Why;

/// Relays a node holds slots on at once while unreachable.
pub const MAX_RESERVATIONS: usize = 2;
/// First wait before retrying a relay after a failed or lost reservation.
pub const RESERVATION_RETRY_MIN: Duration = Duration::from_secs(2);
/// Longest wait between reservation retries.
pub const RESERVATION_RETRY_MAX: Duration = Duration::from_secs(60);
/// First wait before redialing a remembered peer after it went away.
pub const REDIAL_MIN: Duration = Duration::from_secs(1);
/// Longest wait between redials of a remembered peer.
pub const REDIAL_MAX: Duration = Duration::from_secs(60);
/// How long a member whose connection was lost (not closed on purpose) is redialed.
pub const LOST_REDIAL_FOR: Duration = Duration::from_secs(3600);
/// Longest wait between redials of a lost member.
pub const LOST_REDIAL_MAX: Duration = Duration::from_secs(30);
/// At most one DHT lookup per peer in this time.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(10);
/// A relayed connection is closed this long after a direct one to the same peer opened.
pub const RELAYED_GRACE: Duration = Duration::from_secs(2);

/// Whether this node can be reached from the internet, as far as AutoNAT knows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatStatus {
    /// Not known yet (no test done).
    #[default]
    Unknown,
    /// An external address of ours was confirmed reachable by another node.
    Public,
    /// Other nodes tried and could not reach us: we are behind NAT or a firewall.
    Private,
}

/// A relay slot this node holds (or is asking for).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReservationInfo {
    /// The relay.
    pub relay: PeerId,
    /// The address others can reach us at through it (`.../p2p/<relay>/p2p-circuit`).
    pub addr: Option<Multiaddr>,
    /// The relay accepted it.
    pub accepted: bool,
    /// When it was (last) accepted, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Renewals so far.
    pub renewals: u32,
}

/// Hole-punching (DCUtR) outcomes since start.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PunchStats {
    /// Attempts to turn a relayed connection into a direct one.
    pub attempts: u64,
    /// Attempts that gave a direct connection.
    pub successes: u64,
    /// Attempts that failed (the relayed connection stays).
    pub failures: u64,
}

/// The reachability part of `mesh status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReachInfo {
    /// AutoNAT's verdict.
    pub nat: NatStatus,
    /// Confirmed external addresses (reachable from the internet).
    pub external: Vec<Multiaddr>,
    /// Relay slots.
    pub reservations: Vec<ReservationInfo>,
    /// Hole punching.
    pub punch: PunchStats,
    /// This node offers relay service.
    pub relay_serving: bool,
    /// Relayed connections this node carries for others right now.
    pub relay_circuits: u32,
    /// Port mapping on the home router.
    pub upnp: UpnpInfo,
    /// The public network option.
    pub public: super::PublicNetInfo,
}

/// State of the reachability machinery, owned by the network actor.
pub(super) struct Reach {
    /// The decisions.
    plan: ReachPlan,
    /// DHT lookups under way, with the callers waiting for each.
    lookups: HashMap<kad::QueryId, (PeerId, Vec<dht::FindReply>)>,
    relay_circuits: u32,
    relay_serving: bool,
    relay_for_anyone: bool,
    declared: Vec<Multiaddr>,
    upnp: UpnpInfo,
    /// PCP / NAT-PMP is tried when UPnP finds no router.
    natpmp: bool,
    /// The PCP / NAT-PMP task, once started (cancelled on stop: it removes its mappings).
    pmp: Option<tokio_util::sync::CancellationToken>,
    /// Hole punches from fresh ports under way.
    fresh: fresh::Rounds,
}

impl Reach {
    pub(super) fn new(
        configured: &[Multiaddr],
        relay_serving: bool,
        relay_for_anyone: bool,
        declared: &[Multiaddr],
        upnp: bool,
        natpmp: bool,
    ) -> Self {
        Self {
            plan: ReachPlan::new(configured),
            lookups: HashMap::new(),
            relay_circuits: 0,
            relay_serving,
            relay_for_anyone,
            declared: declared.to_vec(),
            upnp: UpnpInfo::new(upnp),
            natpmp,
            pmp: None,
            fresh: fresh::Rounds::default(),
        }
    }

    /// The PCP / NAT-PMP task's token, once: cancelled on a clean stop, the task removes
    /// its mappings.
    pub(super) fn pmp_cancel(&mut self) -> Option<tokio_util::sync::CancellationToken> {
        self.pmp.take()
    }

    /// When the reach machinery next needs to act.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.plan.next_deadline()
    }
}

/// The actor's connections as the decisions see them.
struct ActorLinks<'a> {
    swarm: &'a Swarm<Behaviour>,
    peers: &'a HashMap<PeerId, PeerState>,
    addrs: &'a HashMap<PeerId, VecDeque<Multiaddr>>,
}

impl Links for ActorLinks<'_> {
    fn connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.admitted)
    }

    fn direct(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| s.connections.values().any(|c| c.via.is_none()))
    }

    /// Where we reach the relay now (a connection we dialed), else where it says it listens.
    fn relay_addr(&self, relay: &PeerId) -> Option<Multiaddr> {
        let via_connection = self.peers.get(relay).and_then(|s| {
            s.connections
                .values()
                .find(|c| c.via.is_none() && c.dialed)
                .map(|c| strip_p2p(c.addr.clone()))
        });
        via_connection.or_else(|| {
            self.addrs
                .get(relay)
                .and_then(|l| l.iter().find(|a| path_of(a) != Path::Relayed).cloned())
        })
    }

    fn relayed_only_members(&self) -> Vec<PeerId> {
        self.peers
            .iter()
            .filter(|(_, s)| s.admitted && !s.connections.is_empty() && s.connections.values().all(|c| c.via.is_some()))
            .map(|(p, _)| *p)
            .collect()
    }

    fn me(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn holds_slot(&self) -> bool {
        self.swarm.listeners().any(|a| path_of(a) == Path::Relayed)
    }

    /// A relayed address the member listens on (identify's listen addresses, or ones
    /// learned otherwise), with its PeerId at the end.
    fn circuit_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        let listened = self.peers.get(peer).and_then(|s| s.identified.as_ref()).map(|(_, a)| a);
        let known = self.addrs.get(peer);
        listened
            .into_iter()
            .flatten()
            .chain(known.into_iter().flatten())
            .find(|a| path_of(a) == Path::Relayed)
            .map(|a| {
                let a = strip_p2p(a.clone());
                a.with(libp2p::multiaddr::Protocol::P2p(*peer))
            })
    }
}

impl NetActor {
    /// Asks the decisions something, with the actor's connections at hand.
    fn decide<R>(&mut self, ask: impl FnOnce(&mut ReachPlan, &ActorLinks<'_>) -> R) -> R {
        let links = ActorLinks {
            swarm: &self.swarm,
            peers: &self.peers,
            addrs: &self.addrs,
        };
        ask(&mut self.reach.plan, &links)
    }

    pub(super) fn nat_status(&self) -> NatStatus {
        let public = self.swarm.external_addresses().any(|a| path_of(a) == Path::Internet);
        self.reach.plan.nat.status(public)
    }

    pub(super) fn reach_info(&self) -> ReachInfo {
        let public = self.public_info();
        ReachInfo {
            nat: self.nat_status(),
            external: self.swarm.external_addresses().cloned().collect(),
            reservations: self.reach.plan.slots.info(),
            punch: self.reach.plan.punch,
            relay_serving: self.reach.relay_serving,
            relay_circuits: self.reach.relay_circuits,
            upnp: self.reach.upnp.clone(),
            public,
        }
    }

    /// Tells the node when reachability changed (status, slots, upgrades).
    pub(super) fn reach_changed(&mut self) {
        let now = self.nat_status();
        if let Some(from) = self.reach.plan.nat.changed(now) {
            tracing::info!(?from, to = ?now, "reachability changed");
        }
        self.emit(NetEvent::ReachChanged);
    }

    pub(super) fn reach_serving(&self) -> bool {
        self.reach.relay_serving
    }

    /// This node relays for non-members too.
    pub(super) fn reach_serving_anyone(&self) -> bool {
        self.reach.relay_for_anyone
    }

    /// `peer`, a node of the public network, offers relaying: a candidate, asked at once
    /// if a slot is free.
    pub(super) fn reach_public_relay(&mut self, peer: PeerId) {
        self.reach.plan.slots.public(peer);
        self.maintain_reach();
    }

    /// This node is not reachable directly and no relay holds a slot for it.
    pub(super) fn reach_wants_relay(&self) -> bool {
        self.nat_status() != NatStatus::Public && !self.reach.plan.slots.holds_one()
    }

    /// `peer` is a relay this node is configured with or holds (or asks for) a slot on.
    pub(super) fn reach_uses_relay(&self, peer: &PeerId) -> bool {
        self.reach.plan.slots.uses(peer)
    }

    /// A removed node: no more redials, no relay slot on it.
    pub(super) fn reach_forget(&mut self, peer: &PeerId) {
        self.reach.plan.redials.forget(peer);
        if let Some(listener) = self.reach.plan.slots.forget(peer) {
            self.swarm.remove_listener(listener);
        }
    }

    /// Declared external addresses, configured relays: at start.
    pub(super) fn start_reach(&mut self) {
        for a in self.reach.declared.clone() {
            tracing::info!(addr = %a, "declared external address");
            self.swarm.add_external_address(a);
        }
        let configured = self.reach.plan.slots.configured().to_vec();
        for (peer, addr) in configured {
            self.remember(peer, addr);
            self.pin(peer);
        }
    }

    /// Keeps `peer` connected: redials it with backoff whenever it is not.
    pub(super) fn pin(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let connected = self.swarm.is_connected(&peer);
        self.reach.plan.redials.pin(peer, connected, Instant::now());
        self.reach.plan.slots.dialed(peer, true);
    }

    /// Stops redialing `peer`.
    pub(super) fn unpin(&mut self, peer: &PeerId) -> bool {
        self.reach.plan.slots.dialed(*peer, false);
        self.reach.plan.redials.unpin(peer)
    }

    pub(super) fn pinned(&self) -> Vec<PeerId> {
        self.reach.plan.redials.pinned()
    }

    pub(super) fn reach_on_connected(&mut self, peer: PeerId) {
        self.reach.plan.redials.connected(peer);
    }

    /// The last connection to an admitted member closed without us closing it: keep trying
    /// to get it back (pinned peers have their own redials).
    pub(super) fn reach_on_member_lost(&mut self, peer: PeerId) {
        self.reach.plan.redials.member_lost(peer, Instant::now());
    }

    /// Lost members are not redialed any more, nor are `closing`, whose connections this
    /// node is about to close (the mesh was left or joined anew).
    pub(super) fn reach_forget_lost(&mut self, closing: &[PeerId]) {
        self.reach.plan.redials.forget_lost(closing);
    }

    pub(super) fn reach_on_disconnected(&mut self, peer: PeerId) {
        self.reach.plan.redials.disconnected(peer, Instant::now());
        self.reach.plan.slots.gone(&peer);
    }

    /// Periodic work: redials, reservations.
    pub(super) fn maintain_reach(&mut self) {
        let now = Instant::now();
        let public = self.nat_status() == NatStatus::Public;
        let actions = self.decide(|plan, links| plan.tick(now, public, links));
        self.apply_reach(actions, now);
    }

    /// Carries out the decisions; a slot that could not be asked for is replaced by the
    /// next relay in line.
    fn apply_reach(&mut self, actions: Vec<ReachAction>, now: Instant) {
        let mut refill = false;
        for action in actions {
            match action {
                ReachAction::Dial { peer, why } => {
                    match why {
                        Why::Pinned => tracing::debug!(%peer, "redialing a remembered peer"),
                        Why::Lost => tracing::debug!(%peer, "redialing a member whose connection was lost"),
                    }
                    self.dial_known(peer);
                }
                ReachAction::Reserve { relay, listen } => refill |= !self.reserve(relay, listen, now),
                ReachAction::Punch { peer, via } => self.punch(peer, via),
                ReachAction::FreshPunch { peer } => self.fresh_round(peer),
                ReachAction::Release { relay, listener } => {
                    tracing::info!(%relay, "reachable directly; releasing the relay slot");
                    self.swarm.remove_listener(listener);
                }
            }
        }
        if refill {
            let more = self.decide(|plan, links| plan.refill(now, links));
            self.apply_reach(more, now);
        }
    }

    /// Hole punching for `peer`, while it is reached through relays only.
    pub(super) fn reach_punch_state(&self, peer: &PeerId) -> Option<PunchState> {
        self.reach.plan.punches.state(peer)
    }

    /// A peer observed (or AutoNAT confirmed) an address of ours.
    pub(super) fn reach_on_own_address(&mut self, addr: &Multiaddr) {
        let now = Instant::now();
        if self.reach.plan.punches.own_address(addr, now) {
            self.reach.plan.fresh.own_address_changed(now);
        }
    }

    /// A fresh relayed connection to `peer` (beside the ones it has): DCUtR punches on it.
    fn punch(&mut self, peer: PeerId, via: Multiaddr) {
        tracing::info!(%peer, %via, "reached through relays only; punching for a direct connection again");
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(vec![via])
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "cannot dial through the relay");
        }
    }

    /// Asks `relay` for a slot by listening on `listen`; false if listening failed (the
    /// relay is asked again later).
    fn reserve(&mut self, relay: PeerId, listen: Multiaddr, now: Instant) -> bool {
        match self.swarm.listen_on(listen.clone()) {
            Ok(listener) => {
                tracing::info!(%relay, addr = %listen, "asking for a relay slot");
                self.reach.plan.slots.asking(relay, listener);
                true
            }
            Err(e) => {
                tracing::warn!(%relay, error = %e, "cannot ask for a relay slot");
                self.reach.plan.slots.failed(relay, now);
                false
            }
        }
    }

    /// A listen address appeared: a relayed one belongs to a reservation.
    pub(super) fn reach_on_new_listen_addr(&mut self, listener: ListenerId, addr: &Multiaddr) {
        if let Some(relay) = self.reach.plan.slots.listening(listener, addr) {
            tracing::info!(%relay, %addr, "reachable through a relay");
            self.reach_changed();
        }
    }

    /// A listener ended: if it was a reservation, ask again later.
    pub(super) fn reach_on_listener_closed(
        &mut self,
        listener: ListenerId,
        reason: &Result<(), std::io::Error>,
    ) -> bool {
        let Some(relay) = self.reach.plan.slots.closed(listener, Instant::now()) else {
            return false;
        };
        match reason {
            Ok(()) => tracing::info!(%relay, "relay slot closed; will ask again"),
            Err(e) => tracing::info!(%relay, error = %e, "relay slot refused or lost; will ask again"),
        }
        self.reach_changed();
        true
    }

    pub(super) fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id, renewal, ..
            } => {
                self.reach.plan.slots.accepted(relay_peer_id, renewal, now_ms());
                if !renewal {
                    self.reach_changed();
                }
            }
            relay::client::Event::OutboundCircuitEstablished { relay_peer_id, .. } => {
                tracing::debug!(relay = %relay_peer_id, "relayed connection out");
            }
            relay::client::Event::InboundCircuitEstablished { src_peer_id, .. } => {
                tracing::debug!(from = %src_peer_id, "relayed connection in");
            }
        }
    }

    pub(super) fn on_relay_server(&mut self, e: relay::Event) {
        match e {
            relay::Event::CircuitReqAccepted { .. } => self.reach.relay_circuits += 1,
            relay::Event::CircuitClosed { .. } => {
                self.reach.relay_circuits = self.reach.relay_circuits.saturating_sub(1);
            }
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                tracing::info!(peer = %src_peer_id, "holding a relay slot");
            }
            other => tracing::debug!(event = ?other, "relay service"),
        }
    }

    pub(super) fn on_dcutr(&mut self, e: dcutr::Event) {
        use crate::metrics::Metrics;
        self.reach.plan.punch.record(e.result.is_ok());
        Metrics::count(&self.metrics.hole_punches, "attempt");
        match e.result {
            Ok(_) => {
                Metrics::count(&self.metrics.hole_punches, "success");
                tracing::info!(peer = %e.remote_peer_id, "hole punch succeeded: direct connection");
            }
            Err(err) => {
                Metrics::count(&self.metrics.hole_punches, "failure");
                let punches = &mut self.reach.plan.punches;
                punches.failed(&e.remote_peer_id, err.to_string());
                let retries = punches.state(&e.remote_peer_id).map_or(0, |s| s.retries);
                tracing::info!(peer = %e.remote_peer_id, error = %err, retries, "hole punch failed; staying relayed, will try again");
            }
        }
        self.reach_changed();
    }

    /// The router forwards a port to this node (UPnP).
    pub(super) fn reach_upnp_mapped(&self) -> bool {
        self.reach.upnp.status == UpnpStatus::Mapped
    }

    pub(super) fn on_upnp(&mut self, e: libp2p::upnp::Event) {
        let no_router = matches!(e, libp2p::upnp::Event::GatewayNotFound);
        let said = self.reach.upnp.on_event(e);
        tracing::info!("{said}");
        if no_router {
            self.start_natpmp();
        }
        self.reach_changed();
    }

    /// UPnP found no router: ask the default gateway by PCP / NAT-PMP (once).
    fn start_natpmp(&mut self) {
        if !self.reach.natpmp || self.reach.pmp.is_some() || self.stopping {
            return;
        }
        let Some(gateway) = natpmp::default_gateway() else {
            tracing::info!("no default gateway: no PCP / NAT-PMP port mapping");
            return;
        };
        let listen: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let ports = natpmp::ports(&listen);
        if ports.is_empty() {
            return;
        }
        tracing::info!(%gateway, ?ports, "asking the router to forward the listening ports (PCP / NAT-PMP)");
        let cancel = tokio_util::sync::CancellationToken::new();
        self.reach.pmp = Some(cancel.clone());
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(natpmp::run(gateway, ports, tx, cancel));
        let actor = self.self_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if actor.send(super::Command::PortMapping(e)).await.is_err() {
                    break;
                }
            }
        });
    }

    /// What the PCP / NAT-PMP task came to.
    pub(super) fn on_port_mapping(&mut self, e: PmpEvent) {
        match e {
            PmpEvent::Mapped(addrs, method) => {
                for a in &addrs {
                    tracing::info!(addr = %a, "the router forwards {a} to this node ({method})");
                    self.swarm.add_external_address(a.clone());
                }
                self.reach.upnp.mapped = addrs;
                self.reach.upnp.status = UpnpStatus::Mapped;
            }
            PmpEvent::Failed(why) => tracing::info!(%why, "no PCP / NAT-PMP port mapping"),
            PmpEvent::Lost(addrs) => {
                for a in &addrs {
                    tracing::warn!(addr = %a, "the router no longer forwards {a} to this node");
                    self.swarm.remove_external_address(a);
                }
                self.reach.upnp.mapped.retain(|a| !addrs.contains(a));
                if self.reach.upnp.mapped.is_empty() {
                    self.reach.upnp.status = UpnpStatus::Searching;
                }
            }
        }
        self.reach_changed();
    }

    pub(super) fn on_autonat(&mut self, e: autonat::v2::client::Event) {
        self.reach.plan.nat.tested(e.result.is_ok());
        match e.result {
            Ok(()) => {
                tracing::info!(addr = %e.tested_addr, server = %e.server, "address confirmed reachable");
            }
            Err(err) => {
                tracing::debug!(addr = %e.tested_addr, error = %err, "address not reachable from outside");
            }
        }
        self.reach_changed();
    }

    /// After identify: note relays. A relay in use that listens on QUIC is reached over QUIC
    /// too: its identify then tells this node its QUIC address as the NAT maps it, which
    /// hole punches need (a QUIC punch holds where routers answer unsolicited TCP with a
    /// reset, which kills a TCP punch).
    pub(super) fn reach_on_identify(
        &mut self,
        peer: PeerId,
        protocols: &[libp2p::StreamProtocol],
        listen: &[Multiaddr],
    ) {
        if protocols.iter().any(|p| p.as_ref() == HOP_PROTOCOL) {
            self.reach.plan.slots.offers(peer);
        }
        if !self.reach_uses_relay(&peer) {
            return;
        }
        let is_quic = |a: &Multiaddr| a.iter().any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1));
        let over_quic = self
            .peers
            .get(&peer)
            .is_some_and(|s| s.connections.values().any(|c| is_quic(&c.addr)));
        let we_quic = self.swarm.listeners().any(is_quic);
        if let Some(quic) = listen
            .iter()
            .find(|a| is_quic(a) && path_of(a) != Path::Relayed)
            .filter(|_| we_quic && !over_quic)
        {
            tracing::debug!(relay = %peer, addr = %quic, "reaching the relay over QUIC too");
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .addresses(vec![quic.clone()])
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(relay = %peer, error = %e, "cannot dial the relay over QUIC");
            }
        }
    }
}
