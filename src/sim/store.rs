//! The simulated disk of one node, and openraft's log store and state
//! machine over it.
//!
//! A [`Disk`] keeps two images of the log: what the running process sees
//! (every write so far) and what survived the last fsync. Appends are
//! acknowledged to openraft only when a later simulated fsync has made them
//! durable, as the real log store does; the vote is durable before
//! `save_vote` returns. [`Disk::crash`] throws the unsynced writes away, as
//! SIGKILL with a lost page cache does, and fences the crashed process's
//! handles so nothing it still has in flight lands afterwards.
//!
//! The state machine is volatile: a restarted node rebuilds it from its
//! durable snapshot and the log, so every restart re-applies entries, and
//! every apply is checked against the [`Ledger`].

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, TryStreamExt};
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine,
};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};

use super::check::Ledger;
use super::{Entry, LogId, SimConfig, Snapshot, SnapshotMeta, StoredMembership, Vote};
use crate::space::machine::rebuild_dedup_index;
use crate::space::{CommandResult, DedupIndex, Overlay, SpaceMachine};

/// How often a sabotaged disk writes its cache back.
const WRITE_BACK_INTERVAL: Duration = Duration::from_secs(1);

/// A deliberate storage bug, to show the checks catch what they claim to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sabotage {
    /// Acknowledge appends at once, making them durable up to a second
    /// later.
    AckBeforeFsync,
    /// Acknowledge a vote at once, making it durable up to a second later.
    VoteNotDurable,
}

#[derive(Clone, Default)]
struct LogImage {
    vote: Option<Vote>,
    committed: Option<LogId>,
    purged: Option<LogId>,
    entries: BTreeMap<u64, Entry>,
}

impl LogImage {
    fn last_log_id(&self) -> Option<LogId> {
        self.entries.values().next_back().map(|entry| entry.log_id).or(self.purged)
    }
}

/// A snapshot as stored: its meta and the encoded state.
#[derive(Clone)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

struct DiskState {
    /// Bumped by every crash; handles of older epochs are fenced off.
    epoch: u64,
    /// Bumped by every write to `current`.
    version: u64,
    durable_version: u64,
    current: LogImage,
    durable: LogImage,
    /// Append callbacks waiting for the next fsync.
    waiting: Vec<IOFlushed<SimConfig>>,
    /// Written atomically and durably (write, fsync, rename).
    snapshot: Option<StoredSnapshot>,
    /// The data directory's incarnation, as `node.json` holds it: renewed
    /// when the disk is wiped or loses fsynced data.
    data_incarnation: u64,
    /// Every write fails (no space left) while set.
    full: bool,
    /// A write failed on a full disk since the last boot.
    failed_full: bool,
}

/// One node's disk; it outlives the node's process incarnations.
pub struct Disk {
    state: Mutex<DiskState>,
    flush: tokio::sync::Notify,
    fsync: Duration,
    sabotage: Option<Sabotage>,
}

fn fenced() -> io::Error {
    io::Error::other("the process that owned this handle crashed")
}

impl Disk {
    pub fn new(fsync: Duration, sabotage: Option<Sabotage>, data_incarnation: u64) -> Arc<Disk> {
        Arc::new(Disk {
            state: Mutex::new(DiskState {
                epoch: 0,
                version: 0,
                durable_version: 0,
                current: LogImage::default(),
                durable: LogImage::default(),
                waiting: Vec::new(),
                snapshot: None,
                data_incarnation,
                full: false,
                failed_full: false,
            }),
            flush: tokio::sync::Notify::new(),
            fsync,
            sabotage,
        })
    }

    /// Opens the disk for a new process incarnation: its log store, its
    /// state machine (rebuilt from the durable snapshot) and the background
    /// fsync task.
    pub fn open(self: &Arc<Disk>, node: u64, ledger: Arc<Ledger>) -> (SimLogStore, SimStateMachine) {
        let epoch = {
            let mut state = self.lock();
            state.failed_full = false;
            state.epoch
        };
        let disk = self.clone();
        super::spawn(async move { disk.flush_loop(epoch).await });
        let store = SimLogStore { disk: self.clone(), epoch };
        let machine = SimStateMachine::open(node, self.clone(), epoch, ledger);
        (store, machine)
    }

