//! Admission: who may talk to this node's agents.
//!
//! Every new peer proves membership (`/agentmesh/admit/1`) before any gated protocol runs
//! with it (see [`super::gate`]). Both sides prove at once; each admits the other on its
//! own verdict. A peer that fails, or says nothing for [`ADMIT_TIMEOUT`], is an
//! *outsider*: listed (so users see who is around), disconnected, and not dialed again
//! for a while. Exceptions keep a connection without admitting it: a relay we use or
//! serve for anyone, and a join in progress.
//!
//! Also here: key rotation pushed between members (`/agentmesh/rekey/1`), and the join
//! protocol.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::request_response::{self, InboundRequestId, OutboundRequestId, ResponseChannel};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{Command, NetActor, NetError, NetEvent, strip_p2p};
use crate::ids::now_ms;
use crate::mesh::{Grant, Invite, Membership, Proof, Refusal, Verdict, Voucher};
use crate::wire::{self, AdmitRequest, AdmitResponse, JoinRefusal, JoinRequest, JoinResponse};

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
/// Longest wait for a join.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Times our proof is sent again after a failed attempt, per visit.
pub const MAX_PROOF_SENDS: u32 = 3;
/// Join attempts accepted from one peer per visit.
pub const MAX_JOIN_ATTEMPTS: u32 = 3;
/// Connections of peers not admitted (yet) kept at once; past it the oldest of the
/// busiest address is closed (see [`NetActor::bound_unadmitted`]).
pub const MAX_UNADMITTED: usize = 32;
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
    since: Instant,
    claimed_name: Option<String>,
    requests: u32,
    /// A proof from a newer epoch than ours, kept until a grant lets us check it.
    held: Option<(Proof, Option<Voucher>, ResponseChannel<AdmitResponse>)>,
    /// A key chain it answered our proof with before we knew it as a member: taken if it
    /// turns out to be one (its voucher arrives with its own proof).
    grant: Option<Grant>,
    joins: u32,
}

struct Denied {
    until: Instant,
    backoff: Duration,
}

/// When refused peers may be dialed again: [`DENIED_BACKOFF_MIN`] after a first refusal,
/// doubling with each refusal up to [`DENIED_BACKOFF_MAX`], forgotten once that long has
/// passed since the pause ended. Fed the time; decides only.
#[derive(Default)]
pub(super) struct Denials(HashMap<PeerId, Denied>);

impl Denials {
    /// `peer` was refused at `now`: returns how long dialing it waits.
    pub(super) fn refuse(&mut self, peer: PeerId, now: Instant) -> Duration {
        let backoff = self
            .0
            .get(&peer)
            .map(|d| (d.backoff * 2).min(DENIED_BACKOFF_MAX))
            .unwrap_or(DENIED_BACKOFF_MIN);
        self.0.insert(
            peer,
            Denied {
                until: now + backoff,
                backoff,
            },
        );
        backoff
    }

    /// Whether dialing `peer` waits at `now`.
    pub(super) fn waiting(&self, peer: &PeerId, now: Instant) -> bool {
        self.0.get(peer).is_some_and(|d| d.until > now)
    }

    /// `peer` is welcome again (admitted, or a join is starting with it).
    pub(super) fn forget(&mut self, peer: &PeerId) {
        self.0.remove(peer);
    }

    /// Drops pauses that ended long ago (so a peer refused again starts from the minimum).
    pub(super) fn expire(&mut self, now: Instant) {
        self.0.retain(|_, d| d.until + DENIED_BACKOFF_MAX > now);
    }

    /// Everyone is welcome again (this node changed meshes).
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

pub(super) struct JoinWait {
    invite: Invite,
    node_name: String,
    deadline: Instant,
    sent: bool,
    reply: oneshot::Sender<Result<(Grant, Voucher), NetError>>,
}

/// Admission state, owned by the network actor.
pub(super) struct Admission {
    pub(super) mesh: Membership,
    pub(super) pending: HashMap<PeerId, Pending>,
    denied: Denials,
    outsiders: HashMap<PeerId, OutsiderInfo>,
    out: HashMap<OutboundRequestId, PeerId>,
    joining: HashMap<PeerId, JoinWait>,
    join_out: HashMap<OutboundRequestId, PeerId>,
    /// Peers whose join request is being answered (not cut off meanwhile).
    join_in: HashMap<InboundRequestId, (PeerId, ResponseChannel<JoinResponse>)>,
    node_name: String,
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
        tracing::info!(%peer, %reason, "not admitted");
        crate::metrics::Metrics::count(&self.metrics.admissions, "refused");
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

    /// Whether a connection to a non-member stays open: relays we use, relay clients
    /// when relaying for anyone, a join in progress either way.
    fn keeps_outsider(&self, peer: &PeerId) -> bool {
        self.reach_uses_relay(peer)
            || self.reach_serving_anyone()
            || self.adm.joining.contains_key(peer)
            || self.adm.join_in.values().any(|(p, _)| p == peer)
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
        // Forget back-offs that ended long ago.
        self.adm.denied.expire(now);
    }

