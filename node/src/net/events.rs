//! The actor reacting to the swarm: listeners, connections opening and closing, and the events of each behaviour routed to its handler.

use super::*;

impl NetActor {
    pub(super) fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        {
            use libp2p::metrics::Recorder;
            let m = &self.metrics.libp2p;
            match &event {
                SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::RelayServer(e)) => m.record(e),
                SwarmEvent::Behaviour(BehaviourEvent::Dcutr(e)) => m.record(e),
                SwarmEvent::Behaviour(_) => {}
                other => m.record(other),
            }
        }
        match event {
            SwarmEvent::NewListenAddr { address, listener_id } => {
                tracing::info!(%address, "listening");
                self.listeners_reported.insert(listener_id);
                self.reach_on_new_listen_addr(listener_id, &address);
                // A relay is run on purpose where others can reach it: say so without
                // waiting for AutoNAT (whose servers only answer on connections the tester
                // dialed, which a relay rarely does). Whatever the range of the address: a
                // relay is one by role (its nodes may all sit behind NATs in 10.0.0.0/8 or
                // 100.64.0.0/10); only loopback and link-local addresses reach no one.
                if self.reach_serving() && reaches_others(&address) {
                    self.swarm.add_external_address(address.clone());
                }
                self.update_listening();
                self.emit(NetEvent::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.update_listening();
                self.on_address_lost(&address);
            }
            SwarmEvent::ListenerClosed {
                listener_id, reason, ..
            } => {
                if !self.reach_on_listener_closed(listener_id, &reason) {
                    tracing::warn!(?reason, "listener closed");
                    self.listeners_reported.insert(listener_id);
                }
                self.update_listening();
            }
            SwarmEvent::NewExternalAddrCandidate { address } => {
                tracing::debug!(%address, "address of ours observed");
                self.reach_on_own_address(&address);
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.reach_on_own_address(&address);
                self.reach_changed();
            }
            SwarmEvent::ExternalAddrExpired { address } => {
                tracing::info!(%address, "external address expired");
                self.reach_changed();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => self.on_connected(peer_id, connection_id, endpoint),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                endpoint,
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), ?cause, "connection closed");
                self.on_closed(peer_id, connection_id, num_established);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, &error),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// A connection closed; with the last one the peer is gone (a member is redialed).
    fn on_closed(&mut self, peer: PeerId, id: ConnectionId, left: u32) {
        if let Some(s) = self.peers.get_mut(&peer) {
            s.connections.remove(&id);
        }
        if left > 0 {
            return;
        }
        let was_member = self.peers.remove(&peer).is_some_and(|s| s.admitted);
        self.adm.pending.remove(&peer);
        self.reach_on_disconnected(peer);
        self.publish_connected();
        if was_member {
            if !self.stopping && !self.adm.mesh.is_revoked(&peer) {
                self.reach_on_member_lost(peer);
                self.public_member_lost();
            }
            self.emit(NetEvent::PeerDisconnected { peer });
        }
    }

    /// A dial failed: a join waiting on it hears so, and an explicit dial is answered (or
    /// tried once more from a fresh port).
    fn on_dial_failed(&mut self, id: ConnectionId, peer: Option<PeerId>, error: &libp2p::swarm::DialError) {
        tracing::debug!(peer = ?peer, error = %error, "dial failed");
        if let Some(p) = peer {
            self.join_dial_failed(p, dial_error_text(error));
            self.pair_dial_failed(p, dial_error_text(error));
        }
        let Some(mut dial) = self.dials.remove(&id) else {
            return;
        };
        match dial.peer {
            // The other side dialed us meanwhile: that connection will do.
            Some(p) if self.swarm.is_connected(&p) => {
                let _ = dial.reply.send(Ok(p));
            }
            // Two nodes dialing each other from their listening ports at the same moment can
            // meet in one TCP connection that both think they opened, and its handshake fails
            // on both sides: once more, each from a port of its own.
            Some(_) if !dial.fresh_port && matches!(error, libp2p::swarm::DialError::Transport(_)) => {
                tracing::debug!(addr = %dial.addr, "dial failed; once more from a fresh port");
                dial.fresh_port = true;
                self.explicit_dial(dial);
            }
            _ => {
                let _ = dial.reply.send(Err(NetError::Dial {
                    addr: dial.addr.to_string(),
                    why: dial_error_text(error),
                }));
            }
        }
    }

    /// Simultaneous dials leave two direct connections to one peer. Once both have been up
    /// for [`DUPLICATE_GRACE`], both sides keep the one dialed by the smaller PeerId and
    /// close the other, so they agree without talking. Not at once: a short-lived second
    /// connection (an AutoNAT dial-back) must not take down the one carrying traffic.
    /// This host lost an address (it moved to another network, or the interface went
    /// down). When no other address of the same family (loopback aside) is left, every
    /// connection of that family left through the lost one and is dead, though nothing
    /// says so until its pings time out (up to three heartbeats): they are closed now, so
    /// members are redialed and punched again, and relay slots taken again, at once.
    /// (Relayed connections go with the connection to their relay.)
    fn on_address_lost(&mut self, lost: &Multiaddr) {
        let Some(ip) = super::guard::ip_of(lost) else { return };
        if path_of(lost) == Path::Relayed {
            return;
        }
        let remaining: Vec<std::net::IpAddr> = self
            .swarm
            .listeners()
            .filter(|a| path_of(a) != Path::Relayed)
            .filter_map(super::guard::ip_of)
            .collect();
        let links: Vec<super::rules::Link<ConnectionId>> = self
            .peers
            .values()
            .flat_map(|s| s.connections.iter())
            .map(|(id, c)| super::rules::Link {
                id: *id,
                since: c.since,
                ip: super::guard::ip_of(&c.addr),
                relayed: c.via.is_some(),
            })
            .collect();
        let dead = super::rules::dead_after_loss(ip, &remaining, &links);
        if !dead.is_empty() {
            tracing::info!(%lost, connections = dead.len(), "this host's address is gone; closing the connections that used it");
        }
        for id in dead {
            self.swarm.close_connection(id);
        }
    }

    /// Closes the connections to `peer` opened well before `current` (a member began a new
    /// visit on `current`: the older ones are gone on its side).
    pub(super) fn close_stale(&mut self, peer: PeerId, current: ConnectionId) {
        let Some(state) = self.peers.get(&peer) else { return };
        let links: Vec<super::rules::Link<ConnectionId>> = state
            .connections
            .iter()
            .map(|(id, c)| super::rules::Link {
                id: *id,
                since: c.since,
                ip: None,
                relayed: c.via.is_some(),
            })
            .collect();
        let stale = super::rules::stale(&links, current);
        if !stale.is_empty() {
            tracing::info!(%peer, count = stale.len(), "a member began a new visit; closing its older connections");
        }
        for id in stale {
            self.swarm.close_connection(id);
        }
    }

    pub(super) fn close_duplicates(&mut self) {
        let me = *self.swarm.local_peer_id();
        let mut close = Vec::new();
        for (peer, state) in &self.peers {
            let direct = |d: bool| -> Vec<(ConnectionId, std::time::Instant)> {
                state
                    .connections
                    .iter()
                    .filter(|(_, c)| c.via.is_none() && c.dialed == d)
                    .map(|(id, c)| (*id, c.since))
                    .collect()
            };
            let (by_me, by_them) = (direct(true), direct(false));
            if by_me.is_empty() || by_them.is_empty() {
                continue;
            }
            if by_me
                .iter()
                .chain(&by_them)
                .any(|(_, since)| since.elapsed() < DUPLICATE_GRACE)
            {
                continue;
            }
            tracing::debug!(%peer, "closing duplicate connections");
            close.extend(if me < *peer { by_them } else { by_me }.into_iter().map(|(id, _)| id));
        }
        for id in close {
            self.swarm.close_connection(id);
        }
    }

    pub(super) fn on_connected(&mut self, peer: PeerId, id: ConnectionId, endpoint: ConnectedPoint) {
        let _span = tracing::debug_span!("peer", %peer, conn = %id).entered();
        let dialed = endpoint.is_dialer();
        // An inbound relayed connection has only `/p2p/<peer>` as remote address; the
        // circuit shows on our side (the relayed address we listen on).
        let addr = match &endpoint {
            ConnectedPoint::Listener { local_addr, .. } if relay_of(local_addr).is_some() => local_addr.clone(),
            _ => endpoint.get_remote_address().clone(),
        };
        let via = relay_of(&addr);
        tracing::debug!(%peer, %addr, dialed, relayed = via.is_some(), "connection established");
        if let Some(dial) = self.dials.remove(&id) {
            let _ = dial.reply.send(Ok(peer));
        }
        if dialed {
            self.remember(peer, endpoint.get_remote_address().clone());
        }
        let state = self.peers.entry(peer).or_default();
        let first = state.connections.is_empty();
        state.connections.insert(
            id,
            Conn {
                addr: addr.clone(),
                dialed,
                since: std::time::Instant::now(),
                via,
            },
        );

        // A direct connection supersedes relayed ones: close them shortly (after the
        // hole-punch protocol that may have opened this one has finished on them).
        let relayed: Vec<ConnectionId> = if via.is_none() {
            state
                .connections
                .iter()
                .filter(|(_, c)| c.via.is_some())
                .map(|(c, _)| *c)
                .collect()
        } else {
            Vec::new()
        };

        if !relayed.is_empty() {
            tracing::info!(%peer, "direct connection up; dropping the relayed one");
            let tx = self.self_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(reach::RELAYED_GRACE).await;
                let _ = tx.send(Command::CloseConnections(relayed)).await;
            });
            self.reach_changed();
        }
        self.reach_on_connected(peer);
        if self.is_admitted(&peer) {
            if !dialed {
                self.guard.open(&addr);
            }
        } else {
            self.bound_unadmitted(id);
        }
        if first {
            // Nothing but identify, ping and the relay runs until the peer proves membership.
            self.begin_admission(peer);
        }
    }

    pub(super) fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Identify(_) => {}
            BehaviourEvent::Ping(e) => self.on_ping(e),
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => self.on_mdns(list),
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Admit(e) => self.on_admit(e),
            BehaviourEvent::Join(e) => self.on_join(e),
            BehaviourEvent::Pair(e) => self.on_pair(e),
            BehaviourEvent::Limits(v) => match v {},
            BehaviourEvent::Gossipsub(e) => self.on_gossip(e),
            BehaviourEvent::Dm(e) => self.on_dm(e),
            BehaviourEvent::Hello(e) => self.on_hello(e),
            BehaviourEvent::Sync(e) => self.on_sync(e),
            BehaviourEvent::Rekey(e) => self.on_rekey(e),
            BehaviourEvent::Probe(e) => self.on_probe(e),
            BehaviourEvent::Punch(e) => self.on_punch(e),
            BehaviourEvent::RelayClient(e) => self.on_relay_client(e),
            BehaviourEvent::RelayServer(e) => self.on_relay_server(e),
            BehaviourEvent::Dcutr(e) => self.on_dcutr(e),
            BehaviourEvent::Upnp(e) => self.on_upnp(e),
            BehaviourEvent::AutonatClient(e) => self.on_autonat(e),
            BehaviourEvent::AutonatServer(e) => {
                tracing::debug!(client = %e.client, addr = %e.tested_addr, ok = e.result.is_ok(), "served an AutoNAT test");
            }
            BehaviourEvent::Kad(e) => self.on_kad(e),
            BehaviourEvent::PublicKad(e) => self.on_public_kad(e),
        }
    }

    /// Identify told us what a peer is: a non-agentmesh peer is dropped (unless it is a
    /// relay in use), an agentmesh one's dialable addresses are remembered.
    fn on_identify(&mut self, peer_id: PeerId, info: identify::Info) {
        if info.protocol_version != wire::IDENTIFY_PROTOCOL_VERSION {
            if self.reach_serving_anyone() || self.reach_uses_relay(&peer_id) {
                // A relay client or our relay: it may stay, it gets nothing else.
                return;
            }
            if self.public_on_identify(peer_id, &info.protocols) {
                // A node of the public network (ours is on): the DHT or a relay.
                return;
            }
            tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not an agentmesh node; disconnecting");
            if self.foreign.len() >= MAX_FOREIGN {
                self.foreign.clear();
            }
            self.foreign.insert(peer_id);
            self.addrs.remove(&peer_id);
            let _ = self.swarm.disconnect_peer_id(peer_id);
            return;
        }
        if let Some(s) = self.peers.get_mut(&peer_id) {
            s.agentmesh = true;
            s.agent_version = Some(info.agent_version.clone());
        }
        // Keep what can be dialed from here: loopback only if the peer is on this
        // machine, never link-local IPv6 (it needs a zone we do not know).
        let local = self
            .peers
            .get(&peer_id)
            .is_some_and(|s| s.connections.values().any(|c| is_loopback(&c.addr)));
        let listen: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .map(strip_p2p)
            .filter(|a| (local || !is_loopback(a)) && !is_link_local_v6(a))
            .collect();
        for a in listen.iter().take(MAX_ADDRS_PER_PEER) {
            self.remember(peer_id, a.clone());
        }
        self.reach_on_identify(peer_id, &info.protocols, &listen);
        if let Some(s) = self.peers.get_mut(&peer_id) {
            s.identified = Some((info.protocols.clone(), listen.clone()));
        }
        if self.is_admitted(&peer_id) {
            self.feed_kad(peer_id);
            self.emit(NetEvent::PeerIdentified {
                peer: peer_id,
                listen_addrs: listen,
            });
        }
    }

    /// A ping round trip, or a failure that closes the connection.
    fn on_ping(&mut self, e: ping::Event) {
        let ping::Event {
            peer,
            connection,
            result,
        } = e;
        match result {
            Ok(rtt) => {
                if let Some(s) = self.peers.get_mut(&peer) {
                    s.rtt = Some(rtt);
                }
            }
            Err(ping::Failure::Unsupported) => {}
            Err(e) => {
                tracing::info!(%peer, error = %e, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
        }
    }

    /// Peers found by mDNS: remembered, reported and dialed.
    fn on_mdns(&mut self, list: Vec<(PeerId, Multiaddr)>) {
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (p, a) in list {
            by_peer.entry(p).or_default().push(a);
        }
        for (peer, addrs) in by_peer {
            if self.foreign.contains(&peer) || peer == *self.swarm.local_peer_id() {
                continue;
            }
            for a in &addrs {
                self.remember(peer, a.clone());
            }
            self.emit(NetEvent::PeerDiscovered {
                peer,
                addrs: addrs.clone(),
            });
            self.dial_known(peer);
        }
    }
}

/// An address other machines may reach this node at: not a relayed one, not loopback,
/// not link-local.
fn reaches_others(a: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    let link_local = match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_link_local(),
        _ => super::addr::is_link_local_v6(a),
    };
    path_of(a) != Path::Relayed && !super::addr::is_loopback(a) && !link_local
}
