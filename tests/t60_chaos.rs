//! The short chaos runs of every commit: `spaceraft chaos` as a user runs
//! it, real processes per region behind the fault proxy. One with a fixed
//! seed (at least two region kills and a partition), one with a fixed seed
//! and disk faults (wiped and full disks), one with a random seed that is
//! printed for replay. Each must end with no anomaly and no
//! liveness failure; the report files must be there.

use std::process::Command;
use std::sync::Mutex;

/// The runs take the machine's cores; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn chaos(args: &[&str], out: &std::path::Path) -> (bool, String, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_spaceraft"))
        .arg("chaos")
        .args(args)
        .arg("--out")
        .arg(out)
        .env("SPACERAFT_LOG", "warn")
        .output()
        .expect("run spaceraft chaos");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let summary = std::fs::read(out.join("summary.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(serde_json::Value::Null);
    (output.status.success(), format!("{stdout}\n{stderr}"), summary)
}

fn keep_on_failure(out: &std::path::Path) -> String {
    let keep = std::env::temp_dir().join(format!("spaceraft-failed-chaos-{}", std::process::id()));
    let _ = Command::new("cp").arg("-r").arg(out).arg(&keep).status();
    keep.display().to_string()
}

/// A fixed-seed run that must pass with over 100 acknowledged posts; answers
/// how many faults of each kind it injected.
fn fixed_seed_run(args: &[&str]) -> impl Fn(&str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (passed, output, summary) = chaos(args, &out);
    let kept = if passed { String::new() } else { keep_on_failure(&out) };
    assert!(passed, "chaos run failed (kept in {kept}):\n{output}");
    assert_eq!(summary["valid"], true);
    assert!(summary["stats"]["posts_ok"].as_u64().unwrap() > 100, "{summary}");
    for file in ["history.jsonl", "report.md", "timeline.svg"] {
        assert!(out.join(file).exists(), "{file} written");
    }
    let faults: Vec<String> = summary["faults"]
        .as_array()
        .expect("faults in summary.json")
        .iter()
        .map(|fault| fault["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    move |kind: &str| faults.iter().filter(|fault| *fault == kind).count()
}

#[test]
fn a_fixed_seed_run_with_region_kills_and_a_partition_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args = [
        "--secs",
        "75",
        "--seed",
        "20261126",
        "--nemesis",
        "kill-region,partition-region,kill-leader",
        "--base-port",
        "17100",
    ];
    let count = fixed_seed_run(&args);
    assert!(count("kill-region") >= 2 && count("partition-region") >= 1, "region kills and a partition happened");
}

/// Disk faults: a region's node loses its whole data directory and comes
/// back empty (it must rejoin without voting first), and a node's disk fills
/// to the last byte and is freed (it must stop, then recover by itself).
/// Each node's data directory is a tmpfs of its own, which needs root, as
/// the test machines run.
#[test]
fn a_fixed_seed_run_with_wiped_and_full_disks_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args = [
        "--secs",
        "70",
        "--seed",
        "20261207",
        "--nemesis",
        "wipe-disk,disk-full,kill-region",
        "--disk-mib",
        "256",
        "--base-port",
        "17400",
    ];
    let count = fixed_seed_run(&args);
    assert!(count("wipe-disk") >= 2 && count("disk-full") >= 2, "wipes and full disks happened");
}

#[test]
fn a_random_seed_run_with_every_nemesis_passes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed: u64 = rand::random::<u32>() as u64;
    println!("random chaos seed {seed} (replay: spaceraft chaos --seed {seed} --secs 45)");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let seed_text = seed.to_string();
    let args = ["--secs", "45", "--seed", &seed_text, "--base-port", "17200"];
    let (passed, output, summary) = chaos(&args, &out);
    let kept = if passed { String::new() } else { keep_on_failure(&out) };
    assert!(passed, "chaos run with seed {seed} failed (kept in {kept}):\n{output}");
    assert_eq!(summary["seed"], seed);
}
