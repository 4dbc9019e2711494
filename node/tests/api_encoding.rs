//! The local API's encoding is pinned: a sample of every frame, request, answer and event
//! (every variant, every list non-empty, every option set) is encoded and compared with
//! `api_encoding/v<API_VERSION>.txt`. A field or variant added, removed or reordered
//! anywhere in the API changes those bytes, and this test fails until `API_VERSION` is
//! bumped and the new version's file written (`MESH_BLESS=1 cargo test -p mesh-node --test
//! api_encoding`); the files of earlier versions stay as they were.

use std::collections::BTreeSet;
use std::path::PathBuf;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use mesh_node::api::*;
use mesh_node::ids::MessageId;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn peer(seed: u8) -> PeerId {
    PeerId::from_public_key(&Keypair::ed25519_from_bytes([seed; 32]).expect("key").public())
}

fn addr() -> Multiaddr {
    "/ip4/10.1.2.3/udp/4001/quic-v1".parse().expect("addr")
}

fn id(seed: u8) -> MessageId {
    MessageId([seed; 16])
}

fn s(text: &str) -> String {
    text.to_string()
}

fn node() -> NodeIdentity {
    NodeIdentity {
        peer_id: peer(1),
        name: s("laptop"),
        version: s("0.1.0"),
    }
}

fn mesh() -> MeshView {
    MeshView {
        id: s("m1"),
        open: true,
        epoch: 3,
        members: 4,
        removed: 1,
        relay_for_anyone: true,
    }
}

fn connection() -> ConnectionView {
    ConnectionView {
        addr: addr(),
        dialed: true,
        path: PathView::Relayed,
        via: Some(peer(3)),
        transport: s("quic"),
    }
}

fn agent() -> AgentView {
    AgentView {
        address: s("alice@laptop"),
        name: s("alice"),
        node_name: s("laptop"),
        node: peer(1),
        local: true,
        kind: s("claude-code"),
        cwd: Some(s("/src")),
        repo: Some(s("/src")),
        summary: Some(s("fixing")),
        reception: Reception::Woken,
        last_seen_ms: 5,
        unread: Some(2),
        pid: Some(42),
    }
}

fn topic() -> TopicView {
    TopicView {
        topic: s("builds"),
        subscribers: vec![s("alice")],
        messages: 9,
        last_ms: Some(8),
    }
}

fn message() -> MessageView {
    MessageView {
        id: id(1),
        agent: s("alice"),
        from: s("bob@desk"),
        from_agent: s("bob"),
        from_node: peer(2),
        from_node_name: Some(s("desk")),
        topic: Some(s("builds")),
        text: s("hello"),
        sent_at_ms: 10,
        received_at_ms: 11,
        reply_to: Some(id(2)),
        state: s("unread"),
    }
}

fn spec() -> AgentSpec {
    AgentSpec {
        name: s("alice"),
        kind: s("codex"),
        cwd: Some(s("/src")),
        repo: Some(s("/src")),
        branch: Some(s("main")),
        summary: Some(s("fixing")),
        push: true,
        pid: Some(7),
    }
}

fn reach() -> ReachView {
    ReachView {
        nat: NatView::Private,
        external: vec![addr()],
        reservations: vec![ReservationView {
            relay: peer(3),
            addr: Some(addr()),
            accepted: true,
            since_ms: Some(12),
            renewals: 2,
        }],
        punch: PunchView {
            attempts: 3,
            successes: 2,
            failures: 1,
        },
        relay_serving: true,
        relay_circuits: 1,
        upnp: UpnpView {
            status: UpnpStatusView::Mapped,
            mapped: vec![addr()],
        },
        public: PublicNetView {
            enabled: true,
            dht_peers: 9,
            published_ms: Some(13),
            found: 2,
        },
    }
}

fn status() -> StatusView {
    StatusView {
        node: node(),
        home: s("/home/u/.agentmesh"),
        listen: vec![addr()],
        mdns: true,
        connected: 1,
        connected_lan: 2,
        connected_internet: 3,
        connected_relayed: 4,
        known: 5,
        agents: vec![agent()],
        topics: vec![topic()],
        store: StoreView {
            agents: 1,
            inbox: 2,
            unread: 3,
            outbox: 4,
            pending: 5,
            topic_messages: 6,
            topic_pending: 7,
            receipts_pending: 10,
            peers: 8,
            file_bytes: 9,
        },
        uptime_s: 60,
        reach: reach(),
        remembered: 6,
        mesh: mesh(),
        outsiders: 7,
    }
}

