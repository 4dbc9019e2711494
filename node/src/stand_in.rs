//! A stand-in for a node of the public libp2p network, for tests and benchmarks (not used
//! by the node).
//!
//! It is what an IPFS node with a public address is to agentmesh's public-network option
//! (`[internet] public_network`): a DHT server speaking the public protocol
//! (`/ipfs/kad/1.0.0`, answering lookups and storing provider records) and, unless told
//! otherwise, a circuit relay v2 with libp2p's default limits (the ones public nodes
//! run: a relayed connection lasts at most 2 minutes and carries at most 128 KiB each
//! way). It identifies as a public node would (`/ipfs/0.1.0`), knows nothing of agentmesh,
//! and admits everyone. Tests run several in network namespaces as "the public network".

use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, identity::Keypair, kad, noise, ping, relay, tcp, yamux};

use crate::net::PUBLIC_KAD_PROTOCOL;

/// What a stand-in runs.
#[derive(Clone, Debug)]
pub struct StandIn {
    /// Its identity.
    pub key: Keypair,
    /// The port it listens on (TCP and QUIC, every interface).
    pub port: u16,
    /// The address others reach it at (declared, as a public node's is confirmed).
    pub external: Vec<Multiaddr>,
    /// Other public nodes to enter the DHT through (with `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Serve as a relay.
    pub relay: bool,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    relay: Toggle<relay::Behaviour>,
}

/// Why a stand-in could not start.
#[derive(Debug, thiserror::Error)]
#[error("the public-node stand-in cannot start: {0}")]
pub struct StandInError(String);

fn err(e: impl std::fmt::Display) -> StandInError {
    StandInError(e.to_string())
}

/// Runs a stand-in until the process ends; `started` is told its PeerId once it listens.
pub async fn run(opts: StandIn, started: impl FnOnce(PeerId)) -> Result<(), StandInError> {
    let peer = opts.key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(opts.key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::new().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(err)?
        .with_quic()
        .with_behaviour(|key| {
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(PUBLIC_KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new("/ipfs/0.1.0".into(), key.public())
                        .with_agent_version("agentmesh-public-stand-in".into()),
                ),
                ping: ping::Behaviour::default(),
                kad,
                relay: opts
                    .relay
                    .then(|| relay::Behaviour::new(peer, relay::Config::default()))
                    .into(),
            }
        })
        .map_err(err)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build();
    for a in [
        format!("/ip4/0.0.0.0/tcp/{}", opts.port),
        format!("/ip4/0.0.0.0/udp/{}/quic-v1", opts.port),
    ] {
        swarm.listen_on(a.parse().map_err(err)?).map_err(err)?;
    }
    for a in &opts.external {
        swarm.add_external_address(a.clone());
    }
    for a in &opts.bootstrap {
        if let Some(p) = crate::net::peer_of(a) {
            swarm
                .behaviour_mut()
                .kad
                .add_address(&p, crate::net::strip_p2p(a.clone()));
        }
    }
    if !opts.bootstrap.is_empty() {
        let _ = swarm.behaviour_mut().kad.bootstrap();
    }
    let mut started = Some(started);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if let Some(f) = started.take() {
                    f(peer);
                }
            }
            // As public nodes do: a peer that serves the DHT joins the routing table.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocols.contains(&PUBLIC_KAD_PROTOCOL) =>
            {
                for a in info.listen_addrs {
                    swarm.behaviour_mut().kad.add_address(&peer_id, a);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => tracing::debug!(?e, "relay"),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => tracing::debug!(?e, "kad"),
            _ => {}
        }
    }
}
