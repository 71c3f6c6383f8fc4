//! The receiving side of the Raft transport: the `spaceraft.v1.Raft` gRPC
//! service. It routes each request to its group's Raft, and refuses requests
//! of another cluster (`wrong_cluster`: every Raft message names its
//! cluster; a node that does not know its cluster yet learns it from the
//! first one), meant for another node id, or sent by a node that claims an
//! id registered at another address (two processes configured with one id).
//! With security on, only nodes may call it, and a message's claimed sender
//! must be the node its certificate names.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::api::authz::principal_of;
use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::pb;
use crate::raft::group::Group;
use crate::raft::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::security::Principal;
use crate::storage::SnapshotFile;

pub struct RaftApi {
    pub host: Arc<Host>,
}

/// Decodes a Raft message's postcard payload; anything undecodable is
/// `INVALID_ARGUMENT`. Public for the fuzz targets (fuzz/).
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload).map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

/// A reply, carrying this node's incarnation: a candidate counts the vote
/// only if the membership records that incarnation.
fn reply<T: serde::Serialize, E: std::fmt::Display>(incarnation: u64, result: Result<T, E>) -> pb::RaftReply {
    match result {
        Ok(value) => pb::RaftReply {
            payload: postcard::to_stdvec(&value).expect("raft messages serialize"),
            error: String::new(),
            incarnation,
        },
        Err(error) => pb::RaftReply { payload: Vec::new(), error: error.to_string(), incarnation },
    }
}

impl RaftApi {
    fn incarnation(&self) -> u64 {
        self.host.peers.incarnation()
    }

    /// Refuses a vote request from a member whose membership records another
    /// incarnation: it lost its data, and its log may lack entries it had
    /// acknowledged. (Appends are taken from any incarnation: a leader was
    /// elected by counted votes, and refusing a re-admitted leader would lock
    /// out a follower whose log has not reached the re-admission yet.)
    fn check_candidate(&self, group: &Group, request: &pb::RaftRequest) -> Result<(), Status> {
        match group.reader.admitted.refused(request.from_node, request.from_incarnation) {
            Some(why) => {
                tracing::warn!(group = group.id, from_node = request.from_node, "refusing a vote request: {why}");
                Err(Status::failed_precondition(why))
            }
            None => Ok(()),
        }
    }

