//! Sealing gossip payloads for the mesh, and the keyed tags that hide topic names.

use super::*;

/// A gossip payload sealed for the mesh.
#[derive(Serialize, Deserialize)]
struct Sealed {
    epoch: u32,
    nonce: [u8; 24],
    ct: Vec<u8>,
}

impl Membership {
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
}
