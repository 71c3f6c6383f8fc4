//! spacectl's cluster administration, run as the real binary against a
//! real local cluster: members, leader transfer, health, version and
//! completions, with their exit codes.

mod common;

use std::time::Duration;

use common::ctl::{code, json, json_any, spacectl};
use common::TestCluster;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spacectl_changes_members_moves_leadership_and_reports_health() {
    let mut cluster = TestCluster::start().await;
    common::create_space(&cluster, 1, "general", &["alice"]).await;
    let endpoints = cluster.endpoints();
    let one = |args: &[&str]| spacectl(&endpoints, args);

    // --- version and completions
    let version = json(&one(&["version", "-o", "json"]));
    assert_eq!(version["spacectl"], env!("CARGO_PKG_VERSION"));
    let completion = one(&["completion", "bash"]);
    assert!(completion.status.success() && String::from_utf8_lossy(&completion.stdout).contains("spacectl"));

    // --- health: every cluster has a leader and a majority
    let health = one(&["cluster", "health", "-o", "json"]);
    assert_eq!(code(&health), 0, "{}", String::from_utf8_lossy(&health.stderr));
    let rows = json(&health);
    let clusters: Vec<u64> = rows.as_array().unwrap().iter().map(|row| row["cluster_id"].as_u64().unwrap()).collect();
    assert_eq!(clusters, [0, 1]);
    assert!(rows.as_array().unwrap().iter().all(|row| row["healthy"] == true), "{rows}");

    // --- cluster info and space list
    let info = json(&one(&["cluster", "info", "1", "-o", "json"]));
    assert_eq!(info["voters"], serde_json::json!([1, 2, 3]));
    let replicas = info["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3);
    assert_eq!(replicas.iter().filter(|r| r["role"] == "leader").count(), 1);
    assert!(replicas.iter().all(|r| r["lag"].is_u64()), "{info}");
    assert_eq!(code(&one(&["cluster", "info", "99"])), 1);
    let listed = json(&one(&["space", "list", "--as", "alice", "-o", "json"]));
    assert_eq!(listed[0]["name"], "general");
    assert_eq!(json(&one(&["space", "list", "--as", "nobody", "-o", "json"])), serde_json::json!([]));

    // --- snapshots: save a cluster's state, check the file, refuse bad ones
    for n in 0..5 {
        assert!(one(&["post", "general", &format!("m{n}"), "--as", "alice"]).status.success());
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster-1.snap");
    let file_arg = file.to_str().unwrap();
    let saved = json(&one(&["snapshot", "save", "--cluster", "1", file_arg, "-o", "json"]));
    assert_eq!((saved["cluster_id"].as_u64(), saved["spaces"].as_u64()), (Some(1), Some(1)), "{saved}");
    assert_eq!(saved["messages"], 5);
    assert_eq!(saved["voters"], serde_json::json!([1, 2, 3]));
    assert!(saved["last_log_index"].as_u64().unwrap() >= 6, "the create and five posts: {saved}");
    assert!(!dir.path().join("cluster-1.snap.part").exists());
    let status = json(&one(&["snapshot", "status", file_arg, "-o", "json"]));
    assert_eq!((&status["crc32"], &status["size_bytes"]), (&saved["crc32"], &saved["size_bytes"]));
    let table = String::from_utf8_lossy(&one(&["snapshot", "status", file_arg]).stdout).to_string();
    assert!(table.contains("MESSAGES") && table.contains(saved["crc32"].as_str().unwrap()), "{table}");
    let meta = json(&one(&[
        "snapshot",
        "save",
        "--cluster",
        "0",
        dir.path().join("meta.snap").to_str().unwrap(),
        "-o",
        "json",
    ]));
    assert!(meta["keys"].as_u64().unwrap() >= 5, "nodes, a cluster, its load, a placement: {meta}");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    let corrupt = dir.path().join("corrupt.snap");
    std::fs::write(&corrupt, &bytes).unwrap();
    let refused = one(&["snapshot", "status", corrupt.to_str().unwrap()]);
    assert_eq!(code(&refused), 1);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    std::fs::write(&corrupt, &std::fs::read(&file).unwrap()[..middle]).unwrap();
    assert_eq!(code(&one(&["snapshot", "status", corrupt.to_str().unwrap()])), 1, "a truncated file");
    assert_eq!(code(&one(&["snapshot", "status", dir.path().join("none").to_str().unwrap()])), 1);
    let unknown = one(&["snapshot", "save", "--cluster", "99", dir.path().join("x").to_str().unwrap()]);
    assert_eq!(code(&unknown), 1, "{}", String::from_utf8_lossy(&unknown.stderr));

    // --- monitoring checks, with Nagios exit codes
    let ok = one(&["check", "cluster", "--expect-regions", "3"]);
    assert_eq!(code(&ok), 0, "{}", String::from_utf8_lossy(&ok.stdout));
    assert!(String::from_utf8_lossy(&ok.stdout).starts_with("SPACERAFT OK - 2 clusters"));
    let missing_region = one(&["check", "cluster", "--expect-regions", "4", "--format", "json"]);
    assert_eq!(code(&missing_region), 2);
    assert_eq!(json_any(&missing_region)["status"], "critical");
    let metrics = String::from_utf8_lossy(&one(&["check", "cluster", "--format", "prometheus"]).stdout).to_string();
    assert!(
        metrics.contains("spaceraft_check_status 0") && metrics.contains("spaceraft_cluster_healthy{cluster=\"1\"} 1")
    );

    // --- leader transfer --wait moves leadership of cluster 1
    let status = json(&one(&["cluster", "status", "--replicas", "-o", "json"]));
    let leader = status
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["cluster_id"] == 1 && row["role"] == "leader")
        .map(|row| row["node_id"].as_u64().unwrap())
        .unwrap();
    let target = (1..=3).find(|id| *id != leader).unwrap().to_string();
    let moved = one(&["leader", "transfer", "--cluster", "1", "--to", &target, "--wait", "-o", "json"]);
    assert_eq!(json(&moved)["moved"], true);
    let status = json(&one(&["cluster", "status", "--replicas", "-o", "json"]));
    let now = status.as_array().unwrap().iter().find(|row| row["cluster_id"] == 1 && row["role"] == "leader").unwrap();
    assert_eq!(now["node_id"].as_u64().unwrap().to_string(), target);
    let not_a_voter = one(&["leader", "transfer", "--cluster", "1", "--to", "9"]);
    assert_eq!(code(&not_a_voter), 1, "{}", String::from_utf8_lossy(&not_a_voter.stderr));

    // --- drain: the node hands over every leadership (meta included)
    let target: u64 = target.parse().unwrap();
    let drained = one(&["node", "drain", &target.to_string(), "--wait", "-o", "json"]);
    assert_eq!(json(&drained)["drained"], true);
    let status = json(&one(&["cluster", "status", "--replicas", "-o", "json"]));
    let still = status.as_array().unwrap().iter().filter(|r| r["node_id"] == target && r["role"] == "leader").count();
    assert_eq!(still, 0, "{status}");
    let directory_nodes = json(&one(&["cluster", "list", "-o", "json"]));
    assert!(directory_nodes.is_array());
    assert_eq!(json(&one(&["node", "recommission", &target.to_string(), "-o", "json"]))["drained"], false);
    assert_eq!(code(&one(&["node", "drain", "9"])), 1, "an unknown node");
    assert_eq!(code(&one(&["node", "decommission", "3"])), 2, "decommission needs --yes");

    // --- members: removal needs --yes; remove, add back, promote
    let unconfirmed = one(&["member", "remove", "3", "--cluster", "1"]);
    assert_eq!(code(&unconfirmed), 2);
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("--yes"));
    let removed = json(&one(&["member", "remove", "3", "--cluster", "1", "--yes", "-o", "json"]));
    assert_eq!(removed["voters"], serde_json::json!([1, 2]));
    let learner = json(&one(&["member", "add", "3", "--cluster", "1", "--learner", "-o", "json"]));
    assert_eq!(
        (learner["voters"].clone(), learner["learners"].clone()),
        (serde_json::json!([1, 2]), serde_json::json!([3]))
    );
    let promoted = json(&one(&["member", "promote", "3", "--cluster", "1", "-o", "json"]));
    assert_eq!(promoted["voters"], serde_json::json!([1, 2, 3]));
    let table = one(&["member", "add", "3", "--cluster", "1"]);
    assert_eq!(code(&table), 1, "a voter cannot be added again");

    // --- with node 3 down, removing node 2 would leave no majority up
    cluster.kill_node(3);
    let first = cluster.node(1).addr.clone();
    common::wait_until(Duration::from_secs(30), "a removal leaving no majority to be refused", async || {
        let refused =
            spacectl(&first, &["member", "remove", "2", "--cluster", "1", "--yes", "--command-timeout", "3s"]);
        let text = String::from_utf8_lossy(&refused.stderr).to_string();
        if code(&refused) == 1 && text.contains("no majority") {
            return Ok(());
        }
        assert_ne!(code(&refused), 0, "a removal leaving no majority went through: {text}");
        Err(text)
    })
    .await;
    let critical = spacectl(&first, &["check", "cluster", "--expect-regions", "3"]);
    assert_eq!(code(&critical), 2, "{}", String::from_utf8_lossy(&critical.stdout));
    assert!(String::from_utf8_lossy(&critical.stdout).starts_with("SPACERAFT CRITICAL"));
    // The node rows: node 3 unreachable, the others degraded (they miss it).
    let what = "nodes 1 and 2 degraded, node 3 unreachable";
    let nodes = common::wait_until(Duration::from_secs(30), what, async || {
        let nodes = json(&spacectl(&first, &["cluster", "status", "-o", "json"]));
        let health: Vec<&str> = nodes.as_array().unwrap().iter().map(|n| n["health"].as_str().unwrap()).collect();
        if health == ["degraded", "degraded", "unreachable"] {
            Ok(nodes)
        } else {
            Err(nodes)
        }
    })
    .await;
    let errors = nodes[0]["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e == "node 3 does not answer"), "{nodes}");
    assert!(!nodes[2]["errors"].as_array().unwrap().is_empty(), "why it is unreachable: {nodes}");
    let info = json(&spacectl(&first, &["cluster", "info", "1", "-o", "json"]));
    let of_node = |id: u64| info["replicas"].as_array().unwrap().iter().find(|r| r["node_id"] == id).cloned().unwrap();
    assert!(of_node(3)["last_seen_ms"].as_u64().is_none_or(|ms| ms >= 1_000), "node 3 is not heard from: {info}");

    // --- with node 2 down as well, no cluster has a quorum: health says so
    cluster.kill_node(2);
    let unhealthy = spacectl(&first, &["cluster", "health", "--command-timeout", "5s", "-o", "json"]);
    assert_eq!(code(&unhealthy), 5, "{}", String::from_utf8_lossy(&unhealthy.stdout));
    let rows: Value = serde_json::from_slice(&unhealthy.stdout).expect("JSON rows");
    for row in rows.as_array().unwrap() {
        assert_eq!(row["healthy"], false, "{row}");
        assert_eq!((row["replicas"].as_u64(), row["answering"].as_u64()), (Some(3), Some(1)), "{row}");
    }
}
