//! Replication with real processes: acknowledged posts survive a leader kill
//! and a kill of every node, in one order on every node, and a subscription
//! on a follower sees that order with no gap and no duplicate.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{full_history, TestCluster};
use spaceraft::pb;
use tokio::sync::Mutex;

const CLIENTS: u64 = 8;
const POSTS_PER_CLIENT: u64 = 250;
const SPACE: &str = "general";

/// Posts with one key until it is acknowledged, trying each node in turn;
/// a failure other than no leader, a dead node or a timeout fails the test.
async fn post_until_acked(endpoints: &[String], client_number: u64, key: &str) -> u64 {
    let request = pb::PostRequest {
        space: SPACE.into(),
        author: format!("user{}", client_number % 4),
        body: format!("body of {key}"),
        idempotency_key: key.into(),
    };
    let first = client_number as usize;
    common::post_until_acknowledged(endpoints, first, request, Duration::from_secs(60), common::unavailable_or_timeout)
        .await
}

fn check_history(history: &[pb::Message], acked: &HashMap<String, u64>, node: u64) {
    for (index, message) in history.iter().enumerate() {
        assert_eq!(message.seq, index as u64 + 1, "node {node}: seqs must be 1, 2, 3 … with no gap");
        assert_eq!(message.body, format!("body of {}", message.idempotency_key), "node {node}: message body mismatch");
    }
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for message in history {
        let previous = seen.insert(&message.idempotency_key, message.seq);
        if let Some(previous) = previous {
            let first = &history[previous as usize - 1];
            panic!(
                "node {node}: key {} committed twice: seq {} (log index {}) and seq {} (log index {})",
                message.idempotency_key, first.seq, first.log_index, message.seq, message.log_index
            );
        }
    }
    for (key, seq) in acked {
        assert_eq!(
            seen.get(key.as_str()),
            Some(seq),
            "node {node}: acknowledged post {key} at seq {seq} is missing or moved"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_posts_survive_leader_kill_and_full_restart() {
    let mut cluster = TestCluster::start().await;
    let members: Vec<String> = (0..4).map(|i| format!("user{i}")).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    common::create_space(&cluster, 1, SPACE, &member_refs).await;

    // --- phase: subscribe on a follower before any post
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let received: Arc<Mutex<Vec<pb::Message>>> = Arc::default();
    let mut subscriber = cluster.client(follower).await;
    let mut stream = subscriber
        .subscribe(pb::SubscribeRequest { space: SPACE.into(), user: "user0".into(), from_seq: 1 })
        .await
        .expect("subscribe")
        .into_inner();
    let subscription = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if let Some(pb::subscribe_event::Event::Message(message)) = event.event {
                    received.lock().await.push(message);
                }
            }
        })
    };

    // --- phase: 8 clients post 2,000 messages with keys and retries
    let endpoints: Arc<Vec<String>> = Arc::new(cluster.nodes.iter().map(|n| n.addr.clone()).collect());
    let acked_count = Arc::new(AtomicU64::new(0));
    let mut posters = Vec::new();
    for client_number in 0..CLIENTS {
        let endpoints = endpoints.clone();
        let acked_count = acked_count.clone();
        posters.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..POSTS_PER_CLIENT {
                let key = format!("c{client_number}-{n}");
                let seq = post_until_acked(&endpoints, client_number, &key).await;
                acked.push((key, seq));
                acked_count.fetch_add(1, Ordering::SeqCst);
            }
            acked
        }));
    }

    // --- phase: SIGKILL the leader in the middle
    let deadline = Instant::now() + Duration::from_secs(60);
    let acked_at_least = |count: u64| {
        let acked_count = acked_count.clone();
        async move || match acked_count.load(Ordering::SeqCst) {
            acked if acked >= count => Ok(()),
            acked => Err(format!("{acked} acknowledged")),
        }
    };
    common::wait_until(Duration::from_secs(60), "500 posts acknowledged", acked_at_least(500)).await;
    cluster.kill_node(leader);
    let killed_at = acked_count.load(Ordering::SeqCst);
    let left = deadline.saturating_duration_since(Instant::now());
    common::wait_until(
        left,
        "500 more posts acknowledged after the leader was killed",
        acked_at_least(killed_at + 500),
    )
    .await;
    cluster.start_node(leader);

    let mut acked: HashMap<String, u64> = HashMap::new();
    for poster in posters {
        for (key, seq) in poster.await.expect("poster") {
            acked.insert(key, seq);
        }
    }
    assert_eq!(acked.len() as u64, CLIENTS * POSTS_PER_CLIENT);

    // --- phase: every node holds every acknowledged post once, in one order
    let total = CLIENTS * POSTS_PER_CLIENT;
    let reference = full_history(&cluster, follower, SPACE).await;
    assert_eq!(reference.len() as u64, total, "each key commits exactly once");
    check_history(&reference, &acked, follower);
    let last_index = reference.last().unwrap().log_index;
    cluster.wait_applied(last_index, Duration::from_secs(30)).await;
    for node in 1..=3 {
        let history = full_history(&cluster, node, SPACE).await;
        assert_eq!(history, reference, "node {node} disagrees with node {follower}");
    }

    // --- phase: the follower's subscription saw the same sequence
    common::wait_until(Duration::from_secs(30), "the subscriber to see every message", async || {
        match received.lock().await.len() as u64 {
            seen if seen >= total => Ok(()),
            seen => Err(format!("saw {seen} of {total} messages")),
        }
    })
    .await;
    let seen = received.lock().await.clone();
    assert_eq!(seen, reference, "the subscription must see exactly the committed sequence");
    subscription.abort();

    // --- phase: SIGKILL every node, restart, check again
    for node in 1..=3 {
        cluster.kill_node(node);
    }
    for node in 1..=3 {
        cluster.start_node(node);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_applied(last_index, Duration::from_secs(30)).await;
    let mut by_node = BTreeMap::new();
    for node in 1..=3 {
        let history = full_history(&cluster, node, SPACE).await;
        check_history(&history, &acked, node);
        by_node.insert(node, history);
    }
    for (node, history) in by_node {
        assert_eq!(history, reference, "node {node} lost or changed messages across a kill of every node");
    }

    // --- phase: the cluster still takes posts
    let seq = post_until_acked(&endpoints, 0, "after-restart").await;
    assert_eq!(seq, total + 1);
}

