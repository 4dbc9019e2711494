//! Permission requests of agent sessions (Claude Code's `claude/channel/permission`): asked
//! by a session's adapter, listed on the page and by `mesh permissions`, answered once
//! (the first answer wins) from the page, `mesh approve` / `mesh deny` or an agent named in
//! `[permissions] answer_agents`, and the answer handed back to the asking session as an
//! event.
//!
//! Across the mesh: a node with `[permissions] receive` asks each member it is admitted to
//! for its requests ([`PermissionRelay::Watch`]); a member whose `[permissions] send_to`
//! names it sends the pending ones and every new one, and how each was settled. An answer given there goes to the asking
//! node, which keeps the first and tells every node it sent the request to.
//!
//! Kept in memory: a request lives as long as its session waits for it, at most
//! [`PERMISSION_TTL`] (a prompt answered in the terminal is never reported back by Claude
//! Code, so one that nobody answers here expires). [`Permissions`] is the plain record,
//! fed the time; the node applies it and does the talking.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::InboundRequestId;

use super::Node;
use crate::api::{Event, PermissionAnswer, PermissionAsk, PermissionView};
use crate::error::ServiceError;
use crate::ids::{AgentName, MessageId, now_ms};
use crate::wire::{
    DmRequest, DmResponse, MAX_PERMISSION_ID, MAX_PERMISSION_TEXT, MAX_PERMISSION_TOOL, Outcome, PermissionRelay,
    PermissionVerdict, Rejection, RelayedAsk,
};

/// How long a request waits for an answer here.
pub const PERMISSION_TTL: Duration = Duration::from_secs(30 * 60);
/// Requests waiting at most (the oldest expires first).
pub const MAX_PERMISSIONS: usize = 64;
/// Longest tool name and answerer kept (characters).
pub const MAX_TOOL_CHARS: usize = MAX_PERMISSION_TOOL;
/// Longest description and input preview kept (characters).
pub const MAX_TEXT_CHARS: usize = MAX_PERMISSION_TEXT;
/// Longest answerer kept (characters): what an answering node says (at most
/// [`MAX_TOOL_CHARS`]), `" on "`, and that node's label.
pub const MAX_BY_CHARS: usize = 256;

/// Times a watching node asks a member that is not ready for it (250 ms, 500 ms, ... apart:
/// about 16 s in all).
const WATCH_ATTEMPTS: u32 = 12;
/// What a member says to a `Watch` that came before the watcher's name.
const WATCH_TOO_EARLY: &str = "this node has not heard your name yet; ask again";

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn check_id(id: &str) -> Result<&str, ServiceError> {
    let id = id.trim();
    if id.is_empty() || id.len() > MAX_PERMISSION_ID || !id.chars().all(|c| c.is_ascii_lowercase()) {
        return Err(ServiceError::invalid(format!(
            "a permission request id is 1 to {MAX_PERMISSION_ID} lowercase letters, not {id:?}"
        )));
    }
    Ok(id)
}

/// A request: asked on this node (`None`) or relayed by a member, by agent and id.
pub type PermissionKey = (Option<PeerId>, AgentName, String);

#[derive(Debug)]
struct Entry {
    view: PermissionView,
    /// Watching members this node's request was sent to (they may answer it).
    told: BTreeSet<PeerId>,
}

/// The requests this node knows and the members watching its own.
#[derive(Debug, Default)]
pub struct Permissions {
    by_key: BTreeMap<PermissionKey, Entry>,
    watchers: BTreeSet<PeerId>,
    /// Members we asked for theirs (and that did not refuse).
    watching: BTreeSet<PeerId>,
    /// Relayed requests settled before they were listed here, and when (ms).
    settled_early: BTreeMap<PermissionKey, u64>,
}

impl Permissions {
    /// Lists a request; past [`MAX_PERMISSIONS`] of the same origin (this node, or one
    /// member), that origin's oldest goes: a member's flood never pushes out another's or
    /// this node's own.
    fn insert(&mut self, key: PermissionKey, view: PermissionView) -> PermissionView {
        let origin = key.0;
        while self.by_key.keys().filter(|k| k.0 == origin).count() >= MAX_PERMISSIONS {
            let oldest = self
                .by_key
                .iter()
                .filter(|(k, _)| k.0 == origin)
                .min_by_key(|(_, e)| e.view.asked_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.by_key.remove(&k),
                None => break,
            };
        }
        self.by_key.insert(
            key,
            Entry {
                view: view.clone(),
                told: BTreeSet::new(),
            },
        );
        view
    }

