//! Changing a space cluster's members (and the meta cluster's), on its
//! leader, with the directory recording the result.

use openraft::async_runtime::WatchReceiver;

use crate::config::NodeId;
use crate::error::ApiError;
use crate::meta::directory::{Directory, MetaCommand, META_GROUP_ID};
use crate::node::host::Host;
use crate::raft::group::Group;
use crate::raft::types::NodeAddr;

/// A change of a space cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner,
    Promote,
    Remove,
}

impl Host {
    /// Changes a space cluster's members, on its leader: adds `node` as a
    /// learner (its replica starts and catches up), promotes a learner to
    /// voter, or removes a member. A removal that would leave fewer voters up
    /// (as the failure detector sees them) than a majority of the remaining
    /// ones is refused unless `force`. The directory records the result.
    pub async fn change_members(
        &self,
        group: &Group,
        node: NodeId,
        change: MemberChange,
        force: bool,
    ) -> Result<(Vec<u64>, Vec<u64>), ApiError> {
        let cluster = group.id;
        let tree = self.directory();
        let (entry, node_entry) = {
            let tree = tree.clone();
            crate::storage::blocking::run(move || (Directory::cluster(&tree, cluster), Directory::node(&tree, node)))
                .await
                .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?
        };
        let node_entry = node_entry.ok_or_else(|| ApiError::refused(format!("node {node} is not registered")))?;
        // The meta cluster's members are its Raft membership (every node
        // hosts it, and a joined node is its learner); a space cluster's are
        // in the directory, which records every change.
        let is_meta = cluster == META_GROUP_ID;
        let (mut voters, mut learners) = if is_meta {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            (membership.voter_ids().collect::<Vec<_>>(), membership.learner_ids().collect::<Vec<_>>())
        } else {
            let entry = entry.ok_or_else(|| ApiError::refused(format!("space cluster {cluster} does not exist")))?;
            (entry.voters.clone(), entry.learners.clone())
        };
        let refused = |error| crate::node::commands::write_error(cluster, error);
        group.wake();
        match change {
            MemberChange::AddLearner => {
                if voters.contains(&node) {
                    return Err(ApiError::refused(format!(
                        "node {node} is a voter of space cluster {cluster} already"
                    )));
                }
                if !learners.contains(&node) {
                    learners.push(node);
                }
                if !is_meta {
                    self.meta_write(MetaCommand::SetMembers {
                        cluster,
                        voters: voters.clone(),
                        learners: learners.clone(),
                    })
                    .await?;
                }
                // Its incarnation if this node has heard it; else the
                // incarnation keeper fills it in ([`crate::node::rejoin`]).
                let incarnation = self.peers.seen_incarnation(node).unwrap_or(0);
                let addr = NodeAddr { addr: node_entry.addr, region: node_entry.region, incarnation };
                group.raft.add_learner(node, addr, true).await.map_err(refused)?;
            }
            MemberChange::Promote => {
                if voters.contains(&node) {
                    return Ok((voters, learners));
                }
                if !learners.contains(&node) {
                    return Err(ApiError::refused(format!(
                        "node {node} is not a learner of space cluster {cluster}: add it first"
                    )));
                }
                let change = openraft::ChangeMembers::AddVoterIds([node].into());
                change_patiently(group, change).await.map_err(refused)?;
                voters.push(node);
                learners.retain(|id| *id != node);
            }
            MemberChange::Remove => {
                if voters.contains(&node) {
                    let remaining: Vec<u64> = voters.iter().copied().filter(|id| *id != node).collect();
                    if remaining.is_empty() {
                        return Err(ApiError::refused(format!(
                            "node {node} is the last voter of space cluster {cluster}"
                        )));
                    }
                    let up = remaining.iter().filter(|id| self.detector.is_up(**id)).count();
                    if up <= remaining.len() / 2 && !force {
                        return Err(ApiError::refused(format!(
                            "removing node {node} leaves {up} of {} voters up, no majority: refused without force",
                            remaining.len()
                        )));
                    }
                    let change = openraft::ChangeMembers::RemoveVoters([node].into());
                    change_patiently(group, change).await.map_err(refused)?;
                    voters = remaining;
                } else if learners.contains(&node) {
                    let change = openraft::ChangeMembers::RemoveNodes([node].into());
                    change_patiently(group, change).await.map_err(refused)?;
                    learners.retain(|id| *id != node);
                } else {
                    return Err(ApiError::refused(format!("node {node} is not a member of space cluster {cluster}")));
                }
            }
        }
        if !is_meta {
            self.meta_write(MetaCommand::SetMembers { cluster, voters: voters.clone(), learners: learners.clone() })
                .await?;
        }
        tracing::info!(cluster, node, ?change, ?voters, ?learners, "cluster members changed");
        Ok((voters, learners))
    }
}

/// How long a member change waits for one in progress (such as the
/// incarnation keeper's) to commit.
const IN_PROGRESS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Changes a group's membership, waiting out a change still in progress.
async fn change_patiently(
    group: &Group,
    change: openraft::ChangeMembers<NodeId, NodeAddr>,
) -> crate::raft::group::WriteResult {
    let deadline = tokio::time::Instant::now() + IN_PROGRESS_WAIT;
    loop {
        let result = group.raft.change_membership(change.clone(), false).await;
        let in_progress = matches!(
            result.as_ref().err().and_then(|error| error.api_error()),
            Some(openraft::errors::ClientWriteError::ChangeMembershipError(
                openraft::errors::ChangeMembershipError::InProgress(_)
            ))
        );
        if !in_progress || tokio::time::Instant::now() >= deadline {
            return result;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
