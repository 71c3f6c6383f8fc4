//! A Raft service payload between nodes: the postcard payloads the Raft
//! service decodes (vote, append, transfer, snapshot header), the answers
//! a node decodes from its peers, and the log entry payloads: commands and
//! their results. Each that decodes must encode again to a fixpoint, since
//! nodes send on and store what they decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use spaceraft::api::raft::decode;
use spaceraft::pb;
use spaceraft::raft::network::decode_reply;
use spaceraft::raft::types::{Entry, SnapshotMeta, TypeConfig, Vote};
use spaceraft::space::{Command, CommandResult};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    match which % 12 {
        0 => request::<VoteRequest<TypeConfig>>(bytes),
        1 => request::<AppendEntriesRequest<TypeConfig>>(bytes),
        2 => request::<TransferLeaderRequest<TypeConfig>>(bytes),
        3 => request::<(Vote, SnapshotMeta)>(bytes),
        4 => answer::<VoteResponse<TypeConfig>>(bytes),
        5 => answer::<AppendEntriesResponse<TypeConfig>>(bytes),
        6 => answer::<StreamAppendResult<TypeConfig>>(bytes),
        7 => answer::<SnapshotResponse<TypeConfig>>(bytes),
        8 => answer::<TransferLeaderResponse<TypeConfig>>(bytes),
        9 => {
            let Ok(entry) = decode::<Entry>(bytes) else { return };
            let _ = format!("{entry}");
            fixpoint(&entry);
        }
        10 => {
            let Ok(command) = decode::<Command>(bytes) else { return };
            let _ = format!("{command}");
            fixpoint(&command);
        }
        _ => answer::<CommandResult>(bytes),
    }
});

fn request<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    if let Ok(value) = decode::<T>(bytes) {
        fixpoint(&value);
    }
}

fn answer<T: Serialize + DeserializeOwned>(bytes: &[u8]) {
    if let Ok(value) = decode_reply::<T>(pb::RaftReply { payload: bytes.to_vec(), error: String::new(), incarnation: 0 }) {
        fixpoint(&value);
    }
}

/// Encoding what was decoded succeeds, and decoding and encoding that again
/// gives the same bytes.
fn fixpoint<T: Serialize + DeserializeOwned>(value: &T) {
    let encoded = postcard::to_stdvec(value).expect("a decoded message encodes");
    let again: T = postcard::from_bytes(&encoded).expect("an encoded message decodes");
    assert_eq!(postcard::to_stdvec(&again).expect("a decoded message encodes"), encoded);
}
