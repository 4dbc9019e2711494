//! The composed libp2p behaviour and how the swarm is built.

use std::num::NonZeroU32;
use std::time::Duration;

use libp2p::gossipsub;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, identity::Keypair, kad, mdns, noise, ping,
    relay, yamux,
};

use super::gate::Gate;
use super::guard::{self, Guard};
use super::{AGENT_VERSION, IDLE_CONNECTION_TIMEOUT, NetError};
use crate::config::Config;
use crate::mesh::Grant;
use crate::mesh::Membership;
use crate::wire::{
    self, AdmitRequest, AdmitResponse, Announcement, DmRequest, DmResponse, InboundBudget, JoinRequest, JoinResponse,
    PostcardCodec, PunchRequest, PunchResponse, SyncRequest, SyncResponse,
};

/// Kademlia protocol name: our own DHT, not the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/kad/1");
/// Round-trip probe used by `mesh ping`.
pub const PING_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/ping/1");
/// The relay (hop) protocol a relaying node offers.
pub const HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

pub(super) type DmBehaviour = request_response::Behaviour<PostcardCodec<DmRequest, DmResponse>>;
pub(super) type HelloBehaviour = request_response::Behaviour<PostcardCodec<Announcement, Announcement>>;
pub(super) type PingBehaviour = request_response::Behaviour<PostcardCodec<u64, u64>>;
pub(super) type AdmitBehaviour = request_response::Behaviour<PostcardCodec<AdmitRequest, AdmitResponse>>;
pub(super) type JoinBehaviour = request_response::Behaviour<PostcardCodec<JoinRequest, JoinResponse>>;
pub(super) type PairBehaviour = request_response::Behaviour<PostcardCodec<wire::PairRequest, wire::PairResponse>>;
pub(super) type SyncBehaviour = request_response::Behaviour<PostcardCodec<SyncRequest, SyncResponse>>;
pub(super) type RekeyBehaviour = request_response::Behaviour<PostcardCodec<Grant, ()>>;
pub(super) type PunchBehaviour = request_response::Behaviour<PostcardCodec<PunchRequest, PunchResponse>>;

/// Incoming connections being set up at once (all transports; TCP handshakes are also
/// bounded, oldest first, by [`guard::MAX_HANDSHAKES`]).
pub const MAX_PENDING_INCOMING: u32 = 256;
/// Established incoming connections.
pub const MAX_INCOMING: u32 = 512;
/// Connections to one peer.
pub const MAX_PER_PEER: u32 = 8;
/// Admission or join requests one connection may have in progress at once; more streams
/// are refused unread.
pub const MAX_OPEN_STREAMS_PER_CONNECTION: usize = 2;
/// Requests of one members-only protocol one connection may have in progress at once.
pub const MAX_MEMBER_STREAMS_PER_CONNECTION: usize = 4;
/// Streams of one connection in protocol negotiation at once.
pub const MAX_NEGOTIATING_STREAMS: usize = 16;
/// Bytes of members' frames (direct messages, catch-up, announcements, key chains) being
/// read at once, across all peers and streams.
pub const MEMBER_INBOUND_BUDGET: usize = 64 * 1024 * 1024;
/// QUIC flow-control window of a connection (what a peer can have in flight to us).
pub const QUIC_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// QUIC flow-control window of a stream.
pub const QUIC_STREAM_WINDOW: u32 = 512 * 1024;

#[allow(missing_docs)]
mod composed {
    use super::*;

