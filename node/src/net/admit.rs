//! Admission: who may talk to this node's agents.
//!
//! Every new peer proves membership (`/agentmesh/admit/1`) before any gated protocol runs
//! with it (see [`super::gate`]). Both sides prove at once; each admits the other on its
//! own verdict. A peer that fails, or says nothing for [`ADMIT_TIMEOUT`], is an
//! *outsider*: listed (so users see who is around), disconnected, and not dialed again
//! for a while. Exceptions keep a connection without admitting it: a relay we use or
//! serve for anyone, and a join in progress.
//!
//! Key rotation pushed between members (`/agentmesh/rekey/1`) is in [`super::rekey`], the
//! join protocol in [`super::join`], the decisions (back-off, evictions) in [`super::rules`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::rules::{Denials, Unadmitted, evictions};
use super::{Command, NetActor, NetError, NetEvent};
use crate::ids::now_ms;
use crate::mesh::{Grant, Invite, Membership, Proof, Refusal, Verdict, Voucher};
use crate::wire::{self, AdmitRequest, AdmitResponse, JoinResponse};

/// Longest wait for a new peer's membership proof.
pub const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused peer is disconnected this long after the refusal (so the answer gets out).
pub const REFUSED_GRACE: Duration = Duration::from_millis(300);
/// First pause before dialing a refused peer again.
pub const DENIED_BACKOFF_MIN: Duration = Duration::from_secs(30);
/// Longest pause before dialing a refused peer again.
pub const DENIED_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Outsiders remembered for `mesh peers`.
pub const MAX_OUTSIDERS: usize = 256;
/// Admission requests a peer may send on one visit before it is cut off.
pub const MAX_ADMIT_REQUESTS: u32 = 8;
/// How long a connection of a node pairing with us (or we with it) stays open, not
/// admitted, after its last pairing request.
pub const PAIR_KEEP: Duration = Duration::from_secs(15);
/// Longest wait for a join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Dials of the inviter per join: a failed one (a relay slot or connection coming up
/// on either side, a network change) is tried again within the join's time.
pub const MAX_JOIN_DIALS: u32 = 3;
/// Pause before dialing the inviter again.
pub const JOIN_REDIAL: Duration = Duration::from_secs(1);
/// Times our proof is sent again after a failed attempt, per visit.
pub const MAX_PROOF_SENDS: u32 = 3;
/// Join attempts accepted from one peer per visit.
pub const MAX_JOIN_ATTEMPTS: u32 = 3;
/// Connections of peers not admitted (yet) kept at once; past it the oldest of the
/// busiest address is closed (see [`NetActor::bound_unadmitted`]).
pub const MAX_UNADMITTED: usize = 32;
/// A member's connection this much older than the one it began a new visit on is taken
/// for a leftover of its previous visit (connections opened together, when a dial and a
/// hole punch race, are younger than that).
pub const STALE_MARGIN: Duration = Duration::from_secs(2);
/// Connections of peers not admitted (yet) kept at once from one IP address.
pub const MAX_UNADMITTED_PER_IP: usize = 8;

/// A node seen nearby that is not a member of this mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutsiderInfo {
    /// Its PeerId (authenticated by the connection).
    pub peer: PeerId,
    /// The name it gave (a claim).
    pub claimed_name: Option<String>,
    /// Why it is not admitted.
    pub reason: String,
    /// Addresses it was seen at.
    pub addrs: Vec<Multiaddr>,
    /// Connected now (a relay we use, a relay client, a join in progress).
    pub connected: bool,
    /// Last contact, ms since the epoch.
    pub last_seen_ms: u64,
}

/// A peer that is connected but not admitted yet.
pub(super) struct Pending {
    pub(super) since: Instant,
    pub(super) claimed_name: Option<String>,
    pub(super) requests: u32,
    /// A proof from a newer epoch than ours, kept until a grant lets us check it.
    pub(super) held: Option<(Proof, Option<Voucher>, ResponseChannel<AdmitResponse>)>,
    /// A key chain it answered our proof with before we knew it as a member: taken if it
    /// turns out to be one (its voucher arrives with its own proof).
    pub(super) grant: Option<Grant>,
    pub(super) joins: u32,
}

