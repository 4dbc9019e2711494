//! A minimal WebDriver client for a headless Chromium under ChromeDriver, over HTTP on
//! loopback: what the page's browser tests (`cli/tests/page.rs`) and its benchmark
//! (figure 12) drive it with. Not used by the node.
//!
//! ChromeDriver runs in a process group of its own with the browsers it starts, and the
//! whole group is killed when the [`Browser`] is dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long ChromeDriver may take to come up, and one command to be answered.
pub const DRIVER_WAIT: Duration = Duration::from_secs(60);

/// Driving the browser failed.
#[derive(Debug, thiserror::Error)]
pub enum WebDriverError {
    /// ChromeDriver could not be started or reached.
    #[error("chromedriver: {0}")]
    Io(#[from] std::io::Error),
    /// It answered something unreadable.
    #[error("chromedriver answered what cannot be read: {0}")]
    Protocol(String),
    /// The command failed in the browser (a script error, no such element, ...).
    #[error("webdriver {command}: {value}")]
    Command {
        /// The command.
        command: String,
        /// WebDriver's error value.
        value: Value,
    },
    /// [`Browser::wait`] ran out of time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

/// One HTTP/1.1 exchange with ChromeDriver on `port` (JSON both ways).
fn call(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WebDriverError> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(DRIVER_WAIT))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    // The head, then exactly its Content-Length (the driver keeps connections open).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 || head.len() > 64 * 1024 {
            return Err(WebDriverError::Protocol("the answer's head ended early".into()));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        })
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| WebDriverError::Protocol(format!("no content length in {head:?}")))?;
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| WebDriverError::Protocol(e.to_string()))
}

fn free_port() -> std::io::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// A headless Chromium under ChromeDriver, closed (the whole process group) on drop.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// The browser's profile directory (removed on drop).
    profile: std::path::PathBuf,
}

impl Browser {
    /// Starts ChromeDriver (`chromedriver`) and a headless Chromium (`chromium`) with a
    /// fresh profile, 1280×800.
    pub fn start(chromedriver: &Path, chromium: &Path) -> Result<Browser, WebDriverError> {
        use std::os::unix::process::CommandExt;
        let port = free_port()?;
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let profile = std::env::temp_dir().join(format!("mesh-chromium-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&profile)?;
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            profile,
        };
        let deadline = Instant::now() + DRIVER_WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(WebDriverError::Timeout("chromedriver to listen".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,800",
                         "--no-first-run", "--disable-background-networking",
                         format!("--user-data-dir={}", browser.profile.display())]
            }
        }}});
        let r = call(port, "POST", "/session", Some(&caps))?;
        browser.session = r["value"]["sessionId"]
            .as_str()
            .ok_or_else(|| WebDriverError::Protocol(format!("no session in {r}")))?
            .to_string();
        Ok(browser)
    }

    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> Result<Value, WebDriverError> {
        let r = call(self.port, method, &format!("/session/{}/{what}", self.session), body)?;
        if r["value"].get("error").is_some() {
            return Err(WebDriverError::Command {
                command: what.to_string(),
                value: r["value"].clone(),
            });
        }
        Ok(r["value"].clone())
    }

    /// Navigates to `url` (returns once the document has loaded).
    pub fn go(&self, url: &str) -> Result<(), WebDriverError> {
        self.cmd("POST", "url", Some(&json!({ "url": url }))).map(|_| ())
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn js(&self, script: &str) -> Result<Value, WebDriverError> {
        self.cmd("POST", "execute/sync", Some(&json!({ "script": script, "args": [] })))
    }

    /// Runs an async function body in the page (`await` allowed); its `return` value, or
    /// the string `error: ...` when it throws.
    pub fn js_async(&self, script: &str) -> Result<Value, WebDriverError> {
        let wrapped = format!(
            "const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, e => done('error: ' + e));"
        );
        self.cmd("POST", "execute/async", Some(&json!({ "script": wrapped, "args": [] })))
    }

    /// Waits (up to `timeout`, looking every 50 ms) until `script` returns something
    /// truthy; returns it.
    pub fn wait(&self, what: &str, script: &str, timeout: Duration) -> Result<Value, WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script)?;
            let truthy = !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(WebDriverError::Timeout(what.to_string()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The page's text as shown.
    pub fn text(&self) -> Result<String, WebDriverError> {
        Ok(self
            .js("return document.body.innerText")?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> Result<Vec<u8>, WebDriverError> {
        use base64::Engine;
        let png = self.cmd("GET", "screenshot", None)?;
        base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .map_err(|e| WebDriverError::Protocol(e.to_string()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = call(self.port, "DELETE", &format!("/session/{}", self.session), None);
        }
        if let Some(pid) = rustix::process::Pid::from_raw(self.driver.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
