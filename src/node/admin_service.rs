//! The `spaceraft.v1.Admin` gRPC service of a node.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::node::group::Groups;
use crate::pb;
use crate::raft::network::PeerChannels;

/// How long ClusterStatus waits for each peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct AdminService {
    pub groups: Groups,
    pub config: Arc<NodeConfig>,
    pub peers: PeerChannels,
}

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl AdminService {
    fn local_status(&self) -> Vec<pb::ReplicaStatus> {
        self.groups
            .all()
            .iter()
            .map(|group| {
                let metrics = group.raft.metrics().borrow_watched().clone();
                pb::ReplicaStatus {
                    node_id: self.config.node_id,
                    region: self.config.region.clone(),
                    grpc_addr: self.config.advertise_addr().to_string(),
                    cluster_id: group.id,
                    role: role(metrics.state).to_string(),
                    term: metrics.current_term,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    commit_index: metrics.local_committed.map(|id| id.index).unwrap_or(0),
                    applied_index: metrics.last_applied.map(|id| id.index).unwrap_or(0),
                    leader_id: metrics.current_leader.unwrap_or(0),
                    error: String::new(),
                    snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
                    purged_index: metrics.purged.map(|id| id.index).unwrap_or(0),
                }
            })
            .collect()
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let mut replicas = self.local_status();
        // Every other node that is a member of a group hosted here.
        let mut others = std::collections::BTreeMap::new();
        for group in self.groups.all() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                if *id != self.config.node_id {
                    others.insert(*id, (node.clone(), group.id));
                }
            }
        }
        let asks = others.into_iter().map(|(id, (node, cluster_id))| {
            let peers = self.peers.clone();
            async move {
                let result = async {
                    let channel = peers.channel(&node.addr).map_err(|e| e.to_string())?;
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    let mut request = Request::new(pb::NodeStatusRequest {});
                    request.set_timeout(PEER_STATUS_TIMEOUT);
                    match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.node_status(request)).await {
                        Ok(Ok(response)) => Ok(response.into_inner().replicas),
                        Ok(Err(status)) => Err(status.message().to_string()),
                        Err(_) => Err(format!("no answer within {PEER_STATUS_TIMEOUT:?}")),
                    }
                }
                .await;
                result.unwrap_or_else(|error| {
                    vec![pb::ReplicaStatus {
                        node_id: id,
                        region: node.region.clone(),
                        grpc_addr: node.addr.clone(),
                        cluster_id,
                        role: "unreachable".into(),
                        error,
                        ..Default::default()
                    }]
                })
            }
        });
        for found in futures::future::join_all(asks).await {
            replicas.extend(found);
        }
        replicas.sort_by_key(|replica| (replica.cluster_id, replica.node_id));
        Ok(Response::new(pb::ClusterStatusResponse { replicas }))
    }

    async fn node_status(
        &self,
        _request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let mut members = Vec::new();
        for group in self.groups.all() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                members.push(pb::Member {
                    cluster_id: group.id,
                    node_id: *id,
                    region: node.region.clone(),
                    grpc_addr: node.addr.clone(),
                });
            }
        }
        Ok(Response::new(pb::NodeStatusResponse { replicas: self.local_status(), members }))
    }
}
