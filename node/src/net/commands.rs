//! The actor carrying out commands: dials, topics, announcements, and the rest of `Command`.

use super::*;

/// What the rest of the node asks of the actor (through [`NetHandle`]).
pub(super) enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetError>>,
    },
    DialPeer {
        peer: PeerId,
    },
    AddAddrs {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        discovered: bool,
    },
    SendDm {
        peer: PeerId,
        request: DmRequest,
        reply: oneshot::Sender<Result<DmResponse, NetError>>,
    },
    RespondDm {
        request: InboundRequestId,
        response: DmResponse,
    },
    Sync {
        peer: PeerId,
        request: SyncRequest,
        reply: oneshot::Sender<Result<SyncResponse, NetError>>,
    },
    RespondSync {
        request: InboundRequestId,
        response: Box<SyncResponse>,
    },
    Publish {
        topic: TopicName,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<u32, NetError>>,
    },
    Subscribe(TopicName),
    Unsubscribe(TopicName),
    SetMembership {
        mesh: Box<Membership>,
        reset: bool,
    },
    Join {
        invite: Box<Invite>,
        reply: oneshot::Sender<Result<(Grant, Voucher), NetError>>,
    },
    RespondJoin {
        request: InboundRequestId,
        response: Box<JoinResponse>,
    },
    Pair {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: crate::wire::PairRequest,
        reply: oneshot::Sender<Result<crate::wire::PairResponse, NetError>>,
    },
    RespondPair {
        request: InboundRequestId,
        response: Box<crate::wire::PairResponse>,
        keep: Option<Duration>,
    },
    DropOutsider(PeerId),
    /// What the PCP / NAT-PMP task came to.
    PortMapping(reach::PmpEvent),
    /// A round of a hole punch from a fresh port came to an end.
    Fired(reach::Fired),
    SetAnnouncement(Box<Announcement>),
    Info(oneshot::Sender<NetInfo>),
    Ping {
        peer: PeerId,
        reply: PingReply,
    },
    Find {
        peer: PeerId,
        reply: oneshot::Sender<Result<Vec<Multiaddr>, NetError>>,
    },
    Pin(PeerId),
    Unpin {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    CloseConnections(Vec<ConnectionId>),
    Stop {
        flush: Duration,
        reply: oneshot::Sender<()>,
    },
}

