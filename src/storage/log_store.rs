//! The Raft log and vote of every group on a node, in one fjall database.
//!
//! fjall keeps one journal for all its keyspaces, so one fsync makes the
//! appends of every group durable at once. A single writer thread owns all
//! writes: it commits each request to the journal (readable at once), then,
//! when its queue is empty or a batch bound is reached, calls one
//! `persist(SyncAll)` and only then completes the callbacks of every request
//! it wrote. openraft is told an append is durable only after that fsync.
//!
//! Keys: `logs` keyspace: group(u64 BE) index(u64 BE) → record(Entry);
//! `meta` keyspace: group(u64 BE) tag → record(value), tags `v` (vote),
//! `c` (committed), `p` (last purged log id). A record is crc32 (LE) of the
//! postcard bytes, then the bytes: a damaged record is an error, never a
//! value.
//!
//! Beside the journal, the [`crate::storage::marker`] keeps per group the
//! last index and vote term known fsynced: the writer raises it after each
//! fsync and lowers it before a truncation, so a node can tell a torn tail
//! from lost data at open ([`LogEngine::losses`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::RaftLogReader;

use crate::storage::marker::{self, Loss, Mark, Marker, Marks, Raise};
use crate::storage::types::{Entry, LogId, TypeConfig, Vote};

const TAG_VOTE: u8 = b'v';
const TAG_COMMITTED: u8 = b'c';
const TAG_PURGED: u8 = b'p';

type Completion = Box<dyn FnOnce(io::Result<()>) + Send>;

enum WriteOp {
    /// Key-value writes (None = remove) committed as one atomic batch.
    Write {
        writes: Vec<(Target, Vec<u8>, Option<Vec<u8>>)>,
        /// The marks these writes raise once fsynced.
        raises: Vec<Raise>,
        readable: tokio::sync::oneshot::Sender<io::Result<()>>,
        /// Called once fsynced; None: nobody waits for these writes to be
        /// durable, so they call for no fsync of their own and are made
        /// durable by the next one.
        durable: Option<Completion>,
    },
    /// Remove a key range of the logs keyspace.
    RemoveLogRange {
        from: Vec<u8>,
        to: Vec<u8>,
        /// A truncation: (group, the last index kept).
        truncate: Option<(u64, u64)>,
        readable: tokio::sync::oneshot::Sender<io::Result<()>>,
        durable: Completion,
    },
}

#[derive(Clone, Copy)]
enum Target {
    Logs,
    Meta,
}

/// The node's shared log engine; cheap to clone.
#[derive(Clone)]
pub struct LogEngine {
    inner: Arc<LogEngineInner>,
}

struct LogEngineInner {
    db: Database,
    logs: Keyspace,
    meta: Keyspace,
    writer: mpsc::SyncSender<WriteOp>,
    /// What the open found lost, and whether the marker was damaged.
    losses: Vec<Loss>,
    marker_damaged: Option<String>,
    /// Why the journal was set aside at open, if it was.
    set_aside: Option<String>,
    /// The groups the store or its marker knew at open.
    groups: Vec<u64>,
}

