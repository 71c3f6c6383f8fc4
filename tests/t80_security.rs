//! Security, tried as an attacker on the network would: a secured cluster
//! (TLS on every port, certificates for processes, tokens for users) walks
//! the table of RPCs and roles with no credential, a user's and the right
//! one; then each attack of the security issue is replayed and must be
//! refused with the right kind and change nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TestCluster;
use spaceraft::api::authz::RPCS;
use spaceraft::error::{ApiError, ErrorKind};
use spaceraft::pb;
use spaceraft::security::certs;
use spaceraft::security::token::{Claims, Signer};
use spaceraft::security::Role;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// A credential a call is made with.
#[derive(Clone)]
struct Credential {
    tls: ClientTlsConfig,
    token: Option<String>,
}

fn signer(tls: &Path) -> Signer {
    Signer::load(&certs::signing_key(tls)).unwrap()
}

fn token(tls: &Path, user: &str) -> String {
    signer(tls).mint(user, Duration::from_secs(600), false, None).unwrap()
}

/// Trusts the cluster's CA and presents the certificate `stem` (or none).
fn credential(tls: &Path, stem: Option<&str>, token: Option<String>) -> Credential {
    Credential { tls: common::client_tls(tls, stem), token }
}

async fn channel(addr: &str, credential: &Credential) -> Channel {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(credential.tls.clone())
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("TLS connection")
}

fn with_token<T>(message: T, credential: &Credential) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = &credential.token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Raw bytes in and out: any RPC can be called by its path.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut bytes = vec![0; src.remaining()];
        src.copy_to_slice(&mut bytes);
        Ok(Some(bytes))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `path` with `body` as its one request message; the status it
/// ends with (Ok when it answered, or started streaming, without error).
async fn call(addr: &str, credential: &Credential, path: &'static str, body: Vec<u8>) -> Result<(), ApiError> {
    let mut grpc = tonic::client::Grpc::new(channel(addr, credential).await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!("/{path}")).unwrap();
    let request = with_token(futures::stream::iter([body]), credential);
    match grpc.streaming(request, path, RawCodec).await {
        Ok(response) => {
            let mut stream = response.into_inner();
            // The first message or the end: an error after the headers still counts.
            match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                Ok(Err(status)) => Err(ApiError::from_status(&status)),
                _ => Ok(()),
            }
        }
        Err(status) => Err(ApiError::from_status(&status)),
    }
}

fn is_auth_refusal(result: &Result<(), ApiError>) -> bool {
    matches!(result, Err(error) if matches!(error.kind, ErrorKind::Unauthenticated | ErrorKind::PermissionDenied))
}

