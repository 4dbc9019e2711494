//! What the user told `mesh up`, kept in the home so that every later start of the node
//! uses it, including a start made by an MCP adapter; and the mark `mesh down` leaves so
//! that no adapter starts the node again behind the user's back.
//!
//! `settings.toml` holds the [`Overrides`] given to the last `mesh up` that changed any
//! (flags and `MESH_*` variables), merged over the ones saved before: a flag given now
//! wins, a flag not given keeps its saved value. Every `mesh up` merges them, also the one
//! an MCP adapter starts; they are saved once the node started (a failed start changes
//! nothing). `mesh up --reset` forgets them all. `config.toml` stays the user's own file
//! and is never written.
//!
//! ```
//! use mesh_node::config::Overrides;
//! use mesh_node::settings::merged;
//! let saved = Overrides { no_mdns: true, ..Overrides::default() };
//! let given = Overrides { open: true, ..Overrides::default() };
//! let both = merged(&given, &saved);
//! assert!(both.no_mdns && both.open);
//! ```

use std::path::PathBuf;

use crate::config::Overrides;
use crate::home::{Home, write_private};

/// Problems with the saved settings or the stop mark.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read or written.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// `read` or `write`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not what `mesh up` writes.
    #[error("invalid saved settings {path}: {message} (fix it, or forget them with: mesh up --reset)")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
}

const HEADER: &str = "\
# Node settings given to `mesh up` (flags and MESH_* variables), used by every later
# start of this node, also one that an agent's MCP adapter makes. Written by `mesh up`;
# `mesh up --reset` forgets them. Your own settings belong in config.toml.
";

/// The settings saved in `home` (none saved: all defaults).
pub fn load(home: &Home) -> Result<Overrides, SettingsError> {
    let path = home.settings_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| SettingsError::Parse {
            path,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(source) => Err(SettingsError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Saves `settings` in `home` (atomically, mode 0600); all defaults removes the file.
pub fn save(home: &Home, settings: &Overrides) -> Result<(), SettingsError> {
    let path = home.settings_path();
    let io = |op, source| SettingsError::Io {
        op,
        path: path.clone(),
        source,
    };
    if *settings == Overrides::default() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", e)),
            _ => Ok(()),
        };
    }
    let body = toml::to_string(settings).map_err(|e| io("write", std::io::Error::other(e.to_string())))?;
    write_private(&path, format!("{HEADER}{body}").as_bytes()).map_err(|e| io("write", e))
}

/// `given` over `saved`: what was given now wins; what was not given keeps its saved value.
pub fn merged(given: &Overrides, saved: &Overrides) -> Overrides {
    let pick =
        |g: &Vec<libp2p::Multiaddr>, s: &Vec<libp2p::Multiaddr>| if g.is_empty() { s.clone() } else { g.clone() };
    Overrides {
        name: given.name.clone().or_else(|| saved.name.clone()),
        listen: pick(&given.listen, &saved.listen),
        no_mdns: given.no_mdns || saved.no_mdns,
        relay: given.relay || saved.relay,
        external: pick(&given.external, &saved.external),
        open: given.open || saved.open,
        relay_for_anyone: given.relay_for_anyone || saved.relay_for_anyone,
        metrics: given.metrics.or(saved.metrics),
    }
}

/// The mark `mesh down` leaves in the home: while it is there, nothing but `mesh up`
/// starts the node (MCP adapters and hooks report that it was stopped instead).
pub struct StopMark;

impl StopMark {
    /// Leaves the mark.
    pub fn set(home: &Home) -> Result<(), SettingsError> {
        let path = home.stopped_path();
        let when = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
        write_private(
            &path,
            format!("stopped with `mesh down` at {when}; `mesh up` starts the node again\n").as_bytes(),
        )
        .map_err(|source| SettingsError::Io {
            op: "write",
            path,
            source,
        })
    }

    /// Removes the mark (`mesh up`).
    pub fn clear(home: &Home) -> Result<(), SettingsError> {
        let path = home.stopped_path();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SettingsError::Io {
                op: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the node was stopped with `mesh down` and not started since.
    pub fn is_set(home: &Home) -> bool {
        home.stopped_path().exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeName;

    #[test]
    fn saved_settings_round_trip_and_merge() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path().join("h"))).unwrap();
        home.create().unwrap();
        assert_eq!(load(&home).unwrap(), Overrides::default(), "nothing saved: defaults");

        let first = Overrides {
            name: Some(NodeName::new("laptop").unwrap()),
            listen: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
            no_mdns: true,
            ..Overrides::default()
        };
        save(&home, &first).unwrap();
        assert_eq!(load(&home).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.settings_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A later `mesh up --open` keeps the name, listen address and --no-mdns.
        let given = Overrides {
            open: true,
            ..Overrides::default()
        };
        let both = merged(&given, &load(&home).unwrap());
        assert_eq!(both.name, first.name);
        assert_eq!(both.listen, first.listen);
        assert!(both.no_mdns && both.open);
        // A new name or listen address replaces the saved one.
        let given = Overrides {
            name: Some(NodeName::new("desk").unwrap()),
            listen: vec!["/ip4/127.0.0.1/udp/4001/quic-v1".parse().unwrap()],
            ..Overrides::default()
        };
        let both = merged(&given, &first);
        assert_eq!(both.name.unwrap().as_str(), "desk");
        assert_eq!(both.listen.len(), 1);
        assert!(both.listen[0].to_string().contains("quic-v1"));

        // Defaults remove the file.
        save(&home, &Overrides::default()).unwrap();
        assert!(!home.settings_path().exists());
    }

    #[test]
    fn a_damaged_file_is_refused_with_the_way_out() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path().join("h"))).unwrap();
        home.create().unwrap();
        std::fs::write(home.settings_path(), "name = [").unwrap();
        let e = load(&home).unwrap_err().to_string();
        assert!(e.contains("settings.toml") && e.contains("mesh up --reset"), "{e}");
        std::fs::write(home.settings_path(), "listen = [\"not an address\"]").unwrap();
        assert!(load(&home).is_err());
        // A key from another version is ignored, not fatal.
        std::fs::write(home.settings_path(), "no_mdns = true\nfuture_thing = 3\n").unwrap();
        assert!(load(&home).unwrap().no_mdns);
    }

    #[test]
    fn stop_mark() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::resolve(Some(tmp.path().join("h"))).unwrap();
        home.create().unwrap();
        assert!(!StopMark::is_set(&home));
        StopMark::set(&home).unwrap();
        assert!(StopMark::is_set(&home));
        StopMark::clear(&home).unwrap();
        assert!(!StopMark::is_set(&home));
        StopMark::clear(&home).unwrap();
    }
}
