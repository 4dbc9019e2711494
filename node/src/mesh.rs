//! Mesh membership: the secret that says who belongs, proofs of it, and what it seals.
//!
//! A mesh is a random id plus a chain of *epochs*, each with a 32-byte secret. Every
//! member holds the chain in `<home>/mesh.key` (mode 0600). A fresh node starts a mesh of
//! its own; `mesh join` replaces it with the inviter's; `mesh remove` starts a new epoch
//! whose secret the removed node never sees.
//!
//! * **Admission proof**: `HMAC-SHA256(secret, "agentmesh-admit-v1" ‖ mesh id ‖ epoch ‖
//!   prover ‖ verifier)`. Both PeerIds come from the Noise handshake, so a proof shown to
//!   one node is worthless to anyone else.
//! * **Members are PeerIds**: the secret alone admits nobody. A proof counts only from a
//!   PeerId this node knows as a member ([`Grant::members`]: learned from a join it
//!   granted, from a member's chain, or when a founding member vouched for it), or from one
//!   carrying a [`Voucher`]: its inviter's signature, checked against a known member. So a
//!   copy of `mesh.key` used under another identity is refused.
//! * **Epochs**: a proof for an older epoch is accepted only from a node listed in the
//!   next epoch's *roster* (the members when the key was rotated) and never from a
//!   revoked node; such a node is handed the current chain (a [`Grant`]). So a removed
//!   node can neither get in with the old secret nor bring in a fresh identity with it.
//! * **Sealing**: gossip payloads (topics, directory) are XChaCha20-Poly1305 under a key
//!   derived from the epoch secret, with the gossip topic and the publishing PeerId as
//!   associated data: a non-member hop learns nothing, and a payload republished under
//!   another node's name or on another topic does not open.
//! * **Topic names** on the wire are keyed hashes (a per-mesh key that never rotates), so
//!   even the names of a mesh's topics stay inside it.
//!
//! Open mode uses a fixed, public secret: open nodes admit each other, and only them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{KeyInit, Mac};
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Epochs kept (older ones are forgotten; a member that missed more rotations than this
/// must be invited again).
pub const MAX_EPOCHS: usize = 8;
/// Most nodes listed in one epoch's roster.
pub const MAX_ROSTER: usize = 1024;
/// Most revoked nodes remembered.
pub const MAX_REVOKED: usize = 1024;
/// Most members known by PeerId.
pub const MAX_MEMBERS: usize = 1024;
/// Most addresses carried in a join code.
pub const MAX_INVITE_ADDRS: usize = 8;
/// Prefix of a join code.
pub const INVITE_PREFIX: &str = "agentmesh:";
/// Largest join code accepted, in characters.
pub const MAX_INVITE_CHARS: usize = 4096;

/// `mesh.key` before members were known by PeerId (a bare grant without them).
const FILE_MAGIC_V1: &[u8; 8] = b"AMMESH\x00\x01";
const FILE_MAGIC: &[u8; 8] = b"AMMESH\x00\x02";
const VOUCHER_LABEL: &[u8] = b"agentmesh-member-v1";
const ADMIT_LABEL: &[u8] = b"agentmesh-admit-v1";
const COMMIT_LABEL: &[u8] = b"agentmesh-epoch-commit-v1";
const SEAL_LABEL: &[u8] = b"agentmesh-gossip-v1";
const TOPIC_LABEL: &[u8] = b"agentmesh-topic-v1";
const INVITE_LABEL: &[u8] = b"agentmesh-invite-v1";
const OPEN_LABEL: &[u8] = b"agentmesh open mesh v1 (no secret: anyone can join)";

/// A mesh's public identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MeshId(pub [u8; 16]);

impl MeshId {
    /// The first 8 hex digits, for display (`mesh 3f2a9c01`).
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl std::fmt::Display for MeshId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// One generation of the mesh secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    /// Increases by one with every rotation.
    pub number: u32,
    /// The secret.
    pub secret: [u8; 32],
    /// Nodes that were members when this epoch began (empty for a mesh's first epoch);
    /// they may still prove with the previous secret and are then handed this one.
    pub roster: Vec<PeerId>,
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epoch")
            .field("number", &self.number)
            .field("commitment", &hex(&commitment(&self.secret)))
            .field("roster", &self.roster.len())
            .finish()
    }
}

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

