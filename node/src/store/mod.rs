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

pub mod ops;
mod types;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use libp2p::PeerId;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

pub use ops::{HistoryFilter, HistoryPage, HistoryRow, InboxPage, InboxQuery, Settled};
pub use types::*;

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
}

/// Errors of the store. Cloneable, because one storage failure is reported to every job of
/// the failed group.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing the file failed; nothing of the operation was stored.
    #[error("{}", storage_message(op, message, *disk_full))]
    Storage {
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        message: String,
        /// The device is full.
        disk_full: bool,
    },
    /// The file is not a readable agentmesh store.
    #[error(
        "store file {path} is damaged or is not an agentmesh store ({message}); nothing was changed. To start over, stop any daemon, move the file aside (mv {path} {path}.broken) and start again: the node keeps its identity, but stored messages stay in the moved file"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What redb said.
        message: String,
    },
    /// The file belongs to another node identity.
    #[error(
        "store file {path} belongs to node {found}, but this home's identity is {expected}; was identity.key replaced? Restore the matching identity.key or move the store aside"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// PeerId recorded in the store.
        found: String,
        /// PeerId of identity.key.
        expected: String,
    },
    /// Another process has the file open.
    #[error("store file {0} is in use by another process (is a daemon already running on this home?)")]
    Locked(PathBuf),
    /// Written by a newer agentmesh.
    #[error(
        "store file {path} has schema version {found}; this build understands up to {SCHEMA_VERSION}: upgrade agentmesh"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: u32,
    },
    /// No agent of that name lives on this node.
    #[error("no agent named {0:?} on this node")]
    UnknownAgent(String),
    /// No message with that id is stored here.
    #[error("no message with id {0} is stored on this node")]
    UnknownMessage(String),
    /// A client-chosen message id already names another message.
    #[error(
        "message id {0} is already used by another message on this node; a repeated request must carry the same sender, recipient and text (a new message needs a fresh id)"
    )]
    IdTaken(String),
    /// A stored record could not be decoded.
    #[error("stored record in {table} could not be decoded: {message}")]
    Decode {
        /// The table.
        table: &'static str,
        /// Decoder message.
        message: String,
    },
    /// The writer thread is gone (the daemon is shutting down).
    #[error("the store is closed (the daemon is shutting down)")]
    Closed,
    /// Too many writes are waiting; try again.
    #[error("the store is busy; try again")]
    Busy,
}

fn storage_message(op: &str, message: &str, disk_full: bool) -> String {
    if disk_full {
        format!("cannot store ({op}): the disk is full; nothing was changed. Free some space and retry")
    } else if message.contains("Read-only file system") || message.contains("os error 30") {
        format!(
            "cannot store ({op}): the file system holding the store is read-only; nothing was changed, and what is stored stays readable. Make it writable again (or restart the daemon once it is repaired) and retry"
        )
    } else {
        format!("cannot store ({op}): {message}; nothing was changed")
    }
}

impl StoreError {
    pub(crate) fn storage(op: &'static str, e: impl Into<redb::Error>) -> Self {
        let e: redb::Error = e.into();
        let disk_full = match &e {
            redb::Error::Io(io) => {
                io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(libc::ENOSPC)
            }
            _ => false,
        } || e.to_string().contains("No space left");
        StoreError::Storage {
            op,
            message: e.to_string(),
            disk_full,
        }
    }

    /// True for failures of the storage itself (as opposed to a refused request).
    pub fn is_storage(&self) -> bool {
        matches!(self, StoreError::Storage { .. } | StoreError::Decode { .. })
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::storage("database", e)
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError
);

type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// A write job: runs against the group's transaction (or is handed the error that kept the
/// transaction from opening) and returns whether it failed on storage, plus its answer.
type Job = Box<dyn FnOnce(Result<&WriteTransaction, StoreError>) -> (bool, Finish) + Send>;

enum Msg {
    Job(Job),
    /// Commit what is queued before it, then stop; answers when the file is released.
    Stop(std::sync::mpsc::SyncSender<()>),
}

/// The database behind a slot that the writer can empty and refill: after an I/O error
/// redb refuses further work until the file is closed and opened again.
struct Shared {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    /// Why the slot is empty, for readers meanwhile.
    broken: std::sync::Mutex<Option<String>>,
    /// The storage error that poisoned the open database (redb refuses writes after an
    /// I/O error until reopened; reads keep working).
    poisoned: std::sync::Mutex<Option<StoreError>>,
    path: PathBuf,
    /// File-backed (can be reopened).
    reopenable: bool,
}

impl Shared {
    fn current(&self) -> Result<Arc<Database>, StoreError> {
        match self.db.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(db) => Ok(db.clone()),
            None => Err(StoreError::Storage {
                op: "open",
                message: self
                    .broken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_else(|| "the store is being reopened".into()),
                disk_full: false,
            }),
        }
    }

