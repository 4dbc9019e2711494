//! Admission proofs: a MAC bound to prover and verifier, vouchers, and the verdict on a
//! proof a node was shown.

use super::*;

/// Proof of membership, bound to the prover and the verifier.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The mesh the prover belongs to.
    pub mesh_id: MeshId,
    /// The prover's current epoch.
    pub epoch: u32,
    /// Which secret of that epoch (first bytes of a hash of it): tells a verifier on a
    /// different branch apart from a wrong proof.
    pub commitment: [u8; 8],
    /// The MAC.
    pub mac: [u8; 32],
}

/// Why a proof was refused. A fixed vocabulary (no free text): a refusal is also what an
/// outsider says to us, and it is shown to users and agents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The prover belongs to another mesh (the first bytes of its id).
    #[error("member of another mesh ({})", hex(.0))]
    OtherMesh([u8; 4]),
    /// The MAC does not verify: the prover does not hold the secret (or replayed a proof).
    #[error("invalid membership proof")]
    BadProof,
    /// The prover was removed from the mesh.
    #[error("removed from this mesh")]
    Revoked,
    /// An old-epoch proof from a node that was not a member when the key was rotated.
    #[error("holds an outdated mesh key and was not a member when it was replaced")]
    NotInRoster,
    /// The prover's epoch is older than any this node keeps.
    #[error("holds a mesh key too old to be renewed; invite it again")]
    TooOld,
    /// Same epoch number, different secret: two members rotated the key at once.
    #[error("holds a different key for the same generation (two removals at once?); invite it again")]
    Conflict,
    /// One side is in open mode and the other is not: `true` when the prover is.
    #[error("{}", if *.0 { "a node in open mode (this node is not)" } else { "not in open mode (this node is)" })]
    OpenMismatch(bool),
    /// A proof for a newer key than the verifier's, and the prover did not renew the
    /// verifier's key (so the verifier may have been removed).
    #[error("proved with a newer mesh key this node was not given")]
    Unverified,
    /// A valid proof from a PeerId no member admitted (a copied mesh key).
    #[error("holds the mesh key but was never admitted by a member (a copied key?)")]
    NotAMember,
}

/// A member's word that a node joined through it: the inviter's signature over the mesh
/// id and the new member's PeerId. A node shows it with its proofs, so that members who
/// have not heard of it yet can check it against a member they know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    /// The member that admitted it (its key signs).
    pub inviter: PeerId,
    /// Signature over `"agentmesh-member-v1" ‖ mesh id ‖ member PeerId`.
    pub signature: Vec<u8>,
}

fn voucher_bytes(mesh: &MeshId, member: &PeerId) -> Vec<u8> {
    let mut b = VOUCHER_LABEL.to_vec();
    b.extend_from_slice(&mesh.0);
    b.extend_from_slice(&member.to_bytes());
    b
}

impl Voucher {
    /// `inviter` vouches that `member` belongs to `mesh`.
    pub fn sign(mesh: &MeshId, member: &PeerId, inviter: &Keypair) -> Result<Self, libp2p::identity::SigningError> {
        Ok(Self {
            inviter: inviter.public().to_peer_id(),
            signature: inviter.sign(&voucher_bytes(mesh, member))?,
        })
    }

    /// Whether it is a valid voucher for `member` in `mesh` (by whoever it names).
    pub fn verify(&self, mesh: &MeshId, member: &PeerId) -> bool {
        self.signature.len() <= 128
            && public_key_of(&self.inviter).is_some_and(|k| k.verify(&voucher_bytes(mesh, member), &self.signature))
    }
}

/// What a verifier concluded about a proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A member on the current epoch.
    Member,
    /// A member on an older epoch: admit it and hand it the current chain.
    Stale,
    /// The prover is on a newer epoch than we are: wait for a grant, then check again.
    Ahead,
    /// Not a member.
    Refused(Refusal),
}

fn admit_mac(secret: &[u8; 32], mesh: &MeshId, epoch: u32, prover: &PeerId, verifier: &PeerId) -> HmacSha256 {
    mac(
        secret,
        &[
            ADMIT_LABEL,
            &mesh.0,
            &epoch.to_be_bytes(),
            &prover.to_bytes(),
            &verifier.to_bytes(),
        ],
    )
}

impl Membership {
    /// Whether `voucher` shows that `peer` was admitted by a member this node knows.
    pub fn vouched(&self, peer: &PeerId, voucher: Option<&Voucher>) -> bool {
        voucher.is_some_and(|v| {
            v.inviter != *peer
                && self.is_member(&v.inviter)
                && !self.is_revoked(peer)
                && v.verify(&self.grant.mesh_id, peer)
        })
    }

    /// Proof that `prover` (this node) is a member, for `verifier` only.
    pub fn prove(&self, prover: &PeerId, verifier: &PeerId) -> Proof {
        let e = self.current();
        let m = admit_mac(&e.secret, &self.grant.mesh_id, e.number, prover, verifier);
        Proof {
            mesh_id: self.grant.mesh_id,
            epoch: e.number,
            commitment: commitment(&e.secret),
            mac: m.finalize().into_bytes().into(),
        }
    }

    /// Checks a proof `prover` (authenticated by the transport) showed this node, with the
    /// voucher it showed. A [`Verdict::Member`] from a PeerId not yet known as a member is
    /// for the caller to record ([`Membership::add_member`]).
    pub fn verify(&self, proof: &Proof, voucher: Option<&Voucher>, prover: &PeerId, verifier: &PeerId) -> Verdict {
        if proof.mesh_id != self.grant.mesh_id {
            let open_id = Membership::open().id();
            let mut short = [0u8; 4];
            short.copy_from_slice(&proof.mesh_id.0[..4]);
            return Verdict::Refused(if proof.mesh_id == open_id {
                Refusal::OpenMismatch(true)
            } else if self.open {
                Refusal::OpenMismatch(false)
            } else {
                Refusal::OtherMesh(short)
            });
        }
        if self.is_revoked(prover) {
            return Verdict::Refused(Refusal::Revoked);
        }
        let current = self.current().number;
        if proof.epoch > current {
            return Verdict::Ahead;
        }
        let Some(epoch) = self.epoch(proof.epoch) else {
            return Verdict::Refused(Refusal::TooOld);
        };
        if commitment(&epoch.secret) != proof.commitment {
            return Verdict::Refused(Refusal::Conflict);
        }
        let m = admit_mac(&epoch.secret, &self.grant.mesh_id, epoch.number, prover, verifier);
        if m.verify_slice(&proof.mac).is_err() {
            return Verdict::Refused(Refusal::BadProof);
        }
        if epoch.number == current {
            return if self.open || self.is_member(prover) || self.vouched(prover, voucher) || self.adopting {
                Verdict::Member
            } else {
                Verdict::Refused(Refusal::NotAMember)
            };
        }
        if self.carried_over(prover, epoch.number) {
            Verdict::Stale
        } else {
            Verdict::Refused(Refusal::NotInRoster)
        }
    }

    /// Whether `peer` was a member when epoch `number` ended (listed in the next roster).
    pub(super) fn carried_over(&self, peer: &PeerId, number: u32) -> bool {
        self.epoch(number + 1).is_some_and(|next| next.roster.contains(peer)) && !self.is_revoked(peer)
    }
}
