//! The space state machine of one group, in a sled tree of the process's
//! single sled `Db`.
//!
//! Apply commits each batch of entries as one atomic sled write together
//! with the applied log id, so the tree always holds the result of a log
//! prefix; the groups' [`StateWriter`] commits the writes of groups applying
//! at the same time together. sled
//! is not fsynced here: the process-wide flusher writes it out, and after a
//! crash openraft re-applies from the applied id, which the log still holds
//! because the log is purged only behind a durable snapshot.
//!
//! Snapshots run concurrently with apply (openraft builds them in their own
//! task). To scan a consistent image at the snapshot's applied id without
//! stopping apply, apply records the pre-image of every key it changes while
//! a snapshot is being built; the builder prefers pre-images to what it scans.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::blocking;
use super::snapshot_file::{self, SnapshotFile, SnapshotReader, SnapshotWriter};
use super::state_writer::{StateWriter, Writes};
use crate::space::record::SeqMessage;
use crate::space::{record, CommandResult, DedupIndex, KvRead, Overlay, SpaceMachine};
use crate::storage::types::{Entry, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// Keys outside the space data (see [`crate::space::record`]) start with `_`.
const APPLIED_KEY: &[u8] = b"_applied";
/// Present while a snapshot is being installed into the tree.
const RESTORING_KEY: &[u8] = b"_restoring";
const INTERNAL_PREFIX: u8 = b'_';
/// Pairs written per sled batch when loading a snapshot.
const RESTORE_BATCH_LEN: usize = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

type PreImages = Arc<Mutex<Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>>>;

/// Read access for queries (History, Subscribe) on the applied state.
#[derive(Clone)]
pub struct SpaceReader {
    pub tree: sled::Tree,
    /// The last applied log index; changes after every applied batch.
    pub applied: watch::Receiver<u64>,
    /// The incarnations the last applied membership records.
    pub admitted: crate::storage::types::Admitted,
}

pub struct SpaceStateMachine {
    group_id: u64,
    db: sled::Db,
    tree: sled::Tree,
    snapshot_dir: PathBuf,
    state: AppliedState,
    applied_tx: watch::Sender<u64>,
    admitted: crate::storage::types::Admitted,
    pre_images: PreImages,
    /// Held by a snapshot builder from creation to the end of its build, and
    /// by an install: an install never rewrites the tree under a scan, and a
    /// build never sees a half-installed tree.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
    /// Which idempotency keys committed; derived from the stored messages.
    dedup: DedupIndex,
    writer: StateWriter,
}

fn sled_error(error: sled::Error) -> io::Error {
    io::Error::other(format!("state machine store: {error}"))
}

impl SpaceStateMachine {
    /// Opens group `group_id`'s tree in `db`; restores from the latest
    /// snapshot when the tree is behind it (lost pages) or was mid-restore.
    /// `writer` is shared by every group of `db`.
    pub async fn open(
        db: sled::Db,
        writer: StateWriter,
        group_id: u64,
        snapshot_dir: PathBuf,
    ) -> io::Result<SpaceStateMachine> {
        let (opened_db, dir) = (db.clone(), snapshot_dir.clone());
        let (tree, state, restoring) = crate::storage::blocking::run(move || open_tree(&opened_db, group_id, &dir))
            .await
            .map_err(io::Error::other)??;
        let (applied_tx, _) = watch::channel(state.last_applied.map(|id| id.index).unwrap_or(0));
        let mut machine = SpaceStateMachine {
            group_id,
            db,
            tree,
            snapshot_dir,
            state,
            applied_tx,
            admitted: Default::default(),
            pre_images: Arc::new(Mutex::new(None)),
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
            dedup: DedupIndex::default(),
            writer,
        };
        if let Some(latest) = machine.latest_snapshot().await? {
            let behind = latest.1.last_log_id > machine.state.last_applied;
            if restoring || behind {
                tracing::warn!(group_id, restoring, snapshot = ?latest.1.last_log_id, applied = ?machine.state.last_applied,
                    "state machine is behind its durable snapshot; restoring from it");
                machine.restore_from(&latest.0, &latest.1).await?;
            }
        } else if restoring {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "state machine was interrupted while restoring a snapshot, and the snapshot file is gone",
            ));
        }
        machine.publish_membership();
        let tree = machine.tree.clone();
        machine.dedup =
            crate::storage::blocking::run(move || rebuild_dedup_index(&tree)).await.map_err(io::Error::other)??;
        tracing::info!(
            group_id,
            applied = ?machine.state.last_applied.map(|id| id.index),
            remembered_keys = machine.dedup.len(),
            "state machine opened"
        );
        Ok(machine)
    }

    pub fn reader(&self) -> SpaceReader {
        SpaceReader { tree: self.tree.clone(), applied: self.applied_tx.subscribe(), admitted: self.admitted.clone() }
    }

    /// Shares the incarnations of the applied (committed) membership.
    fn publish_membership(&self) {
        self.admitted.set(self.state.membership.membership().nodes().map(|(id, node)| (*id, node.incarnation)));
    }

    fn snapshot_path(&self, meta: &SnapshotMeta) -> PathBuf {
        let (term, index) = match &meta.last_log_id {
            Some(log_id) => (log_id.leader_id.term, log_id.index),
            None => (0, 0),
        };
        self.snapshot_dir.join(format!("snapshot-{index:020}-{term}.bin"))
    }

    /// The newest valid snapshot file and its metadata.
    async fn latest_snapshot(&self) -> io::Result<Option<(PathBuf, SnapshotMeta)>> {
        let (dir, group_id) = (self.snapshot_dir.clone(), self.group_id);
        crate::storage::blocking::run(move || latest_snapshot_in(&dir, group_id)).await.map_err(io::Error::other)?
    }

    /// Replaces the tree's content with the snapshot's, off the runtime.
    async fn restore_from(&mut self, path: &Path, meta: &SnapshotMeta) -> io::Result<()> {
        let tree = self.tree.clone();
        let db = self.db.clone();
        let path = path.to_path_buf();
        let state = AppliedState { last_applied: meta.last_log_id, membership: meta.last_membership.clone() };
        let state_bytes = crate::kv::encode(&state);
        let dedup = crate::storage::blocking::run(move || -> io::Result<DedupIndex> {
            // Check the whole file before touching the tree.
            snapshot_file::verify(&path)?;
            tree.insert(RESTORING_KEY, b"1".as_slice()).map_err(sled_error)?;
            db.flush().map_err(sled_error)?;
            let keys: Vec<sled::IVec> = tree.iter().keys().collect::<Result<_, _>>().map_err(sled_error)?;
            for chunk in keys.chunks(RESTORE_BATCH_LEN) {
                let mut batch = sled::Batch::default();
                for key in chunk.iter().filter(|key| key.as_ref() != RESTORING_KEY) {
                    batch.remove(key.clone());
                }
                tree.apply_batch(batch).map_err(sled_error)?;
            }
            let mut reader = SnapshotReader::open(&path)?;
            while let Some(pairs) = reader.next_pairs()? {
                let mut batch = sled::Batch::default();
                for (key, value) in pairs {
                    batch.insert(key, value);
                }
                tree.apply_batch(batch).map_err(sled_error)?;
            }
            let mut batch = sled::Batch::default();
            batch.insert(APPLIED_KEY, state_bytes);
            batch.remove(RESTORING_KEY);
            tree.apply_batch(batch).map_err(sled_error)?;
            db.flush().map_err(sled_error)?;
            rebuild_dedup_index(&tree)
        })
        .await
        .map_err(io::Error::other)??;
        self.state = state;
        self.dedup = dedup;
        self.publish_membership();
        self.applied_tx.send_replace(self.state.last_applied.map(|id| id.index).unwrap_or(0));
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for SpaceStateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SpaceSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch_entries = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch_entries.push(entry);
            responders.push(responder);
        }
        if batch_entries.is_empty() {
            return Ok(());
        }
        // Apply reads and writes sled, which may wait on the disk: the whole
        // batch runs on a blocking thread, never on the async runtime.
        let tree = self.tree.clone();
        let pre_images = self.pre_images.clone();
        let mut dedup = std::mem::take(&mut self.dedup);
        let state = self.state.clone();
        let began = std::time::Instant::now();
        let apply = move || -> io::Result<_> {
            let (next_state, results, writes) = apply_batch(&tree, &pre_images, &mut dedup, state, &batch_entries)?;
            Ok((dedup, next_state, results, writes))
        };
        // A few entries (the commit path's usual batch) apply right here; a
        // long run (catching up) on a thread that may block.
        let (dedup, next_state, results, writes) = if responders.len() <= APPLY_INLINE_ENTRIES_MAX {
            crate::storage::blocking::run_inline(apply)?
        } else {
            crate::storage::blocking::run_in_place(apply).await.map_err(io::Error::other)??
        };
        self.writer.write(self.tree.clone(), writes).await?;
        crate::stages::since(crate::stages::Stage::Apply, began);
        self.dedup = dedup;
        let membership_changed = self.state.membership.log_id() != next_state.membership.log_id();
        self.state = next_state;
        if membership_changed {
            self.publish_membership();
        }
        self.applied_tx.send_replace(self.state.last_applied.map(|id| id.index).unwrap_or(0));
        debug_assert_eq!(results.len(), responders.len());
        for (responder, result) in responders.into_iter().zip(results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<SpaceSnapshotBuilder> {
        let Ok(guard) = self.snapshot_lock.clone().try_lock_owned() else {
            return None;
        };
        // Runs between applies: from here on, apply records pre-images, so
        // the builder can reconstruct the tree as of this applied id.
        *self.pre_images.lock().expect("pre-image lock") = Some(BTreeMap::new());
        let meta =
            SnapshotMeta { last_log_id: self.state.last_applied, last_membership: self.state.membership.clone() };
        Some(SpaceSnapshotBuilder {
            group_id: self.group_id,
            tree: self.tree.clone(),
            path: self.snapshot_path(&meta),
            snapshot_dir: self.snapshot_dir.clone(),
            meta,
            pre_images: self.pre_images.clone(),
            guard: Some(guard),
        })
    }

    async fn get_snapshot_builder(&mut self) -> SpaceSnapshotBuilder {
        // openraft calls try_create_snapshot_builder; this exists for the trait.
        loop {
            if let Some(builder) = self.try_create_snapshot_builder(true).await {
                return builder;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> Result<(), io::Error> {
        // Wait for a build in progress: it scans the tree this rewrites.
        let _guard = self.snapshot_lock.clone().lock_owned().await;
        let final_path = self.snapshot_path(meta);
        if snapshot.path != final_path {
            let (from, to, dir) = (snapshot.path.clone(), final_path.clone(), self.snapshot_dir.clone());
            crate::storage::blocking::run(move || -> io::Result<()> {
                std::fs::rename(&from, &to)?;
                snapshot_file::sync_dir(&dir)
            })
            .await
            .map_err(io::Error::other)??;
        }
        self.restore_from(&final_path, meta).await?;
        let (dir, keep) = (self.snapshot_dir.clone(), final_path.clone());
        let _ = crate::storage::blocking::run(move || remove_snapshots_except(&dir, &keep)).await;
        tracing::info!(group_id = self.group_id, last_log_id = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.latest_snapshot().await?.map(|(path, meta)| Snapshot { meta, snapshot: SnapshotFile { path } }))
    }
}

/// Builds one snapshot file from a consistent image of the tree.
pub struct SpaceSnapshotBuilder {
    group_id: u64,
    tree: sled::Tree,
    path: PathBuf,
    snapshot_dir: PathBuf,
    meta: SnapshotMeta,
    pre_images: PreImages,
    /// The snapshot lock, held until the build ends; `None` once released
    /// (and on the copy that does the work).
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for SpaceSnapshotBuilder {
    fn drop(&mut self) {
        // A builder dropped without building must stop the pre-image
        // recording it started. Only the holder of the lock may: a released
        // builder's recording may already belong to the next builder.
        if self.guard.is_some() {
            self.pre_images.lock().expect("pre-image lock").take();
        }
    }
}

/// The last log index a snapshot file name carries (`snapshot-<index>-<term>.bin`).
fn snapshot_index_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("snapshot-")?.split('-').next()?.parse().ok()
}

impl SpaceSnapshotBuilder {
    fn write_file(&self) -> io::Result<SnapshotFile> {
        let mut writer = SnapshotWriter::create(self.path.clone(), self.group_id, &self.meta)?;
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        for item in self.tree.iter() {
            let (key, value) = item.map_err(sled_error)?;
            if key.first() == Some(&INTERNAL_PREFIX) {
                continue;
            }
            let pre_image = {
                let guard = self.pre_images.lock().expect("pre-image lock");
                guard.as_ref().and_then(|pre_images| pre_images.get(key.as_ref()).cloned())
            };
            match pre_image {
                // Changed since the snapshot point: use what it was then.
                Some(before) => {
                    seen.insert(key.to_vec());
                    if let Some(before) = before {
                        crate::kv::verify(&before).map_err(|error| damaged_record(&key, error))?;
                        writer.push(key.to_vec(), before)?;
                    }
                }
                None => {
                    // A damaged record fails the build (a storage error)
                    // instead of being carried into the snapshot.
                    crate::kv::verify(&value).map_err(|error| damaged_record(&key, error))?;
                    writer.push(key.to_vec(), value.to_vec())?
                }
            }
        }
        // Keys removed since the snapshot point were not scanned: add them.
        let pre_images = self.pre_images.lock().expect("pre-image lock").take().unwrap_or_default();
        for (key, before) in pre_images {
            if let Some(before) = before {
                if !seen.contains(&key) && key.first() != Some(&INTERNAL_PREFIX) {
                    crate::kv::verify(&before).map_err(|error| damaged_record(&key, error))?;
                    writer.push(key, before)?;
                }
            }
        }
        writer.finish()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SpaceSnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = SpaceSnapshotBuilder {
            group_id: self.group_id,
            tree: self.tree.clone(),
            path: self.path.clone(),
            snapshot_dir: self.snapshot_dir.clone(),
            meta: self.meta.clone(),
            pre_images: self.pre_images.clone(),
            guard: None,
        };
        let result = crate::storage::blocking::run(move || {
            let result = this.write_file();
            // Stop recording pre-images whatever happened.
            this.pre_images.lock().expect("pre-image lock").take();
            result.map(|file| (file, this))
        })
        .await
        .map_err(io::Error::other);
        let built = match result {
            Ok(Ok(built)) => built,
            Ok(Err(error)) | Err(error) => {
                // Still holding the lock, so the recording is ours to stop.
                self.pre_images.lock().expect("pre-image lock").take();
                self.guard.take();
                return Err(error);
            }
        };
        let (file, this) = built;
        // Older snapshots are no longer needed once this one is durable; a
        // newer one (installed from the leader meanwhile) stays.
        let (dir, own_path) = (this.snapshot_dir.clone(), file.path.clone());
        let _ = crate::storage::blocking::run(move || remove_snapshots_older_than(&dir, &own_path)).await;
        self.guard.take();
        Ok(Snapshot { meta: this.meta.clone(), snapshot: file })
    }
}

/// The dedup index as the stored messages define it: the keys of each
/// space's newest `dedup_window_len` retained messages.
fn rebuild_dedup_index(tree: &sled::Tree) -> io::Result<DedupIndex> {
    let reads = TreeReads::new(tree);
    let index = crate::space::machine::rebuild_dedup_index(&reads)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt space record or message block: {e}")));
    reads.check()?;
    index
}

/// The stored blocks of `space` from the one holding `from_seq` up to the
/// one holding `last_seq`, in order.
pub(crate) fn blocks_from<'a>(
    tree: &'a sled::Tree,
    space: &'a str,
    from_seq: u64,
    last_seq: u64,
) -> impl Iterator<Item = io::Result<record::MessageBlock>> + 'a {
    // The block holding `from_seq` starts at or before it.
    let start = tree
        .range(record::message_key(space, 0)..=record::message_key(space, from_seq))
        .next_back()
        .and_then(|item| item.ok())
        .map(|(key, _)| key.to_vec())
        .unwrap_or_else(|| record::message_key(space, from_seq));
    let end = record::message_key(space, last_seq);
    tree.range(start..=end).map(|item| {
        let (_, value) = item.map_err(sled_error)?;
        record::decode::<record::MessageBlock>(&value)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("corrupt message block: {e}")))
    })
}

