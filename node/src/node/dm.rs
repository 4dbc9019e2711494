//! Direct messages: sending (checks, the outbox, waiting for the outcome), inboxes and outboxes, and committing the batches other nodes deliver.

use tracing::Instrument;

use super::*;

impl Node {
    pub(super) fn check_text(&self, text: &str, topic: bool) -> Result<(), ServiceError> {
        if text.trim().is_empty() {
            return Err(ServiceError::invalid("the message text is empty"));
        }
        let (max, setting) = if topic {
            (
                self.0.config.limits.max_topic_message_bytes,
                "limits.max_topic_message_bytes",
            )
        } else {
            (self.0.config.limits.max_message_bytes, "limits.max_message_bytes")
        };
        if text.len() > max {
            return Err(bad_len("the message text", text.len(), max, setting));
        }
        Ok(())
    }

    pub(super) async fn check_reply_to(&self, reply_to: Option<MessageId>) -> Result<(), ServiceError> {
        if let Some(id) = reply_to {
            let known = self.0.store.read(move |r| ops::message_known(r, &id)).await?;
            if !known {
                return Err(ServiceError::not_found(format!(
                    "--reply-to {id}: no message with that id is stored on this node"
                )));
            }
        }
        Ok(())
    }

    pub(super) async fn local_agent_names(&self) -> Result<Vec<AgentName>, ServiceError> {
        Ok(self
            .0
            .store
            .read(ops::agents)
            .await?
            .into_iter()
            .map(|a| a.name)
            .collect())
    }

    /// `mesh send`. With a client-chosen `id`, a repeat of the same request (after a lost
    /// connection or a daemon restart) answers with the first one's receipt.
    pub async fn send(
        &self,
        from: &str,
        to: &str,
        text: String,
        reply_to: Option<MessageId>,
        id: Option<MessageId>,
    ) -> Result<SendReceipt, ServiceError> {
        let from = AgentName::new(from)?;
        let addr: Address = to.parse()?;
        self.check_text(&text, false)?;
        self.check_reply_to(reply_to).await?;
        self.check_send_rate_unless_known(&from, id)?;
        let locals = self.local_agent_names().await?;
        let target = self.resolve_for_send(&addr, &locals)?;
        let now = now_ms();
        let chosen = id.is_some();
        let msg = |to: AgentName| WireMessage {
            id: id.unwrap_or_default(),
            from: from.clone(),
            to,
            sent_at_ms: now,
            reply_to,
            text,
        };
        match target {
            Target::Local(agent) => self.send_here(msg(agent), chosen, now).await,
            Target::Remote { peer, node_name, agent } => self.send_to(peer, node_name, msg(agent), chosen, now).await,
        }
    }

    /// A message to an agent of this node: into its inbox at once (or, for a repeat, what
    /// became of the first one).
    async fn send_here(&self, msg: WireMessage, chosen: bool, now: u64) -> Result<SendReceipt, ServiceError> {
        let (id, agent, from) = (msg.id, msg.to.clone(), msg.from.clone());
        let (me, my_name) = (self.0.peer_id, self.0.name.clone());
        let stored = self
            .0
            .store
            .write("send", move |t| {
                if chosen && let Some(prev) = ops::sent_before(t, &msg, &me)? {
                    return Ok(Err(prev));
                }
                let created = ops::ensure_agent_new(t, &from, "human", now)?.1;
                Ok(Ok((created, ops::send_local(t, msg, me, Some(my_name), now)?)))
            })
            .await?;
        let status = match stored {
            Ok((created, (_, inbox))) => {
                self.agent_created(created);
                self.0.metrics.dm_sent.inc();
                self.0.metrics.dm_delivered.inc();
                self.emit(Event::Message(self.message_view(&inbox)));
                SendStatus::Delivered
            }
            Err(prev) => settled_status(&prev.state).unwrap_or(SendStatus::Delivered),
        };
        Ok(SendReceipt {
            id,
            to: format!("{agent}@{}", self.0.name),
            to_node: self.0.peer_id,
            status,
            reception: self.local_reception(&agent),
        })
    }

