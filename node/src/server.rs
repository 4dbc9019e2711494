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

fn unreachable_request<T>() -> Result<T, ApiError> {
    Err(ApiError::new(
        ErrorCode::Internal,
        "request routed to the wrong handler",
    ))
}

fn encode(frame: &ServerFrame) -> Result<Bytes, String> {
    postcard::to_allocvec(frame).map(Bytes::from).map_err(|e| e.to_string())
}

async fn connection(stream: UnixStream, node: Node, cancel: CancellationToken) -> Result<(), String> {
    let max_frame = node.config().limits.max_api_frame_bytes;
    // Only the user running the daemon may use it (root may, too).
    let cred = stream.peer_cred().map_err(|e| e.to_string())?;
    let me = node.owner_uid();
    let allowed = cred.uid() == me || cred.uid() == 0;

    let (r, w) = stream.into_split();
    let mut reader = FramedRead::new(r, codec(HELLO_FRAME_LIMIT));
    let mut writer = FramedWrite::new(w, codec(max_frame));

    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
        .await
        .map_err(|_| "client said nothing".to_string())?
        .ok_or("client closed before hello")?
        .map_err(|e| e.to_string())?;
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
    let bytes = postcard::to_allocvec(&answer).map_err(|e| e.to_string())?;
    writer.send(Bytes::from(bytes)).await.map_err(|e| e.to_string())?;
    if let Some(reason) = refusal {
        return Err(reason);
    }
    reader.decoder_mut().set_max_frame_length(max_frame);
    node.metrics().api_connections.inc();
    let _counted = ConnectionCount(node.clone());

    // One writer task; everyone else queues frames for it.
    let (out, mut out_rx) = mpsc::channel::<ServerFrame>(CLIENT_QUEUE);
    let write_task = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            let bytes = match encode(&frame) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode an API frame");
                    continue;
                }
            };
            if bytes.len() > max_frame {
                let id = match &frame {
                    ServerFrame::Reply { id, .. } => *id,
                    ServerFrame::Event(_) => continue,
                };
                let err = ServerFrame::Reply {
                    id,
                    result: Err(ApiError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "the answer is {} bytes, over the API frame limit of {max_frame}; ask for fewer (--limit)",
                            bytes.len()
                        ),
                    )),
                };
                let Ok(b) = encode(&err) else { continue };
                if writer.send(b).await.is_err() {
                    break;
                }
                continue;
            }
            if writer.send(bytes).await.is_err() {
                break;
            }
        }
    });

    let mut requests: JoinSet<()> = JoinSet::new();
    let mut sessions: Vec<SessionGuard> = Vec::new();
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                stopping = true;
                break Ok(());
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            frame = reader.next() => {
                let bytes = match frame {
                    None => break Ok(()),
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        // Oversized or broken framing: say why, then hang up.
                        let _ = out.send(ServerFrame::Reply {
                            id: 0,
                            result: Err(ApiError::new(ErrorCode::TooLarge, format!("bad frame: {e} (limit {max_frame} bytes)"))),
                        }).await;
                        break Err(e.to_string());
                    }
                };
                let ClientFrame { id, request } = match postcard::from_bytes::<ClientFrame>(&bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = out.send(ServerFrame::Reply {
                            id: 0,
                            result: Err(ApiError::bad(format!("malformed request: {e}"))),
                        }).await;
                        break Err(e.to_string());
                    }
                };
                match request {
                    Request::Register { .. } | Request::Claim { .. } => {
                        let outcome = match request {
                            Request::Claim { agent, exact } => node.claim(agent, exact).await.map(|(v, g)| (v, Some(g))),
                            Request::Register { agent, attach } => node.register(agent, attach).await,
                            _ => unreachable_request(),
                        };
                        let result = match outcome {
                            Ok((view, guard)) => {
                                sessions.extend(guard);
                                Ok(Response::Agent(view))
                            }
                            Err(e) => Err(e),
                        };
                        if out.send(ServerFrame::Reply { id, result }).await.is_err() {
                            break Ok(());
                        }
                    }
                    Request::Waker { agent } => {
                        let result = match node.hold_waker(&agent).await {
                            Ok((guard, generation)) => {
                                sessions.push(guard);
                                Ok(Response::Waker { generation })
                            }
                            Err(e) => Err(e),
                        };
                        if out.send(ServerFrame::Reply { id, result }).await.is_err() {
                            break Ok(());
                        }
                    }
                    Request::Watch { agents } => {
                        if let Some(w) = watcher.take() {
                            w.abort();
                        }
                        watcher = Some(tokio::spawn(forward_events(node.subscribe_events(), agents, out.clone())));
                        if out.send(ServerFrame::Reply { id, result: Ok(Response::Ok) }).await.is_err() {
                            break Ok(());
                        }
                    }
                    Request::Shutdown => {
                        let _ = out.send(ServerFrame::Reply { id, result: Ok(Response::Ok) }).await;
                        tracing::info!("shutdown requested through the API");
                        node.request_shutdown();
                    }
                    other => {
                        if requests.len() >= MAX_IN_FLIGHT {
                            let busy = ApiError::new(ErrorCode::Busy, format!("more than {MAX_IN_FLIGHT} requests in flight on one connection"));
                            if out.send(ServerFrame::Reply { id, result: Err(busy) }).await.is_err() {
                                break Ok(());
                            }
                            continue;
                        }
                        let node = node.clone();
                        let out = out.clone();
                        requests.spawn(async move {
                            let result = dispatch(&node, other).await;
                            let _ = out.send(ServerFrame::Reply { id, result }).await;
                        }.in_current_span());
                    }
                }
            }
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    if stopping {
        // The daemon stops: requests in flight are answered first (bounded by the stop).
        while requests.join_next().await.is_some() {}
    } else {
        requests.shutdown().await;
    }
    drop(sessions);
    drop(out);
    let _ = write_task.await;
    result
}

