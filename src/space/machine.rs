//! The apply logic of a space cluster's state machine.
//!
//! [`SpaceMachine::apply`] turns one command into writes on an [`Overlay`]
//! (pending writes over a [`KvRead`]) and a result. The storage shell commits
//! the overlay atomically together with the applied log id, so a replica's
//! state is always the result of applying a prefix of the log.

use std::collections::{BTreeMap, BTreeSet};

use super::command::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};
use super::record::{self, MessageRecord, SpaceRecord};

/// Read access to the committed state the overlay sits on.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }
}

/// Writes of one apply batch, visible to later commands of the same batch
/// before they reach the store. `None` marks a removal.
pub struct Overlay<'a, R: KvRead> {
    base: &'a R,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, R: KvRead> Overlay<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Overlay { base, pending: BTreeMap::new() }
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
    pub fn into_writes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.pending
    }
}

/// Stateless: all state lives in the store the overlay reads.
pub struct SpaceMachine;

impl SpaceMachine {
    /// Applies one command committed at `log_index`.
    pub fn apply<R: KvRead>(overlay: &mut Overlay<'_, R>, log_index: u64, command: &Command) -> CommandResult {
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
                };
                Self::create_space(overlay, wanted)
            }
            Command::Posts(posts) => {
                let results = posts.iter().map(|post| Self::post(overlay, log_index, post)).collect();
                CommandResult::Posts(results)
            }
        }
    }

    pub fn read_space<R: KvRead>(overlay: &Overlay<'_, R>, name: &str) -> Option<SpaceRecord> {
        let bytes = overlay.get(&record::space_key(name))?;
        Some(record::decode(&bytes).expect("space records are written by this module"))
    }

    fn create_space<R: KvRead>(overlay: &mut Overlay<'_, R>, wanted: SpaceRecord) -> CommandResult {
        if let Some(existing) = Self::read_space(overlay, &wanted.name) {
            // A retried create of the same space succeeds without change;
            // anything else under the same name is a conflict.
            let same = existing.members == wanted.members && existing.attrs == wanted.attrs;
            let result = if same { Ok(()) } else { Err(ApplyError::SpaceExists { space: wanted.name }) };
            return CommandResult::SpaceCreated { existed: true, result };
        }
        overlay.insert(record::space_key(&wanted.name), record::encode(&wanted));
        CommandResult::SpaceCreated { existed: false, result: Ok(()) }
    }

    fn post<R: KvRead>(
        overlay: &mut Overlay<'_, R>,
        log_index: u64,
        post: &PostCommand,
    ) -> Result<PostOutcome, ApplyError> {
        let Some(mut space) = Self::read_space(overlay, &post.space) else {
            return Err(ApplyError::UnknownSpace { space: post.space.clone() });
        };
        if !space.members.contains(&post.author) {
            return Err(ApplyError::NotMember { space: post.space.clone(), user: post.author.clone() });
        }
        let has_key = !post.idempotency_key.is_empty();
        if has_key {
            if let Some(seq_bytes) = overlay.get(&record::idempotency_key(&post.space, &post.idempotency_key)) {
                let seq = u64::from_be_bytes(seq_bytes.as_slice().try_into().expect("seqs are 8 bytes"));
                return Ok(PostOutcome { seq, duplicate: true });
            }
        }

        let seq = space.last_seq + 1;
        let message = MessageRecord {
            author: post.author.clone(),
            body: post.body.clone(),
            idempotency_key: post.idempotency_key.clone(),
            log_index,
        };
        overlay.insert(record::message_key(&post.space, seq), record::encode(&message));
        if has_key {
            overlay.insert(record::idempotency_key(&post.space, &post.idempotency_key), seq.to_be_bytes().to_vec());
        }
        Self::forget_key_leaving_window(overlay, &space, seq);
        space.last_seq = seq;
        if space.retain_messages_max > 0 {
            Self::trim(overlay, &mut space);
        }
        debug_assert!(space.first_seq >= 1 && space.first_seq <= space.last_seq + 1);
        overlay.insert(record::space_key(&space.name), record::encode(&space));
        Ok(PostOutcome { seq, duplicate: false })
    }

    /// The window holds the keys of the newest `dedup_window_len` messages:
    /// when `new_seq` enters, the key of `new_seq - dedup_window_len` leaves.
    fn forget_key_leaving_window<R: KvRead>(overlay: &mut Overlay<'_, R>, space: &SpaceRecord, new_seq: u64) {
        let Some(leaving_seq) = new_seq.checked_sub(space.dedup_window_len) else {
            return;
        };
        if leaving_seq == 0 {
            return;
        }
        Self::forget_key_of(overlay, &space.name, leaving_seq);
    }

    fn forget_key_of<R: KvRead>(overlay: &mut Overlay<'_, R>, space: &str, seq: u64) {
        let Some(bytes) = overlay.get(&record::message_key(space, seq)) else {
            return;
        };
        let message: MessageRecord = record::decode(&bytes).expect("message records are written by this module");
        if message.idempotency_key.is_empty() {
            return;
        }
        let key = record::idempotency_key(space, &message.idempotency_key);
        // Only forget the key if it still names this seq.
        if overlay.get(&key).as_deref() == Some(seq.to_be_bytes().as_slice()) {
            overlay.remove(key);
        }
    }

    /// Drops the oldest messages beyond the retention bound, with their keys.
    fn trim<R: KvRead>(overlay: &mut Overlay<'_, R>, space: &mut SpaceRecord) {
        while space.last_seq + 1 - space.first_seq > space.retain_messages_max {
            let oldest = space.first_seq;
            Self::forget_key_of(overlay, &space.name, oldest);
            overlay.remove(record::message_key(&space.name, oldest));
            space.first_seq += 1;
        }
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

    fn run(store: &mut Store, log_index: u64, command: &Command) -> CommandResult {
        let mut overlay = Overlay::new(&*store);
        let result = SpaceMachine::apply(&mut overlay, log_index, command);
        let writes = overlay.into_writes();
        commit(store, writes);
        result
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

    #[test]
    fn seqs_start_at_one_and_have_no_gaps_within_and_across_batches() {
        let mut store = Store::new();
        run(&mut store, 1, &create("general", &["alice"], 100, 0));
        let first = outcomes(run(&mut store, 2, &Command::Posts(vec![post("general", "alice", ""); 3])));
        let second = outcomes(run(&mut store, 3, &Command::Posts(vec![post("general", "alice", "")])));
        let seqs: Vec<u64> = first.into_iter().chain(second).map(|o| o.unwrap().seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_retried_key_returns_the_original_seq_even_in_the_same_batch() {
        let mut store = Store::new();
        run(&mut store, 1, &create("general", &["alice"], 100, 0));
        let results = outcomes(run(
            &mut store,
            2,
            &Command::Posts(vec![post("general", "alice", "k1"), post("general", "alice", "k1")]),
        ));
        assert_eq!(results[0], Ok(PostOutcome { seq: 1, duplicate: false }));
        assert_eq!(results[1], Ok(PostOutcome { seq: 1, duplicate: true }));
        let later = outcomes(run(&mut store, 3, &Command::Posts(vec![post("general", "alice", "k1")])));
        assert_eq!(later[0], Ok(PostOutcome { seq: 1, duplicate: true }));
    }

    #[test]
    fn keys_leave_the_window_after_window_len_newer_messages() {
        let mut store = Store::new();
        run(&mut store, 1, &create("general", &["alice"], 2, 0));
        run(&mut store, 2, &Command::Posts(vec![post("general", "alice", "old")]));
        run(&mut store, 3, &Command::Posts(vec![post("general", "alice", ""), post("general", "alice", "")]));
        // seq 3 entered, so the key of seq 1 left the window: a new commit.
        let again = outcomes(run(&mut store, 4, &Command::Posts(vec![post("general", "alice", "old")])));
        assert_eq!(again[0], Ok(PostOutcome { seq: 4, duplicate: false }));
    }

    #[test]
    fn non_members_and_unknown_spaces_are_refused_and_change_nothing() {
        let mut store = Store::new();
        run(&mut store, 1, &create("general", &["alice"], 10, 0));
        let before = store.clone();
        let results = outcomes(run(
            &mut store,
            2,
            &Command::Posts(vec![post("general", "mallory", "k"), post("nowhere", "alice", "k")]),
        ));
        assert_eq!(results[0], Err(ApplyError::NotMember { space: "general".into(), user: "mallory".into() }));
        assert_eq!(results[1], Err(ApplyError::UnknownSpace { space: "nowhere".into() }));
        assert_eq!(store, before);
    }

    #[test]
    fn creating_twice_is_idempotent_but_a_different_definition_conflicts() {
        let mut store = Store::new();
        assert_eq!(
            run(&mut store, 1, &create("general", &["alice"], 10, 0)),
            CommandResult::SpaceCreated { existed: false, result: Ok(()) }
        );
        assert_eq!(
            run(&mut store, 2, &create("general", &["alice"], 10, 0)),
            CommandResult::SpaceCreated { existed: true, result: Ok(()) }
        );
        assert_eq!(
            run(&mut store, 3, &create("general", &["bob"], 10, 0)),
            CommandResult::SpaceCreated {
                existed: true,
                result: Err(ApplyError::SpaceExists { space: "general".into() })
            }
        );
    }

    #[test]
    fn retention_trims_the_oldest_messages_and_their_keys() {
        let mut store = Store::new();
        run(&mut store, 1, &create("general", &["alice"], 100, 2));
        run(&mut store, 2, &Command::Posts(vec![post("general", "alice", "a"), post("general", "alice", "b")]));
        run(&mut store, 3, &Command::Posts(vec![post("general", "alice", "c")]));
        let overlay = Overlay::new(&store);
        let space = SpaceMachine::read_space(&overlay, "general").unwrap();
        assert_eq!((space.first_seq, space.last_seq), (2, 3));
        assert!(!store.contains_key(&record::message_key("general", 1)));
        assert!(!store.contains_key(&record::idempotency_key("general", "a")));
        assert!(store.contains_key(&record::idempotency_key("general", "b")));
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
            let mut store = Store::new();
            run(&mut store, 1, &create("s0", &["alice"], 1_000, 0));
            run(&mut store, 2, &create("s1", &["alice"], 1_000, 0));
            let mut committed: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
            let mut seq_of_key: BTreeMap<(String, String), u64> = BTreeMap::new();
            for (batch_number, batch) in batches.iter().enumerate() {
                let posts: Vec<PostCommand> = batch.iter().map(|(space, key, member)| {
                    let space = if *space == 2 { "nowhere" } else if *space == 1 { "s1" } else { "s0" };
                    let key = key.map(|k| format!("key{k}")).unwrap_or_default();
                    post(space, if *member { "alice" } else { "eve" }, &key)
                }).collect();
                let results = outcomes(run(&mut store, 3 + batch_number as u64, &Command::Posts(posts.clone())));
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
            }
        }
    }
}
