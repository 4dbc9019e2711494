//! Names and identifiers: message ids, agent and node names, topic names, mesh addresses.
//!
//! Every name that crosses a process or network boundary is validated here, once, so the
//! rest of the code can hold a [`AgentName`] or [`TopicName`] and know it is well formed.

use std::fmt;
use std::str::FromStr;

use libp2p::PeerId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest agent, node or topic name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A message id: 128 bits, ULID layout (48-bit millisecond timestamp, 80 random bits),
/// written as 26 Crockford base32 characters (`01JD3K...`).
///
/// Ids are created by the sending node and are the key for de-duplication everywhere.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh id for a message created now.
    pub fn new() -> Self {
        Self(ulid::Ulid::new().to_bytes())
    }

    /// Milliseconds since the Unix epoch encoded in the id (the sender's clock).
    pub fn timestamp_ms(&self) -> u64 {
        ulid::Ulid::from_bytes(self.0).timestamp_ms()
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid::from_bytes(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A string that is not a valid name or id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {why}")]
pub struct InvalidName {
    /// What kind of name was being parsed ("agent name", "message id", ...).
    pub what: &'static str,
    /// The offending input (truncated).
    pub value: String,
    /// Why it was refused.
    pub why: String,
}

impl InvalidName {
    fn new(what: &'static str, value: &str, why: impl Into<String>) -> Self {
        let value: String = value.chars().take(80).collect();
        Self {
            what,
            value,
            why: why.into(),
        }
    }
}

impl FromStr for MessageId {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s.trim())
            .map(|u| Self(u.to_bytes()))
            .map_err(|e| {
                InvalidName::new(
                    "message id",
                    s,
                    format!("{e} (expected 26 characters like 01JD3K5Q8Z...)"),
                )
            })
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 16]>::deserialize(d).map(Self)
        }
    }
}

