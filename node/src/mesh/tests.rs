use super::*;

fn peer() -> PeerId {
    Keypair::generate_ed25519().public().to_peer_id()
}

#[test]
fn proofs_bind_both_nodes() {
    let mut m = Membership::generate();
    let (a, b, x) = (peer(), peer(), peer());
    m.add_member(a);
    let p = m.prove(&a, &b);
    assert_eq!(m.verify(&p, None, &a, &b), Verdict::Member);
    // Shown to another verifier, or claimed by another prover: refused.
    assert_eq!(m.verify(&p, None, &a, &x), Verdict::Refused(Refusal::BadProof));
    assert_eq!(m.verify(&p, None, &x, &b), Verdict::Refused(Refusal::BadProof));
    // Another mesh's proof: refused as such.
    let other = Membership::generate();
    assert!(matches!(
        m.verify(&other.prove(&a, &b), None, &a, &b),
        Verdict::Refused(Refusal::OtherMesh(_))
    ));
    // A forged MAC with the right commitment: refused.
    let mut forged = p.clone();
    forged.mac[0] ^= 1;
    assert_eq!(m.verify(&forged, None, &a, &b), Verdict::Refused(Refusal::BadProof));
}

#[test]
fn rotation_shuts_out_the_removed_node_but_renews_stale_members() {
    let mut m = Membership::generate();
    let (a, b, stale, removed, newcomer) = (peer(), peer(), peer(), peer(), peer());
    for p in [a, b, stale, removed] {
        m.add_member(p);
    }
    let old = m.clone();
    m.rotate(removed, []);
    assert!(!m.is_member(&removed) && m.is_member(&stale));
    assert_eq!(m.current().number, 2);
    assert!(!m.current().roster.contains(&removed));
    // A member that missed the rotation proves with the old key: admitted, renewed.
    assert_eq!(m.verify(&old.prove(&stale, &a), None, &stale, &a), Verdict::Stale);
    // The removed node with the old key: refused, under its own name or a new one.
    assert_eq!(
        m.verify(&old.prove(&removed, &a), None, &removed, &a),
        Verdict::Refused(Refusal::Revoked)
    );
    assert_eq!(
        m.verify(&old.prove(&newcomer, &a), None, &newcomer, &a),
        Verdict::Refused(Refusal::NotInRoster)
    );
    // The stale member verifying a current proof: it is behind, not refused.
    assert_eq!(old.verify(&m.prove(&a, &stale), None, &a, &stale), Verdict::Ahead);
    // After taking the grant it verifies.
    let mut renewed = old.clone();
    assert!(renewed.accept_grant(&m.grant()).unwrap());
    assert_eq!(renewed.verify(&m.prove(&a, &stale), None, &a, &stale), Verdict::Member);
    assert!(renewed.is_revoked(&removed));
    // Taking it again changes nothing.
    assert!(!renewed.accept_grant(&m.grant()).unwrap());
}

#[test]
fn a_copied_key_admits_nobody_but_a_members_voucher_does() {
    let founder = Keypair::generate_ed25519();
    let mut m = Membership::generate();
    m.add_member(founder.public().to_peer_id());
    let (verifier, thief) = (peer(), peer());
    // Issue 12, finding 5: any PeerId holding a copy of the key was admitted.
    let copy = m.clone();
    assert_eq!(
        m.verify(&copy.prove(&thief, &verifier), None, &thief, &verifier),
        Verdict::Refused(Refusal::NotAMember)
    );
    // A node the founder admitted shows its voucher: a member, though not listed yet.
    let joiner = Keypair::generate_ed25519();
    let j = joiner.public().to_peer_id();
    let joined = m.vouched_for(&j, &founder).unwrap();
    let v = joined.voucher().cloned();
    assert_eq!(
        m.verify(&joined.prove(&j, &verifier), v.as_ref(), &j, &verifier),
        Verdict::Member
    );
    // The same voucher under another identity, one it signed itself, or one from a
    // stranger: refused.
    assert_eq!(
        m.verify(&copy.prove(&thief, &verifier), v.as_ref(), &thief, &verifier),
        Verdict::Refused(Refusal::NotAMember)
    );
    let own = Voucher::sign(&m.id(), &thief, &Keypair::generate_ed25519()).unwrap();
    assert_eq!(
        m.verify(&copy.prove(&thief, &verifier), Some(&own), &thief, &verifier),
        Verdict::Refused(Refusal::NotAMember)
    );
    // A removal lists the members: the thief is not carried over, whoever it met.
    let mut after = m.clone();
    after.add_member(j);
    after.rotate(peer(), [thief]);
    assert!(!after.current().roster.contains(&thief) && after.current().roster.contains(&j));
    assert_eq!(
        after.verify(&copy.prove(&thief, &verifier), None, &thief, &verifier),
        Verdict::Refused(Refusal::NotInRoster)
    );
    // Members learned from a member's chain are members; revoked ones are not.
    let mut other = copy.clone();
    assert!(other.accept_grant(&after.grant()).unwrap());
    assert!(other.is_member(&j) && !other.is_member(&thief));
}

