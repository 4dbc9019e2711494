//! Which relays to hold a slot on, and when to ask a relay again after a failed or lost
//! slot. Fed events and the time; decides only.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use super::plan::{Links, ReachAction};
use super::{MAX_RESERVATIONS, RESERVATION_RETRY_MAX, RESERVATION_RETRY_MIN, ReservationInfo};

/// A relay slot this node holds or asks for.
struct Slot {
    listener: ListenerId,
    addr: Option<Multiaddr>,
    accepted: bool,
    since_ms: Option<u64>,
    renewals: u32,
}

/// The relay slots. While this node is not known to be reachable it holds slots on up to
/// [`MAX_RESERVATIONS`] relays it has a direct connection to: the configured ones first, in
/// their order, then the ones the user dialed (`mesh dial`), then members that offer
/// relaying, by PeerId, then public relays (met through the public network, when it is
/// on; see `net::public`). A non-member relay is used only when configured, dialed or
/// public. The
/// range of a relay's address plays no part: a relay is one by role. A relay whose slot failed or was lost is asked again after
/// [`RESERVATION_RETRY_MIN`], doubling up to [`RESERVATION_RETRY_MAX`] until one is
/// accepted. Once reachable directly, every slot is released.
pub(in crate::net) struct Slots {
    configured: Vec<(PeerId, Multiaddr)>,
    /// Connected peers that offer relaying (identify says so).
    offered: HashSet<PeerId>,
    /// Peers the user dialed (pinned).
    dialed: HashSet<PeerId>,
    /// Relays of the public network.
    public: HashSet<PeerId>,
    held: HashMap<PeerId, Slot>,
    retry: HashMap<PeerId, (Instant, Duration)>,
}

impl Slots {
    /// With the relays of the configuration (addresses ending with `/p2p/<relay>`).
    pub(in crate::net) fn new(configured: &[Multiaddr]) -> Self {
        let configured = configured
            .iter()
            .filter_map(|a| crate::net::peer_of(a).map(|id| (id, crate::net::strip_p2p(a.clone()))))
            .collect();
        Self {
            configured,
            offered: HashSet::new(),
            dialed: HashSet::new(),
            public: HashSet::new(),
            held: HashMap::new(),
            retry: HashMap::new(),
        }
    }

    /// The configured relays and their addresses.
    pub(in crate::net) fn configured(&self) -> &[(PeerId, Multiaddr)] {
        &self.configured
    }

    /// `relay` is configured, or holds (or is asked for) a slot of ours.
    pub(in crate::net) fn uses(&self, relay: &PeerId) -> bool {
        self.held.contains_key(relay) || self.configured.iter().any(|(p, _)| p == relay)
    }

    /// The user dialed `peer` (`mesh dial`), or forgot it: a dialed relay is used like a
    /// configured one, member or not.
    pub(in crate::net) fn dialed(&mut self, peer: PeerId, dialed: bool) {
        if dialed {
            self.dialed.insert(peer);
        } else {
            self.dialed.remove(&peer);
        }
    }

    /// `peer` offers relaying.
    pub(in crate::net) fn offers(&mut self, peer: PeerId) {
        self.offered.insert(peer);
    }

    /// `peer`, a node of the public network, offers relaying.
    pub(in crate::net) fn public(&mut self, peer: PeerId) {
        self.offered.insert(peer);
        self.public.insert(peer);
    }

    /// Whether some relay accepted a slot of ours.
    pub(in crate::net) fn holds_one(&self) -> bool {
        self.held.values().any(|s| s.accepted)
    }

    /// `peer` is no longer connected: it offers nothing until it says so again.
    pub(in crate::net) fn gone(&mut self, peer: &PeerId) {
        self.offered.remove(peer);
    }

    /// A removed node: never a relay of ours. Returns the listener of its slot, to close.
    pub(in crate::net) fn forget(&mut self, peer: &PeerId) -> Option<ListenerId> {
        self.offered.remove(peer);
        self.held.remove(peer).map(|s| s.listener)
    }

