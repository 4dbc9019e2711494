//! The public libp2p network (opt-in: `[internet] public_network`), for members that have
//! no public address between them and no member relay.
//!
//! * **The DHT.** A second Kademlia speaks the public one (Amino, [`PUBLIC_KAD_PROTOCOL`])
//!   in client mode: this node asks, it never answers (so it stores and serves nothing for
//!   strangers). It enters through the configured bootstrap nodes.
//! * **Relays.** Public nodes that offer relaying (identify lists the hop protocol) become
//!   relay candidates, after configured, dialed and member relays (see
//!   [`super::reach`]). Their limits (libp2p's defaults: 2 minutes and 128 KiB per relayed
//!   connection) are enough to meet and punch a hole; what stays relayed is re-established
//!   when cut. While this node holds no slot, it looks for relays with a random lookup (at
//!   the pace of [`Rendezvous`]), which connects it to DHT nodes whose identify it reads.
//! * **The rendezvous.** Every member announces itself as a *provider* of one key that
//!   only members can compute ([`rendezvous_key`], from the mesh secret): the provider
//!   record carries its PeerId and its external addresses (its relayed ones, at least).
//!   A member missing some of its mesh looks the key up and dials the providers that are
//!   members, with the addresses the lookup returned.
//!
//! Everything else is unchanged: a public node is an outsider, admitted to nothing; it
//! stays connected while it is our relay or carries a relayed connection of ours, or while
//! the DHT uses it (it is then closed when idle), and it is not listed among the nodes
//! seen nearby.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, kad};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::NetActor;
use crate::ids::now_ms;

/// The public DHT's protocol (Amino, as IPFS and most libp2p nodes speak it).
pub const PUBLIC_KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/kad/1.0.0");
/// First wait between rendezvous lookups (and relay searches) while something is missing.
pub const RENDEZVOUS_MIN: Duration = Duration::from_secs(5);
/// Longest wait between them.
pub const RENDEZVOUS_MAX: Duration = Duration::from_secs(600);
/// The rendezvous record is published again at least this often (and whenever this
/// node's external addresses change).
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(30 * 60);

/// The DHT key under which the members of a mesh epoch meet: a SHA-256 multihash (as
/// public DHT nodes expect keys to be) of a hash of the epoch secret. Nobody without the
/// secret can compute it or tell which mesh it belongs to.
pub fn rendezvous_key(secret: &[u8; 32]) -> kad::RecordKey {
    let digest = Sha256::new()
        .chain_update(b"agentmesh rendezvous v1\0")
        .chain_update(secret)
        .finalize();
    let mut multihash = vec![0x12, 0x20];
    multihash.extend_from_slice(&digest);
    kad::RecordKey::new(&multihash)
}

/// When to publish the rendezvous record, look it up, and search for relays. Fed the time
/// and what is missing; decides only.
#[derive(Debug)]
pub(super) struct Rendezvous {
    /// Addresses the record was last published with, and when.
    published: Option<(Vec<Multiaddr>, Instant)>,
    next_lookup: Option<Instant>,
    lookup_wait: Duration,
    next_search: Option<Instant>,
    search_wait: Duration,
}

impl Default for Rendezvous {
    fn default() -> Self {
        Self {
            published: None,
            next_lookup: None,
            lookup_wait: RENDEZVOUS_MIN,
            next_search: None,
            search_wait: RENDEZVOUS_MIN,
        }
    }
}

impl Rendezvous {
    /// Whether to publish the record now, with `addrs` (this node's external addresses):
    /// there are some, and they changed or the last publication is old.
    pub(super) fn publish_due(&self, now: Instant, addrs: &[Multiaddr]) -> bool {
        if addrs.is_empty() {
            return false;
        }
        match &self.published {
            None => true,
            Some((last, at)) => !same_set(last, addrs) || now.duration_since(*at) >= REPUBLISH_EVERY,
        }
    }

    /// The record was published with `addrs`. Members looking are told soon after: the
    /// lookups start over at the fastest pace.
    pub(super) fn published(&mut self, now: Instant, addrs: &[Multiaddr]) {
        self.published = Some((addrs.to_vec(), now));
        self.lookup_wait = RENDEZVOUS_MIN;
        self.next_lookup = Some(now);
    }

