//! The mesh: invites, joining, members, removal, leaving, and answering a join code a node presents.

use super::*;

impl Node {
    pub(super) async fn mesh_view(&self) -> Result<MeshView, ServiceError> {
        let members = self.0.store.read(ops::members).await?;
        let m = self.mesh().clone();
        let me = self.0.peer_id;
        Ok(MeshView {
            id: m.id().short(),
            open: m.is_open(),
            epoch: m.current().number,
            members: 1 + members.iter().filter(|(p, _)| *p != me).count() as u32,
            removed: m.revoked().len() as u32,
            relay_for_anyone: self.0.config.relay.serve && self.0.config.relay.for_anyone,
        })
    }

    pub(super) fn refuse_in_open_mode(&self, what: &str) -> Result<(), ServiceError> {
        if self.mesh().is_open() {
            return Err(ServiceError::invalid(format!(
                "this node runs in open mode (--open), where every open node is admitted without a secret; {what} is for closed meshes. Restart without --open to use it"
            )));
        }
        Ok(())
    }

    /// `mesh invite`: a signed, expiring join code for this node's mesh.
    pub async fn invite(&self, ttl_s: u64, uses: u32) -> Result<InviteView, ServiceError> {
        self.refuse_in_open_mode("mesh invite")?;
        let ttl = Duration::from_secs(ttl_s);
        if ttl < Duration::from_secs(1) || ttl > MAX_INVITE_TTL {
            return Err(ServiceError::invalid("--ttl must be between 1 second and 30 days"));
        }
        if uses == 0 || uses > MAX_INVITE_USES {
            return Err(ServiceError::invalid(format!(
                "--uses must be between 1 and {MAX_INVITE_USES}"
            )));
        }
        let view = self.addrs().await?;
        let info = self.0.net.info().await.map_err(unavailable)?;
        let loopback: Vec<String> = info
            .listen
            .iter()
            .filter(|a| crate::net::is_loopback(a))
            .map(|a| format!("{a}/p2p/{}", self.0.peer_id))
            .collect();
        let mut addrs: Vec<libp2p::Multiaddr> = view
            .public
            .iter()
            .chain(&view.relayed)
            .chain(&view.lan)
            .chain(&view.unconfirmed)
            .chain(&loopback)
            .filter_map(|a| a.parse().ok())
            .collect();
        addrs.dedup();
        addrs.truncate(crate::mesh::MAX_INVITE_ADDRS);
        if addrs.is_empty() {
            return Err(ServiceError::unavailable(
                "this node has no address another node could dial (see mesh status)",
            ));
        }
        let mut token = [0u8; 16];
        rand::fill(&mut token[..]);
        let now = now_ms();
        let expires_ms = now + ttl.as_millis() as u64;
        let rec = InviteRecord {
            expires_ms,
            uses_left: uses,
            created_ms: now,
        };
        self.0
            .store
            .write("invite", move |t| ops::put_invite(t, &token, &rec))
            .await?;
        let mesh = self.mesh().id();
        let body = InviteBody {
            mesh_id: mesh,
            inviter: self.0.peer_id,
            inviter_name: self.0.name.to_string(),
            addrs: addrs.clone(),
            token,
            expires_ms,
        };
        let invite = Invite::sign(body, &self.0.keypair).map_err(|e| ServiceError::internal(e.to_string()))?;
        Ok(InviteView {
            code: invite.encode(),
            mesh: mesh.short(),
            expires_ms,
            uses,
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
        })
    }

    /// `mesh join`: trade a join code for membership of the inviter's mesh.
    pub async fn join(&self, code: &str) -> Result<JoinView, ServiceError> {
        let invite = Invite::decode(code).map_err(|e| ServiceError::invalid(e.to_string()))?;
        self.join_invite(invite, true).await
    }