/// The body "the right caller" sends: a Raft message claims the sender its
/// certificate names, a join is node 1's own (at `node_1`, registered: a
/// restart needs no join token).
fn right_body(path: &str, node_1: &str) -> Vec<u8> {
    use prost::Message;
    if path.starts_with("spaceraft.v1.Raft/") {
        let request = pb::RaftRequest { from_node: 1, to_node: 99, group_id: 0, ..Default::default() };
        if path.ends_with("InstallSnapshot") {
            return pb::SnapshotChunk { header: Some(request), data: Vec::new() }.encode_to_vec();
        }
        if path.ends_with("AppendEnvelope") {
            let item = pb::RaftEnvelopeItem { exchange: 1, kind: 0, request: Some(request) };
            return pb::RaftEnvelope { items: vec![item] }.encode_to_vec();
        }
        return request.encode_to_vec();
    }
    if path.ends_with("Admin/Join") {
        let join = pb::JoinRequest {
            node_id: 1,
            region: "us-east".into(),
            grpc_addr: node_1.into(),
            join_token: String::new(),
        };
        return join.encode_to_vec();
    }
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_admits_exactly_the_roles_of_the_table() {
    let cluster = TestCluster::start_secured("", "").await;
    let tls = cluster.tls.clone().unwrap();
    let addr = cluster.node(2).addr.clone();
    let node_1 = cluster.node(1).addr.clone();
    let nobody = credential(&tls, None, None);
    let alice = credential(&tls, None, Some(token(&tls, "alice")));
    let right = |role: Role| match role {
        Role::Anyone | Role::User => alice.clone(),
        Role::Gateway => credential(&tls, Some(&certs::gateway_stem("us-east")), None),
        Role::Operator => credential(&tls, Some(&certs::operator_stem(common::OPERATOR)), None),
        Role::Node => credential(&tls, Some(&certs::node_stem(1)), None),
    };
    let served: Vec<_> = RPCS
        .iter()
        .filter(|rule| rule.path.starts_with("spaceraft.v1.") && !rule.path.starts_with("spaceraft.v1.Gateway/"))
        .collect();
    assert!(served.len() >= 30, "{}", served.len());
    for rule in served {
        // --- phase: no credential
        let anonymous = call(&addr, &nobody, rule.path, right_body(rule.path, &node_1)).await;
        if rule.roles.contains(&Role::Anyone) {
            assert!(!is_auth_refusal(&anonymous), "{} refused an anonymous caller: {anonymous:?}", rule.path);
        } else {
            let error = anonymous.expect_err(rule.path);
            assert_eq!(error.kind, ErrorKind::Unauthenticated, "{}: {error}", rule.path);
        }
        // --- phase: a user's token
        let as_user = call(&addr, &alice, rule.path, right_body(rule.path, &node_1)).await;
        if rule.roles.iter().any(|role| matches!(role, Role::Anyone | Role::User)) {
            assert!(!is_auth_refusal(&as_user), "{} refused a user: {as_user:?}", rule.path);
        } else {
            let error = as_user.expect_err(rule.path);
            assert_eq!(error.kind, ErrorKind::PermissionDenied, "{}: {error}", rule.path);
        }
        // --- phase: the right credential
        let allowed = call(&addr, &right(rule.roles[0]), rule.path, right_body(rule.path, &node_1)).await;
        assert!(!is_auth_refusal(&allowed), "{} refused its own role {:?}: {allowed:?}", rule.path, rule.roles[0]);
    }
}

/// The documented table lists every RPC with the roles the code enforces.
#[test]
fn docs_security_md_lists_every_rpc_with_its_roles() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/security.md")).unwrap();
    for rule in RPCS {
        let roles: Vec<&str> = rule.roles.iter().map(|role| role.name()).collect();
        let row = format!("| `{}` | {} |", rule.path, roles.join(", "));
        assert!(doc.contains(&row), "docs/security.md lacks the row {row}");
    }
}

async fn client(addr: &str, credential: &Credential) -> pb::client_client::ClientClient<Channel> {
    pb::client_client::ClientClient::new(channel(addr, credential).await)
}