#[test]
fn a_key_file_from_before_member_lists_is_adopted_until_the_next_rotation() {
    let m = Membership::generate();
    let (a, b) = (peer(), peer());
    // The v1 file: the bare grant (without members).
    let mut v1 = FILE_MAGIC_V1.to_vec();
    v1.extend(
        postcard::to_allocvec(&(
            m.id(),
            m.grant.name_key,
            m.grant.epochs.clone(),
            BTreeSet::<PeerId>::new(),
        ))
        .unwrap(),
    );
    let mut old = Membership::from_file_bytes(&v1).unwrap();
    assert_eq!(old.id(), m.id());
    // Trust on first use until a rotation lists the members.
    assert_eq!(old.verify(&m.prove(&a, &b), None, &a, &b), Verdict::Member);
    old.add_member(a);
    let again = Membership::from_file_bytes(&old.to_file_bytes().unwrap()).unwrap();
    assert_eq!(again, old, "saved in the new format, still adopting");
    old.rotate(peer(), [b]);
    let (c, d) = (peer(), peer());
    assert_eq!(
        old.verify(&old.prove(&c, &d), None, &c, &d),
        Verdict::Refused(Refusal::NotAMember)
    );
    assert!(old.is_member(&a) && old.is_member(&b));
}

#[test]
fn grants_from_another_branch_or_mesh_are_refused() {
    let base = Membership::generate();
    let (mut x, mut y) = (base.clone(), base.clone());
    x.rotate(peer(), []);
    y.rotate(peer(), []);
    let mut z = x.clone();
    assert!(z.accept_grant(&y.grant()).is_err());
    assert_eq!(
        x.verify(&y.prove(&peer(), &peer()), None, &peer(), &peer()),
        Verdict::Refused(Refusal::Conflict)
    );
    assert!(z.accept_grant(&Membership::generate().grant()).is_err());
    // An older chain is not a change.
    assert!(!z.accept_grant(&base.grant()).unwrap());
}

#[test]
fn old_epochs_are_forgotten() {
    let mut m = Membership::generate();
    let first = m.clone();
    let a = peer();
    for _ in 0..MAX_EPOCHS + 1 {
        m.rotate(peer(), [a]);
    }
    assert_eq!(m.grant().epochs.len(), MAX_EPOCHS);
    assert_eq!(
        m.verify(&first.prove(&a, &a), None, &a, &a),
        Verdict::Refused(Refusal::TooOld)
    );
}

