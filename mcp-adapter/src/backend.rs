//! How the adapter reaches the mesh: the [`Backend`] trait, and [`DaemonBackend`], the real
//! one (the local daemon's API, started on demand, reconnected after it restarts).

use std::future::Future;
use std::path::PathBuf;

use mesh_node::api::client::{Client, ClientError};
use mesh_node::api::{AgentSpec, AgentView, Event, LocalApi, PublishRequest, Request, Response, SendRequest};
use mesh_node::home::Home;
use tokio::sync::{Mutex, mpsc};

/// What the MCP server needs from the mesh: the local API's typed calls ([`LocalApi`],
/// whose `call` sends one request), and a session's attachment. Tests implement it with a
/// fake.
pub trait Backend: LocalApi + Send + Sync + 'static {
    /// Claims the session's agent (see `Request::Claim`) on a connection that keeps it
    /// online, and returns the agent and its event stream. The stream ends when the
    /// connection does; the caller attaches again (with `exact`) to resume.
    fn attach(
        &self,
        spec: AgentSpec,
        exact: bool,
    ) -> impl Future<Output = Result<(AgentView, mpsc::Receiver<Event>), ClientError>> + Send;
}

/// The local daemon, started if none runs.
pub struct DaemonBackend {
    home: Home,
    exe: PathBuf,
    client: Mutex<Option<Client>>,
}

impl DaemonBackend {
    /// A backend for the daemon of `home`; `exe` is the `mesh` binary used to start one.
    pub fn new(home: Home, exe: PathBuf) -> Self {
        Self {
            home,
            exe,
            client: Mutex::new(None),
        }
    }

    /// Drops a broken connection, unless another caller already replaced it.
    async fn forget(&self, broken: &Client) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| c.same_connection(broken)) {
            *slot = None;
        }
    }

    /// The current connection, or a new one (starting the daemon if needed).
    async fn client(&self) -> Result<Client, ClientError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let c =
            mesh_node::daemon::connect_or_spawn(&self.home, &self.exe, concat!("mesh-mcp/", env!("CARGO_PKG_VERSION")))
                .await
                .map_err(|e| match e {
                    mesh_node::daemon::DaemonError::StoppedByUser => ClientError::StoppedByUser,
                    e => ClientError::Unavailable(e.to_string()),
                })?;
        *slot = Some(c.clone());
        Ok(c)
    }
}

impl LocalApi for DaemonBackend {
    async fn call(&self, request: Request) -> Result<Response, ClientError> {
        // A daemon that went away (restarted, crashed) is reconnected to, or started again,
        // and the request is sent again when that cannot do it twice (sends and publishes
        // carry their message id, so the daemon recognises a repeat).
        let client = self.client().await?;
        let first = client.call(request.clone()).await;
        if first.as_ref().is_err_and(ClientError::connection_lost) {
            self.forget(&client).await;
        }
        let answer = match first {
            Err(e) if e.may_repeat(&request) => self.client().await?.call(request.clone()).await,
            Err(ClientError::Closed) => Err(ClientError::OutcomeUnknown(
                "the connection to the agentmesh daemon broke before it answered; this may or may not have been done: check history before trying again"
                    .into(),
            )),
            other => other,
        };
        match (answer, &request) {
            // Gone again: the agent must not send a second copy under a new id unknowingly.
            (
                Err(ClientError::NotSent | ClientError::Closed),
                Request::Send(SendRequest { id: Some(id), .. }) | Request::Publish(PublishRequest { id: Some(id), .. }),
            ) => Err(ClientError::OutcomeUnknown(format!(
                "the agentmesh daemon went away twice before answering; message {id} may or may not have been sent: check the history tool for it before sending it again"
            ))),
            (answer, _) => answer,
        }
    }
}

impl Backend for DaemonBackend {
    async fn attach(&self, spec: AgentSpec, exact: bool) -> Result<(AgentView, mpsc::Receiver<Event>), ClientError> {
        let client = self.client().await?;
        let claimed = client.claim(spec, exact).await;
        if claimed.as_ref().is_err_and(ClientError::connection_lost) {
            self.forget(&client).await;
        }
        let view = claimed?;
        // A connection hands out its event stream once; the stream only ends with the
        // connection, and a closed connection is replaced by `client()`.
        let events = client.watch(vec![view.name.clone()]).await?;
        Ok((view, events))
    }
}
