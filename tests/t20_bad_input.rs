//! Bad input gets a clear error, changes nothing and crashes nothing.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::TestCluster;
use spaceraft::error::{ApiError, ErrorKind};
use spaceraft::pb;
use spaceraft::wire::{stamped, ClusterId};
use tonic::Code;

fn post(space: &str, author: &str, body: &str, key: &str) -> pb::PostRequest {
    pb::PostRequest { space: space.into(), author: author.into(), body: body.into(), idempotency_key: key.into() }
}

fn history(space: &str, user: &str) -> pb::HistoryRequest {
    pb::HistoryRequest { space: space.into(), user: user.into(), from_seq: 1, limit: 0, linearizable: false }
}

async fn expect_code<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    what: &str,
) -> String {
    match result {
        Ok(response) => panic!("{what}: expected {code:?}, got {:?}", response.into_inner()),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            status.message().to_string()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    let cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, "general", &["alice", "bob"]).await;
    let mut client = cluster.client(2).await;
    client.post(post("general", "alice", "first", "k1")).await.expect("a valid post");

    // --- phase: unknown space
    let message =
        expect_code(client.post(post("nowhere", "alice", "hi", "")).await, Code::NotFound, "post to unknown space")
            .await;
    assert!(message.contains("nowhere"), "{message}");
    expect_code(client.history(history("nowhere", "alice")).await, Code::NotFound, "history of unknown space").await;
    expect_code(
        client.subscribe(pb::SubscribeRequest { space: "nowhere".into(), user: "alice".into(), from_seq: 1 }).await,
        Code::NotFound,
        "subscribe to unknown space",
    )
    .await;

    // --- phase: non-member
    let message =
        expect_code(client.post(post("general", "mallory", "hi", "")).await, Code::PermissionDenied, "non-member post")
            .await;
    assert!(message.contains("mallory") && message.contains("general"), "{message}");
    expect_code(client.history(history("general", "mallory")).await, Code::PermissionDenied, "non-member history")
        .await;
    expect_code(
        client.subscribe(pb::SubscribeRequest { space: "general".into(), user: "mallory".into(), from_seq: 1 }).await,
        Code::PermissionDenied,
        "non-member subscribe",
    )
    .await;

    // --- phase: malformed posts
    expect_code(client.post(post("general", "alice", "", "")).await, Code::InvalidArgument, "empty body").await;
    let too_large = "x".repeat(64 * 1024 + 1);
    let message = expect_code(
        client.post(post("general", "alice", &too_large, "")).await,
        Code::InvalidArgument,
        "oversized body",
    )
    .await;
    assert!(message.contains("65537"), "{message}");
    expect_code(client.post(post("bad name!", "alice", "hi", "")).await, Code::InvalidArgument, "invalid space name")
        .await;
    expect_code(client.post(post("general", "", "hi", "")).await, Code::InvalidArgument, "empty author").await;
    expect_code(client.post(post("general", "alice", "hi", &"k".repeat(200))).await, Code::InvalidArgument, "long key")
        .await;
    expect_code(
        client
            .create_space(pb::CreateSpaceRequest { name: "empty".into(), members: vec![], attrs: Default::default() })
            .await,
        Code::InvalidArgument,
        "space without members",
    )
    .await;
    expect_code(
        client
            .create_space(pb::CreateSpaceRequest {
                name: "general".into(),
                members: vec!["eve".into()],
                attrs: Default::default(),
            })
            .await,
        Code::AlreadyExists,
        "space name taken with other members",
    )
    .await;
    // The largest allowed body is accepted.
    let largest = "y".repeat(64 * 1024);
    client.post(post("general", "bob", &largest, "k2")).await.expect("a body of exactly the limit");

    // --- phase: garbage bytes on the gRPC port
    let addr = cluster.node(1).addr.clone();
    for garbage in
        [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect()]
    {
        let mut socket = std::net::TcpStream::connect(&addr).expect("connect to the grpc port");
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = socket.write_all(&garbage);
        let mut answer = Vec::new();
        let _ = socket.read_to_end(&mut answer);
    }

    // --- phase: raft requests of no cluster or another cluster
    let mut unstamped = pb::raft_client::RaftClient::new(common::connect(&addr).await);
    let vote = pb::RaftRequest {
        group_id: 1,
        from_node: 2,
        from_addr: cluster.node(2).addr.clone(),
        to_node: 1,
        payload: vec![1, 2, 3],
        ..Default::default()
    };
    let refused = unstamped.vote(vote.clone()).await.expect_err("a raft request naming no cluster");
    assert_eq!(ApiError::from_status(&refused).kind, ErrorKind::WrongCluster, "{refused:?}");
    let other = ClusterId::known("0123456789abcdef");
    let mut foreign = pb::raft_client::RaftClient::new(stamped(common::connect(&addr).await, &other));
    let refused = foreign.vote(vote).await.expect_err("a raft request of another cluster");
    assert_eq!(ApiError::from_status(&refused).kind, ErrorKind::WrongCluster, "{refused:?}");
    let mut foreign_client = pb::client_client::ClientClient::new(stamped(common::connect(&addr).await, &other));
    let refused = foreign_client.post(post("general", "alice", "elsewhere", "k9")).await.expect_err("another cluster");
    assert_eq!(ApiError::from_status(&refused).kind, ErrorKind::WrongCluster, "{refused:?}");

    // --- phase: raft requests that are not for this node, or undecodable
    let ours = ClusterId::known(&common::cluster_id(&cluster));
    let mut raft = pb::raft_client::RaftClient::new(stamped(common::connect(&addr).await, &ours));
    let wrong_target = pb::RaftRequest {
        group_id: 1,
        from_node: 2,
        from_addr: cluster.node(2).addr.clone(),
        to_node: 9,
        payload: vec![1, 2, 3],
        ..Default::default()
    };
    expect_code(raft.vote(wrong_target.clone()).await, Code::FailedPrecondition, "raft request for another node id")
        .await;
    let impostor = pb::RaftRequest {
        group_id: 1,
        from_node: 2,
        from_addr: "127.0.0.1:1".into(),
        to_node: 1,
        payload: vec![],
        ..Default::default()
    };
    let message =
        expect_code(raft.vote(impostor.clone()).await, Code::PermissionDenied, "raft request from an impostor").await;
    assert!(message.contains("duplicate node id"), "{message}");
    let garbage = pb::RaftRequest {
        group_id: 1,
        from_node: 2,
        from_addr: cluster.node(2).addr.clone(),
        to_node: 1,
        payload: vec![0xff; 16],
        ..Default::default()
    };
    expect_code(raft.vote(garbage.clone()).await, Code::InvalidArgument, "undecodable raft payload").await;
    let unknown_group = pb::RaftRequest {
        group_id: 77,
        from_node: 2,
        from_addr: String::new(),
        to_node: 1,
        payload: vec![],
        ..Default::default()
    };
    expect_code(raft.vote(unknown_group.clone()).await, Code::NotFound, "raft request for an unknown group").await;

    // --- phase: the same, and worse, inside one append envelope: each
    // exchange gets its own error, and the call goes on to the next
    use pb::raft_envelope_item::Kind;
    let item = |exchange, kind: i32, request: Option<&pb::RaftRequest>| pb::RaftEnvelopeItem {
        exchange,
        kind,
        request: request.cloned(),
    };
    let envelope = pb::RaftEnvelope {
        items: vec![
            item(1, Kind::Append as i32, Some(&wrong_target)),
            item(2, Kind::Open as i32, Some(&impostor)),
            item(3, Kind::Append as i32, Some(&garbage)),
            item(4, Kind::Open as i32, Some(&unknown_group)),
            item(5, 42, Some(&garbage)),
            item(6, Kind::Append as i32, None),
            // A stream never opened, and closing it: nothing to answer.
            item(7, Kind::Stream as i32, Some(&garbage)),
            item(8, Kind::Close as i32, None),
        ],
    };
    let call = raft.append_envelope(futures::stream::iter([envelope])).await;
    let mut answers = call.expect("an envelope call is taken").into_inner();
    let mut codes = std::collections::BTreeMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), answers.message()).await;
        match next.expect("the envelope call ends within 10 s").expect("no error on the call itself") {
            Some(envelope) => {
                codes.extend(envelope.items.into_iter().map(|item| (item.exchange, Code::from(item.code))))
            }
            None => break,
        }
    }
    let expected = [
        (1, Code::FailedPrecondition),
        (2, Code::PermissionDenied),
        (3, Code::InvalidArgument),
        (4, Code::NotFound),
        (5, Code::InvalidArgument),
        (6, Code::InvalidArgument),
    ];
    assert_eq!(codes, std::collections::BTreeMap::from(expected), "one error per bad exchange, nothing else");

    // --- phase: nothing changed, nothing crashed
    let mut client = cluster.client(1).await;
    let seq =
        client.post(post("general", "alice", "still here", "k3")).await.expect("node 1 still serves").into_inner().seq;
    assert_eq!(seq, 3);
    for node in 1..=3 {
        // A follower may not have applied the space yet: wait with a deadline.
        let mut reader = cluster.client(node).await;
        let what = format!("node {node} to hold k1, k2 and k3");
        common::wait_until(Duration::from_secs(10), &what, async || {
            let read = reader.history(history("general", "alice")).await;
            let messages = read.map(|r| r.into_inner().messages).map_err(|status| status.to_string())?;
            let keys: Vec<String> = messages.into_iter().map(|m| m.idempotency_key).collect();
            if keys == ["k1", "k2", "k3"] {
                Ok(())
            } else {
                Err(format!("keys {keys:?}"))
            }
        })
        .await;
    }
    assert!(!cluster.node_log(1).contains("panicked"), "node 1 panicked:\n{}", cluster.node_log(1));
    // A log file is plain text: colour codes only go to a terminal.
    assert!(cluster.node_log(1).contains("INFO"), "node 1 logged nothing:\n{}", cluster.node_log(1));
    assert!(!cluster.node_log(1).contains('\u{1b}'), "ANSI escape codes in node 1's log file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_with_a_taken_id_refuses_to_start() {
    let cluster = TestCluster::start().await;
    let port = common::free_ports(1)[0];
    let data_dir = cluster.dir.path().join("impostor");
    let config_path = cluster.dir.path().join("impostor.toml");
    let peers: Vec<(u64, String)> = cluster.nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
    // Same id as node 2, another address and directory.
    common::write_config(&config_path, 2, &format!("127.0.0.1:{port}"), &data_dir, &peers, "");
    let stderr = common::node_refuses_to_start(&config_path, &[]);
    assert!(stderr.contains("node 2") && stderr.contains("two nodes with one id"), "{stderr}");

    // Without itself in the peers list it asks the peers, which know node 2
    // at another address.
    let others: Vec<(u64, String)> = peers.iter().filter(|(id, _)| *id != 2).cloned().collect();
    common::write_config(&config_path, 2, &format!("127.0.0.1:{port}"), &data_dir, &others, "");
    let stderr = common::node_refuses_to_start(&config_path, &[]);
    assert!(stderr.contains("node id 2 is registered at"), "{stderr}");
    // The cluster is unaffected.
    let mut client = cluster.client(2).await;
    common::create_space(&cluster, 2, "after", &["alice"]).await;
    client.post(post("after", "alice", "hi", "")).await.expect("cluster still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_below_retention_is_refused_not_skipped() {
    let cluster = TestCluster::start_with("[space]\nretain_messages_max = 5\n").await;
    common::create_space(&cluster, 1, "general", &["alice"]).await;
    let mut client = cluster.client(1).await;
    for n in 1..=12 {
        client.post(post("general", "alice", &format!("m{n}"), &format!("k{n}"))).await.expect("post");
    }
    let mut follower = cluster.client(2).await;
    // Wait until the follower has applied everything.
    let info = common::wait_until(Duration::from_secs(20), "the follower to apply all 12 posts", async || {
        // NotFound until the follower has applied the space's creation.
        let read = follower.get_space(pb::GetSpaceRequest { name: "general".into() }).await;
        match read.map(|r| r.into_inner()) {
            Ok(info) if info.last_seq == 12 => Ok(info),
            Ok(info) => Err(format!("last seq {}", info.last_seq)),
            Err(status) => Err(status.to_string()),
        }
    })
    .await;
    assert_eq!(info.first_seq, 8);
    let message =
        expect_code(follower.history(history("general", "alice")).await, Code::OutOfRange, "history below retention")
            .await;
    assert!(message.contains("oldest retained seq is 8"), "{message}");
    expect_code(
        follower.subscribe(pb::SubscribeRequest { space: "general".into(), user: "alice".into(), from_seq: 3 }).await,
        Code::OutOfRange,
        "subscribe below retention",
    )
    .await;
    let kept = follower
        .history(pb::HistoryRequest {
            space: "general".into(),
            user: "alice".into(),
            from_seq: 8,
            limit: 0,
            linearizable: false,
        })
        .await
        .expect("history of what is retained")
        .into_inner();
    let seqs: Vec<u64> = kept.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [8, 9, 10, 11, 12]);
    let mut stream = follower
        .subscribe(pb::SubscribeRequest { space: "general".into(), user: "alice".into(), from_seq: 8 })
        .await
        .expect("subscribe from the oldest retained seq")
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match stream.message().await.expect("stream").expect("event").event {
            Some(pb::subscribe_event::Event::Message(message)) => seen.push(message.seq),
            Some(pb::subscribe_event::Event::CaughtUp(_)) | None => {}
        }
    }
    assert_eq!(seen, [8, 9, 10, 11, 12]);
    // A retried key of a trimmed message is no longer remembered: it commits anew.
    let again = client.post(post("general", "alice", "m1 again", "k1")).await.unwrap().into_inner();
    assert_eq!((again.seq, again.duplicate), (13, false));
    let kept_key = client.post(post("general", "alice", "m12 again", "k12")).await.unwrap().into_inner();
    assert_eq!((kept_key.seq, kept_key.duplicate), (12, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_bypasses_validation_and_a_key_is_its_authors() {
    let cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, "general", &["alice", "bob"]).await;
    let mut client = cluster.client(1).await;
    let mut admin = cluster.admin(1).await;

    // --- phase: raw commands through Admin.Propose are checked like requests
    let huge = spaceraft::space::PostCommand {
        space: "general".into(),
        author: "alice".into(),
        body: "x".repeat(300 * 1024),
        idempotency_key: "raw-1".into(),
    };
    let command = spaceraft::space::Command::Posts(vec![huge]);
    let propose = pb::ProposeRequest { cluster_id: 1, command: postcard::to_stdvec(&command).unwrap() };
    let refused = admin.propose(propose).await.expect_err("a body past the limit through Propose");
    assert_eq!(ApiError::from_status(&refused).kind, ErrorKind::TooLarge { field: "body".into() }, "{refused:?}");
    let create = spaceraft::space::Command::CreateSpace {
        name: "bad name/../\0x".into(),
        members: vec!["alice".into()],
        attrs: Default::default(),
        dedup_window_len: 10,
        retain_messages_max: 0,
    };
    let propose = pb::ProposeRequest { cluster_id: 1, command: postcard::to_stdvec(&create).unwrap() };
    let refused = admin.propose(propose).await.expect_err("a malformed name through Propose");
    assert!(matches!(ApiError::from_status(&refused).kind, ErrorKind::Invalid { .. }), "{refused:?}");
    let listed = client.list_spaces(pb::ListSpacesRequest { user: String::new() }).await.unwrap().into_inner();
    assert_eq!(listed.spaces.iter().map(|space| space.name.as_str()).collect::<Vec<_>>(), ["general"]);
    let stored = client.history(history("general", "alice")).await.unwrap().into_inner();
    assert!(stored.messages.is_empty(), "nothing was stored: {:?}", stored.messages);

    // --- phase: bob reusing alice's key posts anew; each retry stays deduplicated
    let alice = client.post(post("general", "alice", "from alice", "shared")).await.unwrap().into_inner();
    let bob = client.post(post("general", "bob", "from bob", "shared")).await.unwrap().into_inner();
    assert_eq!((alice.seq, alice.duplicate, bob.seq, bob.duplicate), (1, false, 2, false));
    let retried = client.post(post("general", "bob", "from bob", "shared")).await.unwrap().into_inner();
    assert_eq!((retried.seq, retried.duplicate), (2, true));
    let stored = client.history(history("general", "alice")).await.unwrap().into_inner();
    let bodies: Vec<&str> = stored.messages.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["from alice", "from bob"]);
}
