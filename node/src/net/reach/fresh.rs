//! Hole punches from fresh ports (`/agentmesh/punch/1`), beside DCUtR's.
//!
//! A punch through two routers that answer unsolicited packets (a TCP reset, as a plain
//! Linux router does) works only when both first packets have left their routers before
//! either reaches the other one: within the one-way delay between the routers. A round
//! that misses leaves connection-tracking entries on the routers (10 s for a reset TCP
//! flow), and the rounds after it on the same two ports fail too. DCUtR always punches
//! between the two listening ports, so after one miss it keeps missing.
//!
//! Here every round pairs ports no earlier round used: one side punches from a fresh port
//! (its router must keep port numbers, which a node sees when its listening port is
//! observed unchanged from outside: then its public address for the fresh port is known
//! without asking anyone), the other from its listening port. The member with the smaller
//! PeerId asks, over the relayed connection: `Prepare` (where each side's packets will
//! come from), then `Fire`: the answerer sends its SYN half the connection's round trip
//! after the request arrives, the asker when the answer arrives, so both leave together.
//! A connection that opens is handed to the swarm ([`super::super::port_reuse::Parked`]):
//! the asker dials as usual, the answerer as the listener, and Noise runs on it as on any
//! other. Rounds run every [`FRESH_EVERY`] at first, then at doubling waits, while the
//! member is reached through relays only.
//!
//! The schedule ([`FreshRounds`]) is fed the time and decides only; the sockets are here
//! too, the actor's side at the end.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::{Multiaddr, PeerId};
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;

use super::plan::{Links, ReachAction};
use super::punch::PUNCH_RETRY_MAX;
use crate::net::NetActor;
use crate::wire::{PunchRequest, PunchResponse};

/// Wait before the first round: DCUtR's own attempts come first.
pub(in crate::net) const FRESH_FIRST: Duration = Duration::from_secs(3);
/// Wait between the first [`FRESH_FAST`] rounds.
pub(in crate::net) const FRESH_EVERY: Duration = Duration::from_secs(2);
/// Rounds at [`FRESH_EVERY`]; then the wait doubles, up to [`PUNCH_RETRY_MAX`].
pub(in crate::net) const FRESH_FAST: u32 = 12;
/// Lead over the answer's arrival before the first packet goes: time for the sending
/// thread to be waiting for its instant.
const FIRE_MARGIN: Duration = Duration::from_millis(30);
/// How long a fired connection may take to open.
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// How long a prepared round waits for its `Fire`.
const PREPARED_FOR: Duration = Duration::from_secs(10);
/// Rounds one member may prepare with us at most this often.
const PREPARE_EVERY: Duration = Duration::from_millis(500);
/// Rounds in a row whose packets got no answer at all (not even a router's reset) after
/// which a member gets no more until an address of ours changes: a NAT that gives every
/// destination another port (symmetric) looks like this, and no punch gets through it.
pub(in crate::net) const SILENT_ROUNDS: u32 = 4;

/// One member reached through relays only, as the schedule sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    next: Instant,
    rounds: u32,
    /// It cannot take part (neither side can punch from a fresh port, or its rounds go
    /// unanswered) until one of our addresses changes.
    off: bool,
    /// Rounds in a row that got no answer.
    silent: u32,
}

/// When to run a round for each member reached through relays only (the smaller PeerId
/// asks).
#[derive(Default)]
pub(in crate::net) struct FreshRounds {
    peers: HashMap<PeerId, Member>,
}