    /// The composed libp2p behaviour of a node. Everything behind a [`Gate`] runs only
    /// with peers that proved membership; identify, ping, mDNS, the relay client and the
    /// admission and join protocols run with anyone.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        pub(in crate::net) limits: connection_limits::Behaviour,
        pub(in crate::net) identify: identify::Behaviour,
        pub(in crate::net) ping: ping::Behaviour,
        pub(in crate::net) mdns: Toggle<mdns::tokio::Behaviour>,
        pub(in crate::net) upnp: Toggle<libp2p::upnp::tokio::Behaviour>,
        pub(in crate::net) admit: AdmitBehaviour,
        pub(in crate::net) join: JoinBehaviour,
        pub(in crate::net) pair: PairBehaviour,
        pub(in crate::net) gossipsub: Gate<gossipsub::Behaviour>,
        pub(in crate::net) dm: Gate<DmBehaviour>,
        pub(in crate::net) hello: Gate<HelloBehaviour>,
        pub(in crate::net) sync: Gate<SyncBehaviour>,
        pub(in crate::net) rekey: Gate<RekeyBehaviour>,
        pub(in crate::net) probe: Gate<PingBehaviour>,
        pub(in crate::net) punch: Gate<PunchBehaviour>,
        pub(in crate::net) relay_client: relay::client::Behaviour,
        pub(in crate::net) relay_server: Toggle<Gate<relay::Behaviour>>,
        pub(in crate::net) dcutr: Gate<dcutr::Behaviour>,
        pub(in crate::net) autonat_client: Gate<autonat::v2::client::Behaviour>,
        pub(in crate::net) autonat_server: Gate<autonat::v2::server::Behaviour>,
        pub(in crate::net) kad: Gate<kad::Behaviour<kad::store::MemoryStore>>,
        /// The public DHT, as a client (`[internet] public_network`; see `net::public`).
        pub(in crate::net) public_kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    }

    impl Behaviour {
        /// Opens every gate for `peer` (it proved membership).
        pub(in crate::net) fn admit(&mut self, peer: libp2p::PeerId) {
            self.gossipsub.admit(peer);
            self.dm.admit(peer);
            self.hello.admit(peer);
            self.sync.admit(peer);
            self.rekey.admit(peer);
            self.probe.admit(peer);
            self.punch.admit(peer);
            if let Some(r) = self.relay_server.as_mut() {
                r.admit(peer);
            }
            self.dcutr.admit(peer);
            self.autonat_client.admit(peer);
            self.autonat_server.admit(peer);
            self.kad.admit(peer);
        }
    }
}
pub use composed::{Behaviour, BehaviourEvent};

fn gate<B>(b: B) -> Gate<B> {
    Gate::new(b, false)
}

fn relay_config(cfg: &crate::config::Relay) -> relay::Config {
    let per_minute = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    relay::Config {
        max_reservations: cfg.max_reservations,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(3600),
        max_circuits: cfg.max_circuits,
        max_circuits_per_peer: cfg.max_circuits_per_peer,
        max_circuit_duration: cfg.max_circuit_duration,
        max_circuit_bytes: cfg.max_circuit_bytes,
        ..relay::Config::default()
    }
    // Against abuse: bounded reservation and circuit rates per peer and per IP.
    .reservation_rate_per_peer(per_minute(30), Duration::from_secs(60))
    .reservation_rate_per_ip(per_minute(60), Duration::from_secs(60))
    .circuit_src_per_peer(per_minute(30), Duration::from_secs(60))
    .circuit_src_per_ip(per_minute(60), Duration::from_secs(60))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the swarm and starts listening. Listening on a configured address that fails is
/// an error; a default address that fails (e.g. no IPv6) is logged and skipped. Returns
/// the swarm, the number of listeners started, and the door of its TCP transport.
pub fn build(
    keypair: &Keypair,
    config: &Config,
    mesh: &Membership,
    metrics: &crate::metrics::Metrics,
) -> Result<(Swarm<Behaviour>, usize, Guard), NetError> {
    let guard = Guard::new(config.relay.serve && config.relay.for_anyone);
    let door = guard.clone();
    let mut registry = metrics.registry();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair.clone())
        .with_tokio()
        .with_quic_config(|mut c| {
            c.max_connection_data = QUIC_CONNECTION_WINDOW;
            c.max_stream_data = QUIC_STREAM_WINDOW;
            c.max_concurrent_stream_limit = guard::MAX_STREAMS_PER_CONNECTION as u32;
            c
        })
        .with_other_transport(|key| guard::tcp_transport(key, door).map_err(|e| -> BoxError { Box::new(e) }))
        .map_err(|e| NetError::Start(e.to_string()))?
        .with_dns()
        .map_err(|e| NetError::Start(format!("cannot read the system DNS configuration: {e}")))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| NetError::Start(e.to_string()))?
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|key, relay_client| compose(key, relay_client, config))
        .map_err(|e| NetError::Start(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_STREAMS)
        })
        .build();
    drop(registry);
    let listening = listen(&mut swarm, config)?;
    swarm
        .behaviour_mut()
        .gossipsub
        .inner()
        .subscribe(&wire::directory_topic(mesh))
        .map_err(|e| NetError::Start(format!("gossipsub: {e}")))?;
    Ok((swarm, listening, guard))
}