    /// A message to an agent of another node: into the outbox, then the outcome if it comes
    /// within `send_wait` (a repeat answers with what became of the first one).
    async fn send_to(
        &self,
        peer: PeerId,
        node_name: Option<NodeName>,
        msg: WireMessage,
        chosen: bool,
        now: u64,
    ) -> Result<SendReceipt, ServiceError> {
        let (id, agent, from) = (msg.id, msg.to.clone(), msg.from.clone());
        let to_label = format!("{agent}@{}", self.node_label(&peer, node_name.as_ref()));
        let mut events = self.0.events.subscribe();
        let stored = self
            .0
            .store
            .write("send", move |t| {
                if chosen && let Some(prev) = ops::sent_before(t, &msg, &peer)? {
                    return Ok(Err(prev));
                }
                let created = ops::ensure_agent_new(t, &from, "human", now)?.1;
                ops::enqueue(t, msg, peer, node_name, now)?;
                Ok(Ok(created))
            })
            .await?;
        let settled = match stored {
            Ok(created) => {
                self.agent_created(created);
                self.0.metrics.dm_sent.inc();
                None
            }
            // A repeat: answer with what became of the first one.
            Err(prev) => settled_status(&prev.state),
        };
        let reception = {
            let dir = self.dir();
            let info = dir
                .get(&peer)
                .and_then(|e| e.announcement.as_ref())
                .and_then(|a| a.agents.iter().find(|x| x.name == agent).cloned());
            match info {
                Some(i) => dir.reception(&peer, &i, Instant::now()),
                None => Reception::Offline,
            }
        };
        let status = match settled {
            Some(s) => s,
            None => {
                self.kick(peer);
                // Wait for the ack (up to `send_wait`) when the node is connected, or heard
                // from through the mesh since we lost it (the courier is dialing it); not for
                // a node that is away.
                let reachable = self.0.net.is_connected(&peer) || self.dir().reachable(&peer, Instant::now());
                let status = if reachable {
                    self.wait_outcome(&mut events, id).await
                } else {
                    None
                };
                match status {
                    Some(s) => s,
                    None => self.outbox_status(id, &peer).await?,
                }
            }
        };
        Ok(SendReceipt {
            id,
            to: to_label,
            to_node: peer,
            status,
            reception,
        })
    }

