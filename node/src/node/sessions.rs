//! Agents and their sessions: registering and claiming names, holding an agent for an MCP session or a waker, summaries, and the announcement that tells the mesh.

use super::*;

impl Node {
    /// A command created a local agent on the fly: tell the mesh.
    pub(super) fn agent_created(&self, created: bool) {
        if created {
            self.0.announce.notify_one();
        }
    }

    pub(crate) async fn build_announcement(&self) -> Result<Announcement, ServiceError> {
        let agents = self.0.store.read(ops::agents).await?;
        let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let agents = agents
            .into_iter()
            .take(wire::MAX_AGENTS_PER_NODE)
            .map(|r| {
                let s = sessions.get(&r.name);
                AgentInfo {
                    online: s.is_some(),
                    delivery: s.map(Session::delivery).unwrap_or_default(),
                    name: r.name,
                    kind: r.kind,
                    cwd: r.cwd.filter(|c| c.len() <= wire::MAX_PATH_BYTES),
                    repo: r.repo.filter(|c| c.len() <= wire::MAX_PATH_BYTES),
                    summary: r.summary,
                    last_seen_ms: if s.is_some() { now_ms() } else { r.last_seen_ms },
                }
            })
            .collect();
        Ok(Announcement {
            node_name: self.0.name.clone(),
            version: AGENT_VERSION.to_string(),
            seq: now_ms(),
            heartbeat_ms: self.0.config.presence.heartbeat.as_millis() as u64,
            agents,
        })
    }

    pub(super) async fn announce_now(&self) {
        match self.build_announcement().await {
            Ok(a) => {
                let _ = self.0.net.set_announcement(a).await;
                // Watchers on this node hear of its own agents' changes too.
                self.emit(Event::NodeUpdated {
                    peer: self.0.peer_id,
                    name: self.0.name.to_string(),
                });
            }
            Err(e) => tracing::warn!(error = %e, "cannot build announcement"),
        }
    }

    /// Takes a name for a session and attaches to it; see `Request::Claim`.
    pub async fn claim(&self, spec: AgentSpec, exact: bool) -> Result<(AgentView, SessionGuard), ServiceError> {
        let base = AgentName::new(&spec.name)?;
        // One claim at a time, so two sessions starting together get different names.
        let _one = self.0.claim_lock.lock().await;
        let name = if exact {
            base
        } else {
            let agents = self.0.store.read(ops::agents).await?;
            // Held by an attached session (a waker alone keeps the name for its session).
            let live: Vec<AgentName> = {
                let sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
                sessions
                    .iter()
                    .filter(|(_, s)| s.attached > 0)
                    .map(|(n, _)| n.clone())
                    .collect()
            };
            let mut chosen = None;
            for i in 1..=MAX_NAME_SUFFIX {
                let cand = if i == 1 {
                    base.clone()
                } else {
                    let suffix = format!("-{i}");
                    let mut stem = base.as_str().to_string();
                    stem.truncate(crate::ids::MAX_NAME_LEN - suffix.len());
                    AgentName::new(format!("{stem}{suffix}"))?
                };
                if live.contains(&cand) {
                    continue;
                }
                // Another directory's mailbox is not ours to take over.
                let theirs = agents
                    .iter()
                    .any(|a| a.name == cand && a.cwd.is_some() && spec.cwd.is_some() && a.cwd != spec.cwd);
                if !theirs {
                    chosen = Some(cand);
                    break;
                }
            }
            chosen.ok_or_else(|| ServiceError::busy(format!("no free name like {base:?}")))?
        };
        let spec = AgentSpec {
            name: name.to_string(),
            ..spec
        };
        let (view, guard) = self.register(spec, true).await?;
        let guard = guard.ok_or_else(|| ServiceError::internal("claim without a session"))?;
        Ok((view, guard))
    }

    /// Creates or updates a local agent; with `attach`, returns a guard keeping it online.
    pub async fn register(
        &self,
        spec: AgentSpec,
        attach: bool,
    ) -> Result<(AgentView, Option<SessionGuard>), ServiceError> {
        let name = AgentName::new(&spec.name)?;
        let max = self.0.config.limits.max_summary_bytes;
        if let Some(s) = &spec.summary
            && s.len() > max
        {
            return Err(bad_len("the summary", s.len(), max, "limits.max_summary_bytes"));
        }
        let kind = normalize_kind(&spec.kind);
        for (what, v) in [("cwd", &spec.cwd), ("repo", &spec.repo)] {
            if v.as_ref().is_some_and(|p| p.len() > wire::MAX_PATH_BYTES) {
                return Err(ServiceError::invalid(format!(
                    "{what} is longer than {} bytes",
                    wire::MAX_PATH_BYTES
                )));
            }
        }
        let now = now_ms();
        let n = name.clone();
        let rec = self
            .0
            .store
            .write("register", move |t| {
                let mut r = ops::ensure_agent(t, &n, &kind, now)?;
                r.kind = kind;
                r.cwd = spec.cwd;
                r.repo = spec.repo;
                r.branch = spec.branch;
                if spec.summary.is_some() {
                    r.summary = spec.summary;
                }
                ops::put_agent(t, &r)?;
                Ok(r)
            })
            .await?;
        let guard = attach.then(|| {
            let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let s = sessions.entry(name.clone()).or_default();
            s.attached += 1;
            if spec.push {
                s.push += 1;
            }
            if spec.pid.is_some() {
                s.pid = spec.pid;
            }
            SessionGuard {
                node: self.clone(),
                agent: name.clone(),
                hold: Hold::Session { push: spec.push },
            }
        });
        self.0.announce.notify_one();
        Ok((self.local_view(&rec).await?, guard))
    }