    /// A new request from local `agent`'s session (asked again: the same request, unchanged).
    pub fn ask(&mut self, agent: &AgentName, ask: &PermissionAsk, now_ms: u64) -> Result<PermissionView, ServiceError> {
        let id = check_id(&ask.request_id)?;
        self.expire(now_ms);
        let key = (None, agent.clone(), id.to_string());
        if let Some(e) = self.by_key.get(&key) {
            return Ok(e.view.clone());
        }
        let view = PermissionView {
            id: id.to_string(),
            agent: agent.to_string(),
            tool: cut(&ask.tool_name, MAX_TOOL_CHARS),
            description: cut(&ask.description, MAX_TEXT_CHARS),
            input_preview: cut(&ask.input_preview, MAX_TEXT_CHARS),
            asked_ms: now_ms,
            answer: None,
        };
        Ok(self.insert(key, view))
    }

    /// We asked member `origin` for its requests: taken from it from now on.
    pub fn watching(&mut self, origin: PeerId) {
        self.watching.insert(origin);
    }

    /// Member `origin` refused to send us its requests.
    pub fn not_watching(&mut self, origin: &PeerId) {
        self.watching.remove(origin);
    }

    /// A request relayed by member `origin` (labelled `node`): the view when it is new here.
    /// Taken only from a member that agreed to send them (see [`Permissions::watching`]).
    pub fn relayed(
        &mut self,
        origin: PeerId,
        node: &str,
        r: &RelayedAsk,
        now_ms: u64,
    ) -> Result<Option<PermissionView>, ServiceError> {
        if !self.watching.contains(&origin) {
            return Err(ServiceError::denied(
                "this node did not ask yours for permission requests",
            ));
        }
        let id = check_id(&r.id)?;
        self.expire(now_ms);
        let key = (Some(origin), r.agent.clone(), id.to_string());
        if self.by_key.contains_key(&key) || self.settled_early.remove(&key).is_some() {
            return Ok(None);
        }
        let view = PermissionView {
            id: id.to_string(),
            agent: format!("{}@{node}", r.agent),
            tool: crate::text::field(&r.tool, MAX_TOOL_CHARS),
            description: cut(&r.description, MAX_TEXT_CHARS),
            input_preview: cut(&r.input_preview, MAX_TEXT_CHARS),
            asked_ms: now_ms,
            answer: None,
        };
        Ok(Some(self.insert(key, view)))
    }

    /// The requests still waiting, oldest first.
    pub fn pending(&mut self, now_ms: u64) -> Vec<PermissionView> {
        self.expire(now_ms);
        let mut list: Vec<PermissionView> = self
            .by_key
            .values()
            .filter(|e| e.view.answer.is_none())
            .map(|e| e.view.clone())
            .collect();
        list.sort_by_key(|p| p.asked_ms);
        list
    }

