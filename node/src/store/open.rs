//! Opening a store: the file checked, the meta records checked (schema, owner) or written,
//! every table created, then the writer thread started.

use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
use redb::{Database, ReadableTable, WriteTransaction};
use tokio::sync::mpsc;

use super::checks::{broken, check_copy, check_integrity, open_error, verify};
use super::recovery::Shared;
use super::writer::{Msg, writer_loop};
use super::{SCHEMA_VERSION, Store, StoreError, WRITE_QUEUE, tables};

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
        check_meta(&txn, path, owner)?;
        create_tables(&txn)?;
        backfill_sub_since(&txn)?;
        txn.commit()?;

        let shared = Arc::new(Shared::new(db, path, reopenable));
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
}

/// The schema version (refused when newer than this build's) and the owner (refused when
/// another node's) checked, or written into a new file; the store's log id chosen once.
fn check_meta(txn: &WriteTransaction, path: &Path, owner: PeerId) -> Result<(), StoreError> {
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
    if meta.get("log")?.is_none() {
        let log: u64 = rand::random::<u64>().max(1);
        meta.insert("log", log.to_le_bytes().as_slice())?;
    }
    Ok(())
}

/// Creates every table so readers never meet a missing one.
fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
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
    txn.open_table(tables::RECEIPTS)?;
    Ok(())
}

/// Topics subscribed before catch-up existed are caught up from now on.
fn backfill_sub_since(txn: &WriteTransaction) -> Result<(), StoreError> {
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
    Ok(())
}
