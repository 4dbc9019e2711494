//! The writer thread: every job waiting in the queue runs in one transaction, committed
//! once; a storage error fails the whole group and poisons the database until reopened.

use std::sync::Arc;

use redb::WriteTransaction;
use tokio::sync::{mpsc, oneshot};

use super::recovery::Shared;
use super::{MAX_GROUP, StoreError};

/// Answers a job with the group's outcome (`Some` when the commit failed).
type Finish = Box<dyn FnOnce(Option<StoreError>) + Send>;
/// A write job: runs against the group's transaction (or is handed the error that kept the
/// transaction from opening) and returns whether it failed on storage, plus its answer.
type Job = Box<dyn FnOnce(Result<&WriteTransaction, StoreError>) -> (bool, Finish) + Send>;

/// What the writer is sent.
pub(super) enum Msg {
    /// A job for the next group.
    Job(Job),
    /// Commit what is queued before it, then stop; answers when the file is released.
    Stop(std::sync::mpsc::SyncSender<()>),
}

/// A job running `f`, and where its answer arrives once the group is committed.
pub(super) fn make_job<T, F>(op: &'static str, f: F) -> (Job, oneshot::Receiver<Result<T, StoreError>>)
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

/// A storage error as seen by the operation `op`.
fn relabel(e: StoreError, op: &'static str) -> StoreError {
    match e {
        StoreError::Storage { message, disk_full, .. } => StoreError::Storage { op, message, disk_full },
        other => other,
    }
}

/// The writer thread's body: a group per turn until told to stop or every handle is gone.
pub(super) fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
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
        stop = take_queued(&mut rx, &mut jobs);
        run_group(&shared, &mut jobs);
    }
    // Refuse what is still queued, release the file, then answer the closer.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Stop(done) = msg {
            let _ = done.send(());
        }
    }
    if stop.is_some() {
        shared.release();
    }
    drop(shared);
    tracing::debug!("store writer stopped");
    if let Some(done) = stop {
        let _ = done.send(());
    }
}

/// Adds the jobs already waiting to the group, up to [`MAX_GROUP`]; returns a stop request
/// met among them (the jobs before it are still run).
fn take_queued(rx: &mut mpsc::Receiver<Msg>, jobs: &mut Vec<Job>) -> Option<std::sync::mpsc::SyncSender<()>> {
    while jobs.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(Msg::Job(j)) => jobs.push(j),
            Ok(Msg::Stop(done)) => return Some(done),
            Err(_) => break,
        }
    }
    None
}

/// Runs the group in one transaction, commits it and answers every job.
fn run_group(shared: &Shared, jobs: &mut Vec<Job>) {
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
            return;
        }
    };
    let mut finishes = Vec::with_capacity(jobs.len());
    let mut storage_failed = false;
    for job in jobs.drain(..) {
        let (failed, finish) = job(Ok(&txn));
        storage_failed |= failed;
        finishes.push(finish);
    }
    let outcome = commit(txn, storage_failed);
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

/// Commits the group's transaction, or aborts it when a job of it failed on storage.
fn commit(txn: WriteTransaction, storage_failed: bool) -> Option<StoreError> {
    if storage_failed {
        let _ = txn.abort();
        return Some(StoreError::Storage {
            op: "write",
            message: "another write in the same commit failed".into(),
            disk_full: false,
        });
    }
    match txn.commit() {
        Ok(()) => None,
        Err(e) => {
            let err = StoreError::storage("commit", e);
            tracing::error!(error = %err, "store: commit failed");
            Some(err)
        }
    }
}