pub(super) struct JoinWait {
    pub(super) invite: Invite,
    pub(super) node_name: String,
    pub(super) deadline: Instant,
    pub(super) sent: bool,
    pub(super) reply: oneshot::Sender<Result<(Grant, Voucher), NetError>>,
    /// Dials of the inviter so far.
    pub(super) dials: u32,
    /// When to dial the inviter again after a failed dial.
    pub(super) redial_at: Option<Instant>,
}

/// Admission state, owned by the network actor.
pub(super) struct Admission {
    pub(super) mesh: Membership,
    pub(super) pending: HashMap<PeerId, Pending>,
    pub(super) denied: Denials,
    pub(super) outsiders: HashMap<PeerId, OutsiderInfo>,
    pub(super) out: HashMap<OutboundRequestId, PeerId>,
    pub(super) joining: HashMap<PeerId, JoinWait>,
    pub(super) join_out: HashMap<OutboundRequestId, PeerId>,
    /// Peers whose join request is being answered (not cut off meanwhile).
    pub(super) join_in: HashMap<InboundRequestId, (PeerId, ResponseChannel<JoinResponse>)>,
    pub(super) node_name: String,
    /// Peers we ask to admit us: kept connected until then.
    pub(super) pairs_out: HashMap<PeerId, Instant>,
    /// Peers whose pairing request we list: kept connected until then.
    pub(super) pairs_in: HashMap<PeerId, Instant>,
    /// Our pairing requests waiting for a connection.
    pub(super) pair_queue: HashMap<PeerId, Vec<(wire::PairRequest, super::Waiting<wire::PairResponse>)>>,
    pub(super) pair_out: HashMap<OutboundRequestId, super::Waiting<wire::PairResponse>>,
    pub(super) pair_in: HashMap<InboundRequestId, (PeerId, ResponseChannel<wire::PairResponse>)>,
}

impl Admission {
    pub(super) fn new(mesh: Membership, node_name: String) -> Self {
        Self {
            mesh,
            pending: HashMap::new(),
            denied: Denials::default(),
            outsiders: HashMap::new(),
            out: HashMap::new(),
            joining: HashMap::new(),
            join_out: HashMap::new(),
            join_in: HashMap::new(),
            node_name,
            pairs_out: HashMap::new(),
            pairs_in: HashMap::new(),
            pair_queue: HashMap::new(),
            pair_out: HashMap::new(),
            pair_in: HashMap::new(),
        }
    }

    /// Whether dialing `peer` should wait (refused recently, or removed).
    pub(super) fn backing_off(&self, peer: &PeerId) -> bool {
        self.mesh.is_revoked(peer) || self.denied.waiting(peer, Instant::now())
    }

    pub(super) fn outsiders(&self) -> Vec<OutsiderInfo> {
        let mut v: Vec<OutsiderInfo> = self.outsiders.values().cloned().collect();
        v.sort_by_key(|o| std::cmp::Reverse(o.last_seen_ms));
        v
    }
}