/// Nodes 2 and 3 start well after node 1 (past node 1's failure detector
/// grace, `down_after`, for peers it never heard from): node 1's bootstrap,
/// which needs a quorum of the meta group, must still register the peers and
/// make the first space cluster, and a post is acknowledged. The detector
/// used to ping only the directory's nodes, which bootstrap had not written
/// yet: it took both peers as down for good, and bootstrap waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_whose_peers_start_late_still_bootstraps() {
    let cluster = TestCluster::start_staggered(Duration::from_millis(2_500)).await;
    common::create_space(&cluster, 1, SPACE, &["user0"]).await;
    let endpoints: Vec<String> = (1..=3).map(|id| cluster.node(id).addr.clone()).collect();
    let seq = post_until_acked(&endpoints, 0, "late-peers").await;
    assert_eq!(seq, 1);
}

/// The cluster holding `space` and the node that leads it.
async fn space_leader(cluster: &TestCluster, space: &str) -> (u64, u64) {
    let mut client = cluster.client(1).await;
    let info = client.get_space(pb::GetSpaceRequest { name: space.into() }).await.unwrap().into_inner();
    let leader = common::wait_until(Duration::from_secs(30), "a leader of the space's cluster", async || {
        let status = cluster.admin(1).await.cluster_status(pb::ClusterStatusRequest {}).await;
        let status = status.map_err(|status| status.to_string())?.into_inner();
        let replicas = status.replicas.iter().filter(|r| r.cluster_id == info.cluster_id);
        replicas.clone().find(|r| r.role == "leader").map(|r| r.node_id).ok_or_else(|| format!("{:?}", status.replicas))
    })
    .await;
    (info.cluster_id, leader)
}