    /// The request `id` names: a request id, or `agent:id` when several agents have one of
    /// that id (`agent@node:id` for another node's).
    pub fn find(&mut self, id: &str, now_ms: u64) -> Result<PermissionKey, ServiceError> {
        self.expire(now_ms);
        let (agent, rid) = match id.split_once(':') {
            Some((a, r)) => (Some(a), r),
            None => (None, id),
        };
        let keys: Vec<&PermissionKey> = self
            .by_key
            .iter()
            .filter(|((_, _, r), e)| r == rid && agent.is_none_or(|x| x == e.view.agent))
            .map(|(k, _)| k)
            .collect();
        match keys.as_slice() {
            [] => Err(ServiceError::not_found(format!(
                "no permission request {id:?} is waiting here (answered in the session itself, or expired); see mesh permissions"
            ))),
            [k] => Ok((*k).clone()),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .filter_map(|k| self.by_key.get(*k))
                    .map(|e| format!("{}:{}", e.view.agent, e.view.id))
                    .collect();
                Err(ServiceError::ambiguous(format!(
                    "several agents have a request {id:?}: answer one of {}",
                    names.join(", ")
                )))
            }
        }
    }

    /// The request `key`, as listed now.
    pub fn view(&self, key: &PermissionKey) -> Option<PermissionView> {
        self.by_key.get(key).map(|e| e.view.clone())
    }

    /// Ok if `key` is listed and not answered yet; else says what became of it.
    pub fn unanswered(&self, key: &PermissionKey) -> Result<(), ServiceError> {
        let Some(e) = self.by_key.get(key) else {
            return Err(ServiceError::not_found(format!(
                "no permission request {:?} is waiting here (expired?)",
                key.2
            )));
        };
        match &e.view.answer {
            None => Ok(()),
            Some(a) => Err(ServiceError::invalid(format!(
                "permission request {} was already {} by {}",
                e.view.id,
                if a.allow { "allowed" } else { "denied" },
                a.by
            ))),
        }
    }

    /// Records the answer to `key`: the first answer wins; a later one is refused saying
    /// what the first was. Returns the request and the members it was sent to.
    pub fn settle(
        &mut self,
        key: &PermissionKey,
        allow: bool,
        by: &str,
        now_ms: u64,
    ) -> Result<(PermissionView, Vec<PeerId>), ServiceError> {
        self.unanswered(key)?;
        let Some(e) = self.by_key.get_mut(key) else {
            return Err(ServiceError::not_found(format!("no permission request {:?}", key.2)));
        };
        e.view.answer = Some(PermissionAnswer {
            allow,
            by: cut(by, MAX_BY_CHARS),
            at_ms: now_ms,
        });
        Ok((e.view.clone(), e.told.iter().copied().collect()))
    }

    /// Answers the request `id` names (see [`Permissions::find`] and [`Permissions::settle`]).
    #[cfg(test)]
    pub fn answer(&mut self, id: &str, allow: bool, by: &str, now_ms: u64) -> Result<PermissionView, ServiceError> {
        let key = self.find(id, now_ms)?;
        Ok(self.settle(&key, allow, by, now_ms)?.0)
    }

    /// An answer from member `peer` to a request of ours: taken only if the request was
    /// sent to that member.
    pub fn answer_from(
        &mut self,
        peer: PeerId,
        v: &PermissionVerdict,
        by: &str,
        now_ms: u64,
    ) -> Result<(PermissionView, Vec<PeerId>), ServiceError> {
        self.expire(now_ms);
        let key = (None, v.agent.clone(), v.id.clone());
        if !self.by_key.get(&key).is_some_and(|e| e.told.contains(&peer)) {
            return Err(ServiceError::not_found(format!(
                "no permission request {}:{} of this node is waiting for your node (expired?)",
                v.agent, v.id
            )));
        }
        self.settle(&key, v.allow, by, now_ms)
    }

    /// Member `origin` says how its request was settled: the view if this changed it.
    pub fn settled_by(&mut self, origin: PeerId, v: &PermissionVerdict, now_ms: u64) -> Option<PermissionView> {
        let key = (Some(origin), v.agent.clone(), v.id.clone());
        if !self.by_key.contains_key(&key) {
            // It overtook its `Asked` (two separate sends): that one, arriving late, is
            // not listed as waiting.
            if self.watching.contains(&origin) && check_id(&v.id).is_ok() {
                self.settled_early
                    .retain(|_, at| at.saturating_add(PERMISSION_TTL.as_millis() as u64) > now_ms);
                // At most as many per member as it may have listed.
                if self.settled_early.keys().filter(|k| k.0 == Some(origin)).count() < MAX_PERMISSIONS {
                    self.settled_early.insert(key, now_ms);
                }
            }
            return None;
        }
        let by = crate::text::field(&v.by, MAX_BY_CHARS);
        self.settle(&key, v.allow, &by, now_ms).ok().map(|(view, _)| view)
    }

    /// Member `peer` watches this node's requests: the waiting ones, to send it now.
    pub fn watch(&mut self, peer: PeerId, now_ms: u64) -> Vec<RelayedAsk> {
        self.watchers.insert(peer);
        self.expire(now_ms);
        self.by_key
            .iter()
            .filter(|((origin, _, _), e)| origin.is_none() && e.view.answer.is_none())
            .map(|((_, agent, id), e)| RelayedAsk {
                agent: agent.clone(),
                id: id.clone(),
                tool: e.view.tool.clone(),
                description: e.view.description.clone(),
                input_preview: e.view.input_preview.clone(),
            })
            .collect()
    }

    /// Member `peer` no longer takes this node's requests.
    pub fn unwatch(&mut self, peer: &PeerId) {
        self.watchers.remove(peer);
        for e in self.by_key.values_mut() {
            e.told.remove(peer);
        }
    }

    /// The members watching this node's requests.
    pub fn watchers(&self) -> Vec<PeerId> {
        self.watchers.iter().copied().collect()
    }

    /// The request of local `agent` with `id` is being sent to `peer` (who may answer it).
    pub fn tell(&mut self, agent: &AgentName, id: &str, peer: PeerId) {
        if let Some(e) = self.by_key.get_mut(&(None, agent.clone(), id.to_string())) {
            e.told.insert(peer);
        }
    }

    fn expire(&mut self, now_ms: u64) {
        let ttl = PERMISSION_TTL.as_millis() as u64;
        self.by_key.retain(|_, e| e.view.asked_ms.saturating_add(ttl) > now_ms);
    }
}

