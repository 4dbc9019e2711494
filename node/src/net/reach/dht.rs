//! DHT lookups: members' addresses fed to Kademlia, a peer looked up when no address of it
//! is known (at the pace [`super::plan::Lookups`] sets), found addresses dialed.

use std::time::Instant;

use libp2p::{Multiaddr, PeerId, kad};
use tokio::sync::oneshot;

use super::super::behaviour::KAD_PROTOCOL;
use super::super::{NetActor, NetError, is_link_local_v6, is_loopback};

/// A caller waiting for the addresses of a peer.
pub(super) type FindReply = oneshot::Sender<Result<Vec<Multiaddr>, NetError>>;

impl NetActor {
    /// Once a member is both admitted and identified: its dialable addresses go into the
    /// DHT (only members' addresses ever do).
    pub(in crate::net) fn feed_kad(&mut self, peer: PeerId) {
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

    /// Looks `peer` up in the DHT (at most every [`super::LOOKUP_EVERY`]), dialing it when found.
    pub(in crate::net) fn lookup(&mut self, peer: PeerId, reply: Option<FindReply>) {
        if let Some((_, (_, waiters))) = self.reach.lookups.iter_mut().find(|(_, (p, _))| *p == peer) {
            waiters.extend(reply);
            return;
        }
        if !self.reach.plan.lookups.start(peer, Instant::now(), reply.is_some()) {
            return;
        }
        let id = self.swarm.behaviour_mut().kad.inner().get_closest_peers(peer);
        self.reach.lookups.insert(id, (peer, reply.into_iter().collect()));
    }

    pub(in crate::net) fn on_kad(&mut self, e: kad::Event) {
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
