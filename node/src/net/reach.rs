//! Reachability across the internet: what AutoNAT says about us, the relay slots we hold
//! while we are not reachable, the peers we keep redialing, DHT lookups, hole-punch counts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, autonat, dcutr, kad, relay};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::behaviour::{HOP_PROTOCOL, KAD_PROTOCOL};
use super::{NetActor, NetError, NetEvent, Path, is_link_local_v6, is_loopback, path_of, strip_p2p};
use crate::ids::now_ms;

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
}

pub(super) struct Reservation {
    listener: ListenerId,
    addr: Option<Multiaddr>,
    accepted: bool,
    since_ms: Option<u64>,
    renewals: u32,
}

type FindReply = oneshot::Sender<Result<Vec<Multiaddr>, NetError>>;

struct Pin {
    next: Option<Instant>,
    backoff: Duration,
}

/// A member whose last connection was lost (network trouble, its restart): redialed with
/// backoff for a while, so a mesh heals by itself after a partition or an address change.
struct Lost {
    next: Instant,
    backoff: Duration,
    until: Instant,
}

/// State of the reachability machinery, owned by the network actor.
pub(super) struct Reach {
    autonat_ok: u32,
    autonat_failed: u32,
    reservations: HashMap<PeerId, Reservation>,
    retry: HashMap<PeerId, (Instant, Duration)>,
    configured: Vec<(PeerId, Multiaddr)>,
    /// Peers that offer relaying (identify says so).
    relays: HashSet<PeerId>,
    pinned: HashMap<PeerId, Pin>,
    lost: HashMap<PeerId, Lost>,
    /// Peers whose connections this node is closing itself after joining or leaving a mesh:
    /// their loss is not a reason to redial them.
    forgotten: HashSet<PeerId>,
    lookups: HashMap<kad::QueryId, (PeerId, Vec<FindReply>)>,
    last_lookup: HashMap<PeerId, Instant>,
    pub(super) punch: PunchStats,
    relay_circuits: u32,
    relay_serving: bool,
    relay_for_anyone: bool,
    declared: Vec<Multiaddr>,
    last_status: NatStatus,
}

impl Reach {
    pub(super) fn new(
        configured: &[Multiaddr],
        relay_serving: bool,
        relay_for_anyone: bool,
        declared: &[Multiaddr],
    ) -> Self {
        let configured = configured
            .iter()
            .filter_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::P2p(id) => Some((id, strip_p2p(a.clone()))),
                    _ => None,
                })
            })
            .collect();
        Self {
            autonat_ok: 0,
            autonat_failed: 0,
            reservations: HashMap::new(),
            retry: HashMap::new(),
            configured,
            relays: HashSet::new(),
            pinned: HashMap::new(),
            lost: HashMap::new(),
            forgotten: HashSet::new(),
            lookups: HashMap::new(),
            last_lookup: HashMap::new(),
            punch: PunchStats::default(),
            relay_circuits: 0,
            relay_serving,
            relay_for_anyone,
            declared: declared.to_vec(),
            last_status: NatStatus::Unknown,
        }
    }

    /// When the reach machinery next needs to act.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let pins = self.pinned.values().filter_map(|p| p.next);
        let lost = self.lost.values().map(|l| l.next);
        let retries = self.retry.values().map(|(t, _)| *t);
        pins.chain(lost).chain(retries).min()
    }
}

impl NetActor {
    pub(super) fn nat_status(&self) -> NatStatus {
        let public = self.swarm.external_addresses().any(|a| path_of(a) == Path::Internet);
        if public {
            NatStatus::Public
        } else if self.reach.autonat_failed > 0 {
            NatStatus::Private
        } else {
            NatStatus::Unknown
        }
    }

    pub(super) fn reach_info(&self) -> ReachInfo {
        let mut reservations: Vec<ReservationInfo> = self
            .reach
            .reservations
            .iter()
            .map(|(relay, r)| ReservationInfo {
                relay: *relay,
                addr: r.addr.clone(),
                accepted: r.accepted,
                since_ms: r.since_ms,
                renewals: r.renewals,
            })
            .collect();
        reservations.sort_by_key(|r| r.relay);
        ReachInfo {
            nat: self.nat_status(),
            external: self.swarm.external_addresses().cloned().collect(),
            reservations,
            punch: self.reach.punch,
            relay_serving: self.reach.relay_serving,
            relay_circuits: self.reach.relay_circuits,
        }
    }