impl NetActor {
    /// Whether `peer` proved membership on this visit.
    pub(super) fn is_admitted(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|s| s.admitted)
    }

    /// A connection opened to a peer that is not admitted: start the exchange.
    pub(super) fn begin_admission(&mut self, peer: PeerId) {
        if self.adm.pending.contains_key(&peer) {
            return;
        }
        self.adm.pending.insert(
            peer,
            Pending {
                since: Instant::now(),
                claimed_name: None,
                requests: 0,
                held: None,
                grant: None,
                joins: 0,
            },
        );
        if self.adm.joining.contains_key(&peer) {
            // We are about to leave our mesh for theirs: ask to join, prove nothing.
            self.send_join(peer);
            return;
        }
        if self.adm.pair_queue.contains_key(&peer) {
            // Asking to be admitted: a proof of our mesh would only be refused.
            self.flush_pair(peer);
            return;
        }
        self.send_proof(peer);
    }

    fn send_proof(&mut self, peer: PeerId) {
        let me = *self.swarm.local_peer_id();
        let req = AdmitRequest::Prove {
            node_name: self.adm.node_name.clone(),
            proof: self.adm.mesh.prove(&me, &peer),
            voucher: self.adm.mesh.voucher().cloned(),
        };
        let id = self.swarm.behaviour_mut().admit.send_request(&peer, req);
        self.adm.out.insert(id, peer);
    }

    /// A peer proved membership: open the gates, tell the node.
    fn admit_peer(&mut self, peer: PeerId) {
        let _span = tracing::debug_span!("peer", %peer).entered();
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.admitted {
            return;
        }
        state.admitted = true;
        let first = state.connections.values().next().map(|c| (c.addr.clone(), c.dialed));
        for c in state.connections.values().filter(|c| !c.dialed) {
            self.guard.open(&c.addr);
        }
        self.adm.pending.remove(&peer);
        self.adm.denied.forget(&peer);
        self.adm.outsiders.remove(&peer);
        crate::metrics::Metrics::count(&self.metrics.admissions, "admitted");
        self.swarm.behaviour_mut().admit(peer);
        tracing::debug!(%peer, "admitted");
        self.feed_kad(peer);
        self.publish_connected();
        if let Some((addr, dialed)) = first {
            self.emit(NetEvent::PeerConnected { peer, addr, dialed });
        }
        if let Some(a) = self.announcement.clone() {
            self.swarm.behaviour_mut().hello.inner().send_request(&peer, a);
        }
        self.reach_changed();
    }

    /// A peer is not (or no longer) one of us.
    pub(super) fn refuse(&mut self, peer: PeerId, reason: String) {
        let _span = tracing::debug_span!("peer", %peer).entered();
        if let Some(p) = self.adm.pending.get_mut(&peer)
            && let Some((_, _, ch)) = p.held.take()
        {
            let _ = self
                .swarm
                .behaviour_mut()
                .admit
                .send_response(ch, AdmitResponse::Refused(Refusal::Unverified));
        }
        if self.public.is_public_node(&peer) {
            tracing::debug!(%peer, "a public node: admitted to nothing");
        } else {
            tracing::info!(%peer, %reason, "not admitted");
            crate::metrics::Metrics::count(&self.metrics.admissions, "refused");
        }
        self.note_outsider(peer, reason);
        self.adm.denied.refuse(peer, Instant::now());
        self.adm.pending.remove(&peer);
        if let Some(s) = self.peers.get_mut(&peer) {
            s.refused = true;
        }
        if !self.keeps_outsider(&peer) {
            let tx = self.self_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REFUSED_GRACE).await;
                let _ = tx.send(Command::DropOutsider(peer)).await;
            });
        }
    }

    /// Keeps the connections of peers that are not admitted within [`MAX_UNADMITTED`] and
    /// [`MAX_UNADMITTED_PER_IP`] by closing the oldest connection of the busiest address.
    /// The newest connection, the one just opened, is never the one closed: a member or a
    /// joiner arriving during a flood gets its ten seconds to prove itself, while the flood
    /// makes room by evicting itself. Kept outsiders (relays, joins) do not count.
    pub(super) fn bound_unadmitted(&mut self, newest: ConnectionId) {
        let mut conns = Vec::new();
        for (peer, state) in &self.peers {
            if state.admitted || self.keeps_outsider(peer) {
                continue;
            }
            conns.extend(state.connections.iter().map(|(id, c)| Unadmitted {
                id: *id,
                ip: super::guard::ip_of(&c.addr),
                since: c.since,
            }));
        }
        for victim in evictions(conns, newest, MAX_UNADMITTED, MAX_UNADMITTED_PER_IP) {
            tracing::debug!(connection = %victim, "too many connections not admitted: closing the oldest");
            crate::metrics::Metrics::count(&self.metrics.admissions, "evicted");
            for state in self.peers.values_mut() {
                state.connections.remove(&victim);
            }
            self.swarm.close_connection(victim);
        }
    }

    /// Lists `peer` among the outsiders (for `mesh peers`).
    fn note_outsider(&mut self, peer: PeerId, reason: String) {
        if self.public.is_public_node(&peer) {
            // A DHT node or relay of the public network: not someone seen nearby.
            return;
        }
        let claimed_name = self.adm.pending.get(&peer).and_then(|p| p.claimed_name.clone());
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&peer)
            .map(|l| l.iter().take(4).cloned().collect())
            .unwrap_or_default();
        if self.adm.outsiders.len() >= MAX_OUTSIDERS
            && !self.adm.outsiders.contains_key(&peer)
            && let Some(oldest) = self
                .adm
                .outsiders
                .values()
                .min_by_key(|o| o.last_seen_ms)
                .map(|o| o.peer)
        {
            self.adm.outsiders.remove(&oldest);
        }
        let entry = self.adm.outsiders.entry(peer).or_insert(OutsiderInfo {
            peer,
            claimed_name: None,
            reason: String::new(),
            addrs: Vec::new(),
            connected: true,
            last_seen_ms: 0,
        });
        entry.reason = if self.adm.mesh.is_revoked(&peer) {
            "removed from this mesh".into()
        } else {
            reason
        };
        entry.last_seen_ms = now_ms();
        if claimed_name.is_some() {
            entry.claimed_name = claimed_name;
        }
        if !addrs.is_empty() {
            entry.addrs = addrs;
        }
    }

    /// Whether a connection to a non-member stays open: relays we use or that carry a
    /// relayed connection of ours, relay clients when relaying for anyone, a join in
    /// progress either way.
    fn keeps_outsider(&self, peer: &PeerId) -> bool {
        self.reach_uses_relay(peer)
            || self.carries_ours(peer)
            || self.reach_serving_anyone()
            || self.adm.joining.contains_key(peer)
            || self.adm.join_in.values().any(|(p, _)| p == peer)
            || self.pairing_with(peer)
    }

    /// Whether a relayed connection of ours runs through `relay`.
    fn carries_ours(&self, relay: &PeerId) -> bool {
        self.peers
            .values()
            .any(|s| s.connections.values().any(|c| c.via == Some(*relay)))
    }

    /// Closes the connections of a refused peer (unless it was admitted meanwhile).
    pub(super) fn drop_outsider(&mut self, peer: PeerId) {
        if self.is_admitted(&peer) || self.keeps_outsider(&peer) {
            return;
        }
        if let Some(o) = self.adm.outsiders.get_mut(&peer) {
            o.connected = false;
        }
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    /// Periodic: peers that never proved anything, joins that never finished.
    pub(super) fn admission_upkeep(&mut self) {
        let now = Instant::now();
        let late: Vec<PeerId> = self
            .adm
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.since) > ADMIT_TIMEOUT)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in late {
            if self.adm.joining.contains_key(&peer) {
                continue;
            }
            let waiting_for_key = self.adm.pending.get(&peer).is_some_and(|p| p.held.is_some());
            let why = if waiting_for_key {
                "its mesh key is newer than ours and nobody renewed ours (were we removed?)"
            } else {
                "no membership proof within 10 s"
            };
            self.refuse(peer, why.to_string());
        }
        let redial: Vec<PeerId> = self
            .adm
            .joining
            .iter()
            .filter(|(_, j)| j.redial_at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for peer in redial {
            self.dial_inviter(peer);
        }
        let expired: Vec<PeerId> = self
            .adm
            .joining
            .iter()
            .filter(|(_, j)| j.deadline <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            if let Some(j) = self.adm.joining.remove(&peer) {
                let _ = j.reply.send(Err(NetError::Request {
                    peer,
                    why: format!("no answer from the inviting node within {} s", JOIN_TIMEOUT.as_secs()),
                }));
            }
        }
        self.pair_upkeep();
        // Forget back-offs that ended long ago.
        self.adm.denied.expire(now);
    }

    pub(super) fn on_admit(&mut self, event: request_response::Event<AdmitRequest, AdmitResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                connection_id,
                message,
            } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_admit_request(peer, connection_id, request, channel)
                }
                request_response::Message::Response { request_id, response } => {
                    self.adm.out.remove(&request_id);
                    self.on_admit_response(peer, response);
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                let was_proof = self.adm.out.remove(&request_id).is_some();
                tracing::debug!(%peer, %error, "admission request failed");
                if was_proof && !self.adm.joining.contains_key(&peer) {
                    // Counted per visit, not per pending admission: we may have admitted them
                    // already while they still wait for our proof.
                    let retries = self.peers.get_mut(&peer).map(|s| {
                        s.proof_resends += 1;
                        s.proof_resends
                    });
                    if self.swarm.is_connected(&peer) {
                        // Usually a duplicate connection closing under it: again on the
                        // survivor, a few times at most.
                        if retries.is_some_and(|n| n <= MAX_PROOF_SENDS) {
                            self.send_proof(peer);
                        }
                    } else if !self.is_admitted(&peer) {
                        // Hung up on us before answering: say so (without backing off: it
                        // may just have been restarting).
                        self.note_outsider(peer, "closed the connection before admitting this node".into());
                    }
                }
            }
            _ => {}
        }
    }

    fn on_admit_request(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        request: AdmitRequest,
        channel: ResponseChannel<AdmitResponse>,
    ) {
        let _span = tracing::debug_span!("peer", %peer).entered();
        let admitted = self.is_admitted(&peer);
        match request {
            AdmitRequest::Prove {
                node_name,
                proof,
                voucher,
            } => {
                let mut name: String = node_name.chars().take(wire::MAX_CLAIMED_NAME).collect();
                name.retain(|c| !c.is_control());
                if let Some(o) = self.adm.outsiders.get_mut(&peer) {
                    o.claimed_name = Some(name.clone());
                }
                if let Some(p) = self.adm.pending.get_mut(&peer) {
                    p.requests += 1;
                    if p.requests > MAX_ADMIT_REQUESTS {
                        drop(channel);
                        self.refuse(peer, "too many admission requests".into());
                        return;
                    }
                    p.claimed_name = Some(name);
                }
                if admitted {
                    // A member proves itself only when it has no admitted connection to us
                    // (a new visit, on its side): whatever connections we still hold to it
                    // from before are dead on its side (it moved, or restarted) and nothing
                    // tells us so until their pings time out. It waits for our proof.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .admit
                        .send_response(channel, AdmitResponse::Admitted(None));
                    self.close_stale(peer, connection);
                    self.send_proof(peer);
                    return;
                }
                if self.adm.mesh.vouched(&peer, voucher.as_ref()) {
                    self.learned_member(peer);
                }
                self.judge(peer, proof, voucher, channel);
            }
        }
    }

    /// `peer` is a member (it showed a member's voucher, or a valid proof while a legacy
    /// key file is adopted): record it (the node persists it), and take the key chain it
    /// may have sent before we knew.
    fn learned_member(&mut self, peer: PeerId) {
        if self.adm.mesh.add_member(peer) {
            tracing::debug!(%peer, "learned a member");
            self.emit(NetEvent::MembershipChanged(Box::new(self.adm.mesh.clone())));
        }
        if self.adm.mesh.is_member(&peer)
            && let Some(g) = self.adm.pending.get_mut(&peer).and_then(|p| p.grant.take())
        {
            self.take_grant(peer, &g);
        }
    }

    pub(super) fn judge(
        &mut self,
        peer: PeerId,
        proof: Proof,
        voucher: Option<Voucher>,
        channel: ResponseChannel<AdmitResponse>,
    ) {
        let me = *self.swarm.local_peer_id();
        match self.adm.mesh.verify(&proof, voucher.as_ref(), &peer, &me) {
            Verdict::Member => {
                self.learned_member(peer);
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .admit
                    .send_response(channel, AdmitResponse::Admitted(None));
                self.admit_peer(peer);
            }
            Verdict::Stale => {
                tracing::info!(%peer, "member with an outdated mesh key: handing it the current one");
                self.learned_member(peer);
                let grant = self.adm.mesh.grant();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .admit
                    .send_response(channel, AdmitResponse::Admitted(Some(grant)));
                self.admit_peer(peer);
            }
            Verdict::Ahead => {
                // Its key is newer: it will hand it to us when it checks our proof.
                match self.adm.pending.get_mut(&peer) {
                    Some(p) => p.held = Some((proof, voucher, channel)),
                    None => drop(channel),
                }
            }
            Verdict::Refused(r) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .admit
                    .send_response(channel, AdmitResponse::Refused(r.clone()));
                self.refuse(peer, r.to_string());
            }
        }
    }

    fn on_admit_response(&mut self, peer: PeerId, response: AdmitResponse) {
        let _span = tracing::debug_span!("peer", %peer).entered();
        match response {
            // Key chains are taken only from members: a copied key is not one.
            AdmitResponse::Admitted(Some(grant)) if self.adm.mesh.is_member(&peer) => self.take_grant(peer, &grant),
            AdmitResponse::Admitted(Some(grant)) => {
                if let Some(p) = self.adm.pending.get_mut(&peer) {
                    p.grant = Some(grant);
                }
            }
            AdmitResponse::Admitted(None) => {}
            AdmitResponse::Refused(r) => {
                if !self.is_admitted(&peer) {
                    self.refuse(peer, format!("refused us: {r}"));
                } else {
                    // It admitted us before and no longer does (we were removed, or it
                    // rotated and we are not in its roster): stop talking.
                    tracing::warn!(%peer, reason = %r, "a member refuses this node now");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }
}