/// Why `mesh.key` could not be provisioned for a node.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// Its identity could not be read or made.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The founder could not sign.
    #[error("cannot sign a voucher: {0}")]
    Sign(#[from] libp2p::identity::SigningError),
    /// The key file could not be written.
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

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

/// Why a sealed payload did not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Not a sealed payload.
    #[error("malformed sealed payload")]
    Malformed,
    /// Sealed for an epoch this node does not know (newer, or forgotten).
    #[error("sealed for unknown epoch {0}")]
    UnknownEpoch(u32),
    /// Sealed for an old epoch by a node that was not a member when it ended, or revoked.
    #[error("sealed with an outdated key by a node that may not use it")]
    NotAllowed,
    /// Authentication failed: wrong key, tampered, or republished by another node or on
    /// another topic.
    #[error("does not authenticate")]
    Forged,
}

/// A gossip payload sealed for the mesh.
#[derive(Serialize, Deserialize)]
struct Sealed {
    epoch: u32,
    nonce: [u8; 24],
    ct: Vec<u8>,
}

/// What a node knows about its mesh.
#[derive(Clone, PartialEq, Eq)]
pub struct Membership {
    grant: Grant,
    open: bool,
    /// This node's voucher from the member that admitted it (none for a founder).
    voucher: Option<Voucher>,
    /// Read from a `mesh.key` written before members were known by PeerId: valid proofs
    /// from unknown PeerIds are still taken (and the PeerIds learned) until the next key
    /// rotation, which lists the members.
    adopting: bool,
}

/// `mesh.key`: the chain and this node's own voucher.
#[derive(Serialize, Deserialize)]
struct MeshFile {
    grant: Grant,
    voucher: Option<Voucher>,
    adopting: bool,
}

/// `mesh.key` before members were known by PeerId.
#[derive(Deserialize)]
struct GrantV1 {
    mesh_id: MeshId,
    name_key: [u8; 32],
    epochs: Vec<Epoch>,
    revoked: BTreeSet<PeerId>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("grant", &self.grant)
            .field("open", &self.open)
            .field("vouched", &self.voucher.as_ref().map(|v| v.inviter))
            .field("adopting", &self.adopting)
            .finish()
    }
}

/// Errors reading or writing `mesh.key`.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Reading or writing failed.
    #[error("mesh key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file exists but does not hold a mesh key.
    #[error(
        "mesh key file {path} is damaged ({why}); it is left untouched: restore it from a backup, or move it aside and join your mesh again (mesh invite on a member, then mesh join)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: GrantError,
    },
    /// Other users can read the file.
    #[error("mesh key file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b[..]);
    b
}

