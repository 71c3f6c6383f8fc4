//! The nemesis: a seeded, replayable schedule of faults. The schedule is
//! plain data from (seed, kinds, duration, regions), so the same seed gives
//! the same faults at the same times; the run applies it to the cluster.
//!
//! Faults do not overlap, and each hits at most one region (or one node, or
//! everything at once for `kill-all`), so a quorum of regions always comes
//! back: the invariants promise nothing when a quorum is lost for good.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL every process of a region (nodes and gateway), restart later.
    KillRegion,
    /// Cut a region off from the others (the proxy), heal later.
    PartitionRegion,
    /// SIGKILL the leader's node, restart later.
    KillLeader,
    /// SIGSTOP a node, SIGCONT later.
    Pause,
    /// SIGKILL every node at once, restart them all.
    KillAll,
    /// SIGKILL a region's gateway, restart later.
    KillGateway,
    /// SIGKILL a region's nodes, delete everything in their data
    /// directories, restart them later on the empty directories.
    WipeDisk,
    /// Fill a node's disk (a tmpfs of its own) to the last byte, free it
    /// later.
    DiskFull,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRegion => "kill-region",
            FaultKind::PartitionRegion => "partition-region",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::KillAll => "kill-all",
            FaultKind::KillGateway => "kill-gateway",
            FaultKind::WipeDisk => "wipe-disk",
            FaultKind::DiskFull => "disk-full",
        }
    }
}

pub const ALL_FAULTS: [FaultKind; 8] = [
    FaultKind::KillRegion,
    FaultKind::PartitionRegion,
    FaultKind::KillLeader,
    FaultKind::Pause,
    FaultKind::KillAll,
    FaultKind::KillGateway,
    FaultKind::WipeDisk,
    FaultKind::DiskFull,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFault {
    pub kind: FaultKind,
    /// The region (1-based) a region fault hits, or the index of the node to
    /// pause or whose disk fills among the nodes; unused by `kill-leader` and
    /// `kill-all`.
    pub target: u8,
    pub at_ms: u64,
    pub duration_ms: u64,
}

/// Quiet time before the first fault, so the workload is running.
pub const WARMUP_MS: u64 = 5_000;
/// Quiet time after the last heal, so liveness can be judged.
pub const COOLDOWN_MS: u64 = 8_000;

/// The schedule of a run: faults of `kinds`, taken in turns in a seeded
/// order (so every kind listed appears, evenly; a kind listed twice takes
/// two turns in each round), each lasting 3–8 s (2 s for
/// `kill-all`) with 2–5 s of calm between, within `run_ms`.
pub fn schedule(seed: u64, kinds: &[FaultKind], regions: u8, nodes: u8, run_ms: u64) -> Vec<PlannedFault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut order: Vec<FaultKind> = kinds.to_vec();
    order.shuffle(&mut rng);
    let mut faults = Vec::new();
    let mut at_ms = WARMUP_MS;
    let end_ms = run_ms.saturating_sub(COOLDOWN_MS);
    let mut turn = 0;
    while !order.is_empty() {
        let kind = order[turn % order.len()];
        turn += 1;
        let duration_ms = if kind == FaultKind::KillAll { 2_000 } else { rng.random_range(3_000..=8_000) };
        if at_ms + duration_ms > end_ms {
            break;
        }
        let target = match kind {
            FaultKind::Pause | FaultKind::DiskFull => rng.random_range(1..=nodes.max(1)),
            _ => rng.random_range(1..=regions.max(1)),
        };
        faults.push(PlannedFault { kind, target, at_ms, duration_ms });
        at_ms += duration_ms + rng.random_range(2_000..=5_000);
    }
    faults
}

/// Parses `kill-region,partition-region,…`.
pub fn parse_kinds(text: &str) -> Result<Vec<FaultKind>, String> {
    text.split(',')
        .filter(|name| !name.trim().is_empty())
        .map(|name| {
            ALL_FAULTS.iter().copied().find(|kind| kind.name() == name.trim()).ok_or_else(|| {
                format!("unknown nemesis {name:?} (one of: {})", ALL_FAULTS.map(|k| k.name()).join(", "))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = ALL_FAULTS.to_vec();
        assert_eq!(schedule(7, &kinds, 3, 3, 120_000), schedule(7, &kinds, 3, 3, 120_000));
        assert_ne!(schedule(7, &kinds, 3, 3, 120_000), schedule(8, &kinds, 3, 3, 120_000));
    }

    #[test]
    fn faults_do_not_overlap_and_fit_the_run() {
        let faults = schedule(3, &ALL_FAULTS, 5, 5, 300_000);
        assert!(faults.len() >= 20, "{}", faults.len());
        for pair in faults.windows(2) {
            assert!(pair[0].at_ms + pair[0].duration_ms < pair[1].at_ms);
        }
        let last = faults.last().unwrap();
        assert!(last.at_ms + last.duration_ms <= 300_000 - COOLDOWN_MS);
        assert!(faults.iter().all(|fault| (1..=5).contains(&fault.target)));
    }

    #[test]
    fn every_kind_listed_takes_its_turn() {
        let kinds = [FaultKind::KillRegion, FaultKind::PartitionRegion];
        let faults = schedule(11, &kinds, 3, 3, 100_000);
        let kills = faults.iter().filter(|f| f.kind == FaultKind::KillRegion).count();
        let partitions = faults.iter().filter(|f| f.kind == FaultKind::PartitionRegion).count();
        assert!(kills >= 2 && partitions >= 2, "{faults:?}");
    }

    #[test]
    fn kinds_parse_by_name() {
        assert_eq!(parse_kinds("kill-region,pause").unwrap(), vec![FaultKind::KillRegion, FaultKind::Pause]);
        assert!(parse_kinds("kill-region,flood").unwrap_err().contains("flood"));
    }
}
