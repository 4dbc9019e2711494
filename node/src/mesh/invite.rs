//! Join codes: what an inviter signs, their text form, and checking one.

use super::*;

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
