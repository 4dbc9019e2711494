//! Direct messages: ids known, enqueueing and local delivery, accepting a batch, the outbox and its settling.

use super::*;

pub(super) fn insert_inbox(txn: &WriteTransaction, entry: &InboxEntry) -> Result<(), StoreError> {
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

pub(super) fn update_outbox(
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

/// Outbox entries, newest last: pending and dead letters, plus delivered (and read) ones
/// if asked.
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
        if !delivered && matches!(e.state, OutState::Delivered { .. } | OutState::Read { .. }) {
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
