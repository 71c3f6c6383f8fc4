//! The invariants of a simulated run.
//!
//! During the run the [`Ledger`] sees every apply on every replica,
//! including the re-applies after restarts: two different entries applied
//! at one log index anywhere, ever, is a violation (state machine safety).
//! After the run, [`check_final`] compares what clients were told with what
//! the replicas hold.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use serde::Serialize;

use super::{Entry, LogId};
use crate::space::record::{self, MessageBlock};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Simulated milliseconds since the start of the run.
    pub at_ms: u64,
    pub class: &'static str,
    pub detail: String,
}

/// What every replica applied at each log index.
pub struct Ledger {
    start: tokio::time::Instant,
    state: Mutex<LedgerState>,
}

#[derive(Default)]
struct LedgerState {
    by_index: BTreeMap<u64, (LogId, u64)>,
    violations: Vec<Violation>,
    applies: u64,
    snapshot_installs: u64,
}

fn digest<T: Serialize>(value: &T) -> u64 {
    let bytes = postcard::to_stdvec(value).expect("entries serialize");
    let mut hasher = std::hash::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

impl Ledger {
    pub fn new(start: tokio::time::Instant) -> Ledger {
        Ledger { start, state: Mutex::new(LedgerState::default()) }
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().expect("ledger lock")
    }

    pub fn violation(&self, class: &'static str, detail: String) {
        let at_ms = self.elapsed_ms();
        self.lock().violations.push(Violation { at_ms, class, detail });
    }

    /// Records that `node` applied `entry`; a different entry already
    /// applied at its index anywhere is a violation.
    pub fn applied(&self, node: u64, entry: &Entry) {
        let entry_digest = digest(&entry.payload);
        let index = entry.log_id.index;
        let conflict = {
            let mut state = self.lock();
            state.applies += 1;
            match state.by_index.get(&index) {
                Some((log_id, seen_digest)) if *log_id != entry.log_id || *seen_digest != entry_digest => {
                    Some(format!("node {node} applied {} at index {index}, where {log_id} was applied", entry.log_id))
                }
                Some(_) => None,
                None => {
                    state.by_index.insert(index, (entry.log_id, entry_digest));
                    None
                }
            }
        };
        if let Some(detail) = conflict {
            self.violation("divergent-apply", detail);
        }
    }

    /// Records that `node` installed a snapshot ending at `last`; its log id
    /// must be the one applied at that index.
    pub fn snapshot_installed(&self, node: u64, last: Option<LogId>) {
        let conflict = {
            let mut state = self.lock();
            state.snapshot_installs += 1;
            let applied = last.and_then(|last| state.by_index.get(&last.index).map(|(log_id, _)| *log_id));
            match (last, applied) {
                (Some(last), Some(applied)) if applied != last => {
                    Some(format!("node {node} installed a snapshot ending at {last}, where {applied} was applied"))
                }
                _ => None,
            }
        };
        if let Some(detail) = conflict {
            self.violation("divergent-apply", detail);
        }
    }

    /// The log id applied at `index`, if any replica applied one.
    pub fn applied_at(&self, index: u64) -> Option<LogId> {
        self.lock().by_index.get(&index).map(|(log_id, _)| *log_id)
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    /// (applies, snapshot installs)
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.applies, state.snapshot_installs)
    }
}

/// A post the workload made: its key and, once acknowledged, where it went.
#[derive(Debug, Clone)]
pub struct PostRecord {
    pub space: String,
    pub key: String,
    /// The seq and log id of the acknowledgement, if one came.
    pub acked: Option<(u64, LogId)>,
}

/// A linearizable read: it started after `acked_before` was acknowledged
/// and returned `seen`.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub at_ms: u64,
    pub node: u64,
    pub space: String,
    pub acked_before: u64,
    pub seen: u64,
}

/// One replica's final state.
pub struct ReplicaFinal {
    pub node: u64,
    pub last_applied: Option<LogId>,
    pub kv: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `(index, log id)` of every entry in its log.
    pub log: Vec<(u64, LogId)>,
    pub committed: Option<LogId>,
}

/// A replica's state as its reader sees it: every message under its own
/// key. How messages are grouped into stored blocks depends on how entries
/// were batched into applies, which differs between replicas.
fn logical(kv: &BTreeMap<Vec<u8>, Vec<u8>>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut flat = BTreeMap::new();
    for (key, value) in kv {
        if key.first() == Some(&record::MESSAGE_PREFIX) && key.len() > 9 {
            let space = String::from_utf8_lossy(&key[1..key.len() - 9]).into_owned();
            let block: MessageBlock = record::decode(value).expect("blocks are written by the state machine");
            for (offset, message) in block.messages.iter().enumerate() {
                flat.insert(record::message_key(&space, block.first_seq + offset as u64), record::encode(message));
            }
        } else {
            flat.insert(key.clone(), value.clone());
        }
    }
    flat
}

