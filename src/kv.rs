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

/// A stored record's bytes: the CRC-32 of the encoded value (4 bytes,
/// little-endian), then the value. Every block, space record and directory
/// entry carries its checksum into the store and into snapshots.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let payload = postcard::to_stdvec(value).expect("records serialize into memory");
    let mut bytes = Vec::with_capacity(payload.len() + 4);
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
    bytes
}

/// Reads a record back; a record whose checksum does not match is damaged
/// (`DeserializeBadCrc`) and is never decoded.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(verify(bytes)?)
}

/// A record's payload, if its checksum matches.
pub fn verify(bytes: &[u8]) -> Result<&[u8], postcard::Error> {
    let Some((sum, payload)) = bytes.split_first_chunk::<4>() else {
        return Err(postcard::Error::DeserializeUnexpectedEnd);
    };
    if u32::from_le_bytes(*sum) != crc32fast::hash(payload) {
        return Err(postcard::Error::DeserializeBadCrc);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_any_flipped_bit_is_caught() {
        let value = (7u64, "a message body".to_string());
        let bytes = encode(&value);
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), value);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode::<(u64, String)>(&damaged).is_err(), "bit {bit} flipped went unnoticed");
        }
        assert!(decode::<(u64, String)>(&bytes[..3]).is_err());
        assert!(decode::<(u64, String)>(&bytes[..bytes.len() - 1]).is_err());
    }
}