/// First 8 bytes of a hash of an epoch secret.
pub fn commitment(secret: &[u8; 32]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(COMMIT_LABEL);
    h.update(secret);
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"));
    for p in parts {
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    m
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
    /// A new mesh with a fresh secret.
    pub fn generate() -> Self {
        Self {
            grant: Grant {
                mesh_id: MeshId(random()),
                name_key: random(),
                epochs: vec![Epoch {
                    number: 1,
                    secret: random(),
                    roster: Vec::new(),
                }],
                revoked: BTreeSet::new(),
                members: BTreeSet::new(),
            },
            open: false,
            voucher: None,
            adopting: false,
        }
    }

    /// The open mesh: a fixed, public secret shared by every node in open mode.
    pub fn open() -> Self {
        let derive = |what: &[u8]| -> [u8; 32] {
            let mut h = Sha256::new();
            h.update(OPEN_LABEL);
            h.update(what);
            h.finalize().into()
        };
        let id = derive(b"id");
        let mut mesh_id = [0u8; 16];
        mesh_id.copy_from_slice(&id[..16]);
        Self {
            grant: Grant {
                mesh_id: MeshId(mesh_id),
                name_key: derive(b"names"),
                epochs: vec![Epoch {
                    number: 1,
                    secret: derive(b"secret"),
                    roster: Vec::new(),
                }],
                revoked: BTreeSet::new(),
                members: BTreeSet::new(),
            },
            open: true,
            voucher: None,
            adopting: false,
        }
    }

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

    /// This node's voucher, shown with its proofs.
    pub fn voucher(&self) -> Option<&Voucher> {
        self.voucher.as_ref()
    }

    /// The nodes known as members.
    pub fn members(&self) -> &BTreeSet<PeerId> {
        &self.grant.members
    }

    /// Whether `peer` is known as a member (always, in the open mesh).
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.open || (self.grant.members.contains(peer) && !self.is_revoked(peer))
    }

    /// Records `peer` as a member (this node at start, a node whose join it granted, one
    /// that proved with a valid voucher). Returns whether anything changed; a revoked node,
    /// the open mesh and a full list change nothing.
    pub fn add_member(&mut self, peer: PeerId) -> bool {
        if self.open || self.is_revoked(&peer) || self.grant.members.len() >= MAX_MEMBERS {
            return false;
        }
        self.grant.members.insert(peer)
    }

    /// Whether `voucher` shows that `peer` was admitted by a member this node knows.
    pub fn vouched(&self, peer: &PeerId, voucher: Option<&Voucher>) -> bool {
        voucher.is_some_and(|v| {
            v.inviter != *peer
                && self.is_member(&v.inviter)
                && !self.is_revoked(peer)
                && v.verify(&self.grant.mesh_id, peer)
        })
    }

    /// Makes the node whose identity is (or will be) at `identity_path` a member of this
    /// mesh ahead of its first start, as `mesh join` would: creates the identity if there
    /// is none, and writes `mesh_path` with `founder`'s voucher for it. For meshes made
    /// ahead of time (provisioning, tests, benchmarks); `founder` must be a member.
    pub fn provision(
        &self,
        identity_path: &Path,
        mesh_path: &Path,
        founder: &Keypair,
    ) -> Result<PeerId, ProvisionError> {
        let key = crate::identity::load_or_create(identity_path)?;
        let peer = key.public().to_peer_id();
        self.vouched_for(&peer, founder)?.save(mesh_path)?;
        Ok(peer)
    }

    /// Gives this node a voucher signed by `inviter` (which must be a member of this mesh)
    /// and records both as members: how a mesh made ahead of time (provisioning, tests,
    /// benchmarks) stands in for `mesh join`.
    pub fn vouched_for(&self, member: &PeerId, inviter: &Keypair) -> Result<Self, libp2p::identity::SigningError> {
        let mut m = self.clone();
        m.voucher = Some(Voucher::sign(&self.grant.mesh_id, member, inviter)?);
        m.add_member(inviter.public().to_peer_id());
        m.add_member(*member);
        Ok(m)
    }

    /// Whether this is the open mesh.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// The mesh id.
    pub fn id(&self) -> MeshId {
        self.grant.mesh_id
    }

    /// The current epoch.
    pub fn current(&self) -> &Epoch {
        // `Grant::check` and every constructor keep at least one epoch.
        self.grant
            .epochs
            .last()
            .unwrap_or_else(|| unreachable!("a membership always has an epoch"))
    }

    /// The epoch with this number, if kept.
    pub fn epoch(&self, number: u32) -> Option<&Epoch> {
        self.grant.epochs.iter().find(|e| e.number == number)
    }

    /// Removed nodes.
    pub fn revoked(&self) -> &BTreeSet<PeerId> {
        &self.grant.revoked
    }

    /// Whether `peer` was removed.
    pub fn is_revoked(&self, peer: &PeerId) -> bool {
        self.grant.revoked.contains(peer)
    }

    /// The full chain, to hand to a new or stale member.
    pub fn grant(&self) -> Grant {
        self.grant.clone()
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
    fn carried_over(&self, peer: &PeerId, number: u32) -> bool {
        self.epoch(number + 1).is_some_and(|next| next.roster.contains(peer)) && !self.is_revoked(peer)
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

    fn seal_key(&self, epoch: &Epoch) -> XChaCha20Poly1305 {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&self.grant.mesh_id.0), &epoch.secret);
        let mut okm = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit.
        let _ = hk.expand(SEAL_LABEL, &mut okm);
        XChaCha20Poly1305::new((&okm).into())
    }

    fn aad(topic: &str, source: &PeerId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(topic.len() + 48);
        aad.extend_from_slice(&(topic.len() as u32).to_be_bytes());
        aad.extend_from_slice(topic.as_bytes());
        aad.extend_from_slice(&source.to_bytes());
        aad
    }

    /// Seals a gossip payload `source` (this node) publishes on gossip topic `topic`.
    pub fn seal(&self, topic: &str, source: &PeerId, plaintext: &[u8]) -> Vec<u8> {
        let e = self.current();
        let nonce: [u8; 24] = random();
        let aad = Self::aad(topic, source);
        let ct = self
            .seal_key(e)
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        postcard::to_allocvec(&Sealed {
            epoch: e.number,
            nonce,
            ct,
        })
        .unwrap_or_default()
    }

    /// Opens a payload published by `source` on `topic`.
    pub fn open_sealed(&self, topic: &str, source: &PeerId, data: &[u8]) -> Result<Vec<u8>, OpenError> {
        let sealed: Sealed = postcard::from_bytes(data).map_err(|_| OpenError::Malformed)?;
        let epoch = self.epoch(sealed.epoch).ok_or(OpenError::UnknownEpoch(sealed.epoch))?;
        if self.is_revoked(source) {
            return Err(OpenError::NotAllowed);
        }
        if epoch.number != self.current().number && !self.carried_over(source, epoch.number) {
            return Err(OpenError::NotAllowed);
        }
        let aad = Self::aad(topic, source);
        self.seal_key(epoch)
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ct,
                    aad: &aad,
                },
            )
            .map_err(|_| OpenError::Forged)
    }

    /// The wire name of a user topic: a keyed hash, stable for the mesh's life.
    pub fn topic_tag(&self, topic: &str) -> String {
        let d = mac(&self.grant.name_key, &[TOPIC_LABEL, topic.as_bytes()])
            .finalize()
            .into_bytes();
        hex(&d[..16])
    }

    /// Reads `mesh.key`; `None` if it does not exist.
    pub fn load(path: &Path) -> Result<Option<Self>, MeshError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(MeshError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = fs::metadata(path)
            .map_err(|source| MeshError::Io {
                path: path.to_path_buf(),
                source,
            })?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(MeshError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        Self::from_file_bytes(&bytes)
            .map(Some)
            .map_err(|why| MeshError::Corrupt {
                path: path.to_path_buf(),
                why,
            })
    }

    /// The contents of a `mesh.key` file.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, String> {
        let mut body = FILE_MAGIC.to_vec();
        let file = MeshFile {
            grant: self.grant.clone(),
            voucher: self.voucher.clone(),
            adopting: self.adopting,
        };
        body.extend(postcard::to_allocvec(&file).map_err(|e| e.to_string())?);
        Ok(body)
    }

    /// Parses the contents of a `mesh.key` file (also the format before members were
    /// known by PeerId, which is adopted: see [`Membership::rotate`]).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, GrantError> {
        let malformed = |e: postcard::Error| GrantError::Malformed(e.to_string());
        if let Some(body) = bytes.strip_prefix(FILE_MAGIC_V1) {
            let g: GrantV1 = postcard::from_bytes(body).map_err(malformed)?;
            let grant = Grant {
                mesh_id: g.mesh_id,
                name_key: g.name_key,
                epochs: g.epochs,
                revoked: g.revoked,
                members: BTreeSet::new(),
            };
            grant.check()?;
            return Ok(Self {
                grant,
                open: false,
                voucher: None,
                adopting: true,
            });
        }
        let body = bytes
            .strip_prefix(FILE_MAGIC)
            .ok_or_else(|| GrantError::Malformed("wrong header".into()))?;
        let file: MeshFile = postcard::from_bytes(body).map_err(malformed)?;
        file.grant.check()?;
        Ok(Self {
            grant: file.grant,
            open: false,
            voucher: file.voucher,
            adopting: file.adopting,
        })
    }

    /// Reads `mesh.key`, or starts a new mesh and writes it there.
    pub fn load_or_create(path: &Path) -> Result<Self, MeshError> {
        if let Some(m) = Self::load(path)? {
            return Ok(m);
        }
        let m = Self::generate();
        m.save(path)?;
        tracing::info!(mesh = %m.id().short(), "started a new mesh");
        Ok(m)
    }

    /// Writes `mesh.key` atomically (mode 0600). The open mesh is never written.
    pub fn save(&self, path: &Path) -> Result<(), MeshError> {
        if self.open {
            return Ok(());
        }
        let io = |source| MeshError::Io {
            path: path.to_path_buf(),
            source,
        };
        let body = self.to_file_bytes().map_err(|e| io(std::io::Error::other(e)))?;
        crate::home::write_private(path, &body).map_err(io)?;
        Ok(())
    }
}