impl KvRead for sled::Tree {
    /// For queries of the meta directory, which run on a blocking task: a
    /// failed read ends that task (its caller gets the error), never the
    /// process. Apply reads through [`TreeReads`] instead.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        blocking::assert_off_runtime("a sled read");
        sled::Tree::get(self, key).unwrap_or_else(|e| panic!("state machine read failed: {e}")).map(|v| v.to_vec())
    }

    fn keys_between(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
        blocking::assert_off_runtime("a sled scan");
        self.range(start..=end)
            .keys()
            .map(|key| key.unwrap_or_else(|e| panic!("state machine read failed: {e}")).to_vec())
            .collect()
    }
}

/// The tree as apply and the dedup rebuild read it: a read that fails (a
/// full or failing disk; sled then fails every later call too) or a record
/// whose checksum does not match answers as if the key were absent and is
/// remembered, and [`TreeReads::check`] turns it into the batch's error, so
/// the batch commits nothing and the group stops with a storage error
/// instead of a panic. (The restart that follows finds the damaged record
/// at open: [`stored_state`].)
struct TreeReads<'a> {
    tree: &'a sled::Tree,
    failure: std::cell::RefCell<Option<io::Error>>,
}

impl<'a> TreeReads<'a> {
    fn new(tree: &'a sled::Tree) -> Self {
        TreeReads { tree, failure: std::cell::RefCell::new(None) }
    }

