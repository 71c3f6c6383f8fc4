//! Disk faults with real processes: a voter whose data directory was wiped
//! comes back as a new incarnation, never votes before it is re-admitted,
//! and is re-admitted by itself once it has caught up. Nothing acknowledged
//! is lost, no seq names two messages.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{full_history, TestCluster};
use spaceraft::config::DEFAULT_CLUSTER_ID;
use spaceraft::meta::directory::META_GROUP_ID;
use spaceraft::pb;

const SPACE: &str = "general";

fn post(key: &str) -> pb::PostRequest {
    pb::PostRequest {
        space: SPACE.into(),
        author: "alice".into(),
        body: format!("body of {key}"),
        idempotency_key: key.into(),
    }
}

async fn status(cluster: &TestCluster, node: u64) -> Result<pb::NodeStatusResponse, String> {
    let channel = common::try_connect(&cluster.node(node).addr).await.map_err(|e| e.to_string())?;
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let request = pb::NodeStatusRequest::default();
    Ok(admin.node_status(request).await.map_err(|e| e.to_string())?.into_inner())
}

/// Waits until `leader` leads both the meta group and the first space
/// cluster, and their memberships record the incarnation each of `nodes`
/// answers with; returns those incarnations.
async fn incarnations_recorded(cluster: &TestCluster, leader: u64, nodes: &[u64]) -> BTreeMap<u64, u64> {
    let what = format!("node {leader} to record the incarnations of nodes {nodes:?}");
    common::wait_until(Duration::from_secs(30), &what, async || {
        let mut answered = BTreeMap::new();
        for node in nodes {
            answered.insert(*node, status(cluster, *node).await?.incarnation);
        }
        let led = status(cluster, leader).await?;
        for group in [META_GROUP_ID, DEFAULT_CLUSTER_ID] {
            let role = led.replicas.iter().find(|r| r.cluster_id == group).map(|r| r.role.clone());
            if role.as_deref() != Some("leader") {
                return Err(format!("node {leader} is {role:?} of group {group}"));
            }
            for (node, incarnation) in &answered {
                let recorded =
                    led.members.iter().find(|m| m.cluster_id == group && m.node_id == *node).map(|m| m.incarnation);
                if recorded != Some(*incarnation) {
                    return Err(format!(
                        "group {group} records {recorded:?} for node {node}, it answers {incarnation}"
                    ));
                }
            }
        }
        Ok(answered)
    })
    .await
}

/// The posts a node serves, as key → seq, after checking seqs run 1, 2, 3 …
async fn served(cluster: &TestCluster, node: u64) -> BTreeMap<String, u64> {
    let history = full_history(cluster, node, SPACE).await;
    let mut keys = BTreeMap::new();
    for (index, message) in history.iter().enumerate() {
        assert_eq!(message.seq, index as u64 + 1, "node {node}: seqs run 1, 2, 3 … with no gap");
        assert_eq!(message.body, format!("body of {}", message.idempotency_key), "node {node}: body of seq");
        let again = keys.insert(message.idempotency_key.clone(), message.seq);
        assert!(again.is_none(), "node {node}: key {} committed twice", message.idempotency_key);
    }
    keys
}

/// Waits until node `node` serves `count` posts, within 30 s.
async fn serves_all(cluster: &TestCluster, node: u64, count: usize, what: &str) {
    common::wait_until(Duration::from_secs(30), what, async || {
        let served = served(cluster, node).await.len();
        if served == count {
            Ok(())
        } else {
            Err(served)
        }
    })
    .await;
}

fn wipe(cluster: &TestCluster, node: u64) {
    let dir = &cluster.node(node).data_dir;
    std::fs::remove_dir_all(dir).expect("wipe the data directory");
    assert!(!dir.exists());
}

