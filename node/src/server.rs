//! The daemon side of the local API.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{
    API_VERSION, ApiError, ClientFrame, ClientHello, ErrorCode, Event, HELLO_FRAME_LIMIT, HistoryQuery, InboxQuery,
    MAGIC, PublishRequest, Request, Response, SendRequest, ServerFrame, ServerHello,
};
use crate::error::ServiceError;
use crate::node::{Node, SessionGuard};

/// Frames queued for one client before the sender waits.
pub const CLIENT_QUEUE: usize = 256;
/// Requests one connection may have in flight.
pub const MAX_IN_FLIGHT: usize = 64;
/// Time a client has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors preparing the socket.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another daemon answers on the socket.
    #[error("a daemon is already listening on {0}")]
    InUse(String),
    /// The socket could not be created.
    #[error("cannot create the API socket {path}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Binds the API socket at `path` (mode 0600). A socket file left by a daemon that died is
/// detected (nothing answers on it) and replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |source| SocketError::Io {
        path: path.display().to_string(),
        source,
    };
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.display().to_string())),
            Err(_) => {
                tracing::info!(path = %path.display(), "removing stale API socket");
                std::fs::remove_file(path).map_err(io)?;
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(max).new_codec()
}

/// Accepts connections until cancelled.
pub async fn serve(listener: UnixListener, node: Node, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    let mut next_conn: u64 = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let node = node.clone();
                    let cancel = cancel.clone();
                    next_conn += 1;
                    // Every request, event and session of this client is logged under it.
                    let uid = stream.peer_cred().map(|c| c.uid()).ok();
                    let span = tracing::debug_span!("api_conn", conn = next_conn, uid);
                    conns.spawn(
                        async move {
                            if let Err(e) = connection(stream, node, cancel).await {
                                tracing::debug!(error = %e, "API connection ended with an error");
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Stopping: new clients are turned away at once; each connection answers the requests
    // it has in flight, then closes.
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The one place where the service's errors become the API's: a code for programs, the
/// service's own sentence for people.
impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use crate::store::StoreError as S;
        let code = match &e {
            ServiceError::Invalid(_) | ServiceError::Name(_) => ErrorCode::BadRequest,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::Ambiguous(_) => ErrorCode::Ambiguous,
            ServiceError::TooLarge(_) => ErrorCode::TooLarge,
            ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::Storage(_) => ErrorCode::Storage,
            ServiceError::Busy(_) => ErrorCode::Busy,
            ServiceError::RateLimited(_) => ErrorCode::RateLimited,
            ServiceError::Denied(_) => ErrorCode::Denied,
            ServiceError::Internal(_) => ErrorCode::Internal,
            ServiceError::Store(S::UnknownAgent(_) | S::UnknownMessage(_)) => ErrorCode::NotFound,
            ServiceError::Store(S::IdTaken(_)) => ErrorCode::BadRequest,
            ServiceError::Store(S::Busy) => ErrorCode::Busy,
            ServiceError::Store(S::Closed) => ErrorCode::Unavailable,
            ServiceError::Store(_) => ErrorCode::Storage,
        };
        ApiError::new(code, e.to_string())
    }
}

/// Why an API connection ended early (logged at debug: a client's mistake, not ours).
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client said nothing in time.
    #[error("client said nothing within {HELLO_TIMEOUT:?}")]
    Silent,
    /// The client closed before its hello.
    #[error("client closed before hello")]
    ClosedBeforeHello,
    /// The client was refused (wrong user, magic or version); it was told why.
    #[error("refused: {0}")]
    Refused(String),
    /// A frame over the limit or a request that does not decode; the client was told.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A frame could not be encoded.
    #[error("cannot encode: {0}")]
    Encode(#[from] postcard::Error),
}

fn encode(frame: &ServerFrame) -> Result<Bytes, postcard::Error> {
    postcard::to_allocvec(frame).map(Bytes::from)
}

type Reader = FramedRead<tokio::net::unix::OwnedReadHalf, LengthDelimitedCodec>;
type Writer = FramedWrite<tokio::net::unix::OwnedWriteHalf, LengthDelimitedCodec>;

/// The hello exchange: only the user running the daemon (and root) of the same API version
/// is welcomed; a refused client is told why before the connection closes.
async fn handshake(stream: UnixStream, node: &Node, max_frame: usize) -> Result<(Reader, Writer), ConnectionError> {
    let cred = stream.peer_cred()?;
    let me = node.owner_uid();
    let allowed = cred.uid() == me || cred.uid() == 0;

    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, codec(HELLO_FRAME_LIMIT));
    let mut writer = FramedWrite::new(w, codec(max_frame));

    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
        .await
        .map_err(|_| ConnectionError::Silent)?
        .ok_or(ConnectionError::ClosedBeforeHello)??;
    let refusal = match postcard::from_bytes::<ClientHello>(&hello) {
        _ if !allowed => Some(format!(
            "uid {} may not use this daemon (owned by uid {me})",
            cred.uid()
        )),
        Ok(h) if h.magic != MAGIC => Some("not an agentmesh client".to_string()),
        Ok(h) if h.version != API_VERSION => Some(format!(
            "this daemon speaks local API version {API_VERSION}, the client {}; restart the daemon after upgrading (mesh down; mesh up --detach)",
            h.version
        )),
        Ok(_) => None,
        Err(e) => Some(format!("malformed hello: {e}")),
    };
    let answer = match &refusal {
        Some(reason) => ServerHello::Refused { reason: reason.clone() },
        None => ServerHello::Welcome {
            version: API_VERSION,
            node: node.identity(),
            max_frame: max_frame as u32,
        },
    };
    writer.send(Bytes::from(postcard::to_allocvec(&answer)?)).await?;
    if let Some(reason) = refusal {
        return Err(ConnectionError::Refused(reason));
    }
    reader.decoder_mut().set_max_frame_length(max_frame);
    Ok((reader, writer))
}

/// The connection's one writer: everyone else queues frames for it. An answer over the
/// frame limit is replaced by a `TooLarge` error (an event that large is dropped).
fn spawn_writer(mut writer: Writer, max_frame: usize) -> (mpsc::Sender<ServerFrame>, tokio::task::JoinHandle<()>) {
    let (out, mut out_rx) = mpsc::channel::<ServerFrame>(CLIENT_QUEUE);
    let task = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let bytes = match encode(&frame) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an API frame");
                    continue;
                }
            };
            let bytes = if bytes.len() <= max_frame {
                bytes
            } else {
                let ServerFrame::Reply { id, .. } = &frame else {
                    continue;
                };
                let too_large = ApiError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "the answer is {} bytes, over the API frame limit of {max_frame}; ask for fewer (--limit)",
                        bytes.len()
                    ),
                );
                let Ok(b) = encode(&ServerFrame::Reply {
                    id: *id,
                    result: Err(too_large),
                }) else {
                    continue;
                };
                b
            };
            if writer.send(bytes).await.is_err() {
                break;
            }
        }
    });
    (out, task)
}

