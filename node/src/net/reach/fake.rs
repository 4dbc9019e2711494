//! A fake of what the actor knows about its connections, for the tests of the decisions.

use std::collections::HashSet;

use libp2p::{Multiaddr, PeerId};

use super::plan::Links;

/// Connections as a test sets them: every peer has an address unless told otherwise.
#[derive(Default)]
pub(super) struct FakeLinks {
    connected: HashSet<PeerId>,
    admitted: HashSet<PeerId>,
    direct: HashSet<PeerId>,
    no_addr: HashSet<PeerId>,
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
}
