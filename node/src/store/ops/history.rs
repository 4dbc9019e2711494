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
    t: &'t Table,
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
    let lo = f.after.map_or(0, |a| a.saturating_add(1));
    let hi = match f.before {
        Some(0) => return Ok(HistoryPage::default()),
        Some(b) => b - 1,
        None => u64::MAX,
    };
    if lo > hi {
        return Ok(HistoryPage::default());
    }
    let scan = Scan::new(r, f)?;
    let limit = f.limit.max(1);
    let mut page = HistoryPage::default();
    if f.forward {
        let start = match f.after {
            Some(_) => lo,
            // The newest `limit`: the page starts at the oldest of them.
            None => {
                let (start, older) = scan.oldest_of_newest((lo, hi), limit)?;
                page.older = older;
                start
            }
        };
        page.newer = scan.fill(&mut page.rows, (start, hi), false, limit, admit)?;
    } else {
        page.older = scan.fill(&mut page.rows, (lo, hi), true, limit, admit)?;
        page.rows.reverse();
    }
    Ok(page)
}

type Table = redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>;

/// The tables a history filter reads, the names of them it reads, and its tests of a row.
struct Scan<'f> {
    f: &'f HistoryFilter,
    /// `f.grep`, lower case.
    grep: Option<String>,
    /// The topics `f.agent` is subscribed to.
    subscribed: Vec<TopicName>,
    log: Table,
    inbox: Table,
    outbox: redb::ReadOnlyTable<u64, &'static [u8]>,
    /// The topics read in the topic log.
    topics: Vec<String>,
    /// The agents whose inboxes are read.
    agents: Vec<String>,
}

impl<'f> Scan<'f> {
    fn new(r: &ReadTransaction, f: &'f HistoryFilter) -> Result<Self, StoreError> {
        let subscribed: Vec<TopicName> = match &f.agent {
            Some(a) => subscriptions(r)?
                .into_iter()
                .filter(|(_, ag)| ag == a)
                .map(|(t, _)| t)
                .collect(),
            None => Vec::new(),
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
        Ok(Scan {
            f,
            grep: f.grep.as_ref().map(|g| g.to_lowercase()),
            subscribed,
            log,
            inbox,
            outbox,
            topics,
            agents,
        })
    }

    fn text_ok(&self, t: &str) -> bool {
        self.grep.as_ref().is_none_or(|g| t.to_lowercase().contains(g))
    }

    fn with_ok(&self, agent: &AgentName, node: &PeerId) -> bool {
        match &self.f.with {
            None => true,
            Some((a, p)) => a == agent && p.as_ref().is_none_or(|p| p == node),
        }
    }

    /// The row stored as `bytes` in `source`, if the filter takes it.
    fn matching(&self, source: Source, bytes: &[u8]) -> Result<Option<HistoryRow>, StoreError> {
        let f = self.f;
        Ok(match source {
            Source::Topic => {
                let rec: TopicRecord = decode("topic-log", bytes)?;
                let theirs = f.agent.as_ref().is_some_and(|a| {
                    !(self.subscribed.contains(&rec.envelope.topic) || (rec.local && &rec.envelope.from == a))
                });
                (!theirs && self.text_ok(&rec.envelope.text)).then_some(HistoryRow::Topic(rec))
            }
            Source::Inbox => {
                let e: InboxEntry = decode("inbox", bytes)?;
                (e.channel == Channel::Direct && self.with_ok(&e.from.agent, &e.from.node) && self.text_ok(&e.text))
                    .then_some(HistoryRow::Received(e))
            }
            Source::Outbox => {
                let e: OutboxEntry = decode("outbox", bytes)?;
                let theirs = f.agent.as_ref().is_some_and(|a| a != &e.msg.from);
                (!theirs && self.with_ok(&e.msg.to, &e.to_node) && self.text_ok(&e.msg.text))
                    .then_some(HistoryRow::Sent(e))
            }
        })
    }

    /// Every row read with `seq` in `lo..=hi`, merged in `seq` order (newest first when `back`).
    fn walk(&self, (lo, hi): (u64, u64), back: bool) -> Result<Merge<'_>, StoreError> {
        let mut heads = named_rows(&self.log, &self.topics, (lo, hi), back, Source::Topic)?;
        heads.extend(named_rows(&self.inbox, &self.agents, (lo, hi), back, Source::Inbox)?);
        if self.f.topic.is_none() {
            let rows = self.outbox.range(lo..=hi)?.map(|row| {
                let (k, v) = row?;
                Ok((k.value(), v))
            });
            let rows: Rows<'_> = if back { Box::new(rows.rev()) } else { Box::new(rows) };
            heads.push((Source::Outbox, rows.peekable()));
        }
        Ok(Merge { heads, back })
    }

    /// The next row of `m` the filter takes.
    fn next_match(&self, m: &mut Merge<'_>) -> Result<Option<HistoryRow>, StoreError> {
        while let Some((source, v)) = m.next()? {
            if let Some(row) = self.matching(source, v.value())? {
                return Ok(Some(row));
            }
        }
        Ok(None)
    }

    /// Fills `rows` with the matching rows in `lo..=hi` (newest first when `back`), up to
    /// `limit` and while `admit` takes them; true when a matching row was left out.
    fn fill(
        &self,
        rows: &mut Vec<HistoryRow>,
        range: (u64, u64),
        back: bool,
        limit: usize,
        admit: Admit<'_, HistoryRow>,
    ) -> Result<bool, StoreError> {
        let mut m = self.walk(range, back)?;
        while let Some(row) = self.next_match(&mut m)? {
            if rows.len() >= limit || !admit(&row) {
                return Ok(true);
            }
            rows.push(row);
        }
        Ok(false)
    }

    /// Where the newest `limit` matching rows in `lo..=hi` start, and whether older ones exist.
    fn oldest_of_newest(&self, (lo, hi): (u64, u64), limit: usize) -> Result<(u64, bool), StoreError> {
        let mut m = self.walk((lo, hi), true)?;
        let (mut start, mut n) = (lo, 0);
        while n < limit {
            let Some(row) = self.next_match(&mut m)? else { break };
            start = row.seq();
            n += 1;
        }
        let older = n == limit && self.next_match(&mut m)?.is_some();
        Ok((start, older))
    }
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
        receipts_pending: r.open_table(RECEIPTS)?.len()?,
        peers: r.open_table(PEERS)?.len()?,
        file_bytes: 0,
    })
}
