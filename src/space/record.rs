//! The stored shape of spaces and messages, and the key layout of a space
//! cluster's state machine tree.
//!
//! Keys (all within one tree per space cluster):
//! - `s` name → [`SpaceRecord`]
//! - `m` name 0x00 seq(u64 BE) → [`MessageRecord`]; big-endian seqs make a
//!   range scan return a space's messages in seq order
//! - `k` name 0x00 idempotency key → seq (u64 BE)
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

pub const SPACE_PREFIX: u8 = b's';
pub const MESSAGE_PREFIX: u8 = b'm';
pub const KEY_PREFIX: u8 = b'k';

pub fn space_key(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(SPACE_PREFIX);
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

pub fn idempotency_key(space: &str, key: &str) -> Vec<u8> {
    let mut stored = Vec::with_capacity(2 + space.len() + key.len());
    stored.push(KEY_PREFIX);
    stored.extend_from_slice(space.as_bytes());
    stored.push(0);
    stored.extend_from_slice(key.as_bytes());
    stored
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records serialize into memory")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

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
}
