//! Moving a space to another space cluster while posts and subscribers
//! run: no acknowledged post lost, none duplicated, seqs go on from where
//! they were, and subscribers (direct and through gateways) see every seq
//! once, in order, across the move.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{Recorder, TEST_UPSTREAM};
use common::{create_space, full_history, TestCluster};
use spaceraft::pb;

/// Every space gets a space cluster of its own.
const PLACEMENT: &str = "[placement]\nspaces_max = 1\n";
const WAIT: Duration = Duration::from_secs(60);
const POSTERS: usize = 4;

/// Posts with keys `p{poster}-{n}` through the nodes in turn until told to
/// stop, retrying each key until acknowledged; records key → seq.
fn start_poster(
    poster: usize,
    addrs: Vec<String>,
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let key = format!("p{poster}-{n}");
            let request = pb::PostRequest {
                space: "mover".into(),
                author: "poster".into(),
                body: key.clone(),
                idempotency_key: key.clone(),
            };
            let seq = common::post_until_acknowledged(&addrs, poster, request, WAIT, common::any_failure).await;
            acked.lock().unwrap().insert(key, seq);
            count.fetch_add(1, Ordering::Relaxed);
        }
    })
}

async fn wait_count(count: &AtomicU64, at_least: u64) {
    let what = format!("{at_least} posts acknowledged");
    common::wait_until(WAIT, &what, async || match count.load(Ordering::Relaxed) {
        acknowledged if acknowledged >= at_least => Ok(()),
        acknowledged => Err(format!("posters stalled at {acknowledged}")),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_space_moves_under_posts_and_subscribers_without_loss_gap_or_duplicate() {
    let mut cluster = TestCluster::start_with(PLACEMENT).await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "mover", &["alice", "poster"]).await;
    create_space(&cluster, 2, "other", &["bob"]).await;
    let mut admin = cluster.admin(2).await;
    let directory = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner();
    let cluster_of = |directory: &pb::DirectoryResponse, space: &str| {
        directory.placements.iter().find(|p| p.space == space).map(|p| (p.cluster_id, p.version)).unwrap()
    };
    let (from, _) = cluster_of(&directory, "mover");
    let (to, _) = cluster_of(&directory, "other");
    assert_ne!(from, to, "the two spaces share a cluster: {directory:?}");

    // --- subscribers: one direct on a node, one per gateway
    let mut subscriber = cluster.client(3).await;
    let mut stream = subscriber
        .subscribe(pb::SubscribeRequest { space: "mover".into(), user: "alice".into(), from_seq: 1 })
        .await
        .expect("subscribe")
        .into_inner();
    let direct: Arc<Mutex<Vec<u64>>> = Arc::default();
    let direct_task = {
        let direct = direct.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = stream.message().await {
                if let Some(pb::subscribe_event::Event::Message(message)) = event.event {
                    direct.lock().unwrap().push(message.seq);
                }
            }
        })
    };
    let recorders: Vec<Recorder> =
        cluster.gateways.iter().map(|gateway| Recorder::start("alice", &["mover"], vec![gateway.ws_url()])).collect();

    // --- posters, then the move in the middle of their posts
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let (count, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let posters: Vec<_> = (0..POSTERS)
        .map(|poster| start_poster(poster, addrs.clone(), acked.clone(), count.clone(), stop.clone()))
        .collect();
    wait_count(&count, 100).await;
    let moved = admin
        .move_space(pb::MoveSpaceRequest { space: "mover".into(), to_cluster: to })
        .await
        .expect("move")
        .into_inner();
    assert_eq!((moved.from_cluster, moved.to_cluster, moved.version), (from, to, 3));
    assert!(moved.sealed_seq >= 100 && moved.messages_copied == moved.sealed_seq, "{moved:?}");
    wait_count(&count, count.load(Ordering::Relaxed) + 100).await;
    stop.store(true, Ordering::Relaxed);
    for poster in posters {
        poster.await.expect("poster");
    }

    // --- every acknowledged post exactly once, seqs 1..=N with no gap
    let acked = acked.lock().unwrap().clone();
    let total = acked.len() as u64;
    let seqs: std::collections::BTreeSet<u64> = acked.values().copied().collect();
    assert_eq!(seqs.len() as u64, total, "two keys were acknowledged with one seq");
    assert_eq!(seqs.iter().copied().collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>(), "acknowledged seqs");
    assert!(acked.values().any(|seq| *seq > moved.sealed_seq), "no post landed after the move");
    // (GetSpace is served by any replica: node 1's may not have applied the
    // last acknowledged post yet.)
    let info = common::wait_until(WAIT, "node 1 to show every acknowledged post", async || {
        let mut client = cluster.client(1).await;
        let info = client.get_space(pb::GetSpaceRequest { name: "mover".into() }).await.map_err(|e| e.to_string())?;
        let info = info.into_inner();
        if info.last_seq >= total {
            Ok(info)
        } else {
            Err(format!("last seq {}", info.last_seq))
        }
    })
    .await;
    assert_eq!((info.cluster_id, info.last_seq), (to, total));
    for node in 1..=3 {
        let history = full_history(&cluster, node, "mover").await;
        let by_seq: Vec<(u64, String)> = history.iter().map(|m| (m.seq, m.idempotency_key.clone())).collect();
        let expected: Vec<(u64, String)> = {
            let mut pairs: Vec<(u64, String)> = acked.iter().map(|(key, seq)| (*seq, key.clone())).collect();
            pairs.sort();
            pairs
        };
        assert_eq!(by_seq, expected, "node {node}'s history differs from what was acknowledged");
    }

    // --- a retried key from before the move is still deduplicated
    let (old_key, old_seq) = acked.iter().find(|(_, seq)| **seq <= moved.sealed_seq).unwrap();
    let retry = pb::PostRequest {
        space: "mover".into(),
        author: "poster".into(),
        body: old_key.clone(),
        idempotency_key: old_key.clone(),
    };
    let mut client = cluster.client(1).await;
    let response = client.post(retry).await.expect("retried post").into_inner();
    assert_eq!((response.seq, response.duplicate), (*old_seq, true));

    // --- subscribers saw 1..=N once each, in order
    common::wait_until(WAIT, "the direct subscriber to see every post", async || {
        let seen = direct.lock().unwrap();
        if seen.len() >= total as usize {
            Ok(())
        } else {
            Err(format!("stalled at {:?}", seen.last()))
        }
    })
    .await;
    assert_eq!(*direct.lock().unwrap(), (1..=total).collect::<Vec<_>>(), "direct subscription");
    direct_task.abort();
    for recorder in &recorders {
        recorder.wait_for("mover", total, WAIT).await;
        recorder.assert_exactly("mover", total);
    }

    // --- the old cluster kept the sealed record only: its messages are gone
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("from.snap");
    let args = ["snapshot", "save", "--cluster", &from.to_string(), file.to_str().unwrap(), "-o", "json"];
    let saved = common::ctl::json(&common::ctl::spacectl(&cluster.endpoints(), &args));
    assert_eq!((saved["spaces"].as_u64(), saved["messages"].as_u64()), (Some(1), Some(0)), "{saved}");
    // A subscription from seq 1 after the move still gets every message.
    let mut late = cluster.client(2).await;
    let mut stream = late
        .subscribe(pb::SubscribeRequest { space: "mover".into(), user: "alice".into(), from_seq: 1 })
        .await
        .expect("subscribe after the move")
        .into_inner();
    let mut late_seqs = Vec::new();
    while late_seqs.len() < total as usize {
        let event = tokio::time::timeout(WAIT, stream.message()).await.expect("in time").unwrap().unwrap();
        if let Some(pb::subscribe_event::Event::Message(message)) = event.event {
            late_seqs.push(message.seq);
        }
    }
    assert_eq!(late_seqs, (1..=total).collect::<Vec<_>>());

    // --- moving it again to where it is changes nothing
    let again = admin
        .move_space(pb::MoveSpaceRequest { space: "mover".into(), to_cluster: to })
        .await
        .expect("move again")
        .into_inner();
    assert_eq!((again.from_cluster, again.to_cluster, again.version), (to, to, 3));
    // --- bad moves are refused and change nothing
    let unknown = admin.move_space(pb::MoveSpaceRequest { space: "mover".into(), to_cluster: 999 }).await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::FailedPrecondition, "{unknown}");
    let missing = admin.move_space(pb::MoveSpaceRequest { space: "nope".into(), to_cluster: to }).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing}");
}

