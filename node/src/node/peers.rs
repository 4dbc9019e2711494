//! Other nodes: status, peers and agents as the API shows them, dialing, forgetting, probing, the addresses to give out.

use super::*;

impl Node {
    /// `mesh status`.
    pub async fn status(&self) -> Result<StatusView, ServiceError> {
        let info = self.0.net.info().await.map_err(unavailable)?;
        let mut stats = self.0.store.read(ops::stats).await?;
        stats.file_bytes = std::fs::metadata(self.0.store.path()).map(|m| m.len()).unwrap_or(0);
        let agents = self.agents().await?.into_iter().filter(|a| a.local).collect();
        let topics = self
            .topics()
            .await?
            .into_iter()
            .filter(|t| !t.subscribers.is_empty())
            .collect();
        let known = self.dir().nodes().count() as u32;
        let mut paths = [0u32; 3];
        for p in &info.peers {
            // A peer counts by its best connection: direct LAN, then internet, then relay.
            let best = p.addrs.iter().map(crate::net::path_of).min_by_key(|x| match x {
                crate::net::Path::Lan => 0,
                crate::net::Path::Internet => 1,
                crate::net::Path::Relayed => 2,
            });
            match best {
                Some(crate::net::Path::Lan) => paths[0] += 1,
                Some(crate::net::Path::Internet) => paths[1] += 1,
                Some(crate::net::Path::Relayed) => paths[2] += 1,
                None => {}
            }
        }
        Ok(StatusView {
            node: self.identity(),
            home: self.0.home.path().display().to_string(),
            listen: info.listen,
            mdns: self.0.config.mdns,
            connected: info.peers.len() as u32,
            connected_lan: paths[0],
            connected_internet: paths[1],
            connected_relayed: paths[2],
            known,
            agents,
            topics,
            store: stats.into(),
            uptime_s: self.0.started.elapsed().as_secs(),
            remembered: info.pinned.len() as u32,
            reach: info.reach.into(),
            mesh: self.mesh_view().await?,
            outsiders: info.outsiders.len() as u32,
        })
    }

    /// `mesh peers`.
    pub async fn peers(&self) -> Result<Vec<PeerView>, ServiceError> {
        let info = self.0.net.info().await.map_err(unavailable)?;
        let members: std::collections::HashSet<PeerId> = self
            .0
            .store
            .read(ops::members)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        let now = Instant::now();
        let dir = self.dir();
        let outsider = |p: &PeerId| info.outsiders.iter().any(|o| o.peer == *p);
        let mut out: Vec<PeerView> = dir
            .nodes()
            .filter(|(p, _)| !outsider(p))
            .map(|(p, e)| {
                let conn = info.peers.iter().find(|c| c.peer == *p);
                let mut addrs = e.addrs.clone();
                if let Some((_, known)) = info.known_addrs.iter().find(|(k, _)| k == p) {
                    for a in known {
                        if !addrs.contains(a) {
                            addrs.push(a.clone());
                        }
                    }
                }
                PeerView {
                    peer_id: *p,
                    name: e.announcement.as_ref().map(|a| a.node_name.to_string()),
                    addrs,
                    connected: conn.is_some(),
                    online: dir.online(p, now),
                    rtt_us: conn.and_then(|c| c.rtt).map(|d| d.as_micros() as u64),
                    version: conn
                        .and_then(|c| c.agent_version.clone())
                        .or_else(|| e.announcement.as_ref().map(|a| a.version.clone())),
                    agents: e.announcement.as_ref().map(|a| a.agents.len() as u32).unwrap_or(0),
                    last_seen_ms: (e.last_seen_ms > 0).then_some(e.last_seen_ms),
                    connections: conn
                        .map(|c| c.connections.iter().cloned().map(Into::into).collect())
                        .unwrap_or_default(),
                    remembered: info.pinned.contains(p),
                    // Known from an earlier mesh of this node (before a join or leave)?
                    member: conn.is_some() || members.contains(p),
                    refused: (conn.is_none() && !members.contains(p))
                        .then(|| "not known as a member of this node's current mesh".to_string()),
                    punch: conn.and_then(|c| c.punch.clone()).map(Into::into),
                }
            })
            .collect();
        drop(dir);
        out.sort_by(|a, b| (b.connected, &a.name, a.peer_id).cmp(&(a.connected, &b.name, b.peer_id)));
        // Nodes nearby that are not members, so users see who is around (and can invite).
        for o in &info.outsiders {
            out.push(PeerView {
                peer_id: o.peer,
                name: o.claimed_name.as_deref().map(crate::ids::sanitize_text),
                addrs: o.addrs.clone(),
                connected: o.connected,
                online: false,
                rtt_us: None,
                version: None,
                agents: 0,
                last_seen_ms: Some(o.last_seen_ms),
                connections: Vec::new(),
                remembered: info.pinned.contains(&o.peer),
                member: false,
                refused: Some(o.reason.clone()),
                punch: None,
            });
        }
        Ok(out)
    }

