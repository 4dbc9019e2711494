//! The human's page (`mesh open`): a live view of the mesh and a compose box, served on
//! loopback by the daemon.
//!
//! Plain HTTP/1.1 on a loopback address (`[web] listen`), started with the daemon when
//! `[web] enabled`, else at the first `mesh open`. Who may use it is decided by
//! [`gate::Gate`]; what it can do is the handful of JSON calls below, each one call of the
//! node service, as the user's own agent:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /`, `/app.js`, `/app.css` | the page (no data in it) |
//! | `POST /api/login` `{token}` | a login token from `mesh open` for a session cookie; answers `{csrf}` |
//! | `GET /api/state` | this node, its user agent, status, agents of the mesh, nodes and paths, topics |
//! | `GET /api/history?target=&before=&limit=` | a page of history (`target`: an agent address or `#topic`), oldest first |
//! | `GET /api/events` | server-sent events: every local API event, as JSON |
//! | `POST /api/send` `{to, text, reply_to}` | a direct message from the user's agent |
//! | `POST /api/publish` `{topic, text, reply_to}` | a topic message from the user's agent |
//! | `POST /api/invite` | a join code (1 use, 1 hour) to hand out |
//! | `POST /api/permission` `{id, allow}` | answers a session's permission request (the first answer wins) |
//! | `POST /api/pairing` `{id, allow}` | admits or refuses a node asking to join (`id`: its comparison code) |
//! | `POST /api/pair` `{node}` | asks a nearby node (PeerId) to admit this one; answered with the comparison code |
//! | `POST /api/pair/confirm` `{node, same}` | the user compared the codes: join once approved, or give up |
//!
//! Peer text reaches the page only as JSON strings, which the page puts in the document as
//! text, never as markup; the Content-Security-Policy allows no inline script and no other
//! origin, so even a mistake there would not run peer text.

pub mod gate;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::api::{AgentView, ApiError, ErrorCode, NodeIdentity, PeerView, PermissionView, StatusView, TopicView};
use crate::error::ServiceError;
use crate::ids::{AgentName, MessageId};
use crate::node::Node;
use gate::{CSRF_HEADER, Gate, Knock, Refusal};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Every answer carries these: no script but ours, no other origin, no framing, no sniffing,
/// no caching, no referrer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// History rows in one page at most.
pub const MAX_HISTORY_PAGE: u32 = 200;
/// How long a join code made on the page lasts.
pub const INVITE_TTL: Duration = Duration::from_secs(3600);

/// A running page server.
pub struct Site {
    node: Node,
    user: AgentName,
    addr: SocketAddr,
    gate: Mutex<Gate>,
}

impl Site {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open: the page, with a fresh one-time login token in the fragment
    /// (which browsers never send to the server, so it is in no request line or log).
    pub fn login_url(&self) -> String {
        let token = self.gate().issue_login(Instant::now());
        format!("{}#login={token}", self.url())
    }

    /// The page's address.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    fn gate(&self) -> std::sync::MutexGuard<'_, Gate> {
        self.gate.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request the gate let in (a session, and on changes this origin and its CSRF token):
/// every handler but the login takes one, so none runs for anyone else.
struct Admitted(gate::Session);

impl axum::extract::FromRequestParts<Arc<Site>> for Admitted {
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, site: &Arc<Site>) -> Result<Self, WebError> {
        let knock = knock(&parts.method, &parts.headers);
        Ok(Admitted(site.gate().check(&knock, Instant::now())?))
    }
}

/// Starting the page server failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve the page on {addr}: {source} (set another port with [web] listen in config.toml)")]
pub struct WebStartError {
    /// Where.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

/// Binds `addr` and serves the page for `node` as its agent `user` until `cancel`.
pub async fn start(
    node: Node,
    user: AgentName,
    addr: SocketAddr,
    cancel: CancellationToken,
) -> Result<Arc<Site>, WebStartError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| WebStartError { addr, source })?;
    let local = listener.local_addr().map_err(|source| WebStartError { addr, source })?;
    let body_limit = node.config().limits.max_message_bytes + 16 * 1024;
    let site = Arc::new(Site {
        node,
        user,
        addr: local,
        gate: Mutex::new(Gate::new(local.port())),
    });
    let app = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/api/login", post(login))
        .route("/api/state", get(state))
        .route("/api/history", get(history))
        .route("/api/events", get(events))
        .route("/api/send", post(send))
        .route("/api/publish", post(publish))
        .route("/api/invite", post(invite))
        .route("/api/permission", post(permission))
        .route("/api/pairing", post(pairing))
        .route("/api/pair", post(pair))
        .route("/api/pair/confirm", post(pair_confirm))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(site.clone(), guard))
        .with_state(site.clone());
    tracing::info!(addr = %local, "serving the page at http://{local}/");
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the page server stopped");
        }
    });
    Ok(site)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn knock<'a>(method: &Method, headers: &'a HeaderMap) -> Knock<'a> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    Knock {
        reads_only: matches!(*method, Method::GET | Method::HEAD),
        host: h(header::HOST.as_str()),
        origin: h(header::ORIGIN.as_str()),
        cookie: h(header::COOKIE.as_str()),
        csrf: h(CSRF_HEADER),
    }
}

