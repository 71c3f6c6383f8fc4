//! What a node reads back from its data directory: the state machine's
//! records (`kv::decode`: spaces, message blocks, directory entries), the
//! Raft log store's values (entries, vote, log ids), the cluster-id file
//! and the identity file `node.json`. A record that decodes must encode
//! again to a fixpoint; a file is read by the function the node uses.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use spaceraft::kv;
use spaceraft::meta::directory::{ClusterEntry, NodeEntry, SpacePlacement};
use spaceraft::meta::load::ClusterLoad;
use spaceraft::raft::types::{Entry, LogId, Vote};
use spaceraft::space::record::{self, MessageBlock, MessageRecord, SpaceRecord};
use spaceraft::storage::data_dir::DataDir;
use spaceraft::storage::log_store::decode_record;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 12 {
        0 => {
            let Some(space) = kv_record::<SpaceRecord>(bytes) else { return };
            let _ = spaceraft::space::machine::oldest_remembered_seq(&space);
        }
        1 => {
            let Some(block) = kv_record::<MessageBlock>(bytes) else { return };
            let end_seq = block.end_seq();
            let _ = block.get(end_seq.saturating_sub(1));
        }
        2 => drop(kv_record::<MessageRecord>(bytes)),
        3 => drop(kv_record::<NodeEntry>(bytes)),
        4 => drop(kv_record::<ClusterEntry>(bytes)),
        5 => drop(kv_record::<SpacePlacement>(bytes)),
        6 => drop(kv_record::<ClusterLoad>(bytes)),
        7 => log_record::<Entry>(bytes),
        8 => {
            log_record::<Vote>(bytes);
            log_record::<Option<LogId>>(bytes);
            log_record::<LogId>(bytes);
        }
        9 => {
            let space = String::from_utf8_lossy(&bytes[..bytes.len().min(8)]);
            let _ = record::seq_of_message_key(&space, bytes);
        }
        10 => {
            let dir = data_dir();
            std::fs::write(dir.join(spaceraft::wire::CLUSTER_ID_FILE), bytes).expect("write the cluster-id file");
            if let Ok(Some(id)) = spaceraft::wire::read_cluster_id(dir) {
                assert!(spaceraft::wire::is_cluster_id(&id));
            }
        }
        _ => {
            let dir = data_dir();
            std::fs::write(dir.join("node.json"), bytes).expect("write the identity file");
            let _ = DataDir::open(dir, 1, "us-east");
        }
    }
});

/// A state machine record: decoded, encoded, decoded again to the same bytes.
fn kv_record<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let value: T = kv::decode(bytes).ok()?;
    let encoded = kv::encode(&value);
    let again: T = kv::decode(&encoded).expect("an encoded record decodes");
    assert_eq!(kv::encode(&again), encoded);
    Some(again)
}

/// A log store value: decoded as the store reads it, then to a fixpoint.
fn log_record<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    let Ok(value) = decode_record::<T>("log entry", bytes) else { return };
    let encoded = postcard::to_stdvec(&value).expect("a decoded value encodes");
    let again: T = decode_record("log entry", &encoded).expect("an encoded value decodes");
    assert_eq!(postcard::to_stdvec(&again).expect("a decoded value encodes"), encoded);
}

/// One data directory per fuzzing process, in memory when /dev/shm exists.
fn data_dir() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm".into() } else { std::env::temp_dir() };
        let dir = tempfile::Builder::new().prefix("spaceraft-fuzz-").tempdir_in(base).expect("temp dir");
        dir.keep()
    })
}
