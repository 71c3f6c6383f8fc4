//! A node refuses a data directory that is not its own, foreign or corrupt,
//! with a clear error and a non-zero exit, and leaves it untouched.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spaceraft::pb;

/// Every file under `dir` with its bytes.
fn snapshot_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn run_node(config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(common::spaceraft_bin())
        .args(["node", "--config"])
        .arg(config)
        .args(extra)
        .output()
        .expect("run spaceraft node")
}

/// A single-node cluster config in `dir`.
fn single_node(dir: &Path) -> (PathBuf, PathBuf, String) {
    let addr = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    let data_dir = dir.join("node-1");
    let config = dir.join("node-1.toml");
    common::write_config(&config, 1, &addr, &data_dir, &[(1, addr.clone())], "");
    (config, data_dir, addr)
}

#[test]
fn a_foreign_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data_dir, _) = single_node(dir.path());
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("thesis.txt"), b"years of work").unwrap();
    let before = snapshot_tree(&data_dir);
    let output = run_node(&config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a spaceraft data directory"), "{stderr}");
    assert_eq!(snapshot_tree(&data_dir), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_or_a_corrupt_directory_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (config, data_dir, addr) = single_node(dir.path());

    // --- phase: a real node writes real data, then stops cleanly
    let mut node = Command::new(common::spaceraft_bin()).args(["node", "--config"]).arg(&config).spawn().unwrap();
    let channel = common::connect(&addr).await;
    let mut client = pb::client_client::ClientClient::new(channel);
    common::wait_until(Duration::from_secs(20), "the single node to lead and create a space", async || {
        let request =
            pb::CreateSpaceRequest { name: "general".into(), members: vec!["alice".into()], attrs: Default::default() };
        client.create_space(request).await.map(|_| ())
    })
    .await;
    client
        .post(pb::PostRequest {
            space: "general".into(),
            author: "alice".into(),
            body: "kept".into(),
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    Command::new("kill").arg("-TERM").arg(node.id().to_string()).status().unwrap();
    assert!(node.wait().unwrap().success(), "a node stops cleanly on SIGTERM");

    // --- phase: the directory belongs to node 1, not node 2
    let before = snapshot_tree(&data_dir);
    let as_node_2 = format!("2=us-east@{addr}");
    let output = run_node(&config, &["--node-id", "2", "--peer", &as_node_2]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to node 1"), "{stderr}");
    assert_eq!(snapshot_tree(&data_dir), before);

    // --- phase: a corrupt identity file
    let identity = data_dir.join("node.json");
    let good_identity = std::fs::read(&identity).unwrap();
    std::fs::write(&identity, b"{\"format\": 7").unwrap();
    let before = snapshot_tree(&data_dir);
    let output = run_node(&config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreadable identity file"), "{stderr}");
    assert_eq!(snapshot_tree(&data_dir), before);
    std::fs::write(&identity, good_identity).unwrap();

    // --- phase: a corrupt state machine store
    let sled_conf = data_dir.join("state").join("conf");
    let good_conf = std::fs::read(&sled_conf).unwrap();
    std::fs::write(&sled_conf, b"\x00garbage garbage garbage\xff").unwrap();
    let before = snapshot_tree(&data_dir);
    let output = run_node(&config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open the state machine store"), "{stderr}");
    assert_eq!(snapshot_tree(&data_dir), before);
    std::fs::write(&sled_conf, good_conf).unwrap();

    // --- phase: repaired, the node starts with its data
    let mut node = Command::new(common::spaceraft_bin()).args(["node", "--config"]).arg(&config).spawn().unwrap();
    let channel = common::connect(&addr).await;
    let mut client = pb::client_client::ClientClient::new(channel);
    let messages = common::wait_until(Duration::from_secs(20), "the restarted node to serve history", async || {
        let request = pb::HistoryRequest {
            space: "general".into(),
            user: "alice".into(),
            from_seq: 1,
            limit: 10,
            linearizable: true,
        };
        client.history(request).await.map(|history| history.into_inner().messages)
    })
    .await;
    assert_eq!(messages.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(), ["kept"]);
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn a_bad_config_value_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, _) = single_node(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text = text.replace("heartbeat_interval_ms = 100", "heartbeat_interval_ms = \"soon\"");
    std::fs::write(&config, text).unwrap();
    let output = run_node(&config, &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("raft.heartbeat_interval_ms"), "{stderr}");

    let output = Command::new(common::spaceraft_bin())
        .args(["node", "--config"])
        .arg(&config)
        .env("SPACERAFT_RAFT__HEARTBEAT_INTERVAL_MS", "100")
        .env("SPACERAFT_LIMITS__BODY_BYTES_MAX", "lots")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.to_lowercase().contains("limits.body_bytes_max") && stderr.contains("environment"), "{stderr}");
}

/// The `SPACERAFT_*` variables documented for spacectl, the gateway and the
/// log, as one shell holds them while it also runs nodes.
const TOOL_ENV: &[(&str, &str)] = &[
    ("SPACERAFT_USER", "alice"),
    ("SPACERAFT_YES", "1"),
    ("SPACERAFT_OUTPUT", "json"),
    ("SPACERAFT_DIAL_TIMEOUT", "1m30s"),
    ("SPACERAFT_COMMAND_TIMEOUT", "30s"),
    ("SPACERAFT_GATEWAY_CLIENTS__SEND_QUEUE_LEN_MAX", "256"),
    ("SPACERAFT_LOG", "info,openraft=warn,fjall=warn,lsm_tree=warn"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_with_every_documented_variable_set_and_each_works_where_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _, addr) = single_node(dir.path());
    let log_path = dir.path().join("node-1.log");
    let log = std::fs::File::create(&log_path).unwrap();

    // --- phase: the node finds its config through SPACERAFT_CONFIG, reads
    // its keys from SPACERAFT_<KEY>, and leaves every other variable alone
    let mut node = Command::new(common::spaceraft_bin())
        .arg("node")
        .env("SPACERAFT_CONFIG", &config)
        .env("SPACERAFT_ENDPOINTS", &addr)
        .envs(TOOL_ENV.iter().copied())
        .env("SPACERAFT_SPACE__RETAIN_MESSAGES_MAX", "2")
        .env("SPACERAFT_NODEID", "7")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();

    // --- phase: spacectl with the same environment: endpoints, output,
    // timeouts, user and yes all come from it
    let spacectl = |args: &[&str]| {
        let output = Command::new(common::spacectl_bin())
            .env("SPACERAFT_ENDPOINTS", &addr)
            .envs(TOOL_ENV.iter().copied())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "spacectl {args:?}: {stderr}");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON, as SPACERAFT_OUTPUT says")
    };
    let created = spacectl(&["space", "create", "general", "--members", "alice,bob"]);
    assert_eq!(created["name"], "general");
    for (body, seq) in [("one", 1), ("two", 2), ("three", 3)] {
        let posted = spacectl(&["post", "general", body]);
        assert_eq!(posted["seq"], seq, "posted as SPACERAFT_USER: {posted}");
    }
    let info = spacectl(&["space", "info", "general"]);
    assert_eq!(info["first_seq"], 2, "SPACERAFT_SPACE__RETAIN_MESSAGES_MAX keeps 2 messages: {info}");
    let deleted = spacectl(&["space", "delete", "general"]);
    assert_eq!(deleted["existed"], true, "deleted without --yes, as SPACERAFT_YES=1 says: {deleted}");

    assert!(node.try_wait().unwrap().is_none(), "the node still runs");
    let _ = node.kill();
    let _ = node.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains("unknown field"), "{log}");
    assert!(
        log.contains("SPACERAFT_NODEID") && log.contains("not a node config key"),
        "a misspelt key is warned about: {log}"
    );
    for (name, _) in TOOL_ENV {
        assert!(!log.contains(name), "{name} is not a node's: {log}");
    }
}

/// The flags `spaceraft SUBCOMMAND --help` lists without a description.
fn flags_without_help(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut bare = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        // `--flag <VALUE>  description`, or the description on the next,
        // more indented lines (clap's long help).
        let has_text_after = trimmed.split("  ").skip(1).any(|part| !part.trim().is_empty());
        let indent = line.len() - trimmed.len();
        let has_text_below = lines.get(index + 1).is_some_and(|next| {
            let next_trimmed = next.trim_start();
            !next_trimmed.is_empty() && !next_trimmed.starts_with('-') && next.len() - next_trimmed.len() > indent
        });
        if !has_text_after && !has_text_below {
            bare.push(trimmed.to_string());
        }
    }
    bare
}

#[test]
fn every_flag_of_spaceraft_node_has_help_text() {
    for flag in ["--help", "-h"] {
        let output = Command::new(common::spaceraft_bin()).args(["node", flag]).output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8_lossy(&output.stdout);
        for wanted in ["--node-id", "--region", "--data-dir", "--listen", "--peer", "--bootstrap", "--config"] {
            assert!(help.contains(wanted), "{wanted} in:\n{help}");
        }
        let bare = flags_without_help(&help);
        assert!(bare.is_empty(), "flags without help in `spaceraft node {flag}`: {bare:?}\n{help}");
    }
}
