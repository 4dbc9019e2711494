//! Pairing on the LAN without copying a code: a node not in the mesh asks a nearby member to
//! admit it (`mesh join <nearby node>`); both show the same comparison code; the member's
//! user approves (`mesh approve <code>`, the page) and the asking node gets a one-use join
//! code over the same connection and joins with it as with any other.
//!
//! The comparison code is six digits of SHA-256 over both PeerIds (as each side sees the
//! Noise-authenticated connection) and two nonces: the asker commits to its nonce before it
//! learns the member's, so a node in the middle (which has to show each side a connection
//! of its own PeerId) cannot choose values that make the two screens agree; it has one
//! chance in a million per attempt, and attempts are few ([`PAIR_OFFERS_PER_MINUTE`]).
//!
//! [`Pairings`] is the member's plain record (fed the time); the asking side is a task per
//! pairing that asks again every [`PAIR_POLL`] until it is decided.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::request_response::InboundRequestId;
use libp2p::{Multiaddr, PeerId};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::Node;
use crate::api::{Event, PairingState, PairingView};
use crate::error::ServiceError;
use crate::ids::now_ms;
use crate::mesh::Invite;
use crate::wire::{MAX_CLAIMED_NAME, PairRefusal, PairRequest, PairResponse};

/// How long a pairing request waits for the member's user.
pub const PAIR_TTL: Duration = Duration::from_secs(5 * 60);
/// Pairing requests waiting at a member at most.
pub const MAX_PAIRINGS: usize = 16;
/// New pairing requests a member takes per minute (from anyone).
pub const PAIR_OFFERS_PER_MINUTE: usize = 6;
/// How often the asking node asks whether it was decided.
pub const PAIR_POLL: Duration = Duration::from_secs(1);
/// Failed requests in a row after which the asking node gives up.
pub const PAIR_FAILURES: u32 = 10;

/// How long an offer waits for its reveal before it is forgotten (a revealed request waits
/// [`PAIR_TTL`]).
pub const PAIR_REVEAL_WAIT: Duration = Duration::from_secs(30);
/// How long the member keeps the connection of a node that offered and has not revealed.
pub const PAIR_OFFER_KEEP: Duration = Duration::from_secs(5);
/// How a pairing given up on the asking side ends.
const GIVEN_UP: &str = "given up here (the codes differ, or cancelled)";

/// The six-digit comparison code of a pairing, as `482 913`.
pub fn comparison_code(asker: &PeerId, member: &PeerId, asker_nonce: &[u8; 32], member_nonce: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"agentmesh pairing code v1");
    for part in [asker.to_bytes(), member.to_bytes()] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(&part);
    }
    h.update(asker_nonce);
    h.update(member_nonce);
    let d = h.finalize();
    let n = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]) % 1_000_000;
    format!("{:03} {:03}", n / 1000, n % 1000)
}