fn check_name(what: &'static str, s: &str, extra: &[char]) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::new(what, s, "it is empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(InvalidName::new(
            what,
            s,
            format!("it is {} bytes long; the limit is {MAX_NAME_LEN}", s.len()),
        ));
    }
    let first = s.chars().next().unwrap_or(' ');
    if !first.is_ascii_alphanumeric() {
        return Err(InvalidName::new(what, s, "it must start with a letter or digit"));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || extra.contains(c)))
    {
        let allowed: String = extra.iter().collect();
        let reserved = match bad {
            LABEL_SEPARATOR => "; '~' is reserved: it sets a PeerId apart from a node name",
            '@' => "; '@' is reserved: it sets an agent apart from its node",
            _ => "",
        };
        return Err(InvalidName::new(
            what,
            s,
            format!("character {bad:?} is not allowed (use letters, digits, '.', '_', '-'{allowed}){reserved}"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $extra:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
                let s = s.into();
                check_name($what, &s, $extra)?;
                Ok(Self(s))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of an agent on its node: `alice`, `claude-code.myrepo`.
    AgentName,
    "agent name",
    &[]
);
name_type!(
    /// The human name of a node (default: the host name).
    NodeName,
    "node name",
    &[]
);
name_type!(
    /// A topic: `build`, `team/frontend`. A leading `#` is accepted and dropped by
    /// [`TopicName::parse_user`].
    TopicName,
    "topic name",
    &['/']
);

impl TopicName {
    /// Parses a topic as a user types it: `#build` and `build` are the same topic.
    pub fn parse_user(s: &str) -> Result<Self, InvalidName> {
        Self::new(s.trim().trim_start_matches('#'))
    }
}

impl NodeName {
    /// Turns a host name into a valid node name: keeps the first label, replaces anything
    /// not allowed with `-`, and falls back to `node` if nothing usable is left.
    pub fn from_hostname(host: &str) -> Self {
        let first = host.split('.').next().unwrap_or("");
        Self::new(sanitize(first)).unwrap_or_else(|_| Self("node".to_string()))
    }
}

impl AgentName {
    /// Turns an OS login name into a valid agent name (`Jane Doe` → `Jane-Doe`), falling
    /// back to `user`.
    pub fn from_login(login: &str) -> Self {
        Self::new(sanitize(login)).unwrap_or_else(|_| Self("user".to_string()))
    }

    /// Turns any text (a directory name, a client name) into a valid agent name part,
    /// or `None` if nothing usable is left.
    pub fn sanitize(text: &str) -> Option<Self> {
        Self::new(sanitize(text)).ok()
    }
}

/// A short label given by another node (a claimed name): control characters removed,
/// at most 64 characters.
pub fn sanitize_text(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Replaces characters names may not contain with `-`, drops leading non-alphanumerics and
/// truncates to [`MAX_NAME_LEN`].
fn sanitize(s: &str) -> String {
    let mut cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    cleaned = cleaned
        .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    cleaned.truncate(MAX_NAME_LEN);
    cleaned
}

/// What separates a node name from the end of its PeerId in a node label
/// (`laptop~Xk3vQ9aB`). No name may contain it, so no name reads like another node's label.
pub const LABEL_SEPARATOR: char = '~';

/// How many characters of a PeerId a label shows (the last ones: the first are the same
/// for every Ed25519 key).
pub const PEER_SUFFIX_LEN: usize = 8;

/// The end of a PeerId, as a label shows it after [`LABEL_SEPARATOR`]: at least
/// [`PEER_SUFFIX_LEN`] base58 characters. It tells apart nodes that share a name; which
/// node it means is decided by comparing it with PeerIds, never with names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerSuffix(String);

/// The base58 alphabet PeerIds are written in.
const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Longest suffix accepted: a whole PeerId fits.
const MAX_PEER_SUFFIX_LEN: usize = 128;

impl PeerSuffix {
    /// The suffix a label shows for `peer`.
    pub fn of(peer: &PeerId) -> Self {
        let s = peer.to_string();
        Self(s[s.len().saturating_sub(PEER_SUFFIX_LEN)..].to_string())
    }

    /// Validates a suffix as a user writes it.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
        let s = s.into();
        let what = "PeerId suffix";
        if s.len() < PEER_SUFFIX_LEN || s.len() > MAX_PEER_SUFFIX_LEN {
            return Err(InvalidName::new(
                what,
                &s,
                format!("write the last {PEER_SUFFIX_LEN} (or more) characters of the node's PeerId"),
            ));
        }
        if let Some(bad) = s.chars().find(|c| !BASE58.contains(*c)) {
            return Err(InvalidName::new(
                what,
                &s,
                format!("character {bad:?} is not in a PeerId (base58: no 0, O, I or l)"),
            ));
        }
        Ok(Self(s))
    }

    /// Whether `peer`'s PeerId ends with this suffix.
    pub fn matches(&self, peer: &PeerId) -> bool {
        peer.to_string().ends_with(&self.0)
    }

    /// The suffix as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for PeerSuffix {
    type Error = InvalidName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<PeerSuffix> for String {
    fn from(s: PeerSuffix) -> Self {
        s.0
    }
}

/// The node half of an address: a name, a label (a name and the end of a PeerId), or a
/// PeerId.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRef {
    /// A node by its PeerId (unambiguous).
    Peer(PeerId),
    /// A node by its human name (may match several nodes).
    Name(NodeName),
    /// A node by its label `name~suffix`, as shown when names clash: the node whose PeerId
    /// ends with the suffix, if it has that name.
    Labelled(NodeName, PeerSuffix),
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Peer(p) => write!(f, "{p}"),
            NodeRef::Name(n) => write!(f, "{n}"),
            NodeRef::Labelled(n, s) => write!(f, "{n}{LABEL_SEPARATOR}{s}"),
        }
    }
}

impl FromStr for NodeRef {
    type Err = InvalidName;

    /// A PeerId, `name~suffix` or a name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(p) = s.parse::<PeerId>() {
            return Ok(NodeRef::Peer(p));
        }
        match s.split_once(LABEL_SEPARATOR) {
            Some((name, suffix)) => Ok(NodeRef::Labelled(NodeName::new(name)?, PeerSuffix::new(suffix)?)),
            None => Ok(NodeRef::Name(NodeName::new(s)?)),
        }
    }
}

/// A mesh address as a user writes it: `agent@node` (`node`: a name, a label
/// `name~suffix` or a PeerId) or a bare `agent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// The agent's name on its node.
    pub agent: AgentName,
    /// The node, when given.
    pub node: Option<NodeRef>,
}

impl FromStr for Address {
    type Err = InvalidName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.rsplit_once('@') {
            None => Ok(Address {
                agent: AgentName::new(s)?,
                node: None,
            }),
            Some((agent, node)) => {
                if node.is_empty() {
                    return Err(InvalidName::new("address", s, "nothing after '@' (write agent@node)"));
                }
                let node = node.parse::<NodeRef>()?;
                Ok(Address {
                    agent: AgentName::new(agent)?,
                    node: Some(node),
                })
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{}@{n}", self.agent),
            None => write!(f, "{}", self.agent),
        }
    }
}

