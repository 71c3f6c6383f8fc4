//! The JSON shape of every spacectl command, snapshotted: keys, nesting and
//! value types are an API that scripts rely on, so a change to any of them
//! shows up as a changed snapshot (`tests/snapshots/`), never silently.
//! Values that differ between runs (ids, indexes, times) are not part of a
//! shape; the types of fields that may be null are stated once below.

mod common;

use std::process::Output;
use std::time::Duration;

use common::ctl::spacectl;
use common::gateway::{Recorder, TEST_UPSTREAM};
use common::TestCluster;
use serde_json::{json, Value};

/// Fields whose shape is fixed here because their value is sometimes null,
/// or a map whose keys depend on the cluster's state.
const FIXED: &[(&str, &str)] = &[
    ("leader_id", "number|null"),
    ("error", "string|null"),
    ("last_seen_ms", "number|null"),
    ("last_switch_reason", "string|null"),
    ("moving_to", "number|null"),
    ("preferred_region", "string|null"),
    ("errors", "array<string>"),
    ("voters", "array<number>"),
    ("learners", "array<number>"),
    ("roles", "map<string, number>"),
    ("attrs", "map<string, string>"),
    ("reason", "string|object"),
];

/// Whether `value` is of a shape named in [`FIXED`].
fn fits(value: &Value, fixed: &str) -> bool {
    match value {
        Value::Null => fixed.ends_with("|null"),
        Value::String(_) => fixed.starts_with("string"),
        Value::Number(_) => fixed.starts_with("number"),
        Value::Object(map) if fixed.starts_with("map<string, string>") => map.values().all(Value::is_string),
        Value::Object(map) if fixed.starts_with("map<string, number>") => map.values().all(Value::is_number),
        Value::Object(_) => fixed.ends_with("object"),
        Value::Array(items) if fixed == "array<string>" => items.iter().all(Value::is_string),
        Value::Array(items) if fixed == "array<number>" => items.iter().all(Value::is_number),
        _ => false,
    }
}

/// The shape of a JSON value: objects keep their keys, arrays the shape of
/// their first element, scalars become their type.
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let fixed = FIXED.iter().find(|(name, _)| name == key).map(|(_, fixed)| {
                        assert!(fits(value, fixed), "{key} is {value}, not {fixed}");
                        json!(fixed)
                    });
                    (key.clone(), fixed.unwrap_or_else(|| shape(value)))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        Value::Bool(_) => json!("bool"),
        Value::Null => json!("null"),
    }
}

struct Ctl {
    endpoints: String,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Output {
        let args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
        spacectl(&self.endpoints, &args)
    }