/// One request of each kind, in the order of the enum.
fn requests() -> Vec<Request> {
    let name = || s("alice");
    vec![
        Request::Status,
        Request::Peers,
        Request::Agents,
        Request::Dial {
            addr: addr().to_string(),
        },
        Request::Forget { node: s("desk") },
        Request::Ping { node: s("desk") },
        Request::Addrs,
        Request::Send(SendRequest {
            from: name(),
            to: s("bob@desk"),
            text: s("hi"),
            reply_to: Some(id(1)),
            id: Some(id(2)),
        }),
        Request::Inbox(InboxQuery {
            agent: name(),
            all: true,
            limit: 20,
            mark_read: true,
            skip_notified: true,
            after: Some(s("c1")),
            max_bytes: Some(1000),
        }),
        Request::MarkRead {
            agent: name(),
            ids: vec![id(1)],
        },
        Request::MarkNotified {
            agent: name(),
            ids: vec![id(1)],
        },
        Request::Counts { agent: name() },
        Request::Subscribe {
            agent: name(),
            topic: s("builds"),
        },
        Request::Unsubscribe {
            agent: name(),
            topic: s("builds"),
        },
        Request::Topics,
        Request::Publish(PublishRequest {
            agent: name(),
            topic: s("builds"),
            text: s("green"),
            reply_to: Some(id(1)),
            id: Some(id(3)),
        }),
        Request::History(HistoryQuery {
            agent: Some(name()),
            target: Some(s("#builds")),
            grep: Some(s("green")),
            limit: 50,
            before: Some(s("b")),
            after: Some(s("a")),
            forward: true,
            max_bytes: Some(1000),
        }),
        Request::Outbox {
            agent: Some(name()),
            delivered: true,
            limit: 10,
        },
        Request::Register {
            agent: spec(),
            attach: true,
        },
        Request::Claim {
            agent: spec(),
            exact: true,
        },
        Request::SetSummary {
            agent: name(),
            summary: Some(s("fixing")),
        },
        Request::Watch { agents: vec![name()] },
        Request::Invite { ttl_s: 600, uses: 2 },
        Request::Join { code: s("code") },
        Request::Members,
        Request::Remove { node: s("desk") },
        Request::Leave,
        Request::Waker { agent: name() },
        Request::Shutdown,
        Request::OpenPage,
        Request::AskPermission {
            agent: s("alice"),
            ask: PermissionAsk {
                request_id: s("tbxkq"),
                tool_name: s("Bash"),
                description: s("Run tests"),
                input_preview: s("{}"),
            },
        },
        Request::Permissions {
            agent: Some(s("reviewer")),
        },
        Request::AnswerPermission {
            id: s("alice@laptop:tbxkq"),
            allow: false,
            by: String::new(),
            agent: Some(s("reviewer")),
        },
        Request::Pair { node: s("desktop") },
        Request::PairWait { node: s("desktop") },
        Request::PairConfirm {
            node: s("desktop"),
            same: true,
        },
        Request::Pairings,
        Request::AnswerPairing {
            id: s("482913"),
            allow: true,
        },
    ]
}

fn pairing() -> PairingView {
    PairingView {
        peer: peer(4),
        name: s("desktop"),
        code: s("482 913"),
        asking: true,
        confirmed: true,
        asked_ms: 17,
        expires_ms: 18,
        state: PairingState::Refused(s("the member's user refused this node")),
    }
}

fn permission() -> PermissionView {
    PermissionView {
        id: s("tbxkq"),
        agent: s("alice"),
        tool: s("Bash"),
        description: s("Run tests"),
        input_preview: s("{}"),
        asked_ms: 15,
        answer: Some(PermissionAnswer {
            allow: false,
            by: s("me (page)"),
            at_ms: 16,
        }),
    }
}

