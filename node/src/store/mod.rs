//! Durable state in one redb file: outbox, inboxes, topic logs, agents, peers.
//!
//! **One writer, grouped commits.** All writes run on one thread that owns the write side of
//! the database. It takes every job waiting in its queue, runs them in one transaction and
//! commits once (`Durability::Immediate`, one fsync), then answers each job. Under load this
//! batches many messages per fsync; when idle a job is committed alone, at once.
//!
//! **Reads are snapshots.** Readers open their own read transaction (MVCC) on the blocking
//! pool and never wait for the writer.
//!
//! **Jobs are atomic.** A job either returns a logical error *before* writing anything, or
//! writes. A storage error (I/O, disk full) aborts the whole group: no job of it is
//! committed and every job gets the error, so a caller that saw success knows its data is
//! on disk, and one that saw an error knows nothing changed.

mod checks;
mod error;
mod open;
pub mod ops;
mod recovery;
mod types;
mod writer;

use std::path::Path;
use std::sync::Arc;

use redb::{ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

pub use checks::MAX_COPY_CHECK;
pub use error::StoreError;
pub use ops::{HistoryFilter, HistoryPage, HistoryRow, InboxPage, InboxQuery, Settled};
pub use types::*;

use recovery::Shared;
use writer::{Msg, make_job};

/// Schema version written in the `meta-1` table.
pub const SCHEMA_VERSION: u32 = 1;
/// Jobs waiting for the writer before `write` callers are slowed down.
pub const WRITE_QUEUE: usize = 4096;
/// Most jobs committed in one transaction.
pub const MAX_GROUP: usize = 1024;

pub(crate) mod tables {
    use super::TableDefinition;

    /// `"schema"` → u32 LE, `"peer_id"` → PeerId bytes, `"seq"` → u64 LE, `"log"` → u64 LE
    /// (random, chosen when the file is created: names this store's log to catch-up peers).
    pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
    /// agent name → `AgentRecord`.
    pub const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents-1");
    /// (agent, seq) → `InboxEntry`.
    pub const INBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("inbox-1");
    /// (agent, seq) of inbox entries not yet read.
    pub const UNREAD: TableDefinition<(&str, u64), ()> = TableDefinition::new("unread-1");
    /// (agent, seq) of unread entries already pushed to a live session (a subset of `unread-1`).
    pub const NOTIFIED: TableDefinition<(&str, u64), ()> = TableDefinition::new("notified-1");
    /// message id → seq of the first record of it (inbox or topic log): de-duplication.
    pub const RECEIVED: TableDefinition<&[u8], u64> = TableDefinition::new("received-1");
    /// seq → `OutboxEntry`.
    pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox-1");
    /// (peer id bytes, seq) of outbox entries still to deliver, in send order.
    pub const PENDING: TableDefinition<(&[u8], u64), ()> = TableDefinition::new("pending-1");
    /// message id → outbox seq.
    pub const OUTBOX_IDS: TableDefinition<&[u8], u64> = TableDefinition::new("outbox-ids-1");
    /// (topic, agent) subscriptions.
    pub const SUBS: TableDefinition<(&str, &str), ()> = TableDefinition::new("subs-1");
    /// (topic, seq) → `TopicRecord`: every topic message this node saw.
    pub const TOPIC_LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("topic-log-1");
    /// (topic, seq) of local publications that reached no peer yet.
    pub const TOPIC_PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("topic-pending-1");
    /// peer id bytes → `PeerRecord`.
    pub const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers-1");
    /// peer id bytes → addresses the user dialed it at: kept connected across restarts.
    pub const DIALED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dialed-1");
    /// peer id bytes → `MemberRecord`: members of this node's mesh it has admitted.
    pub const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("members-1");
    /// join code token → `InviteRecord`.
    pub const INVITES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("invites-1");
    /// topic → when its first local subscription began (ms since the epoch): topic
    /// catch-up asks for messages from then on.
    pub const SUB_SINCE: TableDefinition<&str, u64> = TableDefinition::new("sub-since-1");
    /// (peer id bytes, topic) → how far that node's publications on the topic were caught up
    /// (`SyncCursor`).
    pub const SYNC: TableDefinition<(&[u8], &str), &[u8]> = TableDefinition::new("sync-1");
    /// (peer id bytes of the sending node, seq) → `PendingReceipt`: read receipts still to
    /// send, oldest first.
    pub const RECEIPTS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("receipts-1");
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    writer: mpsc::Sender<Msg>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.shared.path).finish()
    }
}

impl Store {
    /// Write jobs waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.writer.max_capacity() - self.writer.capacity()
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `f` in the next write transaction and waits until it is committed.
    ///
    /// `f` must return its logical errors before writing; see the module docs.
    pub async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = make_job(op, f);
        self.writer.send(Msg::Job(job)).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits every write queued so far and stops the writer. Later writes fail with
    /// [`StoreError::Closed`], later reads with a storage error saying so. The file is
    /// released before this returns, even while other handles remain.
    pub async fn close(&self) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self.writer.send(Msg::Stop(tx)).await.is_ok() {
            let _ = tokio::task::spawn_blocking(move || rx.recv()).await;
        }
    }

    /// Like [`Store::write`], but never waits for queue space: fails with
    /// [`StoreError::Busy`] when the writer is saturated. For the network loop.
    pub fn try_write<T, F>(
        &self,
        op: &'static str,
        f: F,
    ) -> Result<oneshot::Receiver<Result<T, StoreError>>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let (job, rx) = make_job(op, f);
        self.writer.try_send(Msg::Job(job)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        Ok(rx)
    }

    /// Runs `f` on a read snapshot, on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let db = shared.current()?;
            let txn = db.begin_read()?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Storage {
            op: "read",
            message: e.to_string(),
            disk_full: false,
        })?
    }

    /// Runs `f` on a read snapshot on the current thread (short reads only).
    pub fn read_now<T>(&self, f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let db = self.shared.current()?;
        let txn = db.begin_read()?;
        f(&txn)
    }
}

#[cfg(test)]
mod tests;
