//! Work done per peer in background tasks (deliveries, catch-up rounds), keeping track of
//! which peer each task is for, so that even a task that panicked hands back its peer and
//! that peer is not left "in flight" for good.

use std::collections::HashMap;
use std::future::Future;

use libp2p::PeerId;
use tokio::task::{Id, JoinError, JoinSet};

/// Tasks keyed by the peer they work for.
pub(crate) struct PeerTasks<T> {
    set: JoinSet<T>,
    peers: HashMap<Id, PeerId>,
}

impl<T: Send + 'static> PeerTasks<T> {
    pub(crate) fn new() -> Self {
        Self {
            set: JoinSet::new(),
            peers: HashMap::new(),
        }
    }

    /// Runs `work` for `peer`.
    pub(crate) fn spawn(&mut self, peer: PeerId, work: impl Future<Output = T> + Send + 'static) {
        let handle = self.set.spawn(work);
        self.peers.insert(handle.id(), peer);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    /// The next task to end, with its peer: what it returned, or how it failed (a panic, or
    /// cancelled by [`shutdown`](Self::shutdown)). `None` once no task is left.
    pub(crate) async fn join_next(&mut self) -> Option<(PeerId, Result<T, JoinError>)> {
        loop {
            let (id, result) = match self.set.join_next_with_id().await? {
                Ok((id, out)) => (id, Ok(out)),
                Err(e) => (e.id(), Err(e)),
            };
            // Every task is spawned with its peer; an unknown id cannot happen.
            if let Some(peer) = self.peers.remove(&id) {
                return Some((peer, result));
            }
        }
    }

    /// Cancels every task and waits for them to end.
    pub(crate) async fn shutdown(&mut self) {
        self.set.shutdown().await;
        self.peers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_still_names_its_peer() {
        let (calm, wild) = (PeerId::random(), PeerId::random());
        let mut tasks = PeerTasks::new();
        tasks.spawn(calm, async { 7 });
        tasks.spawn(wild, async { panic!("boom") });
        let mut ended = HashMap::new();
        while let Some((peer, result)) = tasks.join_next().await {
            ended.insert(peer, result.map_err(|e| e.is_panic()));
        }
        assert_eq!(ended.len(), 2);
        assert_eq!(ended[&calm], Ok(7));
        assert_eq!(ended[&wild], Err(true));
        assert!(tasks.is_empty() && tasks.peers.is_empty());
    }
}
