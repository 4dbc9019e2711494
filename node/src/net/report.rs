//! What the actor tells the rest of the node: its events, the snapshot of the network state
//! for `mesh status` and `mesh peers`, and its listen addresses as they come up.

use std::time::Duration;

use libp2p::request_response::InboundRequestId;
use libp2p::{Multiaddr, PeerId};

use super::{ConnectionInfo, OutsiderInfo, ReachInfo};
use crate::ids::TopicName;
use crate::mesh::{Invite, Membership};
use crate::wire::{self, Announcement, SyncRequest, TopicEnvelope};

/// How a peer was found on the LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Discovery {
    /// libp2p mDNS.
    Mdns,
    /// DNS-SD (`_agentmesh._udp.local`).
    DnsSd,
}

/// What the actor reports.
#[derive(Debug)]
pub enum NetEvent {
    /// A listen address became active.
    Listening(Multiaddr),
    /// A peer proved membership (on its first connection of this visit).
    PeerConnected {
        /// The peer.
        peer: PeerId,
        /// Its address on this connection.
        addr: Multiaddr,
        /// We dialed it.
        dialed: bool,
    },
    /// Last connection to an admitted peer closed.
    PeerDisconnected {
        /// The peer.
        peer: PeerId,
    },
    /// A member was identified, with the addresses it listens on.
    PeerIdentified {
        /// The peer.
        peer: PeerId,
        /// Its listen addresses.
        listen_addrs: Vec<Multiaddr>,
    },
    /// A peer was found on the LAN.
    PeerDiscovered {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// A peer's announcement (from hello or the sealed directory topic; the node is
    /// verified and admitted).
    Announcement {
        /// The announcing node.
        peer: PeerId,
        /// What it said.
        announcement: Announcement,
    },
    /// A peer delivers direct messages or read receipts; answer with
    /// [`NetHandle::respond_dm`](super::NetHandle::respond_dm).
    InboundDms {
        /// The sending node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// The messages (in send order) or receipts.
        batch: wire::DmRequest,
    },
    /// A peer asks for topic catch-up; answer with [`NetHandle::respond_sync`](super::NetHandle::respond_sync).
    SyncRequest {
        /// The asking node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// What it asks.
        body: SyncRequest,
    },
    /// A topic message from another node (signature verified, well formed).
    Topic {
        /// The publishing node.
        source: PeerId,
        /// The message.
        envelope: TopicEnvelope,
    },
    /// A peer subscribed to a user topic.
    TopicSubscribed {
        /// The peer.
        peer: PeerId,
        /// The topic.
        topic: TopicName,
    },
    /// Reachability changed: NAT status, relay slots, a hole punch.
    ReachChanged,
    /// The mesh key chain changed (renewed by a member, or a removal): persist it.
    MembershipChanged(Box<Membership>),
    /// A node asks to join with a join code; answer with [`NetHandle::respond_join`](super::NetHandle::respond_join).
    JoinRequest {
        /// The asking node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// The code it holds (signature not yet checked).
        invite: Box<Invite>,
        /// The name it gives.
        node_name: String,
    },
    /// A node not in the mesh sends a pairing request; answer with
    /// [`NetHandle::respond_pair`](super::NetHandle::respond_pair).
    PairRequest {
        /// The asking node (authenticated).
        peer: PeerId,
        /// Reply handle.
        request: InboundRequestId,
        /// What it says.
        body: crate::wire::PairRequest,
    },
}

/// A connected peer, for `mesh peers` / `mesh status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ConnectedPeer {
    /// The peer.
    pub peer: PeerId,
    /// Remote addresses of open connections.
    pub addrs: Vec<Multiaddr>,
    /// The open connections.
    pub connections: Vec<ConnectionInfo>,
    /// Last ping round trip.
    pub rtt: Option<Duration>,
    /// Its software version (from identify).
    pub agent_version: Option<String>,
    /// Hole punching for it, while it is reached through relays only.
    pub punch: Option<super::PunchState>,
}

/// A snapshot of the network state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NetInfo {
    /// Active listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Connected members.
    pub peers: Vec<ConnectedPeer>,
    /// Nodes seen that are not members.
    pub outsiders: Vec<OutsiderInfo>,
    /// Addresses known per peer (connected or not).
    pub known_addrs: Vec<(PeerId, Vec<Multiaddr>)>,
    /// Reachability.
    pub reach: ReachInfo,
    /// Peers this node keeps redialing.
    pub pinned: Vec<PeerId>,
}

/// Listen addresses as they come up.
#[derive(Clone, Debug, Default)]
pub struct Listening {
    /// Active addresses.
    pub addrs: Vec<Multiaddr>,
    /// Every listener started at build time has reported an address (or failed).
    pub complete: bool,
}