    pub(super) fn on_admit(&mut self, event: request_response::Event<AdmitRequest, AdmitResponse>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    self.on_admit_request(peer, request, channel)
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

    fn on_admit_request(&mut self, peer: PeerId, request: AdmitRequest, channel: ResponseChannel<AdmitResponse>) {
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
                    // A proof repeated on a new connection of a member: answer in kind.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .admit
                        .send_response(channel, AdmitResponse::Admitted(None));
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

    /// A newer key chain pushed by a member (`/agentmesh/rekey/1`, gated: members only).
    pub(super) fn on_rekey(&mut self, event: request_response::Event<Grant, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                let _ = self.swarm.behaviour_mut().rekey.inner().send_response(channel, ());
                if self.is_admitted(&peer) {
                    self.take_grant(peer, &request);
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "could not pass the mesh key on");
            }
            _ => {}
        }
    }

    fn judge(&mut self, peer: PeerId, proof: Proof, voucher: Option<Voucher>, channel: ResponseChannel<AdmitResponse>) {
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

    /// A newer key chain from a member: take it if it extends ours, pass it on.
    fn take_grant(&mut self, from: PeerId, grant: &Grant) {
        match self.adm.mesh.accept_grant(grant) {
            Ok(true) => {
                tracing::info!(%from, epoch = self.adm.mesh.current().number, "mesh key renewed");
                self.membership_changed(Some(from));
            }
            Ok(false) => {}
            Err(why) => tracing::warn!(%from, %why, "ignoring a mesh key from a member"),
        }
    }

    /// After our key chain changed (renewed, or a removal here): drop removed nodes,
    /// check proofs we were holding, pass the chain to the members we are connected to.
    pub(super) fn membership_changed(&mut self, source: Option<PeerId>) {
        let revoked: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| self.adm.mesh.is_revoked(p))
            .copied()
            .collect();
        for p in revoked {
            tracing::info!(peer = %p, "disconnecting a removed node");
            self.reach_forget(&p);
            self.refuse(p, "removed from this mesh".into());
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let held: Vec<(PeerId, Proof, Option<Voucher>, ResponseChannel<AdmitResponse>)> = self
            .adm
            .pending
            .iter_mut()
            .filter_map(|(p, st)| st.held.take().map(|(proof, v, ch)| (*p, proof, v, ch)))
            .collect();
        for (peer, proof, voucher, ch) in held {
            self.judge(peer, proof, voucher, ch);
        }
        let grant = self.adm.mesh.grant();
        let members: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, s)| s.admitted && Some(**p) != source && !self.adm.mesh.is_revoked(p))
            .map(|(p, _)| *p)
            .collect();
        for p in members {
            self.swarm.behaviour_mut().rekey.inner().send_request(&p, grant.clone());
        }
        self.emit(NetEvent::MembershipChanged(Box::new(self.adm.mesh.clone())));
    }

