//! A protobuf request into the node's API (Client, Admin, Raft envelopes)
//! or the gateway's gRPC session: decoded with prost as tonic decodes it,
//! then checked as the node checks it before it acts. A command that
//! `Admin.Propose` would accept is applied to a replica's state machine,
//! as its cluster's leader would propose it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use spaceraft::node::operate::decode_proposed_command;
use spaceraft::pb;
use spaceraft::space::machine::{DedupIndex, Overlay, SpaceMachine};
use spaceraft::space::validate::{check_command, check_name, check_post, Limits};
use spaceraft::space::{Command, PostCommand};

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let limits = Limits::default();
    match which % 12 {
        0 => {
            let Ok(request) = pb::PostRequest::decode(bytes) else { return };
            let post = PostCommand {
                space: request.space,
                author: request.author,
                body: request.body,
                idempotency_key: request.idempotency_key,
            };
            if check_post(&post, &limits).is_ok() {
                apply_on_a_replica(&Command::Posts(vec![post]));
            }
        }
        1 => {
            let Ok(request) = pb::HistoryRequest::decode(bytes) else { return };
            let _ = check_name("space name", &request.space, &limits);
            if !request.user.is_empty() {
                let _ = check_name("user name", &request.user, &limits);
            }
        }
        2 => {
            let Ok(request) = pb::CreateSpaceRequest::decode(bytes) else { return };
            let command = Command::CreateSpace {
                name: request.name,
                members: request.members,
                attrs: request.attrs.into_iter().collect(),
                dedup_window_len: 64,
                retain_messages_max: 0,
            };
            if check_command(&command, &limits).is_ok() {
                apply_on_a_replica(&command);
            }
        }
        3 => {
            let Ok(request) = pb::UpdateMembersRequest::decode(bytes) else { return };
            let command = Command::UpdateMembers {
                name: request.space,
                add: request.add,
                remove: request.remove,
                members_len_max: limits.members_len_max as u64,
            };
            if check_command(&command, &limits).is_ok() {
                apply_on_a_replica(&command);
            }
        }
        4 => {
            let Ok(request) = pb::ProposeRequest::decode(bytes) else { return };
            if let Ok(command) = decode_proposed_command(&request.command, &limits) {
                apply_on_a_replica(&command);
            }
        }
        5 => {
            // The command bytes of a Propose alone, so the fuzzer need not
            // learn the protobuf around them.
            if let Ok(command) = decode_proposed_command(bytes, &limits) {
                apply_on_a_replica(&command);
            }
        }
        6 => {
            let Ok(request) = pb::FollowRequest::decode(bytes) else { return };
            if let Some(pb::follow_request::Request::Watch(watch)) = request.request {
                let _ = check_name("space name", &watch.space, &limits);
            }
        }
        7 => {
            let _ = pb::JoinRequest::decode(bytes);
        }
        8 => {
            let Ok(request) = pb::GatewayRequest::decode(bytes) else { return };
            if let Ok(spaceraft::gateway::protocol::ClientRequest::Hello { user, .. }) =
                spaceraft::gateway::grpc::request_from_pb(request)
            {
                let _ = check_name("user name", &user, &limits);
            }
        }
        9 => {
            let space = match pb::SubscribeRequest::decode(bytes) {
                Ok(request) => request.space,
                Err(_) => return,
            };
            let _ = check_name("space name", &space, &limits);
            let _ = pb::GetSpaceRequest::decode(bytes);
            let _ = pb::DeleteSpaceRequest::decode(bytes);
            let _ = pb::MoveSpaceRequest::decode(bytes);
        }
        10 => {
            let _ = pb::ChangeMembersRequest::decode(bytes);
            let _ = pb::TransferLeaderRequest::decode(bytes);
            let _ = pb::SetDrainedRequest::decode(bytes);
            let _ = pb::SetPreferredRegionRequest::decode(bytes);
            let _ = pb::ReadIndexRequest::decode(bytes);
            let _ = pb::NodeStatusRequest::decode(bytes);
            let _ = pb::SaveSnapshotRequest::decode(bytes);
        }
        _ => {
            let _ = pb::RaftRequest::decode(bytes);
            let _ = pb::SnapshotChunk::decode(bytes);
        }
    }
});

/// Applies `command` twice (a retry) on a replica holding one space,
/// `general` (members alice and bob), with one message in it.
fn apply_on_a_replica(command: &Command) {
    let mut store: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut dedup = DedupIndex::default();
    let create = Command::CreateSpace {
        name: "general".into(),
        members: vec!["alice".into(), "bob".into()],
        attrs: BTreeMap::new(),
        dedup_window_len: 4,
        retain_messages_max: 2,
    };
    let post = Command::Posts(vec![PostCommand {
        space: "general".into(),
        author: "alice".into(),
        body: "hi".into(),
        idempotency_key: "k".into(),
    }]);
    for (log_index, command) in [&create, &post, command, command].into_iter().enumerate() {
        let mut overlay = Overlay::new(&store);
        let _ = SpaceMachine::apply(&mut overlay, &mut dedup, log_index as u64 + 1, command);
        for (key, value) in overlay.into_writes() {
            match value {
                Some(value) => store.insert(key, value),
                None => store.remove(&key),
            };
        }
    }
    spaceraft::space::machine::rebuild_dedup_index(&store).expect("the machine's own records decode");
}
