//! The pairing protocol's network side: a node not in the mesh asks a nearby member to
//! admit it (`/agentmesh/pair/1`). The asker dials the member and sends its requests once
//! connected; both keep the connection (not admitted) for [`PAIR_KEEP`] after the last
//! request: the asker its own, the member only those of peers whose pairing it lists. The
//! decisions are the node's (`node::pairing`).

use std::time::{Duration, Instant};

use libp2p::request_response::{self, InboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};

use super::admit::{PAIR_KEEP, REFUSED_GRACE};
use super::{NetActor, NetError, NetEvent, Waiting, strip_p2p};
use crate::wire::{PairRefusal, PairRequest, PairResponse};

impl NetActor {
    /// Sends a pairing request to `peer`, dialing it at `addrs` first if need be.
    pub(super) fn send_pair(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: PairRequest,
        reply: Waiting<PairResponse>,
    ) {
        if peer == *self.swarm.local_peer_id() {
            let _ = reply.send(Err(NetError::Request {
                peer,
                why: "that is this node".into(),
            }));
            return;
        }
        self.adm.pairs_out.insert(peer, Instant::now() + PAIR_KEEP);
        self.adm.denied.forget(&peer);
        for a in addrs {
            self.remember(peer, strip_p2p(a));
        }
        if self.swarm.is_connected(&peer) {
            let id = self.swarm.behaviour_mut().pair.send_request(&peer, request);
            self.adm.pair_out.insert(id, reply);
            return;
        }
        self.adm.pair_queue.entry(peer).or_default().push((request, reply));
        let known: Vec<Multiaddr> = self
            .addrs
            .get(&peer)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let opts = DialOpts::peer_id(peer)
            .addresses(known)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.pair_dial_failed(peer, super::dial_error_text(&e)),
        }
    }

    /// Connected to `peer`: the pairing requests waiting for it go out.
    pub(super) fn flush_pair(&mut self, peer: PeerId) {
        for (request, reply) in self.adm.pair_queue.remove(&peer).unwrap_or_default() {
            let id = self.swarm.behaviour_mut().pair.send_request(&peer, request);
            self.adm.pair_out.insert(id, reply);
        }
    }

    /// A dial of `peer` failed: its waiting pairing requests fail with why.
    pub(super) fn pair_dial_failed(&mut self, peer: PeerId, why: String) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        for (_, reply) in self.adm.pair_queue.remove(&peer).unwrap_or_default() {
            let _ = reply.send(Err(NetError::Dial {
                addr: peer.to_string(),
                why: why.clone(),
            }));
        }
    }

    pub(super) fn on_pair(&mut self, event: request_response::Event<PairRequest, PairResponse>) {
        let Some(event) = super::protocols::answered(&mut self.adm.pair_out, event) else {
            return;
        };
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request_id,
                        request,
                        channel,
                    },
                ..
            } => {
                if self.adm.mesh.is_open() {
                    let refused = PairResponse::Refused(PairRefusal::OpenMode);
                    let _ = self.swarm.behaviour_mut().pair.send_response(channel, refused);
                    return;
                }
                self.adm.pair_in.insert(request_id, (peer, channel));
                self.emit(NetEvent::PairRequest {
                    peer,
                    request: request_id,
                    body: request,
                });
            }
            request_response::Event::InboundFailure { request_id, .. } => {
                self.adm.pair_in.remove(&request_id);
            }
            _ => {}
        }
    }

    /// The node's answer to a pairing request; `keep`: the node holds a pairing of that
    /// peer, so its connection stays open that much longer (at most as many peers as the
    /// node holds pairings; anyone else is an outsider like any other).
    pub(super) fn respond_pair(&mut self, request: InboundRequestId, response: PairResponse, keep: Option<Duration>) {
        let Some((peer, ch)) = self.adm.pair_in.remove(&request) else {
            return;
        };
        if let Some(keep) = keep {
            self.adm.pairs_in.insert(peer, Instant::now() + keep);
        } else {
            self.adm.pairs_in.remove(&peer);
            // Refused already while this request kept it: nothing else will close it now.
            if !self.adm.pending.contains_key(&peer) && !self.is_admitted(&peer) {
                let tx = self.self_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(REFUSED_GRACE).await;
                    let _ = tx.send(super::Command::DropOutsider(peer)).await;
                });
            }
        }
        let _ = self.swarm.behaviour_mut().pair.send_response(ch, response);
    }

    /// Whether pairing traffic with `peer` keeps its connection open (not admitted).
    pub(super) fn pairing_with(&self, peer: &PeerId) -> bool {
        let now = Instant::now();
        [&self.adm.pairs_out, &self.adm.pairs_in]
            .iter()
            .any(|m| m.get(peer).is_some_and(|until| *until > now))
            || self.adm.pair_queue.contains_key(peer)
            || self.adm.pair_in.values().any(|(p, _)| p == peer)
    }

    /// Periodic: forgets pairing peers gone quiet, and closes their connections unless
    /// something else keeps them (admitted since, a join).
    pub(super) fn pair_upkeep(&mut self) {
        let now = Instant::now();
        let mut quiet = Vec::new();
        for m in [&mut self.adm.pairs_out, &mut self.adm.pairs_in] {
            m.retain(|p, until| {
                let keep = *until > now;
                if !keep {
                    quiet.push(*p);
                }
                keep
            });
        }
        for peer in quiet {
            self.drop_outsider(peer);
        }
    }
}
