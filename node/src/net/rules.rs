//! Connection decisions as plain rules, fed the time and returning what to do: the dial
//! back-off for refused peers, which connections of unadmitted peers to close, and which
//! connections are dead after a member's new visit or the loss of one of this host's
//! addresses. The network actor applies them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use super::admit::{DENIED_BACKOFF_MAX, DENIED_BACKOFF_MIN, STALE_MARGIN};

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

/// A connection as the rules below see it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Link<Id> {
    pub(super) id: Id,
    pub(super) since: Instant,
    /// The remote IP, for a direct connection.
    pub(super) ip: Option<IpAddr>,
    pub(super) relayed: bool,
}

/// The connections to a member left over from its previous visit, when it began a new one
/// on `current`: those opened more than [`STALE_MARGIN`] before it.
pub(super) fn stale<Id: Copy + PartialEq>(links: &[Link<Id>], current: Id) -> Vec<Id> {
    let Some(since) = links.iter().find(|l| l.id == current).map(|l| l.since) else {
        return Vec::new();
    };
    links
        .iter()
        .filter(|l| l.id != current && l.since + STALE_MARGIN < since)
        .map(|l| l.id)
        .collect()
}

/// The connections that died with this host's address `lost`: every direct one of its
/// family when no other address of that family (`remaining`, loopback aside) is left,
/// else none (the connections may use the others). Relayed connections go with their
/// relay's.
pub(super) fn dead_after_loss<Id: Copy>(lost: IpAddr, remaining: &[IpAddr], links: &[Link<Id>]) -> Vec<Id> {
    let family = |ip: &IpAddr| ip.is_ipv4() == lost.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified();
    if lost.is_loopback() || remaining.iter().any(family) {
        return Vec::new();
    }
    links
        .iter()
        .filter(|l| !l.relayed && l.ip.as_ref().is_some_and(family))
        .map(|l| l.id)
        .collect()
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

    fn link(id: u32, since: Instant, ip: Option<IpAddr>, relayed: bool) -> Link<u32> {
        Link { id, since, ip, relayed }
    }

    #[test]
    fn a_new_visit_makes_the_older_connections_stale_but_not_ones_opened_with_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let links = [
            link(1, t0, None, false),
            link(2, t0 + 30 * s, None, true),
            link(3, t0 + 31 * s, None, false),
        ];
        assert_eq!(stale(&links, 2), vec![1], "opened together with it: kept");
        assert_eq!(stale(&links, 3), vec![1]);
        assert!(stale(&links, 1).is_empty(), "nothing older");
        assert!(stale(&links, 9).is_empty(), "unknown connection");
    }

    #[test]
    fn losing_the_only_address_of_a_family_kills_its_direct_connections() {
        let t0 = Instant::now();
        let v4 = |a, b, c, d| IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let links = [
            link(1, t0, Some(v4(5, 0, 0, 3)), false),
            link(2, t0, Some(v4(5, 0, 0, 10)), true),
            link(3, t0, Some(v6), false),
            link(4, t0, Some(v4(127, 0, 0, 1)), false),
        ];
        let lost = v4(10, 1, 0, 10);
        assert_eq!(dead_after_loss(lost, &[v4(127, 0, 0, 1), v6], &links), vec![1]);
        assert!(
            dead_after_loss(lost, &[v4(192, 168, 1, 5)], &links).is_empty(),
            "another IPv4 address remains: the connections may use it"
        );
        assert!(dead_after_loss(v4(127, 0, 0, 1), &[], &links).is_empty(), "loopback");
        assert_eq!(dead_after_loss(v6, &[lost], &links), vec![3]);
    }
}
