//! Reachability decisions as plain structs fed events and the time, returning actions the
//! network actor applies: redials ([`Redials`]), relay slots ([`Slots`]), hole punches tried
//! again ([`Punches`]), the pace of DHT lookups, AutoNAT's verdict and the hole-punch counts.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::{Multiaddr, PeerId};

use super::punch::Punches;
use super::redial::{Redials, Why};
use super::slots::Slots;
use super::{LOOKUP_EVERY, NatStatus, PunchStats};

/// What the reachability decisions ask the network actor to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(in crate::net) enum ReachAction {
    /// Dial `peer` at the addresses known for it (or look it up when there are none).
    Dial {
        /// The peer.
        peer: PeerId,
        /// Why it is dialed.
        why: Why,
    },
    /// Ask `relay` for a slot by listening on `listen` (`<addr>/p2p/<relay>/p2p-circuit`).
    /// When listening fails the actor reports it ([`Slots::failed`]) and, once the batch is
    /// applied, asks [`ReachPlan::refill`] for the next relay in line.
    Reserve {
        /// The relay.
        relay: PeerId,
        /// The relayed address to listen on.
        listen: Multiaddr,
    },
    /// Dial `peer` through a relay again (`via`, its relayed address), on a connection of
    /// its own: DCUtR punches a hole on each new relayed connection ([`Punches`]).
    Punch {
        /// The member.
        peer: PeerId,
        /// Its relayed address.
        via: Multiaddr,
    },
    /// A round of a hole punch from a fresh port with `peer` ([`super::fresh`]).
    FreshPunch {
        /// The member.
        peer: PeerId,
    },
    /// Give up the slot on `relay`: close its listener.
    Release {
        /// The relay.
        relay: PeerId,
        /// The slot's listener.
        listener: ListenerId,
    },
}

/// What the actor knows about its connections, as the decisions ask it.
pub(in crate::net) trait Links {
    /// `peer` has at least one open connection.
    fn connected(&self, peer: &PeerId) -> bool;
    /// `peer` proved membership on this visit.
    fn admitted(&self, peer: &PeerId) -> bool;
    /// `peer` has a connection that is not relayed.
    fn direct(&self, peer: &PeerId) -> bool;
    /// Where `relay` can be asked for a slot (without `/p2p/<relay>`).
    fn relay_addr(&self, relay: &PeerId) -> Option<Multiaddr>;
    /// Admitted members connected through relays only.
    fn relayed_only_members(&self) -> Vec<PeerId>;
    /// A relayed address of `peer` (`.../p2p/<relay>/p2p-circuit/p2p/<peer>`), if it holds
    /// a slot.
    fn circuit_addr(&self, peer: &PeerId) -> Option<Multiaddr>;
    /// This node's PeerId.
    fn me(&self) -> PeerId;
    /// This node holds a relay slot (listens on a relayed address).
    fn holds_slot(&self) -> bool;
}

/// The reachability decisions, owned by the network actor.
pub(in crate::net) struct ReachPlan {
    pub(in crate::net) redials: Redials,
    pub(in crate::net) slots: Slots,
    pub(in crate::net) lookups: Lookups,
    pub(in crate::net) nat: Nat,
    pub(in crate::net) punch: PunchStats,
    pub(in crate::net) punches: Punches,
    pub(in crate::net) fresh: super::fresh::FreshRounds,
}

impl ReachPlan {
    /// With the relays of the configuration.
    pub(in crate::net) fn new(relays: &[Multiaddr]) -> Self {
        Self {
            redials: Redials::default(),
            slots: Slots::new(relays),
            lookups: Lookups::default(),
            nat: Nat::default(),
            punch: PunchStats::default(),
            punches: Punches::default(),
            fresh: Default::default(),
        }
    }

    /// What to do at `now` (`public`: reachable directly): the redials due, the relay slots
    /// to ask for or release, then the hole punches to try again.
    pub(in crate::net) fn tick(&mut self, now: Instant, public: bool, links: &impl Links) -> Vec<ReachAction> {
        let mut out: Vec<ReachAction> = self
            .redials
            .due(now, |p| links.connected(p))
            .into_iter()
            .map(|(peer, why)| ReachAction::Dial { peer, why })
            .collect();
        out.extend(self.slots.plan(now, public, links));
        out.extend(self.punches.due(now, links));
        out.extend(self.fresh.due(now, links));
        out
    }

    /// After a slot could not be asked for: the relays to ask instead.
    pub(in crate::net) fn refill(&mut self, now: Instant, links: &impl Links) -> Vec<ReachAction> {
        self.slots.plan(now, false, links)
    }

