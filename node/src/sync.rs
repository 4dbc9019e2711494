//! Topic catch-up: what gossip did not bring, fetched from the node that published it.
//!
//! Gossip is best effort: a subscriber that was down, cut off, or too busy to take a
//! message when it went by never sees it again from gossipsub. But every node keeps its own
//! agents' publications in its topic log, so a subscriber asks each connected member, for
//! every topic it subscribes to, for the ids of what that member published since the
//! subscription began and since the position in the member's log it last covered
//! (`/agentmesh/sync/1` `Digest`), then fetches the messages it does not have (`Fetch`) and
//! stores them as if gossip had brought them (de-duplicated by id). The position is stored
//! (`sync-1`) only after the messages it covers, so a crash repeats work, never skips it.
//!
//! When: at once when a member connects (after a restart, a partition, a new IP), when a
//! topic message had to be dropped (busy, disk trouble), and every
//! [`Config::topic_sync_every`](crate::config::Config::topic_sync_every) with every connected
//! member. In steady state a round costs one digest per member and topic; a message gossip
//! already brought costs 16 bytes of id, never a second copy.
//!
//! Only a node's own publications are served, so what is fetched is vouched for by the
//! authenticated node it comes from, exactly as a gossip signature would.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use redb::ReadTransaction;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::{MessageId, TopicName, now_ms};
use crate::node::{Node, SyncRequestIn};
use crate::peer_tasks::PeerTasks;
use crate::store::{StoreError, SyncCursor, ops};
use crate::wire::{self, SyncRequest, SyncResponse};

/// Members caught up with at once.
pub const SYNC_PARALLEL: usize = 4;
/// Digest pages per topic in one round with one member (the rest in the next round, soon).
pub const MAX_PAGES_PER_ROUND: usize = 16;
/// Ids fetched per request.
pub const FETCH_CHUNK: usize = 64;
/// Kicks queued for the syncer.
pub const SYNC_QUEUE: usize = 1024;
/// Wait before trying a member again after a failed round.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// Publications are asked for from this long before the subscription began: the time is
/// compared with the publisher's clock, which may be behind ours.
pub const SINCE_MARGIN: Duration = Duration::from_secs(120);
/// Log entries a node scans to answer one digest.
pub const MAX_DIGEST_SCAN: usize = 8192;

/// What one round with one member came to.
enum Round {
    /// Everything caught up.
    Done,
    /// Stopped at the page limit: another round is due at once.
    More,
    /// Stopped at the publisher's allowance (`limits.peer_topic_messages_per_minute`, as for
    /// its gossip): another round once it has refilled.
    Throttled(Duration),
}

/// Catch-up requests from peers answered at once; more wait in the queue.
pub const MAX_SYNC_SERVING: usize = 8;
/// Catch-up requests from peers waiting for an answer; past it they are told to ask again.
pub const SYNC_REQUESTS_QUEUE: usize = 64;

/// Why a catch-up round with a member failed (it is tried again later).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SyncError {
    /// Reading or writing the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request did not reach the member or got no answer.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The member cannot answer now.
    #[error("the node is unavailable: {0}")]
    Unavailable(String),
    /// The member answered with the wrong kind of response.
    #[error("answered a {asked} with {answer}")]
    WrongAnswer {
        /// What was asked: `"digest"` or `"fetch"`.
        asked: &'static str,
        /// What came back.
        answer: &'static str,
    },
    /// A digest over the id limit.
    #[error("digest of {0} ids (limit {limit})", limit = wire::MAX_SYNC_IDS)]
    TooManyIds(usize),
    /// The round's task failed (a panic).
    #[error("{0}")]
    Task(String),
}