    /// `mesh agents`: local agents first, then every announced remote agent.
    pub async fn agents(&self) -> Result<Vec<AgentView>, ServiceError> {
        let locals = self.0.store.read(ops::agents).await?;
        let mut out = Vec::new();
        for r in locals {
            out.push(self.local_view(&r).await?);
        }
        let now = Instant::now();
        let dir = self.dir();
        let mut remote: Vec<AgentView> = dir
            .nodes()
            .filter_map(|(p, e)| e.announcement.as_ref().map(|a| (p, a)))
            .flat_map(|(p, a)| {
                let dir = &dir;
                let label = dir.label(p, Some(&a.node_name), &self.0.name);
                a.agents.iter().map(move |ag| AgentView {
                    address: format!("{}@{label}", ag.name),
                    name: ag.name.to_string(),
                    node_name: a.node_name.to_string(),
                    node: *p,
                    local: false,
                    kind: ag.kind.clone(),
                    cwd: ag.cwd.clone(),
                    repo: ag.repo.clone(),
                    summary: ag.summary.clone(),
                    reception: dir.reception(p, ag, now),
                    last_seen_ms: ag.last_seen_ms,
                    unread: None,
                    pid: None,
                })
            })
            .collect();
        remote.sort_by(|a, b| (&a.node_name, &a.name).cmp(&(&b.node_name, &b.name)));
        out.extend(remote);
        Ok(out)
    }