impl LogEngine {
    /// Opens (or creates) the engine in `dir` and starts its writer thread;
    /// its marker is kept beside `dir`. `sync_batch_len_max` bounds how many
    /// requests share one fsync.
    pub fn open(dir: &Path, sync_batch_len_max: usize) -> io::Result<LogEngine> {
        let marker_root = dir.parent().unwrap_or(dir).to_path_buf();
        let (durable, marker_damaged) = match marker::read(&marker_root) {
            Ok(marks) => (marks.unwrap_or_default(), None),
            Err(error @ marker::MarkerError::Damaged { .. }) => (Marks::new(), Some(error.to_string())),
            Err(error) => return Err(io::Error::other(error.to_string())),
        };
        let (db, set_aside) = match open_database(dir) {
            Ok(db) => (db, None),
            Err(Unopenable::Other(error)) => return Err(error),
            Err(Unopenable::Damaged(why)) => {
                // Kept for a post-mortem; the node starts on a new, empty
                // log and rejoins as a new incarnation.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|since| since.as_millis())
                    .unwrap_or(0);
                let aside = dir.with_extension(format!("damaged-{now_ms}"));
                std::fs::rename(dir, &aside)?;
                let why = format!("its raft log journal could not be recovered ({why}); moved to {}", aside.display());
                tracing::error!("{why}");
                (Database::builder(dir).open().map_err(fjall_error)?, Some(why))
            }
        };
        let logs = db.keyspace("logs", KeyspaceCreateOptions::default).map_err(fjall_error)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default).map_err(fjall_error)?;
        let damaged = drop_damaged(&db, &logs, &meta)?;
        let found = found_marks(&logs, &meta, durable.keys().copied())?;
        let mut losses = marker::find_losses(&durable, &found);
        for (group, damage) in damaged {
            tracing::error!(group, "raft log store: {damage}");
            if !losses.iter().any(|loss| loss.group == group) {
                let found = found.get(&group).copied().unwrap_or_default();
                let durable = durable.get(&group).copied().unwrap_or(found);
                losses.push(Loss { group, durable, found });
            }
        }
        let groups = found.keys().copied().collect();
        // Starting the marker lowers it to what was found, erasing the
        // evidence of a loss: the loss is recorded first.
        let mut lost: Vec<String> = set_aside.iter().chain(&marker_damaged).cloned().collect();
        lost.extend(losses.iter().map(ToString::to_string));
        if !lost.is_empty() {
            crate::storage::data_dir::record_loss(&marker_root, &lost.join("; "))?;
        }
        let marker = Marker::start(&marker_root, found)?;
        let (writer, requests) = mpsc::sync_channel(sync_batch_len_max.max(1) * 4);
        let thread_db = db.clone();
        let thread_logs = logs.clone();
        let thread_meta = meta.clone();
        let thread_marker = marker;
        std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || {
            write_loop(thread_db, thread_logs, thread_meta, thread_marker, requests, sync_batch_len_max.max(1))
        })?;
        let inner = LogEngineInner { db, logs, meta, writer, losses, marker_damaged, set_aside, groups };
        Ok(LogEngine { inner: Arc::new(inner) })
    }

    /// The groups whose log, at open, had lost entries or a vote that were
    /// fsynced (see [`crate::storage::marker`]).
    pub fn losses(&self) -> &[Loss] {
        &self.inner.losses
    }

    /// Why the journal was unrecoverable at open and set aside (the log
    /// then starts empty: everything in it is lost).
    pub fn set_aside(&self) -> Option<&str> {
        self.inner.set_aside.as_deref()
    }

    /// Why the marker could not be read at open (then losses cannot be
    /// ruled out).
    pub fn marker_damaged(&self) -> Option<&str> {
        self.inner.marker_damaged.as_deref()
    }

    /// The groups the store or its marker knew at open.
    pub fn groups(&self) -> &[u64] {
        &self.inner.groups
    }

    /// The log store of one group.
    pub fn group(&self, group_id: u64) -> LogStore {
        LogStore { engine: self.clone(), group_id }
    }

    pub fn disk_space_bytes(&self) -> u64 {
        self.inner.db.disk_space().unwrap_or(0)
    }

    async fn submit(
        &self,
        op_of: impl FnOnce(tokio::sync::oneshot::Sender<io::Result<()>>) -> WriteOp,
    ) -> io::Result<()> {
        let (readable_tx, readable_rx) = tokio::sync::oneshot::channel();
        let op = op_of(readable_tx);
        let writer = self.inner.writer.clone();
        // The channel is bounded: a full queue waits, off the async runtime.
        match writer.try_send(op) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(op)) => {
                crate::storage::blocking::run(move || writer.send(op))
                    .await
                    .map_err(io::Error::other)?
                    .map_err(|_| io::Error::other("raft log writer stopped"))?;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return Err(io::Error::other("raft log writer stopped")),
        }
        readable_rx.await.map_err(|_| io::Error::other("raft log writer stopped"))?
    }

    /// Writes and waits until they are durable.
    async fn write_durable(
        &self,
        writes: Vec<(Target, Vec<u8>, Option<Vec<u8>>)>,
        raises: Vec<Raise>,
    ) -> io::Result<()> {
        let (durable_tx, durable_rx) = tokio::sync::oneshot::channel();
        let durable: Completion = Box::new(move |result| {
            let _ = durable_tx.send(result);
        });
        self.submit(|readable| WriteOp::Write { writes, raises, readable, durable: Some(durable) }).await?;
        durable_rx.await.map_err(|_| io::Error::other("raft log writer stopped"))?
    }
}

/// Why a log store could not be opened.
enum Unopenable {
    /// Its files are damaged past what fjall recovers (an error, or a panic
    /// of its recovery: its debug assertions trip on some damage).
    Damaged(String),
    /// Anything else (permissions, a lock held by another process).
    Other(io::Error),
}