fn relayed_ask(agent: &AgentName, view: &PermissionView) -> RelayedAsk {
    RelayedAsk {
        agent: agent.clone(),
        id: view.id.clone(),
        tool: view.tool.clone(),
        description: view.description.clone(),
        input_preview: view.input_preview.clone(),
    }
}

/// The single outcome a relay message is answered with.
fn outcome(o: Outcome) -> DmResponse {
    DmResponse::Outcomes(vec![(MessageId([0; 16]), o)])
}

impl Node {
    fn permissions_lock(&self) -> std::sync::MutexGuard<'_, Permissions> {
        self.0.permissions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session of local agent `agent` asks for permission: listed until answered, told to
    /// watchers (`Event::Permission`) and to the members watching this node's requests.
    pub async fn ask_permission(&self, agent: &str, ask: PermissionAsk) -> Result<PermissionView, ServiceError> {
        let agent = AgentName::new(agent)?;
        if !self.local_agent_names().await?.contains(&agent) {
            return Err(ServiceError::not_found(format!("no agent {agent:?} on this node")));
        }
        let (view, watchers) = {
            let mut p = self.permissions_lock();
            let view = p.ask(&agent, &ask, now_ms())?;
            (view, p.watchers())
        };
        tracing::info!(agent = %agent, id = %view.id, tool = %view.tool, "a session asks for permission");
        self.emit(Event::Permission(view.clone()));
        if view.answer.is_none() {
            for peer in watchers {
                self.relay_ask(peer, relayed_ask(&agent, &view));
            }
        }
        Ok(view)
    }

    /// Sends one of our requests to watching member `peer`, which may answer it from then
    /// on; a member that refuses it stops being sent any.
    fn relay_ask(&self, peer: PeerId, ask: RelayedAsk) {
        self.permissions_lock().tell(&ask.agent, &ask.id, peer);
        let node = self.clone();
        tokio::spawn(async move {
            let id = format!("{}:{}", ask.agent, ask.id);
            match node
                .0
                .net
                .send_dm(peer, DmRequest::Permission(PermissionRelay::Asked(ask)))
                .await
            {
                Ok(DmResponse::Outcomes(o)) if matches!(o.first(), Some((_, Outcome::Rejected(_)))) => {
                    tracing::info!(%peer, "a member no longer takes our permission requests");
                    node.permissions_lock().unwatch(&peer);
                }
                Ok(DmResponse::Outcomes(_)) => tracing::debug!(%peer, %id, "permission request relayed"),
                Ok(DmResponse::Unavailable(why)) => {
                    tracing::info!(%peer, %id, %why, "cannot relay a permission request")
                }
                Err(e) => tracing::info!(%peer, %id, error = %e, "cannot relay a permission request"),
            }
        });
    }

