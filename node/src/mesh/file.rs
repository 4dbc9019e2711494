//! `mesh.key` on disk: reading (also the format from before member lists), writing atomically, starting a mesh.

use super::*;

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

impl Membership {
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
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut body = FILE_MAGIC.to_vec();
        let file = MeshFile {
            grant: self.grant.clone(),
            voucher: self.voucher.clone(),
            adopting: self.adopting,
        };
        body.extend(postcard::to_allocvec(&file)?);
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