/// Runs until cancelled: catches up with members, and answers their catch-up requests.
pub(crate) async fn run(
    node: Node,
    mut kicks: mpsc::Receiver<PeerId>,
    mut requests: mpsc::Receiver<SyncRequestIn>,
    cancel: CancellationToken,
) {
    let serving = Arc::new(tokio::sync::Semaphore::new(MAX_SYNC_SERVING));
    let mut schedule = Schedule::new(node.config().topic_sync_every());
    // A round that fails outright (a panic) still hands back its peer, so the peer is not
    // left marked running, never caught up again.
    let mut tasks: PeerTasks<Result<Round, SyncError>> = PeerTasks::new();
    let mut connected_rx = node.0.net.connected();
    let mut connected: Arc<BTreeSet<PeerId>> = connected_rx.borrow_and_update().clone();
    for p in connected.iter() {
        schedule.due.insert(*p, Instant::now());
    }
    loop {
        let now = Instant::now();
        for p in schedule.take_ready(now, &connected) {
            let n = node.clone();
            tasks.spawn(p, async move { round(&n, p).await });
        }
        let wake = next_wake(&schedule.due, schedule.running.len(), now, schedule.every);
        tokio::select! {
            _ = cancel.cancelled() => break,
            kick = kicks.recv() => match kick {
                Some(p) => schedule.kick(p),
                None => break,
            },
            Some((peer, request, body)) = requests.recv() => {
                // Waits for a free slot: at most MAX_SYNC_SERVING answers at once.
                let Ok(permit) = serving.clone().acquire_owned().await else {
                    break;
                };
                let n = node.clone();
                tokio::spawn(async move {
                    serve(&n, peer, request, body).await;
                    drop(permit);
                });
            },
            changed = connected_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let new = connected_rx.borrow_and_update().clone();
                schedule.connected_changed(&connected, &new);
                connected = new;
            },
            Some((peer, done)) = tasks.join_next(), if !tasks.is_empty() => {
                let outcome = done.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "topic catch-up task failed");
                    Err(SyncError::Task(e.to_string()))
                });
                schedule.round_ended(peer, outcome, &connected);
            },
            _ = tokio::time::sleep_until(wake) => {},
        }
    }
    tasks.shutdown().await;
}

/// When each member is caught up with next, and which are being caught up with now.
struct Schedule {
    /// The regular interval between rounds with a member.
    every: Duration,
    due: HashMap<PeerId, Instant>,
    running: HashSet<PeerId>,
    /// Members to catch up with again as soon as their running round ends.
    again: HashSet<PeerId>,
    /// Rounds failed in a row per member (it is asked less and less often).
    failures: HashMap<PeerId, u32>,
}

impl Schedule {
    fn new(every: Duration) -> Self {
        Schedule {
            every,
            due: HashMap::new(),
            running: HashSet::new(),
            again: HashSet::new(),
            failures: HashMap::new(),
        }
    }

    /// The connected members whose round is due, as many as free slots allow, marked
    /// running (due members no longer connected are dropped).
    fn take_ready(&mut self, now: Instant, connected: &BTreeSet<PeerId>) -> Vec<PeerId> {
        let ready: Vec<PeerId> = self
            .due
            .iter()
            .filter(|(p, t)| **t <= now && !self.running.contains(*p))
            .map(|(p, _)| *p)
            .take(SYNC_PARALLEL.saturating_sub(self.running.len()))
            .collect();
        let mut start = Vec::new();
        for p in ready {
            self.due.remove(&p);
            if !connected.contains(&p) {
                continue;
            }
            self.running.insert(p);
            start.push(p);
        }
        start
    }

    /// Something new for `p` (a dropped topic message): a round at once, or right after
    /// the running one.
    fn kick(&mut self, p: PeerId) {
        if self.running.contains(&p) {
            self.again.insert(p);
        } else {
            self.due.insert(p, Instant::now());
        }
    }

    fn connected_changed(&mut self, old: &BTreeSet<PeerId>, new: &BTreeSet<PeerId>) {
        for p in new.difference(old) {
            // A member (re)connected: whatever it published meanwhile, now.
            self.kick(*p);
        }
        for p in old.difference(new) {
            self.due.remove(p);
            self.again.remove(p);
            self.failures.remove(p);
        }
    }

    /// When `peer`'s next round is due, after one ended with `outcome`.
    fn round_ended(&mut self, peer: PeerId, outcome: Result<Round, SyncError>, connected: &BTreeSet<PeerId>) {
        self.running.remove(&peer);
        if !connected.contains(&peer) {
            self.again.remove(&peer);
            self.failures.remove(&peer);
            return;
        }
        if outcome.is_ok() {
            self.failures.remove(&peer);
        }
        let next = match outcome {
            Ok(Round::More) => Instant::now(),
            Ok(Round::Throttled(wait)) => Instant::now() + wait,
            Ok(Round::Done) if self.again.remove(&peer) => Instant::now(),
            Ok(Round::Done) => Instant::now() + self.every,
            Err(why) => {
                let failed = self.failures.entry(peer).or_default();
                *failed += 1;
                let wait = retry_wait(*failed, self.every);
                tracing::debug!(%peer, %why, ?wait, "topic catch-up failed; will retry");
                self.again.remove(&peer);
                Instant::now() + wait
            }
        };
        self.due.insert(peer, next);
    }
}

