//! The membership chain (`Grant`): its shape checked, taken from a member when newer, and
//! extended by a rotation that removes a node.

use super::*;

/// The membership chain a node holds (and hands to new and stale members).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The mesh.
    pub mesh_id: MeshId,
    /// Key for topic-name hashing; never rotates.
    pub name_key: [u8; 32],
    /// Epochs, oldest first; the last is current. Never empty.
    pub epochs: Vec<Epoch>,
    /// Nodes removed from the mesh.
    pub revoked: BTreeSet<PeerId>,
    /// The nodes known as members (never revoked ones).
    pub members: BTreeSet<PeerId>,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("mesh_id", &self.mesh_id.short())
            .field("epochs", &self.epochs)
            .field("revoked", &self.revoked.len())
            .field("members", &self.members.len())
            .finish()
    }
}

impl Grant {
    /// Checks the shape a received grant must have.
    pub fn check(&self) -> Result<(), GrantError> {
        if self.epochs.is_empty() || self.epochs.len() > MAX_EPOCHS {
            return Err(GrantError::EpochCount(self.epochs.len()));
        }
        if self.epochs.windows(2).any(|w| w[1].number != w[0].number + 1) {
            return Err(GrantError::NotConsecutive);
        }
        if self.epochs.iter().any(|e| e.roster.len() > MAX_ROSTER)
            || self.revoked.len() > MAX_REVOKED
            || self.members.len() > MAX_MEMBERS
        {
            return Err(GrantError::TooLong);
        }
        Ok(())
    }
}

/// Why a key chain (received, or read from `mesh.key`) is not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Too few or too many epochs.
    #[error("{0} epochs (1..={MAX_EPOCHS} allowed)")]
    EpochCount(usize),
    /// A gap in the epoch numbers.
    #[error("epochs are not consecutive")]
    NotConsecutive,
    /// A roster, the member list or the revocation list over its limit.
    #[error("roster, member or revocation list too long")]
    TooLong,
    /// For another mesh (its short id).
    #[error("for another mesh ({0})")]
    OtherMesh(String),
    /// Same epoch number, different secret.
    #[error("a different key for the same generation")]
    Conflict,
    /// Does not extend this node's chain.
    #[error("does not include our current key")]
    NotExtending,
    /// Not a key file or chain at all.
    #[error("{0}")]
    Malformed(String),
}

impl Membership {
    /// Membership from a grant received when joining, with the inviter's voucher.
    pub fn from_grant(grant: Grant, voucher: Option<Voucher>) -> Result<Self, GrantError> {
        grant.check()?;
        Ok(Self {
            grant,
            open: false,
            voucher,
            adopting: false,
        })
    }

    /// Takes a newer chain of the same mesh from a member. Returns whether anything
    /// changed; refuses a chain that does not extend ours (a different branch).
    pub fn accept_grant(&mut self, g: &Grant) -> Result<bool, GrantError> {
        g.check()?;
        if self.open {
            return Ok(false);
        }
        if g.mesh_id != self.grant.mesh_id {
            return Err(GrantError::OtherMesh(g.mesh_id.short()));
        }
        let ours = self.current().clone();
        let theirs_last = g.epochs.last().map(|e| e.number).unwrap_or(0);
        if theirs_last < ours.number {
            return Ok(false);
        }
        match g.epochs.iter().find(|e| e.number == ours.number) {
            Some(e) if e.secret == ours.secret => {}
            Some(_) => return Err(GrantError::Conflict),
            None => return Err(GrantError::NotExtending),
        }
        let mut changed = false;
        if theirs_last > ours.number {
            self.grant.epochs = g.epochs.clone();
            changed = true;
        }
        for p in &g.revoked {
            if self.grant.revoked.len() < MAX_REVOKED && self.grant.revoked.insert(*p) {
                changed = true;
            }
        }
        let revoked = self.grant.revoked.clone();
        let before = self.grant.members.len();
        self.grant.members.retain(|p| !revoked.contains(p));
        changed |= self.grant.members.len() != before;
        for p in &g.members {
            changed |= self.add_member(*p);
        }
        if theirs_last > ours.number {
            // A rotation lists the members: whatever a legacy key file let in is settled.
            self.adopting = false;
        }
        Ok(changed)
    }

    /// Removes `peer`: a new epoch whose secret it never gets. The known members are
    /// carried over (they may renew with the old secret); `others` too, only while a legacy
    /// key file is being adopted (nodes this one met as members before they were listed).
    pub fn rotate(&mut self, peer: PeerId, others: impl IntoIterator<Item = PeerId>) {
        let members: Vec<PeerId> = if self.adopting {
            self.grant.members.iter().copied().chain(others).collect()
        } else {
            self.grant.members.iter().copied().collect()
        };
        self.adopting = false;
        self.grant.revoked.insert(peer);
        self.grant.members.remove(&peer);
        while self.grant.revoked.len() > MAX_REVOKED {
            // Forget the oldest-sorted entry; a long-gone node matters least.
            let first = self.grant.revoked.iter().next().copied();
            if let Some(f) = first {
                self.grant.revoked.remove(&f);
            }
        }
        let mut roster: Vec<PeerId> = members
            .into_iter()
            .filter(|p| !self.grant.revoked.contains(p))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        roster.truncate(MAX_ROSTER);
        self.grant.members = roster.iter().copied().collect();
        let number = self.current().number + 1;
        self.grant.epochs.push(Epoch {
            number,
            secret: random(),
            roster,
        });
        if self.grant.epochs.len() > MAX_EPOCHS {
            let excess = self.grant.epochs.len() - MAX_EPOCHS;
            self.grant.epochs.drain(..excess);
        }
    }
}