/// The fault sequence: follower B is paused; 300 posts are acknowledged by
/// leader L and follower C; C is killed and its data directory deleted; L is
/// killed; B resumes and C restarts empty. B and C must not elect a leader
/// (C's vote comes from a new incarnation); once L is back, every
/// acknowledged post is there at its seq on every node, new posts take new
/// seqs, and C is re-admitted by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_voter_never_votes_before_it_is_readmitted_and_nothing_acknowledged_is_lost() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let others: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let (paused, wiped) = (others[0], others[1]);
    // The meta group must be led by the same node, so that pausing B and
    // killing L leaves both groups without their leader.
    let meta_leader = common::wait_until(Duration::from_secs(30), "a meta leader", async || {
        let led = status(&cluster, leader).await?;
        led.replicas
            .iter()
            .find(|r| r.cluster_id == META_GROUP_ID)
            .map(|r| r.leader_id)
            .filter(|id| *id != 0)
            .ok_or("no meta leader".to_string())
    })
    .await;
    if meta_leader != leader {
        let mut admin = cluster.admin(meta_leader).await;
        admin
            .transfer_leader(pb::TransferLeaderRequest { cluster_id: META_GROUP_ID, to_node: leader })
            .await
            .expect("move the meta leader next to the space leader");
    }
    let before = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;

    cluster.signal_node(paused, "STOP");
    let mut client = cluster.client(leader).await;
    let mut acked = BTreeMap::new();
    for n in 0..300 {
        let key = format!("k{n}");
        let seq = client.post(post(&key)).await.expect("acknowledged by L and C").into_inner().seq;
        acked.insert(key, seq);
    }

    cluster.kill_node(wiped);
    wipe(&cluster, wiped);
    cluster.kill_node(leader);
    cluster.signal_node(paused, "CONT");
    cluster.start_node(wiped);

    // C comes back as another incarnation; B may ask it for votes, which
    // must not count: for 10 s neither leads, and no post is taken.
    let renewed = common::wait_until(Duration::from_secs(30), "the wiped node to answer", async || {
        status(&cluster, wiped).await.map(|status| status.incarnation)
    })
    .await;
    assert_ne!(renewed, before[&wiped], "a wiped data directory gets a new incarnation");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline {
        for node in [paused, wiped] {
            if let Ok(answer) = status(&cluster, node).await {
                for replica in &answer.replicas {
                    assert_ne!(
                        replica.role, "leader",
                        "node {node} leads group {} without the node that has the acknowledged posts",
                        replica.cluster_id
                    );
                }
            }
            attempt += 1;
            if let Ok(channel) = common::try_connect(&cluster.node(node).addr).await {
                let mut client = pb::client_client::ClientClient::new(channel);
                let key = format!("during-{attempt}");
                let answer = tokio::time::timeout(Duration::from_secs(2), client.post(post(&key))).await;
                assert!(!matches!(answer, Ok(Ok(_))), "node {node} acknowledged {key} without L: {answer:?}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    cluster.start_node(leader);
    let new_leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    let seq = common::post_until_acknowledged(
        &[cluster.node(new_leader).addr.clone()],
        0,
        post("after"),
        Duration::from_secs(60),
        common::any_failure,
    )
    .await;
    assert_eq!(seq, 301, "a post after the faults takes the next seq, not one of the 300 acknowledged");

    // C is re-admitted by itself: the leaders record its new incarnation.
    let now = incarnations_recorded(&cluster, new_leader_of_both(&cluster).await, &[1, 2, 3]).await;
    assert_eq!(now[&wiped], renewed);
    every_node_serves(&cluster, &acked, seq).await;
    let log = cluster.node_log(new_leader) + &cluster.node_log(paused) + &cluster.node_log(leader);
    assert!(log.contains("re-admitting a member that lost its data"), "the leader says it re-admitted the node");
}

/// A stale leader meets a member that lost its data: leader L is paused;
/// the others elect B, which acknowledges 50 posts with C; C is killed and
/// wiped, B is killed, L resumes (still leading in its old term) and C
/// restarts empty. C takes L's entries, but L must not count C's
/// acknowledgements (the committed membership records C's old
/// incarnation): no post is acknowledged, none of the 50 is overwritten.
/// Once B is back, the next post takes seq 51, and every node serves the
/// 51 posts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_leader_never_counts_a_member_that_lost_its_data() {
    stale_leader_meets_a_wiped_member(false).await;
}

/// The same with the paused node leading the meta group too: both groups
/// have a stale leader, and both must elect again once B is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_leader_of_the_meta_group_too_never_counts_a_member_that_lost_its_data() {
    stale_leader_meets_a_wiped_member(true).await;
}

async fn stale_leader_meets_a_wiped_member(stale_leads_meta: bool) {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let stale = new_leader_of_both(&cluster).await;
    let before = incarnations_recorded(&cluster, stale, &[1, 2, 3]).await;
    if !stale_leads_meta {
        let meta_to = (1..=3).find(|id| *id != stale).unwrap();
        let mut admin = cluster.admin(stale).await;
        admin
            .transfer_leader(pb::TransferLeaderRequest { cluster_id: META_GROUP_ID, to_node: meta_to })
            .await
            .expect("move the meta leader away from the space leader");
        common::wait_until(Duration::from_secs(30), "the meta leader to move", async || {
            let answer = status(&cluster, stale).await?;
            let meta = answer.replicas.iter().find(|r| r.cluster_id == META_GROUP_ID).map(|r| r.leader_id);
            if meta == Some(meta_to) {
                Ok(())
            } else {
                Err(format!("meta led by {meta:?}"))
            }
        })
        .await;
    }

    cluster.signal_node(stale, "STOP");
    let others: Vec<String> = (1..=3).filter(|id| *id != stale).map(|id| cluster.node(id).addr.clone()).collect();
    let mut acked = BTreeMap::new();
    for n in 0..50 {
        let key = format!("k{n}");
        let seq =
            common::post_until_acknowledged(&others, 0, post(&key), Duration::from_secs(60), common::any_failure).await;
        acked.insert(key, seq);
    }
    let status_of = |node: u64| status(&cluster, node);
    let mut new_leader = 0;
    for node in (1..=3).filter(|id| *id != stale) {
        let answer = status_of(node).await.expect("status");
        if common::space_replica(&answer).is_some_and(|replica| replica.role == "leader") {
            new_leader = node;
        }
    }
    assert_ne!(new_leader, 0, "another node leads the space cluster while L is paused");
    let wiped = (1..=3).find(|id| *id != stale && *id != new_leader).unwrap();

    cluster.kill_node(wiped);
    wipe(&cluster, wiped);
    cluster.kill_node(new_leader);
    cluster.signal_node(stale, "CONT");
    cluster.start_node(wiped);
    let renewed = common::wait_until(Duration::from_secs(30), "the wiped node to answer", async || {
        status(&cluster, wiped).await.map(|status| status.incarnation)
    })
    .await;
    assert_ne!(renewed, before[&wiped]);

    // L still leads in its old term and C takes its entries; nothing may be
    // acknowledged by the two of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    while tokio::time::Instant::now() < deadline {
        for node in [stale, wiped] {
            attempt += 1;
            if let Ok(channel) = common::try_connect(&cluster.node(node).addr).await {
                let mut client = pb::client_client::ClientClient::new(channel);
                let key = format!("stale-{attempt}");
                let answer = tokio::time::timeout(Duration::from_secs(2), client.post(post(&key))).await;
                assert!(!matches!(answer, Ok(Ok(_))), "node {node} acknowledged {key} with a wiped member: {answer:?}");
            }
        }
    }

    cluster.start_node(new_leader);
    let leader = cluster.wait_for_leader(Duration::from_secs(60)).await;
    let seq = common::post_until_acknowledged(
        &[cluster.node(leader).addr.clone()],
        0,
        post("after"),
        Duration::from_secs(60),
        common::any_failure,
    )
    .await;
    let seqs: std::collections::BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(seqs, (1..=50).collect(), "the 50 posts were acknowledged at seqs 1 to 50");
    assert_eq!(seq, 51, "the next post takes the next seq after the 50 acknowledged: none was overwritten");
    acked.insert("after".to_string(), seq);
    every_node_serves(&cluster, &acked, seq).await;
}