    fn fail(&self, error: io::Error) {
        self.failure.borrow_mut().get_or_insert(error);
    }

    /// The first read that failed, as an error.
    fn check(&self) -> io::Result<()> {
        match self.failure.borrow_mut().take() {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// The error for a stored record that fails its checksum.
fn damaged_record(key: &[u8], error: postcard::Error) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("damaged state machine record {}: {error}", String::from_utf8_lossy(key)),
    )
}

impl KvRead for TreeReads<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        blocking::assert_off_runtime("a sled read");
        match sled::Tree::get(self.tree, key) {
            Ok(Some(value)) => match crate::kv::verify(&value) {
                Ok(_) => Some(value.to_vec()),
                Err(error) => {
                    self.fail(damaged_record(key, error));
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                self.fail(sled_error(error));
                None
            }
        }
    }

    fn keys_between(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
        blocking::assert_off_runtime("a sled scan");
        let mut keys = Vec::new();
        for key in self.tree.range(start..=end).keys() {
            match key {
                Ok(key) => keys.push(key.to_vec()),
                Err(error) => {
                    self.fail(sled_error(error));
                    break;
                }
            }
        }
        keys
    }
}

impl SpaceReader {
    pub fn space(&self, name: &str) -> Result<Option<crate::space::SpaceRecord>, StorageError> {
        blocking::assert_off_runtime("a state machine read");
        let Some(bytes) = self.tree.get(record::space_key(name)).map_err(read_error)? else {
            return Ok(None);
        };
        record::decode(&bytes).map(Some).map_err(|e| StorageError::Corrupt { what: "space record", why: e.to_string() })
    }