async fn connection(stream: UnixStream, node: Node, cancel: CancellationToken) -> Result<(), ConnectionError> {
    let max_frame = node.config().limits.max_api_frame_bytes;
    let (mut reader, writer) = handshake(stream, &node, max_frame).await?;
    node.metrics().api_connections.inc();
    let _counted = ConnectionCount(node.clone());
    let (out, write_task) = spawn_writer(writer, max_frame);
    let mut conn = Connection {
        node,
        out,
        requests: JoinSet::new(),
        sessions: Vec::new(),
        watcher: None,
    };
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                stopping = true;
                break Ok(());
            }
            Some(_) = conn.requests.join_next(), if !conn.requests.is_empty() => {}
            frame = reader.next() => match frame {
                None => break Ok(()),
                Some(frame) => match conn.on_frame(frame, max_frame).await {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Close) => break Ok(()),
                    Err(e) => break Err(e),
                },
            },
        }
    };
    conn.close(stopping).await;
    let _ = write_task.await;
    result
}

/// What the connection does after a frame.
enum Flow {
    Continue,
    /// The client is gone (its queue closed).
    Close,
}

/// One client connection's state: its requests in flight, the sessions it holds (agents
/// online, wakers) and its event forwarder.
struct Connection {
    node: Node,
    out: mpsc::Sender<ServerFrame>,
    requests: JoinSet<()>,
    sessions: Vec<SessionGuard>,
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl Connection {
    /// Takes one frame: requests that change the connection itself (sessions, wakers, the
    /// event stream, shutdown) are done here, in order; the rest run concurrently (at most
    /// [`MAX_IN_FLIGHT`]).
    async fn on_frame(
        &mut self,
        frame: std::io::Result<bytes::BytesMut>,
        max_frame: usize,
    ) -> Result<Flow, ConnectionError> {
        let bytes = match frame {
            Ok(b) => b,
            Err(e) => {
                // Oversized or broken framing: say why, then hang up.
                let error = ApiError::new(ErrorCode::TooLarge, format!("bad frame: {e} (limit {max_frame} bytes)"));
                self.reply(0, Err(error)).await;
                return Err(ConnectionError::BadFrame(e.to_string()));
            }
        };
        let ClientFrame { id, request } = match postcard::from_bytes::<ClientFrame>(&bytes) {
            Ok(f) => f,
            Err(e) => {
                self.reply(0, Err(ApiError::bad(format!("malformed request: {e}"))))
                    .await;
                return Err(ConnectionError::BadFrame(e.to_string()));
            }
        };
        let result = match request {
            Request::Claim { .. } | Request::Register { .. } | Request::Waker { .. } => {
                self.hold(request).await.map_err(ApiError::from)
            }
            Request::Watch { agents } => {
                if let Some(w) = self.watcher.take() {
                    w.abort();
                }
                let events = self.node.subscribe_events();
                let answerers = self
                    .node
                    .0
                    .config
                    .permissions
                    .answer_agents
                    .iter()
                    .map(|a| a.to_string())
                    .collect();
                self.watcher = Some(tokio::spawn(forward_events(
                    events,
                    agents,
                    answerers,
                    self.out.clone(),
                )));
                Ok(Response::Ok)
            }
            Request::Shutdown => {
                self.reply(id, Ok(Response::Ok)).await;
                tracing::info!("shutdown requested through the API");
                self.node.request_shutdown();
                return Ok(Flow::Continue);
            }
            _ if self.requests.len() >= MAX_IN_FLIGHT => Err(ApiError::new(
                ErrorCode::Busy,
                format!("more than {MAX_IN_FLIGHT} requests in flight on one connection"),
            )),
            other => {
                let (node, out) = (self.node.clone(), self.out.clone());
                self.requests.spawn(
                    async move {
                        let result = dispatch(&node, other).await;
                        let _ = out.send(ServerFrame::Reply { id, result }).await;
                    }
                    .in_current_span(),
                );
                return Ok(Flow::Continue);
            }
        };
        Ok(if self.reply(id, result).await {
            Flow::Continue
        } else {
            Flow::Close
        })
    }

    /// The requests that make this connection hold something for as long as it lives:
    /// an agent online (`Claim`, `Register` with `attach`) or a waker.
    async fn hold(&mut self, request: Request) -> Result<Response, ServiceError> {
        match request {
            Request::Claim { agent, exact } => {
                let (view, guard) = self.node.claim(agent, exact).await?;
                self.sessions.push(guard);
                Ok(Response::Agent(view))
            }
            Request::Register { agent, attach } => {
                let (view, guard) = self.node.register(agent, attach).await?;
                self.sessions.extend(guard);
                Ok(Response::Agent(view))
            }
            Request::Waker { agent } => {
                let (guard, generation) = self.node.hold_waker(&agent).await?;
                self.sessions.push(guard);
                Ok(Response::Waker { generation })
            }
            _ => Err(ServiceError::internal("request routed to the wrong handler")),
        }
    }

    /// Queues an answer; false when the client is gone.
    async fn reply(&self, id: u64, result: Result<Response, ApiError>) -> bool {
        self.out.send(ServerFrame::Reply { id, result }).await.is_ok()
    }

    /// Ends the connection: when the daemon stops, requests in flight are answered first
    /// (bounded by the stop); when the client left, they are dropped. Then its sessions
    /// end (its agents go offline) and the writer drains.
    async fn close(mut self, stopping: bool) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        if stopping {
            while self.requests.join_next().await.is_some() {}
        } else {
            self.requests.shutdown().await;
        }
        drop(self.sessions);
        drop(self.out);
    }
}