    /// When the decisions next need [`ReachPlan::tick`].
    pub(in crate::net) fn next_deadline(&self) -> Option<Instant> {
        [
            self.redials.next_deadline(),
            self.slots.next_deadline(),
            self.punches.next_deadline(),
            self.fresh.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// AutoNAT's results, and the verdict drawn from them.
#[derive(Default)]
pub(in crate::net) struct Nat {
    confirmed: u32,
    failed: u32,
    last: NatStatus,
}

impl Nat {
    /// An AutoNAT test of one of our addresses came back.
    pub(in crate::net) fn tested(&mut self, reachable: bool) {
        if reachable {
            self.confirmed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// The verdict: `Public` with a confirmed external internet address (`public`),
    /// `Private` once a test failed, `Unknown` before.
    pub(in crate::net) fn status(&self, public: bool) -> NatStatus {
        if public {
            NatStatus::Public
        } else if self.failed > 0 {
            NatStatus::Private
        } else {
            NatStatus::Unknown
        }
    }

    /// Records the verdict `now`; the previous one if it changed.
    pub(in crate::net) fn changed(&mut self, now: NatStatus) -> Option<NatStatus> {
        (now != self.last).then(|| std::mem::replace(&mut self.last, now))
    }
}

/// The pace of DHT lookups: at most one per peer in [`LOOKUP_EVERY`], unless a caller
/// waits for the answer.
#[derive(Default)]
pub(in crate::net) struct Lookups {
    last: HashMap<PeerId, Instant>,
}

impl Lookups {
    /// Whether a lookup of `peer` starts at `now` (`asked`: a caller waits for it); if so,
    /// it is recorded.
    pub(in crate::net) fn start(&mut self, peer: PeerId, now: Instant, asked: bool) -> bool {
        let recent = self
            .last
            .get(&peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < LOOKUP_EVERY);
        if recent && !asked {
            return false;
        }
        self.last.insert(peer, now);
        true
    }
}

impl PunchStats {
    /// A hole-punch attempt ended: `direct` if it gave a direct connection.
    pub(in crate::net) fn record(&mut self, direct: bool) {
        self.attempts += 1;
        if direct {
            self.successes += 1;
        } else {
            self.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fake::FakeLinks;
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_tick_gives_the_redials_due_then_the_slots_and_the_next_deadline_of_both() {
        let (relay, pinned) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = format!("/ip4/5.0.0.1/tcp/4001/p2p/{relay}").parse().unwrap();
        let mut plan = ReachPlan::new(&[addr]);
        let t0 = Instant::now();
        plan.redials.pin(pinned, false, t0);
        let mut links = FakeLinks::default();
        links.add_direct([relay]);
        let actions = plan.tick(t0, false, &links);
        assert_eq!(actions.len(), 2, "{actions:?}");
        assert_eq!(
            actions[0],
            ReachAction::Dial {
                peer: pinned,
                why: Why::Pinned
            }
        );
        assert!(matches!(actions[1], ReachAction::Reserve { relay: r, .. } if r == relay));
        assert_eq!(plan.next_deadline(), Some(t0 + S));
        // The slot could not be asked for: retried in 2 s, the redial is due first.
        assert!(plan.refill(t0, &links).contains(&actions[1]));
        plan.slots.failed(relay, t0);
        assert!(plan.refill(t0, &links).is_empty());
        assert_eq!(plan.next_deadline(), Some(t0 + S));
        plan.redials.connected(pinned);
        assert_eq!(plan.next_deadline(), Some(t0 + 2 * S));
        // Reachable directly: no slot asked for.
        assert!(plan.tick(t0 + 2 * S, true, &links).is_empty());
    }

    #[test]
    fn the_nat_verdict_follows_the_tests_and_reports_each_change_once() {
        let mut nat = Nat::default();
        assert_eq!(nat.status(false), NatStatus::Unknown);
        assert_eq!(nat.changed(nat.status(false)), None);
        nat.tested(true);
        assert_eq!(nat.status(false), NatStatus::Unknown);
        nat.tested(false);
        assert_eq!(nat.status(false), NatStatus::Private);
        assert_eq!(nat.changed(NatStatus::Private), Some(NatStatus::Unknown));
        assert_eq!(nat.changed(NatStatus::Private), None);
        assert_eq!(nat.status(true), NatStatus::Public);
        assert_eq!(nat.changed(NatStatus::Public), Some(NatStatus::Private));
    }

    #[test]
    fn a_peer_is_looked_up_at_most_every_ten_seconds_unless_someone_asks() {
        let mut l = Lookups::default();
        let p = PeerId::random();
        let t0 = Instant::now();
        assert!(l.start(p, t0, false));
        assert!(!l.start(p, t0 + LOOKUP_EVERY - S, false));
        // Each peer has its own pace.
        assert!(l.start(PeerId::random(), t0 + S, false));
        // Asked for: at once, and the pause counts from then.
        assert!(l.start(p, t0 + 2 * S, true));
        assert!(!l.start(p, t0 + LOOKUP_EVERY, false));
        assert!(l.start(p, t0 + 2 * S + LOOKUP_EVERY, false));
    }

    #[test]
    fn hole_punches_are_counted_by_outcome() {
        let mut p = PunchStats::default();
        p.record(true);
        p.record(false);
        p.record(false);
        assert_eq!(
            p,
            PunchStats {
                attempts: 3,
                successes: 1,
                failures: 2
            }
        );
    }
}