    /// Whether a space of this name was deleted in this cluster.
    pub fn is_deleted(&self, name: &str) -> Result<bool, StorageError> {
        blocking::assert_off_runtime("a state machine read");
        Ok(self.tree.get(record::deleted_key(name)).map_err(read_error)?.is_some())
    }

    /// Every space record, in name order.
    pub fn spaces(&self) -> Result<Vec<crate::space::SpaceRecord>, StorageError> {
        blocking::assert_off_runtime("a state machine read");
        let mut spaces = Vec::new();
        for item in self.tree.scan_prefix([record::SPACE_PREFIX]) {
            let (_, value) = item.map_err(read_error)?;
            let space = record::decode(&value)
                .map_err(|e| StorageError::Corrupt { what: "space record", why: e.to_string() })?;
            spaces.push(space);
        }
        Ok(spaces)
    }

    /// Up to `limit` messages of `space` with seqs `from_seq..=last_seq`, in
    /// order, stopping before any gap (a message trimmed or not yet restored)
    /// so a caller never skips a seq.
    pub fn messages(
        &self,
        space: &str,
        from_seq: u64,
        last_seq: u64,
        limit: usize,
    ) -> Result<Vec<SeqMessage>, StorageError> {
        blocking::assert_off_runtime("a state machine read");
        let mut messages = Vec::new();
        if from_seq > last_seq || limit == 0 {
            return Ok(messages);
        }
        let mut expected = from_seq;
        'blocks: for block in blocks_from(&self.tree, space, from_seq, last_seq) {
            let block = block.map_err(|e| StorageError::Corrupt { what: "message block", why: e.to_string() })?;
            if block.first_seq > expected || block.end_seq() <= expected {
                // A gap (trimmed, or a restore in progress): stop before it.
                break;
            }
            let block_from = expected;
            for seq in block_from..block.end_seq().min(last_seq + 1) {
                let message = block.get(seq).expect("seq within block");
                messages.push(SeqMessage { seq, record: message.clone() });
                expected = seq + 1;
                if messages.len() >= limit {
                    break 'blocks;
                }
            }
        }
        Ok(messages)
    }

    /// Every stored message block of `space` holding seqs up to `last_seq`,
    /// in order.
    pub fn blocks(&self, space: &str, last_seq: u64) -> Result<Vec<record::MessageBlock>, StorageError> {
        blocking::assert_off_runtime("a state machine read");
        blocks_from(&self.tree, space, 0, last_seq)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| StorageError::Corrupt { what: "message block", why: e.to_string() })
    }

    pub fn applied_index(&self) -> u64 {
        *self.applied.borrow()
    }
}

