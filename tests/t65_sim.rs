//! The in-process deterministic layer: seeded runs of Raft groups with the
//! space state machine, under a simulated clock, with crashes, partitions,
//! one-way cuts and lossy links. Each run is replayable from its seed with
//! `spaceraft sim --seed N`.

use std::collections::BTreeMap;

use spaceraft::sim::cli::run_many;
use spaceraft::sim::net::Transport;
use spaceraft::sim::run::{run_seed, SimOutcome, SimParams};
use spaceraft::sim::store::Sabotage;

const THREADS: usize = 2;

/// Violations by class over `seeds`, with the seeds that had each.
fn classes(first: u64, count: u64, params: &SimParams) -> BTreeMap<&'static str, Vec<u64>> {
    let summary = run_many(first, count, params, THREADS, |_: &SimOutcome| {});
    let mut classes: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    for failed in &summary.failed {
        for violation in &failed.violations {
            let seeds = classes.entry(violation.class).or_default();
            if seeds.last() != Some(&failed.seed) {
                seeds.push(failed.seed);
            }
        }
    }
    classes
}

#[test]
fn a_seed_replays_exactly() {
    let params = SimParams { secs: 10, ..SimParams::default() };
    let first = run_seed(1, &params);
    let second = run_seed(1, &params);
    if first.trace != second.trace {
        let diverged = first.trace.iter().zip(&second.trace).position(|(a, b)| a != b).unwrap_or(0);
        panic!(
            "seed 1 ran differently the second time, from trace line {diverged}:\n{:?}\n{:?}",
            first.trace.get(diverged),
            second.trace.get(diverged)
        );
    }
    assert_eq!(first.digest, second.digest);
    assert!(first.posts_acked > 0 && first.faults.values().sum::<u64>() > 0, "the run did something: {first:?}");
}

/// Seed 3000003288 crashes a follower whose durable snapshot covers a
/// term-2 entry while its durable log still ends with the term-1 suffix that
/// entry replaced. Its restart repairs the log (drops the replaced suffix,
/// purges up to the snapshot) instead of failing, and nothing is lost. (The
/// seed was found before the sim learned disk faults; it runs without them.)
#[test]
fn a_log_left_behind_its_snapshot_by_a_crash_is_repaired_on_restart() {
    let params = SimParams { transport: Transport::Sequential, disk_faults: false, ..SimParams::default() };
    let outcome = run_seed(3000003288, &params);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
    assert!(
        outcome.trace.iter().any(|line| line.contains("log behind its applied state repaired")),
        "the seed no longer reaches the case; find another with spaceraft sim"
    );
}

/// Seed 2923187578 (found by a random CI seed) has a leader that lost track
/// of a learner send it a snapshot ending at index 79 when the learner had
/// already accepted entries up to 80. Installing it moved openraft's log
/// cursor back, which its debug builds assert against: the learner's core
/// stopped and it stayed behind. The learner's log already holds the
/// snapshot's last log id, so it answers without installing it.
#[test]
fn a_snapshot_older_than_the_log_a_follower_holds_is_not_installed() {
    let params = SimParams { transport: Transport::Sequential, ..SimParams::default() };
    let outcome = run_seed(2923187578, &params);
    assert!(outcome.violations.is_empty(), "{:?}", outcome.violations);
}

#[test]
fn request_reply_replication_keeps_every_invariant() {
    // A fixed range, then a random one; the failure names the seeds.
    let params = SimParams { transport: Transport::Sequential, ..SimParams::default() };
    let fixed = classes(1, 200, &params);
    assert!(fixed.is_empty(), "violations (replay: spaceraft sim --seed N --transport sequential): {fixed:?}");
    let first = rand::random::<u32>() as u64;
    let random = classes(first, 100, &params);
    assert!(
        random.is_empty(),
        "violations in seeds {first}..{} (replay: spaceraft sim --seed N --transport sequential): {random:?}",
        first + 100
    );
}

#[test]
fn pipelined_replication_keeps_every_invariant() {
    // The node's transport. A follower openraft leaves behind (it waits
    // for a pipelined batch a broken stream never delivered) is caught by
    // the replication watchdog, as on the nodes (docs/reliability.md): no
    // violation of any class, `stalled-replica` included.
    let classes = classes(1, 200, &SimParams::default());
    assert!(classes.is_empty(), "violations (replay: spaceraft sim --seed N): {classes:?}");
}

#[test]
fn five_voters_keep_every_invariant() {
    let params = SimParams { nodes: 5, transport: Transport::Sequential, ..SimParams::default() };
    let classes = classes(1, 100, &params);
    assert!(
        classes.is_empty(),
        "violations (replay: spaceraft sim --seed N --nodes 5 --transport sequential): {classes:?}"
    );
}

#[test]
fn a_disk_that_acknowledges_before_it_syncs_loses_posts() {
    let params = SimParams {
        sabotage: Some(Sabotage::AckBeforeFsync),
        transport: Transport::Sequential,
        ..SimParams::default()
    };
    let classes = classes(1, 20, &params);
    assert!(classes.contains_key("lost"), "the checks missed lost posts: {classes:?}");
}

#[test]
fn a_restarted_leader_does_not_answer_stale_reads() {
    // openraft's leader restore let a restarted leader answer reads from
    // its last durable commit index; in seed 4, node 1 read seq 9 after
    // seq 10 was acknowledged. The node turns restore off. (Seeds from before
    // the sim learned disk faults; they run without them.)
    let restore = SimParams {
        leader_restore: true,
        transport: Transport::Sequential,
        disk_faults: false,
        ..SimParams::default()
    };
    let stale = run_seed(4, &restore);
    assert!(
        stale.violations.iter().any(|violation| violation.class == "stale-read"),
        "with leader restore, seed 4 should read stale: {:?}",
        stale.violations
    );
    let params = SimParams { transport: Transport::Sequential, disk_faults: false, ..SimParams::default() };
    for seed in [4, 6, 7, 12, 14] {
        let outcome = run_seed(seed, &params);
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
    }
}