/// What a join code says, signed by the inviter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteBody {
    /// The mesh being joined (public; lets a member see it is already in it).
    pub mesh_id: MeshId,
    /// The inviting node (its key signs the code; the joiner dials it).
    pub inviter: PeerId,
    /// The inviter's name, for display.
    pub inviter_name: String,
    /// Where to reach the inviter (direct and relayed).
    pub addrs: Vec<Multiaddr>,
    /// The one-time token (a secret: whoever holds the code can use it).
    pub token: [u8; 16],
    /// Expiry, ms since the epoch (inviter's clock).
    pub expires_ms: u64,
}

/// A signed join code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The content.
    pub body: InviteBody,
    /// The inviter's signature over the content.
    pub signature: Vec<u8>,
}

/// Why a join code is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    /// Not shaped like a join code.
    #[error("not an agentmesh join code (it starts with {INVITE_PREFIX})")]
    NotACode,
    /// Damaged in transit, or altered.
    #[error("this join code is damaged ({0}); copy it again in full")]
    Damaged(String),
    /// The signature does not match the inviter.
    #[error("this join code was altered or damaged: its signature does not match the inviting node")]
    BadSignature,
}

fn signed_bytes(body: &InviteBody) -> Vec<u8> {
    let mut b = INVITE_LABEL.to_vec();
    b.extend(postcard::to_allocvec(body).unwrap_or_default());
    b
}

