//! Writes of commands to a space cluster or to the directory, on the
//! cluster's leader wherever it is: through the runner, so they are retried
//! only when that cannot apply them twice.

use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{ClientWriteError, RaftError};

use crate::error::{ApiError, ErrorKind, LeaderHint};
use crate::meta::directory::{MetaCommand, MetaOutcome, META_GROUP_ID};
use crate::node::host::Host;
use crate::node::router::RequestKind;
use crate::pb;
use crate::raft::group::Group;
use crate::raft::types::TypeConfig;
use crate::space::{Command, CommandResult};
use crate::wire::Hop;

impl Host {
    /// Runs `command` on the leader of `cluster` (here, or through the
    /// leader's node, or through a voter when the cluster is not hosted
    /// here) and answers what apply answered.
    pub async fn cluster_write(&self, cluster: u64, command: &Command) -> Result<CommandResult, ApiError> {
        self.cluster_write_from(cluster, command, Hop::Client).await
    }

    /// [`Host::cluster_write`] for a request that arrived on `hop`.
    pub async fn cluster_write_from(
        &self,
        cluster: u64,
        command: &Command,
        hop: Hop,
    ) -> Result<CommandResult, ApiError> {
        let route = self.route(cluster, RequestKind::write(is_idempotent(command)), hop);
        let bytes = postcard::to_stdvec(command).expect("commands serialize");
        self.run(
            route,
            |group: Arc<Group>| {
                let command = command.clone();
                async move { write_here(&group, command).await }
            },
            |to, hop| {
                let bytes = bytes.clone();
                async move {
                    let mut client = self.admin_stub(&to.addr)?;
                    let request = pb::ProposeRequest { cluster_id: cluster, command: bytes };
                    let reply = client
                        .propose(self.forward(request, hop))
                        .await
                        .map_err(|status| ApiError::from_status(&status))?;
                    postcard::from_bytes(&reply.into_inner().result)
                        .map_err(|e| ApiError::internal(format!("undecodable command result: {e}")))
                }
            },
        )
        .await
    }

    /// Commits a directory change through the meta leader and answers what
    /// apply answered.
    pub async fn meta_write(&self, command: MetaCommand) -> Result<MetaOutcome, ApiError> {
        match self.cluster_write(META_GROUP_ID, &Command::Meta(command)).await? {
            CommandResult::Meta(result) => result.map_err(ApiError::from),
            other => Err(ApiError::internal(format!("directory answered {other:?}"))),
        }
    }
}

/// How long a write waits for its Raft core's answer. A proposal the core
/// never answers must not hold its caller (or a task that retries it, as
/// bootstrap and join do) for ever: past this its outcome is unknown, and
/// the runner sends it again only when that cannot apply it twice.
pub const WRITE_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Writes `command` through this replica's Raft, which must lead.
pub async fn write_here(group: &Group, command: Command) -> Result<CommandResult, ApiError> {
    match tokio::time::timeout(WRITE_ANSWER_WAIT, group.woken_write(command)).await {
        Ok(answer) => answer.map(|response| response.data).map_err(|error| write_error(group.id, error)),
        Err(_) => Err(ApiError::new(
            ErrorKind::OutcomeUnknown,
            format!(
                "space cluster {}: no answer from its raft core within {} s: the write may or may not have committed",
                group.id,
                WRITE_ANSWER_WAIT.as_secs()
            ),
        )),
    }
}

/// What a failed `client_write` means for the caller: refused before it was
/// proposed (another node leads), or proposed with an unknown outcome.
pub fn write_error(cluster: u64, error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> ApiError {
    match error.api_error() {
        Some(ClientWriteError::ForwardToLeader(forward)) => {
            let leader = forward
                .leader_id
                .zip(forward.leader_node.as_ref())
                .map(|(node_id, node)| LeaderHint { node_id, addr: node.addr.clone() });
            ApiError::not_leader(cluster, leader)
        }
        Some(ClientWriteError::ChangeMembershipError(change)) => {
            ApiError::refused(format!("space cluster {cluster}: {change}"))
        }
        _ => ApiError::new(
            ErrorKind::OutcomeUnknown,
            format!("space cluster {cluster}: the write may or may not have committed: {error}"),
        ),
    }
}

/// Whether applying `command` twice does what applying it once does, so it
/// may be sent again after an unknown outcome. Every command but a batch of
/// posts without keys, and a new cluster made unconditionally, is: creates
/// and imports answer what exists, member changes and deletes converge.
pub fn is_idempotent(command: &Command) -> bool {
    match command {
        Command::Posts(posts) => posts.iter().all(|post| !post.idempotency_key.is_empty()),
        Command::Meta(MetaCommand::CreateCluster { only_if_none, .. }) => *only_if_none,
        _ => true,
    }
}
