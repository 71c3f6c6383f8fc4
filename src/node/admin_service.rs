//! The `spaceraft.v1.Admin` gRPC service of a node.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::error::ApiError;
use crate::node::host::{Host, MemberChange};
use crate::pb;
use crate::placement::directory::{Directory, MetaCommand, NodeEntry};
use crate::space::{Command, CommandResult};

/// Set on a MoveSpace passed to a voter of the space's cluster.
const MOVE_FORWARDED_METADATA: &str = "spaceraft-move-forwarded";

/// Set on a ChangeMembers passed on: "voter" or "leader".
const MEMBERS_HOP_METADATA: &str = "spaceraft-members-hop";

/// How long ClusterStatus waits for each peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long SaveSnapshot waits for the snapshot to be built.
const SNAPSHOT_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes per chunk of a streamed snapshot file.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotFileChunk, Status>> + Send + 'static>>;

pub struct AdminService {
    pub host: Arc<Host>,
    pub config: Arc<NodeConfig>,
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

/// Where an admin request that must run on a space cluster's leader goes.
enum LeaderRoute {
    /// This node leads the cluster.
    Here(Arc<crate::node::group::Group>),
    /// To the leader's node ("leader"), or to a voter when the cluster is
    /// not hosted here ("voter"), with the hop to mark the request with.
    There(pb::admin_client::AdminClient<tonic::transport::Channel>, &'static str),
}

/// A request passed on, marked with its hop.
fn with_hop<T>(message: T, hop: &'static str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(MEMBERS_HOP_METADATA, hop.parse().expect("ascii"));
    request
}

impl AdminService {
    /// Routes a request for space cluster `cluster`'s leader: here, the
    /// leader's node, or a voter when not hosted here. A request that
    /// arrived marked "leader" is not passed on again.
    async fn route_to_leader<T>(&self, cluster: u64, request: &Request<T>) -> Result<LeaderRoute, Status> {
        let to_leader = request.metadata().get(MEMBERS_HOP_METADATA).is_some_and(|hop| hop == "leader");
        let (next, hop) = match self.host.local_cluster(cluster).await? {
            Some(group) => match self.host.leader_of(&group).await? {
                None => return Ok(LeaderRoute::Here(group)),
                Some((_, addr)) => (addr, "leader"),
            },
            None => (self.first_voter(cluster).await?, "voter"),
        };
        if to_leader {
            return Err(Status::unavailable(format!(
                "the request reached a node that does not lead space cluster {cluster}"
            )));
        }
        let channel = self.host.peers.channel(&next).map_err(|e| Status::internal(e.to_string()))?;
        Ok(LeaderRoute::There(pb::admin_client::AdminClient::new(channel), hop))
    }

    /// The address of a voter of `cluster` (this region's first), for a
    /// request that must run where the cluster is hosted.
    async fn first_voter(&self, cluster: u64) -> Result<String, Status> {
        let voters = self
            .host
            .cluster_addrs(cluster)
            .await
            .map_err(|_| Status::not_found(format!("space cluster {cluster} does not exist")))?;
        voters.into_iter().next().map(|(_, addr)| addr).ok_or_else(|| Status::unavailable("the cluster has no voter"))
    }

    /// This node's status: its replicas, the members it knows, what its
    /// failure detector sees, and with `summary` its summary and last-seen
    /// times.
    async fn node_status_now(&self, summary: bool) -> pb::NodeStatusResponse {
        let mut members = Vec::new();
        let mut roles: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        let mut errors = Vec::new();
        let groups = self.host.groups.all();
        for group in &groups {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                members.push(pb::Member {
                    cluster_id: group.id,
                    node_id: *id,
                    region: node.region.clone(),
                    grpc_addr: node.addr.clone(),
                });
            }
            *roles.entry(role(metrics.state).to_string()).or_default() += 1;
            if metrics.state == ServerState::Shutdown {
                errors.push(format!("group {}: raft core stopped", group.id));
            } else if metrics.current_leader.is_none() {
                errors.push(format!("group {} has no leader", group.id));
            }
        }
        let nodes_down = self.host.detector.down().borrow().clone();
        let replicas = self.local_status();
        if !summary {
            return pb::NodeStatusResponse { replicas, members, nodes_down, ..Default::default() };
        }
        errors.extend(nodes_down.iter().map(|node| format!("node {node} does not answer")));
        let root = self.host.data_root();
        let db_size_bytes = tokio::task::spawn_blocking(move || dir_size(&root)).await.unwrap_or(0);
        let node = pb::NodeSummary {
            node_id: self.config.node_id,
            region: self.config.region.clone(),
            grpc_addr: self.config.advertise_addr().to_string(),
            health: if errors.is_empty() { "healthy" } else { "degraded" }.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.host.started.elapsed().as_millis() as u64,
            groups: groups.len() as u32,
            groups_led: roles.get("leader").copied().unwrap_or(0),
            roles,
            db_size_bytes,
            drained: self.host.is_drained(),
            errors,
        };
        let last_seen_ms =
            self.host.detector.last_seen().into_iter().map(|(node, ago)| (node, ago.as_millis() as u64)).collect();
        pb::NodeStatusResponse { replicas, members, nodes_down, node: Some(node), last_seen_ms }
    }

