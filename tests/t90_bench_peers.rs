//! The comparison with etcd and NATS JetStream, end to end and short: the
//! script starts a secured `spaceraft dev` cluster, a three-member etcd and
//! a three-node NATS JetStream cluster on loopback, drives each with the
//! same generator, spreads spaces over one and several space clusters, and
//! writes the table between its markers and the plots. `.ci/run` installs
//! Debian's etcd-server, etcd-client and nats-server.

mod common;

use std::process::Command;

#[test]
fn bench_peers_writes_the_table_and_the_plots() {
    for tool in ["etcd", "etcdctl", "nats-server"] {
        let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).status().unwrap().success();
        assert!(found, "{tool} is not installed: install etcd-server, etcd-client and nats-server (.ci/run does)");
    }
    let dir = tempfile::tempdir().unwrap();
    let doc = dir.path().join("benchmarks.md");
    std::fs::write(&doc, "# Benchmarks\n\n<!-- bench-peers: begin -->\nstale\n<!-- bench-peers: end -->\n\n## After\n")
        .unwrap();
    let plots = dir.path().join("plots");
    let output = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-peers.sh"))
        .args(["1", "1"])
        .env("SPACERAFT_BIN", common::spaceraft_bin())
        .env("CLIENTS", "1 8")
        .env("SIZES", "256")
        .env("SPREAD", "4")
        .env("OUT", dir.path().join("out"))
        .env("BENCH_DOC", &doc)
        .env("PLOTS", &plots)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench-peers.sh failed:\n{stderr}");
    for spread in ["4 spaces on 4 space clusters", "4 spaces on 1 space clusters"] {
        assert!(stderr.contains(spread), "no {spread:?} in:\n{stderr}");
    }
    let table = std::fs::read_to_string(&doc).unwrap();
    assert!(
        !table.contains("stale") && table.contains("## After"),
        "only the part between the markers changes:\n{table}"
    );
    for row in [
        "| spaceraft | 1 space(s) | 1 | 256 B |",
        "| spaceraft | 1 space(s) | 8 | 256 B |",
        "| etcd | 1 space(s) | 1 | 256 B |",
        "| nats | 1 space(s) | 8 | 256 B |",
        "| spaceraft | 1 cluster, 4 spaces | 64 | 256 B |",
        "| spaceraft | 4 clusters, 4 spaces | 64 | 256 B |",
    ] {
        assert!(table.contains(row), "no row {row:?} in:\n{table}");
    }
    assert!(table.contains("no fsync per write"), "the table says NATS does not fsync each write:\n{table}");
    let results = std::fs::read_to_string(dir.path().join("out/results.jsonl")).unwrap();
    for line in results.lines() {
        let run: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(run["writes_ok"].as_u64().unwrap() > 0, "{line}");
        assert_eq!(run["writes_failed"].as_u64(), Some(0), "{line}");
    }
    for plot in ["peers-throughput.svg", "peers-latency-cdf.svg", "peers-clusters.svg"] {
        let svg = std::fs::read_to_string(plots.join(plot)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("polyline"), "{plot}: {svg}");
    }
}