/// Counts an open API connection until dropped.
struct ConnectionCount(Node);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.metrics().api_connections.dec();
    }
}

async fn forward_events(mut rx: broadcast::Receiver<Event>, agents: Vec<String>, out: mpsc::Sender<ServerFrame>) {
    loop {
        let event = match rx.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::Lagged { missed },
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let wanted = match &event {
            Event::Message(m) => agents.is_empty() || agents.contains(&m.agent),
            Event::Delivered { from, .. } | Event::DeadLetter { from, .. } => {
                agents.is_empty() || agents.contains(from)
            }
            Event::WakerReplaced { agent, .. } => agents.is_empty() || agents.contains(agent),
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
        Request::Inbox(InboxQuery {
            agent,
            all,
            limit,
            mark_read,
            skip_notified,
            after,
            max_bytes,
        }) => {
            let q = crate::store::InboxQuery {
                limit: limit.max(1) as usize,
                all,
                skip_notified,
                mark_read,
                after: after.as_deref().map(crate::api::page::parse_inbox_cursor).transpose()?,
            };
            Response::Inbox(node.inbox(&agent, q, max_bytes).await?)
        }
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
        Request::History(HistoryQuery {
            agent,
            target,
            grep,
            limit,
            before,
            after,
            forward,
            max_bytes,
        }) => {
            let cursor = |c: Option<String>| c.as_deref().map(crate::api::page::parse_history_cursor).transpose();
            let filter = crate::store::HistoryFilter {
                grep,
                limit: limit.max(1) as usize,
                before: cursor(before)?,
                after: cursor(after)?,
                forward,
                ..Default::default()
            };
            Response::History(
                node.history(agent.as_deref(), target.as_deref(), filter, max_bytes)
                    .await?,
            )
        }
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
        Request::Register { .. }
        | Request::Claim { .. }
        | Request::Watch { .. }
        | Request::Waker { .. }
        | Request::Shutdown => {
            return Err(ApiError::new(ErrorCode::Internal, "handled by the connection"));
        }
    })
}
