//! What operators read of a node and of the cluster: node and cluster
//! status, the gateways that follow the nodes, the directory.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::error::ApiError;
use crate::meta::directory::Directory;
use crate::node::host::Host;
use crate::pb;

/// How long ClusterStatus and Gateways wait for each peer.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn role(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl Host {
    /// This node's cluster id, empty until it knows it.
    pub fn cluster_id(&self) -> String {
        self.cluster.get().unwrap_or_default().to_string()
    }

    /// This node's status: its replicas, the members it knows, what its
    /// failure detector sees, and with `summary` its summary and last-seen
    /// times.
    pub async fn node_status(&self, summary: bool) -> pb::NodeStatusResponse {
        let mut members = Vec::new();
        let mut roles: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
        let mut errors = Vec::new();
        let groups = self.groups.all();
        for group in &groups {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                members.push(pb::Member {
                    cluster_id: group.id,
                    node_id: *id,
                    region: node.region.clone(),
                    grpc_addr: node.addr.clone(),
                    incarnation: node.incarnation,
                });
            }
            *roles.entry(role(metrics.state).to_string()).or_default() += 1;
            if let Some(why) = crate::node::disk::storage_failure(&metrics.running_state) {
                errors.push(format!("group {}: storage failed: {why}", group.id));
            } else if metrics.state == ServerState::Shutdown {
                errors.push(format!("group {}: raft core stopped", group.id));
            } else if metrics.current_leader.is_none() {
                errors.push(format!("group {} has no leader", group.id));
            }
        }
        let nodes_down = self.detector.down().borrow().clone();
        let replicas = self.local_status();
        if !summary {
            return pb::NodeStatusResponse {
                replicas,
                members,
                nodes_down,
                cluster_id: self.cluster_id(),
                insecure: self.gate.insecure,
                drained: self.is_drained(),
                incarnation: self.peers.incarnation(),
                ..Default::default()
            };
        }
        errors.extend(nodes_down.iter().map(|node| format!("node {node} does not answer")));
        errors.extend(self.disk_problem());
        errors.extend(self.sm_failure.lock().expect("failure lock").clone());
        let storage_failed = !self.storage_failures().is_empty();
        let root = self.data_root();
        let db_size_bytes = crate::storage::blocking::run(move || dir_size(&root)).await.unwrap_or(0);
        let node = pb::NodeSummary {
            node_id: self.config.node_id,
            region: self.config.region.clone(),
            grpc_addr: self.config.advertise_addr().to_string(),
            health: if storage_failed {
                STORAGE_FAILED
            } else if errors.is_empty() {
                "healthy"
            } else {
                "degraded"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            groups: groups.len() as u32,
            groups_led: roles.get("leader").copied().unwrap_or(0),
            roles,
            db_size_bytes,
            drained: self.is_drained(),
            errors,
            insecure: self.gate.insecure,
            incarnation: format!("{:016x}", self.peers.incarnation()),
        };
        let last_seen_ms =
            self.detector.last_seen().into_iter().map(|(node, ago)| (node, ago.as_millis() as u64)).collect();
        pb::NodeStatusResponse {
            replicas,
            members,
            nodes_down,
            node: Some(node),
            last_seen_ms,
            cluster_id: self.cluster_id(),
            insecure: self.gate.insecure,
            drained: self.is_drained(),
            incarnation: self.peers.incarnation(),
        }
    }

    fn local_status(&self) -> Vec<pb::ReplicaStatus> {
        self.groups
            .all()
            .iter()
            .map(|group| {
                let metrics = group.raft.metrics().borrow_watched().clone();
                let recorded = metrics
                    .membership_config
                    .membership()
                    .get_node(&self.config.node_id)
                    .map(|node| node.incarnation)
                    .unwrap_or(0);
                let renewed =
                    crate::raft::network::refused_incarnation(self.config.node_id, recorded, self.peers.incarnation())
                        .is_some();
                pb::ReplicaStatus {
                    node_id: self.config.node_id,
                    region: self.config.region.clone(),
                    grpc_addr: self.config.advertise_addr().to_string(),
                    cluster_id: group.id,
                    role: if crate::node::disk::storage_failure(&metrics.running_state).is_some() {
                        STORAGE_FAILED
                    } else if renewed {
                        NEEDS_REJOIN
                    } else {
                        role(metrics.state)
                    }
                    .to_string(),
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

    /// Every node's status, merged: one row per replica and per node.
    pub async fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let here = self.node_status(true).await;
        // Every other node that is a member of a group hosted here.
        // (address, the clusters it is a member of) per other node.
        let mut others: std::collections::BTreeMap<u64, (crate::raft::types::NodeAddr, Vec<u64>)> =
            std::collections::BTreeMap::new();
        for group in self.groups.all() {
            let metrics = group.raft.metrics().borrow_watched().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                if *id != self.config.node_id {
                    others.entry(*id).or_insert_with(|| (node.clone(), Vec::new())).1.push(group.id);
                }
            }
        }
        let asks = others.into_iter().map(|(id, (node, clusters))| {
            let peers = self.peers.clone();
            async move {
                let result = async {
                    let channel = peers.channel(&node.addr).map_err(|e| e.to_string())?;
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    let mut request = tonic::Request::new(pb::NodeStatusRequest { summary: true });
                    request.set_timeout(PEER_STATUS_TIMEOUT);
                    match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.node_status(request)).await {
                        Ok(Ok(response)) => Ok(response.into_inner()),
                        Ok(Err(status)) => Err(ApiError::from_status(&status).to_string()),
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
        let mut merged = merge_statuses(statuses);
        let tree = self.directory();
        if let Ok((clusters, nodes)) =
            crate::storage::blocking::run(move || (Directory::clusters(&tree), Directory::nodes(&tree))).await
        {
            add_missing_voters(&mut merged.replicas, &clusters, &nodes);
        }
        merged
    }

    /// The gateways that report to this node, and with `local_only` false
    /// to every node, each with its latest report.
    pub async fn gateway_list(&self, local_only: bool) -> Result<pb::GatewaysResponse, ApiError> {
        let node_id = self.config.node_id;
        let mut all: Vec<pb::GatewayInfo> = self
            .gateways()
            .into_iter()
            .map(|(report, ago)| pb::GatewayInfo {
                report: Some(report),
                node_id,
                last_report_ms: ago.as_millis() as u64,
            })
            .collect();
        if !local_only {
            let tree = self.directory();
            let nodes = crate::storage::blocking::run(move || Directory::nodes(&tree))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            let asks = nodes.into_iter().filter(|node| node.id != node_id).map(|node| {
                let peers = self.peers.clone();
                async move {
                    let channel = peers.channel(&node.addr).ok()?;
                    let mut request = tonic::Request::new(pb::GatewaysRequest { local_only: true });
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
        Ok(pb::GatewaysResponse { gateways: latest.into_values().collect() })
    }

    /// The directory, as of the meta leader's commit.
    pub async fn directory_dump(&self) -> Result<pb::DirectoryResponse, ApiError> {
        self.sync_group(&self.meta()).await?;
        let tree = self.directory();
        let response = crate::storage::blocking::run(move || {
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
        .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?;
        let metrics = self.meta().raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let response = pb::DirectoryResponse {
            meta_voters: membership.voter_ids().collect(),
            meta_learners: membership.learner_ids().collect(),
            ..response
        };
        Ok(response)
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
/// A row `missing` for every voter the directory gives a space cluster that
/// no node reported a replica of (a node that has not started it, or a
/// removed node still configured): health counts the configured voters, not
/// the replicas that happened to answer.
fn add_missing_voters(
    replicas: &mut Vec<pb::ReplicaStatus>,
    clusters: &[crate::meta::directory::ClusterEntry],
    nodes: &[crate::meta::directory::NodeEntry],
) {
    for cluster in clusters {
        for voter in &cluster.voters {
            if replicas.iter().any(|replica| replica.cluster_id == cluster.id && replica.node_id == *voter) {
                continue;
            }
            let node = nodes.iter().find(|node| node.id == *voter);
            replicas.push(pb::ReplicaStatus {
                node_id: *voter,
                region: node.map(|node| node.region.clone()).unwrap_or_default(),
                grpc_addr: node.map(|node| node.addr.clone()).unwrap_or_default(),
                cluster_id: cluster.id,
                role: MISSING.into(),
                error: "a voter of this cluster that hosts no replica of it".into(),
                ..Default::default()
            });
        }
    }
    replicas.sort_by_key(|replica| (replica.cluster_id, replica.node_id));
}

/// The role of a replica whose Raft stopped on a storage failure, and the
/// health of its node.
pub const STORAGE_FAILED: &str = "storage-failed";

/// The role of a replica whose node lost its data and is not re-admitted.
pub const NEEDS_REJOIN: &str = "needs-rejoin";

/// The role of a configured voter with no replica.
pub const MISSING: &str = "missing";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::directory::{ClusterEntry, NodeEntry};

    fn replica(cluster_id: u64, node_id: u64, role: &str) -> pb::ReplicaStatus {
        pb::ReplicaStatus { cluster_id, node_id, role: role.into(), ..Default::default() }
    }

    #[test]
    fn a_configured_voter_without_a_replica_is_shown_missing_and_counts_as_not_answering() {
        let mut replicas = vec![replica(1, 1, "leader"), replica(1, 2, "follower"), replica(2, 1, "leader")];
        let cluster =
            |id, voters: Vec<u64>| ClusterEntry { id, voters, learners: vec![], preferred_region: String::new() };
        let nodes: Vec<NodeEntry> = (1..=3)
            .map(|id| NodeEntry { id, region: format!("r{id}"), addr: format!("h:{id}"), drained: false })
            .collect();
        add_missing_voters(&mut replicas, &[cluster(1, vec![1, 2, 3]), cluster(2, vec![1, 2, 3])], &nodes);
        let rows: Vec<(u64, u64, &str)> = replicas.iter().map(|r| (r.cluster_id, r.node_id, r.role.as_str())).collect();
        assert_eq!(
            rows,
            [(1, 1, "leader"), (1, 2, "follower"), (1, 3, MISSING), (2, 1, "leader"), (2, 2, MISSING), (2, 3, MISSING)]
        );
        assert_eq!(replicas[2].region, "r3");
        // Cluster 1 has two of three voters: healthy; cluster 2 one of three: not.
        let health = crate::ctl::output::health(&replicas);
        assert_eq!(
            health.iter().map(|c| (c.cluster_id, c.healthy, c.answering, c.replicas)).collect::<Vec<_>>(),
            [(1, true, 2, 3), (2, false, 1, 3)]
        );
    }
}
