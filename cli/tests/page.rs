//! The human's page in a real browser: Debian's Chromium, headless, driven through
//! ChromeDriver (WebDriver over HTTP on loopback, `mesh_node::webdriver`). Two real daemons; the page of the first
//! is opened with `mesh open --print`, a message is written on it to an agent of the
//! second, that agent reads it and answers, and the page shows both live, with the read
//! receipt. A browser without the login sees nothing; a page of another origin on the same
//! host can neither read nor write through it. (.ci/run installs chromium and
//! chromium-driver; without them the test skips, and fails under CI.)
//!
//! `MESH_SCREENSHOTS=<dir>` saves screenshots of the main views there (the README's).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Home, TEST_USER, start_daemon};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Upper bound for anything the page should show.
const WAIT: Duration = Duration::from_secs(20);

/// The browser, with the test's way of failing: a panic saying what the page showed.
struct Browser(mesh_node::webdriver::Browser);

impl Browser {
    fn start() -> Browser {
        Browser(mesh_node::webdriver::Browser::start(Path::new(CHROMEDRIVER), Path::new(CHROMIUM)).expect("browser"))
    }

    fn go(&self, url: &str) {
        self.0.go(url).expect("navigate");
    }

    fn js(&self, script: &str) -> Value {
        self.0.js(script).expect("script")
    }

    fn js_async(&self, script: &str) -> Value {
        self.0.js_async(script).expect("script")
    }

    fn wait(&self, what: &str, script: &str) -> Value {
        self.0
            .wait(what, script, WAIT)
            .unwrap_or_else(|e| panic!("{e}; the page shows:\n{}", self.text()))
    }

    fn text(&self) -> String {
        self.0.text().unwrap_or_default()
    }

    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("MESH_SCREENSHOTS").map(PathBuf::from) else {
            return;
        };
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), self.0.screenshot().unwrap()).unwrap();
    }
}

