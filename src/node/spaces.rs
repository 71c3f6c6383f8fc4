//! Space administration on a node: placing a new space (on the meta
//! leader), changing a space's members, deleting a space.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::{choose_voters, Directory, MetaCommand, MetaOutcome, SpacePlacement};
use crate::node::host::Host;
use crate::node::read::record_info;
use crate::pb;
use crate::placement::{place, Placement, SpaceProfile};
use crate::space::{validate, Command, CommandResult};

impl Host {
    /// Places a new space (on the meta leader): the policy picks a cluster,
    /// or a new cluster is made with voters across regions.
    pub async fn place_space(
        &self,
        profile: SpaceProfile,
        attrs: BTreeMap<String, String>,
        home_region: Option<&str>,
    ) -> Result<SpacePlacement, ApiError> {
        let _placing = self.placing.lock().await;
        if let Some(placement) = self.placement(&profile.name).await? {
            return Ok(placement);
        }
        if self.is_deleted(&profile.name).await? {
            return Err(ApiError::refused(crate::meta::directory::MetaError::Deleted(profile.name).to_string()));
        }
        self.wait_for_first_cluster().await?;
        let tree = self.directory();
        let (loads, nodes, clusters) = {
            let tree = tree.clone();
            crate::storage::blocking::run(move || {
                (Directory::loads(&tree), Directory::nodes(&tree), Directory::clusters(&tree))
            })
            .await
            .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?
        };
        let (cluster, reason) = match place(&profile, &loads, &self.config.placement) {
            Placement::Existing { cluster, reason } => (cluster, reason),
            Placement::NewCluster { reason } => {
                let voters = choose_voters(&nodes, &clusters, self.config.groups.cluster_voters_len, |id| {
                    self.detector.is_up(id)
                });
                if voters.is_empty() {
                    return Err(ApiError::internal("no registered node is up to host a new space cluster"));
                }
                let regions: BTreeSet<&str> = nodes.iter().map(|node| node.region.as_str()).collect();
                let preferred_region = match home_region.filter(|region| regions.contains(region)) {
                    Some(region) => region.to_string(),
                    // Spread leaderships over the regions.
                    None => {
                        regions.iter().nth(clusters.len() % regions.len().max(1)).copied().unwrap_or("").to_string()
                    }
                };
                let command = MetaCommand::CreateCluster { voters, preferred_region, only_if_none: false };
                match self.meta_write(command).await? {
                    MetaOutcome::ClusterCreated { id, .. } => {
                        tracing::info!(cluster = id, space = %profile.name, "made a new space cluster");
                        (id, reason)
                    }
                    other => return Err(ApiError::internal(format!("directory answered {other:?}"))),
                }
            }
        };
        match self.meta_write(MetaCommand::PlaceSpace { space: profile, attrs, cluster, reason }).await? {
            MetaOutcome::SpacePlaced { placement, .. } => Ok(placement),
            other => Err(ApiError::internal(format!("directory answered {other:?}"))),
        }
    }

    /// Adds and removes members of `space` in its cluster, then records the
    /// new members in the directory (where placement and `space list --as`
    /// read them). Answers the space's record.
    pub async fn update_space_members(
        &self,
        space: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<crate::space::SpaceRecord, ApiError> {
        let placement = self.placement_fresh(space).await?;
        if placement.moving_to.is_some() {
            return Err(ApiError::moving(space));
        }
        let members_len_max = self.config.limits.request_limits().members_len_max as u64;
        let command = Command::UpdateMembers { name: space.to_string(), add, remove, members_len_max };
        let (record, as_of) = match self.cluster_write(placement.cluster, &command).await? {
            CommandResult::MembersUpdated(result) => result.map_err(ApiError::from)?,
            other => return Err(ApiError::internal(format!("member change answered {other:?}"))),
        };
        let members = record.members.iter().cloned().collect();
        let set = MetaCommand::SetSpaceMembers { space: space.to_string(), members, cluster: placement.cluster, as_of };
        self.meta_write(set).await?;
        Ok(record)
    }

    /// Deletes `space`: its cluster drops the record, messages and keys and
    /// keeps a tombstone, then the directory forgets the placement and keeps
    /// the name from being placed again. Gateways end their subscribers'
    /// subscriptions. Running it again (after it was cut short) finishes it.
    /// Answers the deleted space's last seq (None when it was deleted before).
    pub async fn delete_space(&self, space: &str) -> Result<Option<u64>, ApiError> {
        let placement = match self.placement_fresh(space).await {
            Ok(placement) => placement,
            Err(error) if error.kind == ErrorKind::NotFound && self.is_deleted(space).await? => return Ok(None),
            Err(error) => return Err(error),
        };
        if placement.moving_to.is_some() {
            return Err(ApiError::refused(format!("space {space:?} is being moved; finish the move first")));
        }
        let last_seq =
            match self.cluster_write(placement.cluster, &Command::DeleteSpace { name: space.to_string() }).await? {
                CommandResult::Deleted(result) => result.map_err(ApiError::from)?,
                other => return Err(ApiError::internal(format!("delete answered {other:?}"))),
            };
        self.meta_write(MetaCommand::DeleteSpace { space: space.to_string() }).await?;
        tracing::info!(space, cluster = placement.cluster, ?last_seq, "space deleted");
        Ok(last_seq)
    }
}

impl Host {
    /// Adds and removes members of a space; answers its new info.
    pub async fn update_members(&self, request: pb::UpdateMembersRequest) -> Result<pb::SpaceInfo, ApiError> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits)?;
        if request.add.is_empty() && request.remove.is_empty() {
            return Err(ApiError::new(
                ErrorKind::Invalid { field: "members".into() },
                "name at least one member to add or remove",
            ));
        }
        for user in request.add.iter().chain(&request.remove) {
            validate::check_name("user name", user, &limits)?;
        }
        let record = self.update_space_members(&request.space, request.add, request.remove).await?;
        let cluster = self.placement(&request.space).await?.map(|placement| placement.cluster).unwrap_or(0);
        Ok(record_info(record, cluster))
    }

    /// Deletes a space; answers whether it existed and its last seq.
    pub async fn delete_space_request(
        &self,
        request: pb::DeleteSpaceRequest,
    ) -> Result<pb::DeleteSpaceResponse, ApiError> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits)?;
        let deleted = self.delete_space(&request.space).await?;
        Ok(pb::DeleteSpaceResponse { space: request.space, existed: deleted.is_some(), last_seq: deleted.unwrap_or(0) })
    }
}
