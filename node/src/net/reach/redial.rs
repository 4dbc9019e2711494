//! Which peers to redial and when: pinned peers (kept connected for good) and members whose
//! connection was lost (for a while). Fed the time; decides only.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::{LOST_REDIAL_FOR, LOST_REDIAL_MAX, REDIAL_MAX, REDIAL_MIN};

/// Why a peer is redialed (the actor logs it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::net) enum Why {
    /// A peer this node keeps connected (configured relay, `mesh pin`).
    Pinned,
    /// A member whose connection was lost.
    Lost,
}

struct Pin {
    /// Next redial; none while connected.
    next: Option<Instant>,
    backoff: Duration,
}

/// A member whose last connection was lost (network trouble, its restart): redialed with
/// backoff for a while, so a mesh heals by itself after a partition or an address change.
struct Lost {
    next: Instant,
    backoff: Duration,
    until: Instant,
}

/// The redial schedule. A pinned peer is redialed [`REDIAL_MIN`] after it went away, then
/// at doubling intervals up to [`REDIAL_MAX`], from the minimum again once connected. A
/// lost member is redialed at doubling intervals from [`REDIAL_MIN`] up to
/// [`LOST_REDIAL_MAX`] for [`LOST_REDIAL_FOR`]; it leaves the schedule only when a redial
/// finds it connected, so one that drops again at once is not redialed ever faster.
#[derive(Default)]
pub(in crate::net) struct Redials {
    pinned: HashMap<PeerId, Pin>,
    lost: HashMap<PeerId, Lost>,
    /// Peers whose connections this node is closing itself after joining or leaving a mesh:
    /// their loss is not a reason to redial them.
    forgotten: HashSet<PeerId>,
}

impl Redials {
    /// Keeps `peer` connected from `now` on (dialed at once unless `connected`).
    pub(in crate::net) fn pin(&mut self, peer: PeerId, connected: bool, now: Instant) {
        self.pinned.entry(peer).or_insert(Pin {
            next: (!connected).then_some(now),
            backoff: REDIAL_MIN,
        });
    }

    /// Stops redialing `peer`; whether it was pinned.
    pub(in crate::net) fn unpin(&mut self, peer: &PeerId) -> bool {
        self.pinned.remove(peer).is_some()
    }

    /// The pinned peers.
    pub(in crate::net) fn pinned(&self) -> Vec<PeerId> {
        self.pinned.keys().copied().collect()
    }

    /// A connection to `peer` opened: a pinned peer starts over from the shortest wait.
    pub(in crate::net) fn connected(&mut self, peer: PeerId) {
        self.forgotten.remove(&peer);
        if let Some(p) = self.pinned.get_mut(&peer) {
            p.next = None;
            p.backoff = REDIAL_MIN;
        }
    }

    /// The last connection to `peer` closed at `now`: a pinned peer is redialed after its
    /// current wait.
    pub(in crate::net) fn disconnected(&mut self, peer: PeerId, now: Instant) {
        if let Some(p) = self.pinned.get_mut(&peer) {
            p.next = Some(now + p.backoff);
        }
    }

    /// The last connection to the member `peer` closed at `now` without us closing it: keep
    /// trying to get it back (pinned peers have their own redials).
    pub(in crate::net) fn member_lost(&mut self, peer: PeerId, now: Instant) {
        if self.forgotten.remove(&peer) || self.pinned.contains_key(&peer) {
            return;
        }
        // Lost again before a redial found it connected: the backoff and the hour go on.
        self.lost.entry(peer).or_insert(Lost {
            next: now + REDIAL_MIN,
            backoff: REDIAL_MIN,
            until: now + LOST_REDIAL_FOR,
        });
    }

    /// Lost members are not redialed any more, nor are `closing`, whose connections this
    /// node is about to close (the mesh was left or joined anew).
    pub(in crate::net) fn forget_lost(&mut self, closing: &[PeerId]) {
        self.lost.clear();
        self.forgotten = closing.iter().copied().collect();
    }

    /// A removed node: never redialed.
    pub(in crate::net) fn forget(&mut self, peer: &PeerId) {
        self.pinned.remove(peer);
        self.lost.remove(peer);
    }

    /// The peers to dial at `now`, each scheduled for its next redial; a due peer that
    /// `connected` says is connected is not dialed (a pinned one starts over, a lost one
    /// leaves the schedule).
    pub(in crate::net) fn due(&mut self, now: Instant, connected: impl Fn(&PeerId) -> bool) -> Vec<(PeerId, Why)> {
        let mut out = Vec::new();
        let due: Vec<PeerId> = self
            .pinned
            .iter()
            .filter(|(_, p)| p.next.is_some_and(|t| t <= now))
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if connected(&peer) {
                self.connected(peer);
                continue;
            }
            if let Some(p) = self.pinned.get_mut(&peer) {
                p.next = Some(now + p.backoff);
                p.backoff = (p.backoff * 2).min(REDIAL_MAX);
            }
            out.push((peer, Why::Pinned));
        }
        self.lost.retain(|_, l| l.until > now);
        let due: Vec<PeerId> = self
            .lost
            .iter()
            .filter(|(_, l)| l.next <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in due {
            if connected(&peer) {
                self.lost.remove(&peer);
                continue;
            }
            if let Some(l) = self.lost.get_mut(&peer) {
                l.backoff = (l.backoff * 2).min(LOST_REDIAL_MAX);
                l.next = now + l.backoff;
            }
            out.push((peer, Why::Lost));
        }
        out
    }

    /// When the next redial is due.
    pub(in crate::net) fn next_deadline(&self) -> Option<Instant> {
        let pins = self.pinned.values().filter_map(|p| p.next);
        let lost = self.lost.values().map(|l| l.next);
        pins.chain(lost).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::random()
    }