    /// Before a write: if a storage error poisoned the database, reopen it, but only once
    /// the filesystem has room again (opening writes, and a closed store could not even be
    /// read). Until then writes fail with the original error and reads keep working.
    fn ready_for_writes(&self) -> Result<Arc<Database>, StoreError> {
        let poisoned = self.poisoned.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(err) = poisoned {
            if !self.reopenable {
                return Err(err);
            }
            if matches!(&err, StoreError::Storage { disk_full: true, .. }) && !self.has_room() {
                return Err(err);
            }
            // Closing the handle would also lose reads if the file cannot be opened again
            // (a file system gone read-only): reopen only once a write would work.
            if !self.can_write() {
                return Err(err);
            }
            self.reopen(&err)?;
            *self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        match self.current() {
            Ok(db) => Ok(db),
            Err(e) => {
                self.reopen(&e)?;
                self.current()
            }
        }
    }

    /// Whether the store's directory takes a small durable write now.
    fn can_write(&self) -> bool {
        use std::io::Write;
        let probe = self.path.with_extension("probe");
        let ok = std::fs::File::create(&probe)
            .and_then(|mut f| {
                f.write_all(&[0u8; 4096])?;
                f.sync_all()
            })
            .is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }

    fn has_room(&self) -> bool {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        match rustix::fs::statvfs(dir) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize) >= REOPEN_MIN_FREE,
            Err(_) => true,
        }
    }

    /// Closes the database (waiting briefly for readers to let go) and opens it again.
    fn reopen(&self, why: &StoreError) -> Result<(), StoreError> {
        if !self.reopenable {
            return Ok(());
        }
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.to_string());
        if let Some(mut old) = old {
            let mut closed = false;
            for _ in 0..REOPEN_WAIT_STEPS {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        closed = true;
                        break;
                    }
                    Err(still_shared) => {
                        old = still_shared;
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                }
            }
            if !closed {
                // Readers still hold it: it closes when they let go; the next write opens it.
                return Err(StoreError::Busy);
            }
        }
        let db = Database::create(&self.path).map_err(|e| StoreError::storage("reopen", e))?;
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(path = %self.path.display(), "store reopened after a storage error");
        Ok(())
    }
}

impl Shared {
    fn poison(&self, err: StoreError) {
        let mut p = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(err);
        }
    }
}

/// Free bytes the filesystem needs before a poisoned store is reopened.
const REOPEN_MIN_FREE: u64 = 1024 * 1024;