/// One answer of each kind, in the order of the enum.
fn responses() -> Vec<Response> {
    vec![
        Response::Status(Box::new(status())),
        Response::Peers(vec![PeerView {
            peer_id: peer(2),
            name: Some(s("desk")),
            addrs: vec![addr()],
            connected: true,
            online: true,
            rtt_us: Some(300),
            version: Some(s("0.1.0")),
            agents: 2,
            last_seen_ms: Some(4),
            connections: vec![connection()],
            remembered: true,
            member: true,
            refused: Some(s("not a member")),
            punch: Some(PunchAttemptsView {
                retries: 2,
                last_failure: Some(s("Giving up after 3 dial attempts")),
            }),
        }]),
        Response::Agents(vec![agent()]),
        Response::Dialed { peer: peer(2) },
        Response::Forgot {
            peer: peer(2),
            was: true,
        },
        Response::Pong {
            peer: peer(2),
            rtt_us: 250,
            connection: connection(),
        },
        Response::Addrs(AddrsView {
            peer_id: peer(1),
            public: vec![s("/ip4/1.2.3.4/tcp/1")],
            relayed: vec![s("/p2p-circuit")],
            lan: vec![s("/ip4/10.0.0.2/tcp/1")],
            unconfirmed: vec![s("/ip4/5.6.7.8/tcp/1")],
        }),
        Response::Sent(SendReceipt {
            id: id(2),
            to: s("bob@desk"),
            to_node: peer(2),
            status: SendStatus::Queued { reason: s("offline") },
            reception: Reception::Poll,
        }),
        Response::Inbox(InboxPage {
            messages: vec![message()],
            remaining: 3,
            next: Some(s("c2")),
        }),
        Response::Marked { count: 1 },
        Response::Counts { new: 2, notified: 1 },
        Response::Subscription {
            topic: s("builds"),
            changed: true,
        },
        Response::Topics(vec![topic()]),
        Response::Published(PublishReceipt {
            id: id(3),
            topic: s("builds"),
            peers_reached: 2,
            local_subscribers: 1,
        }),
        Response::History(HistoryPage {
            entries: vec![HistoryView {
                id: id(1),
                kind: s("dm"),
                from: s("bob@desk"),
                to: s("alice"),
                text: s("hello"),
                at_ms: 10,
                reply_to: Some(id(2)),
                state: Some(s("read")),
                read_at_ms: Some(11),
            }],
            older: Some(s("o")),
            newer: Some(s("n")),
        }),
        Response::Outbox(vec![OutboxView {
            id: id(2),
            from: s("alice"),
            to: s("bob@desk"),
            text: s("hi"),
            created_ms: 9,
            state: s("pending"),
            reason: Some(s("offline")),
            attempts: 3,
            read_at_ms: Some(12),
        }]),
        Response::Agent(agent()),
        Response::Invite(InviteView {
            code: s("code"),
            mesh: s("m1"),
            expires_ms: 99,
            uses: 2,
            addrs: vec![addr().to_string()],
        }),
        Response::Joined(JoinView {
            mesh: mesh(),
            inviter: peer(2),
            inviter_name: s("desk"),
            left: s("m0"),
        }),
        Response::Members(MembersView {
            mesh: mesh(),
            members: vec![MemberView {
                peer_id: peer(2),
                name: Some(s("desk")),
                this_node: false,
                connected: true,
                since_ms: Some(1),
                last_seen_ms: Some(2),
            }],
        }),
        Response::Removed(RemovedView {
            peer: peer(2),
            name: Some(s("desk")),
            epoch: 4,
            rekeyed: 2,
        }),
        Response::Left(mesh()),
        Response::Ok,
        Response::Waker { generation: 5 },
        Response::Page(PageView {
            url: s("http://127.0.0.1:7717/"),
            login_url: s("http://127.0.0.1:7717/#login=t"),
        }),
        Response::Permission(permission()),
        Response::Permissions(vec![permission()]),
        Response::Pairing(pairing()),
        Response::Pairings(vec![pairing()]),
    ]
}

/// One event of each kind, in the order of the enum.
fn events() -> Vec<Event> {
    vec![
        Event::Message(message()),
        Event::Delivered {
            id: id(2),
            from: s("alice"),
            to: s("bob@desk"),
        },
        Event::DeadLetter {
            id: id(2),
            from: s("alice"),
            to: s("bob@desk"),
            reason: s("expired"),
        },
        Event::PeerUp {
            peer: peer(2),
            name: Some(s("desk")),
        },
        Event::PeerDown {
            peer: peer(2),
            name: Some(s("desk")),
        },
        Event::NodeUpdated {
            peer: peer(2),
            name: s("desk"),
        },
        Event::NetworkChanged,
        Event::Lagged { missed: 3 },
        Event::WakerReplaced {
            agent: s("alice"),
            generation: 6,
        },
        Event::Read {
            id: id(2),
            from: s("alice"),
            to: s("bob@desk"),
            at_ms: 14,
        },
        Event::Permission(permission()),
        Event::Pairing(pairing()),
    ]
}