/// The public key inside an Ed25519 PeerId.
pub fn public_key_of(peer: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Identity multihash (code 0): the digest is the protobuf-encoded public key.
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

impl Invite {
    /// Signs `body` with the inviter's key.
    pub fn sign(body: InviteBody, key: &Keypair) -> Result<Self, libp2p::identity::SigningError> {
        let signature = key.sign(&signed_bytes(&body))?;
        Ok(Self { body, signature })
    }

    /// Whether the signature is the inviter's.
    pub fn verify(&self) -> bool {
        public_key_of(&self.body.inviter).is_some_and(|k| k.verify(&signed_bytes(&self.body), &self.signature))
    }

    /// The text form: `agentmesh:` and base64url.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        format!(
            "{INVITE_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        )
    }

    /// Parses and checks a join code (signature included; expiry is the caller's).
    pub fn decode(text: &str) -> Result<Self, InviteError> {
        use base64::Engine;
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if t.len() > MAX_INVITE_CHARS {
            return Err(InviteError::Damaged(format!(
                "longer than {MAX_INVITE_CHARS} characters"
            )));
        }
        let b64 = t.strip_prefix(INVITE_PREFIX).ok_or(InviteError::NotACode)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|e| InviteError::Damaged(e.to_string()))?;
        let inv: Invite = postcard::from_bytes(&bytes).map_err(|e| InviteError::Damaged(e.to_string()))?;
        if inv.body.addrs.len() > MAX_INVITE_ADDRS || inv.body.inviter_name.len() > 64 {
            return Err(InviteError::Damaged("oversized fields".into()));
        }
        if !inv.verify() {
            return Err(InviteError::BadSignature);
        }
        Ok(inv)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn proofs_bind_both_nodes() {
        let mut m = Membership::generate();
        let (a, b, x) = (peer(), peer(), peer());
        m.add_member(a);
        let p = m.prove(&a, &b);
        assert_eq!(m.verify(&p, None, &a, &b), Verdict::Member);
        // Shown to another verifier, or claimed by another prover: refused.
        assert_eq!(m.verify(&p, None, &a, &x), Verdict::Refused(Refusal::BadProof));
        assert_eq!(m.verify(&p, None, &x, &b), Verdict::Refused(Refusal::BadProof));
        // Another mesh's proof: refused as such.
        let other = Membership::generate();
        assert!(matches!(
            m.verify(&other.prove(&a, &b), None, &a, &b),
            Verdict::Refused(Refusal::OtherMesh(_))
        ));
        // A forged MAC with the right commitment: refused.
        let mut forged = p.clone();
        forged.mac[0] ^= 1;
        assert_eq!(m.verify(&forged, None, &a, &b), Verdict::Refused(Refusal::BadProof));
    }

    #[test]
    fn rotation_shuts_out_the_removed_node_but_renews_stale_members() {
        let mut m = Membership::generate();
        let (a, b, stale, removed, newcomer) = (peer(), peer(), peer(), peer(), peer());
        for p in [a, b, stale, removed] {
            m.add_member(p);
        }
        let old = m.clone();
        m.rotate(removed, []);
        assert!(!m.is_member(&removed) && m.is_member(&stale));
        assert_eq!(m.current().number, 2);
        assert!(!m.current().roster.contains(&removed));
        // A member that missed the rotation proves with the old key: admitted, renewed.
        assert_eq!(m.verify(&old.prove(&stale, &a), None, &stale, &a), Verdict::Stale);
        // The removed node with the old key: refused, under its own name or a new one.
        assert_eq!(
            m.verify(&old.prove(&removed, &a), None, &removed, &a),
            Verdict::Refused(Refusal::Revoked)
        );
        assert_eq!(
            m.verify(&old.prove(&newcomer, &a), None, &newcomer, &a),
            Verdict::Refused(Refusal::NotInRoster)
        );
        // The stale member verifying a current proof: it is behind, not refused.
        assert_eq!(old.verify(&m.prove(&a, &stale), None, &a, &stale), Verdict::Ahead);
        // After taking the grant it verifies.
        let mut renewed = old.clone();
        assert!(renewed.accept_grant(&m.grant()).unwrap());
        assert_eq!(renewed.verify(&m.prove(&a, &stale), None, &a, &stale), Verdict::Member);
        assert!(renewed.is_revoked(&removed));
        // Taking it again changes nothing.
        assert!(!renewed.accept_grant(&m.grant()).unwrap());
    }

    #[test]
    fn a_copied_key_admits_nobody_but_a_members_voucher_does() {
        let founder = Keypair::generate_ed25519();
        let mut m = Membership::generate();
        m.add_member(founder.public().to_peer_id());
        let (verifier, thief) = (peer(), peer());
        // Issue 12, finding 5: any PeerId holding a copy of the key was admitted.
        let copy = m.clone();
        assert_eq!(
            m.verify(&copy.prove(&thief, &verifier), None, &thief, &verifier),
            Verdict::Refused(Refusal::NotAMember)
        );
        // A node the founder admitted shows its voucher: a member, though not listed yet.
        let joiner = Keypair::generate_ed25519();
        let j = joiner.public().to_peer_id();
        let joined = m.vouched_for(&j, &founder).unwrap();
        let v = joined.voucher().cloned();
        assert_eq!(
            m.verify(&joined.prove(&j, &verifier), v.as_ref(), &j, &verifier),
            Verdict::Member
        );
        // The same voucher under another identity, one it signed itself, or one from a
        // stranger: refused.
        assert_eq!(
            m.verify(&copy.prove(&thief, &verifier), v.as_ref(), &thief, &verifier),
            Verdict::Refused(Refusal::NotAMember)
        );
        let own = Voucher::sign(&m.id(), &thief, &Keypair::generate_ed25519()).unwrap();
        assert_eq!(
            m.verify(&copy.prove(&thief, &verifier), Some(&own), &thief, &verifier),
            Verdict::Refused(Refusal::NotAMember)
        );
        // A removal lists the members: the thief is not carried over, whoever it met.
        let mut after = m.clone();
        after.add_member(j);
        after.rotate(peer(), [thief]);
        assert!(!after.current().roster.contains(&thief) && after.current().roster.contains(&j));
        assert_eq!(
            after.verify(&copy.prove(&thief, &verifier), None, &thief, &verifier),
            Verdict::Refused(Refusal::NotInRoster)
        );
        // Members learned from a member's chain are members; revoked ones are not.
        let mut other = copy.clone();
        assert!(other.accept_grant(&after.grant()).unwrap());
        assert!(other.is_member(&j) && !other.is_member(&thief));
    }

    #[test]
    fn a_key_file_from_before_member_lists_is_adopted_until_the_next_rotation() {
        let m = Membership::generate();
        let (a, b) = (peer(), peer());
        // The v1 file: the bare grant (without members).
        let mut v1 = FILE_MAGIC_V1.to_vec();
        v1.extend(
            postcard::to_allocvec(&(
                m.id(),
                m.grant.name_key,
                m.grant.epochs.clone(),
                BTreeSet::<PeerId>::new(),
            ))
            .unwrap(),
        );
        let mut old = Membership::from_file_bytes(&v1).unwrap();
        assert_eq!(old.id(), m.id());
        // Trust on first use until a rotation lists the members.
        assert_eq!(old.verify(&m.prove(&a, &b), None, &a, &b), Verdict::Member);
        old.add_member(a);
        let again = Membership::from_file_bytes(&old.to_file_bytes().unwrap()).unwrap();
        assert_eq!(again, old, "saved in the new format, still adopting");
        old.rotate(peer(), [b]);
        let (c, d) = (peer(), peer());
        assert_eq!(
            old.verify(&old.prove(&c, &d), None, &c, &d),
            Verdict::Refused(Refusal::NotAMember)
        );
        assert!(old.is_member(&a) && old.is_member(&b));
    }

    #[test]
    fn grants_from_another_branch_or_mesh_are_refused() {
        let base = Membership::generate();
        let (mut x, mut y) = (base.clone(), base.clone());
        x.rotate(peer(), []);
        y.rotate(peer(), []);
        let mut z = x.clone();
        assert!(z.accept_grant(&y.grant()).is_err());
        assert_eq!(
            x.verify(&y.prove(&peer(), &peer()), None, &peer(), &peer()),
            Verdict::Refused(Refusal::Conflict)
        );
        assert!(z.accept_grant(&Membership::generate().grant()).is_err());
        // An older chain is not a change.
        assert!(!z.accept_grant(&base.grant()).unwrap());
    }

    #[test]
    fn old_epochs_are_forgotten() {
        let mut m = Membership::generate();
        let first = m.clone();
        let a = peer();
        for _ in 0..MAX_EPOCHS + 1 {
            m.rotate(peer(), [a]);
        }
        assert_eq!(m.grant().epochs.len(), MAX_EPOCHS);
        assert_eq!(
            m.verify(&first.prove(&a, &a), None, &a, &a),
            Verdict::Refused(Refusal::TooOld)
        );
    }

    #[test]
    fn sealed_payloads_open_only_for_the_mesh_source_and_topic() {
        let mut m = Membership::generate();
        let (src, other) = (peer(), peer());
        m.add_member(src);
        let sealed = m.seal("t/abc", &src, b"hello");
        assert_eq!(m.open_sealed("t/abc", &src, &sealed).unwrap(), b"hello");
        assert_eq!(m.open_sealed("t/abc", &other, &sealed), Err(OpenError::Forged));
        assert_eq!(m.open_sealed("t/xyz", &src, &sealed), Err(OpenError::Forged));
        assert_eq!(
            Membership::generate().open_sealed("t/abc", &src, &sealed),
            Err(OpenError::Forged)
        );
        assert_eq!(m.open_sealed("t/abc", &src, b"junk"), Err(OpenError::Malformed));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(m.open_sealed("t/abc", &src, &tampered), Err(OpenError::Forged));
        // After a rotation: old-key payloads open only from carried-over members.
        let mut next = m.clone();
        next.rotate(other, []);
        assert_eq!(next.open_sealed("t/abc", &src, &sealed).unwrap(), b"hello");
        let from_removed = m.seal("t/abc", &other, b"x");
        assert_eq!(
            next.open_sealed("t/abc", &other, &from_removed),
            Err(OpenError::NotAllowed)
        );
        // The old key cannot open new payloads.
        let fresh = next.seal("t/abc", &src, b"new");
        assert_eq!(m.open_sealed("t/abc", &src, &fresh), Err(OpenError::UnknownEpoch(2)));
        // Topic tags are stable across rotations and differ between meshes.
        assert_eq!(m.topic_tag("news"), next.topic_tag("news"));
        assert_ne!(m.topic_tag("news"), Membership::generate().topic_tag("news"));
    }

    #[test]
    fn open_mode_is_its_own_mesh() {
        let (a, b) = (peer(), peer());
        let open = Membership::open();
        assert_eq!(open, Membership::open());
        assert_eq!(
            open.verify(&Membership::open().prove(&a, &b), None, &a, &b),
            Verdict::Member
        );
        let closed = Membership::generate();
        assert!(matches!(
            closed.verify(&open.prove(&a, &b), None, &a, &b),
            Verdict::Refused(Refusal::OpenMismatch(_))
        ));
        assert!(matches!(
            open.verify(&closed.prove(&a, &b), None, &a, &b),
            Verdict::Refused(Refusal::OpenMismatch(_))
        ));
    }

    #[test]
    fn invites_detect_tampering() {
        let key = Keypair::generate_ed25519();
        let body = InviteBody {
            mesh_id: Membership::generate().id(),
            inviter: key.public().to_peer_id(),
            inviter_name: "alpha".into(),
            addrs: vec!["/ip4/10.0.0.1/tcp/4001".parse().unwrap()],
            token: random(),
            expires_ms: 1_000,
        };
        let inv = Invite::sign(body, &key).unwrap();
        let code = inv.encode();
        assert_eq!(Invite::decode(&code).unwrap(), inv);
        // Line breaks from a chat client are tolerated.
        let wrapped = format!("{}\n{}", &code[..20], &code[20..]);
        assert_eq!(Invite::decode(&wrapped).unwrap(), inv);
        assert_eq!(Invite::decode("hello"), Err(InviteError::NotACode));
        assert!(matches!(
            Invite::decode(&format!("{INVITE_PREFIX}!!!")),
            Err(InviteError::Damaged(_))
        ));
        // A changed expiry: the signature no longer matches.
        let mut altered = inv.clone();
        altered.body.expires_ms = u64::MAX;
        assert_eq!(Invite::decode(&altered.encode()), Err(InviteError::BadSignature));
        // Re-signed by someone else while claiming the inviter: refused.
        let mallory = Keypair::generate_ed25519();
        let forged = Invite::sign(altered.body.clone(), &mallory).unwrap();
        assert_eq!(Invite::decode(&forged.encode()), Err(InviteError::BadSignature));
        // Flipping characters of the text is caught.
        let mut chars: Vec<char> = code.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        assert!(Invite::decode(&chars.into_iter().collect::<String>()).is_err());
    }

    #[test]
    fn the_key_file_round_trips_and_refuses_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.key");
        let m = Membership::load_or_create(&p).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(Membership::load_or_create(&p).unwrap(), m);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Membership::load(&p), Err(MeshError::Exposed { .. })));
        fs::write(&p, b"garbage").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Membership::load(&p).unwrap_err().to_string();
        assert!(err.contains("damaged") && err.contains("left untouched"), "{err}");
        // Not replaced by a new mesh behind the user's back.
        assert!(Membership::load_or_create(&p).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"garbage");
    }
}
