//! The mesh directory: which nodes exist, which agents they host, who is present.
//!
//! Presence is by heartbeat, never by guessing: a node is *online* while it is connected
//! or while its announcements keep arriving (each one is valid for three of the node's own
//! heartbeat intervals). mDNS expiry and closed connections alone prove nothing.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::{Multiaddr, PeerId};

use crate::api::{ApiError, ErrorCode, Reception};
use crate::ids::{Address, AgentName, NodeName, NodeRef};
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

    /// Resolves a user-written address. `my_name` and `local` describe this node.
    pub fn resolve(&self, addr: &Address, my_name: &NodeName, local: &[AgentName]) -> Result<Target, ApiError> {
        let label = |p: &PeerId| match self.name_of(p) {
            Some(n) => format!("{n} ({p})"),
            None => p.to_string(),
        };
        let remote_agent = |peer: &PeerId, agent: &AgentName| -> Result<Target, ApiError> {
            let entry = self.nodes.get(peer).ok_or_else(|| {
                ApiError::not_found(format!("unknown node {peer}: dial it first (mesh dial <multiaddr>)"))
            })?;
            match &entry.announcement {
                Some(a) if a.agents.iter().any(|x| &x.name == agent) => Ok(Target::Remote {
                    peer: *peer,
                    node_name: Some(a.node_name.clone()),
                    agent: agent.clone(),
                }),
                Some(a) => {
                    let names: Vec<&str> = a.agents.iter().map(|x| x.name.as_str()).collect();
                    Err(ApiError::not_found(format!(
                        "no agent {agent:?} on node {}; its agents: {}",
                        label(peer),
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
        };
        let local_agent = |agent: &AgentName| -> Result<Target, ApiError> {
            if local.contains(agent) {
                Ok(Target::Local(agent.clone()))
            } else {
                let names: Vec<&str> = local.iter().map(|a| a.as_str()).collect();
                Err(ApiError::not_found(format!(
                    "no agent {agent:?} on this node ({my_name}); its agents: {}",
                    names.join(", ")
                )))
            }
        };
        match &addr.node {
            Some(NodeRef::Peer(p)) if *p == self.me => local_agent(&addr.agent),
            Some(NodeRef::Peer(p)) => remote_agent(p, &addr.agent),
            Some(NodeRef::Name(n)) => {
                let mut candidates: Vec<Option<PeerId>> = Vec::new();
                if n == my_name {
                    candidates.push(None);
                }
                for (p, e) in &self.nodes {
                    if e.announcement.as_ref().is_some_and(|a| &a.node_name == n) {
                        candidates.push(Some(*p));
                    }
                }
                // Prefer the nodes that host the agent, when the name is shared.
                if candidates.len() > 1 {
                    let hosting: Vec<Option<PeerId>> = candidates
                        .iter()
                        .copied()
                        .filter(|c| match c {
                            None => local.contains(&addr.agent),
                            Some(p) => self.nodes[p]
                                .announcement
                                .as_ref()
                                .is_some_and(|a| a.agents.iter().any(|x| x.name == addr.agent)),
                        })
                        .collect();
                    if !hosting.is_empty() {
                        candidates = hosting;
                    }
                }
                match candidates.as_slice() {
                    [] => {
                        let mut known: Vec<String> = self
                            .nodes
                            .values()
                            .filter_map(|e| e.announcement.as_ref().map(|a| a.node_name.to_string()))
                            .collect();
                        known.push(format!("{my_name} (this node)"));
                        known.sort();
                        known.dedup();
                        Err(ApiError::not_found(format!(
                            "no node named {n:?} is known; known nodes: {}",
                            known.join(", ")
                        )))
                    }
                    [None] => local_agent(&addr.agent),
                    [Some(p)] => remote_agent(p, &addr.agent),
                    many => {
                        let list: Vec<String> = many
                            .iter()
                            .map(|c| match c {
                                None => format!("{}@{}", addr.agent, self.me),
                                Some(p) => format!("{}@{p}", addr.agent),
                            })
                            .collect();
                        Err(ApiError::new(
                            ErrorCode::Ambiguous,
                            format!("several nodes are named {n:?}; use one of: {}", list.join(", ")),
                        ))
                    }
                }
            }
            None => {
                let mut found: Vec<Target> = Vec::new();
                if local.contains(&addr.agent) {
                    found.push(Target::Local(addr.agent.clone()));
                }
                let mut remote: Vec<(&PeerId, &Announcement)> = self
                    .nodes
                    .iter()
                    .filter_map(|(p, e)| e.announcement.as_ref().map(|a| (p, a)))
                    .filter(|(_, a)| a.agents.iter().any(|x| x.name == addr.agent))
                    .collect();
                remote.sort_by_key(|(p, _)| **p);
                for (p, a) in remote {
                    found.push(Target::Remote {
                        peer: *p,
                        node_name: Some(a.node_name.clone()),
                        agent: addr.agent.clone(),
                    });
                }
                match found.len() {
                    0 => Err(ApiError::not_found(format!(
                        "no agent named {:?} is known on the mesh (see mesh agents)",
                        addr.agent
                    ))),
                    1 => Ok(found.remove(0)),
                    _ => {
                        // Node names may collide too: fall back to PeerIds where they do.
                        let names: Vec<String> = found
                            .iter()
                            .map(|t| match t {
                                Target::Local(_) => my_name.to_string(),
                                Target::Remote { node_name, peer, .. } => {
                                    node_name.as_ref().map(|n| n.to_string()).unwrap_or(peer.to_string())
                                }
                            })
                            .collect();
                        let list: Vec<String> = found
                            .iter()
                            .zip(&names)
                            .map(|(t, n)| {
                                let unique = names.iter().filter(|x| *x == n).count() == 1;
                                let node = match t {
                                    Target::Local(_) if !unique => self.me.to_string(),
                                    Target::Remote { peer, .. } if !unique => peer.to_string(),
                                    _ => n.clone(),
                                };
                                format!("{}@{node}", addr.agent)
                            })
                            .collect();
                        Err(ApiError::new(
                            ErrorCode::Ambiguous,
                            format!(
                                "{} agents are named {:?}; say which: {}",
                                found.len(),
                                addr.agent,
                                list.join(", ")
                            ),
                        ))
                    }
                }
            }
        }
    }
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
        assert_eq!(err.code, ErrorCode::Ambiguous);
        assert!(
            err.message.contains("bob@laptop") && err.message.contains("bob@desktop"),
            "{}",
            err.message
        );
        assert!(
            matches!(d.resolve(&a("bob@desktop"), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == p2)
        );
        assert!(
            matches!(d.resolve(&a(&format!("bob@{p1}")), &my, &local).unwrap(), Target::Remote { peer, .. } if peer == p1)
        );
        let err = d.resolve(&a("zed"), &my, &local).unwrap_err();
        assert_eq!(err.code, ErrorCode::NotFound);
        let err = d.resolve(&a("zed@laptop"), &my, &local).unwrap_err();
        assert!(err.message.contains("bob, carol"), "{}", err.message);
        let err = d.resolve(&a("bob@nowhere"), &my, &local).unwrap_err();
        assert!(
            err.message.contains("desktop") && err.message.contains("laptop"),
            "{}",
            err.message
        );
        assert_eq!(
            d.resolve(&a("alice@here"), &my, &local).unwrap(),
            Target::Local(AgentName::new("alice").unwrap())
        );
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
        assert_eq!(err.code, ErrorCode::Ambiguous);
        assert!(err.message.contains(&p1.to_string()) && err.message.contains(&p2.to_string()));
        let err = d.resolve(&a("bob"), &my, &[]).unwrap_err();
        assert!(err.message.contains(&p1.to_string()), "{}", err.message);
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