const CODES: [ErrorCode; 10] = [
    ErrorCode::BadRequest,
    ErrorCode::NotFound,
    ErrorCode::Ambiguous,
    ErrorCode::TooLarge,
    ErrorCode::Unavailable,
    ErrorCode::Storage,
    ErrorCode::Busy,
    ErrorCode::RateLimited,
    ErrorCode::Denied,
    ErrorCode::Internal,
];

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("encodes")
}

/// Named samples of every type of the API, each variant of each enum.
fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: String, bytes: Vec<u8>| out.push((name, bytes));
    add(
        s("ClientHello"),
        encode(&ClientHello {
            magic: MAGIC,
            version: API_VERSION,
            client: s("mesh-cli 0.1.0"),
        }),
    );
    add(
        s("ServerHello::Welcome"),
        encode(&ServerHello::Welcome {
            version: API_VERSION,
            node: node(),
            max_frame: 1 << 20,
        }),
    );
    add(
        s("ServerHello::Refused"),
        encode(&ServerHello::Refused { reason: s("version") }),
    );
    add(
        s("ClientFrame"),
        encode(&ClientFrame {
            id: 7,
            request: Request::Status,
        }),
    );
    add(
        s("ServerFrame::Reply/Ok"),
        encode(&ServerFrame::Reply {
            id: 7,
            result: Ok(Response::Ok),
        }),
    );
    add(
        s("ServerFrame::Reply/Err"),
        encode(&ServerFrame::Reply {
            id: 7,
            result: Err(ApiError::new(ErrorCode::Busy, "busy")),
        }),
    );
    add(
        s("ServerFrame::Event"),
        encode(&ServerFrame::Event(Event::NetworkChanged)),
    );
    for r in requests() {
        add(format!("Request::{}", r.kind()), encode(&r));
    }
    for r in responses() {
        let bytes = encode(&r);
        add(format!("Response::{}", variant_of::<Response>(&bytes)), bytes);
    }
    for e in events() {
        let bytes = encode(&e);
        add(format!("Event::{}", variant_of::<Event>(&bytes)), bytes);
    }
    for c in CODES {
        add(format!("ErrorCode::{}", c.as_str()), encode(&c));
    }
    for (name, r) in [
        ("Push", Reception::Push),
        ("Poll", Reception::Poll),
        ("Offline", Reception::Offline),
        ("Woken", Reception::Woken),
    ] {
        add(format!("Reception::{name}"), encode(&r));
    }
    for (name, v) in [
        ("Delivered", SendStatus::Delivered),
        ("Queued", SendStatus::Queued { reason: s("r") }),
        ("Rejected", SendStatus::Rejected { reason: s("r") }),
        ("Read", SendStatus::Read { at_ms: 13 }),
    ] {
        add(format!("SendStatus::{name}"), encode(&v));
    }
    for (name, v) in [
        ("Waiting", PairingState::Waiting),
        ("Approved", PairingState::Approved),
        ("Refused", PairingState::Refused(s("expired"))),
        ("Joined", PairingState::Joined),
    ] {
        add(format!("PairingState::{name}"), encode(&v));
    }
    for (name, v) in [
        ("Unknown", NatView::Unknown),
        ("Public", NatView::Public),
        ("Private", NatView::Private),
    ] {
        add(format!("NatView::{name}"), encode(&v));
    }
    for (name, v) in [
        ("Off", UpnpStatusView::Off),
        ("Searching", UpnpStatusView::Searching),
        ("NoGateway", UpnpStatusView::NoGateway),
        ("NotRoutable", UpnpStatusView::NotRoutable),
        ("Mapped", UpnpStatusView::Mapped),
    ] {
        add(format!("UpnpStatusView::{name}"), encode(&v));
    }
    for (name, v) in [
        ("Lan", PathView::Lan),
        ("Internet", PathView::Internet),
        ("Relayed", PathView::Relayed),
    ] {
        add(format!("PathView::{name}"), encode(&v));
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The variant names of enum `T`, in order, as its `Deserialize` declares them.
fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(EnumProbe) {
        Err(Declared(v)) => v,
        Ok(_) => panic!("not an enum"),
    }
}

/// A deserializer that only learns which variants an enum declares.
struct EnumProbe;

#[derive(Debug)]
struct Declared(&'static [&'static str]);

impl std::fmt::Display for Declared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for Declared {}