/// Runs of committed entries up to this long are applied on the Raft
/// state machine's own task (see [`crate::storage::blocking::run_inline`]).
const APPLY_INLINE_ENTRIES_MAX: usize = 4;

/// Applies `entries` as seen from `tree`: answers the new applied state,
/// each entry's result, and the writes (the applied state's among them) to
/// commit in one atomic write, so a replica's state is always the result of
/// applying a prefix of the log. Blocking.
fn apply_batch(
    tree: &sled::Tree,
    pre_images: &PreImages,
    dedup: &mut DedupIndex,
    mut next_state: AppliedState,
    entries: &[Entry],
) -> io::Result<(AppliedState, Vec<CommandResult>, Writes)> {
    blocking::assert_off_runtime("state machine disk work");
    let mut results = Vec::with_capacity(entries.len());
    let reads = TreeReads::new(tree);
    let mut writes = {
        let mut overlay = Overlay::new(&reads);
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(command) => SpaceMachine::apply(&mut overlay, dedup, entry.log_id.index, command),
                EntryPayload::Membership(membership) => {
                    next_state.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                    CommandResult::None
                }
            };
            debug_assert!(next_state.last_applied.is_none_or(|last| last.index < entry.log_id.index));
            next_state.last_applied = Some(entry.log_id);
            results.push(result);
        }
        overlay.into_writes()
    };
    // A read that failed leaves results computed from a wrong view: none of
    // the batch is committed or answered.
    reads.check()?;
    record_pre_images(tree, pre_images, &writes)?;
    writes.insert(APPLIED_KEY.to_vec(), Some(crate::kv::encode(&next_state)));
    Ok((next_state, results, writes))
}

