//! Gateways across failures: the replica a gateway follows is SIGKILLed,
//! then a whole region (node and gateway); a slow client is closed without
//! slowing the others. Every client must end with every message of its
//! spaces exactly once, in order.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{next_json, ws_hello, Recorder, TEST_UPSTREAM};
use common::{create_space, full_history, TestCluster};
use spaceraft::pb;

const WAIT: Duration = Duration::from_secs(90);

/// Posts with an idempotency key, retrying on any node until acknowledged.
async fn post_until_acked(addrs: &[String], space: &str, body: &str, key: &str) -> u64 {
    let request = pb::PostRequest {
        space: space.into(),
        author: "poster".into(),
        body: body.into(),
        idempotency_key: key.into(),
    };
    common::post_until_acknowledged(addrs, 0, request, WAIT, common::any_failure).await
}

/// The node index (1-based) a gateway's main upstream follows now.
async fn followed_node(cluster: &TestCluster, gateway: usize) -> Option<u64> {
    let status = cluster.gateway_status(gateway).await?;
    let slot = &status["upstreams"][0];
    if slot["connected"] != true {
        return None;
    }
    let addr = slot["node"].as_str()?.split_once('@')?.1.to_string();
    cluster.nodes.iter().find(|node| node.addr == addr).map(|node| node.id)
}