fn open_database(dir: &Path) -> Result<Database, Unopenable> {
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Database::builder(dir).open()));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(fjall::Error::Io(error)))
            if !matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData) =>
        {
            Err(Unopenable::Other(fjall_error(fjall::Error::Io(error))))
        }
        Ok(Err(error @ fjall::Error::Locked)) => Err(Unopenable::Other(fjall_error(error))),
        Ok(Err(error)) => Err(Unopenable::Damaged(error.to_string())),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|why| why.to_string()))
                .unwrap_or_else(|| "recovery panicked".into());
            Err(Unopenable::Damaged(format!("recovery failed: {why}")))
        }
    }
}

/// Whether a stored value's checksum matches (see [`encode_record`]).
fn record_is_sound(bytes: &[u8]) -> bool {
    bytes.split_first_chunk::<4>().is_some_and(|(crc, payload)| crc32fast::hash(payload) == u32::from_le_bytes(*crc))
}

fn group_of(key: &[u8]) -> Option<u64> {
    key.first_chunk::<8>().map(|group| u64::from_be_bytes(*group))
}

/// A damaged record found at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// A vote or log metadata record: the group's log and vote are dropped.
    Metadata,
    /// A log entry at this index: it and the entries after it are dropped.
    Entry(u64),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Metadata => write!(f, "a damaged vote or log metadata record: its log and vote are dropped"),
            Damage::Entry(index) => {
                write!(f, "a damaged log entry at index {index}: it and the entries after it are dropped")
            }
        }
    }
}

/// Checks every record's checksum at open. A damaged log entry drops it and
/// the rest of its group's log; a damaged vote or log metadata drops the
/// group's whole log and metadata (its state is then rebuilt from the
/// leader). Returns the groups that lost records, and why: records the node
/// had acknowledged, so it rejoins as a new incarnation.
fn drop_damaged(db: &Database, logs: &Keyspace, meta: &Keyspace) -> io::Result<BTreeMap<u64, Damage>> {
    let mut damaged: BTreeMap<u64, Damage> = BTreeMap::new();
    for item in meta.iter() {
        let (key, value) = item.into_inner().map_err(fjall_error)?;
        if let Some(group) = group_of(&key).filter(|_| !record_is_sound(&value)) {
            damaged.insert(group, Damage::Metadata);
        }
    }
    for item in logs.iter() {
        let (key, value) = item.into_inner().map_err(fjall_error)?;
        let Some(group) = group_of(&key) else { continue };
        if record_is_sound(&value) || damaged.contains_key(&group) {
            continue;
        }
        let index = key.get(8..16).map(|bytes| u64::from_be_bytes(bytes.try_into().expect("8 bytes"))).unwrap_or(0);
        damaged.insert(group, Damage::Entry(index));
    }
    if damaged.is_empty() {
        return Ok(damaged);
    }
    let mut batch = db.batch();
    for (group, damage) in &damaged {
        let from = match damage {
            Damage::Entry(index) => {
                // The committed id may lie past the entries that remain; a
                // lost committed id is re-learned from the leader.
                let mut key = group.to_be_bytes().to_vec();
                key.push(TAG_COMMITTED);
                batch.remove(meta, key);
                *index
            }
            Damage::Metadata => {
                for tag in [TAG_VOTE, TAG_COMMITTED, TAG_PURGED] {
                    let mut key = group.to_be_bytes().to_vec();
                    key.push(tag);
                    batch.remove(meta, key);
                }
                0
            }
        };
        for item in logs.range(log_key(*group, from)..=log_key(*group, u64::MAX)) {
            batch.remove(logs, item.key().map_err(fjall_error)?);
        }
    }
    batch.commit().map_err(fjall_error)?;
    db.persist(PersistMode::SyncAll).map_err(fjall_error)?;
    Ok(damaged)
}

