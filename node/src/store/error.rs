//! `StoreError`: what a store operation can fail with, and the conversions from redb's errors.

use std::path::PathBuf;

use super::SCHEMA_VERSION;

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