    pub(super) async fn wait_outcome(
        &self,
        events: &mut broadcast::Receiver<Event>,
        id: MessageId,
    ) -> Option<SendStatus> {
        let deadline = tokio::time::Instant::now() + self.0.config.delivery.send_wait;
        loop {
            // A stop answers at once: the courier is finishing, not starting deliveries, and
            // the client is better told "queued" now than cut off at the drain deadline.
            let next = tokio::select! {
                _ = self.0.shutdown.cancelled() => return None,
                next = tokio::time::timeout_at(deadline, events.recv()) => next,
            };
            match next {
                Err(_) => return None,
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return None,
                Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                Ok(Ok(Event::Delivered { id: got, .. })) if got == id => return Some(SendStatus::Delivered),
                Ok(Ok(Event::DeadLetter { id: got, reason, .. })) if got == id => {
                    return Some(SendStatus::Rejected { reason });
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    pub(super) async fn outbox_status(&self, id: MessageId, peer: &PeerId) -> Result<SendStatus, ServiceError> {
        let e = self.0.store.read(move |r| ops::outbox_by_id(r, &id)).await?;
        Ok(match e.and_then(|e| settled_status(&e.state)) {
            Some(settled) => settled,
            None => SendStatus::Queued {
                reason: if self.0.net.is_connected(peer) {
                    "the recipient node is connected; waiting for its acknowledgement".into()
                } else {
                    format!(
                        "the recipient node is not reachable now; it will be delivered when it connects (within {})",
                        crate::ids::human_duration(self.0.config.delivery.ttl)
                    )
                },
            },
        })
    }

    /// `mesh inbox`: one page of `agent`'s inbox (see [`Request::Inbox`]), filled up to
    /// `max_bytes` and what one API frame holds. With `q.mark_read`, exactly the returned
    /// messages are marked read, in the store write that selects them.
    ///
    /// [`Request::Inbox`]: crate::api::Request::Inbox
    pub async fn inbox(
        &self,
        agent: &str,
        q: store::InboxQuery,
        max_bytes: Option<u32>,
    ) -> Result<InboxPage, ServiceError> {
        let agent = AgentName::new(agent)?;
        let budget = self.page_budget(max_bytes);
        let (node, a) = (self.clone(), agent.clone());
        let mut shown = self.shown();
        let taken = self
            .0
            .store
            .write("inbox", move |t| {
                let taken = node.fill_inbox(budget, |admit| ops::take_inbox(t, &a, q, admit, &mut shown))?;
                Ok((taken, shown))
            })
            .await;
        let (page, fill) = match taken {
            Ok((p, shown)) => {
                self.after_shown(shown);
                p
            }
            // Mail stays readable when the disk is full: shown without being marked read
            // (it shows again later; nothing is lost).
            Err(e) if e.is_storage() => {
                tracing::warn!(error = %e, "cannot mark messages read; listing them unchanged");
                let node = self.clone();
                self.0
                    .store
                    .read(move |r| node.fill_inbox(budget, |admit| ops::peek_inbox(r, &agent, q, admit)))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let next = page
            .entries
            .last()
            .filter(|_| page.remaining > 0)
            .map(|e| crate::api::page::inbox_cursor(e.seq));
        Ok(InboxPage {
            messages: fill.finish()?,
            remaining: page.remaining,
            next,
        })
    }

    pub(super) fn page_budget(&self, max_bytes: Option<u32>) -> PageBudget {
        PageBudget::new(self.0.config.limits.max_api_frame_bytes, max_bytes, MAX_LIST as usize)
    }

    /// Runs `op` with an admission test that takes entries while their views fit `budget`;
    /// returns its page and the views of the entries it holds.
    pub(super) fn fill_inbox<P>(
        &self,
        budget: PageBudget,
        op: impl FnOnce(ops::Admit<'_, InboxEntry>) -> Result<P, store::StoreError>,
    ) -> Result<(P, PageFill<MessageView>), store::StoreError> {
        let mut fill = PageFill::new(budget);
        let page = op(&mut |e: &InboxEntry| fill.offer(e.id, self.message_view(e)))?;
        Ok((page, fill))
    }

    /// Moves unread messages to `notified` (pushed to a session) or `read` (shown).
    pub async fn mark(&self, agent: &str, ids: Vec<MessageId>, state: ReadState) -> Result<u32, ServiceError> {
        let agent = AgentName::new(agent)?;
        let mut shown = self.shown();
        let (n, shown) = self
            .0
            .store
            .write("mark", move |t| {
                let n = ops::mark_ids(t, &agent, &ids, state, &mut shown)?;
                Ok((n, shown))
            })
            .await?;
        self.after_shown(shown);
        Ok(n as u32)
    }

    /// Unread counts of an agent: (never pushed, pushed but not yet shown).
    pub async fn counts(&self, agent: &str) -> Result<(u64, u64), ServiceError> {
        let agent = AgentName::new(agent)?;
        let a = agent.clone();
        if self.0.store.read(move |r| ops::agent(r, a.as_str())).await?.is_none() {
            return Err(ServiceError::not_found(format!("no agent {agent:?} on this node")));
        }
        Ok(self
            .0
            .store
            .read(move |r| ops::unread_counts(r, agent.as_str()))
            .await?)
    }

    /// `mesh outbox`.
    pub async fn outbox(
        &self,
        agent: Option<&str>,
        delivered: bool,
        limit: u32,
    ) -> Result<Vec<OutboxView>, ServiceError> {
        let agent = agent.map(AgentName::new).transpose()?;
        let limit = limit.clamp(1, MAX_LIST) as usize;
        let entries = self
            .0
            .store
            .read(move |r| ops::outbox(r, agent.as_ref(), delivered, limit))
            .await?;
        Ok(entries
            .iter()
            .map(|e| OutboxView {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
                text: e.msg.text.clone(),
                created_ms: e.created_ms,
                state: match &e.state {
                    OutState::Pending => "pending",
                    OutState::Delivered { .. } => "delivered",
                    OutState::Read { .. } => "read",
                    OutState::Dead { .. } => "dead",
                }
                .into(),
                read_at_ms: read_at(&e.state),
                reason: match &e.state {
                    OutState::Dead { reason, .. } => Some(reason.clone()),
                    _ => e.last_error.clone(),
                },
                attempts: e.attempts,
            })
            .collect())
    }

    pub(super) async fn on_inbound_dms(
        &self,
        peer: PeerId,
        request: libp2p::request_response::InboundRequestId,
        messages: Vec<WireMessage>,
    ) {
        let mut messages = messages;
        let permit = match self.admit_inbound(peer, &mut messages) {
            Ok(permit) => permit,
            Err(refusal) => {
                let _ = self.0.net.respond_dm(request, refusal).await;
                return;
            }
        };
        let node = self.clone();
        let from_name = self.dir().name_of(&peer);
        let span = tracing::debug_span!(
            "receive",
            %peer,
            ids = %crate::ids::id_list(messages.iter().map(|m| m.id))
        );
        tokio::spawn(
            async move {
                let response = node.commit_inbound(peer, from_name, messages).await;
                let _ = node.0.net.respond_dm(request, response).await;
                drop(permit);
            }
            .instrument(span),
        );
    }

    /// Whether an inbound batch from `peer` is taken now: not while stopping, within the
    /// inbound slots (the permit is held until it is answered), and cut to `peer`'s
    /// allowance. A refusal is the answer to send.
    fn admit_inbound(
        &self,
        peer: PeerId,
        messages: &mut Vec<WireMessage>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, DmResponse> {
        if self.0.shutdown.is_cancelled() {
            // Stopping: what is in flight finishes, nothing new is taken.
            return Err(DmResponse::Unavailable("the node is shutting down".into()));
        }
        let Ok(permit) = self.0.inbound.clone().try_acquire_owned() else {
            self.0.metrics.dm_throttled.inc();
            return Err(DmResponse::Unavailable("recipient node is busy".into()));
        };
        // A node over its allowance gets the prefix there is room for now; the courier
        // sends the rest later, in order.
        let limited = {
            let mut r = self.0.peer_rate.lock().unwrap_or_else(|e| e.into_inner());
            r.take_up_to(&peer, messages.len() as u32, Instant::now())
        };
        if let Ok(k) = limited
            && (k as usize) < messages.len()
        {
            self.0.metrics.dm_throttled.inc();
            messages.truncate(k as usize);
        }
        if let Err(wait) = limited {
            self.0.metrics.dm_throttled.inc();
            drop(permit);
            tracing::info!(%peer, "a node sends faster than limits.peer_messages_per_minute; asking it to wait");
            return Err(DmResponse::Unavailable(format!(
                "rate limited: more than {} messages a minute from your node; retry in {:.1} s",
                self.0.config.limits.peer_messages_per_minute,
                wait.as_secs_f64()
            )));
        }
        Ok(permit)
    }

    /// Commits an inbound batch from `peer` (known here as `from_name`) and tells what came of each message (or that
    /// nothing was stored: the sender retries).
    async fn commit_inbound(
        &self,
        peer: PeerId,
        from_name: Option<NodeName>,
        messages: Vec<WireMessage>,
    ) -> DmResponse {
        let max = self.0.config.limits.max_message_bytes;
        let now = now_ms();
        let result = self
            .0
            .store
            .write("receive", move |t| ops::accept(t, peer, from_name, messages, max, now))
            .await;
        match result {
            Ok((outcomes, stored)) => {
                self.received(peer, &outcomes, &stored);
                DmResponse::Outcomes(outcomes)
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "cannot store inbound messages; sender will retry");
                DmResponse::Unavailable(e.to_string())
            }
        }
    }

    /// After an inbound batch was committed: counted, its senders learned, each stored
    /// message announced to local sessions.
    fn received(&self, peer: PeerId, outcomes: &[(MessageId, crate::wire::Outcome)], stored: &[InboxEntry]) {
        let m = &self.0.metrics;
        m.dm_received.inc_by(stored.len() as u64);
        for (_, o) in outcomes {
            match o {
                crate::wire::Outcome::Duplicate => {
                    m.dm_duplicates.inc();
                }
                crate::wire::Outcome::Rejected(_) => {
                    m.dm_rejected.inc();
                }
                crate::wire::Outcome::Stored => {}
            }
        }
        {
            // The sending node vouches for its agents: a reply can go back at once, even
            // before its next announcement says so.
            let mut dir = self.dir();
            for e in stored {
                dir.learn_agent(peer, &e.from.agent, e.received_at_ms);
            }
        }
        for e in stored {
            self.emit(Event::Message(self.message_view(e)));
        }
    }

    pub(crate) fn settled_event(&self, e: &OutboxEntry) -> Option<Event> {
        match &e.state {
            OutState::Delivered { .. } => Some(Event::Delivered {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
            }),
            OutState::Dead { reason, .. } => Some(Event::DeadLetter {
                id: e.msg.id,
                from: e.msg.from.to_string(),
                to: self.outbox_to(e),
                reason: reason.clone(),
            }),
            // Told as `Event::Read` when the receipt comes.
            OutState::Read { .. } | OutState::Pending => None,
        }
    }

    pub(crate) fn emit_settled(&self, entries: &[OutboxEntry]) {
        for e in entries {
            match e.state {
                OutState::Delivered { .. } => self.0.metrics.dm_delivered.inc(),
                OutState::Dead { .. } => self.0.metrics.dm_dead.inc(),
                OutState::Read { .. } | OutState::Pending => 0,
            };
            if let Some(ev) = self.settled_event(e) {
                self.emit(ev);
            }
        }
    }
}

impl Node {
    /// Where a direct message to `addr` goes. A member never met (in the mesh's member
    /// list, absent from the directory: nobody has told this node about it yet) is named
    /// by its full PeerId; its agents are unknown, so its node decides (as for a node that
    /// has not announced). The network finds it (mesh DHT, public network rendezvous).
    fn resolve_for_send(&self, addr: &Address, locals: &[AgentName]) -> Result<Target, ServiceError> {
        let dir = self.dir();
        match (dir.resolve(addr, &self.0.name, locals), &addr.node) {
            (Err(ServiceError::NotFound(_)), Some(crate::ids::NodeRef::Peer(peer)))
                if dir.get(peer).is_none() && *peer != self.0.peer_id && self.mesh().is_member(peer) =>
            {
                Ok(Target::Remote {
                    peer: *peer,
                    node_name: None,
                    agent: addr.agent.clone(),
                })
            }
            (result, _) => result,
        }
    }
}
