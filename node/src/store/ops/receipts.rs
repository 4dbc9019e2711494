//! Read receipts: queued when a local agent is first shown a direct message, sent to the
//! sending node by the courier, and recorded on the sender's outbox entry.

use std::collections::BTreeSet;

use super::dm::update_outbox;
use super::*;
use crate::wire::ReadReceipt;

/// What showing messages to their recipients here sets off, collected over one store write:
/// a receipt queued for each remote sending node (when this node sends receipts), the
/// outbox entries of local senders marked read at once.
#[derive(Debug)]
pub struct Shown {
    me: PeerId,
    send: bool,
    at_ms: u64,
    /// Nodes a receipt was queued for (the courier is kicked for each).
    pub queued: BTreeSet<PeerId>,
    /// Outbox entries of this node's own agents that became read.
    pub read_here: Vec<OutboxEntry>,
}

impl Shown {
    /// For a write at `at_ms` on node `me`; `send`: whether receipts go to other nodes
    /// (`delivery.read_receipts`). Local senders always learn it.
    pub fn new(me: PeerId, send: bool, at_ms: u64) -> Self {
        Self {
            me,
            send,
            at_ms,
            queued: BTreeSet::new(),
            read_here: Vec::new(),
        }
    }

    /// `e` was shown to its recipient for the first time (it left `New`).
    pub(super) fn first_shown(&mut self, txn: &WriteTransaction, e: &InboxEntry) -> Result<(), StoreError> {
        if e.channel != Channel::Direct {
            return Ok(());
        }
        let receipt = ReadReceipt {
            id: e.id,
            at_ms: self.at_ms,
        };
        if e.from.node == self.me {
            if let (_, Some(entry)) = record_read(txn, self.me, receipt, self.at_ms)? {
                self.read_here.push(entry);
            }
        } else if self.send {
            let seq = next_seq(txn)?;
            let rec = encode(&PendingReceipt {
                id: e.id,
                at_ms: self.at_ms,
            })?;
            txn.open_table(RECEIPTS)?
                .insert((e.from.node.to_bytes().as_slice(), seq), rec.as_slice())?;
            self.queued.insert(e.from.node);
        }
        Ok(())
    }
}

/// A receipt from node `from` for one of our messages: recorded on its outbox entry if the
/// message was sent to `from` (`Stored`, with the entry as it is now), `Duplicate` if it was
/// recorded before, `Rejected` if no message of ours to `from` has that id. A receipt for a
/// message still pending or given up counts as its delivery too (the acknowledgement was
/// lost, or came after the time to live).
pub fn record_read(
    txn: &WriteTransaction,
    from: PeerId,
    receipt: ReadReceipt,
    now: u64,
) -> Result<(Outcome, Option<OutboxEntry>), StoreError> {
    let seq = txn
        .open_table(OUTBOX_IDS)?
        .get(receipt.id.0.as_slice())?
        .map(|v| v.value());
    let entry: Option<OutboxEntry> = match seq {
        Some(seq) => {
            let t = txn.open_table(OUTBOX)?;
            let v = t.get(seq)?;
            v.map(|v| decode("outbox", v.value())).transpose()?
        }
        None => None,
    };
    let Some(entry) = entry.filter(|e| e.to_node == from) else {
        return Ok((
            Outcome::Rejected(Rejection::Invalid("no message of ours to your node has this id".into())),
            None,
        ));
    };
    if matches!(entry.state, OutState::Read { .. }) {
        return Ok((Outcome::Duplicate, None));
    }
    let changed = update_outbox(txn, entry.seq, |e| {
        let delivered_ms = match e.state {
            OutState::Delivered { at_ms } => at_ms,
            _ => now,
        };
        e.state = OutState::Read {
            delivered_ms,
            at_ms: receipt.at_ms,
        };
    })?;
    Ok((Outcome::Stored, changed))
}

/// What [`record_reads`] returns: one outcome per receipt, and the outbox entries that
/// became read.
pub type Recorded = (Vec<(MessageId, Outcome)>, Vec<OutboxEntry>);

/// Applies a batch of receipts from `from`.
pub fn record_reads(
    txn: &WriteTransaction,
    from: PeerId,
    receipts: &[ReadReceipt],
    now: u64,
) -> Result<Recorded, StoreError> {
    let mut outcomes = Vec::with_capacity(receipts.len());
    let mut read = Vec::new();
    for r in receipts {
        let (outcome, entry) = record_read(txn, from, *r, now)?;
        outcomes.push((r.id, outcome));
        read.extend(entry);
    }
    Ok((outcomes, read))
}

/// The oldest receipts waiting for `peer`, with their keys, at most `limit`.
pub fn pending_receipts(
    r: &ReadTransaction,
    peer: &PeerId,
    limit: usize,
) -> Result<Vec<(u64, PendingReceipt)>, StoreError> {
    let t = r.open_table(RECEIPTS)?;
    let key = peer.to_bytes();
    let mut out = Vec::new();
    for row in t.range((key.as_slice(), 0u64)..=(key.as_slice(), u64::MAX))? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = row?;
        out.push((k.value().1, decode("receipts", v.value())?));
    }
    Ok(out)
}

/// Receipts `peer` answered (whatever the answer): not sent again.
pub fn drop_receipts(txn: &WriteTransaction, peer: &PeerId, seqs: &[u64]) -> Result<(), StoreError> {
    let mut t = txn.open_table(RECEIPTS)?;
    let key = peer.to_bytes();
    for &seq in seqs {
        t.remove((key.as_slice(), seq))?;
    }
    Ok(())
}

/// Nodes with receipts waiting.
pub fn receipt_peers(r: &ReadTransaction) -> Result<BTreeSet<PeerId>, StoreError> {
    let t = r.open_table(RECEIPTS)?;
    let mut out = BTreeSet::new();
    let mut last: Option<Vec<u8>> = None;
    for row in t.iter()? {
        let (k, _) = row?;
        let bytes = k.value().0;
        if last.as_deref() != Some(bytes) {
            if let Ok(p) = PeerId::from_bytes(bytes) {
                out.insert(p);
            }
            last = Some(bytes.to_vec());
        }
    }
    Ok(out)
}

/// Drops receipts older than `ttl_ms` that never reached their node; returns how many.
pub fn expire_receipts(txn: &WriteTransaction, now: u64, ttl_ms: u64) -> Result<usize, StoreError> {
    let mut old: Vec<(Vec<u8>, u64)> = Vec::new();
    {
        let t = txn.open_table(RECEIPTS)?;
        for row in t.iter()? {
            let (k, v) = row?;
            let rec: PendingReceipt = decode("receipts", v.value())?;
            if rec.at_ms.saturating_add(ttl_ms) <= now {
                let (p, seq) = k.value();
                old.push((p.to_vec(), seq));
            }
        }
    }
    let mut t = txn.open_table(RECEIPTS)?;
    for (p, seq) in &old {
        t.remove((p.as_slice(), *seq))?;
    }
    Ok(old.len())
}