/// Waits until every node serves seq `last`; then every acknowledged post
/// must be there at its seq.
async fn every_node_serves(cluster: &TestCluster, acked: &BTreeMap<String, u64>, last: u64) {
    for node in 1..=3 {
        let keys =
            common::wait_until(Duration::from_secs(30), &format!("node {node} to serve seq {last}"), async || {
                let keys = served(cluster, node).await;
                if keys.values().any(|s| *s == last) {
                    Ok(keys)
                } else {
                    Err(keys.len())
                }
            })
            .await;
        for (key, acked_seq) in acked {
            assert_eq!(keys.get(key), Some(acked_seq), "node {node}: acknowledged post {key} lost or moved");
        }
    }
}

/// The node that leads both the meta group and the first space cluster,
/// moving the meta leader there if need be.
async fn new_leader_of_both(cluster: &TestCluster) -> u64 {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    common::wait_until(Duration::from_secs(30), "one node to lead both groups", async || {
        let led = status(cluster, leader).await?;
        let meta = led.replicas.iter().find(|r| r.cluster_id == META_GROUP_ID).map(|r| r.leader_id).unwrap_or(0);
        if meta == leader {
            return Ok(leader);
        }
        if meta != 0 {
            let channel = common::try_connect(&cluster.node(meta).addr).await.map_err(|e| e.to_string())?;
            let mut admin = pb::admin_client::AdminClient::new(channel);
            let request = pb::TransferLeaderRequest { cluster_id: META_GROUP_ID, to_node: leader };
            admin.transfer_leader(request).await.map_err(|e| e.to_string())?;
        }
        Err(format!("the meta group is led by {meta}"))
    })
    .await
}