    /// What to do at `now`: release every slot when `public` (reachable directly), else
    /// ask the relays to fill the free slots with (each reachable at an address `links`
    /// knows, not waiting for a retry).
    pub(in crate::net) fn plan(&mut self, now: Instant, public: bool, links: &impl Links) -> Vec<ReachAction> {
        if public {
            let mut held: Vec<(PeerId, ListenerId)> = self.held.drain().map(|(p, s)| (p, s.listener)).collect();
            held.sort_by_key(|(p, _)| *p);
            return held
                .into_iter()
                .map(|(relay, listener)| ReachAction::Release { relay, listener })
                .collect();
        }
        let room = MAX_RESERVATIONS.saturating_sub(self.held.len());
        let mut dialed: Vec<PeerId> = self.offered.intersection(&self.dialed).copied().collect();
        dialed.sort();
        let mut offered: Vec<PeerId> = self.offered.iter().copied().filter(|p| links.admitted(p)).collect();
        offered.sort();
        let mut public: Vec<PeerId> = self.offered.intersection(&self.public).copied().collect();
        public.sort();
        let mut seen = HashSet::new();
        self.configured
            .iter()
            .map(|(p, _)| *p)
            .chain(dialed)
            .chain(offered)
            .chain(public)
            .filter(|relay| seen.insert(*relay))
            .filter(|relay| !self.held.contains_key(relay))
            .filter(|relay| self.retry.get(relay).is_none_or(|(t, _)| *t <= now))
            .filter(|relay| links.direct(relay))
            .filter_map(|relay| {
                let addr = links.relay_addr(&relay)?;
                let listen = addr.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
                Some(ReachAction::Reserve { relay, listen })
            })
            .take(room)
            .collect()
    }

    /// A slot on `relay` was asked for, through `listener`.
    pub(in crate::net) fn asking(&mut self, relay: PeerId, listener: ListenerId) {
        self.held.insert(
            relay,
            Slot {
                listener,
                addr: None,
                accepted: false,
                since_ms: None,
                renewals: 0,
            },
        );
    }

    /// Asking `relay` for a slot failed at `now`: it waits before it is asked again.
    pub(in crate::net) fn failed(&mut self, relay: PeerId, now: Instant) -> Duration {
        let backoff = self
            .retry
            .get(&relay)
            .map(|(_, b)| (*b * 2).min(RESERVATION_RETRY_MAX))
            .unwrap_or(RESERVATION_RETRY_MIN);
        self.retry.insert(relay, (now + backoff, backoff));
        backoff
    }

    /// A listener reported its address: the relay whose slot it is, if any.
    pub(in crate::net) fn listening(&mut self, listener: ListenerId, addr: &Multiaddr) -> Option<PeerId> {
        let (relay, slot) = self.held.iter_mut().find(|(_, s)| s.listener == listener)?;
        slot.addr = Some(addr.clone());
        Some(*relay)
    }

    /// A listener closed at `now`: if it was a slot, the relay is asked again later.
    pub(in crate::net) fn closed(&mut self, listener: ListenerId, now: Instant) -> Option<PeerId> {
        let relay = self
            .held
            .iter()
            .find(|(_, s)| s.listener == listener)
            .map(|(p, _)| *p)?;
        self.held.remove(&relay);
        self.failed(relay, now);
        Some(relay)
    }

    /// `relay` accepted our slot (or a `renewal` of it) at `at_ms` (ms since the epoch):
    /// the retry backoff starts over.
    pub(in crate::net) fn accepted(&mut self, relay: PeerId, renewal: bool, at_ms: u64) {
        if let Some(s) = self.held.get_mut(&relay) {
            s.accepted = true;
            s.since_ms = Some(at_ms);
            if renewal {
                s.renewals += 1;
            }
        }
        self.retry.remove(&relay);
    }

    /// The slots, by relay.
    pub(in crate::net) fn info(&self) -> Vec<ReservationInfo> {
        let mut v: Vec<ReservationInfo> = self
            .held
            .iter()
            .map(|(relay, s)| ReservationInfo {
                relay: *relay,
                addr: s.addr.clone(),
                accepted: s.accepted,
                since_ms: s.since_ms,
                renewals: s.renewals,
            })
            .collect();
        v.sort_by_key(|r| r.relay);
        v
    }

