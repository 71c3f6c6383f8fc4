//! Reads of the directory and of a replica's applied state, with the
//! read-index rounds that make them fresh: where a space is placed, which
//! nodes hold a cluster, a space's record.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::{Directory, SpacePlacement};
use crate::node::host::Host;
use crate::node::router::{Peer, RequestKind};
use crate::pb;
use crate::raft::group::Group;
use crate::wire::Hop;

impl Host {
    /// The placement of `space` in the local directory: from the cache of
    /// placements when the meta replica applied nothing since it was read
    /// (a post or read then takes no trip to a blocking thread).
    pub async fn placement(&self, space: &str) -> Result<Option<SpacePlacement>, ApiError> {
        let applied = *self.meta().reader.applied.borrow();
        if let Some(hit) = self.placements.lock().expect("placement cache lock").get(applied, space) {
            return Ok(Some(hit));
        }
        let (tree, name) = (self.directory(), space.to_string());
        let found = crate::storage::blocking::run(move || Directory::placement(&tree, &name))
            .await
            .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?;
        if let Some(placement) = &found {
            self.placements.lock().expect("placement cache lock").put(applied, placement.clone());
        }
        Ok(found)
    }

    /// The placement of `space`, reading the meta leader's commit first when
    /// the local directory does not know it (a space created a moment ago
    /// elsewhere).
    pub async fn placement_fresh(&self, space: &str) -> Result<SpacePlacement, ApiError> {
        if let Some(placement) = self.placement(space).await? {
            return Ok(placement);
        }
        self.sync_group(&self.meta()).await?;
        self.placement(space).await?.ok_or_else(|| ApiError::unknown_space(space))
    }

    /// Whether the local directory has `space` as deleted.
    pub async fn is_deleted(&self, space: &str) -> Result<bool, ApiError> {
        let (tree, space) = (self.directory(), space.to_string());
        crate::storage::blocking::run(move || Directory::is_deleted(&tree, &space))
            .await
            .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))
    }

    /// The addresses of `cluster`'s voters, this node's region first.
    pub async fn cluster_addrs(&self, cluster: u64) -> Result<Vec<Peer>, ApiError> {
        let tree = self.directory();
        let region = self.config.region.clone();
        crate::storage::blocking::run(move || {
            let entry = Directory::cluster(&tree, cluster)
                .ok_or_else(|| ApiError::not_found(format!("space cluster {cluster} does not exist")))?;
            let mut voters: Vec<(bool, u64, String)> = Directory::voters(&tree, &entry)
                .into_values()
                .map(|node| (node.region != region, node.id, node.addr))
                .collect();
            voters.sort();
            Ok(voters.into_iter().map(|(_, node_id, addr)| Peer { node_id, addr }).collect())
        })
        .await
        .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?
    }

    /// The stored record of `space` in this replica of its cluster. A space
    /// the directory places there but this replica has not applied yet (it
    /// was created a moment ago) is waited for with a read-index round.
    pub async fn space_record(&self, group: &Group, space: &str) -> Result<crate::space::SpaceRecord, ApiError> {
        let read = || {
            let (reader, space) = (group.reader.clone(), space.to_string());
            async move {
                crate::storage::blocking::run(move || Ok::<_, ApiError>(reader.space(&space)?))
                    .await
                    .map_err(|e| ApiError::internal(format!("read task failed: {e}")))?
            }
        };
        if let Some(record) = read().await? {
            return Ok(record);
        }
        self.sync_group(group).await?;
        read().await?.ok_or_else(|| ApiError::unknown_space(space))
    }

    /// Waits (up to `raft.leader_wait_ms`) until the directory holds a
    /// space cluster: right after bootstrap, the first one is on its way.
    pub async fn wait_for_first_cluster(&self) -> Result<(), ApiError> {
        let mut applied = self.meta().reader.applied.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms);
        loop {
            applied.borrow_and_update();
            let tree = self.directory();
            let any = crate::storage::blocking::run(move || Directory::loads(&tree).into_iter().next().is_some())
                .await
                .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?;
            if any {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::shutting_down()),
                Err(_) => {
                    return Err(ApiError::internal(
                        "the directory holds no space cluster yet (is the cluster bootstrapped?)",
                    ))
                }
            }
        }
    }

    /// Waits until this replica of `group` has applied everything committed
    /// before the call.
    pub async fn sync_group(&self, group: &Group) -> Result<(), ApiError> {
        let wanted = self.read_index(group.id, Hop::Client).await?;
        let mut applied = group.reader.applied.clone();
        let wait = Duration::from_millis(self.config.raft.leader_wait_ms);
        tokio::time::timeout(wait, applied.wait_for(|index| *index >= wanted))
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorKind::NoQuorum,
                    format!("space cluster {} did not apply its read index in time", group.id),
                )
            })?
            .map_err(|_| ApiError::shutting_down())?;
        Ok(())
    }

    /// The leader's commit index of cluster `cluster`, confirmed by a
    /// read-index round on its leader (here or over the network).
    pub async fn read_index(&self, cluster: u64, hop: Hop) -> Result<u64, ApiError> {
        let route = self.route(cluster, RequestKind::IDEMPOTENT_WRITE, hop);
        self.run(
            route,
            |group: Arc<Group>| async move { read_index_here(&group).await },
            |to, hop| async move {
                let mut client = self.admin_stub(&to.addr)?;
                let request = self.forward(pb::ReadIndexRequest { cluster_id: cluster }, hop);
                let reply = client.read_index(request).await.map_err(|status| ApiError::from_status(&status))?;
                Ok(reply.into_inner().index)
            },
        )
        .await
    }
}

/// A read-index round on this replica, which must lead.
pub async fn read_index_here(group: &Group) -> Result<u64, ApiError> {
    use openraft::errors::LinearizableReadError;
    match group.raft.ensure_linearizable(openraft::ReadPolicy::ReadIndex).await {
        Ok(log_id) => Ok(log_id.index()),
        Err(error) => Err(match error.api_error() {
            Some(LinearizableReadError::ForwardToLeader(_)) => ApiError::not_leader(group.id, None),
            Some(LinearizableReadError::QuorumNotEnough(_)) => ApiError::new(
                ErrorKind::NoQuorum,
                format!("read index of space cluster {} not confirmed by a quorum: {error}", group.id),
            ),
            _ => ApiError::new(
                ErrorKind::NotProposed,
                format!("read index of space cluster {} failed: {error}", group.id),
            ),
        }),
    }
}