    /// Joins with `invite`; `check_expiry`: refuse it here if it expired by this node's
    /// clock (a pairing's code, handed over seconds ago, is left to its inviter's clock).
    pub(super) async fn join_invite(&self, invite: Invite, check_expiry: bool) -> Result<JoinView, ServiceError> {
        self.refuse_in_open_mode("mesh join")?;
        let _one = self.0.mesh_ops.lock().await;
        let now = now_ms();
        let old = self.mesh().clone();
        self.check_invite(&invite, &old, if check_expiry { now } else { 0 })?;
        let inviter = invite.body.inviter;
        let inviter_name = crate::ids::sanitize_text(&invite.body.inviter_name);
        let addrs = invite.body.addrs.clone();
        let mut mesh = self.trade_code(&invite, &inviter_name).await?;
        mesh.add_member(self.0.peer_id);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ServiceError::storage(e.to_string()))?;
        let name = Some(inviter_name.clone());
        self.0
            .store
            .write("join", move |t| {
                ops::reset_mesh(t)?;
                ops::put_member(t, &inviter, name, now)?;
                for a in addrs.iter().rev() {
                    ops::put_dialed(t, &inviter, &crate::net::strip_p2p(a.clone()))?;
                }
                Ok(())
            })
            .await?;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, true).await.map_err(unavailable)?;
        let _ = self.0.net.pin(inviter).await;
        tracing::info!(mesh = %invite.body.mesh_id.short(), left = %old.id().short(), "joined a mesh");
        Ok(JoinView {
            mesh: self.mesh_view().await?,
            inviter,
            inviter_name,
            left: old.id().short(),
        })
    }

    /// A join code this node may use now: not expired, not for the mesh it is in (`old`),
    /// not its own.
    fn check_invite(&self, invite: &Invite, old: &Membership, now: u64) -> Result<(), ServiceError> {
        if invite.body.expires_ms <= now {
            return Err(ServiceError::denied(format!(
                "this join code expired {} ago; ask for a new one (mesh invite)",
                crate::ids::human_duration(Duration::from_millis(now - invite.body.expires_ms))
            )));
        }
        if invite.body.mesh_id == old.id() {
            return Err(ServiceError::invalid(format!(
                "this node is already a member of mesh {}",
                old.id().short()
            )));
        }
        if invite.body.inviter == self.0.peer_id {
            return Err(ServiceError::invalid("this join code was made by this node"));
        }
        Ok(())
    }

    /// Presents the join code to its inviter (`inviter_name`, as shown) and checks what
    /// comes back: the mesh the code names, with a voucher for this node from the inviter.
    async fn trade_code(&self, invite: &Invite, inviter_name: &str) -> Result<Membership, ServiceError> {
        let inviter = invite.body.inviter;
        let wait = crate::net::ADMIT_TIMEOUT * 3 + Duration::from_secs(5);
        let (grant, voucher) = tokio::time::timeout(wait, self.0.net.join(invite.clone()))
            .await
            .map_err(|_| ServiceError::unavailable("the join did not finish in time"))?
            .map_err(|e| match e {
                crate::net::NetError::Request { why, .. } => ServiceError::denied(format!("join refused: {why}")),
                crate::net::NetError::Dial { why, .. } => {
                    ServiceError::unavailable(format!("cannot reach the inviting node {inviter_name}: {why}"))
                }
                other => unavailable(other),
            })?;
        if grant.mesh_id != invite.body.mesh_id {
            return Err(ServiceError::denied(
                "the inviting node answered with another mesh than its code names; not joining",
            ));
        }
        if voucher.inviter != inviter || !voucher.verify(&grant.mesh_id, &self.0.peer_id) {
            return Err(ServiceError::denied(
                "the inviting node's voucher for this node does not check out; not joining",
            ));
        }
        Membership::from_grant(grant, Some(voucher))
            .map_err(|e| ServiceError::denied(format!("the inviting node sent a malformed key: {e}")))
    }

    /// `mesh members`.
    pub async fn members(&self) -> Result<MembersView, ServiceError> {
        let records = self.0.store.read(ops::members).await?;
        let connected = self.0.net.connected().borrow().clone();
        let me = self.0.peer_id;
        let mut members = vec![MemberView {
            peer_id: me,
            name: Some(self.0.name.to_string()),
            this_node: true,
            connected: true,
            since_ms: None,
            last_seen_ms: None,
        }];
        let mut others: Vec<MemberView> = {
            let dir = self.dir();
            records
                .into_iter()
                .filter(|(p, _)| *p != me)
                .map(|(p, r)| MemberView {
                    peer_id: p,
                    name: dir.name_of(&p).map(|n| n.to_string()).or(r.name),
                    this_node: false,
                    connected: connected.contains(&p),
                    since_ms: Some(r.since_ms),
                    last_seen_ms: Some(r.last_seen_ms),
                })
                .collect()
        };
        others.sort_by(|a, b| (b.connected, &a.name).cmp(&(a.connected, &b.name)));
        members.extend(others);
        Ok(MembersView {
            mesh: self.mesh_view().await?,
            members,
        })
    }

    /// `mesh remove`: a new mesh key the removed node never gets.
    pub async fn remove(&self, node: &str) -> Result<RemovedView, ServiceError> {
        self.refuse_in_open_mode("mesh remove")?;
        let _one = self.0.mesh_ops.lock().await;
        let records = self.0.store.read(ops::members).await?;
        let peer = match self.resolve_node(node) {
            Ok(p) => p,
            Err(e) => {
                // A member known by the name it gave when it joined.
                let hits: Vec<PeerId> = records
                    .iter()
                    .filter(|(_, r)| r.name.as_deref() == Some(node.trim()))
                    .map(|(p, _)| *p)
                    .collect();
                match hits.as_slice() {
                    [p] => *p,
                    _ => return Err(e),
                }
            }
        };
        let peer = self.other_node(peer, "; to leave the mesh use: mesh leave")?;
        let name = self.dir().name_of(&peer).map(|n| n.to_string()).or_else(|| {
            records
                .iter()
                .find(|(p, _)| *p == peer)
                .and_then(|(_, r)| r.name.clone())
        });
        // Everyone known as a member keeps its place (it may renew with the old key).
        let connected = self.0.net.connected().borrow().clone();
        let announced: Vec<PeerId> = self
            .dir()
            .nodes()
            .filter(|(_, e)| e.announcement.is_some())
            .map(|(p, _)| *p)
            .collect();
        let members: Vec<PeerId> = records
            .iter()
            .map(|(p, _)| *p)
            .chain(connected.iter().copied())
            .chain(announced)
            .chain(std::iter::once(self.0.peer_id))
            .filter(|p| *p != peer)
            .collect();
        let mut mesh = self.mesh().clone();
        mesh.rotate(peer, members);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ServiceError::storage(e.to_string()))?;
        self.0
            .store
            .write("remove", move |t| {
                ops::remove_member(t, &peer)?;
                ops::remove_dialed(t, &peer)?;
                Ok(())
            })
            .await?;
        let _ = self.0.net.unpin(peer).await;
        let epoch = mesh.current().number;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, false).await.map_err(unavailable)?;
        let rekeyed = connected.iter().filter(|p| **p != peer).count() as u32;
        tracing::info!(%peer, epoch, "removed a node from the mesh");
        Ok(RemovedView {
            peer,
            name,
            epoch,
            rekeyed,
        })
    }

    /// `mesh leave`: start a new mesh of this node's own.
    pub async fn leave(&self) -> Result<MeshView, ServiceError> {
        self.refuse_in_open_mode("mesh leave")?;
        let _one = self.0.mesh_ops.lock().await;
        let mut mesh = Membership::generate();
        mesh.add_member(self.0.peer_id);
        mesh.save(&self.0.home.mesh_path())
            .map_err(|e| ServiceError::storage(e.to_string()))?;
        self.0.store.write("leave", ops::reset_mesh).await?;
        *self.mesh() = mesh.clone();
        self.0.net.set_membership(mesh, true).await.map_err(unavailable)?;
        self.mesh_view().await
    }

    /// A node presents a join code: check it is ours, use it once, hand over the mesh.
    pub(super) fn on_join_request(
        &self,
        peer: PeerId,
        request: libp2p::request_response::InboundRequestId,
        invite: Invite,
        node_name: String,
    ) {
        let node = self.clone();
        tokio::spawn(async move {
            let mesh = node.mesh().clone();
            let response = if !invite.verify() || invite.body.inviter != node.0.peer_id {
                JoinResponse::Refused(JoinRefusal::NotOurs)
            } else if invite.body.mesh_id != mesh.id() {
                JoinResponse::Refused(JoinRefusal::LeftMesh)
            } else {
                let (now, token) = (now_ms(), invite.body.token);
                let name = Some(crate::ids::sanitize_text(&node_name)).filter(|n| !n.is_empty());
                let used = node
                    .0
                    .store
                    .write("join", move |t| {
                        let u = ops::use_invite(t, &token, now)?;
                        if matches!(u, InviteUse::Accepted(_)) {
                            ops::put_member(t, &peer, name, now)?;
                        }
                        Ok(u)
                    })
                    .await;
                match used {
                    Ok(InviteUse::Accepted(left)) => {
                        tracing::info!(%peer, name = %node_name, uses_left = left, "a node joined the mesh");
                        // The network actor records it as a member when the answer goes out.
                        let mut joined = mesh.clone();
                        joined.add_member(peer);
                        match Voucher::sign(&mesh.id(), &peer, &node.0.keypair) {
                            Ok(v) => JoinResponse::Granted(Box::new(joined.grant()), v),
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "cannot sign a voucher");
                                JoinResponse::Refused(JoinRefusal::Storage)
                            }
                        }
                    }
                    Ok(InviteUse::Unknown) => JoinResponse::Refused(JoinRefusal::Unknown),
                    Ok(InviteUse::Expired(at)) => JoinResponse::Refused(JoinRefusal::Expired(at)),
                    Ok(InviteUse::UsedUp) => JoinResponse::Refused(JoinRefusal::Used),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot record a join");
                        JoinResponse::Refused(JoinRefusal::Storage)
                    }
                }
            };
            let _ = node.0.net.respond_join(request, response).await;
        });
    }
}