/// Counts an open API connection until dropped.
struct ConnectionCount(Node);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.metrics().api_connections.dec();
    }
}

/// Sends a watching connection the events of its agents (all, for none): their messages,
/// what became of what they sent, their sessions' permission requests, and, to an agent
/// named in `[permissions] answer_agents` (`answerers`), every request still waiting.
async fn forward_events(
    mut rx: broadcast::Receiver<Event>,
    agents: Vec<String>,
    answerers: Vec<String>,
    out: mpsc::Sender<ServerFrame>,
) {
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let wanted = match &event {
            Event::Message(m) => agents.is_empty() || agents.contains(&m.agent),
            Event::Delivered { from, .. } | Event::DeadLetter { from, .. } | Event::Read { from, .. } => {
                agents.is_empty() || agents.contains(from)
            }
            Event::WakerReplaced { agent, .. } => agents.is_empty() || agents.contains(agent),
            Event::Permission(p) => {
                agents.is_empty()
                    || agents.contains(&p.agent)
                    || (p.answer.is_none() && agents.iter().any(|a| answerers.contains(a)))
            }
            Event::Pairing(_) => agents.is_empty(),
            _ => true,
        };
        if wanted && out.send(ServerFrame::Event(event)).await.is_err() {
            break;
        }
    }
}

