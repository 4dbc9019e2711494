//! Topics: subscriptions, publishing, history, topic messages from gossip (a dropped one handed to catch-up), re-publishing what reached nobody.

use super::*;

impl Node {
    /// `mesh subscribe`.
    pub async fn subscribe(&self, agent: &str, topic: &str) -> Result<(String, bool), ServiceError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        let now = now_ms();
        let t = topic.clone();
        let (created, new) = self
            .0
            .store
            .write("subscribe", move |tx| {
                let created = ops::ensure_agent_new(tx, &agent, "human", now)?.1;
                Ok((created, ops::subscribe(tx, &agent, &t, now)?))
            })
            .await?;
        self.agent_created(created);
        self.0.net.subscribe(topic.clone()).await.map_err(unavailable)?;
        Ok((topic.to_string(), new))
    }

    /// `mesh unsubscribe`.
    pub async fn unsubscribe(&self, agent: &str, topic: &str) -> Result<(String, bool), ServiceError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        let t = topic.clone();
        let (was, still) = self
            .0
            .store
            .write("unsubscribe", move |tx| {
                let was = ops::unsubscribe(tx, &agent, &t)?;
                Ok((was, ops::topic_has_subscribers(tx, &t)?))
            })
            .await?;
        if !still {
            self.0.net.unsubscribe(topic.clone()).await.map_err(unavailable)?;
        }
        Ok((topic.to_string(), was))
    }

    /// `mesh topics`.
    pub async fn topics(&self) -> Result<Vec<TopicView>, ServiceError> {
        let subs = self.0.store.read(ops::subscriptions).await?;
        let stats = self.0.store.read(ops::topic_stats).await?;
        let mut by: std::collections::BTreeMap<String, TopicView> = std::collections::BTreeMap::new();
        for (t, a) in subs {
            by.entry(t.to_string())
                .or_insert_with(|| TopicView {
                    topic: t.to_string(),
                    subscribers: vec![],
                    messages: 0,
                    last_ms: None,
                })
                .subscribers
                .push(a.to_string());
        }
        for (t, n, last) in stats {
            let v = by.entry(t.to_string()).or_insert_with(|| TopicView {
                topic: t.to_string(),
                subscribers: vec![],
                messages: 0,
                last_ms: None,
            });
            v.messages = n;
            v.last_ms = Some(last);
        }
        Ok(by.into_values().collect())
    }

    /// `mesh publish`. With a client-chosen `id`, a repeat of the same request answers with
    /// the first one's receipt (and hands the message to the gossip again).
    pub async fn publish(
        &self,
        agent: &str,
        topic: &str,
        text: String,
        reply_to: Option<MessageId>,
        id: Option<MessageId>,
    ) -> Result<PublishReceipt, ServiceError> {
        let agent = AgentName::new(agent)?;
        let topic = TopicName::parse_user(topic)?;
        self.check_text(&text, true)?;
        self.check_reply_to(reply_to).await?;
        self.check_send_rate_unless_known(&agent, id)?;
        let now = now_ms();
        let chosen = id.is_some();
        let envelope = TopicEnvelope {
            id: id.unwrap_or_default(),
            topic: topic.clone(),
            from: agent.clone(),
            sent_at_ms: now,
            reply_to,
            text,
        };
        let (me, my_name) = (self.0.peer_id, self.0.name.clone());
        let env = envelope.clone();
        let stored = self
            .0
            .store
            .write("publish", move |t| {
                if chosen && let Some(prev) = ops::published_before(t, &env)? {
                    return Ok(Err(prev));
                }
                let created = ops::ensure_agent_new(t, &agent, "human", now)?.1;
                Ok(Ok((
                    created,
                    ops::record_topic(t, env, me, Some(my_name), true, 0, now)?,
                )))
            })
            .await?;
        let (rec, delivered) = match stored {
            Ok((created, recorded)) => {
                self.agent_created(created);
                self.0.metrics.topic_out.inc();
                let (rec, delivered) = recorded.ok_or_else(|| ServiceError::internal("message id collision"))?;
                for e in &delivered {
                    self.emit(Event::Message(self.message_view(e)));
                }
                (rec, delivered.len() as u32)
            }
            // A repeat: the stored message goes out again (receivers keep one copy).
            Err(prev) => (prev, 0),
        };
        let payload = postcard::to_allocvec(&rec.envelope).map_err(|e| ServiceError::internal(e.to_string()))?;
        let reached = self.0.net.publish(topic.clone(), payload).await.map_err(unavailable)?;
        if reached > rec.reached {
            // Not awaited: if it is lost in a crash the message is merely published again
            // later, and receivers drop it by id.
            let (t, seq, node) = (topic.clone(), rec.seq, self.clone());
            tokio::spawn(async move {
                if let Err(e) = node
                    .0
                    .store
                    .write("publish", move |tx| ops::topic_reached(tx, &t, seq, reached))
                    .await
                {
                    tracing::warn!(error = %e, "cannot record that a topic message reached peers");
                }
            });
        }
        Ok(PublishReceipt {
            id: rec.envelope.id,
            topic: topic.to_string(),
            peers_reached: reached.max(rec.reached),
            local_subscribers: delivered,
        })
    }

    /// `mesh history`: one page (see [`Request::History`]) of the history matching
    /// `filter` (its position, order and text fields), of `agent` and with `target` (an
    /// agent address or `#topic`), filled up to `max_bytes` and what one API frame holds.
    ///
    /// [`Request::History`]: crate::api::Request::History
    pub async fn history(
        &self,
        agent: Option<&str>,
        target: Option<&str>,
        mut filter: ops::HistoryFilter,
        max_bytes: Option<u32>,
    ) -> Result<HistoryPage, ServiceError> {
        filter.agent = agent.map(AgentName::new).transpose()?;
        filter.grep = filter.grep.filter(|g| !g.is_empty());
        if let Some(t) = target.map(str::trim).filter(|t| !t.is_empty()) {
            if let Some(topic) = t.strip_prefix('#') {
                filter.topic = Some(TopicName::new(topic)?);
            } else {
                let addr: Address = t.parse()?;
                let topic_known = TopicName::new(t).ok().filter(|_| addr.node.is_none());
                let known_topic = match &topic_known {
                    Some(tn) => {
                        let tn = tn.clone();
                        self.0
                            .store
                            .read(move |r| Ok(ops::topic_stats(r)?.iter().any(|(t, _, _)| t == &tn)))
                            .await?
                    }
                    None => false,
                };
                let locals = self.local_agent_names().await?;
                let resolved = self.dir().resolve(&addr, &self.0.name, &locals);
                filter.with = match (resolved, known_topic) {
                    (Ok(Target::Local(a)), false) => Some((a, Some(self.0.peer_id))),
                    (Ok(Target::Remote { peer, agent, .. }), false) => Some((agent, Some(peer))),
                    (Ok(_), true) => {
                        return Err(ServiceError::ambiguous(format!(
                            "{t:?} is both an agent and a topic: write #{t} for the topic or {t}@<node> for the agent"
                        )));
                    }
                    (Err(_), true) => {
                        filter.topic = topic_known;
                        None
                    }
                    // An agent no longer announced: still show what was exchanged with it.
                    (Err(e), false) if e.is_not_found() && addr.node.is_none() => Some((addr.agent.clone(), None)),
                    (Err(e), false) => return Err(e),
                };
            }
        }
        let budget = self.page_budget(max_bytes);
        let node = self.clone();
        let forward = filter.forward;
        let (page, fill) = self
            .0
            .store
            .read(move |r| {
                let mut fill = PageFill::new(budget);
                let page = ops::history(r, &filter, &mut |row| fill.offer(row.id(), node.history_view(row)))?;
                Ok((page, fill))
            })
            .await?;
        let cursor = |row: Option<&store::HistoryRow>| row.map(|r| crate::api::page::history_cursor(r.seq()));
        let mut entries = fill.finish()?;
        if !forward {
            // Read backwards from the newest (each view offered as it was read): shown
            // oldest first, as the rows are.
            entries.reverse();
        }
        Ok(HistoryPage {
            older: cursor(page.rows.first()).filter(|_| page.older),
            newer: cursor(page.rows.last()).filter(|_| page.newer),
            entries,
        })
    }

    pub(super) fn history_view(&self, row: &store::HistoryRow) -> HistoryView {
        let at_ms = row.at_ms();
        match row {
            store::HistoryRow::Received(e) => {
                let v = self.message_view(e);
                HistoryView {
                    id: e.id,
                    kind: "in".into(),
                    from: v.from,
                    to: format!("{}@{}", e.agent, self.0.name),
                    text: v.text,
                    at_ms,
                    reply_to: e.reply_to,
                    state: None,
                    read_at_ms: None,
                }
            }
            store::HistoryRow::Sent(e) => HistoryView {
                id: e.msg.id,
                kind: "out".into(),
                from: format!("{}@{}", e.msg.from, self.0.name),
                to: self.outbox_to(e),
                text: e.msg.text.clone(),
                at_ms,
                reply_to: e.msg.reply_to,
                state: Some(out_state(&e.state)),
                read_at_ms: read_at(&e.state),
            },
            store::HistoryRow::Topic(r) => HistoryView {
                id: r.envelope.id,
                kind: "topic".into(),
                from: format!(
                    "{}@{}",
                    r.envelope.from,
                    self.node_label(&r.from_node, r.from_node_name.as_ref())
                ),
                to: format!("#{}", r.envelope.topic),
                text: r.envelope.text.clone(),
                at_ms,
                reply_to: r.envelope.reply_to,
                state: r.local.then(|| {
                    if r.reached > 0 {
                        format!("reached {} peers", r.reached)
                    } else {
                        "no subscribers reached yet".to_string()
                    }
                }),
                read_at_ms: None,
            },
        }
    }

    pub(super) fn on_topic(&self, source: PeerId, envelope: TopicEnvelope) {
        let Ok(permit) = self.0.inbound.clone().try_acquire_owned() else {
            // Not lost: the catch-up with its publisher fetches it once there is room.
            tracing::info!(%source, "too many inbound messages in flight; a topic message will be caught up later");
            crate::metrics::Metrics::count(&self.0.metrics.topic_dropped, "busy");
            let _ = self.0.sync.try_send(source);
            return;
        };
        let node = self.clone();
        let name = self.dir().name_of(&source);
        tokio::spawn(async move {
            let now = now_ms();
            match node
                .0
                .store
                .write("topic", move |t| {
                    ops::record_topic(t, envelope, source, name, false, 0, now)
                })
                .await
            {
                Ok(Some((_, delivered))) => {
                    node.0.metrics.topic_in.inc();
                    for e in &delivered {
                        node.emit(Event::Message(node.message_view(e)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot store a topic message; it will be caught up later");
                    let _ = node.0.sync.try_send(source);
                }
            }
            drop(permit);
        });
    }

    /// Stores topic messages caught up from their publisher `peer` (checked by the caller).
    pub(crate) async fn store_synced(
        &self,
        peer: PeerId,
        envelopes: Vec<TopicEnvelope>,
        now: u64,
    ) -> Result<(), store::StoreError> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let name = self.dir().name_of(&peer);
        let stored = self
            .0
            .store
            .write("catch-up", move |t| {
                let mut out = Vec::new();
                for env in envelopes {
                    if let Some(x) = ops::record_topic(t, env, peer, name.clone(), false, 0, now)? {
                        out.push(x);
                    }
                }
                Ok(out)
            })
            .await?;
        let m = &self.0.metrics;
        for (_, delivered) in &stored {
            m.topic_in.inc();
            m.topic_synced.inc();
            for e in delivered {
                self.emit(Event::Message(self.message_view(e)));
            }
        }
        if !stored.is_empty() {
            tracing::info!(%peer, count = stored.len(), "caught up topic messages that gossip did not bring");
        }
        Ok(())
    }

    /// Re-publishes local messages that reached nobody, now that `topic` has a subscriber.
    pub(super) fn flush_topic(&self, topic: TopicName) {
        let node = self.clone();
        tokio::spawn(async move {
            let t = topic.clone();
            let pending = match node.0.store.read(move |r| ops::topic_pending(r, &t)).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read pending topic messages");
                    return;
                }
            };
            for rec in pending {
                let Ok(payload) = postcard::to_allocvec(&rec.envelope) else {
                    continue;
                };
                match node.0.net.publish(topic.clone(), payload).await {
                    Ok(n) if n > 0 => {
                        let (t, seq) = (topic.clone(), rec.seq);
                        let _ = node
                            .0
                            .store
                            .write("publish", move |tx| ops::topic_reached(tx, &t, seq, n))
                            .await;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "re-publish failed");
                        break;
                    }
                }
            }
        });
    }
}
