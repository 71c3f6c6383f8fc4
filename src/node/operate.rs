//! Operator requests that change the cluster, each run where it must run
//! (through the runner): leadership transfers, member changes, drains,
//! preferred regions, moves; and the requests nodes make of each other
//! (propose, read index, join, nudge).

use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::{Directory, MetaCommand, NodeEntry, META_GROUP_ID};
use crate::node::commands::write_here;
use crate::node::host::Host;
use crate::node::lookup::read_index_here;
use crate::node::members::MemberChange;
use crate::node::read::off_runtime;
use crate::node::router::RequestKind;
use crate::pb;
use crate::raft::group::Group;
use crate::space::validate::Limits;
use crate::space::Command;
use crate::wire::Hop;

impl Host {
    /// Moves the leadership of `cluster` to node `to`, on its leader.
    pub async fn transfer_leader(&self, request: pb::TransferLeaderRequest, hop: Hop) -> Result<(), ApiError> {
        let cluster = request.cluster_id;
        self.run(
            self.route(cluster, RequestKind::IDEMPOTENT_WRITE, hop),
            |group: Arc<Group>| async move {
                let is_voter = group
                    .raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| id == request.to_node);
                if !is_voter {
                    return Err(ApiError::refused(format!(
                        "node {} is not a voter of space cluster {cluster}",
                        request.to_node
                    )));
                }
                if request.to_node != self.config.node_id {
                    group
                        .raft
                        .trigger()
                        .transfer_leader(request.to_node)
                        .await
                        .map_err(|error| ApiError::new(ErrorKind::NotProposed, format!("transfer failed: {error}")))?;
                }
                Ok(())
            },
            |to, hop| async move {
                let mut client = self.admin_stub(&to.addr)?;
                client
                    .transfer_leader(self.forward(request, hop))
                    .await
                    .map_err(|status| ApiError::from_status(&status))?;
                Ok(())
            },
        )
        .await
    }

    /// Adds a learner to, promotes a learner of, or removes a member from
    /// `cluster`, on its leader.
    pub async fn change_members_routed(
        &self,
        request: pb::ChangeMembersRequest,
        hop: Hop,
    ) -> Result<pb::ChangeMembersResponse, ApiError> {
        let change = match request.change.as_str() {
            "add_learner" => MemberChange::AddLearner,
            "promote" => MemberChange::Promote,
            "remove" => MemberChange::Remove,
            other => {
                return Err(ApiError::new(
                    ErrorKind::Invalid { field: "change".into() },
                    format!("unknown membership change {other:?}: use add_learner, promote or remove"),
                ))
            }
        };
        self.run(
            self.route(request.cluster_id, RequestKind::IDEMPOTENT_WRITE, hop),
            |group: Arc<Group>| async move {
                let (voters, learners) = self.change_members(&group, request.node_id, change, request.force).await?;
                Ok(pb::ChangeMembersResponse { voters, learners })
            },
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.admin_stub(&to.addr)?;
                    crate::error::answer_of(client.change_members(self.forward(request, hop)).await)
                }
            },
        )
        .await
    }

    pub async fn set_drained(&self, request: pb::SetDrainedRequest) -> Result<(), ApiError> {
        self.meta_write(MetaCommand::SetDrained { node: request.node_id, drained: request.drained }).await?;
        Ok(())
    }

    pub async fn set_preferred_region(&self, request: pb::SetPreferredRegionRequest) -> Result<(), ApiError> {
        let (tree, region, cluster) = (self.directory(), request.region.clone(), request.cluster_id);
        let (known, exists) = off_runtime(move || {
            Ok((
                Directory::nodes(&tree).iter().any(|node| node.region == region),
                Directory::cluster(&tree, cluster).is_some(),
            ))
        })
        .await?;
        if !exists {
            return Err(ApiError::not_found(format!("space cluster {cluster} does not exist")));
        }
        if !request.region.is_empty() && !known {
            return Err(ApiError::new(
                ErrorKind::Invalid { field: "region".into() },
                format!("no node is registered in region {:?}", request.region),
            ));
        }
        self.meta_write(MetaCommand::SetPreferredRegion { cluster: request.cluster_id, region: request.region })
            .await?;
        Ok(())
    }

    /// Heartbeats once in every group this node leads with `from` as a
    /// member; answers how many.
    pub async fn nudge(&self, from: u64) -> u32 {
        let mut groups = 0;
        for group in self.groups.all() {
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
        groups
    }

    /// Moves a space, on a node that hosts its old cluster.
    pub async fn move_space_routed(
        &self,
        request: pb::MoveSpaceRequest,
        hop: Hop,
    ) -> Result<pb::MoveSpaceResponse, ApiError> {
        let limits = self.config.limits.request_limits();
        crate::space::validate::check_name("space name", &request.space, &limits)?;
        let placement = self.placement_fresh(&request.space).await?;
        self.run(
            self.route(placement.cluster, RequestKind::READ, hop),
            |_group| self.move_space(&request.space, request.to_cluster),
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.admin_stub(&to.addr)?;
                    crate::error::answer_of(client.move_space(self.forward(request, hop)).await)
                }
            },
        )
        .await
    }

    /// A command passed on by another node, for the leader of its cluster.
    pub async fn propose(&self, request: pb::ProposeRequest, hop: Hop) -> Result<pb::ProposeReply, ApiError> {
        let command = decode_proposed_command(&request.command, &self.config.limits.request_limits())?;
        let result = self.cluster_write_from(request.cluster_id, &command, hop).await?;
        Ok(pb::ProposeReply { result: postcard::to_stdvec(&result).expect("results serialize") })
    }

    /// A read-index round asked by another node, on this replica.
    pub async fn read_index_for_peer(&self, cluster: u64, hop: Hop) -> Result<u64, ApiError> {
        let Some(group) = self.groups.get(cluster) else {
            return Err(ApiError::new(ErrorKind::NotProposed, format!("space cluster {cluster} is not hosted here")));
        };
        if hop == Hop::Leader {
            return read_index_here(&group).await;
        }
        self.read_index(cluster, hop).await
    }

    /// Mints a one-time join token valid for `ttl_secs`: only its digest is
    /// written to the directory.
    pub async fn join_token(&self, ttl_secs: u64) -> Result<pb::JoinTokenReply, ApiError> {
        let token = crate::security::join::new_token();
        let ttl_ms = if ttl_secs == 0 { 3_600_000 } else { ttl_secs.saturating_mul(1000) };
        let expires_unix_ms = crate::security::join::now_ms().saturating_add(ttl_ms);
        let digest = crate::security::join::digest(&token);
        self.meta_write(MetaCommand::AddJoinToken { digest, expires_ms: expires_unix_ms }).await?;
        Ok(pb::JoinTokenReply { token, expires_unix_ms })
    }

    /// Registers a node started after bootstrap and makes it a learner of
    /// the meta cluster, on the meta leader. Answers the cluster's id.
    pub async fn join(&self, request: pb::JoinRequest, hop: Hop) -> Result<pb::JoinReply, ApiError> {
        if request.node_id == 0 || request.region.is_empty() || request.grpc_addr.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Invalid { field: "node".into() },
                "a joining node needs an id, a region and an address",
            ));
        }
        let cluster_id = self.cluster.get().unwrap_or_default().to_string();
        self.run(
            self.route(META_GROUP_ID, RequestKind::IDEMPOTENT_WRITE, hop),
            |meta: Arc<Group>| {
                let (request, cluster_id) = (request.clone(), cluster_id.clone());
                async move {
                    let entry = NodeEntry {
                        id: request.node_id,
                        region: request.region.clone(),
                        addr: request.grpc_addr.clone(),
                        drained: false,
                    };
                    // With security on, a node not registered yet spends a
                    // join token; with it off, anyone may register.
                    let command = if self.gate.insecure {
                        MetaCommand::RegisterNode(entry)
                    } else {
                        MetaCommand::AdmitNode {
                            node: entry,
                            digest: crate::security::join::digest(&request.join_token),
                            now_ms: crate::security::join::now_ms(),
                        }
                    };
                    let registered = write_here(&meta, Command::Meta(command)).await?;
                    if let crate::space::CommandResult::Meta(Err(refused)) = registered {
                        return Err(refused.into());
                    }
                    let known = meta
                        .raft
                        .metrics()
                        .borrow_watched()
                        .membership_config
                        .membership()
                        .get_node(&request.node_id)
                        .is_some();
                    if !known {
                        let node = crate::raft::types::NodeAddr {
                            addr: request.grpc_addr,
                            region: request.region,
                            incarnation: 0,
                        };
                        meta.raft
                            .add_learner(request.node_id, node, false)
                            .await
                            .map_err(|error| crate::node::commands::write_error(META_GROUP_ID, error))?;
                    }
                    Ok(pb::JoinReply { cluster_id })
                }
            },
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.admin_stub(&to.addr)?;
                    crate::error::answer_of(client.join(self.forward(request, hop)).await)
                }
            },
        )
        .await
    }
}

/// The command of an `Admin.Propose` request, decoded and checked: passed
/// on by a node or not, a command is checked like a client's request.
pub fn decode_proposed_command(bytes: &[u8], limits: &Limits) -> Result<Command, ApiError> {
    let command: Command = postcard::from_bytes(bytes).map_err(|e| {
        ApiError::new(ErrorKind::Invalid { field: "command".into() }, format!("undecodable command: {e}"))
    })?;
    crate::space::validate::check_command(&command, limits)?;
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (fuzz/regressions/api_request/): a raw space copy
    /// with overlapping blocks (and no name) is refused before it is
    /// proposed, with an invalid-argument error.
    #[test]
    fn a_proposed_space_copy_with_overlapping_blocks_is_refused() {
        let crasher = include_bytes!("../../fuzz/regressions/api_request/crash-import-overlapping-blocks");
        // The fuzz target's first byte picks the decoder; the rest is the command.
        let error = decode_proposed_command(&crasher[1..], &Limits::default()).unwrap_err();
        assert!(matches!(error.kind, ErrorKind::Invalid { .. }), "{error}");
    }
}
