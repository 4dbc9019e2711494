//! Hole punches that hold: a member this node reaches only through relays is punched for
//! again, on a backoff, for as long as that lasts, and at once when this node learns a new
//! address of its own. DCUtR runs its attempts on one relayed connection only, when it
//! opens; a fresh relayed connection to the member is what starts it again, with the
//! addresses both sides know by then, so a retry is a new relayed dial. Either side can
//! start one, but only one does: two relayed dials crossing start two punches at once,
//! whose simultaneous dials from the same ports collide. The side with the smaller PeerId
//! dials when both hold a relay slot; otherwise the side that can (the other one's slot is
//! what it dials). Fed events and the time; decides only.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};

use super::plan::{Links, ReachAction};

/// Wait before the first retry: DCUtR's own attempts on the first relayed connection come
/// first (three dials within a few round trips).
pub(in crate::net) const PUNCH_FIRST: Duration = Duration::from_secs(3);
/// Longest wait between retries.
pub(in crate::net) const PUNCH_RETRY_MAX: Duration = Duration::from_secs(300);

/// One member reached through relays only.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Retry {
    /// When it is punched for next.
    next: Instant,
    /// The wait after that.
    wait: Duration,
    /// Retries started.
    retries: u32,
    /// Why the last punch failed, as DCUtR said.
    last_failure: Option<String>,
}

/// What this node knows of punching for one member it reaches through relays only.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PunchState {
    /// Retries started (fresh relayed connections dialed).
    pub retries: u32,
    /// Why the last punch failed.
    pub last_failure: Option<String>,
}

/// Addresses of our own remembered, so that only a new one starts punches at once.
const OWN_ADDRESSES_KEPT: usize = 32;

/// The members reached through relays only, and when to punch for each again.
#[derive(Default)]
pub(in crate::net) struct Punches {
    peers: HashMap<PeerId, Retry>,
    /// Addresses of ours seen so far (observed by peers, confirmed), newest last.
    own: VecDeque<Multiaddr>,
}

impl Punches {
    /// What to do at `now`: for each admitted member `links` reaches through relays only,
    /// a fresh relayed dial when its time has come (then the wait doubles, up to
    /// [`PUNCH_RETRY_MAX`]). A member seen relayed-only for the first time gets
    /// [`PUNCH_FIRST`]; one that is direct, or gone, leaves the schedule.
    pub(in crate::net) fn due(&mut self, now: Instant, links: &impl Links) -> Vec<ReachAction> {
        let relayed_only = links.relayed_only_members();
        self.peers.retain(|p, _| relayed_only.contains(p));
        let mut out = Vec::new();
        let mut peers = relayed_only;
        peers.sort();
        for peer in peers {
            let r = self.peers.entry(peer).or_insert_with(|| Retry {
                next: now + PUNCH_FIRST,
                wait: PUNCH_FIRST,
                retries: 0,
                last_failure: None,
            });
            if r.next > now {
                continue;
            }
            r.wait = (r.wait * 2).min(PUNCH_RETRY_MAX);
            r.next = now + r.wait;
            // Without a relayed address of the member, or when both hold slots and the
            // member's PeerId is the smaller, the member dials; the schedule runs on all
            // the same.
            let ours = links.me() < peer || !links.holds_slot();
            if let Some(via) = links.circuit_addr(&peer).filter(|_| ours) {
                r.retries += 1;
                out.push(ReachAction::Punch { peer, via });
            }
        }
        out
    }

    /// DCUtR gave up on a relayed connection to `peer`: why, for the user.
    pub(in crate::net) fn failed(&mut self, peer: &PeerId, why: String) {
        if let Some(r) = self.peers.get_mut(peer) {
            r.last_failure = Some(why);
        }
    }

