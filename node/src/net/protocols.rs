//! The members-only protocols as the actor handles them: gossip (checked and unsealed), direct messages, catch-up, probes, hello.

use super::*;

impl NetActor {
    pub(super) fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let (acceptance, verdict) = match self.check_gossip(&message) {
                    Ok(ev) => (MessageAcceptance::Accept, Some(ev)),
                    Err(a) => {
                        let reason = match a {
                            MessageAcceptance::Reject => "rejected",
                            _ => "ignored",
                        };
                        crate::metrics::Metrics::count(&self.metrics.topic_dropped, reason);
                        (a, None)
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .inner()
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
                if let Some(ev) = verdict {
                    self.emit(ev);
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some((_, TopicKind::User(t))) = self.topics.get(&topic) {
                    let t = t.clone();
                    self.emit(NetEvent::TopicSubscribed {
                        peer: peer_id,
                        topic: t,
                    });
                }
            }
            _ => {}
        }
    }

    /// Opens and checks a gossip message: the event it makes, or how to judge it.
    pub(super) fn check_gossip(&mut self, message: &gossipsub::Message) -> Result<NetEvent, MessageAcceptance> {
        let source = message.source.ok_or(MessageAcceptance::Reject)?;
        let Some((_, kind)) = self.topics.get(&message.topic) else {
            return Err(MessageAcceptance::Ignore);
        };
        let kind = kind.clone();
        let plain = match self
            .adm
            .mesh
            .open_sealed(message.topic.as_str(), &source, &message.data)
        {
            Ok(p) => p,
            // Sealed with a key we do not have yet (a rotation on its way to us).
            Err(OpenError::UnknownEpoch(e)) => {
                tracing::debug!(%source, epoch = e, "gossip sealed with an unknown key; ignoring");
                return Err(MessageAcceptance::Ignore);
            }
            Err(e) => {
                tracing::debug!(%source, error = %e, "rejecting gossip");
                return Err(MessageAcceptance::Reject);
            }
        };
        match kind {
            TopicKind::Directory => {
                let DirectoryGossip::Announce(a) =
                    postcard::from_bytes::<DirectoryGossip>(&plain).map_err(|_| MessageAcceptance::Reject)?;
                if let Err(why) = a.check() {
                    tracing::debug!(%source, %why, "rejecting announcement");
                    return Err(MessageAcceptance::Reject);
                }
                Ok(NetEvent::Announcement {
                    peer: source,
                    announcement: a,
                })
            }
            TopicKind::User(topic) => {
                let envelope: TopicEnvelope = postcard::from_bytes(&plain).map_err(|_| MessageAcceptance::Reject)?;
                if !envelope.acceptable(&topic, self.max_text) {
                    tracing::debug!(%source, "rejecting malformed topic message");
                    return Err(MessageAcceptance::Reject);
                }
                if source != *self.swarm.local_peer_id()
                    && let Err(wait) =
                        self.topic_rate
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take(&source, 1, Instant::now())
                {
                    let quiet = self
                        .topic_rate_warned
                        .is_some_and(|t| t.elapsed() < Duration::from_secs(10));
                    if !quiet {
                        tracing::warn!(%source, retry_in = ?wait, "a node publishes faster than limits.peer_topic_messages_per_minute; dropping its topic messages");
                        self.topic_rate_warned = Some(Instant::now());
                    }
                    return Err(MessageAcceptance::Ignore);
                }
                Ok(NetEvent::Topic { source, envelope })
            }
        }
    }

