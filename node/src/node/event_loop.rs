//! The core loop: start-up, and the network events it turns into work.

use super::*;
use crate::wire::DmRequest;

impl Node {
    /// Startup work: the user's own agent, remembered peers, topic subscriptions, first
    /// announcement.
    pub(crate) async fn start(&self, user: AgentName) -> Result<(), ServiceError> {
        let now = now_ms();
        let _ = self.0.user.set(user.clone());
        self.0
            .store
            .write("user agent", move |t| ops::ensure_agent(t, &user, "human", now))
            .await?;
        let mut records = self.0.store.read(ops::peers).await?;
        records.sort_by_key(|r| std::cmp::Reverse(r.last_seen_ms));
        for r in records.iter().take(REDIAL_AT_START) {
            if !r.addrs.is_empty() {
                let _ = self.0.net.add_addrs(r.peer, r.addrs.clone(), true).await;
            }
        }
        self.dir().load(records);
        for (peer, addrs) in self.0.store.read(ops::dialed).await? {
            let _ = self.0.net.add_addrs(peer, addrs, false).await;
            let _ = self.0.net.pin(peer).await;
        }
        let subs = self.0.store.read(ops::subscriptions).await?;
        for (topic, _) in subs {
            self.0.net.subscribe(topic.clone()).await.map_err(unavailable)?;
        }
        self.announce_now().await;
        Ok(())
    }

    /// Waits until incoming deliveries and topic messages being stored are done (and their
    /// answers handed to the network); false if `deadline` came first.
    pub(crate) async fn drain_inbound(&self, deadline: tokio::time::Instant) -> bool {
        let all = MAX_INBOUND_IN_FLIGHT as u32;
        matches!(
            tokio::time::timeout_at(deadline, self.0.inbound.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    /// Reacts to the network until its events end (the network actor stopped) or `cancel`.
    pub(crate) async fn run_core(self, mut net_events: mpsc::Receiver<NetEvent>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.0.announce.notified() => self.announce_now().await,
                ev = net_events.recv() => match ev {
                    Some(ev) => self.on_net_event(ev).await,
                    None => break,
                },
            }
        }
    }

    pub(super) async fn persist_peer(&self, peer: PeerId) {
        let rec = self.dir().record(&peer);
        if let Some(rec) = rec {
            let store = self.0.store.clone();
            tokio::spawn(async move {
                if let Err(e) = store.write("peer", move |t| ops::put_peer(t, &rec)).await {
                    tracing::warn!(error = %e, "cannot persist peer");
                }
            });
        }
    }

    pub(super) async fn on_net_event(&self, ev: NetEvent) {
        match ev {
            NetEvent::Listening(_) => {}
            NetEvent::PeerConnected { peer, addr, dialed } => self.peer_connected(peer, addr, dialed),
            NetEvent::PeerDisconnected { peer } => {
                let name = {
                    let mut dir = self.dir();
                    dir.set_connected(peer, false, now_ms());
                    dir.name_of(&peer)
                };
                self.persist_peer(peer).await;
                self.emit(Event::PeerDown {
                    peer,
                    name: name.map(|n| n.to_string()),
                });
            }
            NetEvent::PeerIdentified { peer, listen_addrs } => {
                let changed = self.dir().add_addrs(peer, &listen_addrs);
                if changed {
                    self.persist_peer(peer).await;
                }
            }
            NetEvent::PeerDiscovered { peer, addrs } => {
                // Only for nodes known as members; others are outsiders until admitted.
                let mut dir = self.dir();
                if dir.get(&peer).is_some() {
                    dir.add_addrs(peer, &addrs);
                }
            }
            NetEvent::Announcement { peer, announcement } => self.announced(peer, announcement).await,
            NetEvent::InboundDms { peer, request, batch } => match batch {
                DmRequest::Deliver(messages) => self.on_inbound_dms(peer, request, messages).await,
                DmRequest::Read(receipts) => self.on_receipts(peer, request, receipts).await,
                DmRequest::Permission(relay) => self.on_permission_relay(peer, request, relay),
            },
            NetEvent::Topic { source, envelope } => self.on_topic(source, envelope),
            // Answered by the catch-up task; when it is swamped, the asker is told to come back.
            NetEvent::SyncRequest { peer, request, body } => {
                if let Err(mpsc::error::TrySendError::Full(_)) = self.0.sync_requests.try_send((peer, request, body)) {
                    let net = self.0.net.clone();
                    tokio::spawn(async move {
                        let busy = wire::SyncResponse::Unavailable("busy; ask again later".into());
                        let _ = net.respond_sync(request, busy).await;
                    });
                }
            }
            NetEvent::TopicSubscribed { peer: _, topic } => self.flush_topic(topic),
            NetEvent::ReachChanged => self.emit(Event::NetworkChanged),
            NetEvent::MembershipChanged(m) => {
                if let Err(e) = m.save(&self.0.home.mesh_path()) {
                    tracing::error!(error = %e, "cannot save the renewed mesh key; it will be renewed again after a restart");
                }
                *self.mesh() = *m;
                self.emit(Event::NetworkChanged);
            }
            NetEvent::JoinRequest {
                peer,
                request,
                invite,
                node_name,
            } => self.on_join_request(peer, request, *invite, node_name),
            NetEvent::PairRequest { peer, request, body } => self.on_pair_request(peer, request, body),
        }
    }

    /// A member was admitted: the directory, the courier and watchers hear of it, and it is
    /// recorded (for `mesh members` and key rotation).
    fn peer_connected(&self, peer: PeerId, addr: libp2p::Multiaddr, dialed: bool) {
        let name = {
            let mut dir = self.dir();
            dir.set_connected(peer, true, now_ms());
            if dialed {
                dir.add_addrs(peer, &[addr]);
            }
            dir.name_of(&peer)
        };
        self.kick(peer);
        self.watch_permissions(peer);
        self.emit(Event::PeerUp {
            peer,
            name: name.as_ref().map(|n| n.to_string()),
        });
        let now = now_ms();
        let name = name.map(|n| n.to_string());
        let store = self.0.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store
                .write("member", move |t| ops::put_member(t, &peer, name, now))
                .await
            {
                tracing::warn!(error = %e, "cannot record a member");
            }
        });
    }

    /// A member's announcement: the directory takes it; a change is persisted and told.
    async fn announced(&self, peer: PeerId, announcement: Announcement) {
        let name = announcement.node_name.to_string();
        let update = self.dir().update(peer, announcement, Instant::now(), now_ms());
        if update != Update::Changed {
            return;
        }
        self.persist_peer(peer).await;
        // Sealed for the mesh (or said by an admitted peer): a member.
        let (now, n) = (now_ms(), Some(name.clone()));
        if let Err(e) = self
            .0
            .store
            .write("member", move |t| ops::put_member(t, &peer, n, now))
            .await
        {
            tracing::warn!(error = %e, "cannot record a member");
        }
        self.emit(Event::NodeUpdated { peer, name });
    }
}