/// Alone, in a healthy cluster: a voter restarted on an empty directory is
/// caught up and re-admitted by itself, serves requests, and shows as not
/// voting (`missing` or `needs-rejoin`) in the meantime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_voter_in_a_healthy_cluster_rejoins_by_itself() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = new_leader_of_both(&cluster).await;
    let wiped = (1..=3).find(|id| *id != leader).unwrap();
    let before = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
    let mut client = cluster.client(leader).await;
    for n in 0..50 {
        client.post(post(&format!("k{n}"))).await.expect("post");
    }
    cluster.kill_node(wiped);
    wipe(&cluster, wiped);
    cluster.start_node(wiped);
    let after = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
    assert_ne!(after[&wiped], before[&wiped], "re-admitted with its new incarnation");
    serves_all(&cluster, wiped, 50, "the wiped node to serve all 50 posts").await;
    let seq = client.post(post("after")).await.expect("post after the rejoin").into_inner().seq;
    assert_eq!(seq, 51);
    let mut through = cluster.client(wiped).await;
    let seq = through.post(post("through-the-wiped-node")).await.expect("a post through the rejoined node");
    assert_eq!(seq.into_inner().seq, 52);
    let log = cluster.node_log(leader);
    assert!(log.contains("re-admitting a member that lost its data"), "the leader says it re-admitted the node");
}

/// Waits until node `node`'s state marker records group `group` applied at
/// `at_least` or more: its sled state was flushed that far.
async fn state_flushed(cluster: &TestCluster, node: u64, group: u64, at_least: u64) {
    let root = cluster.node(node).data_dir.clone();
    let what = format!("node {node} to flush group {group}'s state to {at_least}");
    common::wait_until(Duration::from_secs(20), &what, async || {
        let flushed = spaceraft::storage::marker::read_applied(&root).map_err(|e| e.to_string())?;
        let at = flushed.and_then(|flushed| flushed.get(&group).copied()).unwrap_or(0);
        if at >= at_least {
            Ok(())
        } else {
            Err(format!("flushed to {at}"))
        }
    })
    .await
}

/// The applied index of `node`'s replica of the space cluster.
async fn applied_of(cluster: &TestCluster, node: u64) -> u64 {
    let status = status(cluster, node).await.expect("node status");
    common::space_replica(&status).expect("a replica of the space cluster").applied_index
}

/// A cluster whose space cluster took 40 posts, and a follower of its
/// leader that flushed them all and was then killed; with the follower's
/// incarnation before.
async fn follower_killed_after_flushing_40_posts() -> (TestCluster, u64, u64) {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = new_leader_of_both(&cluster).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await[&follower];
    let mut client = cluster.client(leader).await;
    for n in 0..40 {
        client.post(post(&format!("k{n}"))).await.expect("post");
    }
    let applied = applied_of(&cluster, leader).await;
    state_flushed(&cluster, follower, DEFAULT_CLUSTER_ID, applied).await;
    cluster.kill_node(follower);
    (cluster, follower, before)
}

/// The follower said `found` and rebuilt its state in place, as the same
/// incarnation (no rejoin).
async fn rebuilt_in_place(cluster: &TestCluster, follower: u64, before: u64, found: &str) {
    let log = cluster.node_log(follower);
    assert!(log.contains(found), "the follower says what it found: {found}");
    assert!(!log.contains("lost state it had acknowledged"), "rebuilt in place: no rejoin");
    let after = status(cluster, follower).await.expect("status").incarnation;
    assert_eq!(after, before, "the same incarnation");
}