    const S: Duration = Duration::from_secs(1);

    /// The times at which `r` dials `p` when it never connects, from `t0` until `end`,
    /// ticking every second.
    fn dial_times(r: &mut Redials, p: PeerId, t0: Instant, end: Duration) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut t = t0;
        while t <= t0 + end {
            if r.due(t, |_| false).iter().any(|(q, _)| *q == p) {
                out.push(t - t0);
            }
            t += S;
        }
        out
    }

    #[test]
    fn a_pinned_peer_is_dialed_at_once_then_at_doubling_waits_up_to_the_maximum() {
        let mut r = Redials::default();
        let p = peer();
        let t0 = Instant::now();
        r.pin(p, false, t0);
        assert_eq!(r.next_deadline(), Some(t0));
        assert_eq!(r.due(t0, |_| false), vec![(p, Why::Pinned)]);
        // Waits of 1, 2, 4, ... 32, then 60 s (the maximum) each time.
        let times = dial_times(&mut r, p, t0 + S, Duration::from_secs(302));
        let secs: Vec<u64> = times.iter().map(|d| d.as_secs() + 1).collect();
        assert_eq!(secs, vec![1, 3, 7, 15, 31, 63, 123, 183, 243, 303]);
        assert!(r.unpin(&p));
        assert!(!r.unpin(&p));
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_pinned_peer_already_connected_is_not_dialed_until_it_goes_away() {
        let mut r = Redials::default();
        let p = peer();
        let t0 = Instant::now();
        r.pin(p, true, t0);
        assert_eq!(r.next_deadline(), None);
        assert!(r.due(t0 + 10 * S, |_| false).is_empty());
        r.disconnected(p, t0 + 10 * S);
        assert_eq!(r.next_deadline(), Some(t0 + 11 * S));
        assert!(r.due(t0 + 10 * S, |_| false).is_empty());
        assert_eq!(r.due(t0 + 11 * S, |_| false), vec![(p, Why::Pinned)]);
        assert_eq!(r.pinned(), vec![p]);
    }

    #[test]
    fn a_connection_resets_a_pinned_peers_backoff() {
        let mut r = Redials::default();
        let p = peer();
        let t0 = Instant::now();
        r.pin(p, false, t0);
        // Dialed at 0, 1, 3 and 7 s: the next wait is 8 s.
        assert_eq!(dial_times(&mut r, p, t0, 7 * S).len(), 4);
        r.connected(p);
        assert_eq!(r.next_deadline(), None);
        r.disconnected(p, t0 + 20 * S);
        assert_eq!(r.next_deadline(), Some(t0 + 21 * S));
        // A due peer found connected when its turn comes is not dialed, and starts over.
        r.disconnected(p, t0 + 30 * S);
        assert!(r.due(t0 + 40 * S, |_| true).is_empty());
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_lost_member_is_redialed_for_an_hour_with_waits_up_to_thirty_seconds() {
        let mut r = Redials::default();
        let p = peer();
        let t0 = Instant::now();
        r.member_lost(p, t0);
        assert_eq!(r.next_deadline(), Some(t0 + REDIAL_MIN));
        let times = dial_times(&mut r, p, t0, Duration::from_secs(100));
        let secs: Vec<u64> = times.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, vec![1, 3, 7, 15, 31, 61, 91]);
        // Lost again meanwhile: the backoff goes on, not from the minimum.
        r.member_lost(p, t0 + 95 * S);
        assert_eq!(r.next_deadline(), Some(t0 + 121 * S));
        // After the hour, no more.
        assert!(r.due(t0 + LOST_REDIAL_FOR, |_| false).is_empty());
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_lost_member_found_connected_leaves_the_schedule() {
        let mut r = Redials::default();
        let p = peer();
        let t0 = Instant::now();
        r.member_lost(p, t0);
        assert!(r.due(t0 + 5 * S, |_| true).is_empty());
        assert_eq!(r.next_deadline(), None);
        // Lost anew: from the minimum.
        r.member_lost(p, t0 + 10 * S);
        assert_eq!(r.next_deadline(), Some(t0 + 11 * S));
        assert_eq!(r.due(t0 + 11 * S, |_| false), vec![(p, Why::Lost)]);
    }

    #[test]
    fn pinned_forgotten_and_removed_peers_are_not_redialed_as_lost() {
        let mut r = Redials::default();
        let (pinned, closing, other) = (peer(), peer(), peer());
        let t0 = Instant::now();
        r.pin(pinned, true, t0);
        r.member_lost(pinned, t0);
        // Pinned: only its own redials.
        r.disconnected(pinned, t0);
        assert_eq!(r.due(t0 + S, |_| false), vec![(pinned, Why::Pinned)]);
        // Closed on purpose (mesh left or joined): forgotten once, lost the next time.
        r.member_lost(other, t0);
        r.forget_lost(&[closing]);
        r.member_lost(closing, t0);
        assert!(r.due(t0 + 2 * S, |_| false).iter().all(|(p, _)| *p == pinned));
        r.member_lost(closing, t0 + 10 * S);
        assert!(r.due(t0 + 11 * S, |_| false).contains(&(closing, Why::Lost)));
        // A connection clears the mark too.
        r.forget_lost(&[other]);
        r.connected(other);
        r.member_lost(other, t0 + 20 * S);
        assert!(r.due(t0 + 21 * S, |_| false).contains(&(other, Why::Lost)));
        // A removed node: nothing at all.
        r.forget(&pinned);
        r.forget(&other);
        r.forget(&closing);
        assert_eq!(r.next_deadline(), None);
    }
}
