//! `mesh status`.

use mesh_node::api::{LocalApi, StatusView, UpnpStatusView};

use super::Ctx;
use crate::output;

pub async fn run(ctx: &Ctx) -> anyhow::Result<()> {
    let s = ctx.status().await?;
    if ctx.json {
        return output::json(&s);
    }
    print_node(ctx, &s);
    print_network(&s);
    print_reach(&s);
    print_local(&s);
    Ok(())
}

/// Identity and mesh.
fn print_node(ctx: &Ctx, s: &StatusView) {
    crate::outln!("node     {}  {}  ({})", s.node.name, s.node.peer_id, s.node.version);
    if s.mesh.open {
        crate::outln!(
            "mesh     !!! OPEN MODE: any node started with --open on a network this node reaches is admitted"
        );
        crate::outln!("         !!! without a secret and can message your agents. Use only on a trusted lab network.");
    } else {
        crate::outln!("mesh     {}", super::members::status_line(&s.mesh));
    }
    if s.mesh.relay_for_anyone {
        crate::outln!("         relaying for anyone (--relay-for-anyone); non-members get nothing else");
    }
    if s.outsiders > 0 {
        crate::outln!(
            "         {} node{} nearby not admitted (see {} peers)",
            s.outsiders,
            if s.outsiders == 1 { "" } else { "s" },
            ctx.mesh()
        );
    }
}

/// Home, listeners, discovery, connections.
fn print_network(s: &StatusView) {
    crate::outln!("home     {}", s.home);
    for (i, a) in s.listen.iter().enumerate() {
        crate::outln!(
            "{}{a}/p2p/{}",
            if i == 0 { "listen   " } else { "         " },
            s.node.peer_id
        );
    }
    crate::outln!(
        "lan      {}",
        if s.mdns {
            "discovery on (mDNS, DNS-SD)"
        } else {
            "discovery off (--no-mdns)"
        }
    );
    crate::outln!(
        "peers    {} connected ({} LAN, {} internet, {} relayed), {} known, {} remembered",
        s.connected,
        s.connected_lan,
        s.connected_internet,
        s.connected_relayed,
        s.known,
        s.remembered
    );
}

/// NAT, external addresses, relay slots, hole punching, relaying for others.
fn print_reach(s: &StatusView) {
    let r = &s.reach;
    crate::outln!(
        "nat      {}",
        match r.nat {
            mesh_node::api::NatView::Public => "public: reachable from the internet",
            mesh_node::api::NatView::Private => "private: behind NAT or a firewall (reachable through relays)",
            mesh_node::api::NatView::Unknown => "unknown: not tested yet",
        }
    );
    for (i, a) in r.external.iter().enumerate() {
        crate::outln!("{}{a}", if i == 0 { "external " } else { "         " });
    }
    for res in &r.reservations {
        crate::outln!(
            "relay    slot on {}: {}{}",
            res.relay,
            if res.accepted { "held" } else { "requested" },
            res.addr.as_ref().map(|a| format!(" ({a})")).unwrap_or_default()
        );
    }
    crate::outln!(
        "punch    {} hole punches: {} direct, {} stayed relayed",
        r.punch.attempts,
        r.punch.successes,
        r.punch.failures
    );
    let upnp = match r.upnp.status {
        UpnpStatusView::Off => "off ([internet] upnp = false, or listening on loopback only)".to_string(),
        UpnpStatusView::Searching => "looking for the router".to_string(),
        UpnpStatusView::NoGateway => "no UPnP router on this network".to_string(),
        UpnpStatusView::NotRoutable => "the router has no public address (another NAT behind it)".to_string(),
        UpnpStatusView::Mapped => format!(
            "the router forwards {} to this node",
            r.upnp
                .mapped
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    crate::outln!("upnp     {upnp}");
    if r.public.enabled {
        crate::outln!(
            "public   network on: {} DHT nodes known, rendezvous record {}, {} members found through it",
            r.public.dht_peers,
            match r.public.published_ms {
                Some(ms) => format!("published {} ago", output::ago(ms)),
                None => "not published yet (no external or relayed address)".to_string(),
            },
            r.public.found
        );
    }
    if r.relay_serving {
        crate::outln!(
            "serving  relay for {}: {} relayed connections now",
            if s.mesh.relay_for_anyone { "anyone" } else { "members" },
            r.relay_circuits
        );
    }
}

/// Agents, topics, store, uptime.
fn print_local(s: &StatusView) {
    let agents: Vec<String> = s
        .agents
        .iter()
        .map(|a| {
            let unread = a.unread.unwrap_or(0);
            format!(
                "{} ({}, {}{})",
                a.name,
                a.kind,
                super::agents::reception(a.reception),
                if unread > 0 {
                    format!(", {unread} unread")
                } else {
                    String::new()
                }
            )
        })
        .collect();
    crate::outln!(
        "agents   {}",
        if agents.is_empty() {
            "none".into()
        } else {
            agents.join(", ")
        }
    );
    let topics: Vec<String> = s
        .topics
        .iter()
        .map(|t| format!("#{} ({})", t.topic, t.subscribers.join(", ")))
        .collect();
    crate::outln!(
        "topics   {}",
        if topics.is_empty() {
            "none".into()
        } else {
            topics.join(", ")
        }
    );
    let st = &s.store;
    crate::outln!(
        "store    {} inbox ({} unread), {} outbox ({} pending), {} read receipts to send, {} topic messages, {} peers, {}",
        st.inbox,
        st.unread,
        st.outbox,
        st.pending,
        st.receipts_pending,
        st.topic_messages,
        st.peers,
        output::size(st.file_bytes)
    );
    crate::outln!(
        "uptime   {}",
        humantime::format_duration(std::time::Duration::from_secs(s.uptime_s))
    );
}
