//! The raw stack, measured here in the same run: two bare rust-libp2p swarms in this process
//! (TCP + Noise + Yamux on 127.0.0.1) with a request-response protocol and nothing else.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, noise, tcp, yamux};
use mesh_node::wire::PostcardCodec;

use crate::stats::Samples;

type Rr = request_response::Behaviour<PostcardCodec<Vec<u8>, Vec<u8>>>;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/rr/1");

fn swarm() -> anyhow::Result<Swarm<Rr>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::new().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                PostcardCodec::new(1 << 20, 1 << 20),
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_max_concurrent_streams(1024),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// A connected pair: the client swarm here, the server answering on its own task.
async fn pair() -> anyhow::Result<(Swarm<Rr>, libp2p::PeerId, tokio::task::JoinHandle<()>)> {
    let mut server = swarm()?;
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let task = tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let _ = server.behaviour_mut().send_response(channel, request);
            }
        }
    });
    let mut client = swarm()?;
    client.dial(addr.with(libp2p::multiaddr::Protocol::P2p(server_id)))?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let SwarmEvent::ConnectionEstablished { .. } = client.select_next_some().await {
                break;
            }
        }
    })
    .await?;
    Ok((client, server_id, task))
}

/// Sequential round trips of `size`-byte requests.
pub async fn round_trips(n: usize, size: usize) -> anyhow::Result<Samples> {
    let (mut client, server, task) = pair().await?;
    let mut samples = Samples::default();
    for i in 0..n + n / 10 {
        let t0 = Instant::now();
        client.behaviour_mut().send_request(&server, vec![7u8; size]);
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Response { .. },
                    ..
                }) => break,
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                    anyhow::bail!("raw request failed: {error}")
                }
                _ => {}
            }
        }
        // The first tenth warms up.
        if i >= n / 10 {
            samples.push(t0.elapsed());
        }
    }
    task.abort();
    Ok(samples)
}

/// Requests per second with `in_flight` outstanding `size`-byte requests, for `dur`.
pub async fn throughput(in_flight: usize, size: usize, dur: Duration) -> anyhow::Result<f64> {
    let (mut client, server, task) = pair().await?;
    for _ in 0..in_flight {
        client.behaviour_mut().send_request(&server, vec![7u8; size]);
    }
    let mut done = 0u64;
    let start = Instant::now();
    while start.elapsed() < dur {
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }) => {
                done += 1;
                client.behaviour_mut().send_request(&server, vec![7u8; size]);
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                anyhow::bail!("raw request failed: {error}")
            }
            _ => {}
        }
    }
    let rate = done as f64 / start.elapsed().as_secs_f64();
    task.abort();
    Ok(rate)
}
