//! Who may use the page: a plain struct fed the request's headers and the time (no I/O),
//! unit-tested.
//!
//! - A **login token** comes only from the local API (`mesh open`), so only the home's
//!   owner gets one. It is used once, within [`LOGIN_FOR`], and exchanged for a session.
//! - A **session** is a random cookie (`HttpOnly`, `SameSite=Strict`), with a CSRF token the
//!   page reads from its login answer and sends back in a header on every change.
//! - Every request must name this server in `Host` (`127.0.0.1:<port>`, `localhost:<port>`
//!   or `[::1]:<port>`): a page elsewhere that rebinds its DNS name to 127.0.0.1 reaches
//!   the port under its own name and is refused. A change (any method but `GET`) must also
//!   come from this origin (`Origin`) and carry the session's CSRF header. No CORS header
//!   is ever sent, so other origins cannot read answers either.
//!
//! Tokens are kept as their SHA-256 only; none is ever logged.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

/// How long a login token from `mesh open` may wait to be used.
pub const LOGIN_FOR: Duration = Duration::from_secs(120);
/// Login tokens outstanding at most (the oldest goes first).
pub const MAX_LOGINS: usize = 16;
/// How long a session lasts without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the least recently used goes first).
pub const MAX_SESSIONS: usize = 32;
/// The session cookie's name: this prefix and the port (browsers share cookies between the
/// ports of one host, so two homes' pages on one machine must not overwrite each other's).
pub const COOKIE: &str = "mesh_session_";
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-mesh-csrf";

type Digest32 = [u8; 32];

fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Why a request is refused; each says what to do in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `Host` does not name this server (DNS rebinding, or a proxy).
    #[error("this page is served to 127.0.0.1, localhost or [::1] at port {0} only")]
    Host(u16),
    /// No valid session cookie.
    #[error("not logged in (or the session ended): run `mesh open` for a new login link")]
    NoSession,
    /// A change from another origin, or without the CSRF header.
    #[error("refused: changes are taken only from this page itself")]
    Forgery,
    /// The login token is unknown, used or expired.
    #[error("this login link was used already or expired: run `mesh open` for a new one")]
    BadLogin,
}

/// A session, as a request presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The CSRF token the page must send back on changes.
    pub csrf: String,
}

struct Stored {
    csrf: String,
    last: Instant,
}

/// The page's door.
pub struct Gate {
    port: u16,
    logins: HashMap<Digest32, Instant>,
    sessions: HashMap<Digest32, Stored>,
}

/// What a request shows the gate: its method and the headers that matter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Knock<'a> {
    /// Whether it only reads (`GET`, `HEAD`).
    pub reads_only: bool,
    /// `Host`.
    pub host: Option<&'a str>,
    /// `Origin`.
    pub origin: Option<&'a str>,
    /// The whole `Cookie` header.
    pub cookie: Option<&'a str>,
    /// [`CSRF_HEADER`].
    pub csrf: Option<&'a str>,
}

