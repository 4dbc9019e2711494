//! Local agents.

use super::*;

/// Writes (creates or replaces) a local agent.
pub fn put_agent(txn: &WriteTransaction, rec: &AgentRecord) -> Result<(), StoreError> {
    let bytes = encode(rec)?;
    txn.open_table(AGENTS)?.insert(rec.name.as_str(), bytes.as_slice())?;
    Ok(())
}

/// Returns the agent, creating it with `kind` if it does not exist; refreshes `last_seen`.
pub fn ensure_agent(txn: &WriteTransaction, name: &AgentName, kind: &str, now: u64) -> Result<AgentRecord, StoreError> {
    Ok(ensure_agent_new(txn, name, kind, now)?.0)
}

/// Like [`ensure_agent`], also saying whether the agent was created now.
pub fn ensure_agent_new(
    txn: &WriteTransaction,
    name: &AgentName,
    kind: &str,
    now: u64,
) -> Result<(AgentRecord, bool), StoreError> {
    let existing = {
        let t = txn.open_table(AGENTS)?;
        let v = t.get(name.as_str())?;
        match v {
            Some(v) => Some(decode::<AgentRecord>("agents", v.value())?),
            None => None,
        }
    };
    let created = existing.is_none();
    let rec = match existing {
        Some(mut r) => {
            r.last_seen_ms = now;
            r
        }
        None => AgentRecord {
            name: name.clone(),
            kind: kind.to_string(),
            cwd: None,
            repo: None,
            branch: None,
            summary: None,
            created_ms: now,
            last_seen_ms: now,
        },
    };
    put_agent(txn, &rec)?;
    Ok((rec, created))
}

/// One local agent.
pub fn agent(r: &ReadTransaction, name: &str) -> Result<Option<AgentRecord>, StoreError> {
    let t = r.open_table(AGENTS)?;
    let v = t.get(name)?;
    v.map(|v| decode("agents", v.value())).transpose()
}

/// All local agents, by name.
pub fn agents(r: &ReadTransaction) -> Result<Vec<AgentRecord>, StoreError> {
    let t = r.open_table(AGENTS)?;
    let mut out = Vec::new();
    for row in t.iter()? {
        let (_, v) = row?;
        out.push(decode("agents", v.value())?);
    }
    Ok(out)
}

/// Whether a local agent exists.
pub fn agent_exists(txn: &WriteTransaction, name: &AgentName) -> Result<bool, StoreError> {
    Ok(txn.open_table(AGENTS)?.get(name.as_str())?.is_some())
}