/// Opens group `group_id`'s tree and reads its applied state, after removing
/// the leftovers of a snapshot build or transfer cut short by a crash.
/// Answers the tree, its applied state and whether a restore was cut short.
/// Blocking.
fn open_tree(db: &sled::Db, group_id: u64, snapshot_dir: &Path) -> io::Result<(sled::Tree, AppliedState, bool)> {
    blocking::assert_off_runtime("state machine disk work");
    std::fs::create_dir_all(snapshot_dir)?;
    for entry in std::fs::read_dir(snapshot_dir)?.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "tmp" || ext == "recv") {
            let _ = std::fs::remove_file(&path);
        }
    }
    let tree = db.open_tree(format!("sm.{group_id}")).map_err(sled_error)?;
    let state = match tree.get(APPLIED_KEY).map_err(sled_error)? {
        Some(bytes) => crate::kv::decode(&bytes).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("state machine applied state is corrupt: {e}"))
        })?,
        None => AppliedState::default(),
    };
    let restoring = tree.contains_key(RESTORING_KEY).map_err(sled_error)?;
    Ok((tree, state, restoring))
}

/// A group's state machine as found on disk before the group starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredState {
    /// The tree's applied index (0: no tree, or nothing applied).
    pub applied: u64,
    /// The first record of the tree that failed its checksum, if one did:
    /// the tree cannot be trusted and must be rebuilt.
    pub damaged: Option<String>,
    /// The index of the newest snapshot file it could be restored from (0:
    /// none).
    pub snapshot: u64,
}

