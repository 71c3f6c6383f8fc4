//! `spaceraft bench fanout` end to end and short: a gateway process with its
//! default client bounds, more subscribers than it admits from one address
//! (so the bench spreads them over several), every message delivered to
//! every subscriber, and the report as JSON.

mod common;

use std::process::Command;

#[test]
fn bench_fanout_delivers_every_message_to_more_subscribers_than_one_address_may_hold() {
    let output = Command::new(common::spaceraft_bin())
        .args(["bench", "fanout", "--clients", "300", "--rate", "20", "--secs", "2", "--gateway-only", "--json"])
        .args(["--base-port", "19400"])
        .env("SPACERAFT_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench fanout failed:\n{stderr}");
    assert!(stderr.contains("300 subscribers caught up"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &report["runs"][0];
    assert_eq!(run["path"], "gateway", "{report}");
    assert_eq!(run["clients"], 300, "{report}");
    let posted = run["posted"].as_u64().unwrap();
    assert!(posted >= 30, "two seconds at 20 posts/s: {report}");
    assert_eq!(run["missing"], 0, "{report}");
    assert_eq!(run["deliveries"].as_u64(), Some(posted * 300), "{report}");
}