fn web_home() -> Home {
    let h = Home::new();
    let cfg = std::fs::read_to_string(h.path().join("config.toml")).unwrap();
    std::fs::write(
        h.path().join("config.toml"),
        format!("{cfg}\n[web]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    h
}

fn login_url(home: &Path) -> String {
    let out = common::run_in(home, &["open", "--print"], None);
    out.ok();
    out.stdout.lines().next().unwrap().trim().to_string()
}

/// An agent on the node of `home` (as an agent client would make it), with a summary.
fn register(home: &Path, name: &str, summary: Option<&str>) {
    use mesh_node::api::{AgentSpec, LocalApi, Request};
    common::runtime().block_on(async {
        let c = common::client(home).await;
        c.call(Request::Register {
            agent: AgentSpec {
                name: name.into(),
                kind: "claude-code".into(),
                ..Default::default()
            },
            attach: false,
        })
        .await
        .unwrap();
        if let Some(s) = summary {
            c.set_summary(name, Some(s.into())).await.unwrap();
        }
    });
}

fn have_browser() -> bool {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    common::skip("Chromium and ChromeDriver are not installed (apt-get install chromium chromium-driver)");
    false
}

#[test]
fn the_page_shows_the_mesh_live_takes_a_message_and_shows_it_answered_and_read() {
    if !have_browser() {
        return;
    }
    let (a, b) = (web_home(), web_home());
    let da = start_daemon(&a.path(), "alpha", 0, &[]);
    let _db = start_daemon(&b.path(), "beta", 0, &[]);
    register(&b.path(), "bob", Some("reviewing the parser"));
    a.run(&["dial", &_db.addr()]).ok();
    let me = format!("{TEST_USER}@alpha");

    let browser = Browser::start();
    browser.go(&login_url(&a.path()));
    browser.wait(
        "the live stream",
        "return document.getElementById('conn').textContent === 'live'",
    );
    assert_eq!(
        browser.js("return location.hash"),
        json!(""),
        "the login token left the address bar"
    );
    assert_eq!(
        browser.js("return document.getElementById('whoami').textContent"),
        json!(me)
    );
    browser.wait(
        "bob on beta, with what he works on",
        "return document.getElementById('agents').innerText.includes('bob@beta') && document.getElementById('agents').innerText.includes('reviewing the parser')",
    );
    browser.wait(
        "the node beta",
        "return document.getElementById('nodes').innerText.includes('beta')",
    );

    // Markup in a text stays text: no element is made of it.
    let text = "Please look at <img src=x onerror=alert(1)> the lexer";
    browser.js(&format!(
        "document.getElementById('to').value = 'bob@beta'; document.getElementById('text').value = {}; document.getElementById('send').click();",
        json!(text)
    ));
    browser.wait(
        "the send's answer",
        "return document.getElementById('compose-status').textContent.includes('delivered')",
    );
    let inbox = b.run(&["--json", "inbox", "--as", "bob"]);
    let inbox = inbox.ok().json();
    let msg = &inbox[0];
    assert_eq!(msg["from"], json!(me), "written as the user's own agent");
    assert_eq!(msg["text"], json!(text));
    let id = msg["id"].as_str().unwrap().to_string();

    // Bob read it (his inbox did): the page turns its state to "read" by itself.
    browser.wait(
        "the read receipt",
        &format!(
            "const li = document.querySelector('li.msg[data-id=\"{id}\"]'); return li && li.querySelector('.state').textContent.startsWith('read')"
        ),
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('#messages img').length"),
        json!(0)
    );
    assert!(browser.text().contains(text), "shown as written");

    // Bob answers in the thread: it appears under the message, live.
    b.run(&["send", &me, "Looking now.", "--as", "bob", "--reply-to", &id])
        .ok();
    browser.wait(
        "the answer in the thread",
        &format!(
            "const li = document.querySelector('li.msg[data-id=\"{id}\"]'); return li && li.querySelector('.replies').innerText.includes('Looking now.')"
        ),
    );
    assert!(browser.text().contains("untrusted text, sender verified"));
    browser.screenshot("page-conversation.png");

    // A Claude Code session on alpha (a real `mesh mcp`) asks to run a command: the page
    // shows the request as text, and its Allow goes back to that session.
    let project = tempfile::tempdir().unwrap();
    let mut session = common::mcp::Mcp::start(&a.path(), project.path(), "claude-code", &[]);
    session.ok("whoami", json!({}));
    session.notify(
        "notifications/claude/channel/permission_request",
        json!({
            "request_id": "hoztn",
            "tool_name": "Bash",
            "description": "Run the tests <script>alert(1)</script>",
            "input_preview": "{\"command\":\"cargo test\"}",
        }),
    );
    browser.wait(
        "the permission request",
        "return !document.getElementById('permissions').hidden && document.getElementById('permission-list').innerText.includes('cargo test')",
    );
    assert_eq!(
        browser.js("return document.querySelectorAll('#permissions script').length"),
        json!(0)
    );
    assert!(browser.text().contains("Run the tests <script>alert(1)</script>"));
    browser.screenshot("page-permission.png");
    browser.js("document.querySelector('li.permission[data-id=\"hoztn\"] button.allow').click()");
    let answer = session.wait_notification("notifications/claude/channel/permission", WAIT);
    assert_eq!(answer["params"], json!({ "request_id": "hoztn", "behavior": "allow" }));
    browser.wait(
        "the request gone",
        "return document.getElementById('permissions').hidden",
    );
    let late = a.run(&["deny", "hoztn"]);
    assert_ne!(late.code, 0, "the page's answer came first");
    assert!(
        late.stderr.contains(&format!("already allowed by {TEST_USER} (page)")),
        "{}",
        late.stderr
    );

    // Bob's conversation on its own.
    browser.js("document.querySelector('.agent[data-agent=\"bob@beta\"]').click()");
    browser.wait(
        "bob's conversation",
        "return document.getElementById('conv-title').textContent === 'bob@beta' && document.getElementById('messages').innerText.includes('Looking now.')",
    );
    // An invite code to hand out.
    browser.js("document.getElementById('invite').click()");
    browser.wait(
        "a join code",
        "return document.getElementById('invite-code').textContent.startsWith('agentmesh:')",
    );
    browser.screenshot("page-invite.png");
    drop(da);
}

#[test]
fn a_browser_without_the_login_or_a_page_of_another_origin_gets_nothing_through_it() {
    if !have_browser() {
        return;
    }
    let (a, b) = (web_home(), web_home());
    let da = start_daemon(&a.path(), "alpha", 0, &[]);
    let db = start_daemon(&b.path(), "beta", 0, &[]);
    register(&b.path(), "bob", None);
    a.run(&["dial", &db.addr()]).ok();
    let a_login = login_url(&a.path());
    let a_page = a_login.split('#').next().unwrap().to_string();
    let b_page = login_url(&b.path()).split('#').next().unwrap().to_string();

    let browser = Browser::start();
    // No login: the page says what to do, and shows nothing of the mesh.
    browser.go(&a_page);
    browser.wait(
        "the login notice",
        "return !document.getElementById('login-needed').hidden",
    );
    assert!(browser.text().contains("mesh open"));
    assert!(!browser.text().contains("bob@beta"));
    browser.screenshot("page-login.png");

    // Logged in to alpha's page, the browser holds its cookie...
    browser.go(&a_login);
    browser.wait(
        "the live stream",
        "return document.getElementById('conn').textContent === 'live'",
    );
    // ...and a page of another origin on this host (beta's, another port: the same *site*
    // to the browser, so the cookie goes along) tries to read and to write through it.
    browser.go(&b_page);
    let origin_a = a_page.trim_end_matches('/');
    let tried = browser.js_async(&format!(
        r#"
        const out = {{}};
        try {{ const r = await fetch('{origin_a}/api/state', {{ credentials: 'include' }}); out.read = 'read ' + r.status; }}
        catch (e) {{ out.read = 'blocked'; }}
        try {{
          await fetch('{origin_a}/api/send', {{ method: 'POST', mode: 'no-cors', credentials: 'include',
            headers: {{ 'content-type': 'text/plain' }}, body: JSON.stringify({{ to: 'bob@beta', text: 'forged from another origin' }}) }});
          out.write = 'sent';
        }} catch (e) {{ out.write = 'blocked'; }}
        return out;
        "#
    ));
    assert_eq!(tried["read"], json!("blocked"), "{tried}");
    // The write left the browser (no-cors: the fetch ended when alpha's page server had
    // answered it) and was refused there: nothing in alpha's outbox, nothing at bob's.
    let inbox = b.run(&["--json", "inbox", "--all", "--as", "bob"]).ok().json();
    assert!(!inbox.to_string().contains("forged from another origin"), "{inbox}");
    let outbox = a.run(&["--json", "outbox", "--all"]).ok().json();
    assert!(!outbox.to_string().contains("forged"), "{outbox}");
    drop((da, db));
}

#[test]
fn a_node_asks_to_join_from_its_page_and_is_admitted_on_the_members_page_by_its_code() {
    if !have_browser() {
        return;
    }
    let a = web_home();
    let da = start_daemon(&a.path(), "alpha", 0, &[]);
    let x = Home::alone();
    let cfg = std::fs::read_to_string(x.path().join("config.toml")).unwrap();
    std::fs::write(
        x.path().join("config.toml"),
        format!("{cfg}\n[web]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let _dx = start_daemon(&x.path(), "xeno", 0, &[]);
    // Xeno has met alpha (and was refused): alpha is listed nearby, not a member.
    assert_ne!(x.run(&["dial", &da.addr()]).code, 0);

    // On xeno's page: "Ask to join its mesh" next to alpha shows the comparison code.
    let browser = Browser::start();
    browser.go(&login_url(&x.path()));
    let alpha = da.info.peer_id.to_string();
    browser.wait(
        "alpha listed nearby",
        &format!("return !!document.querySelector('#nodes li.peer[data-peer=\"{alpha}\"] button.ask-join')"),
    );
    browser.js(&format!(
        "document.querySelector('#nodes li.peer[data-peer=\"{alpha}\"] button.ask-join').click()"
    ));
    let shown = browser.wait(
        "the comparison code on xeno's page",
        "const t = document.getElementById('compose-status').textContent; const m = t.match(/comparison code (\\d{3} \\d{3})/); return m && m[1]",
    );
    let shown = shown.as_str().unwrap().to_string();
    // Its user compares, and says they match (it joins only once both sides agreed).
    browser.js("document.querySelector('.pair-confirm button.allow').click()");
    browser.wait(
        "the confirmation taken",
        "return [...document.querySelectorAll('#nodes .meta')].some(m => m.textContent.startsWith('waiting for'))",
    );

    // On alpha's page: xeno asks, with the same code; Admit.
    browser.go(&login_url(&a.path()));
    let code = browser.wait(
        "the pairing request",
        "const li = document.querySelector('#pairing-list li.pairing'); return !document.getElementById('pairings').hidden && li && li.innerText.includes('xeno') && li.dataset.code",
    );
    assert_eq!(code.as_str().unwrap(), shown, "both pages show the same code");
    browser.screenshot("page-pairing.png");
    browser.js(&format!(
        "document.querySelector('li.pairing[data-code=\"{shown}\"] button.allow').click()"
    ));
    browser.wait(
        "the request gone and xeno a member",
        "return document.getElementById('pairings').hidden && [...document.querySelectorAll('#nodes li.peer')].some(li => li.innerText.includes('xeno') && !li.innerText.includes('not a member'))",
    );
    let members = x.run(&["members"]).ok().stdout.clone();
    assert!(members.contains("alpha"), "xeno is in alpha's mesh: {members}");
}
