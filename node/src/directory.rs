//! The mesh directory: which nodes exist, which agents they host, who is present.
//!
//! Presence is by heartbeat, never by guessing: a node is *online* while it is connected
//! or while its announcements keep arriving (each one is valid for three of the node's own
//! heartbeat intervals). mDNS expiry and closed connections alone prove nothing.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};

use crate::api::Reception;
use crate::error::ServiceError;
use crate::ids::{Address, AgentName, LABEL_SEPARATOR, NodeName, NodeRef, PeerSuffix};
use crate::net::{MAX_ADDRS_PER_PEER, presence_timeout};
use crate::store::PeerRecord;
use crate::wire::{self, AgentInfo, Announcement};

/// What the directory knows of one node.
#[derive(Clone, Debug, Default)]
pub struct NodeEntry {
    /// Its last accepted announcement (possibly from a previous run, then stale).
    pub announcement: Option<Announcement>,
    /// When an announcement was last accepted in this run.
    pub heard_at: Option<Instant>,
    /// Wall clock of the last contact (ms since the epoch).
    pub last_seen_ms: u64,
    /// Connected now.
    pub connected: bool,
    /// When its last connection closed, in this run.
    pub disconnected_at: Option<Instant>,
    /// Addresses known for it.
    pub addrs: Vec<Multiaddr>,
}

/// Result of feeding an announcement.
#[derive(Debug, PartialEq, Eq)]
pub enum Update {
    /// Older than what we have.
    Stale,
    /// Same content, presence refreshed.
    Refreshed,
    /// New content (agents or name changed): worth persisting.
    Changed,
}

/// Where a resolved address points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An agent of this node.
    Local(AgentName),
    /// An agent of another node.
    Remote {
        /// The node.
        peer: PeerId,
        /// Its name, if known.
        node_name: Option<NodeName>,
        /// The agent.
        agent: AgentName,
    },
}

/// The directory. Owned by the node behind a mutex; every method is quick and never blocks.
#[derive(Debug)]
pub struct Directory {
    me: PeerId,
    nodes: HashMap<PeerId, NodeEntry>,
}

impl Directory {
    /// An empty directory for node `me`.
    pub fn new(me: PeerId) -> Self {
        Self {
            me,
            nodes: HashMap::new(),
        }
    }

    /// Loads what the store remembers (announcements from earlier runs count as stale).
    pub fn load(&mut self, records: Vec<PeerRecord>) {
        for r in records {
            if r.peer == self.me {
                continue;
            }
            let e = self.nodes.entry(r.peer).or_default();
            e.announcement = r.announcement;
            e.last_seen_ms = r.last_seen_ms;
            e.addrs = r.addrs;
        }
    }

    /// The entry of a node.
    pub fn get(&self, peer: &PeerId) -> Option<&NodeEntry> {
        self.nodes.get(peer)
    }

    /// All entries.
    pub fn nodes(&self) -> impl Iterator<Item = (&PeerId, &NodeEntry)> {
        self.nodes.iter()
    }

    /// The announced name of a node.
    pub fn name_of(&self, peer: &PeerId) -> Option<NodeName> {
        self.nodes
            .get(peer)
            .and_then(|e| e.announcement.as_ref())
            .map(|a| a.node_name.clone())
    }

    /// Marks a node connected or not. A node that disconnects without ever having
    /// announced itself (not an agentmesh node, or gone before saying anything) is
    /// forgotten.
    pub fn set_connected(&mut self, peer: PeerId, connected: bool, now_ms: u64) {
        if peer == self.me {
            return;
        }
        if !connected && self.nodes.get(&peer).is_some_and(|e| e.announcement.is_none()) {
            self.nodes.remove(&peer);
            return;
        }
        let e = self.nodes.entry(peer).or_default();
        e.connected = connected;
        e.last_seen_ms = now_ms;
        if !connected {
            e.disconnected_at = Some(Instant::now());
        }
    }

    /// Adds addresses; true if any was new.
    pub fn add_addrs(&mut self, peer: PeerId, addrs: &[Multiaddr]) -> bool {
        if peer == self.me {
            return false;
        }
        let e = self.nodes.entry(peer).or_default();
        let mut changed = false;
        for a in addrs {
            let a = crate::net::strip_p2p(a.clone());
            if !e.addrs.contains(&a) {
                e.addrs.insert(0, a);
                changed = true;
            }
        }
        e.addrs.truncate(MAX_ADDRS_PER_PEER);
        changed
    }