impl Gate {
    /// The gate of a server listening on `port`.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            logins: HashMap::new(),
            sessions: HashMap::new(),
        }
    }

    /// Whether `host` (a `Host` header) names this server.
    pub fn host_ok(&self, host: &str) -> bool {
        let p = self.port;
        [format!("127.0.0.1:{p}"), format!("localhost:{p}"), format!("[::1]:{p}")]
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// A one-time login token (for `mesh open`).
    pub fn issue_login(&mut self, now: Instant) -> String {
        self.logins.retain(|_, at| now.duration_since(*at) < LOGIN_FOR);
        while self.logins.len() >= MAX_LOGINS {
            let oldest = self.logins.iter().min_by_key(|(_, at)| **at).map(|(k, _)| *k);
            match oldest {
                Some(k) => self.logins.remove(&k),
                None => break,
            };
        }
        let token = random_token();
        self.logins.insert(digest(&token), now);
        token
    }

    /// Exchanges a login token (once) for a session: its cookie value and CSRF token. The
    /// request must come from this page (`Host`, `Origin`).
    pub fn login(&mut self, knock: &Knock<'_>, token: &str, now: Instant) -> Result<(String, Session), Refusal> {
        self.check_host(knock)?;
        self.check_origin(knock)?;
        let issued = self.logins.remove(&digest(token)).ok_or(Refusal::BadLogin)?;
        if now.duration_since(issued) >= LOGIN_FOR {
            return Err(Refusal::BadLogin);
        }
        self.sessions.retain(|_, s| now.duration_since(s.last) < SESSION_IDLE);
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self.sessions.iter().min_by_key(|(_, s)| s.last).map(|(k, _)| *k);
            match oldest {
                Some(k) => self.sessions.remove(&k),
                None => break,
            };
        }
        let (cookie, csrf) = (random_token(), random_token());
        self.sessions.insert(
            digest(&cookie),
            Stored {
                csrf: csrf.clone(),
                last: now,
            },
        );
        Ok((cookie, Session { csrf }))
    }

    /// Whether `knock` may go in: the session it belongs to.
    pub fn check(&mut self, knock: &Knock<'_>, now: Instant) -> Result<Session, Refusal> {
        self.check_host(knock)?;
        let name = self.cookie_name();
        let cookie = knock
            .cookie
            .and_then(|c| session_cookie(c, &name))
            .ok_or(Refusal::NoSession)?;
        let key = digest(cookie);
        let origin_ok = knock
            .origin
            .is_some_and(|o| o.strip_prefix("http://").is_some_and(|h| self.host_ok(h)));
        let stored = match self.sessions.get_mut(&key) {
            Some(s) if now.duration_since(s.last) < SESSION_IDLE => s,
            Some(_) => {
                self.sessions.remove(&key);
                return Err(Refusal::NoSession);
            }
            None => return Err(Refusal::NoSession),
        };
        if !knock.reads_only && (knock.csrf != Some(stored.csrf.as_str()) || !origin_ok) {
            return Err(Refusal::Forgery);
        }
        stored.last = now;
        Ok(Session {
            csrf: stored.csrf.clone(),
        })
    }

    /// This server's session cookie name.
    pub fn cookie_name(&self) -> String {
        format!("{COOKIE}{}", self.port)
    }

    /// The `Set-Cookie` value for a new session.
    pub fn set_cookie(&self, cookie: &str) -> String {
        format!("{}={cookie}; Path=/; HttpOnly; SameSite=Strict", self.cookie_name())
    }

    fn check_host(&self, knock: &Knock<'_>) -> Result<(), Refusal> {
        if knock.host.is_some_and(|h| self.host_ok(h)) {
            Ok(())
        } else {
            Err(Refusal::Host(self.port))
        }
    }

    fn check_origin(&self, knock: &Knock<'_>) -> Result<(), Refusal> {
        match knock.origin {
            Some(o) if o.strip_prefix("http://").is_some_and(|h| self.host_ok(h)) => Ok(()),
            _ => Err(Refusal::Forgery),
        }
    }
}

