//! Members and join codes.

use super::*;

/// Records that `peer` was admitted (or heard from) as a member.
pub fn put_member(txn: &WriteTransaction, peer: &PeerId, name: Option<String>, now: u64) -> Result<(), StoreError> {
    let key = peer.to_bytes();
    let mut t = txn.open_table(MEMBERS)?;
    let old: Option<MemberRecord> = match t.get(key.as_slice())? {
        Some(v) => Some(decode("members", v.value())?),
        None => None,
    };
    let rec = MemberRecord {
        name: name.or_else(|| old.as_ref().and_then(|o| o.name.clone())),
        since_ms: old.as_ref().map(|o| o.since_ms).unwrap_or(now),
        last_seen_ms: now,
    };
    let bytes = encode(&rec)?;
    t.insert(key.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Forgets a member; true if it was known.
pub fn remove_member(txn: &WriteTransaction, peer: &PeerId) -> Result<bool, StoreError> {
    Ok(txn.open_table(MEMBERS)?.remove(peer.to_bytes().as_slice())?.is_some())
}

/// Every member known here.
pub fn members(r: &ReadTransaction) -> Result<Vec<(PeerId, MemberRecord)>, StoreError> {
    let t = r.open_table(MEMBERS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Ok(p) = PeerId::from_bytes(k.value()) {
            out.push((p, decode("members", v.value())?));
        }
    }
    Ok(out)
}

/// After joining or leaving a mesh: the old members and join codes mean nothing.
pub fn reset_mesh(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.delete_table(MEMBERS)?;
    txn.delete_table(INVITES)?;
    txn.open_table(MEMBERS)?;
    txn.open_table(INVITES)?;
    Ok(())
}

/// Stores a new join code's token.
pub fn put_invite(txn: &WriteTransaction, token: &[u8; 16], rec: &InviteRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(INVITES)?.insert(token.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Uses a join code's token once (committed with the transaction). Spent and expired
/// tokens are kept a week, so a second use is told why it fails.
pub fn use_invite(txn: &WriteTransaction, token: &[u8; 16], now: u64) -> Result<InviteUse, StoreError> {
    const KEEP_MS: u64 = 7 * 24 * 3600 * 1000;
    let mut t = txn.open_table(INVITES)?;
    // Drop long-dead tokens.
    let mut dead = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        let rec: InviteRecord = decode("invites", v.value())?;
        if rec.expires_ms.saturating_add(KEEP_MS) < now {
            dead.push(k.value().to_vec());
        }
    }
    for k in dead {
        t.remove(k.as_slice())?;
    }
    let rec: InviteRecord = match t.get(token.as_slice())? {
        Some(v) => decode("invites", v.value())?,
        None => return Ok(InviteUse::Unknown),
    };
    if rec.expires_ms <= now {
        return Ok(InviteUse::Expired(rec.expires_ms));
    }
    if rec.uses_left == 0 {
        return Ok(InviteUse::UsedUp);
    }
    let left = rec.uses_left - 1;
    let bytes = encode(&InviteRecord { uses_left: left, ..rec })?;
    t.insert(token.as_slice(), bytes.as_slice())?;
    Ok(InviteUse::Accepted(left))
}
