//! Many space clusters on three nodes in three regions, placed by the
//! spaces' org: co-location as the policy says, posts to every space, a
//! region killed (every cluster elects a leader among the survivors and
//! keeps taking posts), the region back (leaders return to their preferred
//! regions), and no acknowledged post lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::TestCluster;
use futures::StreamExt;
use spaceraft::pb;

const ORGS: usize = 50;
const SPACES_PER_ORG: usize = 10;
/// Ten spaces a cluster, and a cluster takes a space with no affinity only
/// while empty: each org gets a cluster of its own.
const PLACEMENT: &str = "[placement]\nspaces_max = 10\nnew_affinity_fill = 10\n";
const WAIT: Duration = Duration::from_secs(60);

fn space(org: usize, index: usize) -> String {
    format!("o{org}-s{index}")
}

async fn create_all(cluster: &TestCluster) {
    let clients: Vec<_> = futures::future::join_all((1..=3).map(|id| cluster.client(id))).await;
    let requests = (0..ORGS).flat_map(|org| (0..SPACES_PER_ORG).map(move |index| (org, index)));
    let created = futures::stream::iter(requests)
        .map(|(org, index)| {
            let mut client = clients[(org + index) % 3].clone();
            async move {
                let request = pb::CreateSpaceRequest {
                    name: space(org, index),
                    members: (0..4).map(|user| format!("o{org}-u{user}")).collect(),
                    attrs: [("org".to_string(), format!("o{org}"))].into(),
                };
                client.create_space(request).await.map(|_| ()).map_err(|status| (space(org, index), status))
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let failed: Vec<_> = created.into_iter().filter_map(Result::err).collect();
    assert!(failed.is_empty(), "creates failed: {failed:?}");
}

/// Posts one message to every space through every node in turn, retrying
/// with the same idempotency key until acknowledged; returns the seqs.
async fn post_to_all(cluster: &TestCluster, round: u64) -> BTreeMap<String, u64> {
    let addrs: Vec<String> =
        cluster.nodes.iter().filter(|node| node.process.is_some()).map(|node| node.addr.clone()).collect();
    let names = (0..ORGS).flat_map(|org| (0..SPACES_PER_ORG).map(move |index| (org, index)));
    futures::stream::iter(names)
        .map(|(org, index)| {
            let addrs = &addrs;
            async move {
                let name = space(org, index);
                let request = pb::PostRequest {
                    space: name.clone(),
                    author: format!("o{org}-u0"),
                    body: format!("round {round}"),
                    idempotency_key: format!("{name}-{round}"),
                };
                let seq = common::post_until_acknowledged(addrs, org + index, request, WAIT, common::any_failure).await;
                (name, seq)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn directory(cluster: &TestCluster, node: u64) -> pb::DirectoryResponse {
    cluster.admin(node).await.directory(pb::DirectoryRequest {}).await.expect("directory").into_inner()
}

/// Each space cluster's leader as node `asked` sees it (0: none).
async fn leaders(cluster: &TestCluster, asked: u64) -> BTreeMap<u64, u64> {
    let status =
        cluster.admin(asked).await.node_status(pb::NodeStatusRequest::default()).await.expect("status").into_inner();
    status.replicas.iter().filter(|r| r.cluster_id != 0).map(|r| (r.cluster_id, r.leader_id)).collect()
}

/// Waits until `check` holds for the leaders node `asked` sees.
async fn wait_leaders(
    cluster: &TestCluster,
    asked: u64,
    what: &str,
    check: impl Fn(&BTreeMap<u64, u64>) -> Result<(), String>,
) {
    common::wait_until(WAIT, what, async || {
        let seen = leaders(cluster, asked).await;
        check(&seen).map_err(|why| format!("{why}; leaders {seen:?}"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_clusters_place_by_org_survive_a_region_and_leaders_return() {
    let mut cluster = TestCluster::start_with(PLACEMENT).await;
    create_all(&cluster).await;

    // --- co-location: one cluster per org, every voter set spans the regions
    let found = directory(&cluster, 2).await;
    assert_eq!(found.placements.len(), ORGS * SPACES_PER_ORG);
    let mut clusters_of_org: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut orgs_of_cluster: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for placement in &found.placements {
        clusters_of_org.entry(placement.org.clone()).or_default().insert(placement.cluster_id);
        orgs_of_cluster.entry(placement.cluster_id).or_default().insert(placement.org.clone());
    }
    assert!(clusters_of_org.values().all(|clusters| clusters.len() == 1), "an org was split: {clusters_of_org:?}");
    assert!(orgs_of_cluster.values().all(|orgs| orgs.len() == 1), "orgs were mixed: {orgs_of_cluster:?}");
    assert!(found.clusters.len() >= ORGS, "{} clusters", found.clusters.len());
    let region_of: BTreeMap<u64, String> = found.nodes.iter().map(|n| (n.node_id, n.region.clone())).collect();
    let preferred: BTreeMap<u64, String> =
        found.clusters.iter().map(|c| (c.cluster_id, c.preferred_region.clone())).collect();
    for placed in found.clusters.iter().filter(|c| orgs_of_cluster.contains_key(&c.cluster_id)) {
        let regions: BTreeSet<&String> = placed.voters.iter().map(|v| &region_of[v]).collect();
        assert_eq!(
            regions.len(),
            3,
            "cluster {} voters {:?} do not span the regions",
            placed.cluster_id,
            placed.voters
        );
    }
    // The clusters placement made prefer the regions in turn (the first
    // cluster, made at bootstrap, has no preference).
    let mut leaders_per_region: BTreeMap<&str, usize> = BTreeMap::new();
    for id in orgs_of_cluster.keys() {
        *leaders_per_region.entry(preferred[id].as_str()).or_default() += 1;
    }
    leaders_per_region.remove("");
    assert_eq!(leaders_per_region.len(), 3, "preferred regions spread: {leaders_per_region:?}");
    assert!(leaders_per_region.values().all(|count| *count >= ORGS / 3 - 1), "{leaders_per_region:?}");

    // --- leaders sit in their preferred regions; every space takes a post
    let in_preferred = |seen: &BTreeMap<u64, u64>| {
        let wrong: Vec<_> = orgs_of_cluster
            .keys()
            .filter(|id| !preferred[*id].is_empty())
            .filter(|id| seen.get(id).and_then(|leader| region_of.get(leader)) != Some(&preferred[*id]))
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("{} clusters led outside their preferred region: {wrong:?}", wrong.len()))
        }
    };
    wait_leaders(&cluster, 1, "leaders never reached their preferred regions", in_preferred).await;
    let first = post_to_all(&cluster, 1).await;
    assert!(first.values().all(|seq| *seq == 1), "first posts: {first:?}");

    // --- kill a region: every cluster elects a survivor and takes posts
    cluster.kill_node(3);
    wait_leaders(&cluster, 1, "clusters left without a leader after the region kill", |seen| {
        let orphans: Vec<_> = seen.iter().filter(|(_, leader)| **leader == 0 || **leader == 3).collect();
        if orphans.is_empty() {
            Ok(())
        } else {
            Err(format!("{} clusters still led by the dead region or by nobody", orphans.len()))
        }
    })
    .await;
    let second = post_to_all(&cluster, 2).await;
    assert!(second.values().all(|seq| *seq == 2), "posts with a region down: {second:?}");

    // --- the region returns: leaders go back to their preferred regions
    cluster.start_node(3);
    wait_leaders(&cluster, 1, "leaders did not return to their preferred regions", in_preferred).await;
    let third = post_to_all(&cluster, 3).await;
    assert!(third.values().all(|seq| *seq == 3), "posts after the region returned: {third:?}");

    // --- nothing acknowledged was lost, on the node that was away either
    for org in (0..ORGS).step_by(7) {
        let name = space(org, 0);
        let mut client = cluster.client(3).await;
        let request =
            pb::HistoryRequest { space: name.clone(), user: String::new(), from_seq: 1, limit: 10, linearizable: true };
        let history = client.history(request).await.expect("history").into_inner();
        let bodies: Vec<&str> = history.messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["round 1", "round 2", "round 3"], "{name}");
    }
}