fn digits(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// A pairing this node asked for: its state, and the user's comparison of the codes.
#[derive(Debug)]
pub struct Asking {
    view: watch::Receiver<PairingView>,
    confirm: watch::Sender<Option<bool>>,
}

#[derive(Debug)]
enum Decision {
    Waiting,
    Approved(Box<Invite>),
    Denied,
}

#[derive(Debug)]
struct Asked {
    name: String,
    commit: [u8; 32],
    nonce: [u8; 32],
    /// Set once the asker revealed its nonce: only then is it listed.
    code: Option<String>,
    asked_ms: u64,
    decision: Decision,
}

/// The member's side: the nodes asking to be admitted.
#[derive(Debug, Default)]
pub struct Pairings {
    asked: HashMap<PeerId, Asked>,
    /// When recent offers were taken (ms), for [`PAIR_OFFERS_PER_MINUTE`].
    offers: VecDeque<u64>,
}

impl Pairings {
    fn view(peer: PeerId, a: &Asked) -> PairingView {
        PairingView {
            peer,
            name: a.name.clone(),
            code: a.code.clone().unwrap_or_default(),
            asking: false,
            confirmed: false,
            asked_ms: a.asked_ms,
            expires_ms: a.asked_ms + PAIR_TTL.as_millis() as u64,
            state: match a.decision {
                Decision::Waiting => PairingState::Waiting,
                Decision::Approved(_) => PairingState::Approved,
                Decision::Denied => PairingState::Refused("refused here".into()),
            },
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let (ttl, reveal) = (PAIR_TTL.as_millis() as u64, PAIR_REVEAL_WAIT.as_millis() as u64);
        self.asked
            .retain(|_, a| a.asked_ms + if a.code.is_some() { ttl } else { reveal } > now_ms);
        while self.offers.front().is_some_and(|t| t + 60_000 <= now_ms) {
            self.offers.pop_front();
        }
    }

    /// `peer` offers to pair (an offer again replaces its earlier one): the member's nonce,
    /// or a refusal when too many ask.
    pub fn offer(&mut self, peer: PeerId, name: &str, commit: [u8; 32], now_ms: u64) -> PairResponse {
        self.expire(now_ms);
        if let Some(a) = self.asked.get(&peer)
            && a.commit == commit
        {
            return PairResponse::Nonce(a.nonce);
        }
        let waiting = self.asked.len() - usize::from(self.asked.contains_key(&peer));
        if waiting >= MAX_PAIRINGS || self.offers.len() >= PAIR_OFFERS_PER_MINUTE {
            return PairResponse::Refused(PairRefusal::Busy);
        }
        self.offers.push_back(now_ms);
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce[..]);
        let name: String = crate::ids::sanitize_text(name).chars().take(MAX_CLAIMED_NAME).collect();
        self.asked.insert(
            peer,
            Asked {
                name: if name.is_empty() { "unnamed".into() } else { name },
                commit,
                nonce,
                code: None,
                asked_ms: now_ms,
                decision: Decision::Waiting,
            },
        );
        PairResponse::Nonce(nonce)
    }

    /// `peer` reveals its nonce: checked against its commitment, the code is computed and
    /// the request listed (returned, the first time, to be told).
    pub fn reveal(
        &mut self,
        peer: PeerId,
        me: PeerId,
        nonce: [u8; 32],
        now_ms: u64,
    ) -> (PairResponse, Option<PairingView>) {
        self.expire(now_ms);
        let Some(a) = self.asked.get_mut(&peer) else {
            return (PairResponse::Refused(PairRefusal::Unknown), None);
        };
        if <[u8; 32]>::from(Sha256::digest(nonce)) != a.commit {
            self.asked.remove(&peer);
            return (PairResponse::Refused(PairRefusal::Unknown), None);
        }
        let new = a.code.is_none();
        a.code = Some(comparison_code(&peer, &me, &nonce, &a.nonce));
        let view = Self::view(peer, a);
        (self.poll(peer, now_ms), new.then_some(view))
    }

    /// What `peer` is told when it asks again.
    pub fn poll(&mut self, peer: PeerId, now_ms: u64) -> PairResponse {
        self.expire(now_ms);
        match self.asked.get(&peer) {
            None => PairResponse::Refused(PairRefusal::Expired),
            Some(a) if a.code.is_none() => PairResponse::Refused(PairRefusal::Unknown),
            Some(a) => match &a.decision {
                Decision::Waiting => {
                    PairResponse::Waiting((a.asked_ms + PAIR_TTL.as_millis() as u64).saturating_sub(now_ms))
                }
                Decision::Approved(invite) => PairResponse::Approved(invite.clone()),
                Decision::Denied => PairResponse::Refused(PairRefusal::Denied),
            },
        }
    }

    /// The requests shown (code known) and not decided, oldest first.
    pub fn pending(&mut self, now_ms: u64) -> Vec<PairingView> {
        self.expire(now_ms);
        let mut v: Vec<PairingView> = self
            .asked
            .iter()
            .filter(|(_, a)| a.code.is_some() && matches!(a.decision, Decision::Waiting))
            .map(|(p, a)| Self::view(*p, a))
            .collect();
        v.sort_by_key(|p| p.asked_ms);
        v
    }

    /// The waiting request `id` names: its comparison code (spaces ignored) or PeerId.
    pub fn find(&mut self, id: &str, now_ms: u64) -> Result<PeerId, ServiceError> {
        self.expire(now_ms);
        let id = digits(id);
        let found: Vec<PeerId> = self
            .asked
            .iter()
            .filter(|(p, a)| a.code.as_deref().is_some_and(|c| digits(c) == id) || p.to_string() == id)
            .map(|(p, _)| *p)
            .collect();
        match found.as_slice() {
            [p] => match self.asked.get(p).map(|a| &a.decision) {
                Some(Decision::Waiting) => Ok(*p),
                _ => Err(ServiceError::invalid(format!("the pairing {id} was already decided"))),
            },
            [] => Err(ServiceError::not_found(format!(
                "no node with comparison code {id} is asking to be admitted here (expired?); see mesh pairings"
            ))),
            _ => Err(ServiceError::ambiguous(format!(
                "several nodes asking show the code {id}: answer by PeerId (mesh pairings)"
            ))),
        }
    }

    /// Decides the request of `peer`: approved with `invite`, or denied.
    pub fn decide(&mut self, peer: PeerId, invite: Option<Invite>) -> Option<PairingView> {
        let a = self.asked.get_mut(&peer)?;
        if !matches!(a.decision, Decision::Waiting) {
            return None;
        }
        a.decision = match invite {
            Some(i) => Decision::Approved(Box::new(i)),
            None => Decision::Denied,
        };
        Some(Self::view(peer, a))
    }
}

impl Node {
    fn pairings_lock(&self) -> std::sync::MutexGuard<'_, Pairings> {
        self.0.pairings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A pairing request from `peer`, a node not in the mesh (the network layer has
    /// refused it in open mode already).
    pub(super) fn on_pair_request(&self, peer: PeerId, request: InboundRequestId, body: PairRequest) {
        let now = now_ms();
        let response = match body {
            PairRequest::Offer { node_name, commit } => {
                let r = self.pairings_lock().offer(peer, &node_name, commit, now);
                if matches!(r, PairResponse::Refused(PairRefusal::Busy)) {
                    tracing::info!(%peer, "a pairing request refused: too many");
                }
                r
            }
            PairRequest::Reveal(nonce) => {
                let (r, new) = self.pairings_lock().reveal(peer, self.0.peer_id, nonce, now);
                if let Some(view) = new {
                    tracing::info!(%peer, name = %view.name, code = %view.code, "a node asks to be admitted");
                    self.emit(Event::Pairing(view));
                }
                r
            }
            PairRequest::Poll => self.pairings_lock().poll(peer, now),
        };
        // Its connection stays open while its pairing is listed here (a little while between
        // its offer and its reveal), no longer.
        let keep = match response {
            PairResponse::Refused(_) => None,
            PairResponse::Nonce(_) => Some(PAIR_OFFER_KEEP),
            PairResponse::Waiting(_) | PairResponse::Approved(_) => Some(crate::net::PAIR_KEEP),
        };
        let net = self.0.net.clone();
        tokio::spawn(async move {
            let _ = net.respond_pair(request, response, keep).await;
        });
    }

    /// The nodes asking this one to admit them.
    pub fn pairings(&self) -> Vec<PairingView> {
        self.pairings_lock().pending(now_ms())
    }

    /// Admits (with a one-use join code handed over the pairing connection) or refuses the
    /// node asking with comparison code (or PeerId) `id`.
    pub async fn answer_pairing(&self, id: &str, allow: bool) -> Result<PairingView, ServiceError> {
        self.refuse_in_open_mode("pairing")?;
        let peer = self.pairings_lock().find(id, now_ms())?;
        let invite = if allow {
            let code = self.invite(PAIR_TTL.as_secs(), 1).await?.code;
            Some(Invite::decode(&code).map_err(|e| ServiceError::internal(e.to_string()))?)
        } else {
            None
        };
        let view = self
            .pairings_lock()
            .decide(peer, invite)
            .ok_or_else(|| ServiceError::invalid(format!("the pairing {id} was already decided or expired")))?;
        tracing::info!(%peer, name = %view.name, allow, "a pairing was decided");
        self.emit(Event::Pairing(view.clone()));
        Ok(view)
    }

    /// `mesh join <nearby node>`: asks that node to admit this one. Answered with the
    /// comparison code once both sides can show it; a task then asks again every
    /// second and joins when approved (see [`Node::pair_wait`]).
    pub async fn pair(&self, target: &str) -> Result<PairingView, ServiceError> {
        self.refuse_in_open_mode("mesh join")?;
        let (peer, name, addrs) = self.nearby(target).await?;
        if self.mesh().is_member(&peer) {
            return Err(ServiceError::invalid(format!(
                "{name} is already a member of this node's mesh"
            )));
        }
        // Asked again: the earlier pairing with that node is given up first, so that its
        // confirmation cannot carry over to the new request.
        let old = self.0.pair_out.lock().unwrap_or_else(|e| e.into_inner()).remove(&peer);
        if let Some(old) = old {
            let _ = old.confirm.send(Some(false));
        }
        let mut nonce = [0u8; 32];
        rand::fill(&mut nonce[..]);
        let commit: [u8; 32] = Sha256::digest(nonce).into();
        let offer = PairRequest::Offer {
            node_name: self.0.name.to_string(),
            commit,
        };
        let theirs = match self.ask_member(peer, addrs, offer).await? {
            PairResponse::Nonce(n) => n,
            PairResponse::Refused(why) => return Err(ServiceError::denied(format!("{name}: {why}"))),
            other => {
                return Err(ServiceError::unavailable(format!(
                    "{name} answered out of turn: {other:?}"
                )));
            }
        };
        let code = comparison_code(&self.0.peer_id, &peer, &nonce, &theirs);
        let expires_ms = match self.ask_member(peer, Vec::new(), PairRequest::Reveal(nonce)).await? {
            PairResponse::Waiting(left) => now_ms() + left.min(PAIR_TTL.as_millis() as u64),
            PairResponse::Refused(why) => return Err(ServiceError::denied(format!("{name}: {why}"))),
            other => {
                return Err(ServiceError::unavailable(format!(
                    "{name} answered out of turn: {other:?}"
                )));
            }
        };
        // Named by its address: the name it gave when the connection opened.
        let name = match self.0.net.info().await {
            Ok(info) => info
                .outsiders
                .into_iter()
                .find(|o| o.peer == peer)
                .and_then(|o| o.claimed_name)
                .map(|n| crate::ids::sanitize_text(&n))
                .filter(|n| !n.is_empty())
                .unwrap_or(name),
            Err(_) => name,
        };
        let view = PairingView {
            peer,
            name,
            code,
            asking: true,
            confirmed: false,
            asked_ms: now_ms(),
            expires_ms,
            state: PairingState::Waiting,
        };
        tracing::info!(%peer, code = %view.code, "asked a nearby node to admit this one");
        let (tx, rx) = watch::channel(view.clone());
        let (confirm_tx, confirm_rx) = watch::channel(None);
        let old = self.0.pair_out.lock().unwrap_or_else(|e| e.into_inner()).insert(
            peer,
            Asking {
                view: rx,
                confirm: confirm_tx,
            },
        );
        if let Some(old) = old {
            // Two `Pair` calls crossed: the older one is given up.
            let _ = old.confirm.send(Some(false));
        }
        let node = self.clone();
        tokio::spawn(async move { node.follow_pairing(tx, confirm_rx).await });
        self.emit(Event::Pairing(view.clone()));
        Ok(view)
    }

    /// The pairing this node asked for with `target` (PeerId or name).
    fn asking(
        &self,
        target: &str,
    ) -> Result<(watch::Receiver<PairingView>, watch::Sender<Option<bool>>), ServiceError> {
        let out = self.0.pair_out.lock().unwrap_or_else(|e| e.into_inner());
        out.iter()
            .find(|(p, a)| p.to_string() == target.trim() || a.view.borrow().name == target.trim())
            .map(|(_, a)| (a.view.clone(), a.confirm.clone()))
            .ok_or_else(|| {
                ServiceError::not_found(format!(
                    "no pairing with {target:?} in progress (mesh join <node> starts one)"
                ))
            })
    }

    /// The user of this (asking) node compared the codes: `same` lets the pairing join once
    /// the member approves; otherwise it is given up (also: cancelled).
    pub fn pair_confirm(&self, target: &str, same: bool) -> Result<PairingView, ServiceError> {
        let (view, confirm) = self.asking(target)?;
        let v = view.borrow().clone();
        if !matches!(v.state, PairingState::Waiting | PairingState::Approved) {
            return Err(ServiceError::invalid(format!(
                "the pairing with {} already ended",
                v.name
            )));
        }
        let _ = confirm.send(Some(same));
        tracing::info!(peer = %v.peer, same, "the user compared the pairing codes");
        Ok(if same {
            PairingView { confirmed: true, ..v }
        } else {
            PairingView {
                state: PairingState::Refused(GIVEN_UP.into()),
                ..v
            }
        })
    }

    /// The pairings this node asked for (kept a minute after they end).
    pub fn asked_pairings(&self) -> Vec<PairingView> {
        let out = self.0.pair_out.lock().unwrap_or_else(|e| e.into_inner());
        out.values().map(|a| a.view.borrow().clone()).collect()
    }

    /// Waits until the pairing with `target` is decided.
    pub async fn pair_wait(&self, target: &str) -> Result<PairingView, ServiceError> {
        let (mut rx, _) = self.asking(target)?;
        let done = rx
            .wait_for(|v| v.state != PairingState::Waiting && v.state != PairingState::Approved)
            .await
            .map(|v| v.clone());
        match done {
            Ok(v) => Ok(v),
            Err(_) => Err(ServiceError::unavailable("the node stopped during the pairing")),
        }
    }

    /// The asking side's task: asks again every [`PAIR_POLL`] until the member decides,
    /// and joins once it approved **and** this node's user confirmed that the codes match
    /// (with the member's own code only); given up when the user says they differ.
    async fn follow_pairing(&self, tx: watch::Sender<PairingView>, mut confirm: watch::Receiver<Option<bool>>) {
        let view = tx.borrow().clone();
        let (peer, name) = (view.peer, view.name.clone());
        let mut failures = 0;
        let mut approved: Option<(Box<Invite>, tokio::time::Instant)> = None;
        let polls_until = view.expires_ms + PAIR_POLL.as_millis() as u64 * 5;
        let outcome = loop {
            let said = *confirm.borrow_and_update();
            match said {
                Some(false) => break PairingState::Refused(GIVEN_UP.into()),
                Some(true) if approved.is_some() => {
                    let Some((invite, _)) = approved.take() else { continue };
                    // Its expiry is on the member's clock, which checks it when the code
                    // is used: not checked again here against ours.
                    break match self.join_invite(*invite, false).await {
                        Ok(joined) => {
                            tx.send_modify(|v| v.name = joined.inviter_name);
                            PairingState::Joined
                        }
                        Err(e) => PairingState::Refused(format!("approved, but the join failed: {e}")),
                    };
                }
                Some(true) => {
                    tx.send_if_modified(|v| !std::mem::replace(&mut v.confirmed, true));
                }
                None => {}
            }
            // Deadlines on this node's clock: the member's request, or (once approved) the
            // join code's lifetime from when it came.
            match &approved {
                Some((_, came)) if came.elapsed() > PAIR_TTL => {
                    break PairingState::Refused("the codes were not confirmed here in time; not joined".into());
                }
                None if now_ms() > polls_until => break PairingState::Refused(PairRefusal::Expired.to_string()),
                _ => {}
            }
            if approved.is_none() {
                match self.ask_member(peer, Vec::new(), PairRequest::Poll).await {
                    Ok(PairResponse::Waiting(_)) => failures = 0,
                    Ok(PairResponse::Approved(invite)) if invite.body.inviter != peer || !invite.verify() => {
                        break PairingState::Refused(format!(
                            "{name} handed over a join code that is not its own; not joined"
                        ));
                    }
                    Ok(PairResponse::Approved(invite)) => {
                        approved = Some((invite, tokio::time::Instant::now()));
                        tx.send_modify(|v| v.state = PairingState::Approved);
                        self.emit(Event::Pairing(tx.borrow().clone()));
                        continue;
                    }
                    Ok(PairResponse::Refused(why)) => break PairingState::Refused(why.to_string()),
                    Ok(PairResponse::Nonce(_)) => {
                        break PairingState::Refused("the member answered out of turn".into());
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::debug!(%peer, error = %e, failures, "no answer from the node we pair with");
                        if failures >= PAIR_FAILURES {
                            break PairingState::Refused(format!("{name} stopped answering: {e}"));
                        }
                    }
                }
            }
            tokio::select! {
                _ = self.0.shutdown.cancelled() => break PairingState::Refused("this node stopped".into()),
                _ = confirm.changed() => {}
                _ = tokio::time::sleep(PAIR_POLL) => {}
            }
        };
        tracing::info!(%peer, state = ?outcome, "pairing ended");
        tx.send_modify(|v| v.state = outcome);
        self.emit(Event::Pairing(tx.borrow().clone()));
        // Kept a while for a late `PairWait`, then forgotten.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let mut out = self.0.pair_out.lock().unwrap_or_else(|e| e.into_inner());
        if out.get(&peer).is_some_and(|a| a.view.same_channel(&tx.subscribe())) {
            out.remove(&peer);
        }
    }

    async fn ask_member(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        r: PairRequest,
    ) -> Result<PairResponse, ServiceError> {
        self.0
            .net
            .pair(peer, addrs, r)
            .await
            .map_err(|e| ServiceError::unavailable(format!("cannot reach {}: {e}", crate::node::short_peer(&peer))))
    }

    /// A nearby node not in the mesh, as the user names it: PeerId, the name it gave, or an
    /// address ending in `/p2p/<id>`.
    async fn nearby(&self, target: &str) -> Result<(PeerId, String, Vec<Multiaddr>), ServiceError> {
        let t = target.trim();
        if let Ok(ma) = t.parse::<Multiaddr>() {
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = ma.iter().last() else {
                return Err(ServiceError::invalid(format!(
                    "{t} has no /p2p/<PeerId> at its end: the node's PeerId is needed to pair"
                )));
            };
            return Ok((peer, crate::node::short_peer(&peer), vec![ma]));
        }
        let info = self
            .0
            .net
            .info()
            .await
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        let found: Vec<_> = info
            .outsiders
            .into_iter()
            .filter(|o| o.peer.to_string() == t || o.claimed_name.as_deref() == Some(t))
            .collect();
        match found.as_slice() {
            [o] => Ok((
                o.peer,
                o.claimed_name
                    .clone()
                    .unwrap_or_else(|| crate::node::short_peer(&o.peer)),
                o.addrs.clone(),
            )),
            [] => match t.parse::<PeerId>() {
                Ok(peer) => Ok((peer, crate::node::short_peer(&peer), Vec::new())),
                Err(_) if t.len() > MAX_CLAIMED_NAME => Err(ServiceError::invalid(format!(
                    "that is neither a node seen nearby nor a join code (a join code starts with {})",
                    crate::mesh::INVITE_PREFIX
                ))),
                Err(_) => Err(ServiceError::not_found(format!(
                    "no node named {t:?} seen nearby (mesh peers lists the nodes around that are not members); give its PeerId or address"
                ))),
            },
            _ => Err(ServiceError::ambiguous(format!(
                "several nodes nearby call themselves {t:?}: give the PeerId (mesh peers)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn commit(n: &[u8; 32]) -> [u8; 32] {
        Sha256::digest(n).into()
    }

    #[test]
    fn both_sides_compute_the_same_code_and_another_peer_or_nonce_changes_it() {
        let (a, m) = (PeerId::random(), PeerId::random());
        let (na, nm) = ([1u8; 32], [2u8; 32]);
        let code = comparison_code(&a, &m, &na, &nm);
        assert_eq!(code.len(), 7);
        assert!(code.chars().filter(|c| *c != ' ').all(|c| c.is_ascii_digit()));
        assert_eq!(code, comparison_code(&a, &m, &na, &nm));
        assert_ne!(code, comparison_code(&PeerId::random(), &m, &na, &nm));
        assert_ne!(code, comparison_code(&a, &m, &[3u8; 32], &nm));
    }

    #[test]
    fn a_pairing_is_listed_after_the_reveal_and_decided_once() {
        let mut p = Pairings::default();
        let (asker, me) = (PeerId::random(), PeerId::random());
        let nonce = [7u8; 32];
        let PairResponse::Nonce(theirs) = p.offer(asker, "laptop", commit(&nonce), 1) else {
            panic!("no nonce")
        };
        assert!(p.pending(2).is_empty(), "not listed before the reveal");
        assert_eq!(p.poll(asker, 2), PairResponse::Refused(PairRefusal::Unknown));
        let (r, new) = p.reveal(asker, me, nonce, 3);
        assert!(matches!(r, PairResponse::Waiting(_)));
        let view = new.unwrap();
        assert_eq!(view.code, comparison_code(&asker, &me, &nonce, &theirs));
        assert!(p.reveal(asker, me, nonce, 4).1.is_none(), "told once");
        assert_eq!(p.pending(5).len(), 1);

        let id = p.find(&view.code.replace(' ', ""), 6).unwrap();
        assert_eq!(id, asker);
        assert!(p.find("000000", 6).is_err() || view.code == "000 000");
        assert!(p.decide(asker, None).is_some());
        assert!(p.decide(asker, None).is_none(), "decided once");
        assert_eq!(p.poll(asker, 7), PairResponse::Refused(PairRefusal::Denied));
        assert!(p.pending(8).is_empty());
        assert!(p.find(&view.code, 8).is_err());
    }

    #[test]
    fn a_wrong_nonce_unknown_peer_flood_and_old_requests_are_refused() {
        let mut p = Pairings::default();
        let (asker, me) = (PeerId::random(), PeerId::random());
        p.offer(asker, "x", commit(&[1u8; 32]), 1);
        let (r, new) = p.reveal(asker, me, [9u8; 32], 2);
        assert_eq!(
            r,
            PairResponse::Refused(PairRefusal::Unknown),
            "not the committed nonce"
        );
        assert!(new.is_none());
        assert_eq!(
            p.poll(asker, 3),
            PairResponse::Refused(PairRefusal::Expired),
            "forgotten"
        );
        assert_eq!(
            p.reveal(PeerId::random(), me, [1u8; 32], 3).0,
            PairResponse::Refused(PairRefusal::Unknown)
        );

        // At most PAIR_OFFERS_PER_MINUTE new offers a minute, from anyone.
        let mut p = Pairings::default();
        for i in 0..PAIR_OFFERS_PER_MINUTE {
            assert!(matches!(
                p.offer(PeerId::random(), "n", [i as u8; 32], 10),
                PairResponse::Nonce(_)
            ));
        }
        let late = PeerId::random();
        assert_eq!(
            p.offer(late, "n", [0u8; 32], 20),
            PairResponse::Refused(PairRefusal::Busy)
        );
        assert!(matches!(p.offer(late, "n", [0u8; 32], 60_011), PairResponse::Nonce(_)));

        // An offer never revealed is forgotten after PAIR_REVEAL_WAIT.
        let mut p = Pairings::default();
        let quiet = PeerId::random();
        p.offer(quiet, "x", commit(&[3u8; 32]), 1);
        let wait = PAIR_REVEAL_WAIT.as_millis() as u64;
        assert_eq!(p.poll(quiet, 1 + wait), PairResponse::Refused(PairRefusal::Expired));
        assert_eq!(
            p.reveal(quiet, me, [3u8; 32], 2 + wait).0,
            PairResponse::Refused(PairRefusal::Unknown)
        );

        // Expired after PAIR_TTL.
        let ttl = PAIR_TTL.as_millis() as u64;
        let nonce = [5u8; 32];
        let mut p = Pairings::default();
        p.offer(asker, "x", commit(&nonce), 1);
        p.reveal(asker, me, nonce, 2);
        assert!(p.pending(1 + ttl).is_empty());
        assert_eq!(p.poll(asker, 1 + ttl), PairResponse::Refused(PairRefusal::Expired));
    }
}
