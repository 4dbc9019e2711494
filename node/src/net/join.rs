//! The join protocol: a joiner dials the inviter its code names and hands the code over;
//! the inviter answers with the key chain and a voucher, or a refusal from a fixed
//! vocabulary.

use std::time::{Duration, Instant};

use libp2p::request_response::{self, InboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::admit::{JOIN_REDIAL, JOIN_TIMEOUT, JoinWait, MAX_JOIN_ATTEMPTS, MAX_JOIN_DIALS};
use super::{NetActor, NetError, NetEvent, strip_p2p};
use crate::ids::now_ms;
use crate::mesh::{Grant, Invite, Voucher};
use crate::wire::{self, JoinRefusal, JoinRequest, JoinResponse};

impl NetActor {
    /// Starts a join: dial the inviter, hand it the code.
    pub(super) fn start_join(&mut self, invite: Invite, reply: oneshot::Sender<Result<(Grant, Voucher), NetError>>) {
        let inviter = invite.body.inviter;
        if inviter == *self.swarm.local_peer_id() {
            let _ = reply.send(Err(NetError::Request {
                peer: inviter,
                why: "this join code was made by this node".into(),
            }));
            return;
        }
        for a in &invite.body.addrs {
            self.remember(inviter, strip_p2p(a.clone()));
        }
        self.adm.denied.forget(&inviter);
        self.adm.joining.insert(
            inviter,
            JoinWait {
                invite,
                node_name: self.adm.node_name.clone(),
                deadline: Instant::now() + JOIN_TIMEOUT,
                sent: false,
                reply,
                dials: 0,
                redial_at: None,
            },
        );
        if self.swarm.is_connected(&inviter) {
            self.send_join(inviter);
            return;
        }
        self.dial_inviter(inviter);
    }

    /// Dials the inviter of a join in progress at the addresses its code gave (and any
    /// learned since).
    pub(super) fn dial_inviter(&mut self, inviter: PeerId) {
        let Some(j) = self.adm.joining.get_mut(&inviter) else {
            return;
        };
        j.dials += 1;
        j.redial_at = None;
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&inviter)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let opts = DialOpts::peer_id(inviter)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) => {}
            // Another dial of the inviter (a redial, a lookup) is under way: its outcome
            // connects the join or reports its failure.
            Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.fail_join_dial(inviter, &e),
        }
    }

    /// The join's dial could not even start: the join fails with why.
    fn fail_join_dial(&mut self, inviter: PeerId, e: &libp2p::swarm::DialError) {
        if let Some(j) = self.adm.joining.remove(&inviter) {
            let _ = j.reply.send(Err(NetError::Dial {
                addr: inviter.to_string(),
                why: super::dial_error_text(e),
            }));
        }
    }

    pub(super) fn send_join(&mut self, peer: PeerId) {
        let Some(j) = self.adm.joining.get_mut(&peer) else {
            return;
        };
        if j.sent {
            return;
        }
        j.sent = true;
        let req = JoinRequest {
            invite: j.invite.clone(),
            node_name: j.node_name.clone(),
        };
        let id = self.swarm.behaviour_mut().join.send_request(&peer, req);
        self.adm.join_out.insert(id, peer);
    }

    /// A dial to the inviter failed: tried again after [`JOIN_REDIAL`] while dials and
    /// time are left, else the join fails with why.
    pub(super) fn join_dial_failed(&mut self, peer: PeerId, why: String) {
        if self.swarm.is_connected(&peer) {
            return;
        }
        let now = Instant::now();
        if let Some(j) = self.adm.joining.get_mut(&peer)
            && j.dials < MAX_JOIN_DIALS
            && now + JOIN_REDIAL < j.deadline
        {
            tracing::info!(inviter = %peer, error = %why, "cannot reach the inviting node yet; trying again");
            j.redial_at = Some(now + JOIN_REDIAL);
            return;
        }
        if let Some(j) = self.adm.joining.remove(&peer) {
            let _ = j.reply.send(Err(NetError::Dial {
                addr: peer.to_string(),
                why,
            }));
        }
    }

    pub(super) fn on_join(&mut self, event: request_response::Event<JoinRequest, JoinResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    let attempts = self.adm.pending.get_mut(&peer).map(|p| {
                        p.joins += 1;
                        p.joins
                    });
                    if self.adm.mesh.is_open() || attempts.unwrap_or(0) > MAX_JOIN_ATTEMPTS {
                        let why = if self.adm.mesh.is_open() {
                            JoinRefusal::OpenMode
                        } else {
                            JoinRefusal::TooManyAttempts
                        };
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .join
                            .send_response(channel, JoinResponse::Refused(why));
                        return;
                    }
                    self.adm.join_in.insert(request_id, (peer, channel));
                    self.emit(NetEvent::JoinRequest {
                        peer,
                        request: request_id,
                        invite: Box::new(request.invite),
                        node_name: request.node_name.chars().take(wire::MAX_CLAIMED_NAME).collect(),
                    });
                }
                request_response::Message::Response { request_id, response } => {
                    self.adm.join_out.remove(&request_id);
                    if let Some(j) = self.adm.joining.remove(&peer) {
                        let result = match response {
                            JoinResponse::Granted(g, v) => Ok((*g, v)),
                            JoinResponse::Refused(why) => Err(NetError::Request {
                                peer,
                                why: join_refusal_text(&why),
                            }),
                        };
                        let _ = j.reply.send(result);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                self.adm.join_out.remove(&request_id);
                if let Some(j) = self.adm.joining.remove(&peer) {
                    let _ = j.reply.send(Err(NetError::Request {
                        peer,
                        why: format!("the inviting node did not answer: {error}"),
                    }));
                }
            }
            request_response::Event::InboundFailure { request_id, .. } => {
                self.adm.join_in.remove(&request_id);
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// The node's answer to a join request.
    pub(super) fn respond_join(&mut self, request: InboundRequestId, response: JoinResponse) {
        let Some((peer, ch)) = self.adm.join_in.remove(&request) else {
            return;
        };
        let granted = matches!(response, JoinResponse::Granted(..));
        let _ = self.swarm.behaviour_mut().join.send_response(ch, response);
        if granted {
            // It comes back as a member in a moment; the members hear of it now.
            self.adm.denied.forget(&peer);
            self.adm.outsiders.remove(&peer);
            if self.adm.mesh.add_member(peer) {
                self.membership_changed(None);
            }
        } else if !self.is_admitted(&peer) {
            self.refuse(peer, "tried to join with an invalid code".into());
        }
    }
}

/// An inviter's refusal as the joining user reads it.
fn join_refusal_text(why: &JoinRefusal) -> String {
    match why {
        JoinRefusal::Expired(at) => format!(
            "this join code expired {} ago; ask for a new one (mesh invite)",
            crate::ids::human_duration(Duration::from_millis(now_ms().saturating_sub(*at)))
        ),
        other => other.to_string(),
    }
}
