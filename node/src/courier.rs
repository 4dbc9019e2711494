//! The courier: delivers the outbox.
//!
//! Per recipient node, at most one delivery request is in flight, carrying the oldest
//! pending messages in send order. That gives per-sender ordering at the recipient and
//! batching under load (one request and one commit on each side for many messages). A new
//! message, a new connection or a retry timer starts a delivery; a failure backs off
//! exponentially (`delivery.retry_min` doubling up to `delivery.retry_max`) and dials the
//! node if it is not connected. Pending messages past the TTL become dead letters.
//!
//! Read receipts for a node travel the same way, after its messages: one request of at most
//! [`MAX_RECEIPTS`] once no message is pending for it; they are dropped once the node
//! answered them, or after the TTL.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ids::now_ms;
use crate::node::Node;
use crate::peer_tasks::PeerTasks;
use crate::store::ops;
use crate::wire::{DmRequest, DmResponse, MAX_RECEIPTS, ReadReceipt};

/// Longest time between two looks for expired messages (more often with a short TTL).
pub const SWEEP_MAX: Duration = Duration::from_secs(10);

/// Most text bytes in one delivery request (at least one message is always sent).
pub const MAX_BATCH_TEXT_BYTES: usize = 1024 * 1024;

#[derive(Default)]
struct PeerDelivery {
    in_flight: bool,
    again: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

enum Outcome {
    Empty,
    Sent { more: bool },
    Failed(String),
}

fn backoff(node: &Node, failures: u32) -> Duration {
    let d = &node.config().delivery;
    let exp = failures.saturating_sub(1).min(20);
    let t = d.retry_min.saturating_mul(1u32 << exp);
    t.min(d.retry_max)
}

/// Runs until cancelled.
pub(crate) async fn run(node: Node, mut kicks: mpsc::Receiver<PeerId>, cancel: CancellationToken) {
    let mut peers: HashMap<PeerId, PeerDelivery> = HashMap::new();
    // A delivery that fails outright (a panic) still hands back its peer, whose mail is
    // then retried like after any failure rather than left in flight for good.
    let mut tasks: PeerTasks<Outcome> = PeerTasks::new();
    let mut connected_rx = node.0.net.connected();
    let mut connected: Arc<BTreeSet<PeerId>> = connected_rx.borrow_and_update().clone();
    let ttl = node.config().delivery.ttl;
    let sweep_every = (ttl / 10).clamp(Duration::from_secs(1), SWEEP_MAX);
    let mut next_sweep = Instant::now();
    load_pending(&node, &mut peers).await;

    loop {
        let now = Instant::now();
        if now >= next_sweep {
            sweep(&node).await;
            next_sweep = now + sweep_every;
        }
        // Start whatever is due.
        let due: Vec<PeerId> = peers
            .iter()
            .filter(|(_, s)| !s.in_flight && s.retry_at.is_some_and(|t| t <= now))
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            start(&node, &mut peers, &mut tasks, &connected, p);
        }
        let wake = peers
            .values()
            .filter(|s| !s.in_flight)
            .filter_map(|s| s.retry_at)
            .min()
            .map_or(next_sweep, |t| t.min(next_sweep));

        tokio::select! {
            _ = cancel.cancelled() => break,
            kick = kicks.recv() => match kick {
                Some(p) => kicked(&mut peers, &connected, p),
                None => break,
            },
            changed = connected_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let new = connected_rx.borrow_and_update().clone();
                for p in new.difference(&connected) {
                    connected_now(&mut peers, *p);
                }
                connected = new;
            },
            Some((peer, done)) = tasks.join_next(), if !tasks.is_empty() => {
                let outcome = done.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "delivery task failed");
                    Outcome::Failed(e.to_string())
                });
                delivery_ended(&node, &mut peers, peer, outcome);
            },
            _ = tokio::time::sleep_until(wake) => {},
        }
    }
    // Stopping: no delivery starts any more; those in flight get their answers and are
    // settled, so the recipient is not sent them again after the next start.
    if !tasks.is_empty() {
        tracing::debug!(count = tasks.len(), "finishing deliveries in flight");
    }
    while tasks.join_next().await.is_some() {}
}

