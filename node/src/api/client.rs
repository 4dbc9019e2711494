//! The client side of the local API, shared by the CLI and the MCP adapter.
//!
//! ```no_run
//! # async fn demo() -> Result<(), mesh_node::api::client::ClientError> {
//! use mesh_node::api::LocalApi;
//! use mesh_node::api::client::Client;
//! use mesh_node::home::Home;
//!
//! let home = Home::resolve(None).expect("home");
//! let client = Client::connect(&home, "example").await?;
//! for a in client.agents().await? {
//!     println!("{} ({:?})", a.address, a.reception);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::{
    API_VERSION, ApiError, ClientFrame, ClientHello, Event, HELLO_FRAME_LIMIT, InboxQuery, MAGIC, NodeIdentity,
    Request, Response, ServerFrame, ServerHello,
};
use crate::home::Home;

/// Events buffered for a client that does not read them.
pub const EVENT_BUFFER: usize = 1024;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("no agentmesh daemon is running for home {home} (no answer on {socket}); start one with: mesh up --detach")]
    NotRunning {
        /// The home.
        home: PathBuf,
        /// The socket path.
        socket: PathBuf,
    },
    /// The socket exists but cannot be used.
    #[error("cannot connect to the daemon at {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The daemon refused the connection.
    #[error("the daemon refused the connection: {0}")]
    Refused(String),
    /// The daemon went away after the request was sent: it may or may not have been done.
    #[error("the daemon closed the connection (is it shutting down?)")]
    Closed,
    /// The connection was already gone: the request was not sent.
    #[error("the connection to the daemon is closed; the request was not sent")]
    NotSent,
    /// Unexpected bytes.
    #[error("local API protocol error: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No daemon could be started or reached.
    #[error("the agentmesh daemon is not available: {0}")]
    Unavailable(String),
    /// The request was sent and no answer came back (the daemon went away and did not
    /// return, or went away again): it may or may not have been done. Says what to check
    /// before doing it again.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// The node was stopped with `mesh down`, so it is not started again on demand.
    #[error("the agentmesh node was stopped with `mesh down`; run `mesh up` to start it again")]
    StoppedByUser,
}

impl ClientError {
    /// The one rule for repeating `request` after this error, for every client: a request
    /// that was not sent may always be sent (again on a fresh connection); one that was
    /// sent when the connection broke only if doing it twice is doing it once
    /// ([`Request::is_repeatable`]).
    pub fn may_repeat(&self, request: &Request) -> bool {
        match self {
            ClientError::NotSent => true,
            ClientError::Closed => request.is_repeatable(),
            _ => false,
        }
    }

    /// The connection is gone (the daemon went away): a new one is needed either way.
    pub fn connection_lost(&self) -> bool {
        matches!(self, ClientError::NotSent | ClientError::Closed)
    }
}

type Pending = HashMap<u64, oneshot::Sender<Result<Response, ApiError>>>;

struct Shared {
    writer: Mutex<FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>>,
    pending: std::sync::Mutex<Option<Pending>>,
    next_id: AtomicU64,
    reader: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The last handle is gone: stop reading, so the socket closes and the daemon sees
        // this client leave (its attached agents go offline).
        if let Some(r) = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take() {
            r.abort();
        }
    }
}

/// A connection to the daemon. Requests may be issued concurrently from clones.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    node: NodeIdentity,
    max_frame: usize,
    events: Arc<std::sync::Mutex<Option<mpsc::Receiver<Event>>>>,
}

impl Client {
    /// Connects to the daemon of `home`. `name` identifies the client in logs.
    pub async fn connect(home: &Home, name: &str) -> Result<Self, ClientError> {
        Self::connect_socket(&home.socket_path(), home.path(), name).await
    }

    /// Connects to a socket path directly.
    pub async fn connect_socket(socket: &Path, home: &Path, name: &str) -> Result<Self, ClientError> {
        // A socket that is missing, or that accepts and hangs up before the hello (its
        // daemon is dying: killed, or stopping), is as good as no daemon running.
        let gone = || ClientError::NotRunning {
            home: home.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        let stream = UnixStream::connect(socket).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => gone(),
            std::io::ErrorKind::PermissionDenied => ClientError::Refused(format!(
                "only the user who owns {} may use its daemon (permission denied on {})",
                home.display(),
                socket.display()
            )),
            _ => ClientError::Connect {
                path: socket.to_path_buf(),
                source: e,
            },
        })?;
        let (r, w) = stream.into_split();
        let codec = || {
            LengthDelimitedCodec::builder()
                .max_frame_length(HELLO_FRAME_LIMIT)
                .new_codec()
        };
        let mut reader = FramedRead::new(r, codec());
        let mut writer = FramedWrite::new(w, codec());
        let (node, max_frame) = hello(&mut reader, &mut writer, name).await?.ok_or_else(gone)?;
        reader
            .decoder_mut()
            .set_max_frame_length(max_frame.max(HELLO_FRAME_LIMIT));
        writer.encoder_mut().set_max_frame_length(max_frame);

        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            pending: std::sync::Mutex::new(Some(HashMap::new())),
            next_id: AtomicU64::new(1),
            reader: std::sync::Mutex::new(None),
        });
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let task = tokio::spawn(read_frames(reader, Arc::downgrade(&shared), events_tx));
        *shared.reader.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Ok(Self {
            shared,
            node,
            max_frame,
            events: Arc::new(std::sync::Mutex::new(Some(events_rx))),
        })
    }

    /// Whether two handles share one connection.
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// True once the daemon has closed the connection (or it broke).
    pub fn is_closed(&self) -> bool {
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// The daemon's identity.
    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    /// `agent`'s inbox (unread messages, or `all`), oldest first, every page of it: the
    /// cursor of each answer asks for the next (so that pages not marked read are not read
    /// again). With `mark_read`, each page is marked read as it is returned.
    pub async fn inbox_pages(
        &self,
        agent: &str,
        all: bool,
        mark_read: bool,
    ) -> Result<Vec<super::MessageView>, ClientError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = super::LocalApi::inbox(
                self,
                InboxQuery {
                    agent: agent.into(),
                    all,
                    limit: u32::MAX,
                    mark_read,
                    after: after.take(),
                    ..InboxQuery::default()
                },
            )
            .await?;
            out.extend(page.messages);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Sends a request and waits for its answer.
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes =
            postcard::to_allocvec(&ClientFrame { id, request }).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if bytes.len() > self.max_frame {
            return Err(ClientError::Api(ApiError::new(
                super::ErrorCode::TooLarge,
                format!(
                    "the request is {} bytes, over the daemon's API frame limit of {} bytes (limits.max_api_frame_bytes)",
                    bytes.len(),
                    self.max_frame
                ),
            )));
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.as_mut() {
                Some(p) => p.insert(id, tx),
                None => return Err(ClientError::NotSent),
            };
        }
        {
            let mut w = self.shared.writer.lock().await;
            if w.send(Bytes::from(bytes)).await.is_err() {
                if let Some(p) = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    p.remove(&id);
                }
                return Err(ClientError::NotSent);
            }
        }
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(ClientError::Api(e)),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Takes the event stream (once). Events arrive after a `Watch` request.
    pub fn take_events(&self) -> Option<mpsc::Receiver<Event>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Starts the event stream for `agents` (empty: all) and returns it.
    pub async fn watch(&self, agents: Vec<String>) -> Result<mpsc::Receiver<Event>, ClientError> {
        let rx = self
            .take_events()
            .ok_or_else(|| ClientError::Protocol("the event stream was already taken".into()))?;
        self.call(Request::Watch { agents }).await?;
        Ok(rx)
    }
}