impl FreshRounds {
    /// The rounds due at `now`. A member seen relayed-only for the first time waits
    /// [`FRESH_FIRST`]; one that is direct, or gone, leaves the schedule.
    pub(in crate::net) fn due(&mut self, now: Instant, links: &impl Links) -> Vec<ReachAction> {
        let relayed_only = links.relayed_only_members();
        self.peers.retain(|p, _| relayed_only.contains(p));
        let me = links.me();
        let mut out = Vec::new();
        let mut peers: Vec<PeerId> = relayed_only.into_iter().filter(|p| me < *p).collect();
        peers.sort();
        for peer in peers {
            let m = self.peers.entry(peer).or_insert_with(|| Member {
                next: now + FRESH_FIRST,
                rounds: 0,
                off: false,
                silent: 0,
            });
            if m.off || m.next > now {
                continue;
            }
            m.rounds += 1;
            m.next = now + wait_after(m.rounds);
            out.push(ReachAction::FreshPunch { peer });
        }
        out
    }

    /// `peer` cannot take part: no more rounds until an address of ours changes.
    pub(in crate::net) fn off(&mut self, peer: &PeerId) {
        if let Some(m) = self.peers.get_mut(peer) {
            m.off = true;
        }
    }

    /// A round with `peer` ended: `silent` when its packets got no answer at all. After
    /// [`SILENT_ROUNDS`] such in a row, no more rounds until an address of ours changes.
    pub(in crate::net) fn ended(&mut self, peer: &PeerId, silent: bool) {
        if let Some(m) = self.peers.get_mut(peer) {
            m.silent = if silent { m.silent + 1 } else { 0 };
            m.off |= m.silent >= SILENT_ROUNDS;
        }
    }

    /// A new address of ours: every member gets rounds again, from the shortest wait.
    pub(in crate::net) fn own_address_changed(&mut self, now: Instant) {
        for m in self.peers.values_mut() {
            *m = Member {
                next: now,
                rounds: 0,
                off: false,
                silent: 0,
            };
        }
    }

    /// When [`FreshRounds::due`] next has something to do.
    pub(in crate::net) fn next_deadline(&self) -> Option<Instant> {
        self.peers.values().filter(|m| !m.off).map(|m| m.next).min()
    }

    /// Rounds run for `peer` in this episode.
    #[cfg(test)]
    fn rounds(&self, peer: &PeerId) -> u32 {
        self.peers.get(peer).map_or(0, |m| m.rounds)
    }
}

/// The wait after round `n` (counted from 1).
fn wait_after(n: u32) -> Duration {
    if n < FRESH_FAST {
        return FRESH_EVERY;
    }
    let doublings = (n - FRESH_FAST + 1).min(16);
    (FRESH_EVERY * 2u32.pow(doublings)).min(PUNCH_RETRY_MAX)
}

/// This node's TCP listening address and its public address as peers observe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::net) struct OwnTcp {
    listen: SocketAddrV4,
    external: SocketAddrV4,
    /// The router keeps port numbers: every observation of our current public IP has the
    /// listening port, so a fresh port will be seen unchanged too.
    keeps: bool,
}

impl OwnTcp {
    fn keeps_ports(&self) -> bool {
        self.keeps
    }
}

/// Our IPv4 TCP listening address (not loopback) and what peers observe of it
/// (`observed` newest last). Only observations of the newest public IP count. libp2p
/// reports two kinds: the address a peer saw (a dial from our listening port, which the
/// router may have given another port) and that IP with our listening port (its guess).
/// So the router keeps port numbers when no observation has another port; when one has,
/// the newest such is the listening port's real mapping.
pub(in crate::net) fn own_tcp<'a>(
    listen: impl IntoIterator<Item = &'a Multiaddr>,
    observed: impl DoubleEndedIterator<Item = &'a Multiaddr>,
) -> Option<OwnTcp> {
    let listen = listen.into_iter().find_map(|a| {
        let (ip, port) = ip4_tcp(a)?;
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(SocketAddrV4::new(ip, port))
    })?;
    let seen: Vec<SocketAddrV4> = observed
        .rev()
        .filter_map(|a| ip4_tcp(a).map(|(ip, port)| SocketAddrV4::new(ip, port)))
        .collect();
    let newest_ip = *seen.first()?.ip();
    let seen: Vec<SocketAddrV4> = seen.into_iter().filter(|a| *a.ip() == newest_ip).collect();
    let other_port = seen.iter().find(|a| a.port() != listen.port()).copied();
    Some(OwnTcp {
        listen,
        external: other_port.unwrap_or(SocketAddrV4::new(newest_ip, listen.port())),
        keeps: other_port.is_none(),
    })
}