impl StoredState {
    /// How far the state can be rebuilt here without the log.
    pub fn rebuilt(&self) -> u64 {
        self.applied.max(self.snapshot)
    }
}

/// Reads group `group_id`'s stored state without changing it, but for one
/// thing: a snapshot file the tree would be restored from (one newer than
/// the tree) that does not read back whole is renamed `*.damaged`, so the
/// group falls back to an older one. Every record's checksum is checked: a
/// tree with a damaged record counts as applied at 0 (see
/// [`drop_damaged_tree`]). Blocking.
pub fn stored_state(db: &sled::Db, group_id: u64, snapshot_dir: &Path) -> io::Result<StoredState> {
    blocking::assert_off_runtime("state machine disk work");
    let name = format!("sm.{group_id}");
    let mut state = StoredState::default();
    if db.tree_names().iter().any(|tree| tree.as_ref() == name.as_bytes()) {
        let tree = db.open_tree(&name).map_err(sled_error)?;
        if let Some(bytes) = tree.get(APPLIED_KEY).map_err(sled_error)? {
            match crate::kv::decode::<AppliedState>(&bytes) {
                Ok(applied) => state.applied = applied.last_applied.map(|id| id.index).unwrap_or(0),
                Err(error) => state.damaged = Some(damaged_record(APPLIED_KEY, error).to_string()),
            }
        }
        for item in tree.iter() {
            let (key, value) = item.map_err(sled_error)?;
            if key.first() == Some(&INTERNAL_PREFIX) {
                continue;
            }
            if state.damaged.is_some() {
                break;
            }
            if let Err(error) = crate::kv::verify(&value) {
                state.damaged = Some(damaged_record(&key, error).to_string());
            }
        }
        if state.damaged.is_some() {
            state.applied = 0;
        }
    }
    if !snapshot_dir.is_dir() {
        return Ok(state);
    }
    while let Some((path, meta)) = latest_snapshot_in(snapshot_dir, group_id)? {
        let index = meta.last_log_id.map(|id| id.index).unwrap_or(0);
        if index <= state.applied {
            break;
        }
        match snapshot_file::verify(&path) {
            Ok(_) => {
                state.snapshot = index;
                break;
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "snapshot file is damaged; set aside");
                std::fs::rename(&path, path.with_extension("damaged"))?;
            }
        }
    }
    Ok(state)
}

/// Drops group `group_id`'s tree and snapshot files, durably. Blocking.
/// Drops group `group_id`'s tree, which holds a damaged record; its
/// snapshot files stay, to rebuild it from with the log. Blocking.
pub fn drop_damaged_tree(db: &sled::Db, group_id: u64) -> io::Result<()> {
    blocking::assert_off_runtime("state machine disk work");
    db.drop_tree(format!("sm.{group_id}")).map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    Ok(())
}

pub fn forget_stored_state(db: &sled::Db, group_id: u64, snapshot_dir: &Path) -> io::Result<()> {
    blocking::assert_off_runtime("state machine disk work");
    db.drop_tree(format!("sm.{group_id}")).map_err(sled_error)?;
    db.flush().map_err(sled_error)?;
    if let Ok(entries) = std::fs::read_dir(snapshot_dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "bin") {
                std::fs::remove_file(entry.path())?;
            }
        }
    }
    Ok(())
}