/// `Ok` when `reached`, else what was seen instead.
fn reached<T: std::fmt::Debug>(reached: bool, seen: T) -> Result<(), T> {
    if reached {
        Ok(())
    } else {
        Err(seen)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_keep_receiving_when_the_followed_node_and_then_a_region_die() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    let users = ["u0", "u1", "u2", "u3", "poster"];
    create_space(&cluster, 1, "a", &users).await;
    create_space(&cluster, 1, "b", &users).await;
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.ws_url()).collect();
    let rotate = |first: usize| -> Vec<String> { (0..3).map(|i| urls[(first + i) % 3].clone()).collect() };
    let recorders = [
        Recorder::start("u0", &["a", "b"], rotate(0)),
        Recorder::start("u1", &["a", "b"], rotate(1)),
        Recorder::start("u2", &["a", "b"], rotate(2)),
        Recorder::start("u3", &["a"], rotate(1)),
    ];

    // --- phase: a steady stream of posts to both spaces
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let acked: Arc<Mutex<Vec<(String, u64, String)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poster = {
        let (acked, stop, addrs) = (acked.clone(), stop.clone(), addrs.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let space = if n.is_multiple_of(2) { "a" } else { "b" };
                let body = format!("post {n}");
                let seq = post_until_acked(&addrs, space, &body, &format!("key-{n}")).await;
                acked.lock().unwrap().push((space.to_string(), seq, body));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let acked_len = || acked.lock().unwrap().len();
    common::wait_until(WAIT, "40 posts acknowledged", async || reached(acked_len() >= 40, acked_len())).await;

    // --- phase: SIGKILL the node the us-east gateway follows
    let followed = followed_node(&cluster, 0).await.expect("us-east gateway follows a node");
    cluster.kill_node(followed);
    common::wait_until(WAIT, "the us-east gateway to follow another node", async || {
        let now_followed = followed_node(&cluster, 0).await;
        reached(now_followed.is_some_and(|node| node != followed), now_followed)
    })
    .await;
    let before = acked_len();
    common::wait_until(WAIT, "40 more posts acknowledged", async || reached(acked_len() >= before + 40, acked_len()))
        .await;

    // --- phase: bring it back, then SIGKILL the whole eu-west region
    cluster.start_node(followed);
    cluster.kill_node(2);
    cluster.kill_gateway(1);
    let before = acked_len();
    common::wait_until(WAIT, "40 more posts acknowledged without eu-west", async || {
        reached(acked_len() >= before + 40, acked_len())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    poster.await.unwrap();

    // --- phase: every acknowledged post is in the history, every client has it all
    let survivor = if followed == 3 { 1 } else { 3 };
    let acked = acked.lock().unwrap().clone();
    for space in ["a", "b"] {
        let acked_max = acked.iter().filter(|(s, _, _)| s == space).map(|(_, seq, _)| *seq).max().unwrap();
        let what = format!("the survivor to apply {space}/{acked_max}");
        let history = common::wait_until(WAIT, &what, async || {
            let history = full_history(&cluster, survivor, space).await;
            if history.len() as u64 >= acked_max {
                Ok(history)
            } else {
                Err(format!("{} messages", history.len()))
            }
        })
        .await;
        for (_, seq, body) in acked.iter().filter(|(s, _, _)| s == space) {
            assert_eq!(&history[*seq as usize - 1].body, body, "acknowledged post at {space}/{seq} lost or changed");
        }
        let last = history.len() as u64;
        for recorder in recorders.iter().filter(|r| r.user != "u3" || space == "a") {
            recorder.wait_for(space, last, WAIT).await;
            recorder.assert_exactly(space, last);
        }
    }
    let u1 = recorders[1].seen.lock().unwrap();
    assert!(u1.connects >= 2, "the eu-west client reconnected elsewhere (connects {})", u1.connects);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_client_is_closed_with_4008_and_the_others_keep_up() {
    let mut cluster = TestCluster::start().await;
    let config = format!("{TEST_UPSTREAM}[clients]\nsend_queue_len_max = 64\nclose_wait_ms_max = 30000\n");
    cluster.start_gateways(&config).await;
    create_space(&cluster, 1, "big", &["fast1", "fast2", "slow", "poster"]).await;
    let url = cluster.gateways[0].ws_url();
    let fast =
        [Recorder::start("fast1", &["big"], vec![url.clone()]), Recorder::start("fast2", &["big"], vec![url.clone()])];
    // The slow client subscribes, then reads nothing.
    let cursors = BTreeMap::from([("big".to_string(), 0u64)]);
    let (mut slow, _) = ws_hello(&url, "slow", &cursors).await.unwrap();

    // --- phase: 32 MiB of posts, more than socket buffers and the queue hold
    let total = 1_000u64;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let body = "x".repeat(32 * 1024);
    let mut posters = Vec::new();
    for worker in 0..8u64 {
        let (addrs, body) = (addrs.clone(), body.clone());
        posters.push(tokio::spawn(async move {
            for n in (worker..total).step_by(8) {
                post_until_acked(&addrs, "big", &body, &format!("k{n}")).await;
            }
        }));
    }
    for poster in posters {
        poster.await.unwrap();
    }

    // --- phase: the fast clients got everything; the slow one was closed
    for client in &fast {
        client.wait_for("big", total, WAIT).await;
        client.assert_exactly("big", total);
    }
    common::wait_until(WAIT, "the gateway to close the slow consumer", async || {
        let status = cluster.gateway_status(0).await;
        reached(status.as_ref().is_some_and(|status| status["slow_consumers_closed"] == 1), status)
    })
    .await;
    for client in &fast {
        assert_eq!(client.seen.lock().unwrap().connects, 1, "a fast client was disconnected");
    }

    // --- phase: the slow client reads what was sent, then the 4008 close
    let mut seqs = Vec::new();
    let close = loop {
        match next_json(&mut slow, WAIT).await {
            Ok(event) if event["type"] == "message" => seqs.push(event["seq"].as_u64().unwrap()),
            Ok(_) => {}
            Err(why) => break why,
        }
    };
    assert!(close.starts_with("closed 4008"), "slow client closed with {close}");
    assert!((seqs.len() as u64) < total, "the slow client was closed before the end");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "a prefix, in order");

    // --- phase: it resumes from its cursor and misses nothing
    let cursors = BTreeMap::from([("big".to_string(), seqs.len() as u64)]);
    let (mut resumed, _) = ws_hello(&url, "slow", &cursors).await.unwrap();
    while (seqs.len() as u64) < total {
        let event = next_json(&mut resumed, WAIT).await.unwrap();
        if event["type"] == "message" {
            seqs.push(event["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    assert_eq!(full_history(&cluster, 1, "big").await.len() as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redundant_gateway_delivers_through_its_second_upstream_without_switching() {
    let mut cluster = TestCluster::start().await;
    // Silence is detected only after 60 s: any delivery while the main
    // upstream's node is frozen came through the second upstream.
    let config = TEST_UPSTREAM
        .replace("silence_ms_max = 1000", "silence_ms_max = 60000")
        .replace("lag_ms_max = 2000", "lag_ms_max = 60000")
        + "redundant = true\n";
    cluster.start_gateways(&config).await;
    create_space(&cluster, 1, "r", &["reader", "poster"]).await;
    let status = cluster.gateway_status(0).await.unwrap();
    let regions: Vec<&str> =
        status["upstreams"].as_array().unwrap().iter().map(|slot| slot["region"].as_str().unwrap()).collect();
    assert_eq!(regions.len(), 2, "{status}");
    assert_ne!(regions[0], regions[1], "the two upstreams are in different regions");
    let reader = Recorder::start("reader", &["r"], vec![cluster.gateways[0].ws_url()]);
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    for n in 1..=20 {
        post_until_acked(&addrs, "r", &format!("before {n}"), &format!("b{n}")).await;
    }
    reader.wait_for("r", 20, WAIT).await;

    // --- phase: freeze the main upstream's node (no FIN, no RST: a dead region)
    let frozen = followed_node(&cluster, 0).await.expect("main upstream");
    cluster.signal_node(frozen, "STOP");
    let others: Vec<String> = cluster.nodes.iter().filter(|n| n.id != frozen).map(|n| n.addr.clone()).collect();
    let mut last = 20;
    for n in 1..=20 {
        last = post_until_acked(&others, "r", &format!("during {n}"), &format!("d{n}")).await;
    }
    reader.wait_for("r", last, WAIT).await;
    let status = cluster.gateway_status(0).await.unwrap();
    assert_eq!(status["upstreams"][0]["switches"], 0, "delivered without a switch: {status}");
    cluster.signal_node(frozen, "CONT");
    reader.assert_exactly("r", last);
    assert_eq!(reader.seen.lock().unwrap().connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_absorbs_the_reconnect_storm_of_a_dead_peer() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    let clients_per_gateway = 100;
    let mut members: Vec<String> = (0..2 * clients_per_gateway).map(|i| format!("user{i}")).collect();
    members.push("poster".into());
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    create_space(&cluster, 1, "storm", &member_refs).await;
    let (us_east, eu_west) = (cluster.gateways[0].ws_url(), cluster.gateways[1].ws_url());
    let own: Vec<Recorder> = (0..clients_per_gateway)
        .map(|i| Recorder::start(&format!("user{i}"), &["storm"], vec![us_east.clone()]))
        .collect();
    let peers: Vec<Recorder> = (clients_per_gateway..2 * clients_per_gateway)
        .map(|i| Recorder::start(&format!("user{i}"), &["storm"], vec![eu_west.clone(), us_east.clone()]))
        .collect();
    common::wait_until(WAIT, "every client to connect once", async || {
        let connects: Vec<u64> = own.iter().chain(&peers).map(|client| client.seen.lock().unwrap().connects).collect();
        reached(connects.iter().all(|connects| *connects == 1), connects)
    })
    .await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    for n in 1..=30 {
        post_until_acked(&addrs, "storm", &format!("before {n}"), &format!("b{n}")).await;
    }

    // --- phase: the eu-west gateway dies; its clients all come to us-east
    cluster.kill_gateway(1);
    let mut last = 0;
    for n in 1..=30 {
        last = post_until_acked(&addrs, "storm", &format!("after {n}"), &format!("a{n}")).await;
    }
    for client in own.iter().chain(&peers) {
        client.wait_for("storm", last, WAIT).await;
        client.assert_exactly("storm", last);
    }
    for client in &own {
        assert_eq!(client.seen.lock().unwrap().connects, 1, "{} was dropped by its own gateway", client.user);
    }
    for client in &peers {
        assert_eq!(client.seen.lock().unwrap().connects, 2, "{} reconnected once", client.user);
    }
    let status = cluster.gateway_status(0).await.unwrap();
    assert_eq!(status["clients"], 2 * clients_per_gateway as u64, "{status}");
}

/// Regression (found by `spaceraft chaos`): a client whose hello arrived
/// while the cluster had no leader got an error for its subscription and was
/// left unsubscribed. The gateway now retries the first read of a
/// subscription while the failure is transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_made_without_a_leader_starts_once_there_is_one() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "s", &["alice", "poster"]).await;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    post_until_acked(&addrs, "s", "before", "k-before").await;

    // --- phase: no quorum; alice connects and subscribes
    cluster.kill_node(2);
    cluster.kill_node(3);
    let cursors = BTreeMap::from([("s".to_string(), 0u64)]);
    let (mut alice, _) = ws_hello(&cluster.gateways[0].ws_url(), "alice", &cursors).await.unwrap();
    common::wait_until(WAIT, "the gateway's first read to fail for want of a leader", async || {
        reached(cluster.gateway_log(0).contains("first read of a subscription failed"), "not in the gateway log")
    })
    .await;

    // --- phase: quorum is back; the subscription starts, then goes live
    cluster.start_node(2);
    cluster.start_node(3);
    let subscribed = next_json(&mut alice, WAIT).await.unwrap();
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    post_until_acked(&addrs, "s", "after", "k-after").await;
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let event = next_json(&mut alice, WAIT).await.unwrap();
        if event["type"] == "message" {
            bodies.push(event["body"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(bodies, ["before", "after"]);
}

/// A keyed post through a gateway whose nearest node has just frozen (no
/// FIN, no RST: connections open and silent) goes on to the next node after
/// `upstream.post_attempt_ms`, instead of waiting out the whole request
/// timeout (10 s) for the frozen one; its key commits it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_keyed_post_goes_on_to_the_next_node_when_the_nearest_one_freezes() {
    use futures::SinkExt;
    let mut cluster = TestCluster::start().await;
    // The gateway's probes must not take the frozen node out of its ranking
    // first: only the post's own bound may move it on.
    let config = TEST_UPSTREAM.replace("probe_interval_ms = 200", "probe_interval_ms = 60000")
        + "request_timeout_ms = 10000\npost_attempt_ms = 1000\n";
    cluster.start_gateways(&config).await;
    create_space(&cluster, 1, "f", &["poster"]).await;
    let (mut ws, _) = ws_hello(&cluster.gateways[0].ws_url(), "poster", &BTreeMap::new()).await.unwrap();
    // The gateway of the first region ranks that region's node first.
    let nearest = cluster.nodes[0].id;
    cluster.signal_node(nearest, "STOP");
    let sent = std::time::Instant::now();
    let post = serde_json::json!({"type": "post", "ref": "p1", "space": "f", "body": "through", "key": "k1"});
    ws.send(tokio_tungstenite::tungstenite::Message::text(post.to_string())).await.unwrap();
    let answer = loop {
        let frame = next_json(&mut ws, Duration::from_secs(30)).await.unwrap();
        if frame["ref"] == "p1" {
            break frame;
        }
    };
    let waited = sent.elapsed();
    cluster.signal_node(nearest, "CONT");
    assert_eq!(answer["type"], "posted", "{answer}");
    // One attempt bound, and an election if the frozen node led: well under
    // the 10 s request timeout the post used to wait out.
    assert!(waited < Duration::from_secs(7), "answered after {waited:?}");
    let others: Vec<u64> = cluster.nodes.iter().map(|n| n.id).filter(|id| *id != nearest).collect();
    let history = full_history(&cluster, others[0], "f").await;
    assert_eq!(history.iter().filter(|m| m.idempotency_key == "k1").count(), 1, "{history:?}");
}
