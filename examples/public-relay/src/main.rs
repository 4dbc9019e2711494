#![doc = include_str!("../README.md")]

use anyhow::Context;
use mesh_node::config::Overrides;
use mesh_node::daemon::{self, DaemonOptions};
use mesh_node::home::Home;
use mesh_node::ids::NodeName;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .map(|p| p.parse())
        .transpose()
        .context("PORT must be a number")?
        .unwrap_or(4001);
    let public_ip = args.next();
    let home = Home::resolve(Some("relay-home".into()))?;
    let mut external = Vec::new();
    if let Some(ip) = &public_ip {
        external.push(format!("/ip4/{ip}/tcp/{port}").parse()?);
        external.push(format!("/ip4/{ip}/udp/{port}/quic-v1").parse()?);
    }
    let opts = DaemonOptions {
        home,
        overrides: Overrides {
            name: Some(NodeName::new("relay")?),
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{port}").parse()?,
                format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse()?,
            ],
            no_mdns: true,
            relay: true,
            external,
            // A public relay: it carries relayed connections for any node. Nobody gets
            // anything else from it (no directory, messages or topics) without joining
            // its mesh.
            relay_for_anyone: true,
            ..Overrides::default()
        },
        user: None,
    };
    daemon::run_foreground(opts, |info| {
        println!("relay {} is up", info.peer_id);
        match &public_ip {
            Some(ip) => println!(
                "put this in relay.nodes of config.toml: /ip4/{ip}/tcp/{port}/p2p/{}",
                info.peer_id
            ),
            None => {
                for a in &info.listen {
                    println!("listening on {a}/p2p/{}", info.peer_id);
                }
                println!("(pass the public IP as the second argument to announce it)");
            }
        }
    })
    .await?;
    Ok(())
}
