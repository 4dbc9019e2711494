//! The node's home directory: where its identity, config, store, socket and logs live.
//!
//! ```text
//! <home>/identity.key   Ed25519 keypair (protobuf encoding), mode 0600
//! <home>/mesh.key       the mesh this node belongs to (secret key chain), mode 0600
//! <home>/config.toml    optional settings (see `Config`)
//! <home>/store.redb     messages, agents, peers, subscriptions
//! <home>/mesh.sock      local API socket, mode 0600
//! <home>/daemon.lock    held (flock) by the running daemon
//! <home>/daemon.log     log of a detached daemon
//! <home>/settings.toml  node settings given to `mesh up`, used by every later start
//! <home>/stopped        present after `mesh down`: adapters do not start the node
//! ```

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the default home directory.
pub const HOME_ENV: &str = "MESH_HOME";

/// Longest socket path a Unix domain socket accepts on Linux (`sun_path` minus the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Errors about the home directory.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    /// No home was given and the platform has no data directory.
    #[error("cannot find a home directory for agentmesh: set --home or MESH_HOME")]
    NoDefault,
    /// The directory could not be created or read.
    #[error("cannot use home directory {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The socket path would be longer than the OS allows.
    #[error(
        "home directory {path} is too deep: the socket path would be {len} bytes (limit {MAX_SOCKET_PATH}); choose a shorter --home"
    )]
    TooDeep {
        /// The directory.
        path: PathBuf,
        /// Length of the socket path.
        len: usize,
    },
    /// The directory, or a file in it, is not this user's own, or is a symbolic link where
    /// none may be: another user could make the daemon write where they choose.
    #[error("refusing {path}: {why}")]
    Unsafe {
        /// The directory or file.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
}

/// A node home directory. Cheap to clone; creating it is separate ([`Home::create`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home given explicitly, or the platform default (`~/.local/share/agentmesh` on
    /// Linux). `MESH_HOME` is read by the CLI and passed here as `explicit`.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self, HomeError> {
        let root = match explicit {
            Some(p) => p,
            None => directories::ProjectDirs::from("", "", "agentmesh")
                .map(|d| d.data_dir().to_path_buf())
                .ok_or(HomeError::NoDefault)?,
        };
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(|source| HomeError::Io {
                    path: root.clone(),
                    source,
                })?
                .join(root)
        };
        let home = Self { root };
        let len = home.socket_path().as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(HomeError::TooDeep { path: home.root, len });
        }
        Ok(home)
    }

    /// Creates the directory (and parents) with mode 0700 if it does not exist.
    pub fn create(&self) -> Result<(), HomeError> {
        let io = |source| HomeError::Io {
            path: self.root.clone(),
            source,
        };
        if !self.root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.root)
                .map_err(io)?;
        }
        let meta = fs::metadata(&self.root).map_err(io)?;
        if !meta.is_dir() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "exists and is not a directory",
            )));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me {
            return Err(HomeError::Unsafe {
                path: self.root.clone(),
                why: format!(
                    "the home directory belongs to uid {}, not to uid {me} running agentmesh; use a home of your own (--home DIR)",
                    meta.uid()
                ),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        Ok(())
    }

    /// Checks the files the daemon opens in the home before it opens any: each that exists
    /// must belong to the user running it, and the ones it writes or holds secrets in
    /// (lock, log, keys, store, saved settings, the stop mark) must not be symbolic links,
    /// so that nobody else's link makes it write, truncate or read a file of their choice.
    /// (The lock and the log are opened with `O_NOFOLLOW` as well.)
    pub fn check_files(&self) -> Result<(), HomeError> {
        let me = rustix::process::geteuid().as_raw();
        let strict = [
            self.lock_path(),
            self.log_path(),
            self.identity_path(),
            self.mesh_path(),
            self.store_path(),
            self.settings_path(),
            self.stopped_path(),
        ];
        for path in strict.iter().chain([&self.config_path()]) {
            let link = match fs::symlink_metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(HomeError::Io {
                        path: path.clone(),
                        source,
                    });
                }
            };
            let unsafe_file = |why: String| HomeError::Unsafe {
                path: path.clone(),
                why,
            };
            if link.file_type().is_symlink() && strict.contains(path) {
                return Err(unsafe_file(
                    "it is a symbolic link, and agentmesh does not follow links for its own files; replace it with the file itself".into(),
                ));
            }
            // config.toml may be a link (kept with dotfiles); what it names must be ours.
            let meta = fs::metadata(path).map_err(|source| HomeError::Io {
                path: path.clone(),
                source,
            })?;
            if meta.uid() != me || link.uid() != me {
                return Err(unsafe_file(format!(
                    "it belongs to uid {}, not to uid {me} running agentmesh",
                    if meta.uid() != me { meta.uid() } else { link.uid() }
                )));
            }
        }
        Ok(())
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.root
    }
    /// `identity.key`.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    /// `mesh.key`: the mesh this node belongs to (its secret key chain).
    pub fn mesh_path(&self) -> PathBuf {
        self.root.join("mesh.key")
    }
    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `store.redb`.
    pub fn store_path(&self) -> PathBuf {
        self.root.join("store.redb")
    }
    /// `mesh.sock`.
    pub fn socket_path(&self) -> PathBuf {
        self.root.join("mesh.sock")
    }
    /// `daemon.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    /// `daemon.log`.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("daemon.log")
    }
    /// `settings.toml`: what `mesh up` was told (see [`crate::settings`]).
    pub fn settings_path(&self) -> PathBuf {
        self.root.join("settings.toml")
    }
    /// `stopped`: the mark `mesh down` leaves (see [`crate::settings::StopMark`]).
    pub fn stopped_path(&self) -> PathBuf {
        self.root.join("stopped")
    }
}

/// Writes `bytes` to `path` atomically with mode 0600: a temporary file beside it, synced,
/// renamed over `path`, and the directory synced, so a crash leaves the old file or the
/// new one, never half of one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path().join("a/b"))).unwrap();
        home.create().unwrap();
        let mode = fs::metadata(home.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(home.socket_path().ends_with("mesh.sock"));
    }

    #[test]
    fn refuses_links_to_its_own_files_and_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path().join("h"))).unwrap();
        home.create().unwrap();
        home.check_files().unwrap();
        let victim = tmp.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, home.lock_path()).unwrap();
        let e = home.check_files().unwrap_err().to_string();
        assert!(e.contains("daemon.lock") && e.contains("symbolic link"), "{e}");
        fs::remove_file(home.lock_path()).unwrap();
        // A linked config.toml is fine when what it names is ours.
        fs::write(tmp.path().join("cfg"), b"").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("cfg"), home.config_path()).unwrap();
        home.check_files().unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn refuses_too_deep_home() {
        let deep = PathBuf::from("/tmp").join("x".repeat(120));
        assert!(matches!(Home::resolve(Some(deep)), Err(HomeError::TooDeep { .. })));
    }

    #[test]
    fn refuses_file_as_home() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"x").unwrap();
        let home = Home::resolve(Some(file)).unwrap();
        assert!(home.create().is_err());
    }
}