/// The newest valid snapshot file of group `group_id` in `dir`, and its
/// metadata. Blocking.
fn latest_snapshot_in(dir: &Path, group_id: u64) -> io::Result<Option<(PathBuf, SnapshotMeta)>> {
    blocking::assert_off_runtime("state machine disk work");
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .collect();
    names.sort();
    for path in names.into_iter().rev() {
        match SnapshotReader::open(&path) {
            Ok(reader) if reader.group_id == group_id => return Ok(Some((path, reader.meta))),
            Ok(_) => continue,
            Err(error) => tracing::warn!(path = %path.display(), %error, "skipping unreadable snapshot file"),
        }
    }
    Ok(None)
}

/// Removes the snapshot files of `dir` older than `own` (a newer one,
/// installed from the leader meanwhile, stays). Blocking.
fn remove_snapshots_older_than(dir: &Path, own: &Path) {
    blocking::assert_off_runtime("state machine disk work");
    let own_index = snapshot_index_of(own);
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let older = snapshot_index_of(&path).zip(own_index).is_some_and(|(index, own)| index < own);
        if path != own && path.extension().is_some_and(|ext| ext == "bin") && older {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Removes every snapshot file of `snapshot_dir` but `keep`. Blocking.
fn remove_snapshots_except(snapshot_dir: &Path, keep: &Path) {
    blocking::assert_off_runtime("state machine disk work");
    let Ok(entries) = std::fs::read_dir(snapshot_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep && path.extension().is_some_and(|ext| ext == "bin" || ext == "tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// While a snapshot is being built, keeps the value each written key had
/// before the build began, so the builder sees the tree as of its start.
fn record_pre_images(
    tree: &sled::Tree,
    pre_images: &PreImages,
    writes: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> io::Result<()> {
    let mut guard = pre_images.lock().expect("pre-image lock");
    let Some(pre_images) = guard.as_mut() else {
        return Ok(());
    };
    for key in writes.keys() {
        if !pre_images.contains_key(key) {
            let before = tree.get(key).map_err(sled_error)?.map(|v| v.to_vec());
            pre_images.insert(key.clone(), before);
        }
    }
    Ok(())
}

fn read_error(error: sled::Error) -> StorageError {
    StorageError::Read(error)
}

/// Why a read of a replica's applied state failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("state machine read failed: {0}")]
    Read(sled::Error),
    #[error("corrupt {what} in the state machine: {why}")]
    Corrupt { what: &'static str, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_that_fails_its_checksum_is_an_error_for_apply_and_found_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("state")).unwrap();
        let tree = db.open_tree("sm.7").unwrap();
        let applied = AppliedState {
            last_applied: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 12)),
            ..AppliedState::default()
        };
        tree.insert(APPLIED_KEY, crate::kv::encode(&applied)).unwrap();
        tree.insert(b"sgood", crate::kv::encode(&5u64)).unwrap();
        let snapshots = dir.path().join("snapshots");
        let stored = stored_state(&db, 7, &snapshots).unwrap();
        assert_eq!((stored.applied, stored.damaged.as_deref()), (12, None));

        let mut damaged = crate::kv::encode(&6u64);
        *damaged.last_mut().unwrap() ^= 0x01;
        tree.insert(b"sbad", damaged).unwrap();
        let reads = TreeReads::new(&tree);
        assert_eq!(reads.get(b"sgood"), Some(crate::kv::encode(&5u64)));
        assert_eq!(reads.get(b"sbad"), None, "a damaged record is never a value");
        let error = reads.check().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let text = error.to_string();
        assert!(text.contains("damaged state machine record sbad"), "{text}");

        let stored = stored_state(&db, 7, &snapshots).unwrap();
        assert_eq!(stored.applied, 0, "a damaged tree counts for nothing");
        assert!(stored.damaged.is_some_and(|damage| damage.contains("sbad")));
        drop_damaged_tree(&db, 7).unwrap();
        assert_eq!(stored_state(&db, 7, &snapshots).unwrap(), StoredState::default());

        let tree = db.open_tree("sm.7").unwrap();
        let mut applied_bytes = crate::kv::encode(&applied);
        applied_bytes[5] ^= 0x40;
        tree.insert(APPLIED_KEY, applied_bytes).unwrap();
        let stored = stored_state(&db, 7, &snapshots).unwrap();
        assert!(stored.damaged.is_some_and(|damage| damage.contains("_applied")), "a damaged applied state too");
        assert_eq!(stored.applied, 0);
    }
}