fn kind<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> ErrorKind {
    ApiError::from_status(&result.expect_err("refused")).kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_borrowed_tokens_and_non_members_are_refused_and_change_nothing() {
    let cluster = TestCluster::start_secured("", "posts_per_user_per_sec = 5\n").await;
    let tls = cluster.tls.clone().unwrap();
    let addr = cluster.node(1).addr.clone();
    let operator = credential(&tls, Some(&certs::operator_stem(common::OPERATOR)), None);
    let alice = credential(&tls, None, Some(token(&tls, "alice")));
    let bob = credential(&tls, None, Some(token(&tls, "bob")));
    let mallory = credential(&tls, None, Some(token(&tls, "mallory")));
    let create = pb::CreateSpaceRequest {
        name: "secret".into(),
        members: vec!["alice".into(), "bob".into()],
        ..Default::default()
    };
    let created = client(&addr, &alice).await.create_space(with_token(create, &alice)).await.unwrap().into_inner();
    assert_eq!(created.space.unwrap().attrs["owner"], "alice", "the creator owns the space");
    let post = |author: &str, body: &str| pb::PostRequest {
        space: "secret".into(),
        author: author.into(),
        body: body.into(),
        idempotency_key: String::new(),
    };
    client(&addr, &alice).await.post(with_token(post("", "the launch code is 0000"), &alice)).await.unwrap();

    // --- phase: forged, expired, wrong-audience and garbage tokens
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let other_issuer = tempfile::tempdir().unwrap();
    common::make_certs(other_issuer.path(), &[]);
    let forged = signer(other_issuer.path()).mint("alice", Duration::from_secs(600), true, None).unwrap();
    let expired = signer(&tls)
        .mint_claims(&Claims { sub: "alice".into(), exp: now - 3600, iat: 0, aud: None, roles: vec![] })
        .unwrap();
    let elsewhere = signer(&tls).mint("alice", Duration::from_secs(600), false, Some("0123456789abcdef")).unwrap();
    for bad in [forged, expired, elsewhere, "not.a.token".to_string()] {
        let holder = credential(&tls, None, Some(bad));
        let read = pb::HistoryRequest { space: "secret".into(), ..Default::default() };
        let refused = client(&addr, &holder).await.history(with_token(read, &holder)).await;
        assert_eq!(kind(refused), ErrorKind::Unauthenticated);
    }

    // --- phase: bob's token posting as alice; mallory reading, posting, subscribing
    let as_alice = client(&addr, &bob).await.post(with_token(post("alice", "from bob"), &bob)).await;
    assert_eq!(kind(as_alice), ErrorKind::PermissionDenied);
    let read = pb::HistoryRequest { space: "secret".into(), ..Default::default() };
    assert_eq!(
        kind(client(&addr, &mallory).await.history(with_token(read.clone(), &mallory)).await),
        ErrorKind::NotMember
    );
    let everything = pb::HistoryRequest { space: "secret".into(), user: String::new(), ..Default::default() };
    let as_operator_read = client(&addr, &mallory).await.history(with_token(everything, &mallory)).await;
    assert_eq!(kind(as_operator_read), ErrorKind::NotMember, "a user's empty name is their own");
    assert_eq!(
        kind(client(&addr, &mallory).await.post(with_token(post("", "hi"), &mallory)).await),
        ErrorKind::NotMember
    );
    let subscribe = pb::SubscribeRequest { space: "secret".into(), user: String::new(), from_seq: 1 };
    let subscribed = client(&addr, &mallory).await.subscribe(with_token(subscribe, &mallory)).await;
    let refused = match subscribed {
        Err(status) => ApiError::from_status(&status).kind,
        Ok(stream) => ApiError::from_status(&stream.into_inner().message().await.expect_err("refused")).kind,
    };
    assert_eq!(refused, ErrorKind::NotMember);
    let info = pb::GetSpaceRequest { name: "secret".into() };
    assert_eq!(kind(client(&addr, &mallory).await.get_space(with_token(info, &mallory)).await), ErrorKind::NotMember);
    let listed =
        client(&addr, &mallory).await.list_spaces(with_token(pb::ListSpacesRequest::default(), &mallory)).await;
    assert!(listed.unwrap().into_inner().spaces.is_empty(), "mallory lists only her own spaces");

    // --- phase: space administration: mallory cannot add herself or delete; bob (a member) neither
    for attacker in [&mallory, &bob] {
        let join = pb::UpdateMembersRequest { space: "secret".into(), add: vec!["mallory".into()], remove: vec![] };
        assert_eq!(
            kind(client(&addr, attacker).await.update_members(with_token(join, attacker)).await),
            ErrorKind::PermissionDenied
        );
        let delete = pb::DeleteSpaceRequest { space: "secret".into() };
        assert_eq!(
            kind(client(&addr, attacker).await.delete_space(with_token(delete, attacker)).await),
            ErrorKind::PermissionDenied
        );
    }

    // --- phase: a flood from alice is rate-limited while bob's posts go through
    let mut alice_refused = 0;
    for index in 0..40 {
        match client(&addr, &alice).await.post(with_token(post("", &format!("flood {index}")), &alice)).await {
            Ok(_) => {}
            Err(status) => {
                assert_eq!(ApiError::from_status(&status).kind, ErrorKind::ResourceExhausted);
                alice_refused += 1;
            }
        }
    }
    assert!(alice_refused > 0, "the flood was never limited");
    client(&addr, &bob).await.post(with_token(post("", "bob still gets through"), &bob)).await.unwrap();

    // --- phase: nothing changed that the attacks touched
    let all = pb::HistoryRequest { space: "secret".into(), limit: 1000, ..Default::default() };
    let history = client(&addr, &operator).await.history(all).await.unwrap().into_inner();
    assert!(history.messages.iter().all(|m| m.author == "alice" || m.author == "bob"), "{:?}", history.messages);
    assert!(!history.messages.iter().any(|m| m.body == "from bob" || m.body == "hi"));
    let info = client(&addr, &operator).await.get_space(pb::GetSpaceRequest { name: "secret".into() }).await.unwrap();
    assert_eq!(info.into_inner().members, ["alice", "bob"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_needs_a_join_token_and_a_node_cannot_speak_for_another() {
    let mut cluster = TestCluster::start_secured("", "snapshot_bytes_max = 1048576\n").await;
    let tls = cluster.tls.clone().unwrap();
    let addr = cluster.node(1).addr.clone();
    let operator = credential(&tls, Some(&certs::operator_stem(common::OPERATOR)), None);
    let mut admin = pb::admin_client::AdminClient::new(channel(&addr, &operator).await);

    // --- phase: a node with a CA-signed certificate but no join token is not registered
    common::make_certs(&tls, &[9]);
    let as_node_9 = credential(&tls, Some(&certs::node_stem(9)), None);
    let join = |token: &str| pb::JoinRequest {
        node_id: 9,
        region: "us-east".into(),
        grpc_addr: "127.0.0.1:9".into(),
        join_token: token.into(),
    };
    let mut intruder = pb::admin_client::AdminClient::new(channel(&addr, &as_node_9).await);
    assert_eq!(kind(intruder.join(join("")).await), ErrorKind::PermissionDenied);
    assert_eq!(kind(intruder.join(join("guessed")).await), ErrorKind::PermissionDenied);
    // Node 1's certificate cannot join as node 9.
    let as_node_1 = credential(&tls, Some(&certs::node_stem(1)), None);
    let mut impostor = pb::admin_client::AdminClient::new(channel(&addr, &as_node_1).await);
    let minted = admin.join_token(pb::JoinTokenRequest { ttl_secs: 60 }).await.unwrap().into_inner();
    assert_eq!(kind(impostor.join(join(&minted.token)).await), ErrorKind::PermissionDenied);
    let directory = admin.directory(pb::DirectoryRequest::default()).await.unwrap().into_inner();
    assert!(!directory.nodes.iter().any(|node| node.node_id == 9), "node 9 was registered");

    // --- phase: a real node joins with a minted token; the token is spent
    let minted = admin.join_token(pb::JoinTokenRequest { ttl_secs: 60 }).await.unwrap().into_inner();
    let joined = cluster.add_node(&format!("join_token = \"{}\"\n", minted.token));
    common::wait_until(Duration::from_secs(30), "the new node in the directory", async || {
        let directory = admin.directory(pb::DirectoryRequest::default()).await.map_err(|e| e.to_string())?.into_inner();
        directory.nodes.iter().any(|node| node.node_id == joined).then_some(()).ok_or("not yet".to_string())
    })
    .await;
    let reused = pb::JoinRequest {
        node_id: 9,
        region: "us-east".into(),
        grpc_addr: "127.0.0.1:9".into(),
        join_token: minted.token,
    };
    assert_eq!(kind(intruder.join(reused).await), ErrorKind::PermissionDenied, "a join token is spent once");

    // --- phase: node 2's certificate sends a vote claiming to be node 1; the leader keeps leading
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let before = leader_term(&cluster, leader).await;
    let forger = if leader == 2 { 3 } else { 2 };
    let victim_addr = cluster.node(leader).addr.clone();
    let forged_from = if leader == 1 { 3 } else { 1 };
    let as_forger = credential(&tls, Some(&certs::node_stem(forger)), None);
    let mut raft = pb::raft_client::RaftClient::new(channel(&victim_addr, &as_forger).await);
    let vote = pb::RaftRequest { from_node: forged_from, to_node: leader, group_id: 1, ..Default::default() };
    assert_eq!(kind(raft.vote(vote).await), ErrorKind::PermissionDenied);
    assert_eq!(leader_term(&cluster, leader).await, before, "a forged vote moved the term");

    // --- phase: a snapshot larger than snapshot_bytes_max is refused before it is written
    let cluster_id = spaceraft::wire::ClusterId::known(&common::cluster_id(&cluster));
    let as_leader = credential(&tls, Some(&certs::node_stem(leader)), None);
    let follower = if leader == 1 { 2 } else { 1 };
    let stamped = spaceraft::wire::stamped(channel(&cluster.node(follower).addr, &as_leader).await, &cluster_id);
    let mut raft = pb::raft_client::RaftClient::new(stamped);
    use spaceraft::raft::types::{SnapshotMeta, Vote};
    let meta = SnapshotMeta { last_log_id: None, last_membership: Default::default() };
    let header = pb::RaftRequest {
        from_node: leader,
        from_addr: cluster.node(leader).addr.clone(),
        to_node: follower,
        group_id: 1,
        payload: postcard::to_stdvec(&(Vote::new(0, leader), meta)).unwrap(),
        ..Default::default()
    };
    let chunks = (0..3).map(move |index| pb::SnapshotChunk {
        header: (index == 0).then(|| header.clone()),
        data: vec![7u8; 768 * 1024],
    });
    let refused = raft.install_snapshot(futures::stream::iter(chunks)).await;
    assert_eq!(kind(refused), ErrorKind::TooLarge { field: "snapshot".into() });
    assert_eq!(leader_term(&cluster, leader).await, before, "the refused snapshot disturbed the cluster");

    // --- phase: plaintext to a TLS port gets no answer
    let plaintext = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_timeout(Duration::from_secs(2));
    let answered = match plaintext.connect().await {
        Err(_) => false,
        Ok(channel) => pb::admin_client::AdminClient::new(channel).ping(pb::PingRequest { from_node: 0 }).await.is_ok(),
    };
    assert!(!answered, "a plaintext request was answered on a TLS port");
}

async fn leader_term(cluster: &TestCluster, leader: u64) -> u64 {
    let mut admin = cluster.admin(leader).await;
    let status = admin.node_status(pb::NodeStatusRequest::default()).await.unwrap().into_inner();
    status.replicas.iter().find(|replica| replica.cluster_id == 1).map(|replica| replica.term).unwrap()
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Opens the gateway's WebSocket over TLS, from a page of `origin` (None:
/// not a browser).
async fn wss(http: &str, ca: &Path, origin: Option<&str>) -> Result<Wss, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("wss://{http}/v1/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        request.headers_mut().insert("origin", origin.parse().unwrap());
    }
    let stream = common::gateway::tls_connect(http, ca).await.map_err(|error| error.to_string())?;
    let (socket, _) = tokio_tungstenite::client_async(request, stream).await.map_err(|error| error.to_string())?;
    Ok(socket)
}

/// Sends `hello` and answers the first frame: the welcome, or how it closed.
async fn hello(socket: &mut Wss, hello: serde_json::Value) -> Result<serde_json::Value, String> {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    socket.send(Message::text(hello.to_string())).await.map_err(|error| error.to_string())?;
    next_frame(socket).await
}

async fn next_frame(socket: &mut Wss) -> Result<serde_json::Value, String> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(15), socket.next()).await.map_err(|_| "no answer")? {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => return Err(format!("closed {}", u16::from(frame.code))),
            Some(Ok(_)) => continue,
            other => return Err(format!("ended: {other:?}")),
        }
    }
}

/// The next `error` event, skipping the others.
async fn next_error(socket: &mut Wss) -> serde_json::Value {
    loop {
        let frame = next_frame(socket).await.unwrap();
        if frame["type"] == "error" {
            return frame;
        }
    }
}

/// How long the server takes to close a connection that sends `bytes` and
/// then nothing; None when it is still open after `wait`.
async fn closed_by_server<S>(mut stream: S, bytes: &[u8], wait: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = tokio::time::Instant::now();
    if stream.write_all(bytes).await.is_err() {
        return Some(started.elapsed());
    }
    let mut buffer = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(started + wait, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_take_only_tokens_own_origins_and_bounded_connections() {
    let mut cluster = TestCluster::start_secured("", "").await;
    let tls = cluster.tls.clone().unwrap();
    let ca = certs::ca_pem(&tls);
    let gateway_extra = format!(
        "{}[clients]\nheader_read_timeout_ms = 1000\nconnections_per_ip_max = 20\n",
        common::gateway::TEST_UPSTREAM
    );
    cluster.start_gateways(&gateway_extra).await;
    let operator = credential(&tls, Some(&certs::operator_stem(common::OPERATOR)), None);
    let mut nodes = client(&cluster.node(1).addr, &operator).await;
    for (name, members) in [("open", vec!["alice", "bob"]), ("secret", vec!["bob"])] {
        let members = members.into_iter().map(String::from).collect();
        nodes.create_space(pb::CreateSpaceRequest { name: name.into(), members, ..Default::default() }).await.unwrap();
    }
    let http = cluster.gateways[0].http.clone();
    let alice = token(&tls, "alice");

    // --- phase: hello without a token, with a forged one, claiming another user
    let other_issuer = tempfile::tempdir().unwrap();
    common::make_certs(other_issuer.path(), &[]);
    let forged = signer(other_issuer.path()).mint("alice", Duration::from_secs(600), false, None).unwrap();
    for refused in [
        serde_json::json!({"type": "hello", "user": "alice"}),
        serde_json::json!({"type": "hello", "token": forged}),
        serde_json::json!({"type": "hello", "user": "bob", "token": alice}),
    ] {
        let mut socket = wss(&http, &ca, None).await.unwrap();
        assert_eq!(hello(&mut socket, refused.clone()).await, Err("closed 4001".into()), "{refused}");
    }

    // --- phase: alice's token: she is alice, and cannot read bob's space
    let mut socket = wss(&http, &ca, Some(&format!("https://{http}"))).await.unwrap();
    let welcome = hello(&mut socket, serde_json::json!({"type": "hello", "token": alice})).await.unwrap();
    assert_eq!(welcome["user"], "alice", "{welcome}");
    let spaces: Vec<&str> = welcome["spaces"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(spaces, ["open"], "{welcome}");
    use futures::SinkExt;
    let subscribe = serde_json::json!({"type": "subscribe", "space": "secret", "after": 0});
    socket.send(tokio_tungstenite::tungstenite::Message::text(subscribe.to_string())).await.unwrap();
    let refused = next_error(&mut socket).await;
    assert_eq!(refused["code"], "not_member", "{refused}");
    let post = serde_json::json!({"type": "post", "ref": "p1", "space": "secret", "body": "let me in"});
    socket.send(tokio_tungstenite::tungstenite::Message::text(post.to_string())).await.unwrap();
    let refused = next_error(&mut socket).await;
    assert_eq!(refused["code"], "not_member", "{refused}");

    // --- phase: a page of another origin cannot open the WebSocket
    let hijack = wss(&http, &ca, Some("https://evil.example")).await;
    assert!(hijack.as_ref().is_err_and(|error| error.contains("403")), "{:?}", hijack.err());

    // --- phase: the native gRPC session needs a token too
    let gateway = Credential { tls: common::client_tls(&tls, None), token: None };
    let mut session = pb::gateway_client::GatewayClient::new(channel(&cluster.gateways[0].grpc, &gateway).await);
    let hello_pb = pb::GatewayRequest {
        request: Some(pb::gateway_request::Request::Hello(pb::Hello { user: "alice".into(), ..Default::default() })),
    };
    let refused = session.session(futures::stream::iter([hello_pb.clone()])).await;
    assert_eq!(kind(refused), ErrorKind::Unauthenticated);
    let with_alice = Credential { token: Some(alice.clone()), ..gateway.clone() };
    // The request stream stays open: its end is the client hanging up.
    let (requests, receiver) = tokio::sync::mpsc::channel(4);
    requests.send(hello_pb).await.unwrap();
    let opened = session.session(with_token(tokio_stream::wrappers::ReceiverStream::new(receiver), &with_alice)).await;
    let mut events = opened.unwrap().into_inner();
    let first = events.message().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(pb::gateway_event::Event::Welcome(ref w)) if w.user == "alice"), "{first:?}");
    // alice's native client cannot subscribe to bob's space either.
    let subscribe =
        pb::gateway_request::Request::Subscribe(pb::SubscribeSpace { space: "secret".into(), after: Some(0) });
    requests.send(pb::GatewayRequest { request: Some(subscribe) }).await.unwrap();
    let refused = loop {
        match events.message().await.unwrap().unwrap().event {
            Some(pb::gateway_event::Event::Error(error)) => break error,
            _ => continue,
        }
    };
    assert_eq!((refused.space.as_str(), refused.code.as_str()), ("secret", "not_member"), "{refused:?}");
    // An undecodable request is a protocol error, not "shutting down".
    use prost::Message as _;
    let grpc = &cluster.gateways[0].grpc;
    let mut raw = tonic::client::Grpc::new(channel(grpc, &with_alice).await);
    raw.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/spaceraft.v1.Gateway/Session");
    let (requests_raw, receiver_raw) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let hello_again = pb::GatewayRequest { request: Some(pb::gateway_request::Request::Hello(pb::Hello::default())) };
    requests_raw.send(hello_again.encode_to_vec()).await.unwrap();
    requests_raw.send(vec![0xff, 0xff, 0xff]).await.unwrap();
    let stream = with_token(tokio_stream::wrappers::ReceiverStream::new(receiver_raw), &with_alice);
    let mut answers = raw.streaming(stream, path, RawCodec).await.unwrap().into_inner();
    let ended = loop {
        match answers.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the session ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::InvalidArgument, "{ended:?}");

    // --- phase: slowloris and connection floods: slow connections are closed, others served
    let mut slow = Vec::new();
    for _ in 0..30 {
        slow.push(tokio::net::TcpStream::connect(&http).await.unwrap());
    }
    let closed =
        futures::future::join_all(slow.into_iter().map(|tcp| closed_by_server(tcp, b"", Duration::from_secs(20))));
    let closed: Vec<Option<Duration>> = closed.await;
    assert!(
        closed.iter().all(Option::is_some),
        "a connection that never finished its handshake stayed open: {closed:?}"
    );
    let at_once = closed.iter().flatten().filter(|after| **after < Duration::from_secs(1)).count();
    assert!(at_once >= 10, "connections past connections_per_ip_max = 20 were kept: {closed:?}");
    let mut partial = Vec::new();
    for _ in 0..5 {
        partial.push(common::gateway::tls_connect(&http, &ca).await.unwrap());
    }
    let headers = format!("GET /v1/status HTTP/1.1\r\nHost: {http}\r\n");
    let closed = futures::future::join_all(
        partial.into_iter().map(|stream| closed_by_server(stream, headers.as_bytes(), Duration::from_secs(15))),
    );
    let closed: Vec<Option<Duration>> = closed.await;
    assert!(closed.iter().all(Option::is_some), "headers sent slowly kept a connection open: {closed:?}");
    assert!(cluster.gateway_status(0).await.is_some(), "the gateway still serves");

    // --- phase: plaintext to the TLS port gets no page
    assert_eq!(common::gateway::http_get(&format!("http://{http}/v1/status")).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_bounds_connections_per_address_and_unfinished_handshakes() {
    let cluster = TestCluster::start_secured("", "connections_per_ip_max = 16\n").await;
    let tls = cluster.tls.clone().unwrap();
    let addr = cluster.node(3).addr.clone();

    // --- phase: 40 connections that never start TLS: those past the bound
    // are closed at once, the others when the handshake times out
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let closed =
        futures::future::join_all(idle.into_iter().map(|tcp| closed_by_server(tcp, b"", Duration::from_secs(20))));
    let closed: Vec<Option<Duration>> = closed.await;
    assert!(closed.iter().all(Option::is_some), "an idle connection stayed open: {closed:?}");
    let at_once = closed.iter().flatten().filter(|after| **after < Duration::from_secs(1)).count();
    assert!(at_once >= 24, "connections past connections_per_ip_max = 16 were kept: {closed:?}");

    // --- phase: the node still serves
    let operator = credential(&tls, Some(&certs::operator_stem(common::OPERATOR)), None);
    let create = pb::CreateSpaceRequest { name: "after".into(), members: vec!["alice".into()], ..Default::default() };
    client(&addr, &operator).await.create_space(create).await.unwrap();
}
