//! Space administration through spacectl against real nodes and gateways:
//! members added can post, members removed lose their subscriptions before
//! any later message reaches them, and a deleted space ends every
//! subscription and never comes back under its name.

mod common;

use std::process::Output;
use std::time::Duration;

use common::ctl::{code, json, spacectl, stderr};
use common::gateway::{Recorder, TEST_UPSTREAM};
use common::TestCluster;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until `recorder` got an error frame with `code` for `space`.
async fn wait_for_error(recorder: &Recorder, space: &str, code: &str) {
    let what = format!("{} to get a {code} error for {space}", recorder.user);
    common::wait_until(WAIT, &what, async || {
        let errors = recorder.seen.lock().unwrap().errors.clone();
        if errors.iter().any(|error| error["code"] == code && error["space"] == space) {
            Ok(())
        } else {
            Err(errors)
        }
    })
    .await
}

/// Polls `gateway list -o json` until `check` finds what it waits for.
async fn wait_for_gateways<T>(ctl: impl Fn(&[&str]) -> Output, check: impl Fn(&[Value]) -> Option<T>) -> T {
    common::wait_until(WAIT, "gateway list to show what is waited for", async || {
        let rows = json(&ctl(&["gateway", "list", "-o", "json"]));
        check(rows.as_array().unwrap()).ok_or(rows)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_come_and_go_and_a_deleted_space_is_gone_for_good() {
    let mut cluster = TestCluster::start().await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    let endpoints = cluster.endpoints();
    let ctl = |args: &[&str]| spacectl(&endpoints, args);
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.ws_url()).collect();

    json(&ctl(&["space", "create", "general", "--members", "alice,bob", "-o", "json"]));
    let alice = Recorder::start("alice", &["general"], vec![urls[0].clone()]);
    let bob = Recorder::start("bob", &["general"], vec![urls[1].clone()]);
    for n in 1..=3 {
        let posted = json(&ctl(&["post", "general", &format!("m{n}"), "--as", "alice", "-o", "json"]));
        assert_eq!(posted["seq"], n);
    }
    alice.wait_for("general", 3, WAIT).await;
    bob.wait_for("general", 3, WAIT).await;

    // --- gateway list: every gateway, its clients and the replica it follows
    let gateway_ids: Vec<String> = cluster.gateways.iter().map(|g| format!("{}@{}", g.region, g.http)).collect();
    let followed_by_first = wait_for_gateways(&ctl, |rows| {
        let first = rows.iter().find(|row| row["gateway_id"] == gateway_ids[0].as_str())?;
        let ids: Vec<&str> = rows.iter().map(|row| row["gateway_id"].as_str().unwrap()).collect();
        let mut sorted_ids = gateway_ids.iter().map(String::as_str).collect::<Vec<_>>();
        sorted_ids.sort();
        let upstream = &first["upstreams"][0];
        (ids == sorted_ids && first["clients"] == 1 && first["subscriptions"] == 1 && upstream["connected"] == true)
            .then(|| upstream["node"].as_str().unwrap().to_string())
    })
    .await;
    let table = ctl(&["gateway", "list"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains(&gateway_ids[0]), "{}", stderr(&table));

    // --- draining the node a gateway follows sends the gateway elsewhere;
    // its client goes on without a gap
    let drained = (1..=3).find(|id| followed_by_first.ends_with(&cluster.node(*id).addr)).expect("a node");
    json(&ctl(&["node", "drain", &drained.to_string(), "--wait", "-o", "json"]));
    let drained_addr = cluster.node(drained).addr.clone();
    wait_for_gateways(&ctl, |rows| {
        let first = rows.iter().find(|row| row["gateway_id"] == gateway_ids[0].as_str())?;
        let upstream = &first["upstreams"][0];
        (upstream["connected"] == true && !upstream["node"].as_str().unwrap().ends_with(&drained_addr)).then_some(())
    })
    .await;
    json(&ctl(&["post", "general", "m4 after the drain", "--as", "alice", "-o", "json"]));
    alice.wait_for("general", 4, WAIT).await;
    alice.assert_exactly("general", 4);
    // It stays away while the node is drained: past the time a healthy home
    // replica takes to be followed again (upstream.home_healthy_ms_min =
    // 2 s here) it has not switched back, nor switched at all.
    let switches = |rows: &[Value]| -> Option<u64> {
        let first = rows.iter().find(|row| row["gateway_id"] == gateway_ids[0].as_str())?;
        first["upstreams"][0]["switches"].as_u64()
    };
    let settled = switches(json(&ctl(&["gateway", "list", "-o", "json"])).as_array().unwrap()).unwrap();
    let watch_until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < watch_until {
        let rows = json(&ctl(&["gateway", "list", "-o", "json"]));
        let rows = rows.as_array().unwrap();
        assert_eq!(switches(rows), Some(settled), "the gateway switched while its home node was drained: {rows:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    json(&ctl(&["node", "recommission", &drained.to_string(), "-o", "json"]));

    // --- a member added can post, read, and finds the space in its list
    let added = json(&ctl(&["space", "members", "add", "general", "carol", "-o", "json"]));
    assert_eq!(added["members"], serde_json::json!(["alice", "bob", "carol"]));
    let posted = json(&ctl(&["post", "general", "hi from carol", "--as", "carol", "-o", "json"]));
    assert_eq!(posted["seq"], 5);
    let listed = json(&ctl(&["space", "list", "--as", "carol", "-o", "json"]));
    assert_eq!(listed[0]["name"], "general", "{listed}");
    // Carol listens on bob's gateway: when she has a message, that gateway
    // has fanned it out.
    let carol = Recorder::start("carol", &["general"], vec![urls[1].clone()]);
    carol.wait_for("general", 5, WAIT).await;
    bob.wait_for("general", 5, WAIT).await;

    // --- a member removed: subscription ended, nothing later delivered
    let removed = json(&ctl(&["space", "members", "remove", "general", "bob", "-o", "json"]));
    assert_eq!(removed["members"], serde_json::json!(["alice", "carol"]));
    wait_for_error(&bob, "general", "not_member").await;
    json(&ctl(&["post", "general", "after bob left", "--as", "alice", "-o", "json"]));
    alice.wait_for("general", 6, WAIT).await;
    carol.wait_for("general", 6, WAIT).await;
    assert_eq!(bob.seqs("general"), [1, 2, 3, 4, 5], "bob got nothing posted after his removal");
    let refused = ctl(&["post", "general", "still here?", "--as", "bob"]);
    assert_eq!(code(&refused), 4, "a removed member may not post: {}", stderr(&refused));
    assert_eq!(code(&ctl(&["history", "general", "--as", "bob"])), 4);
    assert_eq!(json(&ctl(&["space", "list", "--as", "bob", "-o", "json"])), serde_json::json!([]));

    // --- refused member changes change nothing
    let empty = ctl(&["space", "members", "remove", "general", "alice", "carol"]);
    assert_eq!(code(&empty), 1);
    assert!(stderr(&empty).contains("no member left"), "{}", stderr(&empty));
    assert_eq!(code(&ctl(&["space", "members", "add", "general", "bad name!"])), 1);
    assert_eq!(code(&ctl(&["space", "members", "add", "nowhere", "dave"])), 1);
    assert_eq!(code(&ctl(&["space", "members", "add", "general"])), 2, "no user given is a usage error");

    // --- info shows the placement
    let info = json(&ctl(&["space", "info", "general", "-o", "json"]));
    assert_eq!(info["members"], serde_json::json!(["alice", "carol"]));
    assert_eq!(info["last_seq"], 6);
    assert_eq!(info["placement"]["cluster_id"], info["cluster_id"]);
    assert!(info["placement"]["version"].as_u64().unwrap() >= 3, "member changes bump the version: {info}");
    assert!(!info["placement"]["reason"].is_null(), "{info}");
    assert!(info["placement"]["moving_to"].is_null());

    // --- delete: needs --yes, ends subscriptions, takes the name for good
    let unconfirmed = ctl(&["space", "delete", "general"]);
    assert_eq!(code(&unconfirmed), 2);
    assert!(stderr(&unconfirmed).contains("--yes"));
    assert_eq!(json(&ctl(&["space", "info", "general", "-o", "json"]))["last_seq"], 6, "still there");
    let deleted = json(&ctl(&["space", "delete", "general", "--yes", "-o", "json"]));
    assert_eq!((deleted["existed"].as_bool(), deleted["last_seq"].as_u64()), (Some(true), Some(6)));
    wait_for_error(&alice, "general", "deleted").await;
    wait_for_error(&carol, "general", "deleted").await;
    let again = json(&ctl(&["space", "delete", "general", "--yes", "-o", "json"]));
    assert_eq!(again["existed"], false, "deleting again succeeds");
    for node in [1, 2, 3] {
        let one = spacectl(&cluster.node(node).addr, &["space", "info", "general"]);
        assert_eq!(code(&one), 1, "node {node}: {}", stderr(&one));
    }
    assert_eq!(code(&ctl(&["post", "general", "anyone?", "--as", "alice"])), 1);
    assert_eq!(code(&ctl(&["history", "general", "--as", "alice"])), 1);
    let recreate = ctl(&["space", "create", "general", "--members", "alice"]);
    assert_eq!(code(&recreate), 1);
    assert!(stderr(&recreate).contains("deleted"), "{}", stderr(&recreate));
    assert_eq!(json(&ctl(&["space", "list", "-o", "json"])), serde_json::json!([]));
    assert_eq!(code(&ctl(&["space", "delete", "nowhere", "--yes"])), 1);

    // The tombstone survives a restart of every node. Each stops cleanly on
    // SIGTERM, promptly, though gateways hold follow streams open on it.
    for node in [1, 2, 3] {
        assert!(cluster.stop_node(node, Duration::from_secs(15)).await, "node {node} did not stop on SIGTERM");
        cluster.start_node(node);
    }
    cluster.wait_for_leader(WAIT).await;
    let recreate = ctl(&["space", "create", "general", "--members", "alice"]);
    assert_eq!(code(&recreate), 1, "{}", stderr(&recreate));
    assert_eq!(alice.seqs("general"), [1, 2, 3, 4, 5, 6]);
}