type Reader = FramedRead<tokio::net::unix::OwnedReadHalf, LengthDelimitedCodec>;
type Writer = FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>;

/// The hello exchange: the daemon's identity and frame limit, or `None` when it hung up
/// first (it is going away).
async fn hello(
    reader: &mut Reader,
    writer: &mut Writer,
    name: &str,
) -> Result<Option<(NodeIdentity, usize)>, ClientError> {
    let hello = ClientHello {
        magic: MAGIC,
        version: API_VERSION,
        client: name.to_string(),
    };
    let bytes = postcard::to_allocvec(&hello).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if writer.send(Bytes::from(bytes)).await.is_err() {
        return Ok(None);
    }
    let answer = match reader.next().await {
        None => return Ok(None),
        Some(Err(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            return Ok(None);
        }
        Some(Err(e)) => return Err(ClientError::Protocol(e.to_string())),
        Some(Ok(a)) => a,
    };
    match postcard::from_bytes::<ServerHello>(&answer) {
        Ok(ServerHello::Welcome { node, max_frame, .. }) => Ok(Some((node, max_frame as usize))),
        Ok(ServerHello::Refused { reason }) => Err(ClientError::Refused(reason)),
        Err(e) => Err(ClientError::Protocol(format!("unexpected hello answer: {e}"))),
    }
}

/// The connection's reader: replies to their waiting callers, events to the event stream
/// (counted as lagged when the stream is full). When the connection ends, every caller
/// still waiting is failed.
async fn read_frames(mut reader: Reader, shared: std::sync::Weak<Shared>, events: mpsc::Sender<Event>) {
    let mut lagged: u64 = 0;
    while let Some(Ok(bytes)) = reader.next().await {
        match postcard::from_bytes::<ServerFrame>(&bytes) {
            Ok(ServerFrame::Reply { id, result }) => {
                let Some(shared) = shared.upgrade() else { break };
                let tx = shared
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_mut()
                    .and_then(|p| p.remove(&id));
                match tx {
                    Some(tx) => {
                        let _ = tx.send(result);
                    }
                    None if id == 0 => {
                        tracing::warn!(?result, "the daemon reported a connection error");
                    }
                    None => {}
                }
            }
            Ok(ServerFrame::Event(ev)) => {
                if lagged > 0 && events.try_send(Event::Lagged { missed: lagged }).is_ok() {
                    lagged = 0;
                }
                if events.try_send(ev).is_err() {
                    lagged += 1;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from the daemon");
                break;
            }
        }
    }
    if let Some(shared) = shared.upgrade() {
        shared.pending.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl super::LocalApi for Client {
    fn call(&self, request: Request) -> impl std::future::Future<Output = Result<Response, ClientError>> + Send {
        Client::call(self, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SendRequest;
    use crate::ids::MessageId;

    #[test]
    fn only_what_cannot_happen_twice_is_repeated_after_a_broken_connection() {
        let send = |id| {
            Request::Send(SendRequest {
                from: "a".into(),
                to: "b@n".into(),
                text: "hi".into(),
                reply_to: None,
                id,
            })
        };
        // Never sent: always again.
        assert!(ClientError::NotSent.may_repeat(&send(None)));
        // Sent, answer lost: again only if the daemon recognises the repeat.
        assert!(ClientError::Closed.may_repeat(&send(Some(MessageId::new()))));
        assert!(!ClientError::Closed.may_repeat(&send(None)));
        assert!(ClientError::Closed.may_repeat(&Request::Status));
        // An answer, or a refusal, is final.
        assert!(!ClientError::Refused("other version".into()).may_repeat(&Request::Status));
        assert!(ClientError::Closed.connection_lost() && !ClientError::Refused(String::new()).connection_lost());
    }
}