    pub(super) fn on_dm(&mut self, event: request_response::Event<DmRequest, DmResponse>) {
        let Some(event) = answered(&mut self.dm_out, event) else {
            return;
        };
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request: batch,
                    channel,
                } => {
                    if !self.is_admitted(&peer) {
                        // The gate makes this impossible; never deliver for a non-member.
                        tracing::warn!(%peer, "delivery from a peer that is not admitted; dropping");
                        return;
                    }
                    self.dm_in.insert(request_id, channel);
                    let ev = NetEvent::InboundDms {
                        peer,
                        request: request_id,
                        batch,
                    };
                    if let Err(e) = self.events.try_send(ev) {
                        tracing::warn!("event queue full; asking {peer} to retry its delivery");
                        drop(e);
                        if let Some(ch) = self.dm_in.remove(&request_id) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .dm
                                .inner()
                                .send_response(ch, DmResponse::Unavailable("recipient node is busy".into()));
                        }
                    }
                }
                request_response::Message::Response { .. } => {}
            },
            request_response::Event::OutboundFailure { .. } => {}
            request_response::Event::InboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                tracing::debug!(%peer, %error, "inbound delivery failed");
                self.dm_in.remove(&request_id);
                self.dm_answering.remove(&request_id);
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.dm_answering.remove(&request_id);
                self.last_answer = Some(Instant::now());
            }
        }
    }

    pub(super) fn on_sync(&mut self, event: request_response::Event<SyncRequest, SyncResponse>) {
        let Some(event) = answered(&mut self.sync_out, event) else {
            return;
        };
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    if !self.is_admitted(&peer) {
                        tracing::warn!(%peer, "catch-up request from a peer that is not admitted; dropping");
                        return;
                    }
                    self.sync_in.insert(request_id, channel);
                    let ev = NetEvent::SyncRequest {
                        peer,
                        request: request_id,
                        body: request,
                    };
                    if self.events.try_send(ev).is_err()
                        && let Some(ch) = self.sync_in.remove(&request_id)
                    {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .sync
                            .inner()
                            .send_response(ch, SyncResponse::Unavailable("node is busy".into()));
                    }
                }
                request_response::Message::Response { .. } => {}
            },
            request_response::Event::OutboundFailure { .. } => {}
            request_response::Event::InboundFailure { request_id, .. } => {
                self.sync_in.remove(&request_id);
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    pub(super) fn on_probe(&mut self, event: request_response::Event<u64, u64>) {
        match event {
            request_response::Event::Message {
                peer,
                message,
                connection_id,
            } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let _ = self.swarm.behaviour_mut().probe.inner().send_response(channel, request);
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some((start, reply)) = self.pings.remove(&request_id) {
                        let conn = self
                            .peers
                            .get(&peer)
                            .and_then(|s| s.connections.get(&connection_id))
                            .map(|c| ConnectionInfo::of(&c.addr, c.dialed));
                        let _ = reply.send(match conn {
                            Some(c) => Ok((start.elapsed(), c)),
                            None => Err(NetError::Request {
                                peer,
                                why: "the connection closed during the ping".into(),
                            }),
                        });
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, reply)) = self.pings.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        why: error.to_string(),
                    }));
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_hello(&mut self, event: request_response::Event<Announcement, Announcement>) {
        match event {
            request_response::Event::Message { peer, message, .. } => {
                let theirs = match message {
                    request_response::Message::Request { request, channel, .. } => {
                        match self.announcement.clone() {
                            Some(mine) => {
                                let _ = self.swarm.behaviour_mut().hello.inner().send_response(channel, mine);
                            }
                            None if self.early_hellos.len() < MAX_EARLY_HELLOS => self.early_hellos.push(channel),
                            None => {}
                        }
                        request
                    }
                    request_response::Message::Response { response, .. } => response,
                };
                match theirs.check() {
                    Ok(()) => self.emit(NetEvent::Announcement {
                        peer,
                        announcement: theirs,
                    }),
                    Err(why) => tracing::debug!(%peer, %why, "ignoring bad hello"),
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "hello failed");
                // A duplicate connection closing under it is the usual cause; try again on
                // the surviving connection, a few times at most.
                let again = self.peers.get_mut(&peer).is_some_and(|s| {
                    s.hello_retries += 1;
                    s.hello_retries <= 3
                });
                if again
                    && self.is_admitted(&peer)
                    && let Some(a) = self.announcement.clone()
                {
                    self.swarm.behaviour_mut().hello.inner().send_request(&peer, a);
                }
            }
            _ => {}
        }
    }
}

/// Hands the outcome of an outbound request (its response, or why it failed) to whoever
/// waits for it; gives back every other event.
pub(super) fn answered<Req, Resp>(
    waiting: &mut HashMap<OutboundRequestId, Waiting<Resp>>,
    event: request_response::Event<Req, Resp>,
) -> Option<request_response::Event<Req, Resp>> {
    match event {
        request_response::Event::Message {
            message: request_response::Message::Response { request_id, response },
            ..
        } => hand_over(waiting, request_id, Ok(response)),
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            let why = error.to_string();
            hand_over(waiting, request_id, Err(NetError::Request { peer, why }));
        }
        other => return Some(other),
    }
    None
}
