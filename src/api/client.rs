//! The `spaceraft.v1.Client` service: decode, call the node, encode.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::node::host::Host;
use crate::pb;
use crate::wire::Hop;

pub struct ClientApi {
    pub host: Arc<Host>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEvent, Status>> + Send + 'static>>;
type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowEvent, Status>> + Send + 'static>>;

/// The node's answer on the wire.
fn answer<T>(result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|error| error.to_status())
}

#[tonic::async_trait]
impl pb::client_server::Client for ClientApi {
    async fn create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::CreateSpaceResponse>, Status> {
        let hop = Hop::of(request.metadata());
        answer(self.host.create_space(request.into_inner(), hop).await)
    }

    async fn post(&self, request: Request<pb::PostRequest>) -> Result<Response<pb::PostResponse>, Status> {
        let hop = Hop::of(request.metadata());
        answer(self.host.post(request.into_inner(), hop).await)
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let hop = Hop::of(request.metadata());
        answer(self.host.history(request.into_inner(), hop).await)
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let hop = Hop::of(request.metadata());
        let events = self.host.subscribe(request.into_inner(), hop).await.map_err(|error| error.to_status())?;
        Ok(Response::new(Box::pin(events.map(|event| event.map_err(|error| error.to_status())))))
    }

    async fn get_space(&self, request: Request<pb::GetSpaceRequest>) -> Result<Response<pb::SpaceInfo>, Status> {
        let hop = Hop::of(request.metadata());
        answer(self.host.get_space(request.into_inner(), hop).await)
    }

    async fn list_spaces(
        &self,
        request: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        answer(self.host.list_spaces(request.into_inner()).await)
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<tonic::Streaming<pb::FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
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
        answer(self.host.update_members(request.into_inner()).await)
    }

    async fn delete_space(
        &self,
        request: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        answer(self.host.delete_space_request(request.into_inner()).await)
    }
}