    /// The node replaced the membership: a removal (`reset == false`: same mesh, new key),
    /// or a join / leave (`reset`: another mesh; every connection starts over).
    pub(super) fn set_membership(&mut self, mesh: Membership, reset: bool) {
        if !reset {
            self.adm.mesh = mesh;
            self.membership_changed(None);
            return;
        }
        let old_topics: Vec<_> = self.topics.values().map(|(t, _)| t.clone()).collect();
        for t in old_topics {
            self.swarm.behaviour_mut().gossipsub.inner().unsubscribe(&t);
        }
        self.adm.mesh = mesh;
        self.adm.denied.clear();
        self.adm.outsiders.clear();
        self.rebuild_topics();
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        self.reach_forget_lost(&peers);
        for p in &peers {
            let _ = self.swarm.disconnect_peer_id(*p);
        }
        // Everyone is dialed again shortly; the members of the new mesh will admit us.
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for p in peers {
                let _ = tx.send(Command::DialPeer { peer: p }).await;
            }
        });
    }

    // ------------------------------------------------------------------ joining

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
            },
        );
        if self.swarm.is_connected(&inviter) {
            self.send_join(inviter);
            return;
        }
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&inviter)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let opts = DialOpts::peer_id(inviter)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts)
            && let Some(j) = self.adm.joining.remove(&inviter)
        {
            let _ = j.reply.send(Err(NetError::Dial {
                addr: inviter.to_string(),
                why: super::dial_error_text(&e),
            }));
        }
    }

    fn send_join(&mut self, peer: PeerId) {
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

    /// A dial to the inviter failed for good.
    pub(super) fn join_dial_failed(&mut self, peer: PeerId, why: String) {
        if self.swarm.is_connected(&peer) {
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

/// A connection of a peer that is not admitted, as the eviction rule sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Unadmitted<Id> {
    pub(super) id: Id,
    pub(super) ip: Option<IpAddr>,
    pub(super) since: Instant,
}

/// The connections to close so that `conns` stays within `max_total` and `max_per_ip`: while
/// the newest connection's address holds more than `max_per_ip`, that address's oldest;
/// while there are more than `max_total`, the oldest of the busiest address. Never
/// `newest`. Decides only: the caller closes them.
pub(super) fn evictions<Id: Copy + PartialEq>(
    mut conns: Vec<Unadmitted<Id>>,
    newest: Id,
    max_total: usize,
    max_per_ip: usize,
) -> Vec<Id> {
    let mut out = Vec::new();
    loop {
        let mut per_ip: HashMap<Option<IpAddr>, usize> = HashMap::new();
        for c in &conns {
            *per_ip.entry(c.ip).or_default() += 1;
        }
        let newest_ip = conns.iter().find(|c| c.id == newest).map(|c| c.ip);
        let victim_ip = match newest_ip {
            Some(ip) if per_ip.get(&ip).copied().unwrap_or(0) > max_per_ip => ip,
            // The busiest address that has a connection other than the newest; of equally
            // busy ones, the one with the oldest connection.
            _ if conns.len() > max_total => match conns
                .iter()
                .filter(|c| c.id != newest)
                .max_by_key(|c| (per_ip.get(&c.ip).copied().unwrap_or(0), std::cmp::Reverse(c.since)))
            {
                Some(c) => c.ip,
                None => return out,
            },
            _ => return out,
        };
        let Some(pos) = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.ip == victim_ip && c.id != newest)
            .min_by_key(|(_, c)| c.since)
            .map(|(i, _)| i)
        else {
            return out;
        };
        out.push(conns.swap_remove(pos).id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, n)))
    }

    /// Connections `(id, ip)`, each one second younger than the one before.
    fn conns(list: &[(u32, u8)]) -> Vec<Unadmitted<u32>> {
        let t0 = Instant::now();
        list.iter()
            .map(|(id, n)| Unadmitted {
                id: *id,
                ip: ip(*n),
                since: t0 + Duration::from_secs(u64::from(*id)),
            })
            .collect()
    }

    #[test]
    fn refused_peers_wait_longer_each_time_and_start_over_once_forgotten() {
        let mut d = Denials::default();
        let p = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let t0 = Instant::now();
        assert!(!d.waiting(&p, t0));
        assert_eq!(d.refuse(p, t0), DENIED_BACKOFF_MIN);
        assert!(d.waiting(&p, t0 + DENIED_BACKOFF_MIN - Duration::from_millis(1)));
        assert!(!d.waiting(&p, t0 + DENIED_BACKOFF_MIN));
        // Refused again: twice as long, up to the maximum.
        let mut t = t0 + DENIED_BACKOFF_MIN;
        let mut last = DENIED_BACKOFF_MIN;
        for _ in 0..10 {
            let b = d.refuse(p, t);
            assert_eq!(b, (last * 2).min(DENIED_BACKOFF_MAX));
            last = b;
            t += b;
        }
        assert_eq!(last, DENIED_BACKOFF_MAX);
        // Long after its pause ended it is forgotten, and starts over from the minimum.
        d.expire(t + DENIED_BACKOFF_MAX + Duration::from_secs(1));
        assert_eq!(d.refuse(p, t), DENIED_BACKOFF_MIN);
        // Admitted: welcome at once.
        d.forget(&p);
        assert!(!d.waiting(&p, t));
    }

    #[test]
    fn a_source_over_its_share_loses_its_oldest_never_the_newest() {
        // Three from address 1 with a share of two: the oldest of them goes.
        let c = conns(&[(1, 1), (2, 2), (3, 1), (4, 1)]);
        assert_eq!(evictions(c, 4, 10, 2), vec![1]);
        // Within the share and the total: nothing.
        let c = conns(&[(1, 1), (2, 2), (3, 1)]);
        assert!(evictions(c, 3, 10, 2).is_empty());
    }

    #[test]
    fn over_the_total_the_busiest_source_makes_room_by_age() {
        // Address 1 holds three, the others one each; one over the total of five.
        let c = conns(&[(1, 2), (2, 1), (3, 1), (4, 3), (5, 1), (6, 4)]);
        assert_eq!(evictions(c, 6, 5, 10), vec![2]);
        // Far over: several go, always from the busiest address at the time, oldest first.
        let c = conns(&[(1, 1), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3)]);
        assert_eq!(evictions(c, 7, 4, 10), vec![1, 2, 3]);
    }

    #[test]
    fn the_newest_connection_is_kept_even_when_it_is_all_the_busiest_source_has() {
        // The total is exceeded but the only candidate is the newest: it stays (it gets its
        // ten seconds to prove itself).
        let c = conns(&[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (9, 7), (10, 7)]);
        assert_eq!(evictions(c.clone(), 10, 7, 10), vec![9]);
        let c = conns(&[(10, 7)]);
        assert!(evictions(c, 10, 0, 10).is_empty());
        // Equally busy sources: the one with the oldest connection gives way.
        let c = conns(&[(3, 1), (2, 2), (10, 7)]);
        assert_eq!(evictions(c, 10, 2, 10), vec![2]);
    }
}
