//! Read receipts: the recipient's side (a receipt queued when a local agent is first shown a
//! direct message, carried by the courier) and the sender's (receipts from the node a
//! message went to, recorded on its outbox entry and told to watchers).

use std::time::Instant;

use libp2p::PeerId;
use libp2p::request_response::InboundRequestId;
use tracing::Instrument;

use super::Node;
use crate::api::Event;
use crate::ids::now_ms;
use crate::store::{OutState, OutboxEntry, ops};
use crate::wire::{DmResponse, MAX_RECEIPTS, ReadReceipt};

impl Node {
    /// What a store write that shows messages to local agents collects (see [`ops::Shown`]).
    pub(super) fn shown(&self) -> ops::Shown {
        ops::Shown::new(self.0.peer_id, self.0.config.delivery.read_receipts, now_ms())
    }

    /// After such a write committed: the courier takes the queued receipts to their nodes,
    /// local senders' watchers hear that their messages were read.
    pub(super) fn after_shown(&self, shown: ops::Shown) {
        for peer in &shown.queued {
            self.kick(*peer);
        }
        self.emit_read(&shown.read_here);
    }

    /// `Event::Read` for each outbox entry that became read.
    fn emit_read(&self, entries: &[OutboxEntry]) {
        for e in entries {
            if let OutState::Read { at_ms, .. } = e.state {
                self.0.metrics.dm_read.inc();
                self.emit(Event::Read {
                    id: e.msg.id,
                    from: e.msg.from.to_string(),
                    to: self.outbox_to(e),
                    at_ms,
                });
            }
        }
    }

    /// Receipts from `peer` for messages our agents sent it: recorded, then answered with
    /// one outcome each. Refused whole (the peer retries) while stopping, when every inbound
    /// slot is taken, past `peer`'s allowance, or with more than [`MAX_RECEIPTS`] at once.
    pub(super) async fn on_receipts(&self, peer: PeerId, request: InboundRequestId, receipts: Vec<ReadReceipt>) {
        let refusal = if self.0.shutdown.is_cancelled() {
            Some("the node is shutting down".to_string())
        } else if receipts.len() > MAX_RECEIPTS {
            tracing::warn!(%peer, count = receipts.len(), "a node sent more read receipts at once than allowed");
            Some(format!("more than {MAX_RECEIPTS} receipts in one request"))
        } else {
            None
        };
        let permit = match (refusal, self.0.inbound.clone().try_acquire_owned()) {
            (Some(why), _) => Err(why),
            (None, Err(_)) => Err("recipient node is busy".to_string()),
            (None, Ok(permit)) => {
                // A request of receipts costs what one message does.
                let mut r = self.0.peer_rate.lock().unwrap_or_else(|e| e.into_inner());
                match r.take(&peer, 1, Instant::now()) {
                    Ok(()) => Ok(permit),
                    Err(wait) => Err(format!("rate limited; retry in {:.1} s", wait.as_secs_f64())),
                }
            }
        };
        let permit = match permit {
            Ok(p) => p,
            Err(why) => {
                let _ = self.0.net.respond_dm(request, DmResponse::Unavailable(why)).await;
                return;
            }
        };
        let node = self.clone();
        let span = tracing::debug_span!("receipts", %peer, ids = %crate::ids::id_list(receipts.iter().map(|r| r.id)));
        tokio::spawn(
            async move {
                let now = now_ms();
                let result = node
                    .0
                    .store
                    .write("receipts", move |t| ops::record_reads(t, peer, &receipts, now))
                    .await;
                let response = match result {
                    Ok((outcomes, read)) => {
                        node.emit_read(&read);
                        DmResponse::Outcomes(outcomes)
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot record read receipts; the node will send them again");
                        DmResponse::Unavailable(e.to_string())
                    }
                };
                let _ = node.0.net.respond_dm(request, response).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}
