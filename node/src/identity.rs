//! The node's long-term Ed25519 identity (its libp2p PeerId), kept in `identity.key`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

/// Errors loading or creating the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing the key file failed.
    #[error("identity file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The key file exists but does not hold a keypair.
    #[error(
        "identity file {path} is not a valid agentmesh key ({why}); it is left untouched: move it aside to create a new identity (peers will see a new PeerId)"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// Decoder message.
        why: String,
    },
    /// The key file can be read by other users.
    #[error("identity file {path} is readable by other users (mode {mode:o}); run: chmod 600 {path}")]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Loads the keypair from `path`, or creates one there (mode 0600) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Keypair, IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    match fs::read(path) {
        Ok(bytes) => {
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::Exposed {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            let key = Keypair::from_protobuf_encoding(&bytes).map_err(|e| IdentityError::Corrupt {
                path: path.to_path_buf(),
                why: e.to_string(),
            })?;
            if key.key_type() != libp2p::identity::KeyType::Ed25519 {
                return Err(IdentityError::Corrupt {
                    path: path.to_path_buf(),
                    why: format!("key type {:?}, expected Ed25519", key.key_type()),
                });
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            // Written atomically, so a crash never leaves a half key.
            crate::home::write_private(path, &bytes).map_err(io)?;
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("identity.key");
        let a = load_or_create(&p).unwrap();
        let b = load_or_create(&p).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn refuses_exposed_and_corrupt_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("identity.key");
        load_or_create(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(load_or_create(&p), Err(IdentityError::Exposed { .. })));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, b"garbage").unwrap();
        assert!(matches!(load_or_create(&p), Err(IdentityError::Corrupt { .. })));
        // The corrupt file is left for the user to inspect.
        assert_eq!(fs::read(&p).unwrap(), b"garbage");
    }
}
