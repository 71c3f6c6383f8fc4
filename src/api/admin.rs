//! The `spaceraft.v1.Admin` service: admit the caller (operators, gateways
//! for their probes, nodes between themselves), call the node, encode.

use std::sync::Arc;

use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::api::admit;
use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::node::snapshot::SnapshotStream;
use crate::pb;
use crate::security::Principal;
use crate::wire::Hop;

pub struct AdminApi {
    pub host: Arc<Host>,
}

type SnapshotChunks =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotFileChunk, Status>> + Send + 'static>>;

/// The node's answer on the wire.
fn answer<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|error| error.to_status())
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/ClusterStatus")?;
        Ok(Response::new(self.host.cluster_status().await))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/NodeStatus")?;
        Ok(Response::new(self.host.node_status(request.get_ref().summary).await))
    }

    type SaveSnapshotStream = SnapshotChunks;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotChunks>, Status> {
        admit(&request, "spaceraft.v1.Admin/SaveSnapshot")?;
        let hop = Hop::of(request.metadata());
        let chunks: SnapshotStream =
            self.host.save_snapshot(request.get_ref().cluster_id, hop).await.map_err(|error| error.to_status())?;
        Ok(Response::new(Box::pin(chunks.map(|chunk| chunk.map_err(|error| error.to_status())))))
    }

    async fn gateways(&self, request: Request<pb::GatewaysRequest>) -> Result<Response<pb::GatewaysResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/Gateways")?;
        answer(self.host.gateway_list(request.get_ref().local_only).await)
    }

    async fn directory(
        &self,
        request: Request<pb::DirectoryRequest>,
    ) -> Result<Response<pb::DirectoryResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/Directory")?;
        answer(self.host.directory_dump().await)
    }

    async fn set_preferred_region(
        &self,
        request: Request<pb::SetPreferredRegionRequest>,
    ) -> Result<Response<pb::SetPreferredRegionResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/SetPreferredRegion")?;
        answer(self.host.set_preferred_region(request.into_inner()).await.map(|()| pb::SetPreferredRegionResponse {}))
    }

    async fn stages(&self, request: Request<pb::StagesRequest>) -> Result<Response<pb::StagesReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/Stages")?;
        let stages = crate::stages::figures(request.get_ref().reset).into_iter().map(Into::into).collect();
        Ok(Response::new(pb::StagesReply { node_id: self.host.config.node_id, stages }))
    }

    async fn nudge(&self, request: Request<pb::NudgeRequest>) -> Result<Response<pb::NudgeReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/Nudge")?;
        let groups = self.host.nudge(request.into_inner().from_node).await;
        Ok(Response::new(pb::NudgeReply { groups }))
    }

    async fn move_space(
        &self,
        request: Request<pb::MoveSpaceRequest>,
    ) -> Result<Response<pb::MoveSpaceResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/MoveSpace")?;
        let hop = Hop::of(request.metadata());
        answer(self.host.move_space_routed(request.into_inner(), hop).await)
    }

    async fn set_drained(
        &self,
        request: Request<pb::SetDrainedRequest>,
    ) -> Result<Response<pb::SetDrainedResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/SetDrained")?;
        answer(self.host.set_drained(request.into_inner()).await.map(|()| pb::SetDrainedResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/TransferLeader")?;
        let hop = Hop::of(request.metadata());
        answer(self.host.transfer_leader(request.into_inner(), hop).await.map(|()| pb::TransferLeaderResponse {}))
    }

    async fn change_members(
        &self,
        request: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChangeMembersResponse>, Status> {
        admit(&request, "spaceraft.v1.Admin/ChangeMembers")?;
        let hop = Hop::of(request.metadata());
        answer(self.host.change_members_routed(request.into_inner(), hop).await)
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/Propose")?;
        let hop = Hop::of(request.metadata());
        answer(self.host.propose(request.into_inner(), hop).await)
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let principal = admit(&request, "spaceraft.v1.Admin/Join")?;
        let hop = Hop::of(request.metadata());
        let join = request.into_inner();
        // Where a join enters the cluster, the node joining must be the one
        // its certificate names (a node passing it on checked that).
        if hop == Hop::Client {
            if let Principal::Node(certified) = principal {
                if certified != join.node_id {
                    let why = format!("the certificate of node {certified} cannot join as node {}", join.node_id);
                    return Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status());
                }
            }
        }
        answer(self.host.join(join, hop).await)
    }

    async fn join_token(&self, request: Request<pb::JoinTokenRequest>) -> Result<Response<pb::JoinTokenReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/JoinToken")?;
        answer(self.host.join_token(request.get_ref().ttl_secs).await)
    }

    async fn ping(&self, request: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/Ping")?;
        let cluster_id = self.host.cluster.get().unwrap_or_default().to_string();
        Ok(Response::new(pb::PingReply {
            node_id: self.host.config.node_id,
            cluster_id,
            incarnation: self.host.peers.incarnation(),
        }))
    }

    async fn read_index(&self, request: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexReply>, Status> {
        admit(&request, "spaceraft.v1.Admin/ReadIndex")?;
        let hop = Hop::of(request.metadata());
        let index = self.host.read_index_for_peer(request.get_ref().cluster_id, hop).await;
        answer(index.map(|index| pb::ReadIndexReply { index }))
    }
}