    /// `mesh dial`.
    pub async fn dial(&self, addr: &str) -> Result<PeerId, ServiceError> {
        let ma = crate::net::parse_multiaddr(addr).map_err(|e| ServiceError::invalid(e.to_string()))?;
        let mut events = self.0.events.subscribe();
        let dial = self.0.net.dial(ma.clone());
        let peer = tokio::time::timeout(DIAL_TIMEOUT, dial)
            .await
            .map_err(|_| {
                ServiceError::unavailable(format!("dialing {ma} timed out after {} s", DIAL_TIMEOUT.as_secs()))
            })?
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        // Connected is not enough: it must prove it belongs to this mesh.
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        let mut watch = self.0.net.connected();
        loop {
            if watch.borrow_and_update().contains(&peer) {
                break;
            }
            let info = self.0.net.info().await.map_err(unavailable)?;
            if let Some(o) = info.outsiders.into_iter().find(|o| o.peer == peer) {
                return Err(ServiceError::denied(format!(
                    "reached {peer}, but it is not a member of this mesh ({}). To bring it in, run `mesh invite` here and `mesh join <code>` there",
                    o.reason
                )));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::unavailable(format!(
                    "connected to {peer}, but it did not prove membership in time"
                )));
            }
            // Woken by an admission, or look again for a refusal shortly.
            let _ = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        }
        // Return once the node's agents are known, so an address can be used at once.
        let known = self.dir().get(&peer).is_some_and(|e| e.heard_at.is_some());
        if !known {
            let wait = async {
                loop {
                    match events.recv().await {
                        Ok(Event::NodeUpdated { peer: p, .. }) if p == peer => break,
                        Err(broadcast::error::RecvError::Closed) => break,
                        _ => {}
                    }
                }
            };
            if tokio::time::timeout(ANNOUNCE_WAIT, wait).await.is_err() {
                tracing::info!(%peer, "connected, but the node has not announced its agents yet");
            }
        }
        // Remember it: kept connected, redialed after restarts and network loss.
        let rec = {
            let mut dir = self.dir();
            dir.add_addrs(peer, std::slice::from_ref(&ma));
            dir.record(&peer)
        };
        let dialed = crate::net::strip_p2p(ma);
        self.0
            .store
            .write("dial", move |t| {
                if let Some(rec) = rec {
                    ops::put_peer(t, &rec)?;
                }
                ops::put_dialed(t, &peer, &dialed)
            })
            .await?;
        let _ = self.0.net.pin(peer).await;
        Ok(peer)
    }

    /// The node a user means: a PeerId, an address ending in `/p2p/<id>`, a node name or a
    /// label `name~suffix` (see [`Directory::node`]).
    pub(super) fn resolve_node(&self, text: &str) -> Result<PeerId, ServiceError> {
        let t = text.trim();
        if let Ok(p) = t.parse::<PeerId>() {
            return Ok(p);
        }
        if t.starts_with('/') {
            let ma = crate::net::parse_multiaddr(t).map_err(|e| ServiceError::invalid(e.to_string()))?;
            return match ma.iter().last() {
                Some(libp2p::multiaddr::Protocol::P2p(p)) => Ok(p),
                _ => Err(ServiceError::invalid(format!("{t} does not end with /p2p/<PeerId>"))),
            };
        }
        self.dir().node(&t.parse()?, &self.0.name)
    }

    /// `peer`, unless it is this node: then an error saying so (and `advice`), with the
    /// labels of the other nodes named like this one, which the user may have meant.
    pub(super) fn other_node(&self, peer: PeerId, advice: &str) -> Result<PeerId, ServiceError> {
        if peer != self.0.peer_id {
            return Ok(peer);
        }
        let mut message = format!("that is this node{advice}");
        let dir = self.dir();
        let namesakes: Vec<String> = dir
            .named(&self.0.name)
            .iter()
            .map(|p| dir.label(p, None, &self.0.name))
            .collect();
        if !namesakes.is_empty() {
            message.push_str(&format!(
                "; other nodes named {:?}: {}",
                self.0.name.as_str(),
                namesakes.join(", ")
            ));
        }
        Err(ServiceError::invalid(message))
    }

    /// `mesh dial --forget`.
    pub async fn forget(&self, node: &str) -> Result<(PeerId, bool), ServiceError> {
        let peer = self.other_node(self.resolve_node(node)?, "")?;
        let was_stored = self
            .0
            .store
            .write("forget", move |t| ops::remove_dialed(t, &peer))
            .await?;
        let was_pinned = self.0.net.unpin(peer).await.map_err(unavailable)?;
        Ok((peer, was_stored || was_pinned))
    }

    /// `mesh ping`: one round trip, and the connection it used.
    pub async fn ping(&self, node: &str) -> Result<(PeerId, Duration, crate::api::ConnectionView), ServiceError> {
        let peer = self.other_node(self.resolve_node(node)?, "")?;
        if !self.0.net.is_connected(&peer) {
            return Err(ServiceError::unavailable(format!(
                "node {node} is not connected (mesh dial it, or wait for discovery)"
            )));
        }
        let (rtt, conn) = tokio::time::timeout(DIAL_TIMEOUT, self.0.net.ping(peer))
            .await
            .map_err(|_| ServiceError::unavailable("no answer within 20 s"))?
            .map_err(|e| ServiceError::unavailable(e.to_string()))?;
        Ok((peer, rtt, conn.into()))
    }

    /// `mesh addr`: what someone else can dial.
    pub async fn addrs(&self) -> Result<crate::api::AddrsView, ServiceError> {
        use crate::net::{Path, path_of};
        let info = self.0.net.info().await.map_err(unavailable)?;
        let me = self.0.peer_id;
        let full = |a: &libp2p::Multiaddr| format!("{a}/p2p/{me}");
        let mut view = crate::api::AddrsView {
            peer_id: me,
            public: Vec::new(),
            relayed: Vec::new(),
            lan: Vec::new(),
            unconfirmed: Vec::new(),
        };
        for a in &info.reach.external {
            match path_of(a) {
                Path::Relayed => {}
                _ => view.public.push(full(a)),
            }
        }
        for r in &info.reach.reservations {
            if let (true, Some(a)) = (r.accepted, &r.addr) {
                view.relayed.push(full(&crate::net::strip_p2p(a.clone())));
            }
        }
        for a in &info.listen {
            if crate::net::is_loopback(a) || crate::net::is_link_local_v6(a) {
                continue;
            }
            match path_of(a) {
                Path::Lan => view.lan.push(full(a)),
                Path::Internet if !info.reach.external.contains(a) => view.unconfirmed.push(full(a)),
                _ => {}
            }
        }
        Ok(view)
    }
}