/// When the scheduler looks again by itself: at the earliest due round if a slot is free
/// (with every slot taken, a round ending wakes it; a due time already past must not).
fn next_wake(due: &HashMap<PeerId, Instant>, running: usize, now: Instant, every: Duration) -> Instant {
    let idle = now + every;
    if running >= SYNC_PARALLEL {
        return idle;
    }
    due.values().min().copied().unwrap_or(idle)
}

/// How long after `failures` failed rounds in a row a member is asked again: from
/// [`RETRY_AFTER`] doubling up to the regular interval.
fn retry_wait(failures: u32, every: Duration) -> Duration {
    let first = RETRY_AFTER.min(every);
    first.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(every)
}

/// One catch-up round with `peer`: every subscribed topic, up to the page limit each.
async fn round(node: &Node, peer: PeerId) -> Result<Round, SyncError> {
    let topics = node.0.store.read(ops::subscribed_topics).await?;
    let mut outcome = Round::Done;
    for (topic, since_ms) in topics {
        match topic_round(node, peer, &topic, since_ms).await? {
            Round::Done => {}
            Round::More => outcome = Round::More,
            Round::Throttled(wait) => return Ok(Round::Throttled(wait)),
        }
    }
    Ok(outcome)
}

async fn topic_round(node: &Node, peer: PeerId, topic: &TopicName, since_ms: u64) -> Result<Round, SyncError> {
    let store = &node.0.store;
    let (p, t) = (peer, topic.clone());
    let mut cursor = store.read(move |r| ops::sync_cursor(r, &p, &t)).await?;
    for _ in 0..MAX_PAGES_PER_ROUND {
        let request = SyncRequest::Digest {
            topic: topic.clone(),
            log: cursor.log,
            after: cursor.after,
            since_ms: since_ms.saturating_sub(SINCE_MARGIN.as_millis() as u64),
        };
        let (log, ids, next, more) = match node.0.net.sync(peer, request).await? {
            SyncResponse::Digest { log, ids, next, more } => (log, ids, next, more),
            SyncResponse::Unavailable(why) => return Err(SyncError::Unavailable(why)),
            SyncResponse::Messages(_) => {
                return Err(SyncError::WrongAnswer {
                    asked: "digest",
                    answer: "messages",
                });
            }
        };
        if ids.len() > wire::MAX_SYNC_IDS {
            return Err(SyncError::TooManyIds(ids.len()));
        }
        let missing = store.read(move |r| ops::unknown_ids(r, &ids)).await?;
        for chunk in missing.chunks(FETCH_CHUNK) {
            // Within the publisher's allowance; the position is not moved past what was
            // not fetched (the next round asks for the same page again).
            let allowed = {
                let mut rate = node.0.net.topic_rate().lock().unwrap_or_else(|e| e.into_inner());
                rate.take_up_to(&peer, chunk.len() as u32, std::time::Instant::now())
            };
            match allowed {
                Ok(n) if n as usize >= chunk.len() => fetch(node, peer, topic, chunk).await?,
                Ok(n) => {
                    fetch(node, peer, topic, &chunk[..n as usize]).await?;
                    return Ok(Round::Throttled(RETRY_AFTER));
                }
                Err(wait) => return Ok(Round::Throttled(wait.max(Duration::from_millis(100)))),
            }
        }
        cursor = SyncCursor { log, after: next };
        let (p, t) = (peer, topic.clone());
        store
            .write("catch-up", move |tx| ops::set_sync_cursor(tx, &p, &t, cursor))
            .await?;
        if !more {
            return Ok(Round::Done);
        }
    }
    Ok(Round::More)
}

