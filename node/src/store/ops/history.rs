//! History (direct and topic messages, merged by store order) and the store counts.

use super::*;

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