/// Every node reports the stages of the write path it took part in (what
/// `spaceraft bench post --breakdown` prints): the leader its posts' stages,
/// every replica its appends, fsyncs and applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_reports_the_stages_of_the_posts_it_took_part_in() {
    let cluster = TestCluster::start().await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    common::create_space(&cluster, 1, "stages", &["alice"]).await;
    let (_, leader) = space_leader(&cluster, "stages").await;
    for node in 1..=3 {
        cluster.admin(node).await.stages(pb::StagesRequest { reset: true }).await.unwrap();
    }
    let mut client = cluster.client(leader).await;
    for n in 0..20 {
        let request = pb::PostRequest {
            space: "stages".into(),
            author: "alice".into(),
            body: format!("post {n}"),
            idempotency_key: format!("k{n}"),
        };
        client.post(request).await.unwrap();
    }
    let count = |reply: &pb::StagesReply, stage: &str| {
        reply.stages.iter().find(|f| f.stage == stage).map(|f| (f.count, f.p50)).unwrap_or_default()
    };
    let on_leader = cluster.admin(leader).await.stages(pb::StagesRequest { reset: false }).await.unwrap().into_inner();
    assert_eq!(on_leader.node_id, leader);
    for stage in ["post.handler", "post.route", "propose.queue", "post.reply"] {
        assert_eq!(count(&on_leader, stage).0, 20, "{stage} on the leader: {on_leader:?}");
    }
    for stage in ["raft.write", "log.append", "log.fsync", "replicate", "apply", "batch.posts"] {
        let (seen, p50) = count(&on_leader, stage);
        assert!(seen >= 1 && p50 >= 1, "{stage} on the leader: {on_leader:?}");
    }
    let handler_p50 = count(&on_leader, "post.handler").1;
    assert!(
        handler_p50 >= count(&on_leader, "raft.write").1,
        "a post's handler outlasts its Raft write: {on_leader:?}"
    );
    for follower in (1..=3).filter(|node| *node != leader) {
        let figures =
            cluster.admin(follower).await.stages(pb::StagesRequest { reset: true }).await.unwrap().into_inner();
        for stage in ["follower.append", "log.fsync", "apply"] {
            assert!(count(&figures, stage).0 >= 1, "{stage} on follower {follower}: {figures:?}");
        }
        assert_eq!(count(&figures, "post.handler").0, 0, "no post went through follower {follower}");
        let after =
            cluster.admin(follower).await.stages(pb::StagesRequest { reset: false }).await.unwrap().into_inner();
        assert!(count(&after, "log.fsync").0 < count(&figures, "log.fsync").0, "a reset starts the figures over");
    }
}

/// A leader whose followers stop answering answers a post it has in flight
/// as of unknown outcome once its quorum has not acknowledged it for the
/// leader lease, instead of holding it until the client gives up; the
/// post, sent again with its key once the followers are back, is committed
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_that_loses_its_quorum_answers_posts_in_flight_at_once() {
    let cluster = TestCluster::start().await;
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    common::create_space(&cluster, 1, "lost", &["alice"]).await;
    let (_, leader) = space_leader(&cluster, "lost").await;
    let mut client = cluster.client(leader).await;
    let post = |body: &str, key: &str| pb::PostRequest {
        space: "lost".into(),
        author: "alice".into(),
        body: body.into(),
        idempotency_key: key.into(),
    };
    client.post(post("before", "before")).await.unwrap();
    let followers: Vec<u64> = (1..=3).filter(|node| *node != leader).collect();
    for follower in &followers {
        cluster.signal_node(*follower, "STOP");
    }
    let sent = Instant::now();
    // Without a key: an unknown outcome is final, so the node answers it
    // rather than trying again.
    let answer = tokio::time::timeout(Duration::from_secs(20), client.post(post("in flight", ""))).await;
    let waited = sent.elapsed();
    for follower in &followers {
        cluster.signal_node(*follower, "CONT");
    }
    let status = answer.expect("the leader answered the post in flight").expect_err("no quorum: nothing commits");
    let kind = spaceraft::error::ApiError::from_status(&status).kind;
    assert!(
        matches!(kind, spaceraft::error::ErrorKind::OutcomeUnknown | spaceraft::error::ErrorKind::NoQuorum),
        "{status:?}"
    );
    // The leader lease (election_timeout_max_ms) and a probe.
    assert!(waited < Duration::from_secs(8), "answered after {waited:?}");
    // A keyed post is the client's to send again: committed once, however
    // often it is sent.
    let endpoints: Vec<String> = cluster.nodes.iter().map(|node| node.addr.clone()).collect();
    for _ in 0..2 {
        let request = post("retried", "retried-key");
        common::post_until_acknowledged(&endpoints, 0, request, Duration::from_secs(60), common::any_failure).await;
    }
    let history = full_history(&cluster, leader, "lost").await;
    assert_eq!(history.iter().filter(|m| m.idempotency_key == "retried-key").count(), 1, "{history:?}");
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "{seqs:?}");
}
