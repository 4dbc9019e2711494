//! Known peers and the addresses the user dialed.

use super::*;

/// Writes a peer record.
pub fn put_peer(txn: &WriteTransaction, rec: &PeerRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(PEERS)?
        .insert(rec.peer.to_bytes().as_slice(), bytes.as_slice())?;
    Ok(())
}

/// All known peers.
pub fn peers(r: &ReadTransaction) -> Result<Vec<PeerRecord>, StoreError> {
    let t = r.open_table(PEERS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode("peers", v.value())?);
    }
    Ok(out)
}

/// Remembers that the user dialed `peer` at `addr` (kept connected from now on).
pub fn put_dialed(txn: &WriteTransaction, peer: &PeerId, addr: &libp2p::Multiaddr) -> Result<(), StoreError> {
    let key = peer.to_bytes();
    let mut addrs: Vec<libp2p::Multiaddr> = {
        let t = txn.open_table(DIALED)?;
        let v = t.get(key.as_slice())?;
        match v {
            Some(v) => decode("dialed", v.value())?,
            None => Vec::new(),
        }
    };
    addrs.retain(|a| a != addr);
    addrs.insert(0, addr.clone());
    addrs.truncate(8);
    let bytes = encode(&addrs)?;
    txn.open_table(DIALED)?.insert(key.as_slice(), bytes.as_slice())?;
    Ok(())
}

/// Forgets a dialed peer; true if it was remembered.
pub fn remove_dialed(txn: &WriteTransaction, peer: &PeerId) -> Result<bool, StoreError> {
    Ok(txn.open_table(DIALED)?.remove(peer.to_bytes().as_slice())?.is_some())
}

/// Every dialed peer with its addresses.
pub fn dialed(r: &ReadTransaction) -> Result<Vec<(PeerId, Vec<libp2p::Multiaddr>)>, StoreError> {
    let t = r.open_table(DIALED)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (k, v) = row?;
        if let Ok(p) = PeerId::from_bytes(k.value()) {
            out.push((p, decode("dialed", v.value())?));
        }
    }
    Ok(out)
}