    /// SIGKILL: unsynced writes are gone, the old process's handles fenced.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.epoch += 1;
        state.current = state.durable.clone();
        state.version = state.durable_version;
        state.waiting.clear();
        drop(state);
        self.flush.notify_one();
    }

    /// The whole data directory is gone (after a crash): an empty disk with
    /// a new incarnation.
    pub fn wipe(&self, data_incarnation: u64) {
        self.crash();
        let mut state = self.lock();
        state.current = LogImage::default();
        state.durable = LogImage::default();
        state.snapshot = None;
        state.data_incarnation = data_incarnation;
    }

    /// A record at `index` is damaged (after a crash): it and the rest of
    /// the log are dropped at open, the checksum having caught it, and the
    /// node takes a new incarnation, as the node's log store does. Answers
    /// whether anything was dropped.
    pub fn damage(&self, index: u64, data_incarnation: u64) -> bool {
        self.crash();
        let mut state = self.lock();
        if state.durable.entries.range(index..).next().is_none() {
            return false;
        }
        state.durable.entries.split_off(&index);
        // The committed id may lie past what remains; the node's store
        // forgets it too and re-learns it from the leader.
        state.durable.committed = None;
        state.current = state.durable.clone();
        state.data_incarnation = data_incarnation;
        true
    }

    /// The indexes of the durable log's entries: (first, last).
    pub fn durable_span(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        Some((*state.durable.entries.keys().next()?, *state.durable.entries.keys().next_back()?))
    }

    pub fn data_incarnation(&self) -> u64 {
        self.lock().data_incarnation
    }

    /// Fills the disk (every write fails) or frees it.
    pub fn set_full(&self, full: bool) {
        self.lock().full = full;
    }

    /// Whether a write failed on a full disk since the last boot.
    pub fn failed_full(&self) -> bool {
        self.lock().failed_full
    }

    /// The log the running process sees: `(index, log id)` of every entry.
    pub fn log_ids(&self) -> Vec<(u64, LogId)> {
        self.lock().current.entries.iter().map(|(index, entry)| (*index, entry.log_id)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().expect("disk lock")
    }

    /// Runs `write` on the current image if `epoch` is still the live one.
    fn write<T>(&self, epoch: u64, write: impl FnOnce(&mut DiskState) -> T) -> io::Result<T> {
        let mut state = self.lock();
        if state.epoch != epoch {
            return Err(fenced());
        }
        if state.full {
            state.failed_full = true;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        state.version += 1;
        Ok(write(&mut state))
    }

    fn read<T>(&self, epoch: u64, read: impl FnOnce(&DiskState) -> T) -> io::Result<T> {
        let state = self.lock();
        if state.epoch != epoch {
            return Err(fenced());
        }
        Ok(read(&state))
    }

    /// One fsync: everything written before it starts is durable after it.
    async fn sync(&self, epoch: u64) -> io::Result<()> {
        let (image, version, waiting) = {
            let mut state = self.lock();
            if state.epoch != epoch {
                return Err(fenced());
            }
            (state.current.clone(), state.version, std::mem::take(&mut state.waiting))
        };
        tokio::time::sleep(self.fsync).await;
        {
            let mut state = self.lock();
            if state.epoch != epoch {
                return Err(fenced());
            }
            if version > state.durable_version {
                state.durable = image;
                state.durable_version = version;
            }
        }
        for callback in waiting {
            callback.io_completed(Ok(()));
        }
        Ok(())
    }

    async fn flush_loop(self: Arc<Disk>, epoch: u64) {
        loop {
            self.flush.notified().await;
            if self.sabotage.is_some() {
                // A disk with a volatile write cache, written back once a
                // second: what it acknowledged early is lost in a crash.
                tokio::time::sleep(WRITE_BACK_INTERVAL).await;
            }
            if self.sync(epoch).await.is_err() {
                return;
            }
        }
    }
}

/// openraft's log store over a [`Disk`]; also its own reader.
#[derive(Clone)]
pub struct SimLogStore {
    disk: Arc<Disk>,
    epoch: u64,
}

impl RaftLogReader<SimConfig> for SimLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.disk.read(self.epoch, |state| state.current.entries.range(range).map(|(_, entry)| entry.clone()).collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.disk.read(self.epoch, |state| state.current.vote)
    }

    /// As the node's log store: a batch begins at `start` or is empty.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let entries = self.try_get_log_entries(start..end).await?;
        Ok(crate::storage::log_store::contiguous_from(start, entries))
    }
}

