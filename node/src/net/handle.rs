//! `NetHandle`: what the rest of the node asks of the network actor, one command each.

use super::*;

/// Handle to the network actor. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    pub(super) tx: mpsc::Sender<Command>,
    /// The actor's event queue, to read its depth (does not keep it open).
    pub(super) events: mpsc::WeakSender<NetEvent>,
    pub(super) connected: watch::Receiver<Arc<BTreeSet<PeerId>>>,
    pub(super) listening: watch::Receiver<Listening>,
    pub(super) local_peer: PeerId,
    /// Topic messages taken per publishing node: by gossip here and by catch-up, one
    /// allowance for both.
    pub(super) topic_rate: SharedTopicRate,
}

/// One publisher allowance (`limits.peer_topic_messages_per_minute`) per node.
pub(crate) type SharedTopicRate = Arc<std::sync::Mutex<RateLimiter<PeerId>>>;

impl NetHandle {
    /// The allowance of topic messages per publishing node, shared by gossip and catch-up.
    pub(crate) fn topic_rate(&self) -> &SharedTopicRate {
        &self.topic_rate
    }

    pub(super) async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Commands and events waiting in the actor's queues.
    pub fn queue_depths(&self) -> (usize, usize) {
        let commands = self.tx.max_capacity() - self.tx.capacity();
        let events = self
            .events
            .upgrade()
            .map(|e| e.max_capacity() - e.capacity())
            .unwrap_or(0);
        (commands, events)
    }

    /// This node's PeerId.
    pub fn local_peer(&self) -> PeerId {
        self.local_peer
    }

    /// Dials an address; resolves with the PeerId once connected.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Dials a known peer at its remembered addresses (no-op if connected or dialing).
    pub async fn dial_peer(&self, peer: PeerId) -> Result<(), NetError> {
        self.tx
            .send(Command::DialPeer { peer })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Remembers addresses of a peer; `discovered` ones are dialed at once if not connected.
    pub async fn add_addrs(&self, peer: PeerId, addrs: Vec<Multiaddr>, discovered: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::AddAddrs {
                peer,
                addrs,
                discovered,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a delivery request and waits for the response.
    pub async fn send_dm(&self, peer: PeerId, request: DmRequest) -> Result<DmResponse, NetError> {
        self.call(|reply| Command::SendDm { peer, request, reply }).await?
    }

    /// Answers an inbound delivery.
    pub async fn respond_dm(&self, request: InboundRequestId, response: DmResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondDm { request, response })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Sends a topic catch-up request and waits for the response.
    pub async fn sync(&self, peer: PeerId, request: SyncRequest) -> Result<SyncResponse, NetError> {
        self.call(|reply| Command::Sync { peer, request, reply }).await?
    }

    /// Answers a topic catch-up request.
    pub async fn respond_sync(&self, request: InboundRequestId, response: SyncResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondSync {
                request,
                response: Box::new(response),
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Seals `data` (an encoded [`TopicEnvelope`]) for the mesh and publishes it on the
    /// topic; returns how many subscribed members it was handed to.
    pub async fn publish(&self, topic: TopicName, data: Vec<u8>) -> Result<u32, NetError> {
        self.call(|reply| Command::Publish { topic, data, reply }).await?
    }

    /// Joins a topic's gossip.
    pub async fn subscribe(&self, topic: TopicName) -> Result<(), NetError> {
        self.tx
            .send(Command::Subscribe(topic))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Leaves a topic's gossip.
    pub async fn unsubscribe(&self, topic: TopicName) -> Result<(), NetError> {
        self.tx
            .send(Command::Unsubscribe(topic))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Replaces the membership: after a removal (`reset == false`), or a join or leave
    /// (`reset`: every connection starts over under the new mesh).
    pub async fn set_membership(&self, mesh: Membership, reset: bool) -> Result<(), NetError> {
        self.tx
            .send(Command::SetMembership {
                mesh: Box::new(mesh),
                reset,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Dials the inviter of a join code and trades the code for membership.
    pub async fn join(&self, invite: Invite) -> Result<(Grant, Voucher), NetError> {
        self.call(|reply| Command::Join {
            invite: Box::new(invite),
            reply,
        })
        .await?
    }

    /// Sends a pairing request to `peer` (dialed at `addrs` if not connected).
    pub async fn pair(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: crate::wire::PairRequest,
    ) -> Result<crate::wire::PairResponse, NetError> {
        self.call(|reply| Command::Pair {
            peer,
            addrs,
            request,
            reply,
        })
        .await?
    }

    /// Answers a pairing request; `keep`: the node holds a pairing of that peer, keep its
    /// connection open that much longer.
    pub async fn respond_pair(
        &self,
        request: InboundRequestId,
        response: crate::wire::PairResponse,
        keep: Option<Duration>,
    ) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondPair {
                request,
                response: Box::new(response),
                keep,
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Answers a join request.
    pub async fn respond_join(&self, request: InboundRequestId, response: JoinResponse) -> Result<(), NetError> {
        self.tx
            .send(Command::RespondJoin {
                request,
                response: Box::new(response),
            })
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// Replaces this node's announcement and gossips it now.
    pub async fn set_announcement(&self, a: Announcement) -> Result<(), NetError> {
        self.tx
            .send(Command::SetAnnouncement(Box::new(a)))
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// A snapshot of listen addresses and connections.
    pub async fn info(&self) -> Result<NetInfo, NetError> {
        self.call(Command::Info).await
    }

    /// One round trip to `peer` over its current connection: time and path.
    pub async fn ping(&self, peer: PeerId) -> Result<(Duration, ConnectionInfo), NetError> {
        self.call(|reply| Command::Ping { peer, reply }).await?
    }

    /// Looks `peer` up in the DHT and dials it; resolves with the addresses found.
    pub async fn find(&self, peer: PeerId) -> Result<Vec<Multiaddr>, NetError> {
        self.call(|reply| Command::Find { peer, reply }).await?
    }

    /// Keeps `peer` connected: redialed with backoff after restarts and network loss.
    pub async fn pin(&self, peer: PeerId) -> Result<(), NetError> {
        self.tx.send(Command::Pin(peer)).await.map_err(|_| NetError::Stopped)
    }

    /// Stops redialing `peer`; true if it was remembered.
    pub async fn unpin(&self, peer: PeerId) -> Result<bool, NetError> {
        self.call(|reply| Command::Unpin { peer, reply }).await
    }

    /// Stops the actor cleanly: answers already handed to it (deliveries committed here)
    /// are sent, then every connection is closed, within `flush`. Returns once it stopped.
    pub async fn stop(&self, flush: Duration) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Stop { flush, reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// The set of connected members, updated on every change.
    pub fn connected(&self) -> watch::Receiver<Arc<BTreeSet<PeerId>>> {
        self.connected.clone()
    }

    /// Listen addresses, and whether every listener has reported.
    pub fn listening(&self) -> watch::Receiver<Listening> {
        self.listening.clone()
    }

    /// Whether `peer` is connected and admitted now.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.borrow().contains(peer)
    }
}