    /// Tells the node when reachability changed (status, slots, upgrades).
    pub(super) fn reach_changed(&mut self) {
        let now = self.nat_status();
        if now != self.reach.last_status {
            tracing::info!(from = ?self.reach.last_status, to = ?now, "reachability changed");
            self.reach.last_status = now;
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

    /// `peer` is a relay this node is configured with or holds (or asks for) a slot on.
    pub(super) fn reach_uses_relay(&self, peer: &PeerId) -> bool {
        self.reach.reservations.contains_key(peer) || self.reach.configured.iter().any(|(p, _)| p == peer)
    }

    /// A removed node: no more redials, no relay slot on it.
    pub(super) fn reach_forget(&mut self, peer: &PeerId) {
        self.reach.pinned.remove(peer);
        self.reach.lost.remove(peer);
        self.reach.relays.remove(peer);
        if let Some(r) = self.reach.reservations.remove(peer) {
            self.swarm.remove_listener(r.listener);
        }
    }

    /// Declared external addresses, configured relays: at start.
    pub(super) fn start_reach(&mut self) {
        for a in self.reach.declared.clone() {
            tracing::info!(addr = %a, "declared external address");
            self.swarm.add_external_address(a);
        }
        let configured = self.reach.configured.clone();
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
        self.reach.pinned.entry(peer).or_insert(Pin {
            next: (!connected).then(Instant::now),
            backoff: REDIAL_MIN,
        });
    }

    /// Stops redialing `peer`.
    pub(super) fn unpin(&mut self, peer: &PeerId) -> bool {
        self.reach.pinned.remove(peer).is_some()
    }

    pub(super) fn pinned(&self) -> Vec<PeerId> {
        self.reach.pinned.keys().copied().collect()
    }

    pub(super) fn reach_on_connected(&mut self, peer: PeerId) {
        // A lost member stays in `lost` (with its backoff) until a redial finds it still
        // connected: one that drops again at once is not redialed ever faster.
        self.reach.forgotten.remove(&peer);
        if let Some(p) = self.reach.pinned.get_mut(&peer) {
            p.next = None;
            p.backoff = REDIAL_MIN;
        }
    }

    /// The last connection to an admitted member closed without us closing it: keep trying
    /// to get it back (pinned peers have their own redials).
    pub(super) fn reach_on_member_lost(&mut self, peer: PeerId) {
        if self.reach.forgotten.remove(&peer) || self.reach.pinned.contains_key(&peer) {
            return;
        }
        let now = Instant::now();
        // Lost again before a redial found it connected: the backoff and the hour go on.
        self.reach.lost.entry(peer).or_insert(Lost {
            next: now + REDIAL_MIN,
            backoff: REDIAL_MIN,
            until: now + LOST_REDIAL_FOR,
        });
    }

    /// Lost members are not redialed any more, nor are `closing`, whose connections this
    /// node is about to close (the mesh was left or joined anew).
    pub(super) fn reach_forget_lost(&mut self, closing: &[PeerId]) {
        self.reach.lost.clear();
        self.reach.forgotten = closing.iter().copied().collect();
    }

    pub(super) fn reach_on_disconnected(&mut self, peer: PeerId) {
        if let Some(p) = self.reach.pinned.get_mut(&peer) {
            p.next = Some(Instant::now() + p.backoff);
        }
        self.reach.relays.remove(&peer);
    }

    /// Periodic work: redials, reservations.
    pub(super) fn maintain_reach(&mut self) {
        let now = Instant::now();
        // Redial remembered peers that are due.
        let due: Vec<PeerId> = self
            .reach
            .pinned
            .iter()
            .filter(|(_, p)| p.next.is_some_and(|t| t <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if self.swarm.is_connected(&peer) {
                self.reach_on_connected(peer);
                continue;
            }
            if let Some(p) = self.reach.pinned.get_mut(&peer) {
                p.next = Some(now + p.backoff);
                p.backoff = (p.backoff * 2).min(REDIAL_MAX);
            }
            tracing::debug!(%peer, "redialing a remembered peer");
            self.dial_known(peer);
        }

        // Redial lost members that are due, for a while.
        self.reach.lost.retain(|_, l| l.until > now);
        let due: Vec<PeerId> = self
            .reach
            .lost
            .iter()
            .filter(|(_, l)| l.next <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if self.swarm.is_connected(&peer) {
                self.reach.lost.remove(&peer);
                continue;
            }
            if let Some(l) = self.reach.lost.get_mut(&peer) {
                l.backoff = (l.backoff * 2).min(LOST_REDIAL_MAX);
                l.next = now + l.backoff;
            }
            tracing::debug!(%peer, "redialing a member whose connection was lost");
            self.dial_known(peer);
        }

        // Relay slots: held while we are not known to be reachable.
        let status = self.nat_status();
        if status == NatStatus::Public {
            let held: Vec<(PeerId, ListenerId)> =
                self.reach.reservations.iter().map(|(p, r)| (*p, r.listener)).collect();
            for (relay, listener) in held {
                tracing::info!(%relay, "reachable directly; releasing the relay slot");
                self.swarm.remove_listener(listener);
                self.reach.reservations.remove(&relay);
            }
            return;
        }
        if self.reach.reservations.len() >= MAX_RESERVATIONS {
            return;
        }
        let mut candidates: Vec<PeerId> = self.reach.configured.iter().map(|(p, _)| *p).collect();
        // Members that relay (a non-member relay is used only when configured).
        let mut offered: Vec<PeerId> = self
            .reach
            .relays
            .iter()
            .copied()
            .filter(|p| self.is_admitted(p))
            .collect();
        offered.sort();
        candidates.extend(offered);
        candidates.dedup();
        for relay in candidates {
            if self.reach.reservations.len() >= MAX_RESERVATIONS {
                break;
            }
            if self.reach.reservations.contains_key(&relay) {
                continue;
            }
            if self.reach.retry.get(&relay).is_some_and(|(t, _)| *t > now) {
                continue;
            }
            if !self.has_direct_connection(&relay) {
                continue;
            }
            self.reserve(relay);
        }
    }

    fn has_direct_connection(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| s.connections.values().any(|c| c.via.is_none()))
    }

    fn reserve(&mut self, relay: PeerId) {
        // Reach the relay where we reach it now (a connection we dialed), else where it
        // says it listens.
        let via_connection = self.peers.get(&relay).and_then(|s| {
            s.connections
                .values()
                .find(|c| c.via.is_none() && c.dialed)
                .map(|c| strip_p2p(c.addr.clone()))
        });
        let addr = via_connection.or_else(|| {
            self.addrs
                .get(&relay)
                .and_then(|l| l.iter().find(|a| path_of(a) != Path::Relayed).cloned())
        });
        let Some(addr) = addr else {
            return;
        };
        let listen = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
        match self.swarm.listen_on(listen.clone()) {
            Ok(listener) => {
                tracing::info!(%relay, addr = %listen, "asking for a relay slot");
                self.reach.reservations.insert(
                    relay,
                    Reservation {
                        listener,
                        addr: None,
                        accepted: false,
                        since_ms: None,
                        renewals: 0,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(%relay, error = %e, "cannot ask for a relay slot");
                self.retry_reservation(relay);
            }
        }
    }

    fn retry_reservation(&mut self, relay: PeerId) {
        let backoff = self
            .reach
            .retry
            .get(&relay)
            .map(|(_, b)| (*b * 2).min(RESERVATION_RETRY_MAX))
            .unwrap_or(RESERVATION_RETRY_MIN);
        self.reach.retry.insert(relay, (Instant::now() + backoff, backoff));
    }

    /// A listen address appeared: a relayed one belongs to a reservation.
    pub(super) fn reach_on_new_listen_addr(&mut self, listener: ListenerId, addr: &Multiaddr) {
        if let Some((relay, r)) = self.reach.reservations.iter_mut().find(|(_, r)| r.listener == listener) {
            r.addr = Some(addr.clone());
            tracing::info!(%relay, %addr, "reachable through a relay");
            self.reach_changed();
        }
    }

    /// A listener ended: if it was a reservation, ask again later.
    pub(super) fn reach_on_listener_closed(
        &mut self,
        listener: ListenerId,
        addrs: &[Multiaddr],
        reason: &Result<(), std::io::Error>,
    ) -> bool {
        let Some(relay) = self
            .reach
            .reservations
            .iter()
            .find(|(_, r)| r.listener == listener)
            .map(|(p, _)| *p)
        else {
            return false;
        };
        self.reach.reservations.remove(&relay);
        let _ = addrs;
        match reason {
            Ok(()) => tracing::info!(%relay, "relay slot closed; will ask again"),
            Err(e) => tracing::info!(%relay, error = %e, "relay slot refused or lost; will ask again"),
        }
        self.retry_reservation(relay);
        self.reach_changed();
        true
    }

    pub(super) fn on_relay_client(&mut self, e: relay::client::Event) {
        match e {
            relay::client::Event::ReservationReqAccepted {
                relay_peer_id, renewal, ..
            } => {
                if let Some(r) = self.reach.reservations.get_mut(&relay_peer_id) {
                    r.accepted = true;
                    r.since_ms = Some(now_ms());
                    if renewal {
                        r.renewals += 1;
                    }
                }
                self.reach.retry.remove(&relay_peer_id);
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
        self.reach.punch.attempts += 1;
        Metrics::count(&self.metrics.hole_punches, "attempt");
        match e.result {
            Ok(_) => {
                Metrics::count(&self.metrics.hole_punches, "success");
                self.reach.punch.successes += 1;
                tracing::info!(peer = %e.remote_peer_id, "hole punch succeeded: direct connection");
            }
            Err(err) => {
                Metrics::count(&self.metrics.hole_punches, "failure");
                self.reach.punch.failures += 1;
                tracing::info!(peer = %e.remote_peer_id, error = %err, "hole punch failed; staying relayed");
            }
        }
        self.reach_changed();
    }

    pub(super) fn on_autonat(&mut self, e: autonat::v2::client::Event) {
        match e.result {
            Ok(()) => {
                self.reach.autonat_ok += 1;
                tracing::info!(addr = %e.tested_addr, server = %e.server, "address confirmed reachable");
            }
            Err(err) => {
                self.reach.autonat_failed += 1;
                tracing::debug!(addr = %e.tested_addr, error = %err, "address not reachable from outside");
            }
        }
        self.reach_changed();
    }

    /// After identify: note relays.
    pub(super) fn reach_on_identify(&mut self, peer: PeerId, protocols: &[libp2p::StreamProtocol]) {
        if protocols.iter().any(|p| p.as_ref() == HOP_PROTOCOL) {
            self.reach.relays.insert(peer);
        }
    }

    /// Once a member is both admitted and identified: its dialable addresses go into the
    /// DHT (only members' addresses ever do).
    pub(super) fn feed_kad(&mut self, peer: PeerId) {
        let Some((protocols, listen)) = self.peers.get(&peer).and_then(|s| s.identified.clone()) else {
            return;
        };
        if !protocols.contains(&KAD_PROTOCOL) {
            return;
        }
        // Kademlia bootstraps by itself while its table is small (and every 5 minutes); one
        // more bootstrap per admitted member would flood a large mesh with queries.
        for a in &listen {
            if !is_link_local_v6(a) && (!is_loopback(a) || self.peer_is_local(&peer)) {
                self.swarm.behaviour_mut().kad.inner().add_address(&peer, a.clone());
            }
        }
    }

    fn peer_is_local(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|s| s.connections.values().any(|c| is_loopback(&c.addr)))
    }

    /// Looks `peer` up in the DHT (at most every [`LOOKUP_EVERY`]), dialing it when found.
    pub(super) fn lookup(&mut self, peer: PeerId, reply: Option<FindReply>) {
        if let Some((_, (_, waiters))) = self.reach.lookups.iter_mut().find(|(_, (p, _))| *p == peer) {
            waiters.extend(reply);
            return;
        }
        let recent = self
            .reach
            .last_lookup
            .get(&peer)
            .is_some_and(|t| t.elapsed() < LOOKUP_EVERY);
        if recent && reply.is_none() {
            return;
        }
        self.reach.last_lookup.insert(peer, Instant::now());
        let id = self.swarm.behaviour_mut().kad.inner().get_closest_peers(peer);
        self.reach.lookups.insert(id, (peer, reply.into_iter().collect()));
    }

    pub(super) fn on_kad(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = e else {
            return;
        };
        let kad::QueryResult::GetClosestPeers(res) = result else {
            return;
        };
        let Some((target, _)) = self.reach.lookups.get(&id) else {
            return;
        };
        let target = *target;
        let peers = match res {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let found: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs)
            .collect();
        if (!found.is_empty() || step.last)
            && let Some((_, waiters)) = self.reach.lookups.remove(&id)
        {
            {
                if !found.is_empty() {
                    tracing::info!(peer = %target, addrs = ?found, "found through the DHT");
                    for a in &found {
                        self.remember(target, a.clone());
                    }
                    self.dial_known(target);
                }
                let answer = if found.is_empty() {
                    Err(NetError::Request {
                        peer: target,
                        why: "not found in the DHT (no known node has it)".into(),
                    })
                } else {
                    Ok(found)
                };
                for w in waiters {
                    let _ = w.send(answer.clone());
                }
            }
        }
    }
}
