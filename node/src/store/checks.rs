//! The checks at open: a damaged file is refused before anything writes to it.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::StoreError;
use super::types::*;

/// A file whose structure made the database library panic while `doing` it.
pub(super) fn broken(path: &Path, doing: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        message: format!("its structure is broken (the database library failed {doing} it)"),
    }
}

pub(super) fn open_error(path: &Path, e: redb::DatabaseError) -> StoreError {
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
pub(super) fn check_copy(path: &Path) -> Result<bool, StoreError> {
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

pub(super) fn check_integrity(db: &mut Database, path: &Path) -> Result<(), StoreError> {
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
pub(super) fn verify(db: &impl ReadableDatabase, path: &Path) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let walk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| verify_tables(db, path)));
    let message = match walk {
        Ok(Ok(records)) => {
            tracing::debug!(records, took_ms = started.elapsed().as_millis() as u64, "store checked");
            return Ok(());
        }
        Ok(Err(e)) => return Err(e),
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

/// The walk of [`verify`]: how many records were read, or the first that could not be.
fn verify_tables(db: &impl ReadableDatabase, path: &Path) -> Result<u64, StoreError> {
    use super::tables::*;
    let corrupt = |message: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let txn = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let mut records = 0u64;
    // Every row of a table is read (keys and values decoded by redb); with a type, each
    // value is decoded as that record too.
    macro_rules! walk {
        ($table:expr, $name:literal $(, $ty:ty)?) => {{
            match txn.open_table($table) {
                Ok(t) => {
                    for row in t.iter().map_err(|e| corrupt(format!("{}: {e}", $name)))? {
                        let (_key, _value) = row.map_err(|e| corrupt(format!("{}: {e}", $name)))?;
                        $(
                            postcard::from_bytes::<$ty>(_value.value())
                                .map_err(|e| corrupt(format!("a record in {} cannot be read: {e}", $name)))?;
                        )?
                        records += 1;
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(corrupt(format!("{}: {e}", $name))),
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
    walk!(RECEIPTS, "receipts-1", PendingReceipt);
    Ok(records)
}
