//! The stored shape of spaces and messages, and the key layout of a space
//! cluster's state machine tree.
//!
//! Keys (all within one tree per space cluster):
//! - `s` name → [`SpaceRecord`]
//! - `d` name → the log index that deleted the space (a tombstone)
//! - `m` name 0x00 first_seq(u64 BE) → [`MessageBlock`]: the messages with
//!   seqs `first_seq..next block's first_seq`; big-endian seqs make a range
//!   scan return a space's blocks in seq order. The posts of one apply batch
//!   to one space share a block (bounded by [`BLOCK_MESSAGES_MAX`] and
//!   [`BLOCK_BYTES_MAX`]), so a batch costs one write per space, not one per
//!   post. Blocks of a space are contiguous: each starts where the previous
//!   one ended.
//!
//! Space names never contain 0x00 (see [`crate::space::validate`]), so a
//! name's prefix cannot collide with another name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A space's metadata and counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceRecord {
    pub name: String,
    pub members: BTreeSet<String>,
    pub attrs: BTreeMap<String, String>,
    /// The seq of the newest message; 0 when the space is empty.
    pub last_seq: u64,
    /// The lowest seq still stored; `last_seq + 1` when none is.
    pub first_seq: u64,
    /// How many of the newest messages remember their idempotency key.
    pub dedup_window_len: u64,
    /// How many of the newest messages are kept; 0 keeps all.
    pub retain_messages_max: u64,
    /// Set when the space moved to another space cluster: this replica's
    /// copy is sealed at `last_seq`, and the space goes on there.
    pub moved_to: Option<u64>,
    /// True while the space is being copied in from another cluster: it
    /// takes no post until the copy is complete.
    pub importing: bool,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub author: String,
    pub body: String,
    pub idempotency_key: String,
    /// The Raft log index of the entry that committed it.
    pub log_index: u64,
}

/// A stored message with its seq, as readers get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqMessage {
    pub seq: u64,
    pub record: MessageRecord,
}

/// A block of consecutive messages of one space, stored under the key of its
/// first seq.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBlock {
    pub first_seq: u64,
    pub messages: Vec<MessageRecord>,
}

impl MessageBlock {
    /// The seq after this block's last message. Saturates: a block read
    /// back from a store or a snapshot is not trusted to be near seq 1.
    pub fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(self.messages.len() as u64)
    }

    pub fn get(&self, seq: u64) -> Option<&MessageRecord> {
        let offset = seq.checked_sub(self.first_seq)?;
        self.messages.get(usize::try_from(offset).ok()?)
    }
}

/// Bounds of one block; part of the stored format, so apply stays
/// deterministic whatever a node's configuration.
pub const BLOCK_MESSAGES_MAX: usize = 256;
pub const BLOCK_BYTES_MAX: usize = 256 * 1024;

pub const SPACE_PREFIX: u8 = b's';
pub const MESSAGE_PREFIX: u8 = b'm';
pub const DELETED_PREFIX: u8 = b'd';

pub fn space_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(SPACE_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

pub fn deleted_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(DELETED_PREFIX);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The prefix shared by every message key of a space.
pub fn message_prefix(space: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + space.len() + 8);
    key.push(MESSAGE_PREFIX);
    key.extend_from_slice(space.as_bytes());
    key.push(0);
    key
}

pub fn message_key(space: &str, seq: u64) -> Vec<u8> {
    let mut key = message_prefix(space);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Reads the seq back from a message key of `space`.
pub fn seq_of_message_key(space: &str, key: &[u8]) -> Option<u64> {
    let prefix_len = space.len() + 2;
    let seq_bytes: [u8; 8] = key.get(prefix_len..prefix_len + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(seq_bytes))
}

pub use crate::kv::{decode, encode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_seq_and_round_trip() {
        let low = message_key("general", 9);
        let high = message_key("general", 10);
        assert!(low < high);
        assert!(high.starts_with(&message_prefix("general")));
        assert!(!high.starts_with(&message_prefix("gen")));
        assert_eq!(seq_of_message_key("general", &high), Some(10));
    }

    /// Found by fuzzing (fuzz/regressions/data_dir_record/): a stored
    /// block at seq u64::MAX overflowed its end seq.
    #[test]
    fn a_block_near_the_last_seq_reads_without_overflow() {
        let crasher = include_bytes!("../../fuzz/regressions/data_dir_record/crash-block-end-seq-overflow");
        // The fuzz target's first byte picks the record type; the rest is the
        // record as stored before records carried a checksum.
        let block: MessageBlock = postcard::from_bytes(&crasher[1..]).unwrap();
        assert_eq!((block.first_seq, block.messages.len()), (u64::MAX, 1));
        assert_eq!(block.end_seq(), u64::MAX);
        assert!(block.get(u64::MAX).is_some());
    }
}
