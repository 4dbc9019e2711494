//! Recovery after I/O errors: the database behind a slot the writer empties and refills,
//! reopened once the cause (a full disk, a read-only file system) is gone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::Database;

use super::StoreError;

/// The database behind a slot that the writer can empty and refill: after an I/O error
/// redb refuses further work until the file is closed and opened again.
pub(super) struct Shared {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    /// Why the slot is empty, for readers meanwhile.
    broken: std::sync::Mutex<Option<String>>,
    /// The storage error that poisoned the open database (redb refuses writes after an
    /// I/O error until reopened; reads keep working).
    poisoned: std::sync::Mutex<Option<StoreError>>,
    /// The store file.
    pub(super) path: PathBuf,
    /// File-backed (can be reopened).
    reopenable: bool,
}

impl Shared {
    pub(super) fn new(db: Database, path: &Path, reopenable: bool) -> Self {
        Shared {
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            broken: std::sync::Mutex::new(None),
            poisoned: std::sync::Mutex::new(None),
            path: path.to_path_buf(),
            reopenable,
        }
    }

    /// The open database, or why there is none (being reopened).
    pub(super) fn current(&self) -> Result<Arc<Database>, StoreError> {
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
    pub(super) fn ready_for_writes(&self) -> Result<Arc<Database>, StoreError> {
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
        if !self.take(why.to_string()) {
            // Readers still hold it: it closes when they let go; the next write opens it.
            return Err(StoreError::Busy);
        }
        let db = Database::create(&self.path).map_err(|e| StoreError::storage("reopen", e))?;
        *self.db.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(db));
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = None;
        tracing::info!(path = %self.path.display(), "store reopened after a storage error");
        Ok(())
    }

    /// Empties the slot (readers meanwhile get `why`) and closes the database once the
    /// readers still holding it let go, waiting up to about 2 s for them. False if they
    /// did not in time (it closes when the last one does).
    fn take(&self, why: String) -> bool {
        let old = self.db.write().unwrap_or_else(|e| e.into_inner()).take();
        *self.broken.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        let Some(mut old) = old else { return true };
        for _ in 0..REOPEN_WAIT_STEPS {
            match Arc::try_unwrap(old) {
                Ok(db) => {
                    drop(db);
                    return true;
                }
                Err(still_shared) => {
                    old = still_shared;
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
        false
    }

    /// On stop, after the last write: closes the file for good, so that it is released
    /// even while handles to the store (a task not yet finished, a reader) remain; they
    /// get an error saying the store is closed.
    pub(super) fn release(&self) {
        if !self.take("the store is closed".into()) {
            tracing::warn!(path = %self.path.display(), "store readers still busy at stop; the file is released when they finish");
        }
    }

    /// Marks the open database as refusing writes until reopened (the first error is kept).
    pub(super) fn poison(&self, err: StoreError) {
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