/// Steps of 2 ms the writer waits for readers before reopening.
const REOPEN_WAIT_STEPS: usize = 1000;

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
    /// Opens (or creates) the store at `path` for the node `owner` and starts its writer
    /// thread. Refuses a damaged file, another node's file, or a file in use.
    pub fn open(path: &Path, owner: PeerId) -> Result<Self, StoreError> {
        // A damaged file is refused before anything writes to it. First a read-only look:
        // every record read and decoded. Then redb's page checksums (damage that still
        // decodes, like a flipped bit in a text), on a scratch copy so the file itself is
        // left exactly as it was if it is refused. A file not closed cleanly (a crash) can
        // be read neither way: redb recovers it to its last commit when it is opened for
        // writing, and both checks run then, before our first write.
        let mut checked = false;
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            let look = std::panic::catch_unwind(|| redb::Builder::new().open_read_only(path))
                .map_err(|_| broken(path, "opening"))?;
            match look {
                Ok(ro) => {
                    verify(&ro, path)?;
                    drop(ro);
                    checked = check_copy(path)?;
                }
                Err(redb::DatabaseError::RepairAborted) => {
                    tracing::info!(path = %path.display(), "store was not closed cleanly; recovering it to its last commit");
                }
                Err(e) => return Err(open_error(path, e)),
            }
        }
        let mut db = std::panic::catch_unwind(|| Database::create(path))
            .map_err(|_| broken(path, "recovering"))?
            .map_err(|e| open_error(path, e))?;
        if !checked {
            verify(&db, path)?;
            check_integrity(&mut db, path)?;
        }
        use std::os::unix::fs::PermissionsExt;
        // Messages are private: owner-only, whatever the umask.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::storage("open", redb::StorageError::Io(e)))?;
        Self::init(db, path, owner, true)
    }

    /// An in-memory store for tests.
    pub fn in_memory(owner: PeerId) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::storage("open", e))?;
        Self::init(db, Path::new(":memory:"), owner, false)
    }

    fn init(db: Database, path: &Path, owner: PeerId, reopenable: bool) -> Result<Self, StoreError> {
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(tables::META)?;
            let schema = meta.get("schema")?.map(|v| {
                let b = v.value();
                u32::from_le_bytes(b.try_into().unwrap_or([0xff; 4]))
            });
            match schema {
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(StoreError::TooNew {
                        path: path.to_path_buf(),
                        found: v,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA_VERSION.to_le_bytes().as_slice())?;
                }
            }
            let stored_owner = meta.get("peer_id")?.map(|v| v.value().to_vec());
            match stored_owner {
                Some(bytes) if bytes != owner.to_bytes() => {
                    let found = PeerId::from_bytes(&bytes)
                        .map(|p| p.to_string())
                        .unwrap_or_else(|_| "<unreadable>".into());
                    return Err(StoreError::Foreign {
                        path: path.to_path_buf(),
                        found,
                        expected: owner.to_string(),
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert("peer_id", owner.to_bytes().as_slice())?;
                }
            }
        }
        {
            let mut meta = txn.open_table(tables::META)?;
            if meta.get("log")?.is_none() {
                let log: u64 = rand::random::<u64>().max(1);
                meta.insert("log", log.to_le_bytes().as_slice())?;
            }
        }
        // Create every table so readers never meet a missing one.
        txn.open_table(tables::AGENTS)?;
        txn.open_table(tables::INBOX)?;
        txn.open_table(tables::UNREAD)?;
        txn.open_table(tables::NOTIFIED)?;
        txn.open_table(tables::RECEIVED)?;
        txn.open_table(tables::OUTBOX)?;
        txn.open_table(tables::PENDING)?;
        txn.open_table(tables::OUTBOX_IDS)?;
        txn.open_table(tables::SUBS)?;
        txn.open_table(tables::TOPIC_LOG)?;
        txn.open_table(tables::TOPIC_PENDING)?;
        txn.open_table(tables::PEERS)?;
        txn.open_table(tables::DIALED)?;
        txn.open_table(tables::MEMBERS)?;
        txn.open_table(tables::INVITES)?;
        txn.open_table(tables::SYNC)?;
        {
            // Topics subscribed before catch-up existed are caught up from now on.
            let subs = txn.open_table(tables::SUBS)?;
            let mut since = txn.open_table(tables::SUB_SINCE)?;
            let now = crate::ids::now_ms();
            let mut topics: Vec<String> = Vec::new();
            for row in subs.iter()? {
                let (k, _) = row?;
                let t = k.value().0.to_string();
                if topics.last() != Some(&t) {
                    topics.push(t);
                }
            }
            for t in topics {
                if since.get(t.as_str())?.is_none() {
                    since.insert(t.as_str(), now)?;
                }
            }
        }
        txn.commit()?;

        let shared = Arc::new(Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            broken: std::sync::Mutex::new(None),
            poisoned: std::sync::Mutex::new(None),
            path: path.to_path_buf(),
            reopenable,
        });
        let (tx, rx) = mpsc::channel::<Msg>(WRITE_QUEUE);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name("mesh-store-writer".into())
            .spawn(move || writer_loop(writer_shared, rx))
            .map_err(|e| StoreError::Storage {
                op: "start writer",
                message: e.to_string(),
                disk_full: false,
            })?;
        Ok(Self { shared, writer: tx })
    }

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
    /// [`StoreError::Closed`]. The file itself is released when the last handle is dropped.
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

