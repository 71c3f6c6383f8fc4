//! Changing a space cluster's members through the admin API: remove a
//! voter, add it back as a learner, promote it; a removal that would leave
//! no majority up is refused; bad requests change nothing.

mod common;

use std::time::{Duration, Instant};

use common::{create_space, full_history, TestCluster};
use spaceraft::config::DEFAULT_CLUSTER_ID;
use spaceraft::pb;

const WAIT: Duration = Duration::from_secs(30);

fn change(node_id: u64, change: &str, force: bool) -> pb::ChangeMembersRequest {
    pb::ChangeMembersRequest { cluster_id: DEFAULT_CLUSTER_ID, node_id, change: change.into(), force }
}

/// Posts through `node` (only that one) until it is acknowledged.
async fn post(cluster: &TestCluster, node: u64, key: &str) -> u64 {
    let request =
        pb::PostRequest { space: "s".into(), author: "alice".into(), body: key.into(), idempotency_key: key.into() };
    let addrs = [cluster.node(node).addr.clone()];
    common::post_until_acknowledged(&addrs, 0, request, WAIT, common::any_failure).await
}

async fn members(cluster: &TestCluster) -> (Vec<u64>, Vec<u64>) {
    let mut admin = cluster.admin(1).await;
    let directory = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner();
    let entry = directory.clusters.iter().find(|c| c.cluster_id == DEFAULT_CLUSTER_ID).unwrap();
    (entry.voters.clone(), entry.learners.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_removed_added_and_promoted_and_quorum_is_kept() {
    let mut cluster = TestCluster::start().await;
    create_space(&cluster, 1, "s", &["alice"]).await;
    assert_eq!(post(&cluster, 1, "k1").await, 1);
    let mut admin = cluster.admin(2).await;

    // --- remove a voter: the cluster goes on with two
    let removed = admin.change_members(change(3, "remove", false)).await.expect("remove").into_inner();
    assert_eq!((removed.voters, removed.learners), (vec![1, 2], vec![]));
    assert_eq!(members(&cluster).await.0, vec![1, 2]);
    assert_eq!(post(&cluster, 2, "k2").await, 2);

    // --- add it back as a learner: it catches up; then promote it
    let added = admin.change_members(change(3, "add_learner", false)).await.expect("add learner").into_inner();
    assert_eq!((added.voters, added.learners), (vec![1, 2], vec![3]));
    assert_eq!(members(&cluster).await, (vec![1, 2], vec![3]));
    let promoted = admin.change_members(change(3, "promote", false)).await.expect("promote").into_inner();
    assert_eq!((promoted.voters, promoted.learners), (vec![1, 2, 3], vec![]));
    assert_eq!(post(&cluster, 3, "k3").await, 3);
    let history = common::wait_until(WAIT, "node 3 to hold three messages", async || {
        let history = full_history(&cluster, 3, "s").await;
        if history.len() == 3 {
            Ok(history)
        } else {
            Err(format!("{} messages", history.len()))
        }
    })
    .await;
    let keys: Vec<&str> = history.iter().map(|m| m.idempotency_key.as_str()).collect();
    assert_eq!(keys, ["k1", "k2", "k3"]);

    // --- bad requests are refused and change nothing
    let bad = admin.change_members(change(3, "demote", false)).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
    let unknown_node = admin.change_members(change(9, "add_learner", false)).await.unwrap_err();
    assert_eq!(unknown_node.code(), tonic::Code::FailedPrecondition, "{unknown_node}");
    let request = pb::ChangeMembersRequest { cluster_id: 99, node_id: 3, change: "remove".into(), force: false };
    let unknown_cluster = admin.change_members(request).await.unwrap_err();
    assert_eq!(unknown_cluster.code(), tonic::Code::NotFound, "{unknown_cluster}");
    let not_a_learner = admin.change_members(change(2, "add_learner", false)).await.unwrap_err();
    assert_eq!(not_a_learner.code(), tonic::Code::FailedPrecondition, "{not_a_learner}");
    assert_eq!(members(&cluster).await.0, vec![1, 2, 3]);

    // --- with node 2 down, removing node 1 would leave no majority up
    cluster.kill_node(2);
    // Every node's failure detector takes node 2 as down (the leader, which
    // checks, may be any of them).
    let deadline = Instant::now() + WAIT;
    for node in [1, 3] {
        let mut admin = cluster.admin(node).await;
        let what = format!("node {node} to take node 2 as down");
        let left = deadline.saturating_duration_since(Instant::now());
        common::wait_until(left, &what, async || {
            let status = admin.node_status(pb::NodeStatusRequest::default()).await.unwrap().into_inner();
            if status.nodes_down.contains(&2) {
                Ok(())
            } else {
                Err(format!("nodes down {:?}", status.nodes_down))
            }
        })
        .await;
    }
    let mut admin = cluster.admin(3).await;
    let refused = admin.change_members(change(1, "remove", false)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(refused.message().contains("no majority"), "{refused}");
    assert_eq!(members(&cluster).await.0, vec![1, 2, 3]);
    assert_eq!(post(&cluster, 1, "k4").await, 4);
}

/// A node started after bootstrap joins (registers in the directory and
/// follows it), is added to a space cluster, and takes over from a node that
/// is decommissioned with spacectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_started_later_joins_and_replaces_a_decommissioned_one() {
    // Placed as on a laptop: a space with nothing in common with any
    // cluster gets a new one (the decommissioned node must not be its voter).
    let mut cluster = TestCluster::start_with("[placement]\nspaces_max = 100\nnew_affinity_fill = 1\n").await;
    create_space(&cluster, 1, "s", &["alice"]).await;
    assert_eq!(post(&cluster, 1, "k1").await, 1);
    let new = cluster.add_node("");
    let mut admin = cluster.admin(1).await;
    let what = format!("node {new} to join the directory");
    common::wait_until(WAIT, &what, async || {
        let nodes = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner().nodes;
        let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
        if ids.contains(&new) {
            Ok(())
        } else {
            Err(format!("nodes {ids:?}"))
        }
    })
    .await;
    let added = admin.change_members(change(new, "add_learner", false)).await.expect("add learner").into_inner();
    assert_eq!(added.learners, vec![new]);
    let promoted = admin.change_members(change(new, "promote", false)).await.expect("promote").into_inner();
    assert_eq!(promoted.voters, vec![1, 2, 3, new]);

    let output = common::ctl::spacectl(&cluster.endpoints(), &["node", "decommission", "3", "--yes", "-o", "json"]);
    assert!(output.status.success(), "{}", common::ctl::stderr(&output));
    assert_eq!(members(&cluster).await.0, vec![1, 2, new]);
    assert_eq!(post(&cluster, new, "k2").await, 2);
    let what = format!("node {new} to hold k1 and k2");
    common::wait_until(WAIT, &what, async || {
        let keys: Vec<String> = full_history(&cluster, new, "s").await.into_iter().map(|m| m.idempotency_key).collect();
        if keys == ["k1", "k2"] {
            Ok(())
        } else {
            Err(keys)
        }
    })
    .await;

    // --- phase: a new cluster made now never has the decommissioned node 3
    // as a voter (it is still up, drained)
    let mut client = cluster.client(1).await;
    let attrs = [("org".to_string(), "elsewhere".to_string())].into_iter().collect();
    let request = pb::CreateSpaceRequest { name: "elsewhere".into(), members: vec!["zed".into()], attrs };
    let placed = client.create_space(request).await.expect("create").into_inner().space.unwrap();
    assert_ne!(placed.cluster_id, 1, "a space with nothing in common gets a new cluster");
    let directory = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner();
    let made = directory.clusters.iter().find(|c| c.cluster_id == placed.cluster_id).expect("the new cluster");
    assert!(!made.voters.contains(&3), "the decommissioned node is a voter of a new cluster: {made:?}");
    assert_eq!(made.voters.len(), 3, "{made:?}");

    // The new node took node 3's place in the meta cluster as well: with
    // node 3 stopped and node 2 down, nodes 1 and 4 still make a majority of
    // every cluster, the meta cluster included (a new space needs it).
    let directory = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner();
    assert_eq!(directory.meta_voters, vec![1, 2, new], "{directory:?}");
    assert!(!directory.meta_learners.contains(&3), "{directory:?}");
    cluster.kill_node(3);
    cluster.kill_node(2);
    common::wait_until(WAIT, "a new space to be created (the meta cluster has a majority)", async || {
        let mut client = cluster.client(1).await;
        let members = vec!["alice".into()];
        let request = pb::CreateSpaceRequest { name: "after".into(), members, attrs: Default::default() };
        client.create_space(request).await.map(|_| ())
    })
    .await;
    assert_eq!(post(&cluster, 1, "k3").await, 3);
}