/// `/ip4/<ip>/tcp/<port>`, perhaps with `/p2p/<id>`; nothing else (not relayed).
fn ip4_tcp(a: &Multiaddr) -> Option<(Ipv4Addr, u16)> {
    let mut it = a.iter();
    let Some(Protocol::Ip4(ip)) = it.next() else {
        return None;
    };
    let Some(Protocol::Tcp(port)) = it.next() else {
        return None;
    };
    match (it.next(), it.next()) {
        (None, _) | (Some(Protocol::P2p(_)), None) => Some((ip, port)),
        _ => None,
    }
}

/// Our side of a round: the socket to punch from and where its packets come from, as
/// the other side will see them.
pub(in crate::net) struct Side {
    socket: Socket,
    from: SocketAddr,
}

impl std::fmt::Debug for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side").field("from", &self.from).finish()
    }
}

/// A side punching from a fresh port (`own` keeps port numbers).
fn fresh_side(own: &OwnTcp) -> io::Result<Side> {
    let socket = tcp_socket(SocketAddrV4::new(*own.listen.ip(), 0), false)?;
    let port = socket
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no local port"))?;
    Ok(Side {
        socket,
        from: SocketAddrV4::new(*own.external.ip(), port).into(),
    })
}

/// A side punching from the listening port (shared with the listener, as libp2p's own
/// dials do).
fn fixed_side(own: &OwnTcp) -> io::Result<Side> {
    Ok(Side {
        socket: tcp_socket(own.listen, true)?,
        from: own.external.into(),
    })
}

fn tcp_socket(bind: SocketAddrV4, share_port: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if share_port {
        s.set_reuse_port(true)?;
    }
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&SocketAddr::V4(bind).into())?;
    Ok(s)
}

/// Sends the first packet of `side` to `to` at `at` (a thread waits for the instant:
/// a runtime timer is a millisecond coarse) and reports the connection once open.
fn fire(side: Side, to: SocketAddr, at: Instant) -> oneshot::Receiver<io::Result<tokio::net::TcpStream>> {
    let (tx, rx) = oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    let spawned = std::thread::Builder::new().name("punch".into()).spawn(move || {
        let lead = Duration::from_millis(2);
        if let Some(wait) = at.checked_duration_since(Instant::now() + lead) {
            std::thread::sleep(wait);
        }
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        let sent = match side.socket.connect(&to.into()) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) || e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        };
        handle.spawn(async move {
            let _ = tx.send(opened(side.socket, sent).await);
        });
    });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no thread for a punch");
    }
    rx
}

/// The connection of `socket` once open (within [`CONNECT_WAIT`]).
async fn opened(socket: Socket, sent: io::Result<()>) -> io::Result<tokio::net::TcpStream> {
    sent?;
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(socket))?;
    tokio::time::timeout(CONNECT_WAIT, stream.writable())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    stream.peer_addr()?;
    Ok(stream)
}

/// A round this node asked for.
struct Asked {
    round: u32,
    side: Side,
    /// Where the member's packets will come from, once it said.
    remote: Option<SocketAddr>,
}

/// A round a member asked this node for.
struct Prepared {
    round: u32,
    side: Side,
    remote: SocketAddr,
    since: Instant,
}

/// Rounds under way, both ways.
#[derive(Default)]
pub(in crate::net) struct Rounds {
    next_round: u32,
    asked: HashMap<PeerId, Asked>,
    prepared: HashMap<PeerId, Prepared>,
    last_prepare: HashMap<PeerId, Instant>,
}

/// What a fired round came to, back in the actor.
#[derive(Debug)]
pub(in crate::net) struct Fired {
    pub(in crate::net) peer: PeerId,
    pub(in crate::net) remote: SocketAddr,
    /// This side dials as the listener (it answered the round).
    pub(in crate::net) answerer: bool,
    pub(in crate::net) result: io::Result<tokio::net::TcpStream>,
}

