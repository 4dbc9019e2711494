//! `Daemon::stop`: the clean stop, in order.

use super::*;

impl Daemon {
    /// Stops cleanly, in order: no new work is taken (API requests, deliveries); what is in
    /// flight finishes: API requests are answered, outgoing deliveries get their answers and
    /// are settled, incoming ones are committed and answered; then the network sends its last
    /// answers and closes every connection, the store commits what is queued, the socket is
    /// removed and the lock released. Bounded by [`DRAIN_TIMEOUT`] and [`FLUSH_TIMEOUT`]:
    /// what does not finish in time is done again after the next start (the sender retries,
    /// the recipient drops the duplicate), never lost.
    pub async fn stop(self) {
        let started = std::time::Instant::now();
        self.cancel.cancel();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(task = name, "task did not finish its work in time");
                task.abort();
            }
        }
        if !self.node.drain_inbound(deadline).await {
            tracing::warn!("incoming deliveries still being stored at the deadline (their senders will retry)");
        }
        self.node.0.net.stop(FLUSH_TIMEOUT).await;
        self.hard.cancel();
        for (name, mut task) in [("network", self.net_task), ("core", self.core_task)] {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!(task = name, "task did not stop in time");
                task.abort();
            }
        }
        if let Some(d) = self.dnssd {
            let _ = tokio::task::spawn_blocking(move || d.stop()).await;
        }
        self.node.0.store.close().await;
        let _ = std::fs::remove_file(&self.socket);
        drop(self.node);
        tracing::info!(took_ms = started.elapsed().as_millis() as u64, "daemon stopped");
    }
}