impl NetActor {
    pub(super) fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = strip_p2p(addr);
        let list = self.addrs.entry(peer).or_default();
        if let Some(pos) = list.iter().position(|a| a == &addr) {
            list.remove(pos);
        }
        list.push_front(addr);
        list.truncate(MAX_ADDRS_PER_PEER);
    }

    /// A dial the user asked for: it goes ahead even if a background dial is under way
    /// (the duplicate rule keeps one connection).
    pub(super) fn explicit_dial(&mut self, dial: ExplicitDial) {
        let opts = match dial.peer {
            Some(p) => {
                let o = DialOpts::peer_id(p)
                    .addresses(vec![dial.addr.clone()])
                    .condition(PeerCondition::Always);
                if dial.fresh_port {
                    o.allocate_new_port().build()
                } else {
                    o.build()
                }
            }
            None => {
                let o = DialOpts::unknown_peer_id().address(dial.addr.clone());
                if dial.fresh_port {
                    o.allocate_new_port().build()
                } else {
                    o.build()
                }
            }
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(id, dial);
            }
            Err(e) => {
                let _ = dial.reply.send(Err(NetError::Dial {
                    addr: dial.addr.to_string(),
                    why: dial_error_text(&e),
                }));
            }
        }
    }

    pub(super) fn dial_known(&mut self, peer: PeerId) {
        if self.foreign.contains(&peer)
            || self.swarm.is_connected(&peer)
            || peer == *self.swarm.local_peer_id()
            || self.adm.backing_off(&peer)
        {
            return;
        }
        let addrs: Vec<Multiaddr> = self
            .addrs
            .get(&peer)
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        if addrs.is_empty() {
            // No address: ask the DHT where it is (the lookup dials it when found).
            self.lookup(peer, None);
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "dial not started");
        }
    }

    /// The directory topic and every user topic we use, under the current mesh's names.
    pub(super) fn rebuild_topics(&mut self) {
        let mesh = &self.adm.mesh;
        let dir = wire::directory_topic(mesh);
        let mut topics = HashMap::new();
        topics.insert(dir.hash(), (dir.clone(), TopicKind::Directory));
        for t in &self.subscribed {
            let g = wire::gossip_topic(mesh, t);
            topics.insert(g.hash(), (g, TopicKind::User(t.clone())));
        }
        self.topics = topics;
        let gs = self.swarm.behaviour_mut().gossipsub.inner();
        if let Err(e) = gs.subscribe(&dir) {
            tracing::warn!(error = %e, "cannot join the directory topic");
        }
        let subs: Vec<IdentTopic> = self
            .topics
            .values()
            .filter(|(_, k)| matches!(k, TopicKind::User(_)))
            .map(|(g, _)| g.clone())
            .collect();
        for g in subs {
            if let Err(e) = self.swarm.behaviour_mut().gossipsub.inner().subscribe(&g) {
                tracing::warn!(error = %e, "subscribe failed");
            }
        }
    }

    pub(super) fn user_topic(&mut self, topic: &TopicName) -> IdentTopic {
        let g = wire::gossip_topic(&self.adm.mesh, topic);
        self.topics
            .entry(g.hash())
            .or_insert_with(|| (g.clone(), TopicKind::User(topic.clone())));
        g
    }

    pub(super) fn directory_hash(&self) -> TopicHash {
        wire::directory_topic(&self.adm.mesh).hash()
    }

    pub(super) fn announce(&mut self) {
        let Some(a) = self.announcement.as_mut() else { return };
        a.seq = now_ms().max(a.seq + 1);
        let payload = match postcard::to_allocvec(&DirectoryGossip::Announce(a.clone())) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode announcement");
                return;
            }
        };
        let topic = self.directory_hash();
        let me = *self.swarm.local_peer_id();
        let sealed = self.adm.mesh.seal(topic.as_str(), &me, &payload);
        match self.swarm.behaviour_mut().gossipsub.inner().publish(topic, sealed) {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!(error = %e, "announcement not published"),
        }
    }

    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial { addr, reply } => self.dial_command(addr, reply),
            Command::DialPeer { peer } => self.dial_known(peer),
            Command::AddAddrs {
                peer,
                addrs,
                discovered,
            } => self.add_addrs(peer, addrs, discovered),
            Command::SendDm { peer, request, reply } => self.send_dm(peer, request, reply),
            Command::RespondDm { request, response } => self.respond_dm(request, response),
            Command::Sync { peer, request, reply } => self.send_sync(peer, request, reply),
            Command::RespondSync { request, response } => self.respond_sync(request, *response),
            Command::Publish { topic, data, reply } => {
                let _ = reply.send(self.publish(&topic, &data));
            }
            Command::Subscribe(topic) => self.subscribe(topic),
            Command::Unsubscribe(topic) => self.unsubscribe(topic),
            Command::SetMembership { mesh, reset } => self.set_membership(*mesh, reset),
            Command::Join { invite, reply } => self.start_join(*invite, reply),
            Command::RespondJoin { request, response } => self.respond_join(request, *response),
            Command::Pair {
                peer,
                addrs,
                request,
                reply,
            } => self.send_pair(peer, addrs, request, reply),
            Command::RespondPair {
                request,
                response,
                keep,
            } => self.respond_pair(request, *response, keep),
            Command::DropOutsider(peer) => self.drop_outsider(peer),
            Command::PortMapping(e) => self.on_port_mapping(e),
            Command::Fired(f) => self.on_fired(f),
            Command::SetAnnouncement(a) => self.set_announcement(*a),
            Command::Ping { peer, reply } => self.send_ping(peer, reply),
            Command::Find { peer, reply } => self.find(peer, reply),
            Command::Pin(peer) => self.pin(peer),
            Command::Unpin { peer, reply } => {
                let _ = reply.send(self.unpin(&peer));
            }
            Command::Stop { flush, reply } => self.begin_stop(flush, reply),
            Command::CloseConnections(ids) => {
                for id in ids {
                    self.swarm.close_connection(id);
                }
            }
            Command::Info(reply) => {
                let _ = reply.send(self.info());
            }
        }
    }

    fn send_dm(&mut self, peer: PeerId, request: DmRequest, reply: Waiting<DmResponse>) {
        let Some(reply) = self.admitted_or_refuse(peer, reply) else {
            return;
        };
        let id = self.swarm.behaviour_mut().dm.inner().send_request(&peer, request);
        self.dm_out.insert(id, reply);
    }

    fn send_sync(&mut self, peer: PeerId, request: SyncRequest, reply: Waiting<SyncResponse>) {
        let Some(reply) = self.admitted_or_refuse(peer, reply) else {
            return;
        };
        let id = self.swarm.behaviour_mut().sync.inner().send_request(&peer, request);
        self.sync_out.insert(id, reply);
    }

    fn respond_sync(&mut self, request: InboundRequestId, response: SyncResponse) {
        if let Some(ch) = self.sync_in.remove(&request)
            && self
                .swarm
                .behaviour_mut()
                .sync
                .inner()
                .send_response(ch, response)
                .is_err()
        {
            tracing::debug!("catch-up response not sent: connection gone");
        }
    }

    fn subscribe(&mut self, topic: TopicName) {
        let g = self.user_topic(&topic);
        self.subscribed.insert(topic.clone());
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.inner().subscribe(&g) {
            tracing::warn!(topic = %topic, error = %e, "subscribe failed");
        }
    }

    fn unsubscribe(&mut self, topic: TopicName) {
        let g = self.user_topic(&topic);
        self.subscribed.remove(&topic);
        self.swarm.behaviour_mut().gossipsub.inner().unsubscribe(&g);
    }

    /// `mesh ping`: a round trip on the members-only probe protocol.
    fn send_ping(&mut self, peer: PeerId, reply: PingReply) {
        let Some(reply) = self.admitted_or_refuse(peer, reply) else {
            return;
        };
        let id = self
            .swarm
            .behaviour_mut()
            .probe
            .inner()
            .send_request(&peer, rand::random::<u64>());
        self.pings.insert(id, (Instant::now(), reply));
    }

    /// Where `peer` is: the addresses known for a member, else a DHT lookup.
    fn find(&mut self, peer: PeerId, reply: Waiting<Vec<Multiaddr>>) {
        if self.is_admitted(&peer) {
            let addrs = self
                .addrs
                .get(&peer)
                .map(|l| l.iter().cloned().collect())
                .unwrap_or_default();
            let _ = reply.send(Ok(addrs));
        } else {
            self.lookup(peer, Some(reply));
        }
    }

    /// A clean stop: answers flushed for half of `flush`, then connections closed.
    fn begin_stop(&mut self, flush: Duration, reply: oneshot::Sender<()>) {
        self.stopping = true;
        let now = Instant::now();
        self.stop = Some(StopState {
            flush_until: now + flush / 2,
            deadline: now + flush,
            closing: false,
            closed_at: None,
            reply: Some(reply),
        });
    }

    /// A request to a peer that is not admitted fails at once ("not connected"); the reply
    /// channel comes back when the peer is admitted.
    fn admitted_or_refuse<T>(
        &self,
        peer: PeerId,
        reply: oneshot::Sender<Result<T, NetError>>,
    ) -> Option<oneshot::Sender<Result<T, NetError>>> {
        if self.is_admitted(&peer) {
            return Some(reply);
        }
        let _ = reply.send(Err(NetError::Request {
            peer,
            why: "not connected".into(),
        }));
        None
    }

    /// `mesh dial <addr>`: the node is the last `/p2p/` part (in a relayed address the
    /// first one is the relay).
    fn dial_command(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, NetError>>) {
        let relayed = addr.iter().any(|p| matches!(p, Protocol::P2pCircuit));
        let peer = match addr.iter().last() {
            Some(Protocol::P2p(id)) => Some(id),
            _ if relayed => {
                let _ = reply.send(Err(NetError::Dial {
                    addr: addr.to_string(),
                    why: "a relayed address must end with /p2p/<the node's PeerId>".into(),
                }));
                return;
            }
            _ => addr.iter().find_map(|p| match p {
                Protocol::P2p(id) => Some(id),
                _ => None,
            }),
        };
        if peer == Some(*self.swarm.local_peer_id()) {
            let _ = reply.send(Err(NetError::Dial {
                addr: addr.to_string(),
                why: "that is this node's own address".into(),
            }));
            return;
        }
        if let Some(p) = peer
            && self.swarm.is_connected(&p)
        {
            let _ = reply.send(Ok(p));
            return;
        }
        self.explicit_dial(ExplicitDial {
            addr,
            peer,
            reply,
            fresh_port: false,
        });
    }

    fn add_addrs(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, discovered: bool) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        for a in addrs {
            self.remember(peer, a);
        }
        if discovered {
            self.dial_known(peer);
        }
    }

    fn respond_dm(&mut self, request: InboundRequestId, response: DmResponse) {
        if let Some(ch) = self.dm_in.remove(&request) {
            match self.swarm.behaviour_mut().dm.inner().send_response(ch, response) {
                Ok(()) => {
                    self.dm_answering.insert(request);
                }
                Err(_) => {
                    tracing::debug!("delivery response not sent: connection gone (sender will retry)")
                }
            }
        }
    }

    /// Seals `data` for the mesh and publishes it on `topic`: the subscribers it went to.
    fn publish(&mut self, topic: &TopicName, data: &[u8]) -> Result<u32, NetError> {
        let hash = self.user_topic(topic).hash();
        let me = *self.swarm.local_peer_id();
        let sealed = self.adm.mesh.seal(hash.as_str(), &me, data);
        let gs = self.swarm.behaviour_mut().gossipsub.inner();
        match gs.publish(hash.clone(), sealed) {
            Ok(_) => {
                let n = gs.all_peers().filter(|(_, topics)| topics.contains(&&hash)).count();
                Ok(n as u32)
            }
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(0),
            Err(gossipsub::PublishError::Duplicate) => Ok(0),
            Err(e) => Err(NetError::Publish(e.to_string())),
        }
    }

    fn set_announcement(&mut self, mut a: Announcement) {
        let first = self.announcement.is_none();
        let seq = self.announcement.as_ref().map(|x| x.seq).unwrap_or(0);
        a.seq = a.seq.max(seq);
        self.announcement = Some(a.clone());
        self.announce();
        if first {
            // Answer and greet whoever came before we had anything to say.
            for ch in std::mem::take(&mut self.early_hellos) {
                let _ = self.swarm.behaviour_mut().hello.inner().send_response(ch, a.clone());
            }
            let members: Vec<PeerId> = self.peers.iter().filter(|(_, s)| s.admitted).map(|(p, _)| *p).collect();
            for p in members {
                self.swarm.behaviour_mut().hello.inner().send_request(&p, a.clone());
            }
        }
    }

    /// A snapshot of the network state for `mesh status` and `mesh peers`.
    fn info(&self) -> NetInfo {
        let peers = self
            .peers
            .iter()
            .filter(|(_, s)| !s.connections.is_empty() && s.admitted)
            .map(|(p, s)| ConnectedPeer {
                peer: *p,
                addrs: s.connections.values().map(|c| c.addr.clone()).collect(),
                connections: s
                    .connections
                    .values()
                    .map(|c| ConnectionInfo::of(&c.addr, c.dialed))
                    .collect(),
                rtt: s.rtt,
                agent_version: s.agent_version.clone(),
                punch: self.reach_punch_state(p),
            })
            .collect();
        let mut outsiders = self.adm.outsiders();
        for o in &mut outsiders {
            o.connected = self.swarm.is_connected(&o.peer);
        }
        NetInfo {
            listen: self.swarm.listeners().cloned().collect(),
            peers,
            outsiders,
            known_addrs: self
                .addrs
                .iter()
                .map(|(p, l)| (*p, l.iter().cloned().collect()))
                .collect(),
            reach: self.reach_info(),
            pinned: self.pinned(),
        }
    }
}
