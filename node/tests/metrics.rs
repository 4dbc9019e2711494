//! `GET /metrics`: what a Prometheus scrape of a working node shows.

#![allow(clippy::unwrap_used)]

mod common;

use common::{FAST_CONFIG, TestNode};
use mesh_node::api::{PublishRequest, Request, SendStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// The value of a sample line `name{labels} value` (exact name and labels).
fn value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_shows_messages_peers_and_api_requests() {
    let a = TestNode::start_with("alpha", &format!("metrics = \"127.0.0.1:0\"\n{FAST_CONFIG}")).await;
    let b = TestNode::start("beta").await;
    let addr = a.daemon.as_ref().unwrap().info().metrics.expect("serving metrics");
    b.register("bob").await;
    a.dial(&b).await;
    for i in 0..3 {
        assert_eq!(
            a.send("alice", "bob@beta", &format!("m{i}")).await.status,
            SendStatus::Delivered
        );
    }
    a.call(Request::Publish(PublishRequest {
        agent: "alice".into(),
        topic: "news".into(),
        text: "hello".into(),
        reply_to: None,
        id: None,
    }))
    .await
    .unwrap();

    let resp = get(addr, "/metrics").await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.contains("application/openmetrics-text"),
        "{head}"
    );
    assert_eq!(value(body, "agentmesh_dm_sent_total"), Some(3.0), "{body}");
    assert_eq!(value(body, "agentmesh_dm_delivered_total"), Some(3.0));
    assert_eq!(value(body, "agentmesh_dm_dead_lettered_total"), Some(0.0));
    assert_eq!(value(body, "agentmesh_topic_out_total"), Some(1.0));
    assert_eq!(value(body, "agentmesh_connected_peers{path=\"lan\"}"), Some(1.0));
    assert_eq!(value(body, "agentmesh_outbox_messages{state=\"pending\"}"), Some(0.0));
    assert_eq!(value(body, "agentmesh_admissions_total{kind=\"admitted\"}"), Some(1.0));
    assert_eq!(
        value(body, "agentmesh_api_requests_total{request=\"Send\",outcome=\"ok\"}"),
        Some(3.0)
    );
    assert!(
        body.contains("agentmesh_api_request_seconds_bucket{le=\"")
            || body.contains("agentmesh_api_request_seconds_bucket{request=\"Send\""),
        "latency histogram"
    );
    // Internal state: the test's own API connection is open, every queue is bounded and
    // idle between requests, tasks are counted.
    assert!(value(body, "agentmesh_api_connections").unwrap_or(0.0) >= 1.0, "{body}");
    for q in [
        "net_commands",
        "net_events",
        "store_writes",
        "courier_kicks",
        "sync_kicks",
        "events",
        "inbound_in_flight",
    ] {
        let series = format!("agentmesh_queue_depth{{queue=\"{q}\"}}");
        assert!(value(body, &series).is_some(), "{series} missing");
    }
    assert!(value(body, "agentmesh_tasks_alive").unwrap_or(0.0) > 0.0, "{body}");
    assert_eq!(value(body, "agentmesh_topic_synced_total"), Some(0.0));
    // libp2p's own.
    assert!(body.contains("libp2p_swarm_connections_established_total"), "{body}");
    assert!(body.contains("libp2p_bandwidth_bytes_total"), "{body}");
    assert!(body.ends_with("# EOF\n"), "OpenMetrics terminator");

    // Anything else is refused politely; the node is unaffected.
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    // The receiving side counted what it stored.
    let st = get!(b.call(Request::Status), Status);
    assert_eq!(st.store.unread, 3);
}
