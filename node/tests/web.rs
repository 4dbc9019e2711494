//! The human's page over real HTTP (a plain client on 127.0.0.1): who gets in, what a
//! forged or cross-origin request gets, and a message written on the page, answered, and
//! read, seen live on its event stream. (The page itself in a browser: `cli/tests/page.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use common::{FAST_CONFIG, TestNode, WAIT, eventually};
use mesh_node::api::{PageView, Reception, Request, SendRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn web_config() -> String {
    format!("{FAST_CONFIG}\n[web]\nlisten = \"127.0.0.1:0\"\n")
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// The page server's host and port, from its address.
fn host_of(page: &PageView) -> String {
    page.url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

fn token_of(page: &PageView) -> String {
    page.login_url.split_once("#login=").unwrap().1.to_string()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), answer read whole.
async fn http(host: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let mut s = TcpStream::connect(host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {host}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { unchunk(body) } else { body.to_string() };
    Answer { status, headers, body }
}

fn unchunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A logged-in page: its host, cookie header and CSRF token.
struct Session {
    host: String,
    cookie: String,
    csrf: String,
}

impl Session {
    fn origin(&self) -> String {
        format!("http://{}", self.host)
    }

    async fn get(&self, path: &str) -> Answer {
        http(&self.host, "GET", path, &[("Cookie", &self.cookie)], None).await
    }

    async fn post(&self, path: &str, body: &str) -> Answer {
        let origin = self.origin();
        http(
            &self.host,
            "POST",
            path,
            &[
                ("Cookie", &self.cookie),
                ("Origin", &origin),
                ("X-Mesh-Csrf", &self.csrf),
            ],
            Some(body),
        )
        .await
    }
}

async fn open_page(node: &TestNode) -> PageView {
    get!(node.call(Request::OpenPage), Page)
}

async fn log_in(node: &TestNode) -> Session {
    let page = open_page(node).await;
    let host = host_of(&page);
    let origin = format!("http://{host}");
    let body = format!("{{\"token\":\"{}\"}}", token_of(&page));
    let a = http(&host, "POST", "/api/login", &[("Origin", &origin)], Some(&body)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let set = a.header("set-cookie").unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    Session {
        host,
        cookie,
        csrf: a.json()["csrf"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_serves_only_its_own_logged_in_user_and_takes_changes_only_from_itself() {
    let a = TestNode::start_with("alpha", &web_config()).await;
    let b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    let page = open_page(&a).await;
    let host = host_of(&page);
    let origin = format!("http://{host}");

    // The page itself carries no data, but only under this server's own name, and with
    // a policy that runs no script but its own.
    let shell = http(&host, "GET", "/", &[], None).await;
    assert_eq!(shell.status, 200);
    assert!(
        shell
            .header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    assert_eq!(shell.header("x-frame-options"), Some("DENY"));
    let port = host.rsplit(':').next().unwrap();
    let rebound = http(
        &host,
        "GET",
        "/",
        &[("Host", &format!("attacker.example:{port}"))],
        None,
    )
    .await;
    assert_eq!(rebound.status, 421, "a DNS-rebound name is refused");

    // No cookie: nothing.
    for path in ["/api/state", "/api/history", "/api/events"] {
        let a = http(&host, "GET", path, &[], None).await;
        assert_eq!(a.status, 401, "{path}");
        assert!(a.header("access-control-allow-origin").is_none());
    }
    // The login link works from this page only, once.
    let token = token_of(&page);
    let body = format!("{{\"token\":\"{token}\"}}");
    let evil = http(
        &host,
        "POST",
        "/api/login",
        &[("Origin", "http://evil.example")],
        Some(&body),
    )
    .await;
    assert_eq!(evil.status, 403);
    let ok = http(&host, "POST", "/api/login", &[("Origin", &origin)], Some(&body)).await;
    assert_eq!(ok.status, 200);
    let set = ok.header("set-cookie").unwrap();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let again = http(&host, "POST", "/api/login", &[("Origin", &origin)], Some(&body)).await;
    assert_eq!(again.status, 401, "used once");
    let s = Session {
        host: host.clone(),
        cookie: set.split(';').next().unwrap().to_string(),
        csrf: ok.json()["csrf"].as_str().unwrap().to_string(),
    };
    let state = s.get("/api/state").await;
    assert_eq!(state.status, 200);
    let state = state.json();
    assert_eq!(state["me"], "user");
    assert!(
        state["agents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == "bob@beta"),
        "{state}"
    );

    // A change with the cookie but without the CSRF header, or from another origin: refused,
    // and nothing was sent.
    let send = r#"{"to":"bob@beta","text":"forged"}"#;
    let no_csrf = http(
        &host,
        "POST",
        "/api/send",
        &[("Cookie", &s.cookie), ("Origin", &origin)],
        Some(send),
    )
    .await;
    assert_eq!(no_csrf.status, 403);
    let cross = http(
        &host,
        "POST",
        "/api/send",
        &[
            ("Cookie", &s.cookie),
            ("Origin", "http://evil.example"),
            ("X-Mesh-Csrf", &s.csrf),
        ],
        Some(send),
    )
    .await;
    assert_eq!(cross.status, 403);
    assert!(b.whole_inbox("bob").await.is_empty());
    // Bad input: a clear error.
    let nobody = s.post("/api/send", r#"{"to":"nobody@beta","text":"hi"}"#).await;
    assert!(nobody.status >= 400, "{}", nobody.body);
    assert!(!nobody.json()["error"].as_str().unwrap().is_empty());
    let empty = s.post("/api/send", r#"{"to":"bob@beta","text":"  "}"#).await;
    assert_eq!(empty.status, 400, "{}", empty.body);
}

/// Reads server-sent events from `stream` until one contains all of `needles`.
async fn wait_sse(stream: &mut TcpStream, seen: &mut String, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(line) = seen
            .lines()
            .find(|l| l.starts_with("data:") && needles.iter().all(|n| l.contains(n)))
        {
            let line = line.to_string();
            *seen = seen.replacen(&line, "", 1);
            return line;
        }
        let mut buf = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no event with {needles:?} in: {seen}"))
            .unwrap();
        assert!(n > 0, "event stream closed");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// How `node` sees the user agent of alpha receive.
async fn user_on(node: &TestNode) -> Option<Reception> {
    get!(node.call(Request::Agents), Agents)
        .into_iter()
        .find(|x| x.name == "user" && x.node_name == "alpha")
        .map(|x| x.reception)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_written_on_the_page_is_read_and_answered_live() {
    let mut a = TestNode::start_with("alpha", &web_config()).await;
    let b = TestNode::start("beta").await;
    b.register("bob").await;
    a.dial(&b).await;
    let s = log_in(&a).await;
    assert_eq!(user_on(&a).await, Some(Reception::Offline), "no page open yet");

    let mut events = TcpStream::connect(&s.host).await.unwrap();
    let req = format!(
        "GET /api/events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\nAccept: text/event-stream\r\n\r\n",
        s.host, s.cookie
    );
    events.write_all(req.as_bytes()).await.unwrap();
    let mut seen = String::new();
    // The stream is open once its head came.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains("\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, events.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.to_ascii_lowercase().contains("content-type: text/event-stream"));
    // With the page open, the user is online, and new mail reaches it at once.
    for node in [&a, &b] {
        eventually("the user online while its page is open", || async {
            (user_on(node).await == Some(Reception::Push)).then_some(())
        })
        .await;
    }

    // Markup in a text is just text: it arrives as written.
    let text = "<b>hello</b> from the page";
    let sent = s
        .post(
            "/api/send",
            &serde_json::json!({ "to": "bob@beta", "text": text }).to_string(),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.body);
    let sent = sent.json();
    assert_eq!(sent["status"], "Delivered", "{sent}");
    let id = sent["id"].as_str().unwrap().to_string();

    let inbox = b.inbox("bob").await;
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].from, "user@alpha", "written as the user's own agent");
    assert_eq!(inbox[0].text, text);
    wait_sse(&mut events, &mut seen, &["\"Read\"", &id]).await;

    // Bob answers: the answer comes live, in the thread.
    get!(
        b.call(Request::Send(SendRequest {
            from: "bob".into(),
            to: "user@alpha".into(),
            text: "got it".into(),
            reply_to: Some(inbox[0].id),
            id: None,
        })),
        Sent
    );
    let line = wait_sse(&mut events, &mut seen, &["\"Message\"", "got it"]).await;
    assert!(line.contains(&id), "the answer names what it answers: {line}");

    let history = s.get("/api/history?target=bob%40beta").await;
    assert_eq!(history.status, 200, "{}", history.body);
    let rows = history.json()["entries"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["id"], id.as_str());
    assert_eq!(rows[0]["state"], "read");
    assert!(rows[0]["read_at_ms"].as_u64().is_some());
    assert_eq!(rows[1]["reply_to"], id.as_str());
    assert_eq!(rows[1]["text"], "got it");

    // The node stops: its event stream ends (a page left open does not hold the stop).
    a.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout_at(deadline, events.read(&mut buf))
            .await
            .expect("the event stream still open after the node stopped")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
}
