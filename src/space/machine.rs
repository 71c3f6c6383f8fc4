//! The apply logic of a space cluster's state machine.
//!
//! [`SpaceMachine::apply`] turns one command into writes on an [`Overlay`]
//! (pending writes over a [`KvRead`]) and a result. The storage shell commits
//! the overlay atomically together with the applied log id, so a replica's
//! state is always the result of applying a prefix of the log.
//!
//! Idempotency keys are kept in each stored message; the [`DedupIndex`] that
//! answers "has this key committed?" lives in memory and is a pure function
//! of the stored messages (the keys of each space's newest
//! `dedup_window_len` retained messages), rebuilt from them on open and after
//! a snapshot install. So a post costs one stored write, and every replica's
//! index is the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::command::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};
use super::record::{self, MessageBlock, MessageRecord, SpaceRecord, BLOCK_BYTES_MAX, BLOCK_MESSAGES_MAX};
use super::validate;

pub use crate::kv::KvRead;

impl<R: KvRead> crate::kv::Staging for Overlay<'_, R> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        Overlay::get(self, key)
    }

    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        Overlay::insert(self, key, value)
    }

    fn remove(&mut self, key: Vec<u8>) {
        Overlay::remove(self, key)
    }
}

/// Writes of one apply batch, visible to later commands of the same batch
/// before they reach the store. `None` marks a removal.
pub struct Overlay<'a, R: KvRead> {
    base: &'a R,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Space records read or changed in this batch, decoded once and
    /// encoded once however many posts of the batch touch them.
    spaces: BTreeMap<String, SpaceRecord>,
    /// The block each space's new messages of this batch go into.
    open_blocks: BTreeMap<String, (MessageBlock, usize)>,
}