/// Fetches `ids` from `peer` (in as many answers as its size cap needs) and stores them.
async fn fetch(node: &Node, peer: PeerId, topic: &TopicName, ids: &[MessageId]) -> Result<(), SyncError> {
    let mut want: Vec<MessageId> = ids.to_vec();
    let max_text = node.config().limits.max_topic_message_bytes;
    while !want.is_empty() {
        let request = SyncRequest::Fetch {
            topic: topic.clone(),
            ids: want.clone(),
        };
        let got = match node.0.net.sync(peer, request).await? {
            SyncResponse::Messages(m) => m,
            SyncResponse::Unavailable(why) => return Err(SyncError::Unavailable(why)),
            SyncResponse::Digest { .. } => {
                return Err(SyncError::WrongAnswer {
                    asked: "fetch",
                    answer: "a digest",
                });
            }
        };
        let asked: HashSet<MessageId> = want.iter().copied().collect();
        let mut keep = Vec::new();
        let mut answered = HashSet::new();
        for env in got {
            if !asked.contains(&env.id) || !answered.insert(env.id) {
                continue;
            }
            // Checked as gossip is: right topic, not empty, within our limit. A message we
            // refuse is not asked again (its id counts as answered).
            if !env.acceptable(topic, max_text) {
                tracing::debug!(%peer, id = %env.id, "refusing a caught-up topic message");
                crate::metrics::Metrics::count(&node.0.metrics.topic_dropped, "rejected");
                continue;
            }
            keep.push(env);
        }
        if answered.is_empty() {
            // Gone from its log (or never its own): nothing more to get.
            return Ok(());
        }
        node.store_synced(peer, keep, now_ms()).await?;
        want.retain(|id| !answered.contains(id));
    }
    Ok(())
}

/// This node's answer to a catch-up request from a subscriber: the ids of what its agents
/// published on the topic after a position of its log ([`SyncRequest::Digest`], at most
/// [`wire::MAX_SYNC_IDS`], scanning at most [`MAX_DIGEST_SCAN`] log entries), or those
/// messages ([`SyncRequest::Fetch`], at most [`wire::SYNC_FETCH_TEXT_BYTES`] of text, at
/// least one message).
pub fn answer(r: &ReadTransaction, request: SyncRequest) -> Result<SyncResponse, StoreError> {
    match request {
        SyncRequest::Digest {
            topic,
            log,
            after,
            since_ms,
        } => {
            let mine = ops::log_id(r)?;
            // Positions in another log (our store was replaced) mean nothing here.
            let after = if log == mine { after } else { 0 };
            let (ids, next, more) =
                ops::own_publications(r, &topic, after, since_ms, wire::MAX_SYNC_IDS, MAX_DIGEST_SCAN)?;
            Ok(SyncResponse::Digest {
                log: mine,
                ids,
                next,
                more,
            })
        }
        SyncRequest::Fetch { topic, mut ids } => {
            ids.truncate(wire::MAX_SYNC_IDS);
            ops::own_publications_by_id(r, &topic, &ids, wire::SYNC_FETCH_TEXT_BYTES).map(SyncResponse::Messages)
        }
    }
}

/// Answers one catch-up request from `peer`.
async fn serve(node: &Node, peer: PeerId, request: libp2p::request_response::InboundRequestId, body: SyncRequest) {
    let response = node.0.store.read(move |r| answer(r, body)).await;
    let response = response.unwrap_or_else(|e| {
        tracing::warn!(%peer, error = %e, "cannot answer a catch-up request");
        SyncResponse::Unavailable(e.to_string())
    });
    let _ = node.0.net.respond_sync(request, response).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_every_slot_taken_the_scheduler_waits_for_a_round_to_end() {
        let now = Instant::now();
        let every = Duration::from_secs(60);
        let due: HashMap<PeerId, Instant> = (0..3).map(|_| (PeerId::random(), now)).collect();
        // Slots free: the due rounds start now.
        assert_eq!(next_wake(&due, SYNC_PARALLEL - 1, now, every), now);
        // Every slot taken: no wake-up for rounds that cannot start (a busy loop).
        assert_eq!(next_wake(&due, SYNC_PARALLEL, now, every), now + every);
        assert_eq!(next_wake(&HashMap::new(), 0, now, every), now + every);
    }

    #[test]
    fn failed_rounds_back_off_up_to_the_regular_interval() {
        let every = Duration::from_secs(60);
        let waits: Vec<u64> = (1..=8).map(|n| retry_wait(n, every).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_wait(u32::MAX, every), every);
        // A short interval caps the first wait too.
        assert_eq!(retry_wait(1, Duration::from_secs(1)), Duration::from_secs(1));
    }
}