/// The bootstrap node's data directory is wiped: it takes the cluster id
/// its peers run, and keeps it. Restarted again (its directory no longer
/// new, so it does not ask its peers), it must neither make a cluster id
/// nor bootstrap a meta group of its own: a chaos soak saw it make a new id
/// 31 times, and the cluster split in two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_bootstrap_node_keeps_the_cluster_id_of_its_peers_across_restarts() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let running = status(&cluster, 2).await.expect("status").cluster_id;
    assert!(!running.is_empty());
    // The space cluster must have reached its other voters before node 1
    // loses its disk: a member wiped within moments of its group's creation
    // cannot be told apart from the original (docs/reliability.md, Disks).
    let created = status(&cluster, 1).await.expect("status");
    let applied = common::space_replica(&created).map(|replica| replica.applied_index).unwrap_or(1).max(1);
    cluster.wait_applied(applied, Duration::from_secs(30)).await;
    cluster.kill_node(1);
    wipe(&cluster, 1);
    cluster.start_node(1);
    for restart in 0..2 {
        let id = common::wait_until(Duration::from_secs(30), "node 1 to answer", async || {
            status(&cluster, 1).await.map(|status| status.cluster_id)
        })
        .await;
        assert_eq!(id, running, "start {restart} after the wipe: node 1 runs its peers' cluster");
        cluster.kill_node(1);
        cluster.start_node(1);
    }
    // Its peers lose the leader of every group node 1 led (its node answers
    // pings, as another incarnation): they elect, and a post through node 1
    // is acknowledged.
    let seq = common::post_until_acknowledged(
        &[cluster.node(1).addr.clone()],
        0,
        post("through-the-wiped-node"),
        Duration::from_secs(60),
        common::any_failure,
    )
    .await;
    assert_eq!(seq, 1, "the first post of the space");
    let log = cluster.node_log(1);
    assert_eq!(log.matches("made a new cluster id").count(), 1, "only the first start made the cluster id");
    assert_eq!(log.matches("meta cluster initialized").count(), 1, "only the first start bootstrapped the meta group");
}

/// A follower whose sled state is deleted (it rolls back to nothing) while
/// its log still holds every entry rebuilds it from the log: the state
/// marker tells it the state lost flushed writes, it says so, and it serves
/// everything again as the same incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_state_machine_is_rebuilt_from_the_log_that_still_holds_it() {
    let (mut cluster, follower, before) = follower_killed_after_flushing_40_posts().await;
    std::fs::remove_dir_all(cluster.node(follower).data_dir.join("state")).expect("delete the sled state");
    cluster.start_node(follower);
    serves_all(&cluster, follower, 40, "the follower to serve all 40 posts again").await;
    rebuilt_in_place(&cluster, follower, before, "the state machine lost writes it had flushed").await;
}

/// A follower whose stored message block is damaged (a byte of its payload
/// flipped; sled's own checks pass, the record's checksum does not) finds
/// it at open: it drops its state and rebuilds it from its log, as the same
/// incarnation, and serves every post unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_damaged_state_machine_record_is_found_at_open_and_the_state_rebuilt() {
    let (mut cluster, follower, before) = follower_killed_after_flushing_40_posts().await;
    {
        let db = sled::open(cluster.node(follower).data_dir.join("state")).expect("open the follower's sled state");
        let tree = db.open_tree(format!("sm.{DEFAULT_CLUSTER_ID}")).expect("the space cluster's tree");
        let (key, value) = tree.scan_prefix(b"m").next().expect("a message block").expect("read it");
        let mut damaged = value.to_vec();
        *damaged.last_mut().unwrap() ^= 0x01;
        tree.insert(key, damaged).expect("write the damaged block");
        db.flush().expect("flush");
    }
    cluster.start_node(follower);
    serves_all(&cluster, follower, 40, "the follower to serve all 40 posts again").await;
    let history = full_history(&cluster, follower, SPACE).await;
    let bodies: Vec<String> = history.iter().map(|message| message.body.clone()).collect();
    let expected: Vec<String> = (0..40).map(|n| format!("body of k{n}")).collect();
    assert_eq!(bodies, expected, "every message as posted");
    rebuilt_in_place(&cluster, follower, before, "the state machine has a damaged record").await;
}