/// A duration in words: `7 days`, `3 hours`, `90 s`.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    if s >= 86_400 && s.is_multiple_of(86_400) {
        plural(s / 86_400, "day")
    } else if s >= 3600 && s.is_multiple_of(3600) {
        plural(s / 3600, "hour")
    } else if s >= 60 && s.is_multiple_of(60) {
        plural(s / 60, "minute")
    } else if s > 0 {
        format!("{s} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// The last 8 characters of a PeerId, for display when no name is known.
pub fn short_peer(p: &libp2p::PeerId) -> String {
    let s = p.to_string();
    format!("…{}", &s[s.len().saturating_sub(8)..])
}

/// Message ids for a log line: comma-separated, the first 16 and how many more.
pub fn id_list(ids: impl IntoIterator<Item = MessageId>) -> String {
    let mut out = String::new();
    let mut n = 0usize;
    for id in ids {
        if n < 16 {
            if n > 0 {
                out.push(',');
            }
            out.push_str(&id.to_string());
        }
        n += 1;
    }
    if n > 16 {
        out.push_str(&format!(" (+{} more)", n - 16));
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        .saturating_add(CLOCK_AHEAD_MS.load(std::sync::atomic::Ordering::Relaxed))
}

static CLOCK_AHEAD_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Moves the wall clock of every node in this process forward by `by` (simulated time for
/// tests: days of a time to live pass in a moment). The daemon never calls it. Only the
/// clock behind [`now_ms`] moves (message times, expiry); timers and backoffs run in real
/// time.
#[doc(hidden)]
pub fn advance_clock_for_tests(by: std::time::Duration) {
    CLOCK_AHEAD_MS.fetch_add(by.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_round_trips_as_text_and_bytes() {
        let id = MessageId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<MessageId>().unwrap(), id);
        let bytes = postcard::to_allocvec(&id).unwrap();
        assert_eq!(bytes.len(), 16);
        assert_eq!(postcard::from_bytes::<MessageId>(&bytes).unwrap(), id);
        assert!("not-an-id".parse::<MessageId>().is_err());
    }

    #[test]
    fn names_are_validated() {
        assert!(AgentName::new("alice").is_ok());
        assert!(AgentName::new("claude-code.my_repo").is_ok());
        assert!(AgentName::new("").is_err());
        assert!(AgentName::new("-x").is_err());
        assert!(AgentName::new("a b").is_err());
        assert!(AgentName::new("a@b").is_err());
        assert!(AgentName::new("x".repeat(65)).is_err());
        assert!(TopicName::parse_user("#team/frontend").is_ok());
        assert!(AgentName::new("team/x").is_err());
    }

    #[test]
    fn hostnames_and_logins_become_names() {
        assert_eq!(NodeName::from_hostname("My Laptop.local").as_str(), "My-Laptop");
        assert_eq!(NodeName::from_hostname("").as_str(), "node");
        assert_eq!(AgentName::from_login("jane doe").as_str(), "jane-doe");
        assert_eq!(AgentName::from_login("").as_str(), "user");
    }

    #[test]
    fn addresses_parse() {
        let a: Address = "bob@laptop".parse().unwrap();
        assert_eq!(a.agent.as_str(), "bob");
        assert_eq!(a.node, Some(NodeRef::Name(NodeName::new("laptop").unwrap())));
        let p = PeerId::random();
        let a: Address = format!("bob@{p}").parse().unwrap();
        assert_eq!(a.node, Some(NodeRef::Peer(p)));
        let a: Address = "bob".parse().unwrap();
        assert_eq!(a.node, None);
        assert!("bob@".parse::<Address>().is_err());
        assert!("@x".parse::<Address>().is_err());
    }

    #[test]
    fn labels_parse_and_no_name_reads_like_one() {
        let p = PeerId::random();
        let suffix = PeerSuffix::of(&p);
        assert_eq!(suffix.as_str().len(), PEER_SUFFIX_LEN);
        assert!(p.to_string().ends_with(suffix.as_str()) && suffix.matches(&p));
        assert!(!suffix.matches(&PeerId::random()));
        let a: Address = format!("bob@laptop~{suffix}").parse().unwrap();
        let want = NodeRef::Labelled(NodeName::new("laptop").unwrap(), suffix.clone());
        assert_eq!(a.node, Some(want.clone()));
        assert_eq!(a.to_string(), format!("bob@laptop~{suffix}"));
        assert_eq!(want.to_string().parse::<NodeRef>().unwrap(), want);
        // A whole PeerId after the separator is a (long) suffix too.
        assert!(PeerSuffix::new(p.to_string()).unwrap().matches(&p));
        for bad in [
            "bob@laptop~",
            "bob@laptop~abc",
            "bob@laptop~0OIl0OIl",
            "bob@~abcdefgh",
            "bob@a~b~cdefghij",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
        // The separator is in no name: a node cannot name itself like another's label.
        let e = NodeName::new(format!("laptop~{suffix}")).unwrap_err();
        assert!(e.why.contains("'~' is reserved"), "{e}");
        assert!(AgentName::new("bob~x").is_err());
    }
}