/// Starts the listeners of the configuration; how many started.
fn listen(swarm: &mut Swarm<Behaviour>, config: &Config) -> Result<usize, NetError> {
    let (addrs, defaults) = config.listen_addrs();
    let mut listening = 0;
    for addr in addrs {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => listening += 1,
            Err(e) if defaults => tracing::info!(%addr, error = %e, "skipping default listen address"),
            Err(e) => {
                return Err(NetError::Start(format!("cannot listen on {addr}: {e}")));
            }
        }
    }
    if listening == 0 {
        return Err(NetError::Start("no listen address could be used".into()));
    }
    Ok(listening)
}

/// The behaviour of a node with `key`, as configured.
fn compose(key: &Keypair, relay_client: relay::client::Behaviour, config: &Config) -> Result<Behaviour, BoxError> {
    let peer = key.public().to_peer_id();
    let budget = InboundBudget::new(MEMBER_INBOUND_BUDGET);
    let max_req = config.max_wire_request_bytes();
    let (ping_every, ping_timeout) = super::ping_timing(config.presence.heartbeat);
    let rr = request_response::Config::default()
        .with_request_timeout(config.delivery.request_timeout)
        .with_max_concurrent_streams(MAX_MEMBER_STREAMS_PER_CONNECTION);
    let open = rr.clone().with_max_concurrent_streams(MAX_OPEN_STREAMS_PER_CONNECTION);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_incoming(Some(MAX_INCOMING))
        .with_max_established_per_peer(Some(MAX_PER_PEER));
    let relay_cfg = &config.relay;
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(limits),
        identify: identify::Behaviour::new(
            identify::Config::new(wire::IDENTIFY_PROTOCOL_VERSION.to_string(), key.public())
                .with_agent_version(AGENT_VERSION.to_string())
                .with_push_listen_addr_updates(true),
        ),
        ping: ping::Behaviour::new(ping::Config::new().with_interval(ping_every).with_timeout(ping_timeout)),
        mdns: lan_discovery(peer, config.libp2p_mdns()).into(),
        upnp: config.upnp().then(libp2p::upnp::tokio::Behaviour::default).into(),
        admit: rr_behaviour(
            PostcardCodec::new(wire::MAX_ADMIT_REQUEST_BYTES, wire::MAX_GRANT_BYTES),
            wire::ADMIT_PROTOCOL,
            open.clone(),
        ),
        join: rr_behaviour(
            PostcardCodec::new(wire::MAX_JOIN_REQUEST_BYTES, wire::MAX_GRANT_BYTES),
            wire::JOIN_PROTOCOL,
            open.clone(),
        ),
        pair: rr_behaviour(
            PostcardCodec::new(wire::MAX_PAIR_REQUEST_BYTES, wire::MAX_PAIR_RESPONSE_BYTES),
            wire::PAIR_PROTOCOL,
            open,
        ),
        gossipsub: gate(gossip(key, config)?),
        dm: gate(rr_behaviour(
            PostcardCodec::new(max_req, wire::MAX_DM_RESPONSE_BYTES).with_budget(budget.clone()),
            wire::DM_PROTOCOL,
            rr.clone(),
        )),
        hello: gate(rr_behaviour(
            PostcardCodec::new(wire::MAX_ANNOUNCEMENT_BYTES, wire::MAX_ANNOUNCEMENT_BYTES).with_budget(budget.clone()),
            wire::HELLO_PROTOCOL,
            rr.clone(),
        )),
        sync: gate(rr_behaviour(
            PostcardCodec::new(wire::MAX_SYNC_REQUEST_BYTES, wire::MAX_SYNC_RESPONSE_BYTES).with_budget(budget.clone()),
            wire::SYNC_PROTOCOL,
            rr.clone(),
        )),
        rekey: gate(rr_behaviour(
            PostcardCodec::new(wire::MAX_GRANT_BYTES, 16).with_budget(budget.clone()),
            wire::REKEY_PROTOCOL,
            rr.clone(),
        )),
        probe: gate(rr_behaviour(PostcardCodec::new(64, 64), PING_PROTOCOL, rr.clone())),
        punch: gate(rr_behaviour(
            PostcardCodec::new(wire::MAX_PUNCH_BYTES, wire::MAX_PUNCH_BYTES),
            wire::PUNCH_PROTOCOL,
            rr.with_request_timeout(Duration::from_secs(10)),
        )),
        relay_client,
        relay_server: relay_cfg
            .serve
            .then(|| {
                Gate::new(
                    relay::Behaviour::new(peer, relay_config(relay_cfg)),
                    relay_cfg.for_anyone,
                )
            })
            .into(),
        dcutr: gate(dcutr::Behaviour::new(peer)),
        autonat_client: gate(autonat::v2::client::Behaviour::default()),
        autonat_server: gate(autonat::v2::server::Behaviour::default()),
        kad: gate(kademlia(peer)),
        public_kad: config.internet.public_network.then(|| public_kademlia(peer)).into(),
    })
}