/// Per group, the last index and vote term the store holds: of every group
/// with metadata or named in `also`.
fn found_marks(logs: &Keyspace, meta: &Keyspace, also: impl Iterator<Item = u64>) -> io::Result<Marks> {
    let mut found = Marks::new();
    for group in also {
        found.entry(group).or_default();
    }
    for item in meta.iter() {
        let (key, value) = item.into_inner().map_err(fjall_error)?;
        let Some((group, tag)) =
            key.split_first_chunk::<8>().and_then(|(g, rest)| Some((u64::from_be_bytes(*g), *rest.first()?)))
        else {
            continue;
        };
        let mark = found.entry(group).or_default();
        match tag {
            TAG_VOTE => {
                let vote: Vote = decode_record("vote", &value)?;
                mark.vote_term = vote.leader_id.term;
            }
            TAG_PURGED => {
                let purged: LogId = decode_record("purged log id", &value)?;
                mark.last_index = mark.last_index.max(purged.index);
            }
            _ => {}
        }
    }
    for (group, mark) in found.iter_mut() {
        let (from, to) = (log_key(*group, 0), log_key(*group, u64::MAX));
        if let Some(item) = logs.range(from..=to).next_back() {
            let key = item.key().map_err(fjall_error)?;
            let index = key.get(8..16).map(|bytes| u64::from_be_bytes(bytes.try_into().expect("8 bytes"))).unwrap_or(0);
            *mark = Mark { last_index: mark.last_index.max(index), ..*mark };
        }
    }
    Ok(found)
}

fn log_key(group: u64, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

fn write_loop(
    db: Database,
    logs: Keyspace,
    meta: Keyspace,
    marker: Arc<Marker>,
    requests: mpsc::Receiver<WriteOp>,
    batch_len_max: usize,
) {
    let mut waiting: Vec<Completion> = Vec::with_capacity(batch_len_max);
    let mut raised: Vec<Raise> = Vec::new();
    while let Ok(first) = requests.recv() {
        let mut next = Some(first);
        while let Some(op) = next.take() {
            let (readable, durable, result): (_, Option<Completion>, _) = match op {
                WriteOp::Write { writes, raises, readable, durable } => {
                    raised.extend(raises);
                    let mut batch = db.batch();
                    for (target, key, value) in writes {
                        let keyspace = match target {
                            Target::Logs => &logs,
                            Target::Meta => &meta,
                        };
                        match value {
                            Some(value) => batch.insert(keyspace, key, value),
                            None => batch.remove(keyspace, key),
                        }
                    }
                    (readable, durable, batch.commit().map_err(fjall_error))
                }
                WriteOp::RemoveLogRange { from, to, truncate, readable, durable } => {
                    let result = (|| {
                        if let Some((group, kept)) = truncate {
                            // Marks not yet fsynced past the cut must not
                            // be raised, and the file must not claim them.
                            for raise in raised.iter_mut() {
                                if let Raise::LastIndex(g, index) = raise {
                                    if *g == group && *index > kept {
                                        *index = kept;
                                    }
                                }
                            }
                            marker.lower(group, kept)?;
                        }
                        let mut batch = db.batch();
                        for item in logs.range(from..to) {
                            let key = item.key().map_err(fjall_error)?;
                            batch.remove(&logs, key);
                        }
                        batch.commit().map_err(fjall_error)
                    })();
                    (readable, Some(durable), result)
                }
            };
            let failed = result.as_ref().err().map(clone_io_error);
            let _ = readable.send(result);
            match (failed, durable) {
                (_, None) => {}
                (Some(error), Some(durable)) => durable(Err(error)),
                (None, Some(durable)) => waiting.push(durable),
            }
            if waiting.len() < batch_len_max {
                next = requests.try_recv().ok();
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let fsync_began = std::time::Instant::now();
        let synced = db.persist(PersistMode::SyncAll).map_err(fjall_error);
        crate::stages::since(crate::stages::Stage::LogFsync, fsync_began);
        crate::stages::count(crate::stages::Stage::FsyncWrites, waiting.len() as u64);
        if synced.is_ok() {
            marker.raise(&raised);
        }
        raised.clear();
        for durable in waiting.drain(..) {
            durable(synced.as_ref().map(|_| ()).map_err(clone_io_error));
        }
    }
}

fn clone_io_error(error: &io::Error) -> io::Error {
    io::Error::new(error.kind(), error.to_string())
}

fn fjall_error(error: fjall::Error) -> io::Error {
    io::Error::other(format!("raft log store: {error}"))
}

/// Encodes one stored value: crc32 (LE) of its postcard bytes, then them.
pub fn encode_record<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let payload = postcard::to_stdvec(value).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(payload.len() + 4);
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    Ok(bytes)
}

/// Decodes one stored value of the log store (`what` names it in the
/// error): a log entry, or a vote, committed or purged log id. A value
/// whose checksum does not match is damaged.
pub fn decode_record<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> io::Result<T> {
    let corrupt =
        |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("raft log store: corrupt {what}: {why}"));
    let (crc, payload) = bytes.split_first_chunk::<4>().ok_or_else(|| corrupt("shorter than its checksum".into()))?;
    if crc32fast::hash(payload) != u32::from_le_bytes(*crc) {
        return Err(corrupt("checksum mismatch".into()));
    }
    postcard::from_bytes(payload).map_err(|error| corrupt(error.to_string()))
}

/// One group's view of the engine: its log store and log reader.
#[derive(Clone)]
pub struct LogStore {
    engine: LogEngine,
    group_id: u64,
}

impl LogStore {
    fn log_key(&self, index: u64) -> Vec<u8> {
        log_key(self.group_id, index)
    }

    fn meta_key(&self, tag: u8) -> Vec<u8> {
        let mut key = Vec::with_capacity(9);
        key.extend_from_slice(&self.group_id.to_be_bytes());
        key.push(tag);
        key
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, tag: u8) -> io::Result<Option<T>> {
        let Some(bytes) = self.engine.inner.meta.get(self.meta_key(tag)).map_err(fjall_error)? else {
            return Ok(None);
        };
        decode_record("metadata", &bytes).map(Some)
    }

    fn last_entry(&self) -> io::Result<Option<Entry>> {
        let from = self.log_key(0);
        let to = self.log_key(u64::MAX);
        let Some(item) = self.engine.inner.logs.range(from..=to).next_back() else {
            return Ok(None);
        };
        let value = item.value().map_err(fjall_error)?;
        decode_record("log entry", &value).map(Some)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(index) => *index,
            Bound::Excluded(index) => index.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(index) => Bound::Included(self.log_key(*index)),
            Bound::Excluded(index) => Bound::Excluded(self.log_key(*index)),
            Bound::Unbounded => Bound::Included(self.log_key(u64::MAX)),
        };
        let mut entries = Vec::new();
        for item in self.engine.inner.logs.range((Bound::Included(self.log_key(start)), end)) {
            let value = item.value().map_err(fjall_error)?;
            let entry: Entry = decode_record("log entry", &value)?;
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.read_meta(TAG_VOTE)
    }

    /// Replication reads its next batch here and sends it after the entry
    /// before `start`: so the batch must begin at `start`. Once `start` is
    /// purged (a snapshot purged the log while a slow follower's stream read
    /// it), nothing is returned, and the leader sends a snapshot instead.
    /// Returning the entries that survive would make a request with a hole
    /// in it.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        let entries = self.try_get_log_entries(start..end).await?;
        Ok(contiguous_from(start, entries))
    }
}