    /// Tells the members a request of ours was sent to how it was settled.
    fn relay_settled(&self, view: &PermissionView, told: Vec<PeerId>) {
        let (Ok(agent), Some(a)) = (AgentName::new(&view.agent), &view.answer) else {
            return;
        };
        for peer in told {
            let verdict = PermissionVerdict {
                agent: agent.clone(),
                id: view.id.clone(),
                allow: a.allow,
                by: a.by.clone(),
            };
            let net = self.0.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net
                    .send_dm(peer, DmRequest::Permission(PermissionRelay::Settled(verdict)))
                    .await
                {
                    tracing::debug!(%peer, error = %e, "cannot tell a member how a permission request was settled");
                }
            });
        }
    }

    /// Whether `[permissions] send_to` names member `peer` (by PeerId or name, or `*`);
    /// `None` while that depends on a name not heard yet (its announcement comes with the
    /// connection).
    fn sends_permissions_to(&self, peer: &PeerId) -> Option<bool> {
        let to = &self.0.config.permissions.send_to;
        let id = peer.to_string();
        if to.iter().any(|s| s.trim() == "*" || s.trim() == id) {
            return Some(true);
        }
        let names = to.iter().filter(|s| !s.trim().is_empty()).count();
        match self.dir().name_of(peer) {
            Some(name) => Some(to.iter().any(|s| s.trim() == name.as_str())),
            None if names > 0 => None,
            None => Some(false),
        }
    }

    /// With `[permissions] receive`: asks a member just admitted for its requests.
    pub(super) fn watch_permissions(&self, peer: PeerId) {
        if !self.0.config.permissions.receive {
            return;
        }
        // Its requests are taken from the moment we ask (they may come before its answer).
        self.permissions_lock().watching(peer);
        let node = self.clone();
        let net = self.0.net.clone();
        let stop = self.0.shutdown.clone();
        tokio::spawn(async move {
            // The member may not have heard our name yet: it says so, and we ask again.
            for attempt in 1..=WATCH_ATTEMPTS {
                match net.send_dm(peer, DmRequest::Permission(PermissionRelay::Watch)).await {
                    Ok(DmResponse::Outcomes(o)) if matches!(o.first(), Some((_, Outcome::Rejected(_)))) => {
                        tracing::debug!(%peer, "a member does not send us its permission requests");
                        node.permissions_lock().not_watching(&peer);
                    }
                    Ok(DmResponse::Outcomes(_)) => tracing::debug!(%peer, "watching a member's permission requests"),
                    Ok(DmResponse::Unavailable(why)) if attempt < WATCH_ATTEMPTS => {
                        tracing::debug!(%peer, %why, attempt, "asking a member for its permission requests again");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))) => continue,
                        }
                    }
                    Ok(DmResponse::Unavailable(why)) => {
                        tracing::info!(%peer, %why, "cannot watch a member's permission requests")
                    }
                    Err(e) => tracing::info!(%peer, error = %e, "cannot watch a member's permission requests"),
                }
                return;
            }
        });
    }

    /// The permission requests waiting here. With `agent`: as that local agent, which must
    /// be named in `[permissions] answer_agents`.
    pub fn permissions(&self, agent: Option<&str>) -> Result<Vec<PermissionView>, ServiceError> {
        if let Some(a) = agent {
            self.may_answer(a)?;
        }
        Ok(self.permissions_lock().pending(now_ms()))
    }

    fn may_answer(&self, agent: &str) -> Result<AgentName, ServiceError> {
        let agent = AgentName::new(agent)?;
        if !self.0.config.permissions.answer_agents.contains(&agent) {
            return Err(ServiceError::denied(format!(
                "agent {agent} may not answer permission requests: the user names the agents that may in [permissions] answer_agents of this node's config"
            )));
        }
        Ok(agent)
    }

    /// Answers a permission request (the first answer wins) by `by`, or as local `agent`
    /// (named in `[permissions] answer_agents`). One of this node's: settled here, the
    /// asking session hears it through `Event::Permission`, the members it was sent to are
    /// told. Another node's: the answer goes to that node, which says whether it won.
    pub async fn answer_permission(
        &self,
        id: &str,
        allow: bool,
        by: &str,
        agent: Option<&str>,
    ) -> Result<PermissionView, ServiceError> {
        let answering = agent.map(|a| self.may_answer(a)).transpose()?;
        let by = match &answering {
            Some(a) => format!("{a} (agent)"),
            None => crate::text::field(by.trim(), MAX_TOOL_CHARS),
        };
        let key = {
            let mut p = self.permissions_lock();
            let key = p.find(id.trim(), now_ms())?;
            p.unanswered(&key)?;
            key
        };
        if key.0.is_none() && answering.as_ref() == Some(&key.1) {
            return Err(ServiceError::denied(format!(
                "agent {} may not answer its own session's permission requests",
                key.1
            )));
        }
        if let Some(origin) = key.0 {
            self.answer_remote(origin, &key, allow, &by).await?;
        }
        let settled = self.permissions_lock().settle(&key, allow, &by, now_ms());
        let (view, told) = match settled {
            Ok(s) => s,
            // Its node took our answer, and told us so before its reply came back.
            Err(e) if key.0.is_some() => match self.permissions_lock().view(&key) {
                Some(v) if v.answer.as_ref().is_some_and(|a| a.allow == allow) => return Ok(v),
                _ => return Err(e),
            },
            Err(e) => return Err(e),
        };
        tracing::info!(agent = %view.agent, id = %view.id, allow, by, "a permission request was answered");
        self.emit(Event::Permission(view.clone()));
        if key.0.is_none() {
            self.relay_settled(&view, told);
        }
        Ok(view)
    }

    /// Sends our answer to another node's request to that node: Ok when it won there.
    async fn answer_remote(
        &self,
        origin: PeerId,
        key: &PermissionKey,
        allow: bool,
        by: &str,
    ) -> Result<(), ServiceError> {
        let label = self.node_label(&origin, None);
        let verdict = PermissionVerdict {
            agent: key.1.clone(),
            id: key.2.clone(),
            allow,
            by: by.to_string(),
        };
        let request = DmRequest::Permission(PermissionRelay::Answer(verdict));
        match self.0.net.send_dm(origin, request).await {
            Ok(DmResponse::Outcomes(o)) => match o.into_iter().next().map(|(_, o)| o) {
                Some(Outcome::Stored | Outcome::Duplicate) => Ok(()),
                Some(Outcome::Rejected(Rejection::Invalid(why))) => Err(ServiceError::invalid(format!(
                    "node {label}: {}",
                    crate::text::field(&why, MAX_TEXT_CHARS)
                ))),
                Some(Outcome::Rejected(r)) => Err(ServiceError::invalid(format!("node {label}: {r}"))),
                None => Err(ServiceError::unavailable(format!("node {label} did not answer"))),
            },
            Ok(DmResponse::Unavailable(why)) => Err(ServiceError::unavailable(format!(
                "node {label}, where the request was asked, cannot take the answer now: {}",
                crate::text::field(&why, MAX_TEXT_CHARS)
            ))),
            Err(e) => Err(ServiceError::unavailable(format!(
                "cannot reach node {label}, where the request was asked: {e}"
            ))),
        }
    }

    /// A relay message from member `peer`, answered with one outcome.
    pub(super) fn on_permission_relay(&self, peer: PeerId, request: InboundRequestId, relay: PermissionRelay) {
        let refused = |why: String| outcome(Outcome::Rejected(Rejection::Invalid(why)));
        let response = if self.0.shutdown.is_cancelled() {
            DmResponse::Unavailable("the node is shutting down".into())
        } else if let Err(wait) =
            self.0
                .peer_rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(&peer, 1, Instant::now())
        {
            DmResponse::Unavailable(format!("rate limited; retry in {:.1} s", wait.as_secs_f64()))
        } else {
            match relay {
                PermissionRelay::Watch if self.sends_permissions_to(&peer).is_none() => {
                    DmResponse::Unavailable(WATCH_TOO_EARLY.into())
                }
                PermissionRelay::Watch if self.sends_permissions_to(&peer) == Some(false) => {
                    tracing::info!(%peer, "a member asked for our permission requests; not in [permissions] send_to");
                    refused(
                        "this node does not send its permission requests to yours (its [permissions] send_to)".into(),
                    )
                }
                PermissionRelay::Watch => {
                    let waiting = self.permissions_lock().watch(peer, now_ms());
                    tracing::info!(%peer, waiting = waiting.len(), "a member watches our permission requests");
                    for ask in waiting {
                        self.relay_ask(peer, ask);
                    }
                    outcome(Outcome::Stored)
                }
                PermissionRelay::Asked(_) if !self.0.config.permissions.receive => {
                    refused("this node does not receive other nodes' permission requests".into())
                }
                PermissionRelay::Asked(ask) => {
                    let label = self.node_label(&peer, None);
                    match self.permissions_lock().relayed(peer, &label, &ask, now_ms()) {
                        Ok(Some(view)) => {
                            tracing::info!(%peer, agent = %view.agent, id = %view.id, "a member's session asks for permission");
                            self.emit(Event::Permission(view));
                            outcome(Outcome::Stored)
                        }
                        Ok(None) => outcome(Outcome::Duplicate),
                        Err(e) => refused(e.to_string()),
                    }
                }
                PermissionRelay::Settled(v) => match self.permissions_lock().settled_by(peer, &v, now_ms()) {
                    Some(view) => {
                        self.emit(Event::Permission(view));
                        outcome(Outcome::Stored)
                    }
                    None => outcome(Outcome::Duplicate),
                },
                PermissionRelay::Answer(v) => {
                    let by = format!(
                        "{} on {}",
                        crate::text::field(&v.by, MAX_TOOL_CHARS),
                        self.node_label(&peer, None)
                    );
                    let settled = self.permissions_lock().answer_from(peer, &v, &by, now_ms());
                    match settled {
                        Ok((view, told)) => {
                            tracing::info!(%peer, agent = %view.agent, id = %view.id, allow = v.allow, "a member answered a permission request");
                            self.emit(Event::Permission(view.clone()));
                            self.relay_settled(&view, told);
                            outcome(Outcome::Stored)
                        }
                        Err(e) => refused(e.to_string()),
                    }
                }
            }
        };
        let net = self.0.net.clone();
        tokio::spawn(async move {
            let _ = net.respond_dm(request, response).await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn ask(id: &str) -> PermissionAsk {
        PermissionAsk {
            request_id: id.into(),
            tool_name: "Bash".into(),
            description: "Run the tests".into(),
            input_preview: "{\"command\":\"cargo test\"}".into(),
        }
    }

    #[test]
    fn the_first_answer_wins_and_a_later_one_says_what_it_was() {
        let mut p = Permissions::default();
        let alice = AgentName::new("alice").unwrap();
        let v = p.ask(&alice, &ask("tbxkq"), 10).unwrap();
        assert_eq!(
            (v.id.as_str(), v.agent.as_str(), v.tool.as_str()),
            ("tbxkq", "alice", "Bash")
        );
        assert_eq!(
            p.ask(&alice, &ask("tbxkq"), 11).unwrap().asked_ms,
            10,
            "asked again: the same"
        );
        assert_eq!(p.pending(12).len(), 1);
        let answered = p.answer("tbxkq", true, "tester (page)", 20).unwrap();
        assert!(answered.answer.as_ref().unwrap().allow);
        let late = p.answer("tbxkq", false, "tester (cli)", 21).unwrap_err().to_string();
        assert!(late.contains("already allowed by tester (page)"), "{late}");
        assert!(p.pending(22).is_empty());
        assert!(p.answer("zzzzz", true, "x", 22).is_err());
    }

    #[test]
    fn the_same_id_from_two_agents_is_answered_by_naming_the_agent() {
        let mut p = Permissions::default();
        let (a, b) = (AgentName::new("alice").unwrap(), AgentName::new("bob").unwrap());
        p.ask(&a, &ask("abcde"), 1).unwrap();
        p.ask(&b, &ask("abcde"), 2).unwrap();
        let e = p.answer("abcde", true, "t", 3).unwrap_err().to_string();
        assert!(e.contains("alice:abcde") && e.contains("bob:abcde"), "{e}");
        assert_eq!(p.answer("bob:abcde", false, "t", 3).unwrap().agent, "bob");
        assert_eq!(p.pending(4).len(), 1);
    }

    #[test]
    fn only_a_member_the_request_was_sent_to_may_answer_it_and_relayed_ones_are_labelled() {
        let mut p = Permissions::default();
        let alice = AgentName::new("alice").unwrap();
        let (watcher, stranger) = (PeerId::random(), PeerId::random());
        p.ask(&alice, &ask("abcde"), 1).unwrap();
        let waiting = p.watch(watcher, 2);
        assert_eq!(waiting.len(), 1, "the waiting request goes to a new watcher");
        p.tell(&alice, "abcde", watcher);
        let verdict = PermissionVerdict {
            agent: alice.clone(),
            id: "abcde".into(),
            allow: true,
            by: "bob".into(),
        };
        assert!(
            p.answer_from(stranger, &verdict, "bob on x", 3).is_err(),
            "not sent to it"
        );
        let (won, told) = p.answer_from(watcher, &verdict, "bob on beta", 3).unwrap();
        assert_eq!(won.answer.unwrap().by, "bob on beta");
        assert_eq!(told, vec![watcher]);
        assert!(p.answer_from(watcher, &verdict, "bob on beta", 4).is_err(), "once");

        // On the watching side: labelled with the sending node, settled by it only.
        let mut w = Permissions::default();
        let origin = PeerId::random();
        assert!(w.relayed(origin, "alpha", &waiting[0], 5).is_err(), "not asked for");
        w.watching(origin);
        let v = w.relayed(origin, "alpha", &waiting[0], 5).unwrap().unwrap();
        assert_eq!(v.agent, "alice@alpha");
        assert!(
            w.relayed(origin, "alpha", &waiting[0], 6).unwrap().is_none(),
            "listed once"
        );
        assert!(
            w.settled_by(PeerId::random(), &verdict, 7).is_none(),
            "another node cannot settle it"
        );
        assert_eq!(w.find("alice@alpha:abcde", 7).unwrap().0, Some(origin));
        assert!(w.settled_by(origin, &verdict, 7).is_some());
        assert!(w.pending(8).is_empty());

        // Settled before it was relayed (the two sends crossed): never listed as waiting.
        let late = RelayedAsk {
            id: "later".into(),
            ..waiting[0].clone()
        };
        let early = PermissionVerdict {
            id: "later".into(),
            ..verdict.clone()
        };
        assert!(w.settled_by(origin, &early, 9).is_none());
        assert!(w.relayed(origin, "alpha", &late, 10).unwrap().is_none());
        assert!(w.pending(11).is_empty());
    }

    #[test]
    fn a_members_flood_never_pushes_out_this_nodes_requests() {
        let mut p = Permissions::default();
        let alice = AgentName::new("alice").unwrap();
        p.ask(&alice, &ask("mine"), 1).unwrap();
        let flooder = PeerId::random();
        p.watching(flooder);
        for i in 0..(MAX_PERMISSIONS as u64 * 2) {
            let id: String = format!("{i:04}")
                .chars()
                .map(|c| (b'a' + (c as u8 - b'0')) as char)
                .collect();
            let r = RelayedAsk {
                agent: alice.clone(),
                id,
                tool: "Bash\u{1b}[2J".into(),
                description: "d".into(),
                input_preview: "i".into(),
            };
            p.relayed(flooder, "evil", &r, 2 + i).unwrap();
        }
        let left = p.pending(1000);
        assert!(left.iter().any(|v| v.id == "mine"), "ours stays");
        assert_eq!(left.iter().filter(|v| v.agent == "alice@evil").count(), MAX_PERMISSIONS);
        assert!(
            left.iter().all(|v| !v.tool.contains('\u{1b}')),
            "control characters cleaned"
        );
    }

    #[test]
    fn bad_ids_are_refused_and_old_or_excess_requests_go() {
        let mut p = Permissions::default();
        let a = AgentName::new("alice").unwrap();
        for bad in ["", "ABCDE", "ab cd", "a1", &"x".repeat(17)] {
            assert!(p.ask(&a, &ask(bad), 1).is_err(), "{bad:?}");
        }
        let long = PermissionAsk {
            description: "d".repeat(10_000),
            ..ask("longd")
        };
        assert_eq!(p.ask(&a, &long, 1).unwrap().description.chars().count(), MAX_TEXT_CHARS);
        let ttl = PERMISSION_TTL.as_millis() as u64;
        assert!(p.pending(1 + ttl).is_empty(), "expired");
        let ids: Vec<String> = (0..MAX_PERMISSIONS + 1)
            .map(|i| {
                let s: String = format!("{i:03}")
                    .chars()
                    .map(|c| (b'a' + (c as u8 - b'0')) as char)
                    .collect();
                s
            })
            .collect();
        for (i, id) in ids.iter().enumerate() {
            p.ask(&a, &ask(id), 10_000_000 + i as u64).unwrap();
        }
        let left = p.pending(10_000_000 + ids.len() as u64);
        assert_eq!(left.len(), MAX_PERMISSIONS);
        assert_eq!(left[0].id, ids[1], "the oldest went");
    }
}
