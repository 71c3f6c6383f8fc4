//! Gateways end to end: real nodes and gateways, WebSocket clients (and a
//! native gRPC client) on every region's gateway.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::gateway::{next_json, ws_hello, ws_post, Recorder, TEST_UPSTREAM};
use common::{create_space, full_history, TestCluster};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use spaceraft::pb;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_on_every_gateway_gets_every_message_in_order() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "s1", &["alice", "bob", "carol"]).await;
    create_space(&cluster, 1, "s2", &["alice", "bob"]).await;
    create_space(&cluster, 1, "s3", &["carol", "dave"]).await;
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.ws_url()).collect();

    // --- phase: subscribers on every gateway, and a non-member
    let alice = Recorder::start("alice", &["s1", "s2"], vec![urls[0].clone()]);
    let bob = Recorder::start("bob", &["s1", "s2"], vec![urls[1].clone()]);
    let carol = Recorder::start("carol", &["s1", "s3"], vec![urls[2].clone()]);
    let dave = Recorder::start("dave", &["s3"], vec![urls[0].clone()]);
    let mallory = Recorder::start("mallory", &["s1", "s2", "s3"], vec![urls[1].clone()]);

    // A native client on the gRPC side of the eu-west gateway.
    let mut native = pb::gateway_client::GatewayClient::new(common::connect(&cluster.gateways[1].grpc).await);
    let (requests, receiver) = tokio::sync::mpsc::channel(16);
    requests
        .send(pb::GatewayRequest {
            request: Some(pb::gateway_request::Request::Hello(pb::Hello {
                user: "carol".into(),
                cursors: [("s1".to_string(), 0u64)].into_iter().collect(),
                token: String::new(),
            })),
        })
        .await
        .unwrap();
    let mut native_events =
        native.session(tokio_stream::wrappers::ReceiverStream::new(receiver)).await.unwrap().into_inner();

    // --- phase: posts from every region, through the gateways and the nodes
    let per_poster = 40;
    let mut posters = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let url = url.clone();
        posters.push(tokio::spawn(async move {
            let user = ["alice", "bob", "carol"][index];
            let (mut ws, _) = ws_hello(&url, user, &BTreeMap::new()).await.unwrap();
            for n in 0..per_poster {
                let space = if user == "carol" || n % 2 == 0 { "s1" } else { "s2" };
                let space = if user == "carol" && n % 3 == 0 { "s3" } else { space };
                ws_post(&mut ws, space, &format!("{user} {n}"), &format!("{user}-{n}")).await.unwrap();
            }
        }));
    }
    let mut node_client = cluster.client(2).await;
    for n in 0..20 {
        node_client
            .post(pb::PostRequest {
                space: "s2".into(),
                author: "bob".into(),
                body: format!("grpc {n}"),
                idempotency_key: String::new(),
            })
            .await
            .unwrap();
    }
    for poster in posters {
        poster.await.unwrap();
    }

    // --- phase: everyone has everything of their spaces, exactly once, in order
    let mut last = BTreeMap::new();
    for space in ["s1", "s2", "s3"] {
        last.insert(space, full_history(&cluster, 1, space).await.len() as u64);
    }
    assert_eq!(last["s1"] + last["s2"] + last["s3"], 3 * per_poster as u64 + 20);
    for (client, spaces) in
        [(&alice, vec!["s1", "s2"]), (&bob, vec!["s1", "s2"]), (&carol, vec!["s1", "s3"]), (&dave, vec!["s3"])]
    {
        for space in spaces {
            client.wait_for(space, last[space], WAIT).await;
            client.assert_exactly(space, last[space]);
        }
    }
    // Every client saw the same body at each seq.
    let history = full_history(&cluster, 3, "s1").await;
    for message in &history {
        for client in [&alice, &bob, &carol] {
            assert_eq!(client.seen.lock().unwrap().bodies[&("s1".to_string(), message.seq)], message.body);
        }
    }

    // --- phase: the native client got s1 in order too
    let mut native_seqs = Vec::new();
    while native_seqs.len() < last["s1"] as usize {
        let event =
            tokio::time::timeout(WAIT, native_events.next()).await.expect("native event in time").unwrap().unwrap();
        if let Some(pb::gateway_event::Event::Message(message)) = event.event {
            native_seqs.push(message.seq);
        }
    }
    assert_eq!(native_seqs, (1..=last["s1"]).collect::<Vec<_>>());

    // --- phase: the non-member got nothing but not_member errors
    let seen = mallory.seen.lock().unwrap();
    assert!(seen.seqs.is_empty(), "a non-member received messages: {:?}", seen.seqs);
    assert!(seen.errors.iter().any(|e| e["code"] == "not_member"), "errors: {:?}", seen.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_resumes_on_another_gateway_with_exactly_what_it_missed() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "general", &["alice", "bob"]).await;
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.ws_url()).collect();

    let (mut poster, _) = ws_hello(&urls[2], "bob", &BTreeMap::new()).await.unwrap();
    for n in 1..=10 {
        assert_eq!(ws_post(&mut poster, "general", &format!("m{n}"), &format!("k{n}")).await.unwrap(), n);
    }
    // Retrying a key commits nothing new and answers the original seq.
    let retry = json!({"type": "post", "ref": "again", "space": "general", "body": "m3", "key": "k3"});
    poster.send(Message::text(retry.to_string())).await.unwrap();
    let answer = next_json(&mut poster, WAIT).await.unwrap();
    assert_eq!((answer["seq"].as_u64(), answer["duplicate"].as_bool()), (Some(3), Some(true)), "{answer}");

    // --- phase: alice reads up to 4 on us-east, leaves, comes back on eu-west
    let cursors = BTreeMap::from([("general".to_string(), 0u64)]);
    let (mut first, welcome) = ws_hello(&urls[0], "alice", &cursors).await.unwrap();
    assert_eq!(welcome["spaces"][0]["name"], "general");
    let subscribed = next_json(&mut first, WAIT).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut got = Vec::new();
    while got.len() < 4 {
        let event = next_json(&mut first, WAIT).await.unwrap();
        if event["type"] == "message" {
            got.push(event["seq"].as_u64().unwrap());
        }
    }
    drop(first);
    for n in 11..=15 {
        ws_post(&mut poster, "general", &format!("m{n}"), &format!("k{n}")).await.unwrap();
    }
    let cursors = BTreeMap::from([("general".to_string(), 4u64)]);
    let (mut second, _) = ws_hello(&urls[1], "alice", &cursors).await.unwrap();
    let subscribed = next_json(&mut second, WAIT).await.unwrap();
    assert_eq!(
        (subscribed["resumed"].as_bool(), subscribed["next_seq"].as_u64()),
        (Some(true), Some(5)),
        "{subscribed}"
    );
    let mut caught_up = false;
    while got.len() < 15 {
        let event = next_json(&mut second, WAIT).await.unwrap();
        match event["type"].as_str() {
            Some("message") => got.push(event["seq"].as_u64().unwrap()),
            Some("caught_up") => caught_up = true,
            _ => {}
        }
    }
    assert_eq!(got, (1..=15).collect::<Vec<_>>());
    // Live after the backlog.
    ws_post(&mut poster, "general", "live", "k-live").await.unwrap();
    loop {
        let event = next_json(&mut second, WAIT).await.unwrap();
        match event["type"].as_str() {
            Some("caught_up") => caught_up = true,
            Some("message") => {
                assert_eq!(event["seq"], 16);
                assert_eq!(event["body"], "live");
                break;
            }
            _ => {}
        }
    }
    assert!(caught_up, "caught_up was sent");

    // History through the gateway, as a member and as a non-member.
    second
        .send(Message::text(json!({"type":"history","ref":"h","space":"general","from":14}).to_string()))
        .await
        .unwrap();
    let history = loop {
        let event = next_json(&mut second, WAIT).await.unwrap();
        if event["ref"] == "h" {
            break event;
        }
    };
    let seqs: Vec<u64> = history["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![14, 15, 16]);
    let (mut mallory, welcome) = ws_hello(&urls[1], "mallory", &BTreeMap::new()).await.unwrap();
    assert_eq!(welcome["spaces"], json!([]));
    for request in [
        json!({"type":"history","ref":"h","space":"general"}),
        json!({"type":"post","ref":"h","space":"general","body":"x"}),
    ] {
        mallory.send(Message::text(request.to_string())).await.unwrap();
        let event = next_json(&mut mallory, WAIT).await.unwrap();
        assert_eq!((event["type"].as_str(), event["code"].as_str()), (Some("error"), Some("not_member")), "{event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_a_clear_error_and_the_gateway_keeps_serving() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "general", &["alice"]).await;
    let url = cluster.gateways[0].ws_url();

    async fn close_of(url: &str, frames: Vec<Message>) -> String {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        for frame in frames {
            if ws.send(frame).await.is_err() {
                break;
            }
        }
        loop {
            match next_json(&mut ws, WAIT).await {
                Ok(_) => continue,
                Err(why) => return why,
            }
        }
    }
    let hello = Message::text(json!({"type":"hello","user":"alice"}).to_string());
    assert!(close_of(&url, vec![Message::text("{not json")]).await.starts_with("closed 4000"));
    assert!(close_of(&url, vec![Message::text(r#"{"type":"ping"}"#)]).await.starts_with("closed 4000"));
    assert!(close_of(&url, vec![Message::binary(vec![0u8, 159, 146, 150])]).await.starts_with("closed 4000"));
    assert!(close_of(&url, vec![Message::text(r#"{"type":"hello","user":"bad name!"}"#)])
        .await
        .starts_with("closed 4000"));
    assert!(close_of(&url, vec![hello.clone(), Message::text(r#"{"type":"launch"}"#)])
        .await
        .starts_with("closed 4000"));
    assert!(close_of(&url, vec![hello.clone(), hello.clone()]).await.starts_with("closed 4000"));
    let huge = Message::text(format!(r#"{{"type":"post","space":"general","body":"{}"}}"#, "x".repeat(300 * 1024)));
    let closed = close_of(&url, vec![hello.clone(), huge]).await;
    assert!(closed.starts_with("closed 1009") || closed.starts_with("error"), "{closed}");

    // Errors that keep the connection open.
    let (mut ws, _) = ws_hello(&url, "alice", &BTreeMap::new()).await.unwrap();
    let cases = [
        (json!({"type":"subscribe","space":"nowhere"}), "unknown_space"),
        (json!({"type":"subscribe","space":"bad name"}), "bad_request"),
        (json!({"type":"post","ref":"1","space":"general","body":""}), "bad_request"),
        (json!({"type":"post","ref":"2","space":"general","body":"x".repeat(65 * 1024)}), "too_large"),
        (json!({"type":"post","ref":"3","space":"nowhere","body":"x"}), "unknown_space"),
        (json!({"type":"unsubscribe","space":"general"}), "not_subscribed"),
    ];
    for (request, code) in cases {
        ws.send(Message::text(request.to_string())).await.unwrap();
        let event = next_json(&mut ws, WAIT).await.unwrap();
        assert_eq!(
            (event["type"].as_str(), event["code"].as_str()),
            (Some("error"), Some(code)),
            "{request} -> {event}"
        );
    }
    // Nothing was committed by any of it, and the gateway still serves.
    assert_eq!(ws_post(&mut ws, "general", "still here", "k1").await.unwrap(), 1);
    assert!(cluster.gateway_status(0).await.is_some());
}