    /// The human's page is open as local agent `agent` (the user's own): it counts as an
    /// attached session that is pushed to (the page shows new mail live) for as long as the
    /// guard lives, so the mesh sees the user online while a page is open.
    pub async fn hold_page(&self, agent: &AgentName) -> Result<SessionGuard, ServiceError> {
        let agents = self.0.store.read(ops::agents).await?;
        if !agents.iter().any(|a| &a.name == agent) {
            return Err(ServiceError::not_found(format!("no local agent named {agent}")));
        }
        {
            let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let s = sessions.entry(agent.clone()).or_default();
            s.attached += 1;
            s.push += 1;
        }
        self.0.announce.notify_one();
        Ok(SessionGuard {
            node: self.clone(),
            agent: agent.clone(),
            hold: Hold::Session { push: true },
        })
    }

    /// Makes the caller a waker of local agent `agent` (a hook or plugin that wakes the
    /// agent's client when mail arrives) for as long as the guard lives: the agent counts as
    /// [`Reception::Woken`] meanwhile. The newest waker acts: older ones are told to stand
    /// down (`Event::WakerReplaced`), since their session moved on (a new thread, a
    /// restarted client). Returns the waker's generation.
    pub async fn hold_waker(&self, agent: &str) -> Result<(SessionGuard, u64), ServiceError> {
        let name = AgentName::new(agent)?;
        let agents = self.0.store.read(ops::agents).await?;
        if !agents.iter().any(|a| a.name == name) {
            return Err(ServiceError::not_found(format!("no local agent named {name}")));
        }
        let generation = {
            let mut sessions = self.0.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let s = sessions.entry(name.clone()).or_default();
            s.wakers += 1;
            s.waker_generation += 1;
            s.waker_generation
        };
        let _ = self.0.events.send(Event::WakerReplaced {
            agent: name.to_string(),
            generation,
        });
        self.0.announce.notify_one();
        Ok((
            SessionGuard {
                node: self.clone(),
                agent: name,
                hold: Hold::Waker,
            },
            generation,
        ))
    }

    /// Sets or clears an agent's summary.
    pub async fn set_summary(&self, agent: &str, summary: Option<String>) -> Result<AgentView, ServiceError> {
        let name = AgentName::new(agent)?;
        let max = self.0.config.limits.max_summary_bytes;
        if let Some(s) = &summary
            && s.len() > max
        {
            return Err(bad_len("the summary", s.len(), max, "limits.max_summary_bytes"));
        }
        let now = now_ms();
        let rec = self
            .0
            .store
            .write("summary", move |t| {
                if !ops::agent_exists(t, &name)? {
                    return Err(store::StoreError::UnknownAgent(name.to_string()));
                }
                let mut r = ops::ensure_agent(t, &name, "other", now)?;
                r.summary = summary.filter(|s| !s.trim().is_empty());
                ops::put_agent(t, &r)?;
                Ok(r)
            })
            .await?;
        self.0.announce.notify_one();
        self.local_view(&rec).await
    }

    pub(super) async fn local_view(&self, r: &AgentRecord) -> Result<AgentView, ServiceError> {
        let name = r.name.clone();
        let unread = self.0.store.read(move |t| ops::unread_count(t, name.as_str())).await?;
        Ok(AgentView {
            address: format!("{}@{}", r.name, self.0.name),
            name: r.name.to_string(),
            node_name: self.0.name.to_string(),
            node: self.0.peer_id,
            local: true,
            kind: r.kind.clone(),
            cwd: r.cwd.clone(),
            repo: r.repo.clone(),
            summary: r.summary.clone(),
            reception: self.local_reception(&r.name),
            last_seen_ms: r.last_seen_ms,
            unread: Some(unread),
            pid: self
                .0
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.name)
                .and_then(|s| s.pid),
        })
    }
}