/// Runs one request, counting it in the metrics.
async fn dispatch(node: &Node, request: Request) -> Result<Response, ApiError> {
    let kind = request.kind();
    let started = std::time::Instant::now();
    let span = tracing::debug_span!("api", kind, outcome = tracing::field::Empty);
    let result = run(node, request).instrument(span.clone()).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.code.as_str(),
    };
    span.record("outcome", outcome);
    node.metrics().api_request(kind, outcome, started.elapsed());
    result
}

async fn run(node: &Node, request: Request) -> Result<Response, ApiError> {
    Ok(match request {
        Request::Status => Response::Status(Box::new(node.status().await?)),
        Request::Peers => Response::Peers(node.peers().await?),
        Request::Agents => Response::Agents(node.agents().await?),
        Request::Dial { addr } => Response::Dialed {
            peer: node.dial(&addr).await?,
        },
        Request::Forget { node: target } => {
            let (peer, was) = node.forget(&target).await?;
            Response::Forgot { peer, was }
        }
        Request::Ping { node: target } => {
            let (peer, rtt, connection) = node.ping(&target).await?;
            Response::Pong {
                peer,
                rtt_us: rtt.as_micros() as u64,
                connection,
            }
        }
        Request::Addrs => Response::Addrs(node.addrs().await?),
        Request::Send(SendRequest {
            from,
            to,
            text,
            reply_to,
            id,
        }) => Response::Sent(node.send(&from, &to, text, reply_to, id).await?),
        Request::Inbox(query) => Response::Inbox(inbox(node, query).await?),
        Request::MarkRead { agent, ids } => Response::Marked {
            count: node.mark(&agent, ids, crate::store::ReadState::Read).await?,
        },
        Request::MarkNotified { agent, ids } => Response::Marked {
            count: node.mark(&agent, ids, crate::store::ReadState::Notified).await?,
        },
        Request::Counts { agent } => {
            let (new, notified) = node.counts(&agent).await?;
            Response::Counts { new, notified }
        }
        Request::Subscribe { agent, topic } => {
            let (topic, changed) = node.subscribe(&agent, &topic).await?;
            Response::Subscription { topic, changed }
        }
        Request::Unsubscribe { agent, topic } => {
            let (topic, changed) = node.unsubscribe(&agent, &topic).await?;
            Response::Subscription { topic, changed }
        }
        Request::Topics => Response::Topics(node.topics().await?),
        Request::Publish(PublishRequest {
            agent,
            topic,
            text,
            reply_to,
            id,
        }) => Response::Published(node.publish(&agent, &topic, text, reply_to, id).await?),
        Request::History(query) => Response::History(history(node, query).await?),
        Request::Outbox {
            agent,
            delivered,
            limit,
        } => Response::Outbox(node.outbox(agent.as_deref(), delivered, limit).await?),
        Request::SetSummary { agent, summary } => Response::Agent(node.set_summary(&agent, summary).await?),
        Request::Invite { ttl_s, uses } => Response::Invite(node.invite(ttl_s, uses).await?),
        Request::Join { code } => Response::Joined(node.join(&code).await?),
        Request::Members => Response::Members(node.members().await?),
        Request::Remove { node: target } => Response::Removed(node.remove(&target).await?),
        Request::Leave => Response::Left(node.leave().await?),
        Request::OpenPage => Response::Page(node.open_page().await?),
        Request::AskPermission { agent, ask } => Response::Permission(node.ask_permission(&agent, ask).await?),
        Request::Pair { node: target } => Response::Pairing(node.pair(&target).await?),
        Request::PairWait { node: target } => Response::Pairing(node.pair_wait(&target).await?),
        Request::PairConfirm { node: target, same } => Response::Pairing(node.pair_confirm(&target, same)?),
        Request::Pairings => Response::Pairings(node.pairings()),
        Request::AnswerPairing { id, allow } => Response::Pairing(node.answer_pairing(&id, allow).await?),
        Request::Permissions { agent } => Response::Permissions(node.permissions(agent.as_deref())?),
        Request::AnswerPermission { id, allow, by, agent } => {
            Response::Permission(node.answer_permission(&id, allow, &by, agent.as_deref()).await?)
        }
        Request::Register { .. }
        | Request::Claim { .. }
        | Request::Watch { .. }
        | Request::Waker { .. }
        | Request::Shutdown => {
            return Err(ApiError::new(ErrorCode::Internal, "handled by the connection"));
        }
    })
}

/// One page of an inbox.
async fn inbox(node: &Node, query: InboxQuery) -> Result<crate::api::InboxPage, ApiError> {
    let q = crate::store::InboxQuery {
        limit: query.limit.max(1) as usize,
        all: query.all,
        skip_notified: query.skip_notified,
        mark_read: query.mark_read,
        after: query
            .after
            .as_deref()
            .map(crate::api::page::parse_inbox_cursor)
            .transpose()?,
    };
    Ok(node.inbox(&query.agent, q, query.max_bytes).await?)
}

/// One page of the history.
async fn history(node: &Node, query: HistoryQuery) -> Result<crate::api::HistoryPage, ApiError> {
    let cursor = |c: Option<String>| c.as_deref().map(crate::api::page::parse_history_cursor).transpose();
    let filter = crate::store::HistoryFilter {
        grep: query.grep,
        limit: query.limit.max(1) as usize,
        before: cursor(query.before)?,
        after: cursor(query.after)?,
        forward: query.forward,
        ..Default::default()
    };
    Ok(node
        .history(query.agent.as_deref(), query.target.as_deref(), filter, query.max_bytes)
        .await?)
}