    /// When the next retry is due.
    pub(in crate::net) fn next_deadline(&self) -> Option<Instant> {
        self.retry.values().map(|(t, _)| *t).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeLinks;
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn relay_addr(relay: PeerId) -> Multiaddr {
        format!("/ip4/5.0.0.1/tcp/4001/p2p/{relay}").parse().unwrap()
    }

    fn reserved(actions: &[ReachAction]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                ReachAction::Reserve { relay, .. } => Some(*relay),
                _ => None,
            })
            .collect()
    }

    /// Asks for the slots `plan` says, each through a new listener.
    fn ask(slots: &mut Slots, actions: &[ReachAction]) -> Vec<ListenerId> {
        reserved(actions)
            .into_iter()
            .map(|r| {
                let l = ListenerId::next();
                slots.asking(r, l);
                l
            })
            .collect()
    }

    #[test]
    fn configured_relays_come_first_then_admitted_members_that_relay_two_at_most() {
        let (conf, m1, m2, stranger) = (PeerId::random(), PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Slots::new(&[relay_addr(conf)]);
        assert_eq!(s.configured(), &[(conf, "/ip4/5.0.0.1/tcp/4001".parse().unwrap())]);
        let mut links = FakeLinks::default();
        links.add_direct([conf, m1, m2, stranger]);
        links.add_admitted([m1, m2]);
        for p in [m1, m2, stranger] {
            s.offers(p);
        }
        let t0 = Instant::now();
        let actions = s.plan(t0, false, &links);
        let mut members = [m1, m2];
        members.sort();
        assert_eq!(reserved(&actions), vec![conf, members[0]]);
        let ReachAction::Reserve { listen, .. } = &actions[0] else {
            panic!("{actions:?}")
        };
        assert_eq!(
            listen.to_string(),
            format!("/ip4/5.0.0.1/tcp/4001/p2p/{conf}/p2p-circuit")
        );
        ask(&mut s, &actions);
        assert!(s.uses(&conf) && s.uses(&members[0]) && !s.uses(&members[1]));
        // Full: nothing more.
        assert!(s.plan(t0, false, &links).is_empty());
    }

    #[test]
    fn a_relay_the_user_dialed_is_used_member_or_not_and_not_once_forgotten() {
        let (dialed, m) = (PeerId::random(), PeerId::random());
        let mut s = Slots::new(&[]);
        let mut links = FakeLinks::default();
        links.add_direct([dialed, m]);
        links.add_admitted([m]);
        s.offers(dialed);
        s.offers(m);
        let t0 = Instant::now();
        // Not a member, not dialed: only the member.
        assert_eq!(reserved(&s.plan(t0, false, &links)), vec![m]);
        // Dialed: before the members.
        let mut s = Slots::new(&[]);
        s.offers(dialed);
        s.offers(m);
        s.dialed(dialed, true);
        assert_eq!(reserved(&s.plan(t0, false, &links)), vec![dialed, m]);
        // Forgotten (`mesh dial --forget`): a stranger again.
        let mut s2 = Slots::new(&[]);
        s2.offers(dialed);
        s2.dialed(dialed, true);
        s2.dialed(dialed, false);
        assert!(reserved(&s2.plan(t0, false, &links)).is_empty());
    }

    #[test]
    fn public_relays_come_after_member_relays_and_only_while_connected() {
        let (public, m, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Slots::new(&[]);
        let mut links = FakeLinks::default();
        links.add_direct([public, m, stranger]);
        links.add_admitted([m]);
        s.offers(stranger);
        s.public(public);
        let t0 = Instant::now();
        assert_eq!(
            reserved(&s.plan(t0, false, &links)),
            vec![public],
            "a stranger is not a public relay"
        );
        s.offers(m);
        assert_eq!(reserved(&s.plan(t0, false, &links)), vec![m, public]);
        // Gone (the DHT closed its connection): not asked until it identifies again.
        s.gone(&public);
        assert_eq!(reserved(&s.plan(t0, false, &links)), vec![m]);
        s.public(public);
        let actions = s.plan(t0, false, &links);
        ask(&mut s, &actions);
        assert!(!s.holds_one(), "asked, not accepted yet");
        s.accepted(public, false, 1);
        assert!(s.holds_one());
    }

    #[test]
    fn relays_without_a_direct_connection_or_an_address_are_passed_over() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut s = Slots::new(&[relay_addr(a), relay_addr(b), relay_addr(c)]);
        let mut links = FakeLinks::default();
        links.add_direct([b, c]);
        links.hide_addr(b);
        assert_eq!(reserved(&s.plan(Instant::now(), false, &links)), vec![c]);
        // A configured relay offering relaying too is asked once.
        let mut s = Slots::new(&[relay_addr(a)]);
        s.offers(a);
        links.add_direct([a]);
        links.add_admitted([a]);
        assert_eq!(reserved(&s.plan(Instant::now(), false, &links)), vec![a]);
        // Not connected any more: its offer is gone, only the configuration remains.
        s.gone(&a);
        links.remove_admitted(a);
        assert_eq!(reserved(&s.plan(Instant::now(), false, &links)), vec![a]);
    }

    #[test]
    fn a_failed_or_lost_slot_is_asked_again_after_a_doubling_wait_reset_on_acceptance() {
        let r = PeerId::random();
        let mut s = Slots::new(&[relay_addr(r)]);
        let mut links = FakeLinks::default();
        links.add_direct([r]);
        let t0 = Instant::now();
        let mut t = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            assert_eq!(reserved(&s.plan(t, false, &links)), vec![r]);
            waits.push(s.failed(r, t));
            assert!(s.plan(t + waits.last().copied().unwrap() - S, false, &links).is_empty());
            assert_eq!(s.next_deadline(), Some(t + *waits.last().unwrap()));
            t += *waits.last().unwrap();
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60]);
        // Held, then the listener closes (refused or lost): asked again after the next wait.
        let actions = s.plan(t, false, &links);
        let l = ask(&mut s, &actions)[0];
        assert_eq!(s.closed(ListenerId::next(), t), None);
        assert_eq!(s.closed(l, t), Some(r));
        assert!(s.plan(t + 59 * S, false, &links).is_empty());
        // Accepted: the next failure waits the minimum again.
        let actions = s.plan(t + 60 * S, false, &links);
        let l = ask(&mut s, &actions)[0];
        s.accepted(r, false, 1000);
        assert_eq!(s.next_deadline(), None);
        assert_eq!(s.closed(l, t + 70 * S), Some(r));
        assert_eq!(s.next_deadline(), Some(t + 70 * S + RESERVATION_RETRY_MIN));
    }

    #[test]
    fn slots_are_reported_with_their_address_and_renewals_and_released_once_reachable() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut s = Slots::new(&[relay_addr(a), relay_addr(b)]);
        let mut links = FakeLinks::default();
        links.add_direct([a, b]);
        let t0 = Instant::now();
        let actions = s.plan(t0, false, &links);
        let listeners = ask(&mut s, &actions);
        let circuit: Multiaddr = format!("/ip4/5.0.0.1/tcp/4001/p2p/{a}/p2p-circuit").parse().unwrap();
        assert_eq!(s.listening(listeners[0], &circuit), Some(a));
        assert_eq!(s.listening(ListenerId::next(), &circuit), None);
        s.accepted(a, false, 1000);
        s.accepted(a, true, 2000);
        let info = s.info();
        let ia = info.iter().find(|i| i.relay == a).unwrap();
        assert_eq!((ia.accepted, ia.since_ms, ia.renewals), (true, Some(2000), 1));
        assert_eq!(ia.addr.as_ref(), Some(&circuit));
        let ib = info.iter().find(|i| i.relay == b).unwrap();
        assert_eq!((ib.accepted, ib.since_ms, ib.addr.clone()), (false, None, None));
        // Reachable directly: both released, none asked for.
        let released: Vec<(PeerId, ListenerId)> = s
            .plan(t0, true, &links)
            .into_iter()
            .filter_map(|a| match a {
                ReachAction::Release { relay, listener } => Some((relay, listener)),
                _ => None,
            })
            .collect();
        assert_eq!(released.len(), 2);
        assert!(released.contains(&(a, listeners[0])) && released.contains(&(b, listeners[1])));
        assert!(s.info().is_empty() && s.plan(t0, true, &links).is_empty());
        // A removed relay: its slot closes.
        let actions = s.plan(t0, false, &links);
        let listeners = ask(&mut s, &actions);
        assert_eq!(s.forget(&a), Some(listeners[0]));
        assert!(!s.uses(&PeerId::random()));
    }
}