/// With two voters per new cluster, one node does not host the second
/// cluster: the gateway of its region follows that space through it, and
/// the node relays the follow from a node that hosts the space.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_follows_a_space_its_node_does_not_host() {
    let mut cluster = TestCluster::start_with("[placement]\nspaces_max = 1\n[groups]\ncluster_voters_len = 2\n").await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    create_space(&cluster, 1, "first", &["alice"]).await;
    create_space(&cluster, 1, "second", &["alice", "poster"]).await;
    let mut admin = cluster.admin(1).await;
    let directory = admin.directory(pb::DirectoryRequest {}).await.unwrap().into_inner();
    let placed = directory.placements.iter().find(|p| p.space == "second").unwrap().cluster_id;
    let voters = &directory.clusters.iter().find(|c| c.cluster_id == placed).unwrap().voters;
    assert_eq!(voters.len(), 2, "{directory:?}");
    let outsider = (1..=3).find(|id| !voters.contains(id)).unwrap();
    let recorders: Vec<Recorder> =
        cluster.gateways.iter().map(|gateway| Recorder::start("alice", &["second"], vec![gateway.ws_url()])).collect();
    // Posts through the node that does not host the space are forwarded.
    let mut client = cluster.client(outsider).await;
    for n in 1..=20u64 {
        let request = pb::PostRequest {
            space: "second".into(),
            author: "poster".into(),
            body: format!("m{n}"),
            idempotency_key: format!("k{n}"),
        };
        assert_eq!(client.post(request).await.expect("post").into_inner().seq, n);
    }
    for recorder in &recorders {
        recorder.wait_for("second", 20, WAIT).await;
        recorder.assert_exactly("second", 20);
    }
    // The outsider's gateway follows its own node the whole time (which
    // relayed the space), and never left it as lagging.
    let region = ["us-east", "eu-west", "ap-south"][outsider as usize - 1];
    let gateway = cluster.gateways.iter().position(|g| g.region == region).unwrap();
    let status = cluster.gateway_status(gateway).await.unwrap();
    let slot = &status["upstreams"][0];
    assert_eq!(slot["node"], format!("{region}@{}", cluster.node(outsider).addr), "{status}");
    assert_eq!(slot["switches"], 0, "{status}");
}