/// A file whose structure made the database library panic while `doing` it.
fn broken(path: &Path, doing: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        message: format!("its structure is broken (the database library failed {doing} it)"),
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked(path.to_path_buf()),
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::EWOULDBLOCK) =>
        {
            StoreError::Locked(path.to_path_buf())
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() != std::io::ErrorKind::InvalidData && e.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            StoreError::storage("open", redb::StorageError::Io(e))
        }
        e => StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    }
}

/// Largest store checked on a scratch copy at start; a larger one is checked in place (its
/// open marker is then set even when it is refused).
pub const MAX_COPY_CHECK: u64 = 512 * 1024 * 1024;

/// redb's own check (page checksums, structure) on a copy of the closed file at `path`, next
/// to it. `Ok(false)` when no copy could be made (no room, too large): check in place.
fn check_copy(path: &Path) -> Result<bool, StoreError> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if len > MAX_COPY_CHECK {
        return Ok(false);
    }
    let copy = path.with_extension("check");
    let _ = std::fs::remove_file(&copy);
    if let Err(e) = std::fs::copy(path, &copy) {
        tracing::info!(error = %e, "no scratch copy of the store for its check; checking in place");
        let _ = std::fs::remove_file(&copy);
        return Ok(false);
    }
    let result = std::panic::catch_unwind(|| Database::open(&copy))
        .map_err(|_| broken(path, "opening"))
        .and_then(|db| match db {
            Ok(mut db) => check_integrity(&mut db, path),
            Err(e) => Err(open_error(path, e)),
        });
    let _ = std::fs::remove_file(&copy);
    result.map(|()| true)
}

fn check_integrity(db: &mut Database, path: &Path) -> Result<(), StoreError> {
    let integrity = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.check_integrity()));
    match integrity {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => {
            tracing::warn!(path = %path.display(), "store file had inconsistencies the database library repaired (its last commit is kept)");
            Ok(())
        }
        Ok(Err(e)) => Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(_) => Err(broken(path, "checking")),
    }
}

/// Reads and decodes every record of every table: a damaged file shows here, at start,
/// instead of as errors (or a crash inside redb) later. Proportional to the file's size
/// (a few milliseconds per ten thousand messages).
fn verify(db: &impl ReadableDatabase, path: &Path) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let walk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_tables(db)));
    let message = match walk {
        Ok(Ok(records)) => {
            tracing::debug!(records, took_ms = started.elapsed().as_millis() as u64, "store checked");
            return Ok(());
        }
        Ok(Err(e)) => e,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            format!("its structure is broken (the database library failed reading it: {what})")
        }
    };
    Err(StoreError::Corrupt {
        path: path.to_path_buf(),
        message,
    })
}

fn verify_tables(db: &impl ReadableDatabase) -> Result<u64, String> {
    use tables::*;
    let txn = db.begin_read().map_err(|e| e.to_string())?;
    let mut records = 0u64;
    // Every row of a table is read (keys and values decoded by redb); with a type, each
    // value is decoded as that record too.
    macro_rules! walk {
        ($table:expr, $name:literal $(, $ty:ty)?) => {{
            match txn.open_table($table) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| format!("{}: {e}", $name))? {
                        let (_key, _value) = row.map_err(|e| format!("{}: {e}", $name))?;
                        $(
                            postcard::from_bytes::<$ty>(_value.value())
                                .map_err(|e| format!("a record in {} cannot be read: {e}", $name))?;
                        )?
                        records += 1;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(format!("{}: {e}", $name)),
            }
        }};
    }
    walk!(META, "meta-1");
    walk!(AGENTS, "agents-1", AgentRecord);
    walk!(INBOX, "inbox-1", InboxEntry);
    walk!(UNREAD, "unread-1");
    walk!(NOTIFIED, "notified-1");
    walk!(RECEIVED, "received-1");
    walk!(OUTBOX, "outbox-1", OutboxEntry);
    walk!(PENDING, "pending-1");
    walk!(OUTBOX_IDS, "outbox-ids-1");
    walk!(SUBS, "subs-1");
    walk!(TOPIC_LOG, "topic-log-1", TopicRecord);
    walk!(TOPIC_PENDING, "topic-pending-1");
    walk!(PEERS, "peers-1", PeerRecord);
    walk!(DIALED, "dialed-1", Vec<libp2p::Multiaddr>);
    walk!(MEMBERS, "members-1", MemberRecord);
    walk!(INVITES, "invites-1", InviteRecord);
    walk!(SUB_SINCE, "sub-since-1");
    walk!(SYNC, "sync-1", SyncCursor);
    Ok(records)
}

