//! Where a post's time goes: one latency histogram per stage of the write
//! path, kept by every process and read (and reset) with the admin
//! `Stages` RPC, which `spaceraft bench post --breakdown` prints.
//!
//! Each stage is recorded where it ends, on the node where it runs, so a
//! leader holds the stages of its posts and a follower those of the appends
//! it takes. Recording costs an uncontended lock and a histogram bump.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// A stage of the write path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The Post handler, from the request's arrival to its answer.
    PostHandler,
    /// From the Post's arrival to its place in the proposer's queue:
    /// authorization, validation, placement and routing.
    PostRoute,
    /// In the proposer's queue, until its batch is proposed.
    ProposeQueue,
    /// A batch's Raft write, from proposing it to its applied result: log
    /// write, replication, commit notice and apply.
    RaftWrite,
    /// From a committed post's result to its answer leaving the handler.
    PostReply,
    /// A log append, from openraft's call to its fsync's completion.
    LogAppend,
    /// One fsync of the log journal (shared by every request it covers).
    LogFsync,
    /// An AppendEntries on the leader, from its sending to its reply.
    Replicate,
    /// An AppendEntries on a follower, from its arrival to its reply.
    FollowerAppend,
    /// Applying a run of committed entries to the state machine.
    Apply,
    /// Posts per proposed entry (a count, not a time).
    BatchPosts,
    /// Log writes per fsync (a count, not a time).
    FsyncWrites,
}

impl Stage {
    pub const ALL: [Stage; 12] = [
        Stage::PostHandler,
        Stage::PostRoute,
        Stage::ProposeQueue,
        Stage::RaftWrite,
        Stage::PostReply,
        Stage::LogAppend,
        Stage::LogFsync,
        Stage::Replicate,
        Stage::FollowerAppend,
        Stage::Apply,
        Stage::BatchPosts,
        Stage::FsyncWrites,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::PostHandler => "post.handler",
            Stage::PostRoute => "post.route",
            Stage::ProposeQueue => "propose.queue",
            Stage::RaftWrite => "raft.write",
            Stage::PostReply => "post.reply",
            Stage::LogAppend => "log.append",
            Stage::LogFsync => "log.fsync",
            Stage::Replicate => "replicate",
            Stage::FollowerAppend => "follower.append",
            Stage::Apply => "apply",
            Stage::BatchPosts => "batch.posts",
            Stage::FsyncWrites => "fsync.writes",
        }
    }

    /// Whether the stage counts things rather than microseconds.
    pub fn is_count(self) -> bool {
        matches!(self, Stage::BatchPosts | Stage::FsyncWrites)
    }

    fn slot(self) -> usize {
        Stage::ALL.iter().position(|stage| *stage == self).expect("every stage is listed")
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

static HISTOGRAMS: LazyLock<Vec<Mutex<Histogram<u64>>>> =
    LazyLock::new(|| Stage::ALL.iter().map(|_| Mutex::new(histogram())).collect());

/// Records a stage that took `took`.
pub fn record(stage: Stage, took: Duration) {
    count(stage, took.as_micros().min(u64::MAX as u128) as u64);
}

/// Records a stage that began at `since` and ends now.
pub fn since(stage: Stage, since: Instant) {
    record(stage, since.elapsed());
}

/// Records a stage's value in its own unit (microseconds or a count).
pub fn count(stage: Stage, value: u64) {
    if let Ok(mut histogram) = HISTOGRAMS[stage.slot()].lock() {
        histogram.saturating_record(value.max(1));
    }
}

/// A stage's figures.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StageFigures {
    pub stage: String,
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Counts rather than microseconds.
    pub is_count: bool,
}

impl From<StageFigures> for crate::pb::StageFigures {
    fn from(f: StageFigures) -> Self {
        crate::pb::StageFigures {
            stage: f.stage,
            count: f.count,
            mean: f.mean,
            p50: f.p50,
            p99: f.p99,
            max: f.max,
            is_count: f.is_count,
        }
    }
}

impl From<crate::pb::StageFigures> for StageFigures {
    fn from(f: crate::pb::StageFigures) -> Self {
        StageFigures {
            stage: f.stage,
            count: f.count,
            mean: f.mean,
            p50: f.p50,
            p99: f.p99,
            max: f.max,
            is_count: f.is_count,
        }
    }
}

/// Every stage's figures since the last reset; `reset` starts them over.
pub fn figures(reset: bool) -> Vec<StageFigures> {
    Stage::ALL
        .iter()
        .map(|stage| {
            let mut histogram = HISTOGRAMS[stage.slot()].lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let figures = StageFigures {
                stage: stage.name().to_string(),
                count: histogram.len(),
                mean: histogram.mean(),
                p50: histogram.value_at_quantile(0.5),
                p99: histogram.value_at_quantile(0.99),
                max: histogram.max(),
                is_count: stage.is_count(),
            };
            if reset {
                histogram.reset();
            }
            figures
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_record_and_reset() {
        record(Stage::PostReply, Duration::from_micros(120));
        record(Stage::PostReply, Duration::from_micros(80));
        count(Stage::BatchPosts, 7);
        let figures = figures(true);
        let reply = figures.iter().find(|f| f.stage == "post.reply").unwrap();
        assert!(reply.count >= 2);
        assert!(reply.max >= 120 && !reply.is_count);
        let batch = figures.iter().find(|f| f.stage == "batch.posts").unwrap();
        assert!(batch.is_count && batch.max >= 7);
        // Other tests of this binary may record meanwhile; reset leaves
        // fewer than what was there.
        let after = super::figures(false);
        assert!(after.iter().find(|f| f.stage == "post.reply").unwrap().count < reply.count);
    }
}
