//! The client writes: post a message, create a space. Each goes to its
//! space cluster's leader through the runner; a new space is first placed
//! by the meta leader.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::{SpacePlacement, META_GROUP_ID};
use crate::node::commands::write_here;
use crate::node::host::Host;
use crate::node::read::space_info;
use crate::node::router::RequestKind;
use crate::pb;
use crate::placement::SpaceProfile;
use crate::raft::group::Group;
use crate::raft::proposer::ProposeError;
use crate::space::{validate, Command, CommandResult, PostCommand};
use crate::wire::Hop;

/// The attribute that names a space's org, for placement.
pub const ORG_ATTR: &str = "org";
/// The attribute that names a space's home region: a new cluster made for
/// it prefers its leader there.
pub const REGION_ATTR: &str = "region";
/// The attribute with a space's expected posts and reactions a minute.
pub const ACTIVITY_ATTR: &str = "activity_per_min";

impl Host {
    /// Posts a message. A post refused because its space moved committed
    /// nothing: the node the client called sends it on to where the space
    /// went.
    pub async fn post(&self, request: pb::PostRequest, hop: Hop) -> Result<pb::PostResponse, ApiError> {
        let entered = std::time::Instant::now();
        let limits = self.config.limits.request_limits();
        let post = PostCommand {
            space: request.space.clone(),
            author: request.author.clone(),
            body: request.body.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        validate::check_post(&post, &limits)?;
        let mut cluster = self.placement_fresh(&request.space).await?.cluster;
        let mut moves_left = 2;
        loop {
            match self.post_on(cluster, &post, &request, hop, entered).await {
                Err(ApiError { kind: ErrorKind::Moved { to }, .. }) if hop == Hop::Client && moves_left > 0 => {
                    moves_left -= 1;
                    cluster = to;
                }
                done => return done,
            }
        }
    }

    /// A post on space cluster `cluster`'s leader.
    async fn post_on(
        &self,
        cluster: u64,
        post: &PostCommand,
        request: &pb::PostRequest,
        hop: Hop,
        entered: std::time::Instant,
    ) -> Result<pb::PostResponse, ApiError> {
        let keyed = !post.idempotency_key.is_empty();
        self.run(
            self.route(cluster, RequestKind::write(keyed), hop),
            |group: Arc<Group>| {
                let post = post.clone();
                async move {
                    self.check_disk_reserve()?;
                    crate::stages::since(crate::stages::Stage::PostRoute, entered);
                    let outcome = group.proposer.propose(post).await.map_err(|error| propose_error(group.id, error))?;
                    Ok(pb::PostResponse {
                        space: request.space.clone(),
                        seq: outcome.seq,
                        duplicate: outcome.duplicate,
                    })
                }
            },
            |to, hop| async move {
                let mut client = self.client_stub(&to.addr)?;
                crate::error::answer_of(client.post(self.forward(request.clone(), hop)).await)
            },
        )
        .await
    }

    /// Creates a space (or answers the existing one when it is the same).
    pub async fn create_space(
        &self,
        request: pb::CreateSpaceRequest,
        hop: Hop,
    ) -> Result<pb::CreateSpaceResponse, ApiError> {
        let limits = self.config.limits.request_limits();
        let command = Command::CreateSpace {
            name: request.name.clone(),
            members: request.members.clone(),
            attrs: request.attrs.clone().into_iter().collect::<BTreeMap<_, _>>(),
            dedup_window_len: self.config.space.dedup_window_len,
            retain_messages_max: self.config.space.retain_messages_max,
        };
        validate::check_command(&command, &limits)?;
        let placement = match self.placement(&request.name).await? {
            Some(placement) => placement,
            None if hop >= Hop::Member => self.placement_fresh(&request.name).await?,
            None => match self.place_on_meta_leader(&request, hop).await? {
                Placed::Here(placement) => placement,
                Placed::Answered(response) => return Ok(response),
            },
        };
        let cluster = placement.cluster;
        let name = request.name.clone();
        self.run(
            self.route(cluster, RequestKind::IDEMPOTENT_WRITE, hop),
            |group: Arc<Group>| {
                let (command, name) = (command.clone(), name.clone());
                async move {
                    let CommandResult::SpaceCreated { existed, result } = write_here(&group, command).await? else {
                        return Err(ApiError::internal("unexpected apply result for create space"));
                    };
                    result?;
                    let space = space_info(&group, &name).await?;
                    Ok(pb::CreateSpaceResponse { space: Some(space), existed })
                }
            },
            |to, next_hop| {
                let request = request.clone();
                async move {
                    let mut client = self.client_stub(&to.addr)?;
                    crate::error::answer_of(client.create_space(self.forward(request, next_hop)).await)
                }
            },
        )
        .await
    }

    /// Places a new space on the meta leader: here when this node leads the
    /// meta cluster, else the whole create goes there (meta hop) and its
    /// answer is the answer. A create already on the meta hop is not passed
    /// on again.
    async fn place_on_meta_leader(&self, request: &pb::CreateSpaceRequest, hop: Hop) -> Result<Placed, ApiError> {
        let place_hop = if hop >= Hop::Meta { Hop::Leader } else { hop };
        self.run(
            self.route(META_GROUP_ID, RequestKind::IDEMPOTENT_WRITE, place_hop),
            |_meta| async move {
                let attrs = &request.attrs;
                let profile = SpaceProfile {
                    name: request.name.clone(),
                    org: attrs.get(ORG_ATTR).cloned(),
                    members: request.members.iter().cloned().collect(),
                    activity_per_min: attrs
                        .get(ACTIVITY_ATTR)
                        .and_then(|value| value.parse::<f64>().ok())
                        .filter(|value| value.is_finite() && *value >= 0.0)
                        .unwrap_or(0.0),
                };
                let home_region = attrs.get(REGION_ATTR).map(String::as_str);
                let placement = self.place_space(profile, attrs.clone().into_iter().collect(), home_region).await?;
                Ok(Placed::Here(placement))
            },
            |to, _| async move {
                let mut client = self.client_stub(&to.addr)?;
                crate::error::answer_of(client.create_space(self.forward(request.clone(), Hop::Meta)).await)
                    .map(Placed::Answered)
            },
        )
        .await
    }
}

/// What placing a space being created found.
enum Placed {
    /// Placed by this node, the meta leader.
    Here(SpacePlacement),
    /// The meta leader, asked over the network, did it all.
    Answered(pb::CreateSpaceResponse),
}

/// What a failed proposal means for the caller.
fn propose_error(cluster: u64, error: ProposeError) -> ApiError {
    match error {
        ProposeError::Refused(refused) => refused.into(),
        ProposeError::NotLeader(leader) => ApiError::not_leader(
            cluster,
            leader.map(|(node_id, addr)| crate::error::LeaderHint { node_id, addr }),
        ),
        ProposeError::NotQueued(why) => ApiError::new(ErrorKind::NotProposed, format!("post not proposed: {why}")),
        ProposeError::Unknown(why) => ApiError::new(
            ErrorKind::OutcomeUnknown,
            format!(
                "leadership changed while posting; the post may or may not have committed, retry with the same idempotency key ({why})"
            ),
        ),
    }
}