    /// Whether to look the record up now. `missing`: some member is not connected. The
    /// pace doubles from [`RENDEZVOUS_MIN`] to [`RENDEZVOUS_MAX`] while members stay
    /// missing, and starts over when one goes missing ([`Rendezvous::member_lost`]).
    pub(super) fn lookup_due(&mut self, now: Instant, missing: bool) -> bool {
        due(now, missing, &mut self.next_lookup, &mut self.lookup_wait)
    }

    /// A member's connection was lost (or this node's addresses changed): look soon.
    pub(super) fn member_lost(&mut self, now: Instant) {
        self.lookup_wait = RENDEZVOUS_MIN;
        self.next_lookup = Some(now);
    }

    /// Whether to search the DHT for relays now. `wanted`: this node is not reachable and
    /// holds no slot.
    pub(super) fn search_due(&mut self, now: Instant, wanted: bool) -> bool {
        due(now, wanted, &mut self.next_search, &mut self.search_wait)
    }

    /// When one of the above may next be due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        [self.next_lookup, self.next_search].into_iter().flatten().min()
    }
}

/// Shared pacing: due when `wanted` and the time came; then the wait doubles. Not wanted:
/// the pace starts over next time.
fn due(now: Instant, wanted: bool, next: &mut Option<Instant>, wait: &mut Duration) -> bool {
    if !wanted {
        *next = None;
        *wait = RENDEZVOUS_MIN;
        return false;
    }
    if next.is_some_and(|t| t > now) {
        return false;
    }
    *next = Some(now + *wait);
    *wait = (*wait * 2).min(RENDEZVOUS_MAX);
    true
}

fn same_set(a: &[Multiaddr], b: &[Multiaddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// The public-network part of `mesh status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublicNetInfo {
    /// `[internet] public_network` is on.
    pub enabled: bool,
    /// Public DHT nodes in this node's routing table.
    pub dht_peers: u32,
    /// When the rendezvous record was last published, ms since the epoch.
    pub published_ms: Option<u64>,
    /// Members found through the rendezvous since start.
    pub found: u32,
}

/// State of the public-network machinery, owned by the network actor.
pub(super) struct Public {
    enabled: bool,
    bootstrap: Vec<(PeerId, Multiaddr)>,
    schedule: Rendezvous,
    /// Public nodes met (identify says they speak the public DHT or relay).
    nodes: HashSet<PeerId>,
    /// Rendezvous lookups under way.
    lookups: HashSet<kad::QueryId>,
    published_ms: Option<u64>,
    found: u32,
    /// Routing table size, as of the last upkeep.
    dht_peers: u32,
}

impl Public {
    pub(super) fn new(enabled: bool, bootstrap: &[Multiaddr]) -> Self {
        let bootstrap = bootstrap
            .iter()
            .filter_map(|a| super::peer_of(a).map(|p| (p, super::strip_p2p(a.clone()))))
            .collect();
        Self {
            enabled,
            bootstrap,
            schedule: Rendezvous::default(),
            nodes: HashSet::new(),
            lookups: HashSet::new(),
            published_ms: None,
            found: 0,
            dht_peers: 0,
        }
    }

    /// Whether `peer` is a public node this node met (not a member, not a LAN neighbour).
    pub(super) fn is_public_node(&self, peer: &PeerId) -> bool {
        self.nodes.contains(peer)
    }

    /// When the public machinery next needs [`NetActor::maintain_public`].
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.enabled.then(|| self.schedule.next_deadline()).flatten()
    }
}

impl NetActor {
    fn public_kad(&mut self) -> Option<&mut kad::Behaviour<kad::store::MemoryStore>> {
        self.swarm.behaviour_mut().public_kad.as_mut()
    }