impl serde::de::Error for Declared {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Declared(&[])
    }
}

impl<'de> serde::Deserializer<'de> for EnumProbe {
    type Error = Declared;
    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Declared> {
        Err(Declared(&[]))
    }
    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Declared> {
        Err(Declared(variants))
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// The sample's variant name (postcard writes the variant's index first).
fn variant_of<T: DeserializeOwned>(bytes: &[u8]) -> &'static str {
    variants::<T>()[bytes[0] as usize]
}

/// Asserts that the samples of enum `T` are its variants, all of them, in the enum's order
/// (a variant added anywhere must get a sample, and so fails the comparison with the
/// pinned file).
fn covers_every_variant<T: DeserializeOwned>(what: &str, samples: &[Vec<u8>]) {
    let declared = variants::<T>();
    assert!(samples.iter().all(|b| b[0] < 0x80), "{what}: one-byte discriminants");
    let seen: Vec<&str> = samples.iter().map(|b| declared[b[0] as usize]).collect();
    assert_eq!(seen, declared, "{what}: one sample per variant, in the enum's order");
}

#[test]
fn every_enum_of_the_api_has_a_sample_of_each_variant() {
    covers_every_variant::<Request>("Request", &requests().iter().map(encode).collect::<Vec<_>>());
    covers_every_variant::<Response>("Response", &responses().iter().map(encode).collect::<Vec<_>>());
    covers_every_variant::<Event>("Event", &events().iter().map(encode).collect::<Vec<_>>());
    covers_every_variant::<ErrorCode>("ErrorCode", &CODES.iter().map(encode).collect::<Vec<_>>());
    let of = |prefix: &str| -> Vec<Vec<u8>> {
        samples()
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, b)| b)
            .collect()
    };
    covers_every_variant::<Reception>("Reception", &of("Reception::"));
    covers_every_variant::<SendStatus>("SendStatus", &of("SendStatus::"));
    covers_every_variant::<NatView>("NatView", &of("NatView::"));
    covers_every_variant::<PairingState>("PairingState", &of("PairingState::"));
    covers_every_variant::<PathView>("PathView", &of("PathView::"));
    covers_every_variant::<UpnpStatusView>("UpnpStatusView", &of("UpnpStatusView::"));
    covers_every_variant::<ServerHello>("ServerHello", &of("ServerHello::"));
    let frames = of("ServerFrame::");
    covers_every_variant::<ServerFrame>("ServerFrame", &[frames[0].clone(), frames[2].clone()]);
}

#[test]
fn every_sample_decodes_to_itself() {
    for r in requests() {
        let back: Request = postcard::from_bytes(&encode(&r)).expect("decodes");
        assert_eq!(encode(&back), encode(&r), "{}", r.kind());
    }
    for r in responses() {
        let back: Response = postcard::from_bytes(&encode(&r)).expect("decodes");
        assert_eq!(encode(&back), encode(&r));
    }
    for e in events() {
        let back: Event = postcard::from_bytes(&encode(&e)).expect("decodes");
        assert_eq!(encode(&back), encode(&e));
    }
}

#[test]
fn the_encoding_is_the_one_pinned_for_this_api_version() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api_encoding");
    let file = dir.join(format!("v{API_VERSION}.txt"));
    let mut now = String::from("# name hex(postcard)\n");
    let mut names = BTreeSet::new();
    for (name, bytes) in samples() {
        assert!(names.insert(name.clone()), "sample name {name} twice");
        now.push_str(&format!("{name} {}\n", hex(&bytes)));
    }
    if std::env::var_os("MESH_BLESS").is_some() && !file.exists() {
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(&file, &now).expect("write");
    }
    let pinned = std::fs::read_to_string(&file).unwrap_or_else(|_| {
        panic!(
            "no pinned encoding for API version {API_VERSION} ({}): write it with MESH_BLESS=1",
            file.display()
        )
    });
    for (line, (was, is)) in pinned.lines().zip(now.lines()).enumerate() {
        assert_eq!(
            was,
            is,
            "line {} of {}: the local API's encoding changed. Bump API_VERSION in \
             node/src/api/mod.rs and write the new version's file with MESH_BLESS=1 (the \
             pinned file of a released version is never rewritten)",
            line + 1,
            file.display()
        );
    }
    assert_eq!(
        pinned.lines().count(),
        now.lines().count(),
        "samples added or removed: bump API_VERSION"
    );
}