/// A follower whose sled state and snapshots are deleted after its log was
/// purged (a snapshot every 30 entries; openraft purges 256 at a time)
/// cannot rebuild the state here: it drops that group's state and
/// log, takes a new incarnation, and is caught up by a snapshot from its
/// leader once re-admitted. It never serves a partial history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_state_machine_past_the_purged_log_is_dropped_and_the_node_rejoins() {
    let mut cluster = TestCluster::start_with("snapshot_logs_since_last = 30\nsnapshot_logs_kept_len = 5\n").await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = new_leader_of_both(&cluster).await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let before = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
    let mut client = cluster.client(leader).await;
    for n in 0..400 {
        client.post(post(&format!("k{n}"))).await.expect("post");
    }
    let applied = applied_of(&cluster, leader).await;
    let what = format!("node {follower} to purge its log of the space cluster");
    common::wait_until(Duration::from_secs(20), &what, async || {
        let status = status(&cluster, follower).await?;
        let purged = common::space_replica(&status).map(|replica| replica.purged_index).unwrap_or(0);
        if purged > 0 {
            Ok(())
        } else {
            Err("nothing purged yet".to_string())
        }
    })
    .await;
    state_flushed(&cluster, follower, DEFAULT_CLUSTER_ID, applied).await;
    cluster.kill_node(follower);
    let data_dir = cluster.node(follower).data_dir.clone();
    std::fs::remove_dir_all(data_dir.join("state")).expect("delete the sled state");
    std::fs::remove_dir_all(data_dir.join("snapshots")).expect("delete the snapshots");
    cluster.start_node(follower);
    let after = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
    assert_ne!(after[&follower], before[&follower], "re-admitted as a new incarnation");
    serves_all(&cluster, follower, 400, "the follower to serve all 400 posts").await;
    let log = cluster.node_log(follower);
    assert!(log.contains("lost state it had acknowledged"), "the follower says it lost state");
    assert!(log.contains("its log starts after"), "and why");
    let mut through = cluster.client(follower).await;
    let seq = through.post(post("through-the-rejoined-node")).await.expect("a post through the rejoined node");
    assert_eq!(seq.into_inner().seq, 401);
}

/// History pages are bounded by bytes as well as by count: 70 legal posts of
/// 64,000 bytes (4.5 MB, past the 4 MiB a gRPC client takes by default) are
/// read back through every node, the followers included, in pages that
/// stay under `limits.history_bytes_max`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_of_large_messages_is_read_in_pages_through_any_node() {
    use prost::Message as _;
    let cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await;
    let mut client = cluster.client(leader).await;
    for n in 0..70 {
        let request = pb::PostRequest {
            space: SPACE.into(),
            author: "alice".into(),
            body: format!("{n:0>64000}"),
            idempotency_key: format!("big{n}"),
        };
        client.post(request).await.expect("a legal 64,000-byte post");
    }
    for node in 1..=3 {
        // Every node's default client limit (4 MiB) is what readers use.
        let mut client = cluster.client(node).await;
        let mut next = 1;
        let mut pages = 0;
        while next <= 70 {
            let request = pb::HistoryRequest {
                space: SPACE.into(),
                user: String::new(),
                from_seq: next,
                limit: 1_000,
                linearizable: false,
            };
            let page = common::wait_until(Duration::from_secs(10), "a history page", async || {
                client.history(request.clone()).await.map(|r| r.into_inner()).map_err(|e| e.to_string())
            })
            .await;
            assert!(!page.messages.is_empty(), "node {node}: an empty page at seq {next}");
            assert!(
                page.encoded_len() <= 2 * 1024 * 1024 + 70_000,
                "node {node}: a page of {} bytes",
                page.encoded_len()
            );
            for message in &page.messages {
                assert_eq!(message.seq, next, "node {node}: pages continue with no gap");
                next += 1;
            }
            pages += 1;
        }
        assert!(pages >= 3, "node {node}: 4.5 MB in pages of at most 2 MiB takes 3 pages, took {pages}");
    }
}

/// Every `*.jnl` file under `dir`, largest first.
fn journals(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "jnl") {
                found.push((path.clone(), entry.metadata().map(|m| m.len()).unwrap_or(0)));
            }
        }
    }
    found.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    found
}