/// Everything pending from earlier runs, due at once.
async fn load_pending(node: &Node, peers: &mut HashMap<PeerId, PeerDelivery>) {
    let waiting = node
        .0
        .store
        .read(|r| {
            let mut peers = ops::receipt_peers(r)?;
            peers.extend(ops::pending_peers(r)?.into_iter().map(|(p, _)| p));
            Ok(peers)
        })
        .await;
    match waiting {
        Ok(list) => {
            for p in list {
                peers.entry(p).or_default().retry_at = Some(Instant::now());
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
    }
}

/// New mail for `p`: delivered at once if connected (or not tried yet), else on its
/// backoff; after the delivery in flight if there is one.
fn kicked(peers: &mut HashMap<PeerId, PeerDelivery>, connected: &BTreeSet<PeerId>, p: PeerId) {
    let s = peers.entry(p).or_default();
    if s.in_flight {
        s.again = true;
    } else if connected.contains(&p) || s.retry_at.is_none() {
        s.retry_at = Some(Instant::now());
    }
}

/// A fresh connection to `p`: try at once, forget the backoff.
fn connected_now(peers: &mut HashMap<PeerId, PeerDelivery>, p: PeerId) {
    let s = peers.entry(p).or_default();
    s.failures = 0;
    if s.in_flight {
        s.again = true;
    } else {
        s.retry_at = Some(Instant::now());
    }
}

/// What follows a delivery to `peer`: the next one at once (more mail), none (peer
/// forgotten), or a retry after the backoff.
fn delivery_ended(node: &Node, peers: &mut HashMap<PeerId, PeerDelivery>, peer: PeerId, outcome: Outcome) {
    let s = peers.entry(peer).or_default();
    s.in_flight = false;
    match outcome {
        Outcome::Empty => {
            s.failures = 0;
            if std::mem::take(&mut s.again) {
                s.retry_at = Some(Instant::now());
            } else {
                peers.remove(&peer);
            }
        }
        Outcome::Sent { more } => {
            s.failures = 0;
            let again = std::mem::take(&mut s.again);
            s.retry_at = (more || again).then(Instant::now);
            if s.retry_at.is_none() {
                peers.remove(&peer);
            }
        }
        Outcome::Failed(why) => {
            s.failures += 1;
            s.again = false;
            let wait = backoff(node, s.failures);
            tracing::debug!(%peer, %why, ?wait, "delivery failed; will retry");
            s.retry_at = Some(Instant::now() + wait);
        }
    }
}

fn start(
    node: &Node,
    peers: &mut HashMap<PeerId, PeerDelivery>,
    tasks: &mut PeerTasks<Outcome>,
    connected: &BTreeSet<PeerId>,
    peer: PeerId,
) {
    let s = peers.entry(peer).or_default();
    if !connected.contains(&peer) {
        // Not connected: dial, and look again after the backoff (a new connection
        // starts delivery at once anyway).
        s.failures += 1;
        s.retry_at = Some(Instant::now() + backoff(node, s.failures));
        let net = node.0.net.clone();
        tokio::spawn(async move {
            let _ = net.dial_peer(peer).await;
        });
        return;
    }
    s.in_flight = true;
    s.again = false;
    s.retry_at = None;
    let node = node.clone();
    tasks.spawn(peer, async move { deliver(&node, peer).await });
}

async fn sweep(node: &Node) {
    let now = now_ms();
    let ttl = node.config().delivery.ttl.as_millis() as u64;
    match node
        .0
        .store
        .write("expire", move |t| {
            let dead = ops::expire(t, now, ttl)?;
            ops::expire_topic_pending(t, now, ttl)?;
            let receipts = ops::expire_receipts(t, now, ttl)?;
            if receipts > 0 {
                tracing::info!(count = receipts, "read receipts expired unsent");
            }
            Ok(dead)
        })
        .await
    {
        Ok(dead) => {
            if !dead.is_empty() {
                tracing::info!(count = dead.len(), "messages expired undelivered (dead letters)");
            }
            node.emit_settled(&dead);
        }
        Err(e) => tracing::warn!(error = %e, "cannot expire old messages"),
    }
}

/// Sends the next batch of `peer`'s outbox and settles what it answers. Logged under a
/// `deliver` span naming the peer and the message ids.
#[tracing::instrument(name = "deliver", level = "debug", skip_all, fields(%peer, ids = tracing::field::Empty))]
async fn deliver(node: &Node, peer: PeerId) -> Outcome {
    let limit = node.config().limits.max_batch_messages;
    let ttl = node.config().delivery.ttl.as_millis() as u64;
    // On this thread: a bounded read of a few pages, not worth a hop to the blocking pool
    // on the latency path of every message.
    let mut batch = match node.0.store.read_now(|r| ops::pending_batch(r, &peer, limit)) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let now = now_ms();
    if batch.iter().any(|e| e.created_ms.saturating_add(ttl) <= now) {
        sweep(node).await;
        batch.retain(|e| e.created_ms.saturating_add(ttl) > now);
    }
    if batch.is_empty() {
        return deliver_receipts(node, peer).await;
    }
    let full = batch.len() >= limit;
    let mut bytes = 0;
    let mut take = 0;
    for e in &batch {
        if take > 0 && bytes + e.msg.text.len() > MAX_BATCH_TEXT_BYTES {
            break;
        }
        bytes += e.msg.text.len();
        take += 1;
    }
    let more = full || take < batch.len();
    batch.truncate(take);
    let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
    tracing::Span::current().record(
        "ids",
        tracing::field::display(crate::ids::id_list(batch.iter().map(|e| e.msg.id))),
    );
    let mut answered = 0;
    let request = DmRequest::Deliver(batch.iter().map(|e| e.msg.clone()).collect());
    let failure = match node.0.net.send_dm(peer, request).await {
        Ok(DmResponse::Outcomes(outcomes)) => {
            let by_id: HashMap<_, _> = batch.iter().map(|e| (e.msg.id, e.seq)).collect();
            let pairs: Vec<(u64, crate::wire::Outcome)> = outcomes
                .into_iter()
                .filter_map(|(id, o)| by_id.get(&id).map(|seq| (*seq, o)))
                .collect();
            let complete = pairs.len() == batch.len();
            answered = pairs.len();
            let now = now_ms();
            match node.0.store.write("settle", move |t| ops::settle(t, pairs, now)).await {
                Ok(settled) => node.emit_settled(&settled),
                // The recipient has them; a retry will be answered "duplicate".
                Err(e) => return Outcome::Failed(format!("cannot record delivery: {e}")),
            }
            if complete {
                // Receipts for the node go once its messages are through.
                let receipts = !more
                    && node
                        .0
                        .store
                        .read_now(|r| ops::pending_receipts(r, &peer, 1))
                        .is_ok_and(|r| !r.is_empty());
                return Outcome::Sent { more: more || receipts };
            }
            "the recipient node answered for only part of the batch".to_string()
        }
        Ok(DmResponse::Unavailable(why)) => format!("recipient node unavailable: {why}"),
        Err(e) => e.to_string(),
    };
    node.metrics()
        .dm_retried
        .inc_by(seqs.len().saturating_sub(answered) as u64);
    let why = failure.clone();
    if let Err(e) = node
        .0
        .store
        .write("attempt", move |t| ops::note_failure(t, &seqs, &why))
        .await
    {
        tracing::warn!(error = %e, "cannot record a failed attempt");
    }
    Outcome::Failed(failure)
}

/// Sends the oldest read receipts waiting for `peer` (when no message is) and drops those it
/// answered.
async fn deliver_receipts(node: &Node, peer: PeerId) -> Outcome {
    let batch = match node.0.store.read_now(|r| ops::pending_receipts(r, &peer, MAX_RECEIPTS)) {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if batch.is_empty() {
        return Outcome::Empty;
    }
    let more = batch.len() >= MAX_RECEIPTS;
    let receipts: Vec<ReadReceipt> = batch
        .iter()
        .map(|(_, r)| ReadReceipt {
            id: r.id,
            at_ms: r.at_ms,
        })
        .collect();
    match node.0.net.send_dm(peer, DmRequest::Read(receipts)).await {
        Ok(DmResponse::Outcomes(outcomes)) => {
            // Whatever the answer (recorded, known, or not a message it had from us), a
            // receipt answered is not sent again.
            let by_id: HashMap<_, _> = batch.iter().map(|(seq, r)| (r.id, *seq)).collect();
            let seqs: Vec<u64> = outcomes.iter().filter_map(|(id, _)| by_id.get(id).copied()).collect();
            let complete = seqs.len() == batch.len();
            if let Err(e) = node
                .0
                .store
                .write("receipts sent", move |t| ops::drop_receipts(t, &peer, &seqs))
                .await
            {
                return Outcome::Failed(format!("cannot record sent receipts: {e}"));
            }
            if complete {
                Outcome::Sent { more }
            } else {
                Outcome::Failed("the node answered for only part of the receipts".into())
            }
        }
        Ok(DmResponse::Unavailable(why)) => Outcome::Failed(format!("node unavailable for receipts: {why}")),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