/// The messages of `space` in a replica's state: `(seq, idempotency key)`.
fn messages_of(kv: &BTreeMap<Vec<u8>, Vec<u8>>, space: &str) -> Vec<(u64, String)> {
    let start = record::message_key(space, 0);
    let end = record::message_key(space, u64::MAX);
    let mut messages = Vec::new();
    for (_, bytes) in kv.range(start..=end) {
        let block: MessageBlock = record::decode(bytes).expect("blocks are written by the state machine");
        for (offset, message) in block.messages.into_iter().enumerate() {
            messages.push((block.first_seq + offset as u64, message.idempotency_key));
        }
    }
    messages
}

/// Checks the end of a healed, converged run. `now_ms` stamps what it finds.
pub fn check_final(
    now_ms: u64,
    spaces: &[&str],
    posts: &[PostRecord],
    reads: &[ReadRecord],
    replicas: &[ReplicaFinal],
    ledger: &Ledger,
) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut report = |class: &'static str, detail: String| found.push(Violation { at_ms: now_ms, class, detail });

    // Replicas that applied the same log hold the same state (a replica
    // left behind is reported by the run), and every committed log entry
    // still in a log is the one applied at its index.
    // The first of the replicas that applied the most.
    let reference = replicas.iter().rev().max_by_key(|replica| replica.last_applied);
    if let Some(first) = reference {
        let first_state = logical(&first.kv);
        for replica in replicas.iter().filter(|replica| replica.node != first.node) {
            if replica.last_applied != first.last_applied {
                continue;
            }
            let state = logical(&replica.kv);
            if state != first_state {
                let differing = first_state
                    .keys()
                    .chain(state.keys())
                    .find(|key| first_state.get(*key) != state.get(*key))
                    .map(|key| String::from_utf8_lossy(key).into_owned());
                report(
                    "divergent-state",
                    format!(
                        "node {} (applied {:?}) and node {} (applied {:?}) hold different states (first differing key {differing:?})",
                        first.node, first.last_applied.map(|id| id.to_string()), replica.node, replica.last_applied.map(|id| id.to_string())
                    ),
                );
            }
        }
    }
    for replica in replicas {
        let committed = replica.committed.map(|id| id.index);
        for (index, log_id) in &replica.log {
            if committed.is_none_or(|committed| *index > committed) {
                continue;
            }
            if let Some(applied) = ledger.applied_at(*index) {
                if applied != *log_id {
                    report(
                        "divergent-log",
                        format!(
                            "node {} holds {log_id} at committed index {index}; {applied} was applied",
                            replica.node
                        ),
                    );
                }
            }
        }
    }

    // Every acknowledged post is committed where it was acknowledged, and
    // is in the final history exactly once, at its acknowledged seq.
    let Some(reference) = reference else { return found };
    let attempted: BTreeSet<(&str, &str)> = posts.iter().map(|post| (post.space.as_str(), post.key.as_str())).collect();
    for space in spaces {
        let messages = messages_of(&reference.kv, space);
        let mut seq_of_key: BTreeMap<&str, u64> = BTreeMap::new();
        for (expected_seq, (seq, key)) in (1..).zip(&messages) {
            if *seq != expected_seq {
                report("gap", format!("space {space}: seq {seq} follows seq {}", expected_seq - 1));
            }
            if !attempted.contains(&(space, key.as_str())) {
                report("unexpected", format!("space {space}: seq {seq} holds key {key:?}, which no client posted"));
            }
            match seq_of_key.get(key.as_str()) {
                Some(first) => {
                    report("duplicated", format!("space {space}: key {key:?} committed at seq {first} and seq {seq}"))
                }
                None => {
                    seq_of_key.insert(key, *seq);
                }
            }
        }
        for post in posts.iter().filter(|post| post.space == *space) {
            let Some((acked_seq, log_id)) = post.acked else { continue };
            match seq_of_key.get(post.key.as_str()) {
                None => {
                    report("lost", format!("space {space}: key {:?} acknowledged at seq {acked_seq} is gone", post.key))
                }
                Some(seq) if *seq != acked_seq => report(
                    "lost",
                    format!("space {space}: key {:?} acknowledged at seq {acked_seq} sits at seq {seq}", post.key),
                ),
                Some(_) => {}
            }
            if ledger.applied_at(log_id.index).is_some_and(|applied| applied != log_id) {
                report("lost", format!("key {:?} acknowledged at {log_id}, replaced in the log", post.key));
            }
        }
    }

    for read in reads {
        if read.seen < read.acked_before {
            report(
                "stale-read",
                format!(
                    "node {} read seq {} of space {} at {} ms, after seq {} was acknowledged",
                    read.node, read.seen, read.space, read.at_ms, read.acked_before
                ),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::record::{MessageBlock, MessageRecord, SpaceRecord};
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;

    fn state(keys: &[&str]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut kv = BTreeMap::new();
        let space = SpaceRecord {
            name: "s".into(),
            members: ["u".to_string()].into_iter().collect(),
            attrs: BTreeMap::new(),
            last_seq: keys.len() as u64,
            first_seq: 1,
            dedup_window_len: 1000,
            retain_messages_max: 0,
            moved_to: None,
            importing: false,
        };
        kv.insert(record::space_key("s"), record::encode(&space));
        let block = MessageBlock {
            first_seq: 1,
            messages: keys
                .iter()
                .map(|key| MessageRecord {
                    author: "u".into(),
                    body: "b".into(),
                    idempotency_key: key.to_string(),
                    log_index: 1,
                })
                .collect(),
        };
        kv.insert(record::message_key("s", 1), record::encode(&block));
        kv
    }

    fn replica(node: u64, keys: &[&str]) -> ReplicaFinal {
        ReplicaFinal { node, last_applied: None, kv: state(keys), log: Vec::new(), committed: None }
    }

    fn post(key: &str, acked: Option<u64>) -> PostRecord {
        PostRecord {
            space: "s".into(),
            key: key.into(),
            acked: acked.map(|seq| (seq, log_id::<super::super::SimConfig>(1, 1, seq))),
        }
    }

    fn classes(found: &[Violation]) -> Vec<&'static str> {
        found.iter().map(|violation| violation.class).collect()
    }

    fn ledger() -> Ledger {
        Ledger::new(tokio::time::Instant::now())
    }

    #[test]
    fn a_clean_run_passes() {
        let posts = [post("a", Some(1)), post("b", Some(2)), post("c", None)];
        let found = check_final(0, &["s"], &posts, &[], &[replica(1, &["a", "b"]), replica(2, &["a", "b"])], &ledger());
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn each_anomaly_is_reported_as_its_class() {
        let posts = [post("a", Some(1)), post("b", Some(2))];
        let lost = check_final(0, &["s"], &posts, &[], &[replica(1, &["a"])], &ledger());
        assert_eq!(classes(&lost), ["lost"]);
        let duplicated = check_final(0, &["s"], &posts, &[], &[replica(1, &["a", "b", "a"])], &ledger());
        assert_eq!(classes(&duplicated), ["duplicated"]);
        let unexpected = check_final(0, &["s"], &posts, &[], &[replica(1, &["a", "b", "z"])], &ledger());
        assert_eq!(classes(&unexpected), ["unexpected"]);
        let diverged =
            check_final(0, &["s"], &posts, &[], &[replica(1, &["a", "b"]), replica(2, &["b", "a"])], &ledger());
        assert_eq!(classes(&diverged), ["divergent-state"]);
        let read = ReadRecord { at_ms: 5, node: 1, space: "s".into(), acked_before: 2, seen: 1 };
        let stale = check_final(0, &["s"], &posts, &[read], &[replica(1, &["a", "b"])], &ledger());
        assert_eq!(classes(&stale), ["stale-read"]);
    }

    #[test]
    fn two_entries_applied_at_one_index_diverge() {
        let ledger = ledger();
        let first = Entry::new_blank(log_id::<super::super::SimConfig>(1, 1, 3));
        let same = first.clone();
        let other = Entry::new_blank(log_id::<super::super::SimConfig>(2, 2, 3));
        ledger.applied(1, &first);
        ledger.applied(2, &same);
        assert!(ledger.violations().is_empty());
        ledger.applied(3, &other);
        assert_eq!(classes(&ledger.violations()), ["divergent-apply"]);
        ledger.snapshot_installed(2, Some(log_id::<super::super::SimConfig>(2, 2, 3)));
        assert_eq!(classes(&ledger.violations()), ["divergent-apply", "divergent-apply"]);
    }
}