/// A follower's Raft log damaged under it (256 bytes of its journal flipped, or its
/// `raft-log/` deleted with `node.json` kept) lost entries it had fsynced
/// and acknowledged: it says so, takes a new incarnation, and is caught up
/// and re-admitted by itself; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_log_was_damaged_says_so_and_rejoins_as_a_new_incarnation() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = new_leader_of_both(&cluster).await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let mut client = cluster.client(leader).await;
    let mut posted = 0;
    for (round, damaged) in followers.iter().copied().enumerate() {
        let before = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
        for _ in 0..100 {
            posted += 1;
            client.post(post(&format!("k{posted}"))).await.expect("post");
        }
        cluster.kill_node(damaged);
        let log_dir = cluster.node(damaged).data_dir.join("raft-log");
        if round == 0 {
            // 256 bytes flipped in the middle of what the journal holds (it
            // is preallocated: its written part ends at the last non-zero byte).
            let files = journals(&log_dir);
            let (largest, _) = files.first().cloned().expect("a journal file");
            let mut bytes = std::fs::read(&largest).unwrap();
            let written = bytes.iter().rposition(|byte| *byte != 0).expect("a written journal") + 1;
            assert!(written > 16 * 1024, "the journal holds the posts: {written} bytes in {files:?}");
            for byte in &mut bytes[written / 2..written / 2 + 256] {
                *byte ^= 0xa5;
            }
            std::fs::write(&largest, &bytes).unwrap();
        } else {
            std::fs::remove_dir_all(&log_dir).unwrap();
        }
        cluster.start_node(damaged);
        let after = incarnations_recorded(&cluster, leader, &[1, 2, 3]).await;
        assert_ne!(after[&damaged], before[&damaged], "round {round}: a damaged log takes a new incarnation");
        assert!(
            cluster.node_log(damaged).contains("lost state it had acknowledged"),
            "round {round}: the node says what it lost"
        );
        serves_all(&cluster, damaged, posted, "the damaged node to serve every post").await;
    }
}

