//! Topics: subscriptions, the publication log and catch-up cursors, topic messages recorded and re-published.

use super::*;

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