    /// Feeds an announcement from `peer` (verified sender).
    pub fn update(&mut self, peer: PeerId, a: Announcement, now: Instant, now_ms: u64) -> Update {
        if peer == self.me {
            return Update::Stale;
        }
        let e = self.nodes.entry(peer).or_default();
        if let (Some(old), Some(heard)) = (&e.announcement, e.heard_at) {
            let expired = now.duration_since(heard) > presence_timeout(old.heartbeat_ms);
            // A lower seq within the presence window is a late copy; after it, the node has
            // probably restarted (its clock may differ), so take it.
            if a.seq < old.seq && !expired {
                return Update::Stale;
            }
        }
        // The first announcement heard in this run counts as news even if it matches what
        // the store remembered: the node just came (back) into view.
        let changed = e.heard_at.is_none()
            || match &e.announcement {
                Some(old) => old.node_name != a.node_name || old.agents != a.agents,
                None => true,
            };
        e.announcement = Some(a);
        e.heard_at = Some(now);
        e.last_seen_ms = now_ms;
        if changed { Update::Changed } else { Update::Refreshed }
    }

    /// Records that `peer` hosts `agent` (it sent a message as that agent), if its
    /// announcement does not list it yet.
    pub fn learn_agent(&mut self, peer: PeerId, agent: &AgentName, now_ms: u64) {
        let Some(a) = self.nodes.get_mut(&peer).and_then(|e| e.announcement.as_mut()) else {
            return;
        };
        if a.agents.len() < crate::wire::MAX_AGENTS_PER_NODE && !a.agents.iter().any(|x| &x.name == agent) {
            a.agents.push(AgentInfo {
                name: agent.clone(),
                kind: "other".into(),
                cwd: None,
                repo: None,
                summary: None,
                online: false,
                delivery: Default::default(),
                last_seen_ms: now_ms,
            });
        }
    }

    /// Whether a node is present now.
    pub fn online(&self, peer: &PeerId, now: Instant) -> bool {
        self.nodes.get(peer).is_some_and(|e| {
            e.connected
                || match (&e.announcement, e.heard_at) {
                    (Some(a), Some(h)) => now.duration_since(h) <= presence_timeout(a.heartbeat_ms),
                    _ => false,
                }
        })
    }

    /// Whether a node is worth waiting for: connected, or announcing itself through the
    /// mesh (lately, and since its last connection to us closed), so it is being reached.
    pub fn reachable(&self, peer: &PeerId, now: Instant) -> bool {
        self.nodes.get(peer).is_some_and(|e| {
            e.connected
                || match (&e.announcement, e.heard_at) {
                    (Some(a), Some(h)) => {
                        now.duration_since(h) <= presence_timeout(a.heartbeat_ms)
                            && e.disconnected_at.is_none_or(|d| h > d)
                    }
                    _ => false,
                }
        })
    }

    /// How a remote agent receives now.
    pub fn reception(&self, peer: &PeerId, agent: &AgentInfo, now: Instant) -> Reception {
        if !agent.online || !self.online(peer, now) {
            Reception::Offline
        } else {
            match agent.delivery {
                wire::Delivery::Push => Reception::Push,
                wire::Delivery::Woken => Reception::Woken,
                wire::Delivery::Poll => Reception::Poll,
            }
        }
    }

    /// The record to persist for a node (only nodes that announced themselves, or that
    /// were dialed on purpose and have an address, are worth remembering).
    pub fn record(&self, peer: &PeerId) -> Option<PeerRecord> {
        self.nodes
            .get(peer)
            .filter(|e| e.announcement.is_some() || !e.addrs.is_empty())
            .map(|e| PeerRecord {
                peer: *peer,
                addrs: e.addrs.clone(),
                last_seen_ms: e.last_seen_ms,
                announcement: e.announcement.clone(),
            })
    }

