//! Store operations. Write operations take the group's `WriteTransaction` and follow the
//! rule of the module: check first, then write. Read operations take a snapshot.

use libp2p::PeerId;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::tables::*;
use super::types::*;
use crate::ids::{AgentName, MessageId, NodeName, TopicName};
use crate::wire::{Outcome, Rejection, TopicEnvelope, WireMessage};

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Decode {
        table: "encode",
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Decode {
        table,
        message: e.to_string(),
    })
}

/// Allocates the next node-wide sequence number.
fn next_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let cur = meta
        .get("seq")?
        .map(|v| u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let next = cur + 1;
    meta.insert("seq", next.to_le_bytes().as_slice())?;
    Ok(next)
}

// ---------------------------------------------------------------- agents

/// Writes (creates or replaces) a local agent.
pub fn put_agent(txn: &WriteTransaction, rec: &AgentRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(AGENTS)?.insert(rec.name.as_str(), bytes.as_slice())?;
    Ok(())
}

/// Returns the agent, creating it with `kind` if it does not exist; refreshes `last_seen`.
pub fn ensure_agent(txn: &WriteTransaction, name: &AgentName, kind: &str, now: u64) -> Result<AgentRecord, StoreError> {
    Ok(ensure_agent_new(txn, name, kind, now)?.0)
}

/// Like [`ensure_agent`], also saying whether the agent was created now.
pub fn ensure_agent_new(
    txn: &WriteTransaction,
    name: &AgentName,
    kind: &str,
    now: u64,
) -> Result<(AgentRecord, bool), StoreError> {
    let existing = {
        let t = txn.open_table(AGENTS)?;
        let v = t.get(name.as_str())?;
        match v {
            Some(v) => Some(decode::<AgentRecord>("agents", v.value())?),
            None => None,
        }
    };
    let created = existing.is_none();
    let rec = match existing {
        Some(mut r) => {
            r.last_seen_ms = now;
            r
        }
        None => AgentRecord {
            name: name.clone(),
            kind: kind.to_string(),
            cwd: None,
            repo: None,
            branch: None,
            summary: None,
            created_ms: now,
            last_seen_ms: now,
        },
    };
    put_agent(txn, &rec)?;
    Ok((rec, created))
}

/// One local agent.
pub fn agent(r: &ReadTransaction, name: &str) -> Result<Option<AgentRecord>, StoreError> {
    let t = r.open_table(AGENTS)?;
    let v = t.get(name)?;
    v.map(|v| decode("agents", v.value())).transpose()
}

/// All local agents, by name.
pub fn agents(r: &ReadTransaction) -> Result<Vec<AgentRecord>, StoreError> {
    let t = r.open_table(AGENTS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode("agents", v.value())?);
    }
    Ok(out)
}

/// Whether a local agent exists.
pub fn agent_exists(txn: &WriteTransaction, name: &AgentName) -> Result<bool, StoreError> {
    Ok(txn.open_table(AGENTS)?.get(name.as_str())?.is_some())
}

// ---------------------------------------------------------------- direct messages

fn insert_inbox(txn: &WriteTransaction, entry: &InboxEntry) -> Result<(), StoreError> {
    let bytes = encode(entry)?;
    txn.open_table(INBOX)?
        .insert((entry.agent.as_str(), entry.seq), bytes.as_slice())?;
    if entry.state != ReadState::Read {
        txn.open_table(UNREAD)?.insert((entry.agent.as_str(), entry.seq), ())?;
    }
    Ok(())
}

fn insert_outbox(txn: &WriteTransaction, e: &OutboxEntry) -> Result<(), StoreError> {
    let bytes = encode(e)?;
    txn.open_table(OUTBOX)?.insert(e.seq, bytes.as_slice())?;
    txn.open_table(OUTBOX_IDS)?.insert(e.msg.id.0.as_slice(), e.seq)?;
    Ok(())
}

/// Whether `id` names a message this store already has (sent, published or received).
pub fn id_known(r: &ReadTransaction, id: &MessageId) -> Result<bool, StoreError> {
    Ok(r.open_table(OUTBOX_IDS)?.get(id.0.as_slice())?.is_some()
        || r.open_table(RECEIVED)?.get(id.0.as_slice())?.is_some())
}

/// Before a message with a client-chosen id is written: `None` if the id is free, the
/// stored entry if this very message (same sender, recipient, text and reply) was sent
/// already (a repeated request), [`StoreError::IdTaken`] if the id names something else.
pub fn sent_before(
    txn: &WriteTransaction,
    msg: &WireMessage,
    to_node: &PeerId,
) -> Result<Option<OutboxEntry>, StoreError> {
    let seq = txn.open_table(OUTBOX_IDS)?.get(msg.id.0.as_slice())?.map(|v| v.value());
    let Some(seq) = seq else {
        if txn.open_table(RECEIVED)?.get(msg.id.0.as_slice())?.is_some() {
            return Err(StoreError::IdTaken(msg.id.to_string()));
        }
        return Ok(None);
    };
    let entry: OutboxEntry = {
        let t = txn.open_table(OUTBOX)?;
        let v = t.get(seq)?;
        match v {
            Some(v) => decode("outbox", v.value())?,
            None => return Err(StoreError::IdTaken(msg.id.to_string())),
        }
    };
    let same = entry.msg.from == msg.from
        && entry.msg.to == msg.to
        && entry.to_node == *to_node
        && entry.msg.text == msg.text
        && entry.msg.reply_to == msg.reply_to;
    if same {
        Ok(Some(entry))
    } else {
        Err(StoreError::IdTaken(msg.id.to_string()))
    }
}

/// Like [`sent_before`] for a topic message: the stored record if this very publication
/// (same agent, topic, text and reply) is stored already.
pub fn published_before(txn: &WriteTransaction, env: &TopicEnvelope) -> Result<Option<TopicRecord>, StoreError> {
    if txn.open_table(OUTBOX_IDS)?.get(env.id.0.as_slice())?.is_some() {
        return Err(StoreError::IdTaken(env.id.to_string()));
    }
    let Some(seq) = txn.open_table(RECEIVED)?.get(env.id.0.as_slice())?.map(|v| v.value()) else {
        return Ok(None);
    };
    let rec: Option<TopicRecord> = {
        let t = txn.open_table(TOPIC_LOG)?;
        let v = t.get((env.topic.as_str(), seq))?;
        v.map(|v| decode("topic-log", v.value())).transpose()?
    };
    match rec {
        Some(r)
            if r.local
                && r.envelope.from == env.from
                && r.envelope.text == env.text
                && r.envelope.reply_to == env.reply_to =>
        {
            Ok(Some(r))
        }
        _ => Err(StoreError::IdTaken(env.id.to_string())),
    }
}