/// A request-response behaviour speaking `protocol` both ways.
fn rr_behaviour<C>(codec: C, protocol: StreamProtocol, cfg: request_response::Config) -> request_response::Behaviour<C>
where
    C: request_response::Codec<Protocol = StreamProtocol> + Clone + Send + 'static,
{
    request_response::Behaviour::with_codec(codec, [(protocol, ProtocolSupport::Full)], cfg)
}

/// Gossipsub for sealed mesh messages: checked before they are passed on.
fn gossip(key: &Keypair, config: &Config) -> Result<gossipsub::Behaviour, BoxError> {
    // Sealing adds a few dozen bytes; the envelope a few hundred.
    let gossip_max = (config.limits.max_topic_message_bytes + 16 * 1024).max(wire::MAX_ANNOUNCEMENT_BYTES + 1024);
    let gossip_config = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .message_id_fn(wire::gossip_message_id)
        .max_transmit_size(gossip_max)
        .heartbeat_interval(Duration::from_secs(1))
        // A smaller mesh degree than the default 6: members only (no Sybils to
        // outnumber), and every copy costs each node a signature check. Fan-out to
        // 50 nodes on 2 cores went from p99 ~500 ms to ~170 ms (docs/benchmarks.md).
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(6)
        .mesh_outbound_min(2)
        .gossip_lazy(4)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(gossipsub::Behaviour::new(
        gossipsub::MessageAuthenticity::Signed(key.clone()),
        gossip_config,
    )?)
}

/// libp2p mDNS when `on`; off (logged) when the system refuses it.
fn lan_discovery(peer: libp2p::PeerId, on: bool) -> Option<mdns::tokio::Behaviour> {
    if !on {
        return None;
    }
    match mdns::tokio::Behaviour::new(mdns::Config::default(), peer) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "mDNS unavailable; LAN discovery is off");
            None
        }
    }
}

/// The public DHT (Amino), in which this node only asks: it advertises no DHT protocol,
/// so no stranger stores records on it or routes through it.
fn public_kademlia(peer: libp2p::PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut cfg = kad::Config::new(super::PUBLIC_KAD_PROTOCOL);
    cfg.set_query_timeout(Duration::from_secs(30));
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), cfg);
    kad.set_mode(Some(kad::Mode::Client));
    kad
}

/// Our own Kademlia DHT, in which every node answers lookups.
fn kademlia(peer: libp2p::PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut kad = kad::Behaviour::with_config(peer, kad::store::MemoryStore::new(peer), kad::Config::new(KAD_PROTOCOL));
    // Every node answers lookups: the mesh is small and its members' relayed
    // addresses are exactly what a lookup must return.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}