    /// Runs a command in table form; returns what it printed.
    fn table(&self, args: &[&str]) -> String {
        let output = spacectl(&self.endpoints, args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    /// Runs a command that succeeds and prints one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let output = self.run(args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{args:?}: not one JSON document: {e}"))
    }

    /// Runs a command that prints one JSON document per line.
    fn json_lines(&self, args: &[&str]) -> Vec<Value> {
        let output = self.run(args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

/// Table output is for people: no Rust formatting leaks into it (ranges,
/// `Debug` of lists, strings or options, raw JSON) and a count of one takes
/// the singular ("1 members").
fn assert_reads_as_words(args: &[&str], table: &str) {
    for leak in ["..=", "[", "]", "{", "\"", "(s)", "Some(", "None"] {
        assert!(!table.contains(leak), "{args:?} prints {leak:?}:\n{table}");
    }
    // Table cells are apart by two spaces or more; words of a cell by one.
    for cell in table.lines().flat_map(|line| line.split("  ")) {
        let words: Vec<&str> = cell.split_whitespace().collect();
        for pair in words.windows(2) {
            let plural_noun = pair[1].len() > 2 && pair[1].ends_with('s') && pair[1].chars().all(char::is_alphabetic);
            assert!(!(pair[0] == "1" && plural_noun), "{args:?} prints \"1 {}\":\n{table}", pair[1]);
        }
    }
}

macro_rules! assert_shape {
    ($name:expr, $value:expr) => {
        insta::assert_snapshot!($name, serde_json::to_string_pretty(&shape(&$value)).unwrap())
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_command_keeps_its_json_shape() {
    // One space per cluster, so the second space gets a cluster to move to.
    let mut cluster = TestCluster::start_with("[placement]\nspaces_max = 1\n").await;
    cluster.start_gateways(TEST_UPSTREAM).await;
    let ctl = Ctl { endpoints: cluster.endpoints() };
    let urls: Vec<String> = cluster.gateways.iter().map(|g| g.ws_url()).collect();

    // --- spaces and messages
    let created = ctl.json(&["space", "create", "general", "--members", "alice,bob", "--attr", "org=acme"]);
    assert_shape!("space_create", created);
    let _alice = Recorder::start("alice", &["general"], vec![urls[0].clone()]);
    assert_shape!("post", ctl.json(&["post", "general", "hello", "--as", "alice", "--idempotency-key", "k1"]));
    let history = ctl.json_lines(&["history", "general", "--as", "alice"]);
    assert_eq!(history.len(), 1);
    assert_shape!("history_line", history[0]);
    assert_shape!("space_info", ctl.json(&["space", "info", "general"]));
    assert_shape!("space_list", ctl.json(&["space", "list"]));
    assert_shape!("space_members_add", ctl.json(&["space", "members", "add", "general", "carol"]));
    assert_shape!("space_members_remove", ctl.json(&["space", "members", "remove", "general", "carol"]));

    // --- clusters
    assert_shape!("cluster_status", ctl.json(&["cluster", "status"]));
    assert_shape!("cluster_status_replicas", ctl.json(&["cluster", "status", "--replicas"]));
    assert_shape!("cluster_list", ctl.json(&["cluster", "list"]));
    assert_shape!("cluster_info", ctl.json(&["cluster", "info", "1"]));
    assert_shape!("cluster_health", ctl.json(&["cluster", "health"]));
    assert_shape!("cluster_prefer", ctl.json(&["cluster", "prefer", "1", "us-east"]));
    assert_shape!("check_cluster", ctl.json(&["check", "cluster", "--format", "json"]));

    // --- gateways (once every one has reported)
    let gateways = common::wait_until(Duration::from_secs(60), "every gateway to report", async || {
        let gateways = ctl.json(&["gateway", "list"]);
        if gateways.as_array().unwrap().len() == 3 {
            Ok(gateways)
        } else {
            Err(gateways)
        }
    })
    .await;
    assert_shape!("gateway_list", gateways);

    // --- the same reads as tables: a header, and a row with what JSON said
    let tables: &[(&[&str], &[&str])] = &[
        (&["space", "info", "general"], &["name:", "members:", "placement:"]),
        (&["space", "list"], &["NAME", "CLUSTER", "general"]),
        (&["history", "general", "--as", "alice"], &["SEQ", "AUTHOR", "hello"]),
        (&["cluster", "status"], &["NODE", "HEALTH", "GROUPS", "DB SIZE", "healthy"]),
        (&["cluster", "status", "--replicas"], &["CLUSTER", "ROLE", "LAST SEEN", "leader"]),
        (&["cluster", "list"], &["VOTERS", "PREFERRED REGION"]),
        (&["cluster", "info", "1"], &["LAG", "LAST SEEN", "leader *"]),
        (&["cluster", "health"], &["HEALTHY", "yes"]),
        (&["gateway", "list"], &["GATEWAY", "UPSTREAM", "us-east@"]),
        (&["version"], &["spacectl"]),
    ];
    for (args, wanted) in tables {
        let table = ctl.table(args);
        for text in *wanted {
            assert!(table.contains(text), "{args:?} lacks {text:?}:\n{table}");
        }
        assert_reads_as_words(args, &table);
    }
    let info = ctl.table(&["space", "info", "general"]);
    assert!(info.contains("seqs:       1\n"), "{info}");
    assert!(info.contains(", no affinity to any cluster: the least loaded one\n"), "{info}");

    // --- members, leadership, draining
    let status = ctl.json(&["cluster", "status", "--replicas"]);
    let leader = status
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["cluster_id"] == 1 && row["role"] == "leader")
        .map(|row| row["node_id"].as_u64().unwrap())
        .unwrap();
    let other = (1..=3).find(|id| *id != leader).unwrap().to_string();
    assert_shape!("leader_transfer", ctl.json(&["leader", "transfer", "--cluster", "1", "--to", &other, "--wait"]));
    assert_shape!("node_drain", ctl.json(&["node", "drain", &other, "--wait"]));
    assert_shape!("node_recommission", ctl.json(&["node", "recommission", &other]));
    let third = (1..=3).rev().find(|id| id.to_string() != other).unwrap().to_string();
    assert_shape!("member_remove", ctl.json(&["member", "remove", &third, "--cluster", "1", "--yes"]));
    assert_shape!("member_add", ctl.json(&["member", "add", &third, "--cluster", "1", "--learner"]));
    assert_shape!("member_promote", ctl.json(&["member", "promote", &third, "--cluster", "1"]));
    let writes_as_tables: &[(&[&str], &str)] = &[
        (&["node", "recommission", &other], &format!("node {other} back in service")),
        (&["cluster", "prefer", "1", "us-east"], "space cluster 1 now prefers its leader in region us-east"),
        (&["cluster", "prefer", "1", ""], "space cluster 1 now has no preferred leader region"),
        (&["space", "create", "team", "--members", "alice"], "created space team with 1 member"),
    ];
    for (args, wanted) in writes_as_tables {
        let table = ctl.table(args);
        assert!(table.contains(wanted), "{args:?} lacks {wanted:?}:\n{table}");
        assert_reads_as_words(args, &table);
    }

    // --- snapshots, moves, deletion, version
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("one.snap");
    assert_shape!("snapshot_save", ctl.json(&["snapshot", "save", "--cluster", "1", file.to_str().unwrap()]));
    assert_shape!("snapshot_status", ctl.json(&["snapshot", "status", file.to_str().unwrap()]));
    let snapshot_table = ctl.table(&["snapshot", "status", file.to_str().unwrap()]);
    assert_reads_as_words(&["snapshot", "status"], &snapshot_table);
    ctl.json(&["space", "create", "elsewhere", "--members", "dave", "--attr", "org=other"]);
    let target = ctl.json(&["space", "info", "elsewhere"])["cluster_id"].as_u64().unwrap();
    assert_ne!(target, 1, "a full cluster makes another");
    assert_shape!("space_move", ctl.json(&["space", "move", "general", "--to", &target.to_string()]));
    assert_shape!("space_delete", ctl.json(&["space", "delete", "general", "--yes"]));
    assert_shape!("version", ctl.json(&["version"]));
}