    /// How this node labels `peer`, known as `name` (the name a message arrived under, or
    /// else its announced one): the name alone while no other known node has a name that
    /// could be taken for it, else `name~suffix` (the end of its PeerId, see
    /// [`PeerSuffix`]); `…suffix` when no name is known. A remote node named like this one
    /// (`my_name`) always carries the suffix, so it never reads like this node's own agents,
    /// which keep the plain name. Every label but the nameless one is also an address.
    pub fn label(&self, peer: &PeerId, name: Option<&NodeName>, my_name: &NodeName) -> String {
        if *peer == self.me {
            return my_name.to_string();
        }
        match name.cloned().or_else(|| self.name_of(peer)) {
            Some(n) if self.name_is_shared(peer, &n, my_name) => {
                format!("{n}{LABEL_SEPARATOR}{}", PeerSuffix::of(peer))
            }
            Some(n) => n.to_string(),
            None => crate::ids::short_peer(peer),
        }
    }

    /// Whether a name `peer` goes by could be taken for this node's or another known node's.
    fn name_is_shared(&self, peer: &PeerId, name: &NodeName, my_name: &NodeName) -> bool {
        names_clash(name, my_name)
            || self
                .nodes
                .iter()
                .any(|(p, e)| p != peer && e.announcement.as_ref().is_some_and(|a| names_clash(name, &a.node_name)))
    }

    /// `agent@label` for each node, with the whole PeerId where two labels are still the
    /// same (a suffix collision, which takes a search for such a key).
    fn addresses(&self, agent: &AgentName, nodes: &[PeerId], my_name: &NodeName) -> Vec<String> {
        let labels: Vec<String> = nodes.iter().map(|p| self.label(p, None, my_name)).collect();
        nodes
            .iter()
            .zip(&labels)
            .map(|(p, l)| {
                if labels.iter().filter(|x| *x == l).count() > 1 {
                    format!("{agent}@{p}")
                } else {
                    format!("{agent}@{l}")
                }
            })
            .collect()
    }