impl<'a, R: KvRead> Overlay<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Overlay { base, pending: BTreeMap::new(), spaces: BTreeMap::new(), open_blocks: BTreeMap::new() }
    }

    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(pending) => pending.clone(),
            None => self.base.get(key),
        }
    }

    pub fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// The writes to commit, in key order.
    pub fn into_writes(mut self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        for (name, (block, _)) in std::mem::take(&mut self.open_blocks) {
            self.pending.insert(record::message_key(&name, block.first_seq), Some(record::encode(&block)));
        }
        for (name, space) in std::mem::take(&mut self.spaces) {
            self.pending.insert(record::space_key(&name), Some(record::encode(&space)));
        }
        self.pending
    }

    fn space(&mut self, name: &str) -> Option<&mut SpaceRecord> {
        if !self.spaces.contains_key(name) {
            let bytes = self.get(&record::space_key(name))?;
            let space: SpaceRecord = record::decode(&bytes).expect("space records are written by this module");
            self.spaces.insert(name.to_string(), space);
        }
        self.spaces.get_mut(name)
    }

    /// Appends the message with seq `seq` (the space's next) to the batch's
    /// open block of `space`, starting a new block when it is full.
    fn append_message(&mut self, space: &str, seq: u64, message: MessageRecord) {
        let size = message.body.len() + message.author.len() + message.idempotency_key.len() + 16;
        if let Some((block, bytes)) = self.open_blocks.get_mut(space) {
            debug_assert_eq!(block.end_seq(), seq);
            if block.messages.len() < BLOCK_MESSAGES_MAX && *bytes + size <= BLOCK_BYTES_MAX {
                block.messages.push(message);
                *bytes += size;
                return;
            }
            let (full, _) = self.open_blocks.remove(space).expect("present");
            self.pending.insert(record::message_key(space, full.first_seq), Some(record::encode(&full)));
        }
        self.open_blocks.insert(space.to_string(), (MessageBlock { first_seq: seq, messages: vec![message] }, size));
    }

    /// Removes the blocks of `space` that hold only seqs below `first_seq`.
    fn remove_blocks_below(&mut self, space: &str, first_seq: u64) {
        let start = record::message_key(space, 0);
        let end = record::message_key(space, first_seq);
        let mut keys: BTreeSet<Vec<u8>> = self.base.keys_between(&start, &end).into_iter().collect();
        for (key, value) in self.pending.range(start.clone()..=end.clone()) {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        // Blocks are contiguous: every block starting at or below
        // `first_seq` except the last one ends below it.
        let last_open_start = self.open_blocks.get(space).map(|(block, _)| block.first_seq);
        let mut starts: Vec<Vec<u8>> = keys.into_iter().collect();
        if last_open_start.is_none_or(|open_start| open_start > first_seq) {
            starts.pop();
        }
        for key in starts {
            self.pending.insert(key, None);
        }
    }

    /// Removes every message block of `space`.
    fn remove_all_blocks(&mut self, space: &str) {
        self.open_blocks.remove(space);
        let start = record::message_key(space, 0);
        let end = record::message_key(space, u64::MAX);
        let mut keys: BTreeSet<Vec<u8>> = self.base.keys_between(&start, &end).into_iter().collect();
        keys.extend(self.pending.range(start..=end).map(|(key, _)| key.clone()));
        for key in keys {
            self.pending.insert(key, None);
        }
    }

    /// The seq after the last message block of `space`; 0 when it has none.
    fn blocks_end_seq(&self, space: &str) -> u64 {
        let start = record::message_key(space, 0);
        let end = record::message_key(space, u64::MAX);
        let mut keys: BTreeSet<Vec<u8>> = self.base.keys_between(&start, &end).into_iter().collect();
        for (key, value) in self.pending.range(start..=end) {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        let last_block = keys.last().and_then(|key| self.get(key));
        let open_block_end_seq = self.open_blocks.get(space).map(|(block, _)| block.end_seq());
        let stored_end_seq = last_block.map(|bytes| {
            let block: MessageBlock = record::decode(&bytes).expect("message blocks are written by this module");
            block.end_seq()
        });
        stored_end_seq.max(open_block_end_seq).unwrap_or(0)
    }

    fn put_space(&mut self, space: SpaceRecord) {
        self.spaces.insert(space.name.clone(), space);
    }

    /// Removes a space's record and every message block.
    fn remove_space(&mut self, name: &str) {
        self.remove_all_blocks(name);
        self.spaces.remove(name);
        self.pending.insert(record::space_key(name), None);
    }
}

/// The idempotency keys of each space's newest `dedup_window_len` retained
/// messages, by (author, key): a key is its author's, so one user reusing
/// another's key posts anew instead of getting the other's seq (and cannot
/// suppress the other's posts).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DedupIndex {
    spaces: HashMap<String, SpaceKeys>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SpaceKeys {
    seq_by_key: HashMap<String, u64>,
    /// Keyed messages in seq order, to expire them oldest first.
    by_seq: VecDeque<(u64, String)>,
}

/// The index's key for `author`'s idempotency key `key` (names never hold
/// a NUL: apply checks them).
fn scoped(author: &str, key: &str) -> String {
    format!("{author}\0{key}")
}

impl DedupIndex {
    /// The seq at which `author` committed `key` in `space`, if remembered.
    pub fn lookup(&self, space: &str, author: &str, key: &str) -> Option<u64> {
        self.spaces.get(space)?.seq_by_key.get(&scoped(author, key)).copied()
    }

    /// Records that `author`'s `key` committed at `seq` (seqs arrive in
    /// order per space).
    pub fn record(&mut self, space: &str, author: &str, key: &str, seq: u64) {
        let key = scoped(author, key);
        let key = key.as_str();
        let keys = self.spaces.entry(space.to_string()).or_default();
        debug_assert!(keys.by_seq.back().is_none_or(|(last, _)| *last < seq));
        keys.seq_by_key.insert(key.to_string(), seq);
        keys.by_seq.push_back((seq, key.to_string()));
    }

    /// Forgets the keys of messages below `oldest_kept_seq`.
    pub fn expire(&mut self, space: &str, oldest_kept_seq: u64) {
        let Some(keys) = self.spaces.get_mut(space) else { return };
        while let Some((seq, _)) = keys.by_seq.front() {
            if *seq >= oldest_kept_seq {
                break;
            }
            let (seq, key) = keys.by_seq.pop_front().expect("front exists");
            if keys.seq_by_key.get(&key) == Some(&seq) {
                keys.seq_by_key.remove(&key);
            }
        }
    }

    /// Adds a space's remembered keys from its stored messages (`(seq,
    /// author, key)` in seq order), as on open or after a snapshot install.
    pub fn rebuild_space(&mut self, space: &SpaceRecord, messages: impl Iterator<Item = (u64, String, String)>) {
        let oldest = oldest_remembered_seq(space);
        for (seq, author, key) in messages {
            if seq >= oldest && seq <= space.last_seq && !key.is_empty() {
                self.record(&space.name, &author, &key, seq);
            }
        }
    }

    pub fn clear(&mut self) {
        self.spaces.clear();
    }

    /// Forgets every key of `space` (its messages are being replaced).
    pub fn forget(&mut self, space: &str) {
        self.spaces.remove(space);
    }

    pub fn len(&self) -> usize {
        self.spaces.values().map(|keys| keys.seq_by_key.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The dedup index of a stored state: each space's remembered keys, read
/// from its records and message blocks (on open, after a snapshot install).
pub fn rebuild_dedup_index<R: KvRead>(store: &R) -> Result<DedupIndex, postcard::Error> {
    let mut index = DedupIndex::default();
    for space_key in store.keys_between(&[record::SPACE_PREFIX], &[record::SPACE_PREFIX + 1]) {
        if space_key.first() != Some(&record::SPACE_PREFIX) {
            continue;
        }
        let Some(bytes) = store.get(&space_key) else { continue };
        let space: SpaceRecord = record::decode(&bytes)?;
        if space.last_seq == 0 {
            continue;
        }
        let oldest = oldest_remembered_seq(&space);
        let mut messages = Vec::new();
        let block_keys =
            store.keys_between(&record::message_key(&space.name, 0), &record::message_key(&space.name, space.last_seq));
        for block_key in block_keys {
            let Some(bytes) = store.get(&block_key) else { continue };
            let block: MessageBlock = record::decode(&bytes)?;
            if block.end_seq() <= oldest {
                continue;
            }
            for (offset, message) in block.messages.into_iter().enumerate() {
                messages.push((block.first_seq + offset as u64, message.author, message.idempotency_key));
            }
        }
        index.rebuild_space(&space, messages.into_iter());
    }
    Ok(index)
}

/// The oldest seq whose key a space still remembers, once `last_seq` is
/// its newest message. Saturates: a record read back from a store or a
/// snapshot is not trusted to be far from u64::MAX.
pub fn oldest_remembered_seq(space: &SpaceRecord) -> u64 {
    space.last_seq.saturating_add(1).saturating_sub(space.dedup_window_len).max(space.first_seq).max(1)
}

/// Checks what a command carries against the protocol's ceilings; posts
/// are checked one by one (a bad post refuses only itself).
fn check_command(command: &Command) -> Result<(), validate::InvalidRequest> {
    match command {
        Command::Posts(_) => Ok(()),
        other => validate::check_command(other, &validate::CEILINGS),
    }
}

/// The result of a command refused before it changed anything.
fn refusal(command: &Command, error: ApplyError) -> CommandResult {
    match command {
        Command::CreateSpace { .. } => CommandResult::SpaceCreated { existed: false, result: Err(error) },
        Command::Posts(posts) => CommandResult::Posts(vec![Err(error); posts.len()]),
        Command::SealSpace { .. } => CommandResult::Sealed(Err(error)),
        Command::ImportSpace { .. } => CommandResult::Imported(Err(error)),
        Command::UpdateMembers { .. } => CommandResult::MembersUpdated(Err(error)),
        Command::DeleteSpace { .. } => CommandResult::Deleted(Err(error)),
        Command::DropSealed { .. } => CommandResult::SealedDropped(Err(error)),
        Command::Meta(_) => CommandResult::None,
    }
}

/// Stateless: all state lives in the store the overlay reads and the index.
pub struct SpaceMachine;

impl SpaceMachine {
    /// Applies one command committed at `log_index`.
    pub fn apply<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        dedup: &mut DedupIndex,
        log_index: u64,
        command: &Command,
    ) -> CommandResult {
        if let Err(invalid) = check_command(command) {
            return refusal(command, invalid.into());
        }
        match command {
            Command::CreateSpace { name, members, attrs, dedup_window_len, retain_messages_max } => {
                let wanted = SpaceRecord {
                    name: name.clone(),
                    members: members.iter().cloned().collect::<BTreeSet<_>>(),
                    attrs: attrs.clone(),
                    last_seq: 0,
                    first_seq: 1,
                    dedup_window_len: *dedup_window_len,
                    retain_messages_max: *retain_messages_max,
                    moved_to: None,
                    importing: false,
                };
                Self::create_space(overlay, wanted)
            }
            Command::Posts(posts) => {
                let results = posts
                    .iter()
                    .map(|post| match validate::check_post(post, &validate::CEILINGS) {
                        Ok(()) => Self::post(overlay, dedup, log_index, post),
                        Err(invalid) => Err(invalid.into()),
                    })
                    .collect();
                CommandResult::Posts(results)
            }
            Command::Meta(meta) => CommandResult::Meta(crate::meta::directory::apply(overlay, meta)),
            Command::SealSpace { name, to } => CommandResult::Sealed(Self::seal(overlay, name, *to)),
            Command::ImportSpace { record, blocks, first, last } => {
                CommandResult::Imported(Self::import(overlay, dedup, record, blocks, *first, *last))
            }
            Command::UpdateMembers { name, add, remove, members_len_max } => {
                let updated = Self::update_members(overlay, name, add, remove, *members_len_max);
                CommandResult::MembersUpdated(updated.map(|record| (record, log_index)))
            }
            Command::DeleteSpace { name } => CommandResult::Deleted(Self::delete(overlay, dedup, log_index, name)),
            Command::DropSealed { name } => CommandResult::SealedDropped(Self::drop_sealed(overlay, dedup, name)),
        }
    }

    /// Whether a space of this name was deleted here.
    pub fn is_deleted<R: KvRead>(overlay: &Overlay<'_, R>, name: &str) -> bool {
        overlay.get(&record::deleted_key(name)).is_some()
    }

    fn update_members<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        name: &str,
        add: &[String],
        remove: &[String],
        members_len_max: u64,
    ) -> Result<SpaceRecord, ApplyError> {
        let Some(space) = overlay.space(name) else {
            return Err(ApplyError::UnknownSpace { space: name.to_string() });
        };
        if let Some(to) = space.moved_to {
            return Err(ApplyError::Moved { space: name.to_string(), to });
        }
        if space.importing {
            return Err(ApplyError::Importing { space: name.to_string() });
        }
        let mut members = space.members.clone();
        members.extend(add.iter().cloned());
        for user in remove {
            members.remove(user);
        }
        if members.is_empty() {
            return Err(ApplyError::NoMembersLeft { space: name.to_string() });
        }
        let len = members.len() as u64;
        if len > members_len_max && len > space.members.len() as u64 {
            return Err(ApplyError::TooManyMembers { space: name.to_string(), len, max: members_len_max });
        }
        space.members = members;
        Ok(space.clone())
    }

    fn drop_sealed<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        dedup: &mut DedupIndex,
        name: &str,
    ) -> Result<u64, ApplyError> {
        let Some(space) = overlay.space(name) else {
            return Err(ApplyError::UnknownSpace { space: name.to_string() });
        };
        if space.moved_to.is_none() {
            return Err(ApplyError::NotSealed { space: name.to_string() });
        }
        let dropped = (space.last_seq + 1).saturating_sub(space.first_seq);
        space.first_seq = space.last_seq + 1;
        overlay.remove_all_blocks(name);
        dedup.forget(name);
        Ok(dropped)
    }

    fn delete<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        dedup: &mut DedupIndex,
        log_index: u64,
        name: &str,
    ) -> Result<Option<u64>, ApplyError> {
        let Some(space) = Self::read_space(overlay, name) else {
            return if Self::is_deleted(overlay, name) {
                Ok(None)
            } else {
                Err(ApplyError::UnknownSpace { space: name.to_string() })
            };
        };
        if space.importing {
            return Err(ApplyError::Importing { space: name.to_string() });
        }
        overlay.remove_space(name);
        dedup.forget(name);
        overlay.insert(record::deleted_key(name), record::encode(&log_index));
        Ok(Some(space.last_seq))
    }

    pub fn read_space<R: KvRead>(overlay: &mut Overlay<'_, R>, name: &str) -> Option<SpaceRecord> {
        overlay.space(name).cloned()
    }

    fn create_space<R: KvRead>(overlay: &mut Overlay<'_, R>, wanted: SpaceRecord) -> CommandResult {
        if Self::is_deleted(overlay, &wanted.name) {
            return CommandResult::SpaceCreated {
                existed: false,
                result: Err(ApplyError::Deleted { space: wanted.name }),
            };
        }
        if let Some(existing) = Self::read_space(overlay, &wanted.name) {
            // A retried create of the same space succeeds without change;
            // anything else under the same name is a conflict.
            let same = existing.members == wanted.members && existing.attrs == wanted.attrs;
            let result = if same { Ok(()) } else { Err(ApplyError::SpaceExists { space: wanted.name }) };
            return CommandResult::SpaceCreated { existed: true, result };
        }
        overlay.put_space(wanted);
        CommandResult::SpaceCreated { existed: false, result: Ok(()) }
    }

    fn seal<R: KvRead>(overlay: &mut Overlay<'_, R>, name: &str, to: u64) -> Result<SpaceRecord, ApplyError> {
        let Some(space) = overlay.space(name) else {
            return Err(ApplyError::UnknownSpace { space: name.to_string() });
        };
        if space.importing {
            return Err(ApplyError::Importing { space: name.to_string() });
        }
        space.moved_to = Some(to);
        Ok(space.clone())
    }

    fn import<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        dedup: &mut DedupIndex,
        wanted: &SpaceRecord,
        blocks: &[MessageBlock],
        first: bool,
        last: bool,
    ) -> Result<(), ApplyError> {
        let name = wanted.name.as_str();
        let existing = overlay.space(name).cloned();
        if first {
            match &existing {
                // Copied already (a move run again after it finished here).
                Some(space) if !space.importing && space.moved_to.is_none() => {
                    return if space.last_seq == wanted.last_seq {
                        Ok(())
                    } else {
                        Err(ApplyError::SpaceExists { space: name.to_string() })
                    };
                }
                // A copy cut short, or an old sealed copy: start over.
                Some(_) => {
                    overlay.remove_all_blocks(name);
                    dedup.forget(name);
                }
                None => {}
            }
            let record = SpaceRecord { moved_to: None, importing: true, ..wanted.clone() };
            overlay.put_space(record);
        } else if !existing.as_ref().is_some_and(|space| space.importing) {
            // Chunks after a finished copy: nothing to do.
            return Ok(());
        }
        // Every chunk carries the sealed record, and its blocks come after
        // those of the chunks before it: the dedup index takes seqs in
        // order, and a block never overlaps another.
        let inconsistent = |why: String| ApplyError::Invalid { field: "blocks".into(), too_large: false, why };
        let imported = overlay.space(name).expect("put above or importing");
        if (imported.first_seq, imported.last_seq) != (wanted.first_seq, wanted.last_seq) {
            return Err(inconsistent(format!("space copy of {name:?}: a chunk names other seqs than the first chunk")));
        }
        let imported_end_seq = overlay.blocks_end_seq(name);
        if blocks.first().is_some_and(|block| block.first_seq < imported_end_seq) {
            return Err(inconsistent(format!(
                "space copy of {name:?}: a chunk's blocks start below seq {imported_end_seq}, the end of the blocks copied before"
            )));
        }
        let oldest = oldest_remembered_seq(wanted);
        for block in blocks {
            overlay.insert(record::message_key(name, block.first_seq), record::encode(block));
            for (offset, message) in block.messages.iter().enumerate() {
                let seq = block.first_seq + offset as u64;
                if seq >= oldest && !message.idempotency_key.is_empty() {
                    dedup.record(name, &message.author, &message.idempotency_key, seq);
                }
            }
        }
        if last {
            let space = overlay.space(name).expect("put above");
            space.importing = false;
        }
        Ok(())
    }

    fn post<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        dedup: &mut DedupIndex,
        log_index: u64,
        post: &PostCommand,
    ) -> Result<PostOutcome, ApplyError> {
        let Some(space) = overlay.space(&post.space) else {
            return Err(ApplyError::UnknownSpace { space: post.space.clone() });
        };
        if let Some(to) = space.moved_to {
            return Err(ApplyError::Moved { space: post.space.clone(), to });
        }
        if space.importing {
            return Err(ApplyError::Importing { space: post.space.clone() });
        }
        if !space.members.contains(&post.author) {
            return Err(ApplyError::NotMember { space: post.space.clone(), user: post.author.clone() });
        }
        let has_key = !post.idempotency_key.is_empty();
        if has_key {
            if let Some(seq) = dedup.lookup(&post.space, &post.author, &post.idempotency_key) {
                return Ok(PostOutcome { seq, duplicate: true });
            }
        }

        let space = overlay.space(&post.space).expect("read above");
        let seq = space.last_seq + 1;
        space.last_seq = seq;
        let retain = space.retain_messages_max;
        let mut first_seq = space.first_seq;
        let message = MessageRecord {
            author: post.author.clone(),
            body: post.body.clone(),
            idempotency_key: post.idempotency_key.clone(),
            log_index,
        };
        overlay.append_message(&post.space, seq, message);
        if retain > 0 && seq + 1 - first_seq > retain {
            first_seq = seq + 1 - retain;
            overlay.remove_blocks_below(&post.space, first_seq);
        }
        let space = overlay.space(&post.space).expect("read above");
        space.first_seq = first_seq;
        debug_assert!(space.first_seq >= 1 && space.first_seq <= space.last_seq + 1);
        let oldest_remembered = oldest_remembered_seq(space);
        if has_key {
            dedup.record(&post.space, &post.author, &post.idempotency_key, seq);
        }
        dedup.expire(&post.space, oldest_remembered);
        Ok(PostOutcome { seq, duplicate: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Store = BTreeMap<Vec<u8>, Vec<u8>>;

    fn commit(store: &mut Store, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        for (key, value) in writes {
            match value {
                Some(value) => store.insert(key, value),
                None => store.remove(&key),
            };
        }
    }

    /// A replica: the stored state and the in-memory index.
    #[derive(Default, Clone)]
    struct Replica {
        store: Store,
        dedup: DedupIndex,
    }

    impl Replica {
        fn run(&mut self, log_index: u64, command: &Command) -> CommandResult {
            let mut overlay = Overlay::new(&self.store);
            let result = SpaceMachine::apply(&mut overlay, &mut self.dedup, log_index, command);
            let writes = overlay.into_writes();
            commit(&mut self.store, writes);
            result
        }

        /// Every stored (seq, key) of a space, from its blocks.
        fn messages(&self, space: &str) -> Vec<(u64, String, String)> {
            let prefix = record::message_prefix(space);
            let mut messages = Vec::new();
            for (key, value) in self.store.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                let block: MessageBlock = record::decode(value).unwrap();
                assert_eq!(record::seq_of_message_key(space, key), Some(block.first_seq));
                for (offset, message) in block.messages.iter().enumerate() {
                    messages.push((
                        block.first_seq + offset as u64,
                        message.author.clone(),
                        message.idempotency_key.clone(),
                    ));
                }
            }
            messages
        }

        /// The index as a restarted replica rebuilds it from the store.
        fn rebuilt_index(&self) -> DedupIndex {
            let mut index = DedupIndex::default();
            for (key, value) in &self.store {
                if key.first() != Some(&record::SPACE_PREFIX) {
                    continue;
                }
                let space: SpaceRecord = record::decode(value).unwrap();
                index.rebuild_space(&space, self.messages(&space.name).into_iter());
            }
            index
        }
    }

    fn create(name: &str, members: &[&str], window: u64, retain: u64) -> Command {
        Command::CreateSpace {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            attrs: BTreeMap::new(),
            dedup_window_len: window,
            retain_messages_max: retain,
        }
    }

    fn post(space: &str, author: &str, key: &str) -> PostCommand {
        PostCommand { space: space.into(), author: author.into(), body: "hi".into(), idempotency_key: key.into() }
    }

    fn outcomes(result: CommandResult) -> Vec<Result<PostOutcome, ApplyError>> {
        match result {
            CommandResult::Posts(outcomes) => outcomes,
            other => panic!("expected post outcomes, got {other:?}"),
        }
    }

    /// A space of 600 keyed posts sealed on one replica and imported into
    /// another in chunks: the copy answers the same, remembers the keys,
    /// and goes on from the sealed seq; the sealed one refuses posts.
    #[test]
    fn a_sealed_space_imported_elsewhere_goes_on_from_its_seq() {
        let mut source = Replica::default();
        source.run(1, &create("s", &["alice"], 1000, 0));
        let posts: Vec<PostCommand> = (0..600).map(|i| post("s", "alice", &format!("k{i}"))).collect();
        source.run(2, &Command::Posts(posts));
        let CommandResult::Sealed(Ok(sealed)) = source.run(3, &Command::SealSpace { name: "s".into(), to: 2 }) else {
            panic!("sealed")
        };
        assert_eq!((sealed.last_seq, sealed.moved_to), (600, Some(2)));
        let refused = outcomes(source.run(4, &Command::Posts(vec![post("s", "alice", "late")])));
        assert_eq!(refused, vec![Err(ApplyError::Moved { space: "s".into(), to: 2 })]);

        let prefix = record::message_prefix("s");
        let blocks: Vec<MessageBlock> = source
            .store
            .range(prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&prefix))
            .map(|(_, value)| record::decode(value).unwrap())
            .collect();
        assert!(blocks.len() >= 3, "several blocks to copy in chunks");
        let mut target = Replica::default();
        let chunks: Vec<&[MessageBlock]> = blocks.chunks(2).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            let import = Command::ImportSpace {
                record: sealed.clone(),
                blocks: chunk.to_vec(),
                first: index == 0,
                last: index + 1 == chunks.len(),
            };
            // Posts wait while the copy is incomplete.
            if index == 1 {
                let waiting = outcomes(target.run(9, &Command::Posts(vec![post("s", "alice", "early")])));
                assert_eq!(waiting, vec![Err(ApplyError::Importing { space: "s".into() })]);
            }
            assert_eq!(target.run(10 + index as u64, &import), CommandResult::Imported(Ok(())));
        }
        assert_eq!(target.messages("s"), source.messages("s"));
        let after =
            outcomes(target.run(100, &Command::Posts(vec![post("s", "alice", "k7"), post("s", "alice", "new")])));
        assert_eq!(after[0], Ok(PostOutcome { seq: 8, duplicate: true }));
        assert_eq!(after[1], Ok(PostOutcome { seq: 601, duplicate: false }));
        assert_eq!(target.dedup, target.rebuilt_index(), "the imported keys are what a restart rebuilds");
        // The copy run again after it finished changes nothing.
        let again = Command::ImportSpace { record: sealed, blocks: Vec::new(), first: true, last: true };
        let before = target.store.clone();
        assert_eq!(
            target.run(101, &again),
            CommandResult::Imported(Err(ApplyError::SpaceExists { space: "s".into() }))
        );
        assert_eq!(target.store, before);
    }

    /// Found by fuzzing (fuzz/regressions/api_request/): a space copy
    /// whose blocks overlap, proposed raw through `Admin.Propose`, fed the
    /// dedup index seqs out of order. Copies with inconsistent seqs are
    /// refused, within a chunk and across chunks.
    #[test]
    fn a_space_copy_with_inconsistent_seqs_is_refused() {
        let refused =
            |result: CommandResult| matches!(result, CommandResult::Imported(Err(ApplyError::Invalid { .. })));
        let crasher = include_bytes!("../../fuzz/regressions/api_request/crash-import-overlapping-blocks");
        // The fuzz target's first byte picks the decoder; the rest is the command.
        let command: Command = postcard::from_bytes(&crasher[1..]).unwrap();
        let mut replica = Replica::default();
        assert!(refused(replica.run(1, &command)));
        assert!(refused(replica.run(2, &command)));
        assert!(replica.store.is_empty());

        let block = |first_seq: u64| MessageBlock {
            first_seq,
            messages: vec![MessageRecord {
                author: "alice".into(),
                body: "hi".into(),
                idempotency_key: format!("k{first_seq}"),
                log_index: 1,
            }],
        };
        let sealed = SpaceRecord {
            name: "s".into(),
            members: BTreeSet::from(["alice".to_string()]),
            attrs: BTreeMap::new(),
            last_seq: 3,
            first_seq: 1,
            dedup_window_len: 10,
            retain_messages_max: 0,
            moved_to: Some(2),
            importing: false,
        };
        let import = |record: &SpaceRecord, blocks: Vec<MessageBlock>, first: bool, last: bool| Command::ImportSpace {
            record: record.clone(),
            blocks,
            first,
            last,
        };
        let empty_block = MessageBlock { first_seq: 1, messages: Vec::new() };
        let past_seq_max = SpaceRecord { last_seq: validate::SEQ_MAX + 1, ..sealed.clone() };
        assert!(refused(replica.run(3, &import(&sealed, vec![block(1), block(1)], true, false))));
        assert!(refused(replica.run(4, &import(&sealed, vec![block(4)], true, false))));
        assert!(refused(replica.run(5, &import(&sealed, vec![empty_block], true, false))));
        assert!(refused(replica.run(6, &import(&past_seq_max, vec![block(1)], true, false))));
        assert!(replica.store.is_empty());

        assert_eq!(
            replica.run(7, &import(&sealed, vec![block(1), block(2)], true, false)),
            CommandResult::Imported(Ok(()))
        );
        assert!(refused(replica.run(8, &import(&sealed, vec![block(2)], false, true))), "overlaps the first chunk");
        let other_seqs = SpaceRecord { last_seq: 9, ..sealed.clone() };
        assert!(refused(replica.run(9, &import(&other_seqs, vec![block(3)], false, true))), "other seqs");
        assert_eq!(replica.run(10, &import(&sealed, vec![block(3)], false, true)), CommandResult::Imported(Ok(())));
        assert_eq!(replica.messages("s").len(), 3);
        assert_eq!(replica.dedup, replica.rebuilt_index());
    }

    /// Found by fuzzing (fuzz/regressions/data_dir_record/): a stored
    /// space record at seq u64::MAX overflowed the dedup window's start,
    /// which a replica computes when it rebuilds its index on open.
    #[test]
    fn a_space_record_at_the_last_seq_rebuilds_without_overflow() {
        let crasher = include_bytes!("../../fuzz/regressions/data_dir_record/crash-space-record-last-seq-overflow");
        // The fuzz target's first byte picks the record type; the rest is the
        // record as stored before records carried a checksum.
        let space: SpaceRecord = postcard::from_bytes(&crasher[1..]).unwrap();
        assert_eq!(space.last_seq, u64::MAX);
        assert_eq!(oldest_remembered_seq(&space), u64::MAX - space.dedup_window_len);
        let store = BTreeMap::from([(record::space_key(&space.name), record::encode(&space))]);
        assert!(rebuild_dedup_index(&store).unwrap().is_empty());
    }

    #[test]
    fn seqs_start_at_one_and_have_no_gaps_within_and_across_batches() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 100, 0));
        let first = outcomes(replica.run(2, &Command::Posts(vec![post("general", "alice", ""); 3])));
        let second = outcomes(replica.run(3, &Command::Posts(vec![post("general", "alice", "")])));
        let seqs: Vec<u64> = first.into_iter().chain(second).map(|o| o.unwrap().seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_retried_key_returns_the_original_seq_even_in_the_same_batch() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 100, 0));
        let results = outcomes(
            replica.run(2, &Command::Posts(vec![post("general", "alice", "k1"), post("general", "alice", "k1")])),
        );
        assert_eq!(results[0], Ok(PostOutcome { seq: 1, duplicate: false }));
        assert_eq!(results[1], Ok(PostOutcome { seq: 1, duplicate: true }));
        let later = outcomes(replica.run(3, &Command::Posts(vec![post("general", "alice", "k1")])));
        assert_eq!(later[0], Ok(PostOutcome { seq: 1, duplicate: true }));
    }

    #[test]
    fn apply_refuses_what_no_node_would_propose_and_stores_nothing() {
        let mut replica = Replica::default();
        let refused = replica.run(1, &create("bad name/../\0x", &["alice"], 100, 0));
        assert!(
            matches!(refused, CommandResult::SpaceCreated { result: Err(ApplyError::Invalid { .. }), .. }),
            "{refused:?}"
        );
        assert!(replica.store.is_empty(), "a refused create stores nothing");
        replica.run(2, &create("general", &["alice"], 100, 0));
        let huge = PostCommand {
            space: "general".into(),
            author: "alice".into(),
            body: "x".repeat(validate::CEILINGS.body_bytes_max + 1),
            idempotency_key: String::new(),
        };
        let results = outcomes(replica.run(3, &Command::Posts(vec![huge, post("general", "alice", "ok")])));
        assert!(matches!(&results[0], Err(ApplyError::Invalid { too_large: true, .. })), "{:?}", results[0]);
        assert_eq!(results[1], Ok(PostOutcome { seq: 1, duplicate: false }), "the valid post of the batch commits");
        let bad_author = outcomes(replica.run(4, &Command::Posts(vec![post("general", "al\0ice", "k")])));
        assert!(matches!(&bad_author[0], Err(ApplyError::Invalid { .. })), "{:?}", bad_author[0]);
        assert_eq!(replica.messages("general").len(), 1);
    }

    #[test]
    fn a_key_is_its_authors_so_another_user_cannot_suppress_a_post_with_it() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice", "bob"], 100, 0));
        let first = outcomes(replica.run(2, &Command::Posts(vec![post("general", "alice", "k1")])));
        assert_eq!(first[0], Ok(PostOutcome { seq: 1, duplicate: false }));
        let bob = outcomes(replica.run(3, &Command::Posts(vec![post("general", "bob", "k1")])));
        assert_eq!(bob[0], Ok(PostOutcome { seq: 2, duplicate: false }), "bob's post commits under his own key");
        let retries = outcomes(
            replica.run(4, &Command::Posts(vec![post("general", "alice", "k1"), post("general", "bob", "k1")])),
        );
        assert_eq!(retries[0], Ok(PostOutcome { seq: 1, duplicate: true }));
        assert_eq!(retries[1], Ok(PostOutcome { seq: 2, duplicate: true }));
        assert_eq!(replica.rebuilt_index(), replica.dedup, "the index rebuilt from the store scopes keys the same way");
    }

    #[test]
    fn keys_leave_the_window_after_window_len_newer_messages() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 2, 0));
        replica.run(2, &Command::Posts(vec![post("general", "alice", "old")]));
        replica.run(3, &Command::Posts(vec![post("general", "alice", ""), post("general", "alice", "")]));
        // seq 3 entered, so the key of seq 1 left the window: a new commit.
        let again = outcomes(replica.run(4, &Command::Posts(vec![post("general", "alice", "old")])));
        assert_eq!(again[0], Ok(PostOutcome { seq: 4, duplicate: false }));
    }

    #[test]
    fn a_sealed_copy_drops_its_messages_and_keeps_its_record() {
        let mut replica = Replica::default();
        replica.run(1, &create("s", &["alice"], 10, 0));
        let posts: Vec<PostCommand> = (0..300).map(|i| post("s", "alice", &format!("k{i}"))).collect();
        replica.run(2, &Command::Posts(posts));
        let drop = Command::DropSealed { name: "s".into() };
        let before = replica.store.clone();
        assert_eq!(
            replica.run(3, &drop),
            CommandResult::SealedDropped(Err(ApplyError::NotSealed { space: "s".into() }))
        );
        assert_eq!(replica.store, before, "an open space keeps its messages");
        replica.run(4, &Command::SealSpace { name: "s".into(), to: 2 });
        assert_eq!(replica.run(5, &drop), CommandResult::SealedDropped(Ok(300)));
        let left: Vec<&Vec<u8>> = replica.store.keys().collect();
        assert_eq!(left, [&record::space_key("s")], "only the sealed record stays");
        let record: SpaceRecord = record::decode(&replica.store[&record::space_key("s")]).unwrap();
        assert_eq!((record.moved_to, record.last_seq, record.first_seq), (Some(2), 300, 301));
        assert_eq!(replica.run(6, &drop), CommandResult::SealedDropped(Ok(0)), "dropping again changes nothing");
        assert_eq!(replica.rebuilt_index(), replica.dedup);
        let refused = outcomes(replica.run(7, &Command::Posts(vec![post("s", "alice", "late")])));
        assert_eq!(refused[0], Err(ApplyError::Moved { space: "s".into(), to: 2 }));
    }

    #[test]
    fn members_change_and_removed_members_can_no_longer_post() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 10, 0));
        let update = |add: &[&str], remove: &[&str], max: u64| Command::UpdateMembers {
            name: "general".into(),
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
            members_len_max: max,
        };
        let CommandResult::MembersUpdated(Ok((record, 2))) = replica.run(2, &update(&["bob"], &[], 10)) else {
            panic!()
        };
        assert_eq!(record.members.iter().collect::<Vec<_>>(), ["alice", "bob"]);
        let posted = outcomes(replica.run(3, &Command::Posts(vec![post("general", "bob", "b1")])));
        assert_eq!(posted[0], Ok(PostOutcome { seq: 1, duplicate: false }));
        replica.run(4, &update(&[], &["bob"], 10));
        let refused = outcomes(replica.run(5, &Command::Posts(vec![post("general", "bob", "b2")])));
        assert_eq!(refused[0], Err(ApplyError::NotMember { space: "general".into(), user: "bob".into() }));

        let before = replica.store.clone();
        let CommandResult::MembersUpdated(empty) = replica.run(6, &update(&[], &["alice"], 10)) else { panic!() };
        assert_eq!(empty, Err(ApplyError::NoMembersLeft { space: "general".into() }));
        let CommandResult::MembersUpdated(many) = replica.run(7, &update(&["b", "c"], &[], 2)) else { panic!() };
        assert_eq!(many, Err(ApplyError::TooManyMembers { space: "general".into(), len: 3, max: 2 }));
        assert_eq!(replica.store, before, "refusals change nothing");
    }

    #[test]
    fn a_deleted_space_leaves_nothing_but_its_tombstone() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 10, 0));
        replica.run(1, &create("random", &["alice"], 10, 0));
        let posts: Vec<PostCommand> = (0..600).map(|i| post("general", "alice", &format!("k{i}"))).collect();
        replica.run(2, &Command::Posts(posts));
        let delete = Command::DeleteSpace { name: "general".into() };
        assert_eq!(replica.run(3, &delete), CommandResult::Deleted(Ok(Some(600))));
        let left: Vec<&Vec<u8>> = replica.store.keys().collect();
        assert_eq!(left, [&record::deleted_key("general"), &record::space_key("random")], "blocks and record gone");
        assert!(replica.dedup.lookup("general", "alice", "k1").is_none());
        assert_eq!(replica.run(4, &delete), CommandResult::Deleted(Ok(None)), "deleting again succeeds");
        let refused = outcomes(replica.run(5, &Command::Posts(vec![post("general", "alice", "late")])));
        assert_eq!(refused[0], Err(ApplyError::UnknownSpace { space: "general".into() }));
        let again = replica.run(6, &create("general", &["alice"], 10, 0));
        let deleted = Err(ApplyError::Deleted { space: "general".into() });
        assert_eq!(again, CommandResult::SpaceCreated { existed: false, result: deleted });
        let unknown = replica.run(7, &Command::DeleteSpace { name: "nowhere".into() });
        assert_eq!(unknown, CommandResult::Deleted(Err(ApplyError::UnknownSpace { space: "nowhere".into() })));
        assert_eq!(replica.rebuilt_index(), replica.dedup);
    }

    #[test]
    fn non_members_and_unknown_spaces_are_refused_and_change_nothing() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 10, 0));
        let before = replica.store.clone();
        let results = outcomes(
            replica.run(2, &Command::Posts(vec![post("general", "mallory", "k"), post("nowhere", "alice", "k")])),
        );
        assert_eq!(results[0], Err(ApplyError::NotMember { space: "general".into(), user: "mallory".into() }));
        assert_eq!(results[1], Err(ApplyError::UnknownSpace { space: "nowhere".into() }));
        assert_eq!(replica.store, before);
    }

    #[test]
    fn creating_twice_is_idempotent_but_a_different_definition_conflicts() {
        let mut replica = Replica::default();
        assert_eq!(
            replica.run(1, &create("general", &["alice"], 10, 0)),
            CommandResult::SpaceCreated { existed: false, result: Ok(()) }
        );
        assert_eq!(
            replica.run(2, &create("general", &["alice"], 10, 0)),
            CommandResult::SpaceCreated { existed: true, result: Ok(()) }
        );
        assert_eq!(
            replica.run(3, &create("general", &["bob"], 10, 0)),
            CommandResult::SpaceCreated {
                existed: true,
                result: Err(ApplyError::SpaceExists { space: "general".into() })
            }
        );
    }

    #[test]
    fn retention_trims_the_oldest_messages_and_their_keys() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 100, 2));
        replica.run(2, &Command::Posts(vec![post("general", "alice", "a"), post("general", "alice", "b")]));
        replica.run(3, &Command::Posts(vec![post("general", "alice", "c")]));
        let mut overlay = Overlay::new(&replica.store);
        let space = SpaceMachine::read_space(&mut overlay, "general").unwrap();
        assert_eq!((space.first_seq, space.last_seq), (2, 3));
        // The block holding seqs 1 and 2 stays while seq 2 is retained.
        let seqs: Vec<u64> = replica.messages("general").iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(replica.dedup.lookup("general", "alice", "a"), None);
        assert_eq!(replica.dedup.lookup("general", "alice", "b"), Some(2));
        assert_eq!(replica.rebuilt_index(), replica.dedup);
        // Once seq 2 goes, so does the whole block of seqs 1 and 2.
        replica.run(4, &Command::Posts(vec![post("general", "alice", "d")]));
        let seqs: Vec<u64> = replica.messages("general").iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, [3, 4]);
        assert_eq!(replica.rebuilt_index(), replica.dedup);
    }

    #[test]
    fn a_large_batch_is_split_into_bounded_contiguous_blocks() {
        let mut replica = Replica::default();
        replica.run(1, &create("general", &["alice"], 10_000, 0));
        let posts: Vec<PostCommand> = (0..600).map(|n| post("general", "alice", &format!("k{n}"))).collect();
        replica.run(2, &Command::Posts(posts));
        let seqs: Vec<u64> = replica.messages("general").iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, (1..=600).collect::<Vec<u64>>());
        let blocks = replica.store.keys().filter(|key| key.first() == Some(&record::MESSAGE_PREFIX)).count();
        assert_eq!(blocks, 600_usize.div_ceil(BLOCK_MESSAGES_MAX));
    }

    proptest! {
        /// Whatever mix of batches, keys and authors: the committed seqs of a
        /// space are exactly 1..=n, a key commits at most once within the
        /// window, and refused posts leave no trace.
        #[test]
        fn committed_seqs_are_dense_and_keys_commit_once(
            batches in prop::collection::vec(
                prop::collection::vec((0u8..3, prop::option::of(0u8..20), any::<bool>()), 1..8),
                1..20,
            )
        ) {
            let mut replica = Replica::default();
            replica.run(1, &create("s0", &["alice"], 1_000, 0));
            replica.run(2, &create("s1", &["alice"], 1_000, 0));
            let mut committed: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            let mut seq_of_key: BTreeMap<(String, String), u64> = BTreeMap::new();
            for (batch_number, batch) in batches.iter().enumerate() {
                let posts: Vec<PostCommand> = batch.iter().map(|(space, key, member)| {
                    let space = if *space == 2 { "nowhere" } else if *space == 1 { "s1" } else { "s0" };
                    let key = key.map(|k| format!("key{k}")).unwrap_or_default();
                    post(space, if *member { "alice" } else { "eve" }, &key)
                }).collect();
                let results = outcomes(replica.run(3 + batch_number as u64, &Command::Posts(posts.clone())));
                for (sent, result) in posts.iter().zip(results) {
                    let member = sent.author == "alice";
                    match result {
                        Ok(outcome) => {
                            prop_assert!(member && sent.space != "nowhere");
                            let id = (sent.space.clone(), sent.idempotency_key.clone());
                            if outcome.duplicate {
                                prop_assert_eq!(seq_of_key.get(&id), Some(&outcome.seq));
                            } else {
                                let space_seqs = committed.entry(if sent.space == "s0" { "s0" } else { "s1" }).or_default();
                                prop_assert_eq!(outcome.seq, space_seqs.len() as u64 + 1);
                                space_seqs.push(outcome.seq);
                                if !sent.idempotency_key.is_empty() {
                                    prop_assert!(seq_of_key.insert(id, outcome.seq).is_none());
                                }
                            }
                        }
                        Err(_) => prop_assert!(!member || sent.space == "nowhere"),
                    }
                }
                prop_assert_eq!(replica.rebuilt_index(), replica.dedup.clone());
            }
        }
    }
}
