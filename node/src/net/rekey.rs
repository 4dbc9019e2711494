//! Mesh keys between members: a newer key chain pushed by a member (`/agentmesh/rekey/1`)
//! or handed over during admission is taken and passed on; a removal or a new mesh set by
//! the node is applied to the connections.

use std::time::Duration;

use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};

use super::{Command, NetActor, NetEvent};
use crate::mesh::{Grant, Membership, Proof, Voucher};
use crate::wire::AdmitResponse;

impl NetActor {
    /// A newer key chain pushed by a member (`/agentmesh/rekey/1`, gated: members only).
    pub(super) fn on_rekey(&mut self, event: request_response::Event<Grant, ()>) {
        match event {
            request_response::Event::Message {
                peer,
                message: request_response::Message::Request { request, channel, .. },
                ..
            } => {
                let _ = self.swarm.behaviour_mut().rekey.inner().send_response(channel, ());
                if self.is_admitted(&peer) {
                    self.take_grant(peer, &request);
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "could not pass the mesh key on");
            }
            _ => {}
        }
    }

    /// A newer key chain from a member: take it if it extends ours, pass it on.
    pub(super) fn take_grant(&mut self, from: PeerId, grant: &Grant) {
        match self.adm.mesh.accept_grant(grant) {
            Ok(true) => {
                tracing::info!(%from, epoch = self.adm.mesh.current().number, "mesh key renewed");
                self.membership_changed(Some(from));
            }
            Ok(false) => {}
            Err(why) => tracing::warn!(%from, %why, "ignoring a mesh key from a member"),
        }
    }

    /// After our key chain changed (renewed, or a removal here): drop removed nodes,
    /// check proofs we were holding, pass the chain to the members we are connected to.
    pub(super) fn membership_changed(&mut self, source: Option<PeerId>) {
        let revoked: Vec<PeerId> = self
            .peers
            .keys()
            .filter(|p| self.adm.mesh.is_revoked(p))
            .copied()
            .collect();
        for p in revoked {
            tracing::info!(peer = %p, "disconnecting a removed node");
            self.reach_forget(&p);
            self.refuse(p, "removed from this mesh".into());
            let _ = self.swarm.disconnect_peer_id(p);
        }
        let held: Vec<(PeerId, Proof, Option<Voucher>, ResponseChannel<AdmitResponse>)> = self
            .adm
            .pending
            .iter_mut()
            .filter_map(|(p, st)| st.held.take().map(|(proof, v, ch)| (*p, proof, v, ch)))
            .collect();
        for (peer, proof, voucher, ch) in held {
            self.judge(peer, proof, voucher, ch);
        }
        let grant = self.adm.mesh.grant();
        let members: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(p, s)| s.admitted && Some(**p) != source && !self.adm.mesh.is_revoked(p))
            .map(|(p, _)| *p)
            .collect();
        for p in members {
            self.swarm.behaviour_mut().rekey.inner().send_request(&p, grant.clone());
        }
        self.emit(NetEvent::MembershipChanged(Box::new(self.adm.mesh.clone())));
    }

    /// The node replaced the membership: a removal (`reset == false`: same mesh, new key),
    /// or a join / leave (`reset`: another mesh; every connection starts over).
    pub(super) fn set_membership(&mut self, mesh: Membership, reset: bool) {
        if !reset {
            self.adm.mesh = mesh;
            self.membership_changed(None);
            return;
        }
        let old_topics: Vec<_> = self.topics.values().map(|(t, _)| t.clone()).collect();
        for t in old_topics {
            self.swarm.behaviour_mut().gossipsub.inner().unsubscribe(&t);
        }
        self.adm.mesh = mesh;
        self.adm.denied.clear();
        self.adm.outsiders.clear();
        self.rebuild_topics();
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        self.reach_forget_lost(&peers);
        for p in &peers {
            let _ = self.swarm.disconnect_peer_id(*p);
        }
        // Everyone is dialed again shortly; the members of the new mesh will admit us.
        let tx = self.self_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for p in peers {
                let _ = tx.send(Command::DialPeer { peer: p }).await;
            }
        });
    }
}