/// Around every request: the host checked (the page itself too), the safety headers added.
async fn guard(State(site): State<Arc<Site>>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok());
    let host_ok = host.is_some_and(|h| site.gate().host_ok(h));
    let mut response = if host_ok {
        next.run(request).await
    } else {
        WebError::Refused(Refusal::Host(site.addr.port())).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Why a call failed, as the page is told (JSON `{error}` with a status code).
#[derive(Debug)]
enum WebError {
    Refused(Refusal),
    Api(ApiError),
}

impl From<Refusal> for WebError {
    fn from(r: Refusal) -> Self {
        WebError::Refused(r)
    }
}

impl From<ServiceError> for WebError {
    fn from(e: ServiceError) -> Self {
        WebError::Api(e.into())
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError::Api(e)
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            WebError::Refused(r) => (
                match r {
                    Refusal::Host(_) => StatusCode::MISDIRECTED_REQUEST,
                    Refusal::NoSession | Refusal::BadLogin => StatusCode::UNAUTHORIZED,
                    Refusal::Forgery => StatusCode::FORBIDDEN,
                },
                r.to_string(),
            ),
            WebError::Api(e) => (
                match e.code {
                    ErrorCode::BadRequest | ErrorCode::Ambiguous => StatusCode::BAD_REQUEST,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    ErrorCode::Denied => StatusCode::FORBIDDEN,
                    ErrorCode::Unavailable | ErrorCode::Busy | ErrorCode::Storage => StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                },
                e.message,
            ),
        };
        (status, axum::Json(ErrorBody { error: message })).into_response()
    }
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

#[derive(Serialize)]
struct LoginAnswer {
    csrf: String,
}

async fn login(
    State(site): State<Arc<Site>>,
    method: Method,
    headers: HeaderMap,
    Json(body): Json<LoginBody>,
) -> Result<Response, WebError> {
    let knock = knock(&method, &headers);
    let (set, session) = {
        let mut gate = site.gate();
        let (cookie, session) = gate.login(&knock, &body.token, Instant::now())?;
        (gate.set_cookie(&cookie), session)
    };
    let set = HeaderValue::from_str(&set)
        .map_err(|_| WebError::Api(ApiError::new(ErrorCode::Internal, "cannot build the session cookie")))?;
    tracing::info!("the page was opened (a new session)");
    Ok(([(header::SET_COOKIE, set)], Json(LoginAnswer { csrf: session.csrf })).into_response())
}

/// What the page shows at load; events keep it current.
#[derive(Serialize)]
struct PageState {
    node: NodeIdentity,
    me: String,
    csrf: String,
    status: StatusView,
    agents: Vec<AgentView>,
    peers: Vec<PeerView>,
    topics: Vec<TopicView>,
    permissions: Vec<PermissionView>,
    pairings: Vec<crate::api::PairingView>,
    /// Pairings this node asked for.
    outgoing: Vec<crate::api::PairingView>,
}

async fn state(State(site): State<Arc<Site>>, Admitted(session): Admitted) -> Result<Json<PageState>, WebError> {
    let n = &site.node;
    Ok(Json(PageState {
        node: n.identity(),
        me: site.user.to_string(),
        csrf: session.csrf,
        status: n.status().await?,
        agents: n.agents().await?,
        peers: n.peers().await?,
        topics: n.topics().await?,
        permissions: n.permissions(None).unwrap_or_default(),
        pairings: n.pairings(),
        outgoing: n.asked_pairings(),
    }))
}

#[derive(Deserialize)]
struct HistoryParams {
    target: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

async fn history(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Query(p): Query<HistoryParams>,
) -> Result<Json<crate::api::HistoryPage>, WebError> {
    let before = p
        .before
        .as_deref()
        .filter(|c| !c.is_empty())
        .map(crate::api::page::parse_history_cursor)
        .transpose()?;
    let filter = crate::store::HistoryFilter {
        limit: p.limit.unwrap_or(50).clamp(1, MAX_HISTORY_PAGE) as usize,
        before,
        ..Default::default()
    };
    let target = p.target.as_deref().filter(|t| !t.trim().is_empty());
    Ok(Json(site.node.history(None, target, filter, None).await?))
}

async fn events(
    State(site): State<Arc<Site>>,
    _: Admitted,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, WebError> {
    let rx = site.node.subscribe_events();
    // The user is online for as long as a page streams (see `Node::hold_page`).
    let presence = match site.node.hold_page(&site.user).await {
        Ok(g) => Some(g),
        Err(e) => {
            tracing::debug!(error = %e, "the page's user agent is not online");
            None
        }
    };
    let stopping = site.node.0.shutdown.clone().cancelled_owned();
    let stream = futures::stream::unfold((rx, presence), |(mut rx, presence)| async move {
        let event = match rx.recv().await {
            Ok(e) => SseEvent::default().json_data(&e).unwrap_or_default(),
            Err(broadcast::error::RecvError::Lagged(missed)) => SseEvent::default()
                .json_data(crate::api::Event::Lagged { missed })
                .unwrap_or_default(),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, presence)))
    });
    // A stopping node ends the stream, so the server's graceful stop is not held open by it.
    let stream = futures::StreamExt::take_until(stream, stopping);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[derive(Deserialize)]
struct SendBody {
    to: String,
    text: String,
    reply_to: Option<MessageId>,
}

async fn send(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<SendBody>,
) -> Result<Json<crate::api::SendReceipt>, WebError> {
    let receipt = site
        .node
        .send(site.user.as_str(), &body.to, body.text, body.reply_to, None)
        .await?;
    Ok(Json(receipt))
}

#[derive(Deserialize)]
struct PublishBody {
    topic: String,
    text: String,
    reply_to: Option<MessageId>,
}

async fn publish(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<PublishBody>,
) -> Result<Json<crate::api::PublishReceipt>, WebError> {
    let receipt = site
        .node
        .publish(
            site.user.as_str(),
            body.topic.trim_start_matches('#'),
            body.text,
            body.reply_to,
            None,
        )
        .await?;
    Ok(Json(receipt))
}

async fn invite(State(site): State<Arc<Site>>, _: Admitted) -> Result<Json<crate::api::InviteView>, WebError> {
    Ok(Json(site.node.invite(INVITE_TTL.as_secs(), 1).await?))
}

/// The answer to a listed request: a permission prompt (its id) or a pairing (the asking
/// node's comparison code or PeerId).
#[derive(Deserialize)]
struct AnswerBody {
    id: String,
    allow: bool,
}

async fn permission(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<AnswerBody>,
) -> Result<Json<PermissionView>, WebError> {
    let by = format!("{} (page)", site.user);
    Ok(Json(
        site.node.answer_permission(&body.id, body.allow, &by, None).await?,
    ))
}

/// Admits or refuses a node asking to join.
async fn pairing(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<AnswerBody>,
) -> Result<Json<crate::api::PairingView>, WebError> {
    Ok(Json(site.node.answer_pairing(&body.id, body.allow).await?))
}

#[derive(Deserialize)]
struct PairBody {
    /// The nearby node: its PeerId.
    node: String,
}

/// Asks a nearby node to admit this one; the outcome comes as `Pairing` events.
async fn pair(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<PairBody>,
) -> Result<Json<crate::api::PairingView>, WebError> {
    Ok(Json(site.node.pair(&body.node).await?))
}

#[derive(Deserialize)]
struct PairConfirmBody {
    node: String,
    same: bool,
}

/// The user compared the codes of a pairing this node asked for.
async fn pair_confirm(
    State(site): State<Arc<Site>>,
    _: Admitted,
    Json(body): Json<PairConfirmBody>,
) -> Result<Json<crate::api::PairingView>, WebError> {
    Ok(Json(site.node.pair_confirm(&body.node, body.same)?))
}
