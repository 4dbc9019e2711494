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

mod file;
mod grant;
mod invite;
mod proof;
mod seal;

pub use grant::{Grant, GrantError};
pub use invite::{Invite, InviteBody, InviteError, public_key_of};
pub use proof::{Proof, Refusal, Verdict, Voucher};

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
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