    fn local_status(&self) -> Vec<pb::ReplicaStatus> {
        self.host
            .groups
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
                    last_seen_ms: None,
                }
            })
            .collect()
    }
}

/// Bytes on disk under `dir` (0 for what cannot be read).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// One cluster-wide status out of every node's: the replicas, sorted, each
/// with how long ago its cluster's leader (else the answering node) last
/// heard from its node, and one summary per node.
fn merge_statuses(statuses: Vec<pb::NodeStatusResponse>) -> pb::ClusterStatusResponse {
    use std::collections::{BTreeMap, HashMap};
    let heard: BTreeMap<u64, HashMap<u64, u64>> = statuses
        .iter()
        .filter_map(|status| Some((status.node.as_ref()?.node_id, status.last_seen_ms.clone())))
        .collect();
    let answering = statuses.first().and_then(|status| status.node.as_ref()).map(|node| node.node_id).unwrap_or(0);
    let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
    for replica in statuses.iter().flat_map(|status| &status.replicas) {
        if replica.role == "leader" {
            leaders.insert(replica.cluster_id, replica.node_id);
        }
    }
    let mut replicas: Vec<pb::ReplicaStatus> = statuses.iter().flat_map(|status| status.replicas.clone()).collect();
    for replica in &mut replicas {
        let observer = leaders.get(&replica.cluster_id).copied().unwrap_or(answering);
        replica.last_seen_ms = if observer == replica.node_id && replica.role != "unreachable" {
            Some(0)
        } else {
            heard.get(&observer).and_then(|seen| seen.get(&replica.node_id)).copied()
        };
    }
    replicas.sort_by_key(|replica| (replica.cluster_id, replica.node_id));
    let mut nodes: Vec<pb::NodeSummary> = statuses.into_iter().filter_map(|status| status.node).collect();
    nodes.sort_by_key(|node| node.node_id);
    pb::ClusterStatusResponse { replicas, nodes }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let here = self.node_status_now(true).await;
        // Every other node that is a member of a group hosted here.
        // (address, the clusters it is a member of) per other node.
        let mut others: std::collections::BTreeMap<u64, (crate::raft::types::NodeAddr, Vec<u64>)> =
            std::collections::BTreeMap::new();
        for group in self.host.groups.all() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                if *id != self.config.node_id {
                    others.entry(*id).or_insert_with(|| (node.clone(), Vec::new())).1.push(group.id);
                }
            }
        }
        let asks = others.into_iter().map(|(id, (node, clusters))| {
            let peers = self.host.peers.clone();
            async move {
                let result = async {
                    let channel = peers.channel(&node.addr).map_err(|e| e.to_string())?;
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    let mut request = Request::new(pb::NodeStatusRequest { summary: true });
                    request.set_timeout(PEER_STATUS_TIMEOUT);
                    match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.node_status(request)).await {
                        Ok(Ok(response)) => Ok(response.into_inner()),
                        Ok(Err(status)) => Err(status.message().to_string()),
                        Err(_) => Err(format!("no answer within {PEER_STATUS_TIMEOUT:?}")),
                    }
                }
                .await;
                // An unreachable node: a row for each cluster it is in.
                result.unwrap_or_else(|error| pb::NodeStatusResponse {
                    replicas: clusters
                        .iter()
                        .map(|cluster_id| pb::ReplicaStatus {
                            node_id: id,
                            region: node.region.clone(),
                            grpc_addr: node.addr.clone(),
                            cluster_id: *cluster_id,
                            role: "unreachable".into(),
                            error: error.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    node: Some(pb::NodeSummary {
                        node_id: id,
                        region: node.region.clone(),
                        grpc_addr: node.addr.clone(),
                        health: "unreachable".into(),
                        errors: vec![error.clone()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            }
        });
        let mut statuses = vec![here];
        statuses.extend(futures::future::join_all(asks).await);
        Ok(Response::new(merge_statuses(statuses)))
    }

    async fn node_status(
        &self,
        request: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        Ok(Response::new(self.node_status_now(request.get_ref().summary).await))
    }

    type SaveSnapshotStream = SnapshotStream;

    async fn save_snapshot(
        &self,
        request: Request<pb::SaveSnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let cluster = request.get_ref().cluster_id;
        let group = match self.host.local_cluster(cluster).await? {
            Some(group) if group.raft.metrics().borrow_watched().state != ServerState::Shutdown => group,
            _ => {
                // Passed on once, to a voter that hosts it.
                if request.metadata().get(MEMBERS_HOP_METADATA).is_some() {
                    return Err(Status::unavailable(format!("space cluster {cluster} is not hosted here")));
                }
                let addr = self.first_voter(cluster).await?;
                let channel = self.host.peers.channel(&addr).map_err(|e| Status::internal(e.to_string()))?;
                let stream = pb::admin_client::AdminClient::new(channel)
                    .save_snapshot(with_hop(pb::SaveSnapshotRequest { cluster_id: cluster }, "voter"))
                    .await?
                    .into_inner();
                return Ok(Response::new(Box::pin(stream)));
            }
        };
        // A snapshot covering everything applied when asked.
        let wanted = group.raft.metrics().borrow_watched().last_applied.map(|id| id.index).unwrap_or(0);
        group.raft.trigger().snapshot().await.map_err(|e| Status::internal(e.to_string()))?;
        let mut metrics = group.raft.metrics();
        let built = tokio::time::timeout(SNAPSHOT_BUILD_TIMEOUT, async {
            loop {
                if metrics.borrow_watched().snapshot.is_some_and(|id| id.index >= wanted) {
                    return Ok(());
                }
                if metrics.changed().await.is_err() {
                    return Err(Status::unavailable("the group stopped while building its snapshot"));
                }
            }
        })
        .await;
        match built {
            Ok(result) => result?,
            Err(_) => return Err(Status::deadline_exceeded("the snapshot was not built in time")),
        }
        let snapshot = group
            .raft
            .get_snapshot()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::internal("no snapshot after building one"))?;
        let last_log_index = snapshot.meta.last_log_id.map(|id| id.index).unwrap_or(0);
        // Opened before anything can replace it: a newer snapshot deletes
        // the file's name, not the open file.
        let file = std::fs::File::open(&snapshot.snapshot.path)
            .map_err(|e| Status::internal(format!("cannot open the snapshot: {e}")))?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        let node_id = self.config.node_id;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut file = file;
            let mut first = true;
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let read = match file.read(&mut data) {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.blocking_send(Err(Status::internal(format!("snapshot read failed: {error}"))));
                        return;
                    }
                };
                if read == 0 && !first {
                    return;
                }
                data.truncate(read);
                let chunk = if first {
                    pb::SnapshotFileChunk { data, total_bytes, last_log_index, node_id }
                } else {
                    pb::SnapshotFileChunk { data, ..Default::default() }
                };
                first = false;
                if sender.blocking_send(Ok(chunk)).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn gateways(&self, request: Request<pb::GatewaysRequest>) -> Result<Response<pb::GatewaysResponse>, Status> {
        let node_id = self.config.node_id;
        let mut all: Vec<pb::GatewayInfo> = self
            .host
            .gateways()
            .into_iter()
            .map(|(report, ago)| pb::GatewayInfo {
                report: Some(report),
                node_id,
                last_report_ms: ago.as_millis() as u64,
            })
            .collect();
        if !request.into_inner().local_only {
            let tree = self.host.directory();
            let nodes = tokio::task::spawn_blocking(move || Directory::nodes(&tree))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            let asks = nodes.into_iter().filter(|node| node.id != node_id).map(|node| {
                let peers = self.host.peers.clone();
                async move {
                    let channel = peers.channel(&node.addr).ok()?;
                    let mut request = Request::new(pb::GatewaysRequest { local_only: true });
                    request.set_timeout(PEER_STATUS_TIMEOUT);
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    let call = client.gateways(request);
                    let response = tokio::time::timeout(PEER_STATUS_TIMEOUT, call).await.ok()?.ok()?;
                    Some(response.into_inner().gateways)
                }
            });
            all.extend(futures::future::join_all(asks).await.into_iter().flatten().flatten());
        }
        // A gateway that followed several nodes (or switched) reported to
        // each: keep its latest report.
        let mut latest: std::collections::BTreeMap<String, pb::GatewayInfo> = std::collections::BTreeMap::new();
        for info in all {
            let id = info.report.as_ref().map(|report| report.gateway_id.clone()).unwrap_or_default();
            match latest.get(&id) {
                Some(kept) if kept.last_report_ms <= info.last_report_ms => {}
                _ => {
                    latest.insert(id, info);
                }
            }
        }
        Ok(Response::new(pb::GatewaysResponse { gateways: latest.into_values().collect() }))
    }

    async fn directory(
        &self,
        _request: Request<pb::DirectoryRequest>,
    ) -> Result<Response<pb::DirectoryResponse>, Status> {
        self.host.sync_group(&self.host.meta()).await?;
        let tree = self.host.directory();
        let response = tokio::task::spawn_blocking(move || {
            let loads: std::collections::BTreeMap<u64, u64> =
                Directory::loads(&tree).into_iter().map(|load| (load.id, load.spaces)).collect();
            pb::DirectoryResponse {
                nodes: Directory::nodes(&tree)
                    .into_iter()
                    .map(|node| pb::DirectoryNode {
                        node_id: node.id,
                        region: node.region,
                        grpc_addr: node.addr,
                        drained: node.drained,
                    })
                    .collect(),
                clusters: Directory::clusters(&tree)
                    .into_iter()
                    .map(|cluster| pb::DirectoryCluster {
                        cluster_id: cluster.id,
                        spaces: loads.get(&cluster.id).copied().unwrap_or(0),
                        voters: cluster.voters,
                        learners: cluster.learners,
                        preferred_region: cluster.preferred_region,
                    })
                    .collect(),
                placements: Directory::placements(&tree)
                    .into_iter()
                    .map(|placement| pb::DirectoryPlacement {
                        space: placement.space.name,
                        cluster_id: placement.cluster,
                        version: placement.version,
                        org: placement.space.org.unwrap_or_default(),
                        reason: serde_json::to_string(&placement.reason).unwrap_or_default(),
                        moving_to: placement.moving_to.unwrap_or(0),
                    })
                    .collect(),
                meta_voters: Vec::new(),
                meta_learners: Vec::new(),
            }
        })
        .await
        .map_err(|e| Status::internal(format!("directory read failed: {e}")))?;
        let metrics = self.host.meta().raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let response = pb::DirectoryResponse {
            meta_voters: membership.voter_ids().collect(),
            meta_learners: membership.learner_ids().collect(),
            ..response
        };
        Ok(Response::new(response))
    }

    async fn set_preferred_region(
        &self,
        request: Request<pb::SetPreferredRegionRequest>,
    ) -> Result<Response<pb::SetPreferredRegionResponse>, Status> {
        let request = request.into_inner();
        let tree = self.host.directory();
        if !request.region.is_empty() && !Directory::nodes(&tree).iter().any(|node| node.region == request.region) {
            return Err(Status::invalid_argument(format!("no node is registered in region {:?}", request.region)));
        }
        self.host
            .meta_write(MetaCommand::SetPreferredRegion { cluster: request.cluster_id, region: request.region })
            .await
            .map_err(|error| match error {
                ApiError::Internal(message) if message.contains("does not exist") => Status::not_found(message),
                other => other.into(),
            })?;
        Ok(Response::new(pb::SetPreferredRegionResponse {}))
    }

    async fn nudge(&self, request: Request<pb::NudgeRequest>) -> Result<Response<pb::NudgeReply>, Status> {
        let from = request.into_inner().from_node;
        let mut groups = 0;
        for group in self.host.groups.all() {
            let led_with_caller = {
                let metrics = group.raft.metrics();
                let current = metrics.borrow_watched();
                current.current_leader == Some(self.config.node_id)
                    && current.membership_config.membership().get_node(&from).is_some()
            };
            if led_with_caller && group.raft.trigger().heartbeat().await.is_ok() {
                groups += 1;
            }
        }
        Ok(Response::new(pb::NudgeReply { groups }))
    }

    async fn move_space(
        &self,
        request: Request<pb::MoveSpaceRequest>,
    ) -> Result<Response<pb::MoveSpaceResponse>, Status> {
        let forwarded = request.metadata().contains_key(MOVE_FORWARDED_METADATA);
        let request = request.into_inner();
        let limits = self.config.limits.request_limits();
        crate::space::validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        let placement = self.host.placement_fresh(&request.space).await?;
        if self.host.local_cluster(placement.cluster).await?.is_none() {
            if forwarded {
                return Err(Status::failed_precondition("the move was sent to a node that does not host the space"));
            }
            // Run it on a voter of the space's cluster.
            let voters = self.host.cluster_addrs(placement.cluster).await?;
            let (_, addr) = voters.first().ok_or_else(|| Status::unavailable("the space's cluster has no voter"))?;
            let channel = self.host.peers.channel(addr).map_err(|e| Status::internal(e.to_string()))?;
            let mut forward = tonic::Request::new(request);
            forward.metadata_mut().insert(MOVE_FORWARDED_METADATA, "1".parse().expect("ascii"));
            return pb::admin_client::AdminClient::new(channel).move_space(forward).await;
        }
        Ok(Response::new(self.host.move_space(&request.space, request.to_cluster).await?))
    }

    async fn set_drained(
        &self,
        request: Request<pb::SetDrainedRequest>,
    ) -> Result<Response<pb::SetDrainedResponse>, Status> {
        let request = request.into_inner();
        self.host
            .meta_write(MetaCommand::SetDrained { node: request.node_id, drained: request.drained })
            .await
            .map_err(|error| match error {
                ApiError::Internal(message) if message.contains("not registered") => {
                    Status::failed_precondition(message)
                }
                other => other.into(),
            })?;
        Ok(Response::new(pb::SetDrainedResponse {}))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let cluster = request.get_ref().cluster_id;
        let route = self.route_to_leader(cluster, &request).await?;
        let message = request.into_inner();
        let group = match route {
            LeaderRoute::Here(group) => group,
            LeaderRoute::There(mut client, hop) => return client.transfer_leader(with_hop(message, hop)).await,
        };
        let is_voter = group
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == message.to_node);
        if !is_voter {
            return Err(Status::failed_precondition(format!(
                "node {} is not a voter of space cluster {cluster}",
                message.to_node
            )));
        }
        if message.to_node != self.config.node_id {
            group.wake();
            group
                .raft
                .trigger()
                .transfer_leader(message.to_node)
                .await
                .map_err(|error| Status::unavailable(format!("transfer failed: {error}")))?;
        }
        Ok(Response::new(pb::TransferLeaderResponse {}))
    }

    async fn change_members(
        &self,
        request: Request<pb::ChangeMembersRequest>,
    ) -> Result<Response<pb::ChangeMembersResponse>, Status> {
        let change = match request.get_ref().change.as_str() {
            "add_learner" => MemberChange::AddLearner,
            "promote" => MemberChange::Promote,
            "remove" => MemberChange::Remove,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown membership change {other:?}: use add_learner, promote or remove"
                )))
            }
        };
        let cluster = request.get_ref().cluster_id;
        let route = self.route_to_leader(cluster, &request).await?;
        let message = request.into_inner();
        match route {
            LeaderRoute::Here(group) => {
                let (voters, learners) =
                    self.host.change_members(&group, message.node_id, change, message.force).await?;
                Ok(Response::new(pb::ChangeMembersResponse { voters, learners }))
            }
            LeaderRoute::There(mut client, hop) => client.change_members(with_hop(message, hop)).await,
        }
    }

    async fn propose(&self, request: Request<pb::ProposeRequest>) -> Result<Response<pb::ProposeReply>, Status> {
        let request = request.into_inner();
        let command: Command = postcard::from_bytes(&request.command)
            .map_err(|e| Status::invalid_argument(format!("undecodable command: {e}")))?;
        let group =
            self.host.groups.get(request.cluster_id).ok_or_else(|| {
                Status::unavailable(format!("space cluster {} is not hosted here", request.cluster_id))
            })?;
        let result = match self.host.leader_of(&group).await? {
            None => match group.woken_write(command).await {
                Ok(response) => response.data,
                Err(error) => return Err(Status::unavailable(format!("not the leader: {error}"))),
            },
            Some(_) if request.forwarded => return Err(Status::unavailable("not the leader of the space cluster")),
            Some(_) => self.host.cluster_write(request.cluster_id, &command).await?,
        };
        Ok(Response::new(pb::ProposeReply { result: postcard::to_stdvec(&result).expect("results serialize") }))
    }

    async fn join(&self, request: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let request = request.into_inner();
        if request.node_id == 0 || request.region.is_empty() || request.grpc_addr.is_empty() {
            return Err(Status::invalid_argument("a joining node needs an id, a region and an address"));
        }
        let meta = self.host.meta();
        // On the meta leader: register, then add as a learner of the meta
        // group. Elsewhere: unavailable, the joining node tries the next peer
        // (it is told the leader's address).
        if let Some((_, addr)) = self.host.leader_of(&meta).await? {
            let mut status = Status::unavailable("not the meta leader");
            if let Ok(value) = addr.parse() {
                status.metadata_mut().insert(crate::error::LEADER_HINT_METADATA, value);
            }
            return Err(status);
        }
        let entry = NodeEntry {
            id: request.node_id,
            region: request.region.clone(),
            addr: request.grpc_addr.clone(),
            drained: false,
        };
        self.host.meta_write(MetaCommand::RegisterNode(entry)).await?;
        let known =
            meta.raft.metrics().borrow_watched().membership_config.membership().get_node(&request.node_id).is_some();
        if !known {
            meta.wake();
            let node = crate::raft::types::NodeAddr { addr: request.grpc_addr, region: request.region };
            meta.raft
                .add_learner(request.node_id, node, false)
                .await
                .map_err(|error| Status::unavailable(format!("cannot add the node to the meta cluster: {error}")))?;
        }
        Ok(Response::new(pb::JoinReply {}))
    }

    async fn ping(&self, _request: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        Ok(Response::new(pb::PingReply { node_id: self.config.node_id }))
    }

    async fn propose_meta(
        &self,
        request: Request<pb::ProposeMetaRequest>,
    ) -> Result<Response<pb::ProposeMetaReply>, Status> {
        let command: MetaCommand = postcard::from_bytes(&request.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("undecodable directory change: {e}")))?;
        let meta = self.host.meta();
        match meta.woken_write(Command::Meta(command)).await {
            Ok(response) => match response.data {
                CommandResult::Meta(Ok(outcome)) => Ok(Response::new(pb::ProposeMetaReply {
                    outcome: postcard::to_stdvec(&outcome).expect("meta outcomes serialize"),
                    refused: String::new(),
                })),
                CommandResult::Meta(Err(refused)) => {
                    Ok(Response::new(pb::ProposeMetaReply { outcome: Vec::new(), refused: refused.to_string() }))
                }
                other => Err(Status::internal(format!("directory answered {other:?}"))),
            },
            Err(error) => Err(Status::unavailable(format!("not the leader of the meta cluster: {error}"))),
        }
    }

    async fn read_index(&self, request: Request<pb::ReadIndexRequest>) -> Result<Response<pb::ReadIndexReply>, Status> {
        let cluster_id = request.into_inner().cluster_id;
        let group = self
            .host
            .groups
            .get(cluster_id)
            .ok_or_else(|| Status::not_found(format!("group {cluster_id} is not hosted here")))?;
        let log_id = group
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map_err(|error| Status::unavailable(format!("read index of group {cluster_id} failed: {error}")))?;
        Ok(Response::new(pb::ReadIndexReply { index: log_id.index() }))
    }
}
