//! Inboxes: pages taken or peeked, read states, counts.

use super::*;

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
/// entries become `Read`, in the same transaction (the receipts this sets off go in
/// `shown`).
pub fn take_inbox(
    txn: &WriteTransaction,
    agent: &AgentName,
    q: InboxQuery,
    admit: Admit<'_, InboxEntry>,
    shown: &mut Shown,
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
        set_state(txn, agent, &seqs, ReadState::Read, shown)?;
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

/// Sets the read state of inbox entries (a `Read` entry never goes back). An entry leaving
/// `New` was shown to its recipient for the first time: its read receipt goes in `shown`.
pub fn set_state(
    txn: &WriteTransaction,
    agent: &AgentName,
    seqs: &[u64],
    state: ReadState,
    shown: &mut Shown,
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
        if e.state == ReadState::New && state != ReadState::New {
            shown.first_shown(txn, &e)?;
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
/// `Read`); returns how many changed (receipts set off go in `shown`).
pub fn mark_ids(
    txn: &WriteTransaction,
    agent: &AgentName,
    ids: &[MessageId],
    state: ReadState,
    shown: &mut Shown,
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
    Ok(set_state(txn, agent, &seqs, state, shown)?.len())
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
