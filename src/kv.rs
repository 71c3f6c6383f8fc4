//! The key-value view both state machines apply onto: the space machine
//! ([`crate::space`]) and the meta directory ([`crate::meta`]) read committed
//! state through [`KvRead`] and stage their writes through [`Staging`], and
//! store records with one encoding ([`encode`], [`decode`]). Neither machine
//! knows the store (sled, or the simulator's maps) behind these traits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Read access to the committed state.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// The keys in `start..=end`, in order.
    fn keys_between(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>>;
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        BTreeMap::get(self, key).cloned()
    }

    fn keys_between(&self, start: &[u8], end: &[u8]) -> Vec<Vec<u8>> {
        self.range(start.to_vec()..=end.to_vec()).map(|(key, _)| key.clone()).collect()
    }
}

/// The writes of one apply batch, staged over the committed state: a read
/// sees the batch's own earlier writes.
pub trait Staging {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    fn insert(&mut self, key: Vec<u8>, value: Vec<u8>);
    fn remove(&mut self, key: Vec<u8>);
}

/// A stored record's bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("records serialize into memory")
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