/// Writes a message for a remote recipient to the outbox, pending delivery.
pub fn enqueue(
    txn: &WriteTransaction,
    msg: WireMessage,
    to_node: PeerId,
    to_node_name: Option<NodeName>,
    now: u64,
) -> Result<OutboxEntry, StoreError> {
    let seq = next_seq(txn)?;
    let entry = OutboxEntry {
        seq,
        msg,
        to_node,
        to_node_name,
        created_ms: now,
        state: OutState::Pending,
        attempts: 0,
        last_error: None,
    };
    insert_outbox(txn, &entry)?;
    txn.open_table(PENDING)?
        .insert((to_node.to_bytes().as_slice(), seq), ())?;
    Ok(entry)
}

/// Delivers a message between two agents of this node: outbox record (delivered) and
/// recipient inbox entry in one step. Fails with `UnknownAgent` before writing.
pub fn send_local(
    txn: &WriteTransaction,
    msg: WireMessage,
    me: PeerId,
    my_name: Option<NodeName>,
    now: u64,
) -> Result<(OutboxEntry, InboxEntry), StoreError> {
    if !agent_exists(txn, &msg.to)? {
        return Err(StoreError::UnknownAgent(msg.to.to_string()));
    }
    let out_seq = next_seq(txn)?;
    let in_seq = next_seq(txn)?;
    let inbox = InboxEntry {
        seq: in_seq,
        agent: msg.to.clone(),
        id: msg.id,
        from: Sender {
            agent: msg.from.clone(),
            node: me,
            node_name: my_name.clone(),
        },
        channel: Channel::Direct,
        text: msg.text.clone(),
        sent_at_ms: msg.sent_at_ms,
        received_at_ms: now,
        reply_to: msg.reply_to,
        state: ReadState::New,
    };
    let out = OutboxEntry {
        seq: out_seq,
        msg,
        to_node: me,
        to_node_name: my_name,
        created_ms: now,
        state: OutState::Delivered { at_ms: now },
        attempts: 0,
        last_error: None,
    };
    insert_outbox(txn, &out)?;
    insert_inbox(txn, &inbox)?;
    txn.open_table(RECEIVED)?.insert(inbox.id.0.as_slice(), in_seq)?;
    Ok((out, inbox))
}

/// What [`accept`] returns: one outcome per message, and the new inbox entries.
pub type Accepted = (Vec<(MessageId, Outcome)>, Vec<InboxEntry>);

/// Commits a batch of direct messages from `from` to local inboxes, in order. Returns one
/// outcome per message and the new inbox entries.
pub fn accept(
    txn: &WriteTransaction,
    from: PeerId,
    from_name: Option<NodeName>,
    msgs: Vec<WireMessage>,
    max_text_bytes: usize,
    now: u64,
) -> Result<Accepted, StoreError> {
    let mut outcomes = Vec::with_capacity(msgs.len());
    let mut stored = Vec::new();
    for m in msgs {
        let dup = txn.open_table(RECEIVED)?.get(m.id.0.as_slice())?.is_some();
        let outcome = if dup {
            Outcome::Duplicate
        } else if m.text.len() > max_text_bytes {
            Outcome::Rejected(Rejection::TooLarge(max_text_bytes as u64))
        } else if m.text.trim().is_empty() {
            Outcome::Rejected(Rejection::Invalid("empty text".into()))
        } else if !agent_exists(txn, &m.to)? {
            Outcome::Rejected(Rejection::UnknownAgent)
        } else {
            let seq = next_seq(txn)?;
            let entry = InboxEntry {
                seq,
                agent: m.to.clone(),
                id: m.id,
                from: Sender {
                    agent: m.from.clone(),
                    node: from,
                    node_name: from_name.clone(),
                },
                channel: Channel::Direct,
                text: m.text,
                sent_at_ms: m.sent_at_ms,
                received_at_ms: now,
                reply_to: m.reply_to,
                state: ReadState::New,
            };
            insert_inbox(txn, &entry)?;
            txn.open_table(RECEIVED)?.insert(entry.id.0.as_slice(), seq)?;
            stored.push(entry);
            Outcome::Stored
        };
        outcomes.push((m.id, outcome));
    }
    Ok((outcomes, stored))
}