impl RaftLogStorage<SimConfig> for SimLogStore {
    type LogReader = SimLogStore;

    async fn get_log_state(&mut self) -> Result<LogState<SimConfig>, io::Error> {
        self.disk.read(self.epoch, |state| LogState {
            last_purged_log_id: state.current.purged,
            last_log_id: state.current.last_log_id(),
        })
    }

    async fn get_log_reader(&mut self) -> SimLogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.disk.write(self.epoch, |state| state.current.vote = Some(*vote))?;
        if self.disk.sabotage == Some(Sabotage::VoteNotDurable) {
            self.disk.flush.notify_one();
            return Ok(());
        }
        self.disk.sync(self.epoch).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.disk.write(self.epoch, |state| state.current.committed = committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.disk.read(self.epoch, |state| state.current.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<SimConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
    {
        let ack_early = self.disk.sabotage == Some(Sabotage::AckBeforeFsync);
        let callback = self.disk.write(self.epoch, |state| {
            for entry in entries {
                let expected = state.current.last_log_id().map(|id| id.index + 1).unwrap_or(0);
                if entry.log_id.index != expected {
                    return Err(io::Error::other(format!(
                        "append of index {} leaves a hole after {expected}",
                        entry.log_id.index
                    )));
                }
                state.current.entries.insert(entry.log_id.index, entry);
            }
            if ack_early {
                return Ok(Some(callback));
            }
            state.waiting.push(callback);
            Ok(None)
        })??;
        if let Some(callback) = callback {
            callback.io_completed(Ok(()));
        }
        self.disk.flush.notify_one();
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.disk.write(self.epoch, |state| {
            let keep_below = last_log_id.map(|id| id.index + 1).unwrap_or(0);
            state.current.entries.split_off(&keep_below);
        })?;
        self.disk.flush.notify_one();
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.disk.write(self.epoch, |state| {
            state.current.purged = Some(log_id);
            state.current.entries = state.current.entries.split_off(&(log_id.index + 1));
        })?;
        self.disk.flush.notify_one();
        Ok(())
    }
}

/// The state a snapshot carries.
#[derive(Clone, Default, Serialize, Deserialize)]
struct MachineState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    kv: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// The space state machine in memory; the disk keeps only its snapshots.
pub struct SimStateMachine {
    node: u64,
    disk: Arc<Disk>,
    epoch: u64,
    state: MachineState,
    dedup: DedupIndex,
    ledger: Arc<Ledger>,
    /// The incarnations the applied membership records, as on the nodes.
    admitted: crate::raft::network::Admitted,
}

impl SimStateMachine {
    fn open(node: u64, disk: Arc<Disk>, epoch: u64, ledger: Arc<Ledger>) -> SimStateMachine {
        let snapshot = disk.lock().snapshot.clone();
        let mut machine = SimStateMachine {
            node,
            disk,
            epoch,
            state: MachineState::default(),
            dedup: DedupIndex::default(),
            ledger,
            admitted: Default::default(),
        };
        if let Some(snapshot) = snapshot {
            machine.restore(&snapshot.meta, &snapshot.data).expect("snapshots are written by this module");
        }
        machine
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
        let state: MachineState = postcard::from_bytes(data).map_err(io::Error::other)?;
        if state.last_applied != meta.last_log_id {
            return Err(io::Error::other("snapshot data and meta disagree"));
        }
        self.dedup = rebuild_dedup_index(&state.kv).map_err(io::Error::other)?;
        self.state = state;
        self.publish_membership();
        Ok(())
    }

    /// The incarnations of the applied membership, shared with this
    /// process's network.
    pub fn admitted(&self) -> crate::raft::network::Admitted {
        self.admitted.clone()
    }

    fn publish_membership(&self) {
        self.admitted.set(self.state.membership.membership().nodes().map(|(id, node)| (*id, node.incarnation)));
    }

    /// The last seq of `space` in this replica's applied state.
    pub fn last_seq(&self, space: &str) -> u64 {
        let mut overlay = Overlay::new(&self.state.kv);
        SpaceMachine::read_space(&mut overlay, space).map(|record| record.last_seq).unwrap_or(0)
    }

    /// The applied state: its last log id and its key-value pairs.
    pub fn state(&self) -> (Option<LogId>, &BTreeMap<Vec<u8>, Vec<u8>>) {
        (self.state.last_applied, &self.state.kv)
    }

    fn builder(&self) -> SimSnapshotBuilder {
        SimSnapshotBuilder { disk: self.disk.clone(), epoch: self.epoch, state: self.state.clone() }
    }
}

impl RaftStateMachine<SimConfig> for SimStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SimSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<SimConfig>, io::Error>> + Unpin + Send,
    {
        let mut answers = Vec::new();
        let mut next = self.state.clone();
        let writes = {
            let mut overlay = Overlay::new(&self.state.kv);
            while let Some((entry, responder)) = entries.try_next().await? {
                self.ledger.applied(self.node, &entry);
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::None,
                    EntryPayload::Normal(command) => {
                        SpaceMachine::apply(&mut overlay, &mut self.dedup, entry.log_id.index, command)
                    }
                    EntryPayload::Membership(membership) => {
                        next.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                        CommandResult::None
                    }
                };
                next.last_applied = Some(entry.log_id);
                answers.push((responder, result));
            }
            overlay.into_writes()
        };
        for (key, value) in writes {
            match value {
                Some(value) => next.kv.insert(key, value),
                None => next.kv.remove(&key),
            };
        }
        let membership_changed = self.state.membership.log_id() != next.membership.log_id();
        self.state = next;
        if membership_changed {
            self.publish_membership();
        }
        for (responder, result) in answers {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SimSnapshotBuilder {
        self.builder()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> Result<(), io::Error> {
        self.ledger.snapshot_installed(self.node, meta.last_log_id);
        self.restore(meta, &snapshot)?;
        let mut state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(fenced());
        }
        state.snapshot = Some(StoredSnapshot { meta: meta.clone(), data: snapshot });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let snapshot = self.disk.read(self.epoch, |state| state.snapshot.clone())?;
        Ok(snapshot.map(|stored| Snapshot { meta: stored.meta, snapshot: stored.data }))
    }
}

/// Encodes the state copied when the builder was made.
pub struct SimSnapshotBuilder {
    disk: Arc<Disk>,
    epoch: u64,
    state: MachineState,
}

impl RaftSnapshotBuilder<SimConfig> for SimSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let meta =
            SnapshotMeta { last_log_id: self.state.last_applied, last_membership: self.state.membership.clone() };
        let data = postcard::to_stdvec(&self.state).map_err(io::Error::other)?;
        let mut state = self.disk.lock();
        if state.epoch != self.epoch {
            return Err(fenced());
        }
        let newer = match &state.snapshot {
            Some(existing) => existing.meta.last_log_id < meta.last_log_id,
            None => true,
        };
        if newer {
            state.snapshot = Some(StoredSnapshot { meta: meta.clone(), data: data.clone() });
        }
        Ok(Snapshot { meta, snapshot: data })
    }
}