    /// A peer observed, or AutoNAT confirmed, an address of ours. When it is one not seen
    /// before, every member reached through relays only is punched for again at once,
    /// from the shortest wait (the new address may be the one that works). Only an
    /// address a punch can use counts: one with an IP, not relayed (identify over a
    /// relayed connection observes a bare `/p2p/<id>`, which used to start a second punch
    /// on top of the one under way). True when it was new.
    pub(in crate::net) fn own_address(&mut self, addr: &Multiaddr, now: Instant) -> bool {
        use libp2p::multiaddr::Protocol;
        let punchable = addr.iter().any(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)))
            && !addr.iter().any(|p| p == Protocol::P2pCircuit);
        if !punchable || self.own.contains(addr) {
            return false;
        }
        if self.own.len() == OWN_ADDRESSES_KEPT {
            self.own.pop_front();
        }
        self.own.push_back(addr.clone());
        for r in self.peers.values_mut() {
            r.next = now;
            r.wait = PUNCH_FIRST;
        }
        true
    }

    /// Addresses of ours peers observed or AutoNAT confirmed, newest last.
    pub(in crate::net) fn own_addresses(&self) -> std::collections::vec_deque::Iter<'_, Multiaddr> {
        self.own.iter()
    }

    /// When [`Punches::due`] next has something to do.
    pub(in crate::net) fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().map(|r| r.next).min()
    }

    /// What punching for `peer` has come to, if it is reached through relays only.
    pub(in crate::net) fn state(&self, peer: &PeerId) -> Option<PunchState> {
        self.peers.get(peer).map(|r| PunchState {
            retries: r.retries,
            last_failure: r.last_failure.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::reach::fake::FakeLinks;

    const S: Duration = Duration::from_secs(1);

    fn circuit(peer: PeerId) -> libp2p::Multiaddr {
        format!("/ip4/5.0.0.10/tcp/4001/p2p/{}/p2p-circuit/p2p/{peer}", PeerId::random())
            .parse()
            .expect("addr")
    }

    fn punched(actions: &[ReachAction]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                ReachAction::Punch { peer, .. } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_member_reached_only_through_a_relay_is_punched_for_again_at_doubling_waits() {
        let m = PeerId::random();
        let mut links = FakeLinks::default();
        links.relayed_only(m, Some(circuit(m)));
        let mut p = Punches::default();
        let t0 = Instant::now();
        // DCUtR's own attempts come first.
        assert!(p.due(t0, &links).is_empty());
        assert!(p.due(t0 + 2 * S, &links).is_empty());
        assert_eq!(punched(&p.due(t0 + 3 * S, &links)), [m]);
        // Then 6 s, 12 s, ... up to five minutes.
        assert!(p.due(t0 + 8 * S, &links).is_empty());
        assert_eq!(punched(&p.due(t0 + 9 * S, &links)), [m]);
        assert!(p.due(t0 + 20 * S, &links).is_empty());
        assert_eq!(punched(&p.due(t0 + 21 * S, &links)), [m]);
        let mut at = t0 + 21 * S;
        for _ in 0..10 {
            at += PUNCH_RETRY_MAX;
            assert_eq!(punched(&p.due(at, &links)), [m]);
        }
        assert_eq!(p.state(&m).map(|s| s.retries), Some(13));
        assert_eq!(p.next_deadline(), Some(at + PUNCH_RETRY_MAX));
    }

    #[test]
    fn a_direct_connection_or_none_at_all_ends_the_punching_and_a_new_episode_starts_afresh() {
        let m = PeerId::random();
        let mut links = FakeLinks::default();
        links.relayed_only(m, Some(circuit(m)));
        let mut p = Punches::default();
        let t0 = Instant::now();
        p.due(t0, &links);
        assert_eq!(punched(&p.due(t0 + 3 * S, &links)), [m]);
        p.failed(&m, "Giving up after 3 dial attempts".into());
        assert_eq!(
            p.state(&m).and_then(|s| s.last_failure).as_deref(),
            Some("Giving up after 3 dial attempts")
        );
        // Direct now: nothing to do, nothing kept.
        links.direct_now(m);
        assert!(p.due(t0 + 60 * S, &links).is_empty());
        assert_eq!(p.state(&m), None);
        assert_eq!(p.next_deadline(), None);
        // Relayed-only again later: DCUtR first, then the shortest wait.
        links.relayed_only(m, Some(circuit(m)));
        let t1 = t0 + 100 * S;
        assert!(p.due(t1, &links).is_empty());
        assert_eq!(punched(&p.due(t1 + PUNCH_FIRST, &links)), [m]);
    }

    #[test]
    fn a_new_address_of_ours_punches_for_every_relayed_member_at_once_an_old_one_does_not() {
        let (m1, m2) = (PeerId::random(), PeerId::random());
        let mut links = FakeLinks::default();
        links.relayed_only(m1, Some(circuit(m1)));
        links.relayed_only(m2, Some(circuit(m2)));
        let mut p = Punches::default();
        let t0 = Instant::now();
        p.due(t0, &links);
        p.due(t0 + 3 * S, &links);
        p.due(t0 + 9 * S, &links);
        // Waiting 12 s now; a new address of ours cuts that short (one seen before does not).
        let addr: Multiaddr = "/ip4/5.0.0.2/tcp/40001".parse().expect("addr");
        p.own_address(&addr, t0 + 10 * S);
        p.due(t0 + 10 * S, &links);
        p.own_address(&addr, t0 + 11 * S);
        assert!(p.due(t0 + 11 * S, &links).is_empty(), "an address seen before");
        let me = PeerId::random();
        for useless in [format!("/p2p/{me}"), format!("{}/p2p-circuit/p2p/{me}", circuit(m1))] {
            p.own_address(&useless.parse().expect("addr"), t0 + 11 * S);
            assert!(
                p.due(t0 + 11 * S, &links).is_empty(),
                "not an address to punch from: {useless}"
            );
        }
        p.own_address(&"/ip4/5.0.0.2/udp/40001/quic-v1".parse().expect("addr"), t0 + 11 * S);
        let mut got = punched(&p.due(t0 + 11 * S, &links));
        got.sort();
        let mut want = vec![m1, m2];
        want.sort();
        assert_eq!(got, want);
        // And the waits start again from the shortest.
        assert!(p.due(t0 + 16 * S, &links).is_empty());
        assert_eq!(punched(&p.due(t0 + 17 * S, &links)).len(), 2);
    }

    #[test]
    fn when_both_hold_slots_only_the_smaller_peer_id_dials() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let (small, large) = if a < b { (a, b) } else { (b, a) };
        let t0 = Instant::now();
        let run = |me: PeerId, other: PeerId, slot: bool| {
            let mut links = FakeLinks::default();
            links.set_me(me, slot);
            links.relayed_only(other, Some(circuit(other)));
            let mut p = Punches::default();
            p.due(t0, &links);
            punched(&p.due(t0 + 3 * S, &links))
        };
        assert_eq!(run(small, large, true), [large]);
        assert!(run(large, small, true).is_empty(), "the smaller one dials");
        // Without a slot of its own, the larger one is the only one that can.
        assert_eq!(run(large, small, false), [small]);
    }

    #[test]
    fn without_a_relayed_address_of_the_member_the_member_dials_and_the_schedule_runs_on() {
        let m = PeerId::random();
        let mut links = FakeLinks::default();
        links.relayed_only(m, None);
        let mut p = Punches::default();
        let t0 = Instant::now();
        p.due(t0, &links);
        assert!(p.due(t0 + 3 * S, &links).is_empty(), "nothing to dial");
        assert_eq!(p.state(&m).map(|s| s.retries), Some(0));
        // Its slot comes up: the next turn dials it.
        links.relayed_only(m, Some(circuit(m)));
        assert_eq!(punched(&p.due(t0 + 9 * S, &links)), [m]);
    }
}