/// The oldest pending messages for `peer`, in send order.
pub fn pending_batch(r: &ReadTransaction, peer: &PeerId, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
    let pending = r.open_table(PENDING)?;
    let outbox = r.open_table(OUTBOX)?;
    let key = peer.to_bytes();
    let mut out = Vec::new();
    for row in pending.range((key.as_slice(), 0u64)..=(key.as_slice(), u64::MAX))? {
        let (k, _) = row?;
        let seq = k.value().1;
        if let Some(v) = outbox.get(seq)? {
            out.push(decode::<OutboxEntry>("outbox", v.value())?);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Peers with messages pending, and how many each.
pub fn pending_peers(r: &ReadTransaction) -> Result<Vec<(PeerId, u64)>, StoreError> {
    let pending = r.open_table(PENDING)?;
    let mut out: Vec<(PeerId, u64)> = Vec::new();
    for row in pending.iter()? {
        let (k, _) = row?;
        let bytes = k.value().0;
        match out.last_mut() {
            Some((p, n)) if p.to_bytes() == bytes => *n += 1,
            _ => {
                if let Ok(p) = PeerId::from_bytes(bytes) {
                    out.push((p, 1));
                }
            }
        }
    }
    Ok(out)
}

/// An outbox entry whose state changed.
pub type Settled = OutboxEntry;

fn update_outbox(
    txn: &WriteTransaction,
    seq: u64,
    f: impl FnOnce(&mut OutboxEntry),
) -> Result<Option<OutboxEntry>, StoreError> {
    let mut entry: OutboxEntry = {
        let t = txn.open_table(OUTBOX)?;
        let v = t.get(seq)?;
        match v {
            Some(v) => decode("outbox", v.value())?,
            None => return Ok(None),
        }
    };
    f(&mut entry);
    let bytes = encode(&entry)?;
    txn.open_table(OUTBOX)?.insert(seq, bytes.as_slice())?;
    if !matches!(entry.state, OutState::Pending) {
        txn.open_table(PENDING)?
            .remove((entry.to_node.to_bytes().as_slice(), seq))?;
    }
    Ok(Some(entry))
}

/// Applies the recipient node's outcomes to pending outbox entries.
pub fn settle(txn: &WriteTransaction, outcomes: Vec<(u64, Outcome)>, now: u64) -> Result<Vec<Settled>, StoreError> {
    let mut out = Vec::with_capacity(outcomes.len());
    for (seq, outcome) in outcomes {
        let changed = update_outbox(txn, seq, |e| {
            if !matches!(e.state, OutState::Pending) {
                return;
            }
            e.state = match outcome {
                Outcome::Stored | Outcome::Duplicate => OutState::Delivered { at_ms: now },
                Outcome::Rejected(r) => OutState::Dead {
                    at_ms: now,
                    reason: format!("refused by the recipient node: {r}"),
                },
            };
        })?;
        if let Some(e) = changed {
            out.push(e);
        }
    }
    Ok(out)
}

/// Records a failed delivery attempt on pending entries.
pub fn note_failure(txn: &WriteTransaction, seqs: &[u64], error: &str) -> Result<(), StoreError> {
    for &seq in seqs {
        update_outbox(txn, seq, |e| {
            if matches!(e.state, OutState::Pending) {
                e.attempts = e.attempts.saturating_add(1);
                e.last_error = Some(error.chars().take(300).collect());
            }
        })?;
    }
    Ok(())
}

/// Turns pending messages older than `ttl_ms` into dead letters.
pub fn expire(txn: &WriteTransaction, now: u64, ttl_ms: u64) -> Result<Vec<Settled>, StoreError> {
    let mut expired = Vec::new();
    {
        let pending = txn.open_table(PENDING)?;
        let outbox = txn.open_table(OUTBOX)?;
        for row in pending.iter()? {
            let (k, _) = row?;
            let seq = k.value().1;
            if let Some(v) = outbox.get(seq)? {
                let e: OutboxEntry = decode("outbox", v.value())?;
                if e.created_ms.saturating_add(ttl_ms) <= now {
                    expired.push(seq);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(expired.len());
    for seq in expired {
        if let Some(e) = update_outbox(txn, seq, |e| {
            let why = match &e.last_error {
                Some(err) => format!("not delivered within the time to live (last error: {err})"),
                None => "not delivered within the time to live (recipient node never reachable)".to_string(),
            };
            e.state = OutState::Dead {
                at_ms: now,
                reason: why,
            };
        })? {
            out.push(e);
        }
    }
    Ok(out)
}

/// Outbox entries, newest last: pending and dead letters, plus delivered ones if asked.
pub fn outbox(
    r: &ReadTransaction,
    agent: Option<&AgentName>,
    delivered: bool,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let t = r.open_table(OUTBOX)?;
    let mut out = Vec::new();
    for row in t.iter()?.rev() {
        let (_, v) = row?;
        let e: OutboxEntry = decode("outbox", v.value())?;
        if agent.is_some_and(|a| &e.msg.from != a) {
            continue;
        }
        if !delivered && matches!(e.state, OutState::Delivered { .. }) {
            continue;
        }
        out.push(e);
        if out.len() >= limit {
            break;
        }
    }
    out.reverse();
    Ok(out)
}

/// One outbox entry by message id.
pub fn outbox_by_id(r: &ReadTransaction, id: &MessageId) -> Result<Option<OutboxEntry>, StoreError> {
    let ids = r.open_table(OUTBOX_IDS)?;
    let Some(seq) = ids.get(id.0.as_slice())?.map(|v| v.value()) else {
        return Ok(None);
    };
    let t = r.open_table(OUTBOX)?;
    let v = t.get(seq)?;
    v.map(|v| decode("outbox", v.value())).transpose()
}

/// Whether a message with this id is stored here (sent, received or seen on a topic).
pub fn message_known(r: &ReadTransaction, id: &MessageId) -> Result<bool, StoreError> {
    Ok(r.open_table(RECEIVED)?.get(id.0.as_slice())?.is_some()
        || r.open_table(OUTBOX_IDS)?.get(id.0.as_slice())?.is_some())
}

// ---------------------------------------------------------------- inboxes

/// Decides, entry by entry, whether an entry still goes into the page being filled (the
/// API frame budget); `false` ends the page before that entry.
pub type Admit<'a, T> = &'a mut dyn FnMut(&T) -> bool;

fn collect_inbox(
    inbox: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    unread: &impl ReadableTable<(&'static str, u64), ()>,
    notified: &impl ReadableTable<(&'static str, u64), ()>,
    a: &str,
    q: &InboxQuery,
    admit: Admit<'_, InboxEntry>,
) -> Result<InboxPage, StoreError> {
    let limit = q.limit.max(1);
    let mut page = InboxPage::default();
    // Once the page is full, what follows is only counted.
    let mut full = false;
    if q.all {
        let start = match q.after {
            Some(after) => after.saturating_add(1),
            // The newest `limit`: the page starts at the oldest of them.
            None => {
                let mut start = 0;
                for (n, row) in inbox.range((a, 0u64)..=(a, u64::MAX))?.rev().enumerate() {
                    let (k, _) = row?;
                    start = k.value().1;
                    if n + 1 >= limit {
                        break;
                    }
                }
                start
            }
        };
        for row in inbox.range((a, start)..=(a, u64::MAX))? {
            let (_, v) = row?;
            if !full {
                let e: InboxEntry = decode("inbox", v.value())?;
                if page.entries.len() < limit && admit(&e) {
                    page.entries.push(e);
                    continue;
                }
                full = true;
            }
            page.remaining += 1;
        }
    } else {
        let start = q.after.map_or(0, |after| after.saturating_add(1));
        for row in unread.range((a, start)..=(a, u64::MAX))? {
            let (k, _) = row?;
            let seq = k.value().1;
            if full {
                if !(q.skip_notified && notified.get((a, seq))?.is_some()) {
                    page.remaining += 1;
                }
                continue;
            }
            let Some(v) = inbox.get((a, seq))? else { continue };
            let e: InboxEntry = decode("inbox", v.value())?;
            if q.skip_notified && e.state == ReadState::Notified {
                continue;
            }
            if page.entries.len() < limit && admit(&e) {
                page.entries.push(e);
            } else {
                full = true;
                page.remaining += 1;
            }
        }
    }
    Ok(page)
}

/// What [`take_inbox`] returns.
#[derive(Clone, Copy, Debug)]
pub struct InboxQuery {
    /// At most this many entries (the page may hold fewer: see [`take_inbox`]).
    pub limit: usize,
    /// The newest `limit` entries in any state (else: unread ones, oldest first).
    pub all: bool,
    /// Leave out unread entries already pushed to a session.
    pub skip_notified: bool,
    /// Mark the returned entries read.
    pub mark_read: bool,
    /// Continue after this entry (its `seq`): the entries after it, oldest first (with
    /// `all`, the oldest `limit` of them).
    pub after: Option<u64>,
}

/// A page of an inbox.
#[derive(Clone, Debug, Default)]
pub struct InboxPage {
    /// The entries, oldest first.
    pub entries: Vec<InboxEntry>,
    /// Entries matching the query after the last of these (unread ones; with `all`, any).
    pub remaining: u64,
}

/// Inbox entries of `agent`, oldest first: the unread ones (`all == false`) or the last
/// `limit` of all, from `q.after` on. The page ends at `limit` entries or at the first
/// entry `admit` refuses, whichever comes first. With `mark_read`, exactly the returned
/// entries become `Read`, in the same transaction.
pub fn take_inbox(
    txn: &WriteTransaction,
    agent: &AgentName,
    q: InboxQuery,
    admit: Admit<'_, InboxEntry>,
) -> Result<InboxPage, StoreError> {
    if !agent_exists(txn, agent)? {
        return Err(StoreError::UnknownAgent(agent.to_string()));
    }
    let page = {
        let inbox = txn.open_table(INBOX)?;
        let unread = txn.open_table(UNREAD)?;
        let notified = txn.open_table(NOTIFIED)?;
        collect_inbox(&inbox, &unread, &notified, agent.as_str(), &q, admit)?
    };
    if q.mark_read {
        let seqs: Vec<u64> = page
            .entries
            .iter()
            .filter(|e| e.state != ReadState::Read)
            .map(|e| e.seq)
            .collect();
        set_state(txn, agent, &seqs, ReadState::Read)?;
    }
    Ok(page)
}

/// Like [`take_inbox`] without marking anything (works when the disk is full).
pub fn peek_inbox(
    r: &ReadTransaction,
    agent: &AgentName,
    q: InboxQuery,
    admit: Admit<'_, InboxEntry>,
) -> Result<InboxPage, StoreError> {
    if r.open_table(AGENTS)?.get(agent.as_str())?.is_none() {
        return Err(StoreError::UnknownAgent(agent.to_string()));
    }
    let inbox = r.open_table(INBOX)?;
    let unread = r.open_table(UNREAD)?;
    let notified = r.open_table(NOTIFIED)?;
    collect_inbox(&inbox, &unread, &notified, agent.as_str(), &q, admit)
}

/// Sets the read state of inbox entries (a `Read` entry never goes back).
pub fn set_state(
    txn: &WriteTransaction,
    agent: &AgentName,
    seqs: &[u64],
    state: ReadState,
) -> Result<Vec<u64>, StoreError> {
    let a = agent.as_str();
    let mut changed = Vec::new();
    for &seq in seqs {
        let entry: Option<InboxEntry> = {
            let t = txn.open_table(INBOX)?;
            let v = t.get((a, seq))?;
            v.map(|v| decode("inbox", v.value())).transpose()?
        };
        let Some(mut e) = entry else { continue };
        if e.state == state || e.state == ReadState::Read {
            continue;
        }
        e.state = state;
        let bytes = encode(&e)?;
        txn.open_table(INBOX)?.insert((a, seq), bytes.as_slice())?;
        match state {
            ReadState::Read => {
                txn.open_table(UNREAD)?.remove((a, seq))?;
                txn.open_table(NOTIFIED)?.remove((a, seq))?;
            }
            ReadState::Notified => {
                txn.open_table(NOTIFIED)?.insert((a, seq), ())?;
            }
            ReadState::New => {}
        }
        changed.push(seq);
    }
    Ok(changed)
}

/// Moves the unread entries of `agent` with these message ids to `state` (`Notified` or
/// `Read`); returns how many changed.
pub fn mark_ids(
    txn: &WriteTransaction,
    agent: &AgentName,
    ids: &[MessageId],
    state: ReadState,
) -> Result<usize, StoreError> {
    let mut seqs = Vec::new();
    {
        let inbox = txn.open_table(INBOX)?;
        let unread = txn.open_table(UNREAD)?;
        let a = agent.as_str();
        for row in unread.range((a, 0u64)..=(a, u64::MAX))? {
            let (k, _) = row?;
            let seq = k.value().1;
            if let Some(v) = inbox.get((a, seq))? {
                let e: InboxEntry = decode("inbox", v.value())?;
                if ids.contains(&e.id) {
                    seqs.push(seq);
                }
            }
        }
    }
    Ok(set_state(txn, agent, &seqs, state)?.len())
}

fn count_range(t: &impl ReadableTable<(&'static str, u64), ()>, agent: &str) -> Result<u64, StoreError> {
    let mut n = 0;
    for row in t.range((agent, 0u64)..=(agent, u64::MAX))? {
        row?;
        n += 1;
    }
    Ok(n)
}

/// Number of unread entries of `agent`.
pub fn unread_count(r: &ReadTransaction, agent: &str) -> Result<u64, StoreError> {
    count_range(&r.open_table(UNREAD)?, agent)
}

/// Unread entries of `agent`: (never pushed, pushed to a session but not yet shown).
pub fn unread_counts(r: &ReadTransaction, agent: &str) -> Result<(u64, u64), StoreError> {
    let unread = count_range(&r.open_table(UNREAD)?, agent)?;
    let notified = count_range(&r.open_table(NOTIFIED)?, agent)?;
    Ok((unread.saturating_sub(notified), notified))
}

// ---------------------------------------------------------------- topics

/// Subscribes `agent` to `topic`; true if it was not subscribed.
pub fn subscribe(txn: &WriteTransaction, agent: &AgentName, topic: &TopicName, now: u64) -> Result<bool, StoreError> {
    if !agent_exists(txn, agent)? {
        return Err(StoreError::UnknownAgent(agent.to_string()));
    }
    let mut since = txn.open_table(SUB_SINCE)?;
    if since.get(topic.as_str())?.is_none() {
        since.insert(topic.as_str(), now)?;
    }
    Ok(txn
        .open_table(SUBS)?
        .insert((topic.as_str(), agent.as_str()), ())?
        .is_none())
}

/// Unsubscribes; true if it was subscribed. The last local subscriber leaving ends the
/// topic's catch-up (a later subscription starts from its own time).
pub fn unsubscribe(txn: &WriteTransaction, agent: &AgentName, topic: &TopicName) -> Result<bool, StoreError> {
    let was = txn
        .open_table(SUBS)?
        .remove((topic.as_str(), agent.as_str()))?
        .is_some();
    if !topic_has_subscribers(txn, topic)? {
        txn.open_table(SUB_SINCE)?.remove(topic.as_str())?;
    }
    Ok(was)
}

/// Topics with local subscribers, each with the time its catch-up starts from.
pub fn subscribed_topics(r: &ReadTransaction) -> Result<Vec<(TopicName, u64)>, StoreError> {
    let t = r.open_table(SUB_SINCE)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Ok(topic) = TopicName::new(k.value()) {
            out.push((topic, v.value()));
        }
    }
    Ok(out)
}

/// This store's log id (see `SyncResponse::Digest`).
pub fn log_id(r: &ReadTransaction) -> Result<u64, StoreError> {
    let meta = r.open_table(META)?;
    let v = meta.get("log")?;
    Ok(v.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
        .unwrap_or(0))
}

/// How far `peer`'s publications on `topic` were caught up.
pub fn sync_cursor(r: &ReadTransaction, peer: &PeerId, topic: &TopicName) -> Result<SyncCursor, StoreError> {
    let t = r.open_table(SYNC)?;
    let key = peer.to_bytes();
    let v = t.get((key.as_slice(), topic.as_str()))?;
    match v {
        Some(v) => decode("sync", v.value()),
        None => Ok(SyncCursor::default()),
    }
}

/// Records how far `peer`'s publications on `topic` were caught up.
pub fn set_sync_cursor(
    txn: &WriteTransaction,
    peer: &PeerId,
    topic: &TopicName,
    cursor: SyncCursor,
) -> Result<(), StoreError> {
    let bytes = encode(&cursor)?;
    let key = peer.to_bytes();
    txn.open_table(SYNC)?
        .insert((key.as_slice(), topic.as_str()), bytes.as_slice())?;
    Ok(())
}

/// What a digest answer holds: ids, the position covered, and whether more follows.
pub type Digest = (Vec<MessageId>, u64, bool);

/// Ids of this node's own publications on `topic` sent at or after `since_ms`, later in the
/// log than `after`: at most `max_ids`, scanning at most `max_scan` log entries.
pub fn own_publications(
    r: &ReadTransaction,
    topic: &TopicName,
    after: u64,
    since_ms: u64,
    max_ids: usize,
    max_scan: usize,
) -> Result<Digest, StoreError> {
    let log = r.open_table(TOPIC_LOG)?;
    let t = topic.as_str();
    // A position past the end of this log was taken in what this log was before (a store
    // restored from a backup counts again from an earlier point): start over.
    let last = log
        .range((t, 0)..=(t, u64::MAX))?
        .next_back()
        .transpose()?
        .map(|(k, _)| k.value().1);
    let after = if last.is_some_and(|last| after > last) {
        0
    } else {
        after
    };
    let mut ids = Vec::new();
    let mut next = after;
    let mut more = false;
    for (scanned, row) in log.range((t, after.saturating_add(1))..=(t, u64::MAX))?.enumerate() {
        if ids.len() >= max_ids || scanned >= max_scan {
            more = true;
            break;
        }
        let (k, v) = row?;
        next = k.value().1;
        let rec: TopicRecord = decode("topic-log", v.value())?;
        if rec.local && rec.envelope.sent_at_ms >= since_ms {
            ids.push(rec.envelope.id);
        }
    }
    Ok((ids, next, more))
}

/// This node's own publications on `topic` with these ids, in the order asked, up to about
/// `max_text` bytes of text (always at least one).
pub fn own_publications_by_id(
    r: &ReadTransaction,
    topic: &TopicName,
    ids: &[MessageId],
    max_text: usize,
) -> Result<Vec<TopicEnvelope>, StoreError> {
    let received = r.open_table(RECEIVED)?;
    let log = r.open_table(TOPIC_LOG)?;
    let mut out: Vec<TopicEnvelope> = Vec::new();
    let mut bytes = 0;
    for id in ids {
        let Some(seq) = received.get(id.0.as_slice())?.map(|v| v.value()) else {
            continue;
        };
        let Some(v) = log.get((topic.as_str(), seq))? else {
            continue;
        };
        let rec: TopicRecord = decode("topic-log", v.value())?;
        if !rec.local || rec.envelope.id != *id {
            continue;
        }
        if !out.is_empty() && bytes + rec.envelope.text.len() > max_text {
            break;
        }
        bytes += rec.envelope.text.len();
        out.push(rec.envelope);
    }
    Ok(out)
}

/// Of these ids, those not stored here.
pub fn unknown_ids(r: &ReadTransaction, ids: &[MessageId]) -> Result<Vec<MessageId>, StoreError> {
    let received = r.open_table(RECEIVED)?;
    let mut out = Vec::new();
    for id in ids {
        if received.get(id.0.as_slice())?.is_none() {
            out.push(*id);
        }
    }
    Ok(out)
}

/// All (topic, agent) subscriptions.
pub fn subscriptions(r: &ReadTransaction) -> Result<Vec<(TopicName, AgentName)>, StoreError> {
    let t = r.open_table(SUBS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, _) = row?;
        let (topic, agent) = k.value();
        if let (Ok(t), Ok(a)) = (TopicName::new(topic), AgentName::new(agent)) {
            out.push((t, a));
        }
    }
    Ok(out)
}

/// Whether any local agent subscribes to `topic`.
pub fn topic_has_subscribers(txn: &WriteTransaction, topic: &TopicName) -> Result<bool, StoreError> {
    let t = txn.open_table(SUBS)?;
    let mut r = t.range((topic.as_str(), "")..)?;
    Ok(match r.next() {
        Some(row) => row?.0.value().0 == topic.as_str(),
        None => false,
    })
}

/// Stores a topic message (published here or received) and delivers it to the inboxes of
/// the local subscribers other than its local author. `None` if it was already stored.
#[allow(clippy::too_many_arguments)]
pub fn record_topic(
    txn: &WriteTransaction,
    envelope: TopicEnvelope,
    from_node: PeerId,
    from_node_name: Option<NodeName>,
    local: bool,
    reached: u32,
    now: u64,
) -> Result<Option<(TopicRecord, Vec<InboxEntry>)>, StoreError> {
    if txn.open_table(RECEIVED)?.get(envelope.id.0.as_slice())?.is_some() {
        return Ok(None);
    }
    let topic = envelope.topic.clone();
    let subscribers: Vec<AgentName> = {
        let subs = txn.open_table(SUBS)?;
        let mut v = Vec::new();
        for row in subs.range((topic.as_str(), "")..)? {
            let (k, _) = row?;
            let (t, a) = k.value();
            if t != topic.as_str() {
                break;
            }
            if let Ok(a) = AgentName::new(a) {
                v.push(a);
            }
        }
        v
    };
    let seq = next_seq(txn)?;
    let rec = TopicRecord {
        seq,
        envelope,
        from_node,
        from_node_name: from_node_name.clone(),
        received_at_ms: now,
        local,
        reached,
    };
    let bytes = encode(&rec)?;
    txn.open_table(TOPIC_LOG)?
        .insert((topic.as_str(), seq), bytes.as_slice())?;
    txn.open_table(RECEIVED)?.insert(rec.envelope.id.0.as_slice(), seq)?;
    if local && reached == 0 {
        txn.open_table(TOPIC_PENDING)?.insert((topic.as_str(), seq), ())?;
    }
    let mut delivered = Vec::new();
    for agent in subscribers {
        if local && agent == rec.envelope.from {
            continue;
        }
        let entry = InboxEntry {
            seq: next_seq(txn)?,
            agent,
            id: rec.envelope.id,
            from: Sender {
                agent: rec.envelope.from.clone(),
                node: from_node,
                node_name: from_node_name.clone(),
            },
            channel: Channel::Topic(topic.clone()),
            text: rec.envelope.text.clone(),
            sent_at_ms: rec.envelope.sent_at_ms,
            received_at_ms: now,
            reply_to: rec.envelope.reply_to,
            state: ReadState::New,
        };
        insert_inbox(txn, &entry)?;
        delivered.push(entry);
    }
    Ok(Some((rec, delivered)))
}

/// Records that a local publication reached `reached` peers (clears "pending" if > 0).
pub fn topic_reached(txn: &WriteTransaction, topic: &TopicName, seq: u64, reached: u32) -> Result<(), StoreError> {
    let rec: Option<TopicRecord> = {
        let t = txn.open_table(TOPIC_LOG)?;
        let v = t.get((topic.as_str(), seq))?;
        v.map(|v| decode("topic-log", v.value())).transpose()?
    };
    if let Some(mut rec) = rec {
        rec.reached = rec.reached.max(reached);
        let bytes = encode(&rec)?;
        txn.open_table(TOPIC_LOG)?
            .insert((topic.as_str(), seq), bytes.as_slice())?;
        if rec.reached > 0 {
            txn.open_table(TOPIC_PENDING)?.remove((topic.as_str(), seq))?;
        }
    }
    Ok(())
}

/// Local publications on `topic` that reached no peer yet, oldest first.
pub fn topic_pending(r: &ReadTransaction, topic: &TopicName) -> Result<Vec<TopicRecord>, StoreError> {
    let pending = r.open_table(TOPIC_PENDING)?;
    let log = r.open_table(TOPIC_LOG)?;
    let t = topic.as_str();
    let mut out = Vec::new();
    for row in pending.range((t, 0u64)..=(t, u64::MAX))? {
        let (k, _) = row?;
        if let Some(v) = log.get((t, k.value().1))? {
            out.push(decode("topic-log", v.value())?);
        }
    }
    Ok(out)
}

/// Drops "pending" marks of local publications older than `ttl_ms` (they stay in history).
pub fn expire_topic_pending(txn: &WriteTransaction, now: u64, ttl_ms: u64) -> Result<usize, StoreError> {
    let mut old = Vec::new();
    {
        let pending = txn.open_table(TOPIC_PENDING)?;
        let log = txn.open_table(TOPIC_LOG)?;
        for row in pending.iter()? {
            let (k, _) = row?;
            let (t, seq) = k.value();
            if let Some(v) = log.get((t, seq))? {
                let rec: TopicRecord = decode("topic-log", v.value())?;
                if rec.received_at_ms.saturating_add(ttl_ms) <= now {
                    old.push((t.to_string(), seq));
                }
            }
        }
    }
    let mut pending = txn.open_table(TOPIC_PENDING)?;
    for (t, seq) in &old {
        pending.remove((t.as_str(), *seq))?;
    }
    Ok(old.len())
}

/// Per topic seen here: message count and time of the newest message.
pub fn topic_stats(r: &ReadTransaction) -> Result<Vec<(TopicName, u64, u64)>, StoreError> {
    let log = r.open_table(TOPIC_LOG)?;
    let mut out: Vec<(TopicName, u64, u64)> = Vec::new();
    for row in log.iter()? {
        let (k, v) = row?;
        let t = k.value().0;
        let rec: TopicRecord = decode("topic-log", v.value())?;
        match out.last_mut() {
            Some((name, n, last)) if name.as_str() == t => {
                *n += 1;
                *last = (*last).max(rec.received_at_ms);
            }
            _ => {
                if let Ok(name) = TopicName::new(t) {
                    out.push((name, 1, rec.received_at_ms));
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- peers

/// Writes a peer record.
pub fn put_peer(txn: &WriteTransaction, rec: &PeerRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(PEERS)?
        .insert(rec.peer.to_bytes().as_slice(), bytes.as_slice())?;
    Ok(())
}

/// All known peers.
pub fn peers(r: &ReadTransaction) -> Result<Vec<PeerRecord>, StoreError> {
    let t = r.open_table(PEERS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode("peers", v.value())?);
    }
    Ok(out)
}

/// Remembers that the user dialed `peer` at `addr` (kept connected from now on).
pub fn put_dialed(txn: &WriteTransaction, peer: &PeerId, addr: &libp2p::Multiaddr) -> Result<(), StoreError> {
    let key = peer.to_bytes();
    let mut addrs: Vec<libp2p::Multiaddr> = {
        let t = txn.open_table(DIALED)?;
        let v = t.get(key.as_slice())?;
        match v {
            Some(v) => decode("dialed", v.value())?,
            None => Vec::new(),
        }
    };
    addrs.retain(|a| a != addr);
    addrs.insert(0, addr.clone());
    addrs.truncate(8);
    let bytes = encode(&addrs)?;
    txn.open_table(DIALED)?.insert(key.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Forgets a dialed peer; true if it was remembered.
pub fn remove_dialed(txn: &WriteTransaction, peer: &PeerId) -> Result<bool, StoreError> {
    Ok(txn.open_table(DIALED)?.remove(peer.to_bytes().as_slice())?.is_some())
}

/// Every dialed peer with its addresses.
pub fn dialed(r: &ReadTransaction) -> Result<Vec<(PeerId, Vec<libp2p::Multiaddr>)>, StoreError> {
    let t = r.open_table(DIALED)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Ok(p) = PeerId::from_bytes(k.value()) {
            out.push((p, decode("dialed", v.value())?));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- membership

/// Records that `peer` was admitted (or heard from) as a member.
pub fn put_member(txn: &WriteTransaction, peer: &PeerId, name: Option<String>, now: u64) -> Result<(), StoreError> {
    let key = peer.to_bytes();
    let mut t = txn.open_table(MEMBERS)?;
    let old: Option<MemberRecord> = match t.get(key.as_slice())? {
        Some(v) => Some(decode("members", v.value())?),
        None => None,
    };
    let rec = MemberRecord {
        name: name.or_else(|| old.as_ref().and_then(|o| o.name.clone())),
        since_ms: old.as_ref().map(|o| o.since_ms).unwrap_or(now),
        last_seen_ms: now,
    };
    let bytes = encode(&rec)?;
    t.insert(key.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Forgets a member; true if it was known.
pub fn remove_member(txn: &WriteTransaction, peer: &PeerId) -> Result<bool, StoreError> {
    Ok(txn.open_table(MEMBERS)?.remove(peer.to_bytes().as_slice())?.is_some())
}

/// Every member known here.
pub fn members(r: &ReadTransaction) -> Result<Vec<(PeerId, MemberRecord)>, StoreError> {
    let t = r.open_table(MEMBERS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Ok(p) = PeerId::from_bytes(k.value()) {
            out.push((p, decode("members", v.value())?));
        }
    }
    Ok(out)
}

/// After joining or leaving a mesh: the old members and join codes mean nothing.
pub fn reset_mesh(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(MEMBERS)?;
    txn.delete_table(INVITES)?;
    txn.open_table(MEMBERS)?;
    txn.open_table(INVITES)?;
    Ok(())
}

/// Stores a new join code's token.
pub fn put_invite(txn: &WriteTransaction, token: &[u8; 16], rec: &InviteRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(INVITES)?.insert(token.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Uses a join code's token once (committed with the transaction). Spent and expired
/// tokens are kept a week, so a second use is told why it fails.
pub fn use_invite(txn: &WriteTransaction, token: &[u8; 16], now: u64) -> Result<InviteUse, StoreError> {
    const KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
    let mut t = txn.open_table(INVITES)?;
    // Drop long-dead tokens.
    let mut dead = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let rec: InviteRecord = decode("invites", v.value())?;
        if rec.expires_ms.saturating_add(KEEP_MS) < now {
            dead.push(k.value().to_vec());
        }
    }
    for k in dead {
        t.remove(k.as_slice())?;
    }
    let rec: InviteRecord = match t.get(token.as_slice())? {
        Some(v) => decode("invites", v.value())?,
        None => return Ok(InviteUse::Unknown),
    };
    if rec.expires_ms <= now {
        return Ok(InviteUse::Expired(rec.expires_ms));
    }
    if rec.uses_left == 0 {
        return Ok(InviteUse::UsedUp);
    }
    let left = rec.uses_left - 1;
    let bytes = encode(&InviteRecord { uses_left: left, ..rec })?;
    t.insert(token.as_slice(), bytes.as_slice())?;
    Ok(InviteUse::Accepted(left))
}

// ---------------------------------------------------------------- history & stats

/// What `history` returns.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Only messages of this local agent (sent by it, to it, or on its topics).
    pub agent: Option<AgentName>,
    /// Only direct messages exchanged with this agent (optionally on this node).
    pub with: Option<(AgentName, Option<PeerId>)>,
    /// Only this topic.
    pub topic: Option<TopicName>,
    /// Only texts containing this (case-insensitive).
    pub grep: Option<String>,
    /// At most this many rows: the newest `limit` between `after` and `before` (with
    /// `forward` and `after`, the oldest `limit` after it).
    pub limit: usize,
    /// Only rows recorded after this position (a row's `seq`).
    pub after: Option<u64>,
    /// Only rows recorded before this position.
    pub before: Option<u64>,
    /// Read forward in time: the page starts at the oldest row of the selection and more
    /// is read with `after`; else it ends at the newest, and more is read with `before`.
    pub forward: bool,
}

/// One history line.
#[derive(Clone, Debug)]
pub enum HistoryRow {
    /// A direct message received by a local agent.
    Received(InboxEntry),
    /// A direct message sent by a local agent.
    Sent(OutboxEntry),
    /// A topic message.
    Topic(TopicRecord),
}

impl HistoryRow {
    /// Local time of the row.
    pub fn at_ms(&self) -> u64 {
        match self {
            HistoryRow::Received(e) => e.received_at_ms,
            HistoryRow::Sent(e) => e.created_ms,
            HistoryRow::Topic(r) => r.received_at_ms,
        }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        match self {
            HistoryRow::Received(e) => e.id,
            HistoryRow::Sent(e) => e.msg.id,
            HistoryRow::Topic(r) => r.envelope.id,
        }
    }

    /// The row's position: the store sequence number it was recorded under (unique, never
    /// reused, in the order the rows were recorded).
    pub fn seq(&self) -> u64 {
        match self {
            HistoryRow::Received(e) => e.seq,
            HistoryRow::Sent(e) => e.seq,
            HistoryRow::Topic(r) => r.seq,
        }
    }
}

/// A page of history.
#[derive(Clone, Debug, Default)]
pub struct HistoryPage {
    /// The rows, oldest first.
    pub rows: Vec<HistoryRow>,
    /// Matching rows exist before the first of these (and after the filter's `after`).
    pub older: bool,
    /// Matching rows exist after the last of these (and before the filter's `before`).
    pub newer: bool,
}

/// The table a history row comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    Inbox,
    Outbox,
    Topic,
}

/// A stored row's value, not decoded yet.
type Raw<'t> = redb::AccessGuard<'t, &'static [u8]>;

type Rows<'t> = Box<dyn Iterator<Item = Result<(u64, Raw<'t>), StoreError>> + 't>;

/// The rows of several tables (each in `seq` order) merged in `seq` order, newest first
/// when `back`.
struct Merge<'t> {
    heads: Vec<(Source, std::iter::Peekable<Rows<'t>>)>,
    back: bool,
}

impl<'t> Merge<'t> {
    fn next(&mut self) -> Result<Option<(Source, Raw<'t>)>, StoreError> {
        let back = self.back;
        let mut best: Option<(usize, u64)> = None;
        for (i, (_, rows)) in self.heads.iter_mut().enumerate() {
            let seq = match rows.peek() {
                None => continue,
                Some(Ok((seq, _))) => *seq,
                Some(Err(_)) => match rows.next() {
                    Some(Err(e)) => return Err(e),
                    _ => continue,
                },
            };
            if best.is_none_or(|(_, b)| if back { seq > b } else { seq < b }) {
                best = Some((i, seq));
            }
        }
        let Some((source, rows)) = best.and_then(|(i, _)| self.heads.get_mut(i)) else {
            return Ok(None);
        };
        match rows.next() {
            Some(Ok((_, v))) => Ok(Some((*source, v))),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        }
    }
}

/// The distinct names keying a table by (name, seq).
fn key_names<V: redb::Value + 'static>(
    t: &impl ReadableTable<(&'static str, u64), V>,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    let mut next = t.first()?.map(|(k, _)| k.value().0.to_string());
    while let Some(name) = next.take() {
        for row in t.range((name.as_str(), u64::MAX)..)? {
            let (k, _) = row?;
            if k.value().0 != name {
                next = Some(k.value().0.to_string());
                break;
            }
        }
        out.push(name);
    }
    Ok(out)
}

/// The rows of `names` in a table keyed by (name, seq), with `seq` in `lo..=hi`.
fn named_rows<'t>(
    t: &'t redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    names: &[String],
    (lo, hi): (u64, u64),
    back: bool,
    source: Source,
) -> Result<Vec<(Source, std::iter::Peekable<Rows<'t>>)>, StoreError> {
    let mut out = Vec::new();
    for name in names {
        let range = t.range((name.as_str(), lo)..=(name.as_str(), hi))?;
        let rows = range.map(|row| {
            let (k, v) = row?;
            Ok((k.value().1, v))
        });
        let rows: Rows<'t> = if back { Box::new(rows.rev()) } else { Box::new(rows) };
        out.push((source, rows.peekable()));
    }
    Ok(out)
}

/// One page of the messages matching `f`, oldest first: see [`HistoryFilter`]. Rows are in
/// the order this node recorded them. The page ends at `f.limit` rows or before the first
/// row `admit` refuses.
pub fn history(
    r: &ReadTransaction,
    f: &HistoryFilter,
    admit: Admit<'_, HistoryRow>,
) -> Result<HistoryPage, StoreError> {
    let grep = f.grep.as_ref().map(|g| g.to_lowercase());
    let text_ok = |t: &str| grep.as_ref().is_none_or(|g| t.to_lowercase().contains(g));
    let limit = f.limit.max(1);
    let lo = f.after.map_or(0, |a| a.saturating_add(1));
    let hi = match f.before {
        Some(0) => return Ok(HistoryPage::default()),
        Some(b) => b - 1,
        None => u64::MAX,
    };
    if lo > hi {
        return Ok(HistoryPage::default());
    }

    let subscribed: Vec<TopicName> = match &f.agent {
        Some(a) => subscriptions(r)?
            .into_iter()
            .filter(|(_, ag)| ag == a)
            .map(|(t, _)| t)
            .collect(),
        None => Vec::new(),
    };
    let with_ok = |agent: &AgentName, node: &PeerId| match &f.with {
        None => true,
        Some((a, p)) => a == agent && p.as_ref().is_none_or(|p| p == node),
    };
    let matching = |source: Source, bytes: &[u8]| -> Result<Option<HistoryRow>, StoreError> {
        Ok(match source {
            Source::Topic => {
                let rec: TopicRecord = decode("topic-log", bytes)?;
                let theirs = f.agent.as_ref().is_some_and(|a| {
                    !(subscribed.contains(&rec.envelope.topic) || (rec.local && &rec.envelope.from == a))
                });
                (!theirs && text_ok(&rec.envelope.text)).then_some(HistoryRow::Topic(rec))
            }
            Source::Inbox => {
                let e: InboxEntry = decode("inbox", bytes)?;
                (e.channel == Channel::Direct && with_ok(&e.from.agent, &e.from.node) && text_ok(&e.text))
                    .then_some(HistoryRow::Received(e))
            }
            Source::Outbox => {
                let e: OutboxEntry = decode("outbox", bytes)?;
                let theirs = f.agent.as_ref().is_some_and(|a| a != &e.msg.from);
                (!theirs && with_ok(&e.msg.to, &e.to_node) && text_ok(&e.msg.text)).then_some(HistoryRow::Sent(e))
            }
        })
    };

    let log = r.open_table(TOPIC_LOG)?;
    let inbox = r.open_table(INBOX)?;
    let outbox = r.open_table(OUTBOX)?;
    let topics: Vec<String> = match (&f.with, &f.topic) {
        (Some(_), _) => Vec::new(),
        (None, Some(t)) => vec![t.to_string()],
        (None, None) => key_names(&log)?,
    };
    let agents: Vec<String> = match (&f.topic, &f.agent) {
        (Some(_), _) => Vec::new(),
        (None, Some(a)) => vec![a.to_string()],
        (None, None) => key_names(&inbox)?,
    };
    let walk = |(lo, hi): (u64, u64), back: bool| -> Result<Merge<'_>, StoreError> {
        let mut heads = named_rows(&log, &topics, (lo, hi), back, Source::Topic)?;
        heads.extend(named_rows(&inbox, &agents, (lo, hi), back, Source::Inbox)?);
        if f.topic.is_none() {
            let rows = outbox.range(lo..=hi)?.map(|row| {
                let (k, v) = row?;
                Ok((k.value(), v))
            });
            let rows: Rows<'_> = if back { Box::new(rows.rev()) } else { Box::new(rows) };
            heads.push((Source::Outbox, rows.peekable()));
        }
        Ok(Merge { heads, back })
    };
    let next_match = |m: &mut Merge<'_>| -> Result<Option<HistoryRow>, StoreError> {
        while let Some((source, v)) = m.next()? {
            if let Some(row) = matching(source, v.value())? {
                return Ok(Some(row));
            }
        }
        Ok(None)
    };

    let mut page = HistoryPage::default();
    if f.forward {
        let start = match f.after {
            Some(_) => lo,
            // The newest `limit`: the page starts at the oldest of them.
            None => {
                let mut m = walk((lo, hi), true)?;
                let (mut start, mut n) = (lo, 0);
                while n < limit {
                    let Some(row) = next_match(&mut m)? else { break };
                    start = row.seq();
                    n += 1;
                }
                page.older = n == limit && next_match(&mut m)?.is_some();
                start
            }
        };
        let mut m = walk((start, hi), false)?;
        while let Some(row) = next_match(&mut m)? {
            if page.rows.len() >= limit || !admit(&row) {
                page.newer = true;
                break;
            }
            page.rows.push(row);
        }
    } else {
        let mut m = walk((lo, hi), true)?;
        while let Some(row) = next_match(&mut m)? {
            if page.rows.len() >= limit || !admit(&row) {
                page.older = true;
                break;
            }
            page.rows.push(row);
        }
        page.rows.reverse();
    }
    Ok(page)
}

/// Record counts.
pub fn stats(r: &ReadTransaction) -> Result<StoreStats, StoreError> {
    Ok(StoreStats {
        agents: r.open_table(AGENTS)?.len()?,
        inbox: r.open_table(INBOX)?.len()?,
        unread: r.open_table(UNREAD)?.len()?,
        outbox: r.open_table(OUTBOX)?.len()?,
        pending: r.open_table(PENDING)?.len()?,
        topic_messages: r.open_table(TOPIC_LOG)?.len()?,
        topic_pending: r.open_table(TOPIC_PENDING)?.len()?,
        peers: r.open_table(PEERS)?.len()?,
        file_bytes: 0,
    })
}
