//! One sled write for the applies of many groups.
//!
//! Every atomic sled write (a batch or a transaction) rolls sled's I/O
//! buffer twice: two buffer writes, each woken on sled's I/O threads and
//! followed by `sync_file_range`. One apply pass per group per Raft round
//! paid that for every group; a node leading a hundred groups, each with a
//! post or two per round, spent a fifth of its CPU there.
//!
//! The writer combines: an apply that finds the writer idle writes its own
//! changes at once, on its own thread (no hand-off when one group is busy);
//! applies that arrive while a write is under way queue, and the next write
//! commits all of them in one transaction over their trees. Each group's
//! changes stay atomic (a crash recovers all of them or none), and no group
//! waits for more than the write under way and its own.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use sled::Transactional;
use tokio::sync::oneshot;

use super::blocking;

/// One group's changes: each key's new value, None to remove it.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

struct Job {
    tree: sled::Tree,
    writes: Writes,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Default)]
struct Queue {
    /// A write is under way: new jobs wait for the next one.
    busy: bool,
    jobs: Vec<Job>,
}

/// The writer of one sled `Db`'s state machine trees (every tree given to
/// it must belong to the same `Db`).
#[derive(Clone, Default)]
pub struct StateWriter {
    queue: Arc<Mutex<Queue>>,
}

impl StateWriter {
    /// Writes `writes` into `tree` atomically; returns once they are in
    /// sled (its log in memory: the process-wide flusher makes them
    /// durable). Call from the async runtime.
    pub async fn write(&self, tree: sled::Tree, writes: Writes) -> io::Result<()> {
        let (done, written) = oneshot::channel();
        let job = Job { tree, writes, done };
        let lead = {
            let mut queue = self.queue.lock().expect("state writer lock");
            if queue.busy {
                queue.jobs.push(job);
                None
            } else {
                queue.busy = true;
                Some(job)
            }
        };
        if let Some(job) = lead {
            blocking::run_inline(|| self.write_round(vec![job]));
            self.hand_on();
        }
        match written.await {
            Ok(result) => result.map_err(io::Error::other),
            Err(_) => Err(io::Error::other("state machine store: the writer stopped")),
        }
    }

    /// Writes the jobs queued during the round just written, on a blocking
    /// thread, round after round until none are left.
    fn hand_on(&self) {
        let Some(jobs) = self.next_round() else { return };
        let writer = self.clone();
        blocking::spawn(move || {
            let mut jobs = jobs;
            loop {
                writer.write_round(jobs);
                match writer.next_round() {
                    Some(next) => jobs = next,
                    None => return,
                }
            }
        });
    }

    /// The jobs queued since the last round, or None (and the writer idle).
    fn next_round(&self) -> Option<Vec<Job>> {
        let mut queue = self.queue.lock().expect("state writer lock");
        if queue.jobs.is_empty() {
            queue.busy = false;
            None
        } else {
            Some(std::mem::take(&mut queue.jobs))
        }
    }

    /// Commits `jobs` in one sled write and answers each. Blocking.
    fn write_round(&self, jobs: Vec<Job>) {
        let result = commit(&jobs).map_err(|error| format!("state machine store: {error}"));
        if let Err(error) = &result {
            tracing::error!(groups = jobs.len(), "{error}");
        }
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

fn commit(jobs: &[Job]) -> Result<(), String> {
    blocking::assert_off_runtime("state machine write");
    if let [job] = jobs {
        let mut batch = sled::Batch::default();
        for (key, value) in &job.writes {
            match value {
                Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                None => batch.remove(key.as_slice()),
            }
        }
        return job.tree.apply_batch(batch).map_err(|error| error.to_string());
    }
    let trees: Vec<sled::Tree> = jobs.iter().map(|job| job.tree.clone()).collect();
    trees
        .as_slice()
        .transaction(|views| {
            for (view, job) in views.iter().zip(jobs) {
                for (key, value) in &job.writes {
                    match value {
                        Some(value) => {
                            view.insert(key.as_slice(), value.as_slice())?;
                        }
                        None => {
                            view.remove(key.as_slice())?;
                        }
                    }
                }
            }
            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|error| format!("{error:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writes(pairs: &[(&str, Option<&str>)]) -> Writes {
        pairs.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec()))).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_of_many_trees_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let writer = StateWriter::default();
        let trees: Vec<sled::Tree> = (0..16).map(|i| db.open_tree(format!("group-{i}")).unwrap()).collect();
        let mut tasks = Vec::new();
        for (i, tree) in trees.iter().enumerate() {
            let (writer, tree) = (writer.clone(), tree.clone());
            tasks.push(tokio::spawn(async move {
                for round in 0..50 {
                    let value = format!("{i}-{round}");
                    let (newest, older) = (format!("stale-{round}"), format!("stale-{}", round.max(1) - 1));
                    let mut change = writes(&[("last", Some(&value))]);
                    if round > 0 {
                        change.insert(older.into_bytes(), None);
                    }
                    change.insert(newest.into_bytes(), Some(b"x".to_vec()));
                    writer.write(tree.clone(), change).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        for (i, tree) in trees.iter().enumerate() {
            assert_eq!(tree.get("last").unwrap().unwrap().as_ref(), format!("{i}-49").as_bytes());
            assert_eq!(tree.len(), 2, "group {i}: only `last` and the newest stale key remain");
        }
        assert!(!writer.queue.lock().unwrap().busy, "the writer is idle once every write is answered");
    }
}