fn make_job<T, F>(op: &'static str, f: F) -> (Job, oneshot::Receiver<Result<T, StoreError>>)
where
    T: Send + 'static,
    F: FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move |txn: Result<&WriteTransaction, StoreError>| {
        let result = match txn {
            Ok(txn) => f(txn),
            Err(e) => Err(relabel(e, op)),
        };
        let failed_storage = matches!(&result, Err(e) if e.is_storage());
        let finish: Finish = Box::new(move |commit_error: Option<StoreError>| {
            let out = match commit_error {
                Some(e) => match result {
                    Err(own) if own.is_storage() => Err(own),
                    _ => Err(relabel(e, op)),
                },
                None => result,
            };
            let _ = tx.send(out);
        });
        (failed_storage, finish)
    });
    (job, rx)
}

fn relabel(e: StoreError, op: &'static str) -> StoreError {
    match e {
        StoreError::Storage { message, disk_full, .. } => StoreError::Storage { op, message, disk_full },
        other => other,
    }
}

fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
    let mut jobs: Vec<Job> = Vec::with_capacity(64);
    let mut stop: Option<std::sync::mpsc::SyncSender<()>> = None;
    while stop.is_none() {
        match rx.blocking_recv() {
            Some(Msg::Job(j)) => jobs.push(j),
            Some(Msg::Stop(done)) => {
                stop = Some(done);
                break;
            }
            None => break,
        }
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Job(j)) => jobs.push(j),
                Ok(Msg::Stop(done)) => {
                    stop = Some(done);
                    break;
                }
                Err(_) => break,
            }
        }
        // After a storage error the database must be reopened before it takes writes.
        let db = shared.ready_for_writes();
        let txn = match db
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|db| db.begin_write().map_err(|e| StoreError::storage("begin", e)))
        {
            Ok(t) => t,
            Err(err) => {
                tracing::error!(error = %err, "store: cannot begin a write transaction");
                // Run nothing; every job gets the error.
                for job in jobs.drain(..) {
                    let (_, finish) = job(Err(err.clone()));
                    finish(None);
                }
                if let Ok(db) = db {
                    drop(db);
                    shared.poison(err);
                }
                continue;
            }
        };
        let mut finishes = Vec::with_capacity(jobs.len());
        let mut storage_failed = false;
        for job in jobs.drain(..) {
            let (failed, finish) = job(Ok(&txn));
            storage_failed |= failed;
            finishes.push(finish);
        }
        let outcome = if storage_failed {
            let _ = txn.abort();
            Some(StoreError::Storage {
                op: "write",
                message: "another write in the same commit failed".into(),
                disk_full: false,
            })
        } else {
            match txn.commit() {
                Ok(()) => None,
                Err(e) => {
                    let err = StoreError::storage("commit", e);
                    tracing::error!(error = %err, "store: commit failed");
                    Some(err)
                }
            }
        };
        for finish in finishes {
            finish(outcome.clone());
        }
        if let Some(err) = outcome {
            // redb refuses writes after an I/O error until reopened; the next write does
            // that as soon as the cause (a full disk) is gone.
            drop(db);
            shared.poison(err);
        }
    }
    // Refuse what is still queued, release the file, then answer the closer.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Stop(done) = msg {
            let _ = done.send(());
        }
    }
    drop(shared);
    tracing::debug!("store writer stopped");
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests;
