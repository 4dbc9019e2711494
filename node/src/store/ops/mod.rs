//! Store operations. Write operations take the group's `WriteTransaction` and follow the
//! rule of the module: check first, then write. Read operations take a snapshot.

use libp2p::PeerId;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;
use super::tables::*;
use super::types::*;
use crate::ids::{AgentName, MessageId, NodeName, TopicName};
use crate::wire::{Outcome, Rejection, TopicEnvelope, WireMessage};

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(v).map_err(|e| StoreError::Decode {
        table: "encode",
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Decode {
        table,
        message: e.to_string(),
    })
}

/// Allocates the next node-wide sequence number.
fn next_seq(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let cur = meta
        .get("seq")?
        .map(|v| u64::from_le_bytes(v.value().try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let next = cur + 1;
    meta.insert("seq", next.to_le_bytes().as_slice())?;
    Ok(next)
}

mod agents;
mod dm;
mod history;
mod inbox;
mod membership;
mod peers;
mod receipts;
mod topics;

pub use agents::*;
pub use dm::*;
pub use history::*;
pub use inbox::*;
pub use membership::*;
pub use peers::*;
pub use receipts::*;
pub use topics::*;