impl NetActor {
    /// Ours, as the peers see it.
    fn own_tcp(&self) -> Option<OwnTcp> {
        own_tcp(self.swarm.listeners(), self.reach.plan.punches.own_addresses())
    }

    /// Starts a round with `peer`: where our packets will come from.
    pub(in crate::net) fn fresh_round(&mut self, peer: PeerId) {
        let Some(own) = self.own_tcp() else {
            tracing::debug!(%peer, "no public TCP address of ours known yet: no punch from a fresh port");
            return;
        };
        let fresh = own.keeps_ports();
        let side = match if fresh { fresh_side(&own) } else { fixed_side(&own) } {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "no socket for a punch");
                return;
            }
        };
        let rounds = &mut self.reach.fresh;
        rounds.next_round = rounds.next_round.wrapping_add(1);
        let round = rounds.next_round;
        tracing::debug!(%peer, round, from = %side.from, fresh, "punching from a fresh port");
        self.swarm.behaviour_mut().punch.inner().send_request(
            &peer,
            PunchRequest::Prepare {
                round,
                from: side.from,
                fresh,
            },
        );
        self.reach.fresh.asked.insert(
            peer,
            Asked {
                round,
                side,
                remote: None,
            },
        );
    }

    pub(in crate::net) fn on_punch(&mut self, event: request_response::Event<PunchRequest, PunchResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message: Message::Request { request, channel, .. },
                ..
            } => {
                let answer = self.punch_request(peer, request);
                let _ = self.swarm.behaviour_mut().punch.inner().send_response(channel, answer);
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => self.punch_response(peer, response),
            Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "punch round not answered");
                self.reach.fresh.asked.remove(&peer);
                if matches!(error, request_response::OutboundFailure::UnsupportedProtocols) {
                    // A node from before this protocol: DCUtR only.
                    self.reach.plan.fresh.off(&peer);
                }
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    /// A member asks us for a round (the answerer's side).
    fn punch_request(&mut self, peer: PeerId, request: PunchRequest) -> PunchResponse {
        let now = Instant::now();
        self.reach
            .fresh
            .prepared
            .retain(|_, p| now.duration_since(p.since) < PREPARED_FOR);
        match request {
            PunchRequest::Prepare { round, from, fresh } => {
                let relayed_only = self
                    .peers
                    .get(&peer)
                    .is_some_and(|s| s.admitted && s.connections.values().all(|c| c.via.is_some()));
                let recent = self
                    .reach
                    .fresh
                    .last_prepare
                    .get(&peer)
                    .is_some_and(|t| now.duration_since(*t) < PREPARE_EVERY);
                if !relayed_only || recent || !from.is_ipv4() {
                    return PunchResponse::Refused;
                }
                self.reach.fresh.last_prepare.insert(peer, now);
                let side = match self.own_tcp() {
                    Some(own) if fresh => fixed_side(&own).ok(),
                    Some(own) if own.keeps_ports() => fresh_side(&own).ok(),
                    _ => None,
                };
                let Some(side) = side else {
                    return PunchResponse::Prepared { round, from: None };
                };
                let ours = side.from;
                self.reach.fresh.prepared.insert(
                    peer,
                    Prepared {
                        round,
                        side,
                        remote: from,
                        since: now,
                    },
                );
                PunchResponse::Prepared {
                    round,
                    from: Some(ours),
                }
            }
            PunchRequest::Fire { round } => {
                let Some(p) = self.reach.fresh.prepared.remove(&peer) else {
                    return PunchResponse::Refused;
                };
                if p.round != round {
                    return PunchResponse::Refused;
                }
                let half_rtt = self.peers.get(&peer).and_then(|s| s.rtt).unwrap_or_default() / 2;
                self.fire_round(peer, p.side, p.remote, now + FIRE_MARGIN + half_rtt, true);
                PunchResponse::Firing { round }
            }
        }
    }

    /// The member answered a round we asked for.
    fn punch_response(&mut self, peer: PeerId, response: PunchResponse) {
        let now = Instant::now();
        match response {
            PunchResponse::Prepared { round, from } => {
                let Some(asked) = self.reach.fresh.asked.get_mut(&peer).filter(|a| a.round == round) else {
                    return;
                };
                match from.filter(SocketAddr::is_ipv4) {
                    Some(remote) => {
                        asked.remote = Some(remote);
                        self.swarm
                            .behaviour_mut()
                            .punch
                            .inner()
                            .send_request(&peer, PunchRequest::Fire { round });
                    }
                    None => {
                        tracing::debug!(%peer, "the member cannot punch from a fresh port, nor can we");
                        self.reach.fresh.asked.remove(&peer);
                        self.reach.plan.fresh.off(&peer);
                    }
                }
            }
            PunchResponse::Firing { round } => {
                let Some(asked) = self.reach.fresh.asked.remove(&peer) else {
                    return;
                };
                match asked.remote.filter(|_| asked.round == round) {
                    Some(remote) => self.fire_round(peer, asked.side, remote, now + FIRE_MARGIN, false),
                    None => {
                        self.reach.fresh.asked.insert(peer, asked);
                    }
                }
            }
            PunchResponse::Refused => {
                self.reach.fresh.asked.remove(&peer);
            }
        }
    }

    /// Sends our first packet at `at`; the outcome comes back as a command.
    fn fire_round(&mut self, peer: PeerId, side: Side, remote: SocketAddr, at: Instant, answerer: bool) {
        let rx = fire(side, remote, at);
        let actor = self.self_tx.clone();
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or_else(|_| Err(io::Error::other("the punch thread ended")));
            let _ = actor
                .send(crate::net::Command::Fired(Fired {
                    peer,
                    remote,
                    answerer,
                    result,
                }))
                .await;
        });
    }

    /// A round came to an open TCP connection or not: an open one is handed to the swarm.
    pub(in crate::net) fn on_fired(&mut self, fired: Fired) {
        use crate::metrics::Metrics;
        let Fired {
            peer,
            remote,
            answerer,
            result,
        } = fired;
        self.reach.plan.punch.record(result.is_ok());
        let silent = matches!(&result, Err(e) if e.kind() == io::ErrorKind::TimedOut);
        self.reach.plan.fresh.ended(&peer, silent);
        Metrics::count(&self.metrics.hole_punches, "attempt");
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                Metrics::count(&self.metrics.hole_punches, "failure");
                tracing::debug!(%peer, %remote, error = %e, "a punch from a fresh port failed");
                self.reach
                    .plan
                    .punches
                    .failed(&peer, format!("a punch from a fresh port: {e}"));
                return;
            }
        };
        Metrics::count(&self.metrics.hole_punches, "success");
        tracing::info!(%peer, %remote, answerer, "hole punch from a fresh port succeeded: direct connection");
        let parked = self.guard.parked().clone();
        parked.expire(PREPARED_FOR);
        parked.park(remote, stream);
        let addr = Multiaddr::from(remote.ip())
            .with(Protocol::Tcp(remote.port()))
            .with(Protocol::P2p(peer));
        let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
            .addresses(vec![addr])
            .condition(libp2p::swarm::dial_opts::PeerCondition::Always);
        let opts = if answerer { opts.override_role() } else { opts };
        if let Err(e) = self.swarm.dial(opts.build()) {
            tracing::debug!(%peer, error = %e, "cannot take the punched connection");
            parked.take(&remote);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::reach::fake::FakeLinks;

    const S: Duration = Duration::from_secs(1);

    fn rounds(actions: &[ReachAction]) -> Vec<PeerId> {
        actions
            .iter()
            .filter_map(|a| match a {
                ReachAction::FreshPunch { peer } => Some(*peer),
                _ => None,
            })
            .collect()
    }

    /// A member with a larger PeerId than `me`.
    fn larger(me: PeerId) -> PeerId {
        loop {
            let p = PeerId::random();
            if p > me {
                return p;
            }
        }
    }

    #[test]
    fn rounds_run_every_two_seconds_then_at_doubling_waits_while_the_member_is_relayed_only() {
        let me = PeerId::random();
        let m = larger(me);
        let mut links = FakeLinks::default();
        links.set_me(me, true);
        links.relayed_only(m, None);
        let mut f = FreshRounds::default();
        let t0 = Instant::now();
        assert!(rounds(&f.due(t0, &links)).is_empty(), "DCUtR first");
        assert_eq!(rounds(&f.due(t0 + FRESH_FIRST, &links)), [m]);
        let mut at = t0 + FRESH_FIRST;
        for _ in 1..FRESH_FAST {
            assert!(rounds(&f.due(at + FRESH_EVERY - Duration::from_millis(1), &links)).is_empty());
            at += FRESH_EVERY;
            assert_eq!(rounds(&f.due(at, &links)), [m]);
        }
        assert_eq!(f.rounds(&m), FRESH_FAST);
        // Then 4 s, 8 s, ... up to five minutes.
        assert_eq!(f.next_deadline(), Some(at + 2 * FRESH_EVERY));
        at += 2 * FRESH_EVERY;
        assert_eq!(rounds(&f.due(at, &links)), [m]);
        assert_eq!(f.next_deadline(), Some(at + 4 * FRESH_EVERY));
        for _ in 0..20 {
            at = f.next_deadline().expect("scheduled");
            f.due(at, &links);
        }
        assert_eq!(f.next_deadline(), Some(at + PUNCH_RETRY_MAX));
        // Direct now: out of the schedule.
        links.direct_now(m);
        assert!(f.due(at + PUNCH_RETRY_MAX, &links).is_empty());
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn rounds_that_get_no_answer_at_all_stop_after_a_few_in_a_row_refused_ones_do_not() {
        let me = PeerId::random();
        let m = larger(me);
        let mut links = FakeLinks::default();
        links.set_me(me, true);
        links.relayed_only(m, None);
        let mut f = FreshRounds::default();
        let t0 = Instant::now();
        f.due(t0, &links);
        let mut at = t0 + FRESH_FIRST;
        // Refused (a router's reset) ones, and silent ones broken by a refused one: on.
        for silent in [false, false, true, true, true, false, true, true, true, false] {
            assert_eq!(rounds(&f.due(at, &links)), [m]);
            f.ended(&m, silent);
            at += FRESH_EVERY * 2u32.pow(6);
        }
        // Then SILENT_ROUNDS in a row: off.
        for _ in 0..SILENT_ROUNDS {
            assert_eq!(rounds(&f.due(at, &links)), [m]);
            f.ended(&m, true);
            at += PUNCH_RETRY_MAX;
        }
        assert!(rounds(&f.due(at, &links)).is_empty());
        assert_eq!(f.next_deadline(), None);
        // A new address of ours starts them again.
        f.own_address_changed(at);
        assert_eq!(rounds(&f.due(at, &links)), [m]);
    }

    #[test]
    fn only_the_smaller_peer_id_asks_and_a_member_that_cannot_take_part_waits_for_a_new_address() {
        let me = PeerId::random();
        let m = larger(me);
        let t0 = Instant::now();
        // The larger side never asks.
        let mut links = FakeLinks::default();
        links.set_me(m, true);
        links.relayed_only(me, None);
        let mut f = FreshRounds::default();
        f.due(t0, &links);
        assert!(rounds(&f.due(t0 + 10 * S, &links)).is_empty());
        // The smaller one does, until the member cannot take part.
        let mut links = FakeLinks::default();
        links.set_me(me, true);
        links.relayed_only(m, None);
        let mut f = FreshRounds::default();
        f.due(t0, &links);
        assert_eq!(rounds(&f.due(t0 + FRESH_FIRST, &links)), [m]);
        f.off(&m);
        assert!(rounds(&f.due(t0 + 60 * S, &links)).is_empty());
        assert_eq!(f.next_deadline(), None);
        // A new address of ours: rounds again at once, from the start.
        f.own_address_changed(t0 + 61 * S);
        assert_eq!(rounds(&f.due(t0 + 61 * S, &links)), [m]);
        assert_eq!(f.rounds(&m), 1);
    }

    #[test]
    fn our_public_tcp_address_and_whether_the_router_keeps_port_numbers_come_from_observations() {
        let a = |s: &str| -> Multiaddr { s.parse().expect("addr") };
        let listen = [
            a("/ip4/127.0.0.1/tcp/4001"),
            a("/ip4/10.31.0.10/tcp/4001"),
            a("/ip4/10.31.0.10/udp/4001/quic-v1"),
        ];
        let relayed = a("/ip4/5.0.0.10/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit");
        // Every observation has the listening port: the router keeps port numbers.
        let keeping = [
            a("/ip4/5.0.0.2/udp/4001/quic-v1"),
            a("/ip4/5.0.0.2/tcp/4001"),
            relayed.clone(),
        ];
        let own = own_tcp(&listen, keeping.iter()).expect("known");
        assert_eq!(own.listen, "10.31.0.10:4001".parse().unwrap());
        assert_eq!(own.external, "5.0.0.2:4001".parse().unwrap());
        assert!(own.keeps_ports());
        // A peer saw another port (libp2p adds the IP with our listening port as a guess):
        // that port is the real mapping, and fresh ports cannot be predicted.
        let changing = [a("/ip4/5.0.0.2/tcp/51234"), a("/ip4/5.0.0.2/tcp/4001")];
        let own = own_tcp(&listen, changing.iter()).expect("known");
        assert_eq!(own.external, "5.0.0.2:51234".parse().unwrap());
        assert!(!own.keeps_ports());
        // Only the newest public IP counts (an older network's observations are stale).
        let moved = [a("/ip4/5.0.0.2/tcp/51234"), a("/ip4/6.0.0.7/tcp/4001")];
        let own = own_tcp(&listen, moved.iter()).expect("known");
        assert_eq!(own.external, "6.0.0.7:4001".parse().unwrap());
        assert!(own.keeps_ports());
        assert_eq!(own_tcp(&listen, keeping[..1].iter()), None, "no TCP address observed");
        assert_eq!(
            own_tcp(&listen[..1], keeping.iter()),
            None,
            "listening on loopback only"
        );
    }

    #[tokio::test]
    async fn a_side_fires_at_its_instant_from_a_fresh_port_and_reports_the_open_connection() {
        // (Two sides meeting by simultaneous open need the two SYNs to cross, which
        // loopback, delivering in the sender's system call, makes a race: that part is
        // measured in namespaces, mesh-bench figure 11.)
        let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let to = target.local_addr().unwrap();
        let own = OwnTcp {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            external: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            keeps: true,
        };
        let side = fresh_side(&own).expect("socket");
        let from = side.from;
        assert_ne!(from.port(), 1, "a fresh port");
        let at = Instant::now() + Duration::from_millis(100);
        let fired = fire(side, to, at);
        let (accepted, peer) = target.accept().await.unwrap();
        assert!(Instant::now() >= at, "not before its instant");
        assert_eq!(peer, from, "from the port it said");
        let stream = fired.await.expect("reported").expect("connected");
        assert_eq!(stream.local_addr().unwrap(), accepted.peer_addr().unwrap());
    }

    #[tokio::test]
    async fn a_side_fired_at_a_closed_port_reports_the_refusal() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let own = OwnTcp {
            listen: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            external: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
            keeps: true,
        };
        let side = fresh_side(&own).expect("socket");
        let err = fire(side, closed, Instant::now()).await.expect("reported").err();
        assert_eq!(err.map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused));
    }
}