/// The value of cookie `name` in a `Cookie` header.
fn session_cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (n, value) = pair.trim().split_once('=')?;
        (n == name && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOST: &str = "127.0.0.1:7717";
    const ORIGIN: &str = "http://127.0.0.1:7717";

    fn read(jar: &str) -> Knock<'_> {
        Knock {
            reads_only: true,
            host: Some(HOST),
            cookie: Some(jar),
            ..Knock::default()
        }
    }

    fn logged_in(g: &mut Gate, now: Instant) -> (String, Session) {
        let token = g.issue_login(now);
        let knock = Knock {
            host: Some(HOST),
            origin: Some(ORIGIN),
            ..Knock::default()
        };
        g.login(&knock, &token, now).unwrap()
    }

    #[test]
    fn a_login_token_works_once_within_its_time_and_from_this_page_only() {
        let mut g = Gate::new(7717);
        let t0 = Instant::now();
        let here = Knock {
            host: Some(HOST),
            origin: Some(ORIGIN),
            ..Knock::default()
        };
        let token = g.issue_login(t0);
        // From another origin, or under another host name: refused, and the token stays.
        let evil = Knock {
            origin: Some("http://evil.example"),
            ..here
        };
        assert_eq!(g.login(&evil, &token, t0).unwrap_err(), Refusal::Forgery);
        let rebound = Knock {
            host: Some("evil.example:7717"),
            ..here
        };
        assert_eq!(g.login(&rebound, &token, t0).unwrap_err(), Refusal::Host(7717));
        assert!(g.login(&here, &token, t0).is_ok());
        assert_eq!(g.login(&here, &token, t0).unwrap_err(), Refusal::BadLogin, "used once");
        let late = g.issue_login(t0);
        assert_eq!(g.login(&here, &late, t0 + LOGIN_FOR).unwrap_err(), Refusal::BadLogin);
        assert_eq!(g.login(&here, "made-up", t0).unwrap_err(), Refusal::BadLogin);
    }

    #[test]
    fn reads_need_the_cookie_and_changes_also_this_origin_and_the_csrf_header() {
        let mut g = Gate::new(7717);
        let t0 = Instant::now();
        let (cookie, session) = logged_in(&mut g, t0);
        // Another home's page on this host has its own cookie, under its own port.
        let jar = format!("theme=dark; {COOKIE}7718=other; {COOKIE}7717={cookie}");
        let read = Knock {
            reads_only: true,
            host: Some("localhost:7717"),
            cookie: Some(&jar),
            ..Knock::default()
        };
        assert_eq!(g.check(&read, t0).unwrap(), session);
        assert_eq!(
            g.check(
                &Knock {
                    cookie: Some(&format!("{COOKIE}7718={cookie}")),
                    ..read
                },
                t0
            )
            .unwrap_err(),
            Refusal::NoSession,
            "another port's cookie"
        );
        assert_eq!(
            g.check(&Knock { cookie: None, ..read }, t0).unwrap_err(),
            Refusal::NoSession
        );
        assert_eq!(
            g.check(
                &Knock {
                    cookie: Some("mesh_session_7717=guess"),
                    ..read
                },
                t0
            )
            .unwrap_err(),
            Refusal::NoSession
        );
        assert_eq!(
            g.check(
                &Knock {
                    host: Some("attacker.test:7717"),
                    ..read
                },
                t0
            )
            .unwrap_err(),
            Refusal::Host(7717)
        );
        assert_eq!(
            g.check(
                &Knock {
                    host: Some("127.0.0.1:7718"),
                    ..read
                },
                t0
            )
            .unwrap_err(),
            Refusal::Host(7717)
        );
        let change = Knock {
            reads_only: false,
            origin: Some(ORIGIN),
            csrf: Some(&session.csrf),
            ..read
        };
        assert!(g.check(&change, t0).is_ok());
        for forged in [
            Knock { csrf: None, ..change },
            Knock {
                csrf: Some("x"),
                ..change
            },
            Knock { origin: None, ..change },
            Knock {
                origin: Some("http://evil.example"),
                ..change
            },
            Knock {
                origin: Some("https://127.0.0.1:7717"),
                ..change
            },
        ] {
            assert_eq!(g.check(&forged, t0).unwrap_err(), Refusal::Forgery, "{forged:?}");
        }
    }

    #[test]
    fn sessions_end_when_idle_and_the_oldest_make_room() {
        let mut g = Gate::new(7717);
        let t0 = Instant::now();
        let (first, _) = logged_in(&mut g, t0);
        let knock = |c: &str| format!("{COOKIE}7717={c}");
        let jar = knock(&first);
        // Used within the idle time: kept.
        let t1 = t0 + SESSION_IDLE - Duration::from_secs(1);
        assert!(g.check(&read(&jar), t1).is_ok());
        assert!(g.check(&read(&jar), t1 + SESSION_IDLE - Duration::from_secs(1)).is_ok());
        // Then idle for longer: gone.
        assert_eq!(
            g.check(&read(&jar), t1 + SESSION_IDLE * 3).unwrap_err(),
            Refusal::NoSession
        );
        // Past MAX_SESSIONS, the least recently used session goes.
        let t2 = t1 + SESSION_IDLE * 3;
        let cookies: Vec<String> = (0..MAX_SESSIONS as u64)
            .map(|i| logged_in(&mut g, t2 + Duration::from_secs(i)).0)
            .collect();
        let newest = logged_in(&mut g, t2 + Duration::from_secs(100)).0;
        assert!(g.check(&read(&knock(&newest)), t2 + Duration::from_secs(101)).is_ok());
        assert!(
            g.check(&read(&knock(&cookies[0])), t2 + Duration::from_secs(101))
                .is_err()
        );
        assert!(
            g.check(&read(&knock(&cookies[1])), t2 + Duration::from_secs(101))
                .is_ok()
        );
    }
}
