//! A fake of what the actor knows about its connections, for the tests of the decisions.

use std::collections::{HashMap, HashSet};

use libp2p::{Multiaddr, PeerId};

use super::plan::Links;

/// Connections as a test sets them: every peer has an address unless told otherwise.
#[derive(Default)]
pub(super) struct FakeLinks {
    connected: HashSet<PeerId>,
    admitted: HashSet<PeerId>,
    direct: HashSet<PeerId>,
    no_addr: HashSet<PeerId>,
    /// Admitted members reached through relays only, with their relayed address if known.
    relayed: HashMap<PeerId, Option<Multiaddr>>,
    /// This node, and whether it holds a slot (default: a random PeerId, no slot).
    me: Option<(PeerId, bool)>,
}

impl FakeLinks {
    /// `peers` have a direct connection (and so are connected).
    pub(super) fn add_direct(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        for p in peers {
            self.direct.insert(p);
            self.connected.insert(p);
        }
    }

    /// `peers` are admitted members.
    pub(super) fn add_admitted(&mut self, peers: impl IntoIterator<Item = PeerId>) {
        self.admitted.extend(peers);
    }

    pub(super) fn remove_admitted(&mut self, peer: PeerId) {
        self.admitted.remove(&peer);
    }

    /// `peer` is an admitted member reached through relays only (at `circuit`, if known).
    pub(super) fn relayed_only(&mut self, peer: PeerId, circuit: Option<Multiaddr>) {
        self.direct.remove(&peer);
        self.connected.insert(peer);
        self.admitted.insert(peer);
        self.relayed.insert(peer, circuit);
    }

    /// This node is `me`, holding a slot or not.
    pub(super) fn set_me(&mut self, me: PeerId, slot: bool) {
        self.me = Some((me, slot));
    }

    /// `peer` has a direct connection now.
    pub(super) fn direct_now(&mut self, peer: PeerId) {
        self.relayed.remove(&peer);
        self.add_direct([peer]);
    }

    /// No address of `peer` is known.
    pub(super) fn hide_addr(&mut self, peer: PeerId) {
        self.no_addr.insert(peer);
    }
}

impl Links for FakeLinks {
    fn connected(&self, peer: &PeerId) -> bool {
        self.connected.contains(peer)
    }

    fn admitted(&self, peer: &PeerId) -> bool {
        self.admitted.contains(peer)
    }

    fn direct(&self, peer: &PeerId) -> bool {
        self.direct.contains(peer)
    }

    fn relay_addr(&self, relay: &PeerId) -> Option<Multiaddr> {
        (!self.no_addr.contains(relay)).then(|| "/ip4/5.0.0.1/tcp/4001".parse().expect("a valid address"))
    }

    fn relayed_only_members(&self) -> Vec<PeerId> {
        self.relayed.keys().copied().collect()
    }

    fn circuit_addr(&self, peer: &PeerId) -> Option<Multiaddr> {
        self.relayed.get(peer).cloned().flatten()
    }

    fn me(&self) -> PeerId {
        self.me.map_or_else(PeerId::random, |(p, _)| p)
    }

    fn holds_slot(&self) -> bool {
        self.me.is_some_and(|(_, slot)| slot)
    }
}