/// A tmpfs mounted at a path, unmounted (lazily) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size_mib: u64) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root (the test machines run as root)");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A leader whose disk falls below `storage.disk_reserve_bytes` refuses
/// posts with a clear `resource_exhausted` before the disk is full, says so
/// in node status, commits nothing of what it refused, and takes posts
/// again once space is freed, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_is_nearly_full_refuses_posts_clearly_and_takes_them_again_when_freed() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    // Node 1's data directory moves onto a 256 MiB disk of its own.
    let disk = onto_tmpfs(&mut cluster, 1, 256);
    let data_dir = cluster.node(1).data_dir.clone();
    common::wait_until(Duration::from_secs(30), "node 1 to lead the space cluster", async || {
        let channel = common::try_connect(&cluster.node(1).addr).await.map_err(|e| e.to_string())?;
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let request = pb::TransferLeaderRequest { cluster_id: DEFAULT_CLUSTER_ID, to_node: 1 };
        let _ = admin.transfer_leader(request).await;
        match common::space_replica(&status(&cluster, 1).await?) {
            Some(replica) if replica.role == "leader" => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.role.clone()))),
        }
    })
    .await;
    let mut client = cluster.client(1).await;
    assert_eq!(client.post(post("before")).await.expect("a post with room").into_inner().seq, 1);

    let free = spaceraft::node::disk::free_bytes(&data_dir).expect("free space");
    let junk = data_dir.join("junk");
    std::fs::write(&junk, vec![1u8; (free - 32 * 1024 * 1024) as usize]).expect("fill the disk to 32 MiB free");
    // The node notices within a second, and says so in its status.
    let errors = common::wait_until(Duration::from_secs(10), "node 1 to report its disk", async || {
        let channel = common::try_connect(&cluster.node(1).addr).await.map_err(|e| e.to_string())?;
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let request = pb::NodeStatusRequest { summary: true };
        let node = admin.node_status(request).await.map_err(|e| e.to_string())?.into_inner().node.unwrap_or_default();
        if node.health == "degraded" && node.errors.iter().any(|e| e.contains("disk below its reserve")) {
            Ok(node.errors)
        } else {
            Err(format!("{} {:?}", node.health, node.errors))
        }
    })
    .await;
    assert!(!errors.is_empty());
    let refused = client.post(post("refused")).await.expect_err("a post below the reserve");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("storage.disk_reserve_bytes"), "the refusal names the setting: {refused:?}");

    std::fs::remove_file(&junk).unwrap();
    let seq = common::wait_until(Duration::from_secs(10), "posts to be taken again", async || {
        client.post(post("after")).await.map(|r| r.into_inner().seq).map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(seq, 2, "nothing refused was committed");
    let keys = served(&cluster, 1).await;
    assert!(!keys.contains_key("refused"));
    cluster.kill_node(1);
    drop(disk);
}

/// Moves `node`'s data directory onto a tmpfs of `size_mib` (the node is
/// stopped and started again around the move).
fn onto_tmpfs(cluster: &mut TestCluster, node: u64, size_mib: u64) -> Tmpfs {
    cluster.kill_node(node);
    let data_dir = cluster.node(node).data_dir.clone();
    let moved = data_dir.with_extension("moved");
    std::fs::rename(&data_dir, &moved).unwrap();
    std::fs::create_dir(&data_dir).unwrap();
    let disk = Tmpfs::mount(&data_dir, size_mib);
    let copied =
        std::process::Command::new("cp").arg("-a").arg(format!("{}/.", moved.display())).arg(&data_dir).status();
    assert!(copied.unwrap().success());
    cluster.start_node(node);
    disk
}

/// Fills the file system holding `dir` to the last byte; returns the file.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let junk = dir.join("junk");
    let mut file = std::fs::File::create(&junk).unwrap();
    let chunk = vec![7u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    while file.write_all(&[7u8; 512]).is_ok() {}
    let _ = file.sync_all();
    junk
}

/// A follower whose disk fills to the last byte (past its reserve: the
/// reserve only guards the posts a node leads) cannot append: its groups'
/// Raft stops on the storage error and it reports `storage-failed`, while
/// the other two keep acknowledging posts. Once the disk has room again it
/// restarts itself, reopens its stores, catches up and serves every post;
/// no operator restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_fills_reports_storage_failed_and_recovers_by_itself_when_freed() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, SPACE, &["alice"]).await;
    let leader = new_leader_of_both(&cluster).await;
    let full = (1..=3).find(|id| *id != leader).unwrap();
    let disk = onto_tmpfs(&mut cluster, full, 160);
    let mut client = cluster.client(leader).await;
    let mut acked = BTreeMap::new();
    for n in 0..20 {
        let key = format!("k{n}");
        acked.insert(key.clone(), client.post(post(&key)).await.expect("post").into_inner().seq);
    }
    let data_dir = cluster.node(full).data_dir.clone();
    let junk = fill(&data_dir);
    for n in 20..80 {
        let key = format!("k{n}");
        let seq = client.post(post(&key)).await.expect("the other two acknowledge").into_inner().seq;
        acked.insert(key, seq);
    }
    let summary = common::wait_until(Duration::from_secs(30), "the full node to report storage-failed", async || {
        let channel = common::try_connect(&cluster.node(full).addr).await.map_err(|e| e.to_string())?;
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let request = pb::NodeStatusRequest { summary: true };
        let status = admin.node_status(request).await.map_err(|e| e.to_string())?.into_inner();
        let failed = status.replicas.iter().any(|r| r.role == "storage-failed");
        let node = status.node.unwrap_or_default();
        if failed && node.health == "storage-failed" {
            Ok(node)
        } else {
            Err(format!("{} {:?}", node.health, node.errors))
        }
    })
    .await;
    assert!(summary.errors.iter().any(|e| e.contains("storage failed")), "{:?}", summary.errors);

    std::fs::remove_file(&junk).unwrap();
    common::wait_until(Duration::from_secs(60), "the node to restart itself and catch up", async || {
        let Ok(channel) = common::try_connect(&cluster.node(full).addr).await else { return Err("down".to_string()) };
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let status = admin.node_status(pb::NodeStatusRequest::default()).await.map_err(|e| e.to_string())?;
        match common::space_replica(&status.into_inner()) {
            Some(replica) if replica.role == "follower" && replica.applied_index >= 80 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        cluster.node_log(full).contains("restarting this node to reopen its stores"),
        "the node says why it restarts"
    );
    let keys = served(&cluster, full).await;
    for (key, seq) in &acked {
        assert_eq!(keys.get(key), Some(seq), "post {key} on the recovered node");
    }
    cluster.kill_node(full);
    drop(disk);
}