    /// The remote nodes named exactly `name`, in PeerId order.
    pub fn named(&self, name: &NodeName) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.announcement.as_ref().is_some_and(|a| &a.node_name == name))
            .map(|(p, _)| *p)
            .collect();
        out.sort();
        out
    }

    /// The node a user means (for `mesh ping`, `mesh remove`, `mesh dial --forget`): this
    /// node's PeerId for this node. A plain name equal to this node's name means this node;
    /// a name several remote nodes share is refused with their labels; a label
    /// `name~suffix` means the node whose PeerId ends with the suffix, if it has that name.
    pub fn node(&self, node: &NodeRef, my_name: &NodeName) -> Result<PeerId, ServiceError> {
        match node {
            NodeRef::Peer(p) => Ok(*p),
            NodeRef::Name(n) if n == my_name => Ok(self.me),
            NodeRef::Name(n) => match self.named(n).as_slice() {
                [p] => Ok(*p),
                [] => Err(ServiceError::not_found(format!(
                    "no node named {n:?} is known (see mesh peers)"
                ))),
                many => {
                    let labels: Vec<String> = many.iter().map(|p| self.label(p, None, my_name)).collect();
                    Err(ServiceError::ambiguous(format!(
                        "several nodes are named {n:?}; use one of: {}",
                        labels.join(", ")
                    )))
                }
            },
            NodeRef::Labelled(n, suffix) => self.labelled(n, suffix, my_name),
        }
    }

    /// The node whose PeerId ends with `suffix`, checked to be named `name`.
    fn labelled(&self, name: &NodeName, suffix: &PeerSuffix, my_name: &NodeName) -> Result<PeerId, ServiceError> {
        let mut hits: Vec<PeerId> = self.nodes.keys().copied().filter(|p| suffix.matches(p)).collect();
        if suffix.matches(&self.me) {
            hits.push(self.me);
        }
        hits.sort();
        match hits.as_slice() {
            [] => Err(ServiceError::not_found(format!(
                "no known node has a PeerId ending in {suffix} (see mesh peers)"
            ))),
            [p] => {
                let actual = if *p == self.me {
                    Some(my_name.clone())
                } else {
                    self.name_of(p)
                };
                if actual.as_ref() == Some(name) {
                    Ok(*p)
                } else {
                    Err(ServiceError::not_found(match actual {
                        Some(a) => format!(
                            "the node whose PeerId ends in {suffix} is named {a:?}, not {name:?}: write {a}{LABEL_SEPARATOR}{suffix}"
                        ),
                        None => format!(
                            "the node whose PeerId ends in {suffix} has not said its name yet: write its PeerId {p}"
                        ),
                    }))
                }
            }
            many => Err(ServiceError::ambiguous(format!(
                "several known nodes have PeerIds ending in {suffix}; use the whole PeerId: {}",
                many.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// Resolves a user-written address. `my_name` and `local` describe this node.
    ///
    /// A node name equal to `my_name` means this node, never a remote namesake; a name
    /// several remote nodes share means the one of them that hosts the agent, if exactly
    /// one does, and is refused otherwise with the labels that tell them apart; a label
    /// `name~suffix` means the one node whose PeerId ends with the suffix (see
    /// [`Directory::node`]).
    pub fn resolve(&self, addr: &Address, my_name: &NodeName, local: &[AgentName]) -> Result<Target, ServiceError> {
        let agent = &addr.agent;
        match &addr.node {
            Some(NodeRef::Name(n)) if n != my_name => self.resolve_named(n, agent, my_name),
            Some(node) => match self.node(node, my_name)? {
                p if p == self.me => self.local_agent(agent, my_name, local),
                p => self.remote_agent(&p, agent, my_name),
            },
            None => self.resolve_anywhere(agent, my_name, local),
        }
    }

    /// Whether `peer` announced an agent named `agent`.
    fn hosts(&self, peer: &PeerId, agent: &AgentName) -> bool {
        self.nodes
            .get(peer)
            .and_then(|e| e.announcement.as_ref())
            .is_some_and(|a| a.agents.iter().any(|x| &x.name == agent))
    }

    /// `agent@n` for a remote node name `n` (perhaps shared by several nodes).
    fn resolve_named(&self, n: &NodeName, agent: &AgentName, my_name: &NodeName) -> Result<Target, ServiceError> {
        let mut candidates = self.named(n);
        // Prefer the nodes that host the agent, when the name is shared.
        if candidates.len() > 1 && candidates.iter().any(|p| self.hosts(p, agent)) {
            candidates.retain(|p| self.hosts(p, agent));
        }
        match candidates.as_slice() {
            [] => {
                let mut known: Vec<String> = self
                    .nodes
                    .iter()
                    .filter(|(_, e)| e.announcement.is_some())
                    .map(|(p, _)| self.label(p, None, my_name))
                    .collect();
                known.sort();
                known.push(format!("{my_name} (this node)"));
                Err(ServiceError::not_found(format!(
                    "no node named {n:?} is known; known nodes: {}",
                    known.join(", ")
                )))
            }
            [p] => self.remote_agent(p, agent, my_name),
            many => Err(ServiceError::ambiguous(format!(
                "several nodes are named {n:?}; use one of: {}",
                self.addresses(agent, many, my_name).join(", ")
            ))),
        }
    }

    /// A bare agent name: the one node (this one included) that hosts an agent so named.
    fn resolve_anywhere(
        &self,
        agent: &AgentName,
        my_name: &NodeName,
        local: &[AgentName],
    ) -> Result<Target, ServiceError> {
        let mut found: Vec<PeerId> = self.nodes.keys().copied().filter(|p| self.hosts(p, agent)).collect();
        found.sort();
        if local.contains(agent) {
            found.insert(0, self.me);
        }
        match found.as_slice() {
            [] => Err(ServiceError::not_found(format!(
                "no agent named {agent:?} is known on the mesh (see mesh agents)"
            ))),
            [p] if *p == self.me => Ok(Target::Local(agent.clone())),
            [p] => self.remote_agent(p, agent, my_name),
            many => Err(ServiceError::ambiguous(format!(
                "{} agents are named {agent:?}; say which: {}",
                many.len(),
                self.addresses(agent, many, my_name).join(", ")
            ))),
        }
    }

    /// `agent` on the remote node `peer`: refused when the node announced its agents and
    /// this is not one of them; left to the node to decide when it has not announced.
    fn remote_agent(&self, peer: &PeerId, agent: &AgentName, my_name: &NodeName) -> Result<Target, ServiceError> {
        let entry = self.nodes.get(peer).ok_or_else(|| {
            ServiceError::not_found(format!("unknown node {peer}: dial it first (mesh dial <multiaddr>)"))
        })?;
        match &entry.announcement {
            Some(a) if a.agents.iter().any(|x| &x.name == agent) => Ok(Target::Remote {
                peer: *peer,
                node_name: Some(a.node_name.clone()),
                agent: agent.clone(),
            }),
            Some(a) => {
                let names: Vec<&str> = a.agents.iter().map(|x| x.name.as_str()).collect();
                Err(ServiceError::not_found(format!(
                    "no agent {agent:?} on node {} ({peer}); its agents: {}",
                    self.label(peer, None, my_name),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )))
            }
            // Known, but its agents are not: let its node decide.
            None => Ok(Target::Remote {
                peer: *peer,
                node_name: None,
                agent: agent.clone(),
            }),
        }
    }

    /// `agent` on this node; when it is not here but a remote namesake of this node hosts
    /// it, the refusal says how to reach that one.
    fn local_agent(&self, agent: &AgentName, my_name: &NodeName, local: &[AgentName]) -> Result<Target, ServiceError> {
        if local.contains(agent) {
            return Ok(Target::Local(agent.clone()));
        }
        let names: Vec<&str> = local.iter().map(|a| a.as_str()).collect();
        let mut message = format!(
            "no agent {agent:?} on this node ({my_name}); its agents: {}",
            names.join(", ")
        );
        let namesakes: Vec<PeerId> = self
            .named(my_name)
            .into_iter()
            .filter(|p| self.hosts(p, agent))
            .collect();
        if !namesakes.is_empty() {
            message.push_str(&format!(
                "; another node is named {my_name:?} too: {}",
                self.addresses(agent, &namesakes, my_name).join(", ")
            ));
        }
        Err(ServiceError::not_found(message))
    }
}

/// Whether two node names could be taken for each other on a screen: the same but for
/// ASCII case and the look-alikes `0`/`o`, `1`/`i`/`l`, `rn`/`m` and `vv`/`w`.
pub fn names_clash(a: &NodeName, b: &NodeName) -> bool {
    fn look(n: &NodeName) -> String {
        n.as_str()
            .to_ascii_lowercase()
            .replace("rn", "m")
            .replace("vv", "w")
            .chars()
            .map(|c| match c {
                '0' => 'o',
                '1' | 'i' => 'l',
                c => c,
            })
            .collect()
    }
    look(a) == look(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ann(name: &str, agents: &[&str], seq: u64) -> Announcement {
        Announcement {
            node_name: NodeName::new(name).unwrap(),
            version: "t".into(),
            seq,
            heartbeat_ms: 1000,
            agents: agents
                .iter()
                .map(|a| AgentInfo {
                    name: AgentName::new(*a).unwrap(),
                    kind: "human".into(),
                    cwd: None,
                    repo: None,
                    summary: None,
                    online: true,
                    delivery: Default::default(),
                    last_seen_ms: 0,
                })
                .collect(),
        }
    }

    fn a(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_unique_and_explains_ambiguity() {
        let me = PeerId::random();
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let mut d = Directory::new(me);
        let now = Instant::now();
        d.update(p1, ann("laptop", &["bob", "carol"], 1), now, 0);
        d.update(p2, ann("desktop", &["bob"], 1), now, 0);
        let my = NodeName::new("here").unwrap();
        let local = vec![AgentName::new("alice").unwrap()];

        assert_eq!(
            d.resolve(&a("alice"), &my, &local).unwrap(),
            Target::Local(AgentName::new("alice").unwrap())
        );
        assert!(matches!(d.resolve(&a("carol"), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == p1));
        let err = d.resolve(&a("bob"), &my, &local).unwrap_err();
        assert!(matches!(err, ServiceError::Ambiguous(_)), "{:?}", err);
        assert!(
            err.to_string().contains("bob@laptop") && err.to_string().contains("bob@desktop"),
            "{}",
            err.to_string()
        );
        assert!(
            matches!(d.resolve(&a("bob@desktop"), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == p2)
        );
        assert!(
            matches!(d.resolve(&a(&format!("bob@{p1}")), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == p1)
        );
        let err = d.resolve(&a("zed"), &my, &local).unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{:?}", err);
        let err = d.resolve(&a("zed@laptop"), &my, &local).unwrap_err();
        assert!(err.to_string().contains("bob, carol"), "{}", err.to_string());
        let err = d.resolve(&a("bob@nowhere"), &my, &local).unwrap_err();
        assert!(
            err.to_string().contains("desktop") && err.to_string().contains("laptop"),
            "{}",
            err.to_string()
        );
        assert_eq!(
            d.resolve(&a("alice@here"), &my, &local).unwrap(),
            Target::Local(AgentName::new("alice").unwrap())
        );
    }

    /// `name~<last 8 characters of the PeerId>`, written out independently of the code.
    fn labelled(name: &str, p: &PeerId) -> String {
        let s = p.to_string();
        format!("{name}~{}", &s[s.len() - 8..])
    }

    #[test]
    fn same_node_names_are_told_apart_by_peer_id() {
        let me = PeerId::random();
        let (p1, p2) = (PeerId::random(), PeerId::random());
        let mut d = Directory::new(me);
        let now = Instant::now();
        d.update(p1, ann("box", &["bob"], 1), now, 0);
        d.update(p2, ann("box", &["bob"], 1), now, 0);
        let my = NodeName::new("here").unwrap();
        let err = d.resolve(&a("bob@box"), &my, &[]).unwrap_err();
        assert!(matches!(err, ServiceError::Ambiguous(_)), "{:?}", err);
        let (at1, at2) = (
            format!("bob@{}", labelled("box", &p1)),
            format!("bob@{}", labelled("box", &p2)),
        );
        assert!(
            err.to_string().contains(&at1) && err.to_string().contains(&at2),
            "{}",
            err.to_string()
        );
        let err = d.resolve(&a("bob"), &my, &[]).unwrap_err();
        assert!(
            err.to_string().contains(&at1) && err.to_string().contains(&at2),
            "{}",
            err.to_string()
        );
        // Each label resolves to its own node.
        assert!(matches!(d.resolve(&a(&at1), &my, &[]).unwrap(), Target::Remote { peer, .. } if peer == p1));
        assert!(matches!(d.resolve(&a(&at2), &my, &[]).unwrap(), Target::Remote { peer, .. } if peer == p2));
        // The node a user means, for ping, forget and remove.
        let node = |s: &str| d.node(&s.parse().unwrap(), &my);
        assert_eq!(node(&labelled("box", &p1)).unwrap(), p1);
        assert!(
            matches!(node("box").unwrap_err(), ServiceError::Ambiguous(_)),
            "{:?}",
            node("box").unwrap_err()
        );
        assert_eq!(node("here").unwrap(), me);
    }

    #[test]
    fn labels_tell_namesakes_apart_and_never_read_like_this_node() {
        let me = PeerId::random();
        let (twin, p1, p2, solo, quiet) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut d = Directory::new(me);
        let now = Instant::now();
        let my = NodeName::new("alpha").unwrap();
        d.update(twin, ann("alpha", &["user"], 1), now, 0);
        d.update(p1, ann("box", &[], 1), now, 0);
        d.update(p2, ann("box", &[], 1), now, 0);
        d.update(solo, ann("desk", &[], 1), now, 0);
        d.set_connected(quiet, true, 0);
        let label = |p: &PeerId| d.label(p, None, &my);

        assert_eq!(label(&me), "alpha", "this node keeps its plain name");
        assert_eq!(label(&twin), labelled("alpha", &twin));
        assert_eq!(label(&p1), labelled("box", &p1));
        assert_eq!(label(&p2), labelled("box", &p2));
        assert_ne!(label(&p1), label(&p2));
        assert_eq!(label(&solo), "desk", "a unique name needs nothing more");
        assert_eq!(label(&quiet), crate::ids::short_peer(&quiet));
        // The name a message arrived under counts, and clashes like any other.
        let old = NodeName::new("alpha").unwrap();
        assert_eq!(d.label(&solo, Some(&old), &my), labelled("alpha", &solo));
        // Names that read alike on a screen clash too.
        for lookalike in ["Alpha", "ALPHA", "a1pha", "alpHa"] {
            let n = NodeName::new(lookalike).unwrap();
            assert_eq!(d.label(&solo, Some(&n), &my), labelled(lookalike, &solo), "{lookalike}");
        }
        for distinct in ["alpha2", "alp", "beta"] {
            let n = NodeName::new(distinct).unwrap();
            assert_eq!(d.label(&solo, Some(&n), &my), distinct);
        }
        assert!(names_clash(
            &NodeName::new("rnodem").unwrap(),
            &NodeName::new("modem").unwrap()
        ));
        assert!(names_clash(
            &NodeName::new("vvork0").unwrap(),
            &NodeName::new("Work0").unwrap()
        ));
    }

    #[test]
    fn this_nodes_name_never_resolves_to_a_namesake() {
        let me = PeerId::random();
        let twin = PeerId::random();
        let mut d = Directory::new(me);
        d.update(twin, ann("alpha", &["user", "bob"], 1), Instant::now(), 0);
        let my = NodeName::new("alpha").unwrap();
        let local = vec![AgentName::new("user").unwrap()];
        let twin_label = labelled("alpha", &twin);

        assert_eq!(
            d.resolve(&a("user@alpha"), &my, &local).unwrap(),
            Target::Local(AgentName::new("user").unwrap())
        );
        // Only the twin hosts bob: the plain name still means this node, and the error says
        // how to reach the twin.
        let err = d.resolve(&a("bob@alpha"), &my, &local).unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{:?}", err);
        assert!(
            err.to_string().contains(&format!("bob@{twin_label}")),
            "{}",
            err.to_string()
        );
        assert!(
            matches!(d.resolve(&a(&format!("bob@{twin_label}")), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == twin)
        );
        assert!(
            matches!(d.resolve(&a(&format!("user@{twin_label}")), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == twin)
        );
        // This node's own label resolves here.
        assert_eq!(
            d.resolve(&a(&format!("user@{}", labelled("alpha", &me))), &my, &local)
                .unwrap(),
            Target::Local(AgentName::new("user").unwrap())
        );
        // A bare agent name both hold: refused, with labels that differ.
        let err = d.resolve(&a("user"), &my, &local).unwrap_err();
        assert!(matches!(err, ServiceError::Ambiguous(_)), "{:?}", err);
        assert!(
            err.to_string().contains("user@alpha,") && err.to_string().contains(&format!("user@{twin_label}")),
            "{}",
            err.to_string()
        );
    }

    #[test]
    fn a_suffix_is_checked_against_peer_ids_not_names() {
        let me = PeerId::random();
        let (p, q) = (PeerId::random(), PeerId::random());
        let mut d = Directory::new(me);
        d.update(p, ann("box", &["bob"], 1), Instant::now(), 0);
        d.update(q, ann("desk", &["bob"], 1), Instant::now(), 0);
        let my = NodeName::new("here").unwrap();
        // Plain-labelled nodes answer to their label with a suffix as well.
        assert!(
            matches!(d.resolve(&a(&format!("bob@{}", labelled("box", &p))), &my, &[]).unwrap(), Target::Remote { peer, .. } if peer == p)
        );
        // q's suffix with p's name: refused, naming q's real label.
        let err = d
            .resolve(&a(&format!("bob@{}", labelled("box", &q))), &my, &[])
            .unwrap_err();
        assert!(
            err.to_string().contains("\"desk\"") && err.to_string().contains(&labelled("desk", &q)),
            "{}",
            err.to_string()
        );
        // A suffix no known node has.
        let stranger = PeerId::random();
        let err = d
            .resolve(&a(&format!("bob@{}", labelled("box", &stranger))), &my, &[])
            .unwrap_err();
        assert!(matches!(err, ServiceError::NotFound(_)), "{:?}", err);
    }

    #[test]
    fn presence_follows_heartbeats() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut d = Directory::new(me);
        let t0 = Instant::now();
        assert!(!d.online(&p, t0));
        assert_eq!(d.update(p, ann("n", &["x"], 5), t0, 0), Update::Changed);
        assert!(d.online(&p, t0 + Duration::from_millis(2900)));
        assert!(!d.online(&p, t0 + Duration::from_millis(3100)));
        // A late, older copy is ignored while the newer one is fresh.
        assert_eq!(d.update(p, ann("n", &["x", "y"], 4), t0, 0), Update::Stale);
        assert_eq!(d.update(p, ann("n", &["x"], 6), t0, 0), Update::Refreshed);
        // After the presence window, a lower seq (restarted node) is accepted.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(d.update(p, ann("n", &["x", "y"], 1), later, 0), Update::Changed);
        // Connected counts as online even without announcements.
        let q = PeerId::random();
        d.set_connected(q, true, 0);
        assert!(d.online(&q, later));
        d.set_connected(q, false, 0);
        assert!(!d.online(&q, later));
        assert!(d.get(&q).is_none(), "a node that never announced is forgotten");
        assert!(d.get(&p).is_some());
    }
}