/// `entries` if they begin at `start`, else none.
pub fn contiguous_from<E: openraft::entry::RaftEntry>(start: u64, entries: Vec<E>) -> Vec<E> {
    match entries.first() {
        Some(first) if first.index() == start => entries,
        _ => Vec::new(),
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta(TAG_PURGED)?;
        // Entries at or below the purge point may survive a crash between
        // recording the purge and removing them: they do not count.
        let last_log_id = match self.last_entry()? {
            Some(entry) if Some(entry.log_id) > last_purged_log_id => Some(entry.log_id),
            _ => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let value = encode_record(vote)?;
        let raises = vec![Raise::VoteTerm(self.group_id, vote.leader_id.term)];
        self.engine.write_durable(vec![(Target::Meta, self.meta_key(TAG_VOTE), Some(value))], raises).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not awaited for durability: a lost committed id only means a
        // restarted node re-learns it from the leader.
        let value = encode_record(&committed)?;
        let writes = vec![(Target::Meta, self.meta_key(TAG_COMMITTED), Some(value))];
        self.engine.submit(|readable| WriteOp::Write { writes, raises: Vec::new(), readable, durable: None }).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta::<Option<LogId>>(TAG_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut writes = Vec::new();
        let mut last = None;
        for entry in entries {
            let value = encode_record(&entry)?;
            last = Some(entry.log_id.index);
            writes.push((Target::Logs, self.log_key(entry.log_id.index), Some(value)));
        }
        let raises = last.map(|index| Raise::LastIndex(self.group_id, index)).into_iter().collect();
        let called = std::time::Instant::now();
        let durable: Completion = Box::new(move |result| {
            crate::stages::since(crate::stages::Stage::LogAppend, called);
            callback.io_completed(result)
        });
        self.engine.submit(|readable| WriteOp::Write { writes, raises, readable, durable: Some(durable) }).await
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let kept = last_log_id.map(|log_id| log_id.index).unwrap_or(0);
        let from = match last_log_id {
            Some(log_id) => self.log_key(log_id.index + 1),
            None => self.log_key(0),
        };
        let to = self.log_key(u64::MAX);
        let truncate = Some((self.group_id, kept));
        self.engine
            .submit(|readable| WriteOp::RemoveLogRange { from, to, truncate, readable, durable: Box::new(|_| {}) })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.purge_through(log_id).await
    }
}

impl LogStore {
    /// Forgets the group's log: its entries (lowering the marker), then its
    /// purge point and committed id; the vote stays. For a replica whose
    /// state can no longer be rebuilt from its log: it starts empty and is
    /// caught up by its leader. A crash midway leaves a log that still
    /// starts past the state, and the next start forgets it again.
    pub async fn forget_log(&mut self) -> io::Result<()> {
        RaftLogStorage::truncate_after(self, None).await?;
        let writes =
            vec![(Target::Meta, self.meta_key(TAG_PURGED), None), (Target::Meta, self.meta_key(TAG_COMMITTED), None)];
        self.engine.write_durable(writes, Vec::new()).await
    }

    async fn purge_through(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // Record the purge point first, so a crash never leaves a log whose
        // head is missing without saying so.
        let value = encode_record(&log_id)?;
        self.engine.write_durable(vec![(Target::Meta, self.meta_key(TAG_PURGED), Some(value))], Vec::new()).await?;
        let from = self.log_key(0);
        let to = self.log_key(log_id.index + 1);
        self.engine
            .submit(|readable| WriteOp::RemoveLogRange {
                from,
                to,
                truncate: None,
                readable,
                durable: Box::new(|_| {}),
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::blank_ent;

    #[test]
    fn a_damaged_record_drops_the_rest_of_its_groups_log_and_counts_as_a_loss() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().join("raft-log");
        {
            let engine = LogEngine::open(&log_dir, 8).unwrap();
            let inner = &engine.inner;
            for (group, last) in [(7u64, 5u64), (8, 3)] {
                for index in 1..=last {
                    let entry = encode_record(&blank_ent::<TypeConfig>(1, 1, index)).unwrap();
                    inner.logs.insert(log_key(group, index), entry).unwrap();
                }
            }
            // Both groups had committed their last entry.
            for (group, last) in [(7u64, 5u64), (8, 3)] {
                let mut key = group.to_be_bytes().to_vec();
                key.push(TAG_COMMITTED);
                inner
                    .meta
                    .insert(key, encode_record(&Some(blank_ent::<TypeConfig>(1, 1, last).log_id)).unwrap())
                    .unwrap();
            }
            let mut damaged = encode_record(&blank_ent::<TypeConfig>(1, 1, 3)).unwrap();
            damaged[6] ^= 0x10;
            inner.logs.insert(log_key(7, 3), damaged).unwrap();
            inner.db.persist(PersistMode::SyncAll).unwrap();
        }
        let engine = LogEngine::open(&log_dir, 8).unwrap();
        let lost: Vec<u64> = engine.losses().iter().map(|loss| loss.group).collect();
        assert_eq!(lost, vec![7], "the group with the damaged entry lost data");
        let indexes = |group: u64| -> Vec<u64> {
            engine
                .inner
                .logs
                .range(log_key(group, 0)..=log_key(group, u64::MAX))
                .map(|item| u64::from_be_bytes(item.key().unwrap()[8..16].try_into().unwrap()))
                .collect()
        };
        assert_eq!(indexes(7), vec![1, 2], "the damaged entry and those after it are dropped");
        assert_eq!(indexes(8), vec![1, 2, 3], "other groups are left alone");
        let committed = |group: u64| {
            let mut key = group.to_be_bytes().to_vec();
            key.push(TAG_COMMITTED);
            engine.inner.meta.get(key).unwrap().is_some()
        };
        assert!(!committed(7), "a committed id past the remaining entries is forgotten");
        assert!(committed(8), "other groups keep theirs");
        assert!(decode_record::<Entry>("log entry", &[0, 0, 0, 0, 1]).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn a_replication_batch_never_skips_purged_entries() {
        let surviving: Vec<Entry> = (152..160).map(|index| blank_ent::<TypeConfig>(2, 3, index)).collect();
        assert!(contiguous_from(122, surviving.clone()).is_empty(), "a batch after 121 cannot start at 152");
        assert_eq!(contiguous_from(152, surviving.clone()), surviving);
        assert!(contiguous_from::<Entry>(5, Vec::new()).is_empty());
    }
}