    /// Checks that a Raft message (from a caller admitted as a node) claims
    /// the sender its certificate names; then finds its group.
    async fn route(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        request: &pb::RaftRequest,
    ) -> Result<Arc<Group>, Status> {
        if let Principal::Node(certified) = principal {
            if *certified != request.from_node {
                tracing::warn!(
                    certified,
                    claimed = request.from_node,
                    "refusing a raft message whose sender is not its certificate's"
                );
                let why = format!("node {certified}'s certificate cannot send for node {}", request.from_node);
                return Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status());
            }
        }
        self.host.admit_peer(metadata).await.map_err(|error| error.to_status())?;
        let node_id = self.host.config.node_id;
        if request.to_node != node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}: check the peer addresses",
                node_id, request.to_node
            )));
        }
        let group = self.host.groups.get(request.group_id).ok_or_else(|| {
            Status::not_found(format!("space cluster {} is not hosted on node {node_id}", request.group_id))
        })?;
        // The membership only: cloning the whole metrics for every message
        // cost a leader of many groups more than the message itself.
        let membership = group.raft.server_metrics().borrow_watched().membership_config.clone();
        if let Some(known) = membership.membership().get_node(&request.from_node) {
            if known.addr != request.from_addr {
                tracing::warn!(from_node = request.from_node, from_addr = %request.from_addr, registered = %known.addr,
                    "refusing raft request from a node whose id is registered at another address");
                return Err(Status::permission_denied(format!(
                    "node id {} is registered at {}, but this request came from {}: duplicate node id?",
                    request.from_node, known.addr, request.from_addr
                )));
            }
        }
        Ok(group)
    }
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftApi {
    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/Vote")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let vote: VoteRequest<TypeConfig> = decode(&request.payload)?;
        self.check_candidate(&group, &request)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.vote(vote).await)))
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/PreVote")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let vote: VoteRequest<TypeConfig> = decode(&request.payload)?;
        self.check_candidate(&group, &request)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.pre_vote(vote).await)))
    }

    async fn append(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/Append")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let append: AppendEntriesRequest<TypeConfig> = decode(&request.payload)?;
        group.appended_by(request.from_node, request.from_incarnation);
        Ok(Response::new(reply(self.incarnation(), group.raft.append_entries(append).await)))
    }

    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/AppendStream")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let mut incoming = request.into_inner();
        let Some(first) = incoming.message().await? else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let group = self.route(&principal, &metadata, &first).await?;
        let first_append: AppendEntriesRequest<TypeConfig> = decode(&first.payload)?;
        group.appended_by(first.from_node, first.from_incarnation);
        let (group_id, from_node) = (first.group_id, first.from_node);
        // Later messages must stay on the same group and sender; anything
        // else (or garbage) ends the stream.
        let rest = incoming.take_while(move |item| {
            let keep = matches!(item, Ok(next) if next.group_id == group_id && next.from_node == from_node);
            async move { keep }
        });
        // When each append arrived, for the follower's stage figures.
        let arrivals = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from([std::time::Instant::now()])));
        let arrived = arrivals.clone();
        let appends = futures::stream::once(async move { first_append }).chain(rest.filter_map(move |item| {
            let arrived = arrived.clone();
            async move {
                let next = item.ok()?;
                match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&next.payload) {
                    Ok(append) => {
                        arrived.lock().expect("arrival queue lock").push_back(std::time::Instant::now());
                        Some(append)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "dropping undecodable append on a replication stream");
                        None
                    }
                }
            }
        }));
        let results = group.raft.stream_append(appends);
        let incarnation = self.incarnation();
        let replies = results.map(move |result| {
            if let Some(arrived) = arrivals.lock().expect("arrival queue lock").pop_front() {
                crate::stages::since(crate::stages::Stage::FollowerAppend, arrived);
            }
            Ok(reply(incarnation, result))
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/InstallSnapshot")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header =
            first.header.clone().ok_or_else(|| Status::invalid_argument("first snapshot chunk has no header"))?;
        let group = self.route(&principal, &metadata, &header).await?;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&header.payload)?;
        group.appended_by(header.from_node, header.from_incarnation);
        tokio::fs::create_dir_all(&group.snapshot_dir).await.map_err(|e| Status::internal(e.to_string()))?;
        let path = group.snapshot_dir.join(format!("incoming-{}.recv", rand::random::<u64>()));
        let bytes_max = self.host.config.security.snapshot_bytes_max;
        let result = receive_file(&path, first.data, &mut chunks, bytes_max).await;
        if let Err(status) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(status);
        }
        let verify_path = path.clone();
        let verified = crate::storage::blocking::run(move || crate::storage::snapshot_file::verify(&verify_path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match verified {
            Ok((snapshot_group, snapshot_meta)) if snapshot_group == header.group_id && snapshot_meta == meta => {}
            Ok(_) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::invalid_argument("snapshot file does not match its header"));
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::invalid_argument(error.to_string()));
            }
        }
        let held = crate::raft::snapshot_already_held(&group.raft, meta.last_log_id).await;
        if let Ok(Some(current)) = held {
            let _ = tokio::fs::remove_file(&path).await;
            let answer: Result<_, openraft::errors::Fatal<TypeConfig>> =
                Ok(openraft::raft::SnapshotResponse::<TypeConfig>::new(current));
            return Ok(Response::new(reply(self.incarnation(), answer)));
        }
        let snapshot = Snapshot { meta, snapshot: SnapshotFile { path } };
        Ok(Response::new(reply(self.incarnation(), group.raft.install_full_snapshot(vote, snapshot).await)))
    }

    async fn transfer_leader(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/TransferLeader")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let transfer: TransferLeaderRequest<TypeConfig> = decode(&request.payload)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.handle_transfer_leader(transfer).await)))
    }
}

/// Writes a received snapshot to `path`, refusing it once it grows past
/// `bytes_max` (before the excess is written).
async fn receive_file(
    path: &std::path::Path,
    first_data: Vec<u8>,
    chunks: &mut Streaming<pb::SnapshotChunk>,
    bytes_max: u64,
) -> Result<(), Status> {
    use tokio::io::AsyncWriteExt;
    let internal = |e: std::io::Error| Status::internal(format!("writing received snapshot: {e}"));
    let too_large = || {
        let why = format!("the snapshot is larger than security.snapshot_bytes_max ({bytes_max} bytes)");
        ApiError::new(ErrorKind::TooLarge { field: "snapshot".into() }, why).to_status()
    };
    let mut received = first_data.len() as u64;
    if received > bytes_max {
        return Err(too_large());
    }
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    file.write_all(&first_data).await.map_err(internal)?;
    while let Some(chunk) = chunks.message().await? {
        received += chunk.data.len() as u64;
        if received > bytes_max {
            return Err(too_large());
        }
        file.write_all(&chunk.data).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(())
}