    /// At start: the bootstrap nodes into the public DHT, and a first bootstrap.
    pub(super) fn start_public(&mut self) {
        if !self.public.enabled {
            return;
        }
        if self.adm.mesh.is_open() {
            tracing::warn!(
                "[internet] public_network is on but this node runs in open mode (no mesh key): the public network stays unused"
            );
            return;
        }
        let nodes = self.public.bootstrap.clone();
        let Some(kad) = self.public_kad() else { return };
        for (peer, addr) in nodes {
            kad.add_address(&peer, addr);
        }
        match kad.bootstrap() {
            Ok(_) => tracing::info!("joining the public network"),
            Err(e) => tracing::warn!(error = %e, "cannot join the public network"),
        }
    }

    /// A peer that is not an agentmesh node identified itself: if the public network is on
    /// and it is a public node (public DHT or relay), it is kept (and offered as a relay);
    /// true then.
    pub(super) fn public_on_identify(&mut self, peer: PeerId, protocols: &[StreamProtocol]) -> bool {
        if !self.public.enabled {
            return false;
        }
        let dht = protocols.contains(&PUBLIC_KAD_PROTOCOL);
        let relay = protocols.iter().any(|p| p.as_ref() == super::behaviour::HOP_PROTOCOL);
        if !dht && !relay {
            return false;
        }
        self.public.nodes.insert(peer);
        if relay {
            tracing::debug!(%peer, "a public node offers relaying");
            self.reach_public_relay(peer);
        }
        true
    }