#[test]
fn sealed_payloads_open_only_for_the_mesh_source_and_topic() {
    let mut m = Membership::generate();
    let (src, other) = (peer(), peer());
    m.add_member(src);
    let sealed = m.seal("t/abc", &src, b"hello");
    assert_eq!(m.open_sealed("t/abc", &src, &sealed).unwrap(), b"hello");
    assert_eq!(m.open_sealed("t/abc", &other, &sealed), Err(OpenError::Forged));
    assert_eq!(m.open_sealed("t/xyz", &src, &sealed), Err(OpenError::Forged));
    assert_eq!(
        Membership::generate().open_sealed("t/abc", &src, &sealed),
        Err(OpenError::Forged)
    );
    assert_eq!(m.open_sealed("t/abc", &src, b"junk"), Err(OpenError::Malformed));
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(m.open_sealed("t/abc", &src, &tampered), Err(OpenError::Forged));
    // After a rotation: old-key payloads open only from carried-over members.
    let mut next = m.clone();
    next.rotate(other, []);
    assert_eq!(next.open_sealed("t/abc", &src, &sealed).unwrap(), b"hello");
    let from_removed = m.seal("t/abc", &other, b"x");
    assert_eq!(
        next.open_sealed("t/abc", &other, &from_removed),
        Err(OpenError::NotAllowed)
    );
    // The old key cannot open new payloads.
    let fresh = next.seal("t/abc", &src, b"new");
    assert_eq!(m.open_sealed("t/abc", &src, &fresh), Err(OpenError::UnknownEpoch(2)));
    // Topic tags are stable across rotations and differ between meshes.
    assert_eq!(m.topic_tag("news"), next.topic_tag("news"));
    assert_ne!(m.topic_tag("news"), Membership::generate().topic_tag("news"));
}

#[test]
fn open_mode_is_its_own_mesh() {
    let (a, b) = (peer(), peer());
    let open = Membership::open();
    assert_eq!(open, Membership::open());
    assert_eq!(
        open.verify(&Membership::open().prove(&a, &b), None, &a, &b),
        Verdict::Member
    );
    let closed = Membership::generate();
    assert!(matches!(
        closed.verify(&open.prove(&a, &b), None, &a, &b),
        Verdict::Refused(Refusal::OpenMismatch(_))
    ));
    assert!(matches!(
        open.verify(&closed.prove(&a, &b), None, &a, &b),
        Verdict::Refused(Refusal::OpenMismatch(_))
    ));
}

#[test]
fn invites_detect_tampering() {
    let key = Keypair::generate_ed25519();
    let body = InviteBody {
        mesh_id: Membership::generate().id(),
        inviter: key.public().to_peer_id(),
        inviter_name: "alpha".into(),
        addrs: vec!["/ip4/10.0.0.1/tcp/4001".parse().unwrap()],
        token: random(),
        expires_ms: 1_000,
    };
    let inv = Invite::sign(body, &key).unwrap();
    let code = inv.encode();
    assert_eq!(Invite::decode(&code).unwrap(), inv);
    // Line breaks from a chat client are tolerated.
    let wrapped = format!("{}\n{}", &code[..20], &code[20..]);
    assert_eq!(Invite::decode(&wrapped).unwrap(), inv);
    assert_eq!(Invite::decode("hello"), Err(InviteError::NotACode));
    assert!(matches!(
        Invite::decode(&format!("{INVITE_PREFIX}!!!")),
        Err(InviteError::Damaged(_))
    ));
    // A changed expiry: the signature no longer matches.
    let mut altered = inv.clone();
    altered.body.expires_ms = u64::MAX;
    assert_eq!(Invite::decode(&altered.encode()), Err(InviteError::BadSignature));
    // Re-signed by someone else while claiming the inviter: refused.
    let mallory = Keypair::generate_ed25519();
    let forged = Invite::sign(altered.body.clone(), &mallory).unwrap();
    assert_eq!(Invite::decode(&forged.encode()), Err(InviteError::BadSignature));
    // Flipping characters of the text is caught.
    let mut chars: Vec<char> = code.chars().collect();
    let i = chars.len() - 10;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    assert!(Invite::decode(&chars.into_iter().collect::<String>()).is_err());
}

#[test]
fn the_key_file_round_trips_and_refuses_damage() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mesh.key");
    let m = Membership::load_or_create(&p).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(Membership::load_or_create(&p).unwrap(), m);
    fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(Membership::load(&p), Err(MeshError::Exposed { .. })));
    fs::write(&p, b"garbage").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Membership::load(&p).unwrap_err().to_string();
    assert!(err.contains("damaged") && err.contains("left untouched"), "{err}");
    // Not replaced by a new mesh behind the user's back.
    assert!(Membership::load_or_create(&p).is_err());
    assert_eq!(fs::read(&p).unwrap(), b"garbage");
}
