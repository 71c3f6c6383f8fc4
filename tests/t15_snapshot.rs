//! A follower that was down while the log was purged behind a snapshot
//! catches up through a snapshot sent over the Raft transport, and ends with
//! the same history as the others; and restarting after purges rebuilds the
//! state from snapshot plus log.

mod common;

use std::time::Duration;

use common::{full_history, TestCluster};
use spaceraft::pb;

const SNAPSHOT_EVERY: &str = "snapshot_logs_since_last = 50\nsnapshot_logs_kept_len = 5\n";

async fn post_many(cluster: &TestCluster, node: u64, from: u64, to: u64) {
    let mut client = cluster.client(node).await;
    for n in from..to {
        let request = pb::PostRequest {
            space: "general".into(),
            author: "alice".into(),
            body: format!("message {n}"),
            idempotency_key: format!("k{n}"),
        };
        client.post(request).await.expect("post");
    }
}

fn snapshot_files(cluster: &TestCluster, node: u64) -> usize {
    let dir = cluster.node(node).data_dir.join("snapshots").join("g1");
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter(|e| e.path().extension().is_some_and(|x| x == "bin")).count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_purged_log_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start_with(SNAPSHOT_EVERY).await;
    common::create_space(&cluster, 1, "general", &["alice"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let lagging = (1..=3).find(|id| *id != leader).unwrap();

    // --- phase: one follower down while 400 posts commit and the log is purged
    cluster.kill_node(lagging);
    post_many(&cluster, leader, 0, 400).await;
    // The leader purges only once no replication attempt to the dead
    // follower holds the range: wait until it has.
    common::wait_until(Duration::from_secs(30), "the leader to purge its log behind a snapshot", async || {
        let mut admin = cluster.admin(leader).await;
        let status = admin.node_status(pb::NodeStatusRequest::default()).await.expect("node status").into_inner();
        let replica = common::space_replica(&status).expect("first space cluster").clone();
        if replica.purged_index >= 100 {
            Ok(())
        } else {
            Err(replica)
        }
    })
    .await;
    assert!(snapshot_files(&cluster, leader) >= 1);

    // --- phase: it comes back and must be sent a snapshot
    cluster.start_node(lagging);
    let reference = full_history(&cluster, leader, "general").await;
    assert_eq!(reference.len(), 400);
    let last_index = reference.last().unwrap().log_index;
    cluster.wait_applied(last_index, Duration::from_secs(30)).await;
    assert!(snapshot_files(&cluster, lagging) >= 1, "the lagging follower holds no snapshot");
    assert!(
        cluster.node_log(lagging).contains("installed a snapshot from the leader"),
        "the lagging follower caught up without a snapshot: the test did not exercise the transfer"
    );
    assert_eq!(full_history(&cluster, lagging, "general").await, reference);

    // --- phase: it keeps following, and dedup still holds for old keys
    post_many(&cluster, leader, 390, 420).await;
    let reference = full_history(&cluster, leader, "general").await;
    assert_eq!(reference.len(), 420, "keys k390..k399 must not commit twice");
    cluster.wait_applied(reference.last().unwrap().log_index, Duration::from_secs(30)).await;
    assert_eq!(full_history(&cluster, lagging, "general").await, reference);

    // --- phase: every node killed and restarted after purges
    for node in 1..=3 {
        cluster.kill_node(node);
    }
    for node in 1..=3 {
        cluster.start_node(node);
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await;
    cluster.wait_applied(reference.last().unwrap().log_index, Duration::from_secs(30)).await;
    for node in 1..=3 {
        assert_eq!(full_history(&cluster, node, "general").await, reference, "node {node} after restart");
    }
}