    /// Periodic: publish the rendezvous record, look it up, search for relays.
    pub(super) fn maintain_public(&mut self) {
        // Open mode has no secret: its key would gather every open-mode node of the
        // internet. Members of a mesh only.
        if !self.public.enabled || self.adm.mesh.is_open() {
            return;
        }
        let now = Instant::now();
        if let Some(kad) = self.public_kad() {
            let known = kad.kbuckets().map(|b| b.num_entries()).sum::<usize>();
            self.public.dht_peers = u32::try_from(known).unwrap_or(u32::MAX);
        }
        let external: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        let key = rendezvous_key(&self.adm.mesh.current().secret);
        if self.public.schedule.publish_due(now, &external) {
            let Some(kad) = self.public_kad() else { return };
            match kad.start_providing(key.clone()) {
                Ok(_) => {
                    tracing::info!(addrs = ?external, "publishing the rendezvous record");
                    self.public.schedule.published(now, &external);
                    self.public.published_ms = Some(now_ms());
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish the rendezvous record"),
            }
        }
        let missing = self.missing_members();
        if self.public.schedule.lookup_due(now, missing) {
            tracing::debug!("looking for members through the public network");
            if let Some(kad) = self.public_kad() {
                let id = kad.get_providers(key);
                self.public.lookups.insert(id);
            }
        }
        let wanted = self.reach_wants_relay();
        if self.public.schedule.search_due(now, wanted) {
            tracing::debug!("looking for public relays");
            if let Some(kad) = self.public_kad() {
                kad.get_closest_peers(PeerId::random());
            }
        }
    }

    /// Some member (other than this node, not removed) has no connection to this node.
    fn missing_members(&self) -> bool {
        let me = *self.swarm.local_peer_id();
        self.adm
            .mesh
            .members()
            .iter()
            .any(|m| *m != me && !self.adm.mesh.is_revoked(m) && !self.is_admitted(m))
    }

    /// A member's connection was lost: look for it soon.
    pub(super) fn public_member_lost(&mut self) {
        self.public.schedule.member_lost(Instant::now());
    }

    pub(super) fn on_public_kad(&mut self, e: kad::Event) {
        let kad::Event::OutboundQueryProgressed { id, result, step, .. } = e else {
            return;
        };
        match result {
            kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders { providers, .. })) => {
                self.dial_providers(providers);
            }
            kad::QueryResult::StartProviding(Err(e)) => {
                tracing::debug!(error = %e, "the rendezvous record reached no DHT node");
            }
            kad::QueryResult::Bootstrap(Err(e)) => {
                tracing::debug!(error = %e, "public network bootstrap incomplete");
            }
            _ => {}
        }
        if step.last {
            self.public.lookups.remove(&id);
        }
    }

    /// Members among the providers of the rendezvous key, not connected: dialed at the
    /// addresses the lookup returned (the DHT hands them to the dial while its query runs).
    fn dial_providers(&mut self, providers: HashSet<PeerId>) {
        let me = *self.swarm.local_peer_id();
        for peer in providers {
            if peer == me
                || !self.adm.mesh.is_member(&peer)
                || self.adm.mesh.is_revoked(&peer)
                || self.swarm.is_connected(&peer)
            {
                continue;
            }
            tracing::info!(%peer, "found a member through the public network");
            self.public.found += 1;
            let opts = DialOpts::peer_id(peer)
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "cannot dial a member found through the public network");
            }
        }
    }

    pub(super) fn public_info(&self) -> PublicNetInfo {
        PublicNetInfo {
            enabled: self.public.enabled,
            dht_peers: self.public.dht_peers,
            published_ms: self.public.published_ms,
            found: self.public.found,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_key_is_a_sha256_multihash_that_differs_by_secret() {
        let a = rendezvous_key(&[1; 32]);
        assert_eq!(a.as_ref().len(), 34);
        assert_eq!(&a.as_ref()[..2], &[0x12, 0x20]);
        assert_eq!(a, rendezvous_key(&[1; 32]));
        assert_ne!(a, rendezvous_key(&[2; 32]));
    }

    #[test]
    fn the_record_is_published_once_there_are_addresses_again_when_they_change_and_when_old() {
        let t0 = Instant::now();
        let mut r = Rendezvous::default();
        assert!(!r.publish_due(t0, &[]), "nothing to publish yet");
        let relayed = [addr(
            "/ip4/5.0.0.10/tcp/4001/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp/p2p-circuit",
        )];
        assert!(r.publish_due(t0, &relayed));
        r.published(t0, &relayed);
        assert!(!r.publish_due(t0 + 60 * S, &relayed));
        let more = [relayed[0].clone(), addr("/ip4/5.0.0.2/udp/4001/quic-v1")];
        assert!(r.publish_due(t0 + 60 * S, &more), "a new address");
        assert!(r.publish_due(t0 + REPUBLISH_EVERY, &relayed), "old");
    }

    #[test]
    fn lookups_slow_down_while_members_stay_missing_and_start_over_when_one_is_lost() {
        let t0 = Instant::now();
        let mut r = Rendezvous::default();
        assert!(!r.lookup_due(t0, false), "nobody missing");
        assert!(r.lookup_due(t0, true));
        assert!(!r.lookup_due(t0 + RENDEZVOUS_MIN - S, true));
        assert!(r.lookup_due(t0 + RENDEZVOUS_MIN, true));
        // Now it waits twice as long.
        let t1 = t0 + RENDEZVOUS_MIN;
        assert!(!r.lookup_due(t1 + 2 * RENDEZVOUS_MIN - S, true));
        assert!(r.lookup_due(t1 + 2 * RENDEZVOUS_MIN, true));
        for i in 0..20 {
            r.lookup_due(t1 + RENDEZVOUS_MAX * (i + 3), true);
        }
        assert_eq!(r.lookup_wait, RENDEZVOUS_MAX, "bounded");
        let t2 = t1 + RENDEZVOUS_MAX * 30;
        r.member_lost(t2);
        assert!(r.lookup_due(t2, true), "at once");
        assert!(r.lookup_due(t2 + RENDEZVOUS_MIN, true), "at the fastest pace again");
    }

    #[test]
    fn publishing_new_addresses_makes_the_next_lookup_due_at_once() {
        let t0 = Instant::now();
        let mut r = Rendezvous::default();
        assert!(r.lookup_due(t0, true));
        assert!(!r.lookup_due(t0 + S, true));
        r.published(t0 + S, &[addr("/ip4/5.0.0.2/tcp/4001")]);
        assert!(r.lookup_due(t0 + S, true));
    }

    #[test]
    fn relay_searches_pause_while_a_slot_is_held_and_start_over_after() {
        let t0 = Instant::now();
        let mut r = Rendezvous::default();
        assert!(r.search_due(t0, true));
        assert!(!r.search_due(t0 + S, true));
        assert!(!r.search_due(t0 + 100 * S, false), "a slot is held");
        assert!(r.search_due(t0 + 101 * S, true), "lost: at once");
    }
}
