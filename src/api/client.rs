//! The `spaceraft.v1.Client` service: admit the caller, bind the request to
//! the user it may act for, call the node, encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::admit;
use crate::api::authz::user_for;
use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::pb;
use crate::security::{Principal, Role};
use crate::wire::Hop;

/// The attribute naming a space's owner: the user who created it, who may
/// change its members and delete it.
pub const OWNER_ATTR: &str = "owner";

pub struct ClientApi {
    pub host: Arc<Host>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEvent, Status>> + Send + 'static>>;
type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowEvent, Status>> + Send + 'static>>;

/// The node's answer on the wire.
fn answer<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|error| error.to_status())
}

/// The user a read is for: bound to a user's own name; an empty one (every
/// space, as an operator) only for callers holding the operator role.
fn reader(principal: &Principal, claimed: &str) -> Result<String, Status> {
    let user = user_for(principal, claimed).map_err(|error| error.to_status())?;
    if user.is_empty() && !principal.holds(Role::Operator) {
        let why = format!("{} must name the user it reads for", principal.describe());
        return Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status());
    }
    Ok(user)
}

impl ClientApi {
    /// Refuses a plain user who does not own `space` (operators, gateways
    /// acting for no user, and nodes pass).
    async fn owner_only(&self, principal: &Principal, space: &str) -> Result<(), Status> {
        let Some(user) = principal.bound_user() else { return Ok(()) };
        let info = self
            .host
            .get_space(pb::GetSpaceRequest { name: space.to_string() }, Hop::Client)
            .await
            .map_err(|error| error.to_status())?;
        if info.attrs.get(OWNER_ATTR).map(String::as_str) == Some(user) {
            return Ok(());
        }
        let why = format!("only the owner of space {space} or an operator may change or delete it, not {user}");
        Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status())
    }
}

#[tonic::async_trait]
impl pb::client_server::Client for ClientApi {
    async fn create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::CreateSpaceResponse>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/CreateSpace")?;
        let hop = Hop::of(request.metadata());
        let mut create = request.into_inner();
        if let Some(user) = principal.bound_user() {
            if create.attrs.get(OWNER_ATTR).is_some_and(|owner| owner != user) {
                let why = format!("{user} cannot create a space owned by another user");
                return Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status());
            }
            create.attrs.insert(OWNER_ATTR.to_string(), user.to_string());
        }
        answer(self.host.create_space(create, hop).await)
    }

    async fn post(&self, request: Request<pb::PostRequest>) -> Result<Response<pb::PostResponse>, Status> {
        let arrived = std::time::Instant::now();
        let principal = admit(&request, "spaceraft.v1.Client/Post")?;
        let hop = Hop::of(request.metadata());
        let mut post = request.into_inner();
        post.author = user_for(&principal, &post.author).map_err(|error| error.to_status())?;
        // A user's allowance, counted where the post enters the cluster (not
        // again where a node passes it on); operators' tools and a cluster
        // run with security off are not limited.
        if principal.is_rate_limited() && !self.host.post_rates.allow(&post.author) {
            let why = format!("{} posts faster than security.posts_per_user_per_sec allows; slow down", post.author);
            return Err(ApiError::new(ErrorKind::ResourceExhausted, why).to_status());
        }
        let answered = answer(self.host.post(post, hop).await);
        crate::stages::since(crate::stages::Stage::PostHandler, arrived);
        answered
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/History")?;
        let hop = Hop::of(request.metadata());
        let mut read = request.into_inner();
        read.user = reader(&principal, &read.user)?;
        answer(self.host.history(read, hop).await)
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/Subscribe")?;
        let hop = Hop::of(request.metadata());
        let mut subscribe = request.into_inner();
        subscribe.user = reader(&principal, &subscribe.user)?;
        let events = self.host.subscribe(subscribe, hop).await.map_err(|error| error.to_status())?;
        Ok(Response::new(Box::pin(events.map(|event| event.map_err(|error| error.to_status())))))
    }

    async fn get_space(&self, request: Request<pb::GetSpaceRequest>) -> Result<Response<pb::SpaceInfo>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/GetSpace")?;
        let hop = Hop::of(request.metadata());
        let info = self.host.get_space(request.into_inner(), hop).await.map_err(|error| error.to_status())?;
        if let Some(user) = principal.bound_user() {
            let owner = info.attrs.get(OWNER_ATTR).is_some_and(|owner| owner == user);
            if !owner && !info.members.iter().any(|member| member == user) {
                let why = format!("{user} is not a member of space {}", info.name);
                return Err(ApiError::new(ErrorKind::NotMember, why).to_status());
            }
        }
        Ok(Response::new(info))
    }

    async fn list_spaces(
        &self,
        request: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/ListSpaces")?;
        let mut list = request.into_inner();
        list.user = reader(&principal, &list.user)?;
        answer(self.host.list_spaces(list).await)
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<tonic::Streaming<pb::FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
        admit(&request, "spaceraft.v1.Client/Follow")?;
        if self.host.is_drained() {
            return Err(ApiError::new(
                crate::error::ErrorKind::NotProposed,
                "this node is drained: follow another replica",
            )
            .to_status());
        }
        let config = &self.host.config;
        let context = crate::node::follow::FollowContext {
            node_id: config.node_id,
            region: config.region.clone(),
            host: self.host.clone(),
            progress_interval: Duration::from_millis(config.network.follow_progress_interval_ms.max(1)),
        };
        let (sender, receiver) = mpsc::channel(config.limits.subscribe_queue_len_max.max(1));
        let requests = request.into_inner().map(|item| item.map_err(|status| ApiError::from_status(&status)));
        tokio::spawn(crate::node::follow::serve(context, requests, sender));
        let events = ReceiverStream::new(receiver).map(|event| event.map_err(|error| error.to_status()));
        Ok(Response::new(Box::pin(events)))
    }

    async fn update_members(
        &self,
        request: Request<pb::UpdateMembersRequest>,
    ) -> Result<Response<pb::SpaceInfo>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/UpdateMembers")?;
        let update = request.into_inner();
        self.owner_only(&principal, &update.space).await?;
        answer(self.host.update_members(update).await)
    }

    async fn delete_space(
        &self,
        request: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        let principal = admit(&request, "spaceraft.v1.Client/DeleteSpace")?;
        let delete = request.into_inner();
        self.owner_only(&principal, &delete.space).await?;
        answer(self.host.delete_space_request(delete).await)
    }
}
