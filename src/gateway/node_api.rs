//! Calls a gateway makes on nodes for its clients: post, history, list.
//! Each carries the client's user, so the node checks membership again.
//!
//! A call goes to the best node first and moves on to the next when that
//! node cannot be reached; a post without an idempotency key moves on only
//! when it surely was not delivered (connect failure), since sending it
//! twice could commit it twice. A keyed post also moves on when a node has
//! not answered within `post_attempt` (a frozen node, a dead region whose
//! connections stay open): its key commits it once wherever it lands.

use std::time::{Duration, Instant};

use tonic::Status;

use crate::error::ApiError;

use crate::gateway::nodes::NodePool;
use crate::pb;

#[derive(Clone)]
pub struct NodeApi {
    pub pool: NodePool,
    pub timeout: Duration,
    /// How long a keyed post waits for one node before trying the next.
    pub post_attempt: Duration,
}

impl NodeApi {
    fn client(&self, index: usize) -> pb::client_client::ClientClient<crate::wire::Stamped> {
        pb::client_client::ClientClient::new(self.pool.nodes[index].channel.clone())
            .max_decoding_message_size(512 * 1024 * 1024)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    pub async fn post(&self, request: pb::PostRequest) -> Result<pb::PostResponse, Status> {
        let keyed = !request.idempotency_key.is_empty();
        let deadline = Instant::now() + self.timeout;
        let ranked = self.pool.ranked(&[]);
        let mut last_error = Status::unavailable("no node configured");
        for (tried, &index) in ranked.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let last = tried + 1 == ranked.len();
            let attempt = if keyed && !last { left.min(self.post_attempt) } else { left };
            let mut call = tonic::Request::new(request.clone());
            call.set_timeout(attempt);
            match tokio::time::timeout(attempt, self.client(index).post(call)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) if may_try_elsewhere(&status, keyed) => last_error = status,
                Ok(Err(status)) => return Err(status),
                // Only a keyed post has a bound shorter than the whole
                // timeout before its last node: it may go on.
                Err(_) => {
                    let node = &self.pool.nodes[index].endpoint.addr;
                    let why = format!("node {node} did not answer the post within {attempt:?}");
                    let status = ApiError::new(crate::error::ErrorKind::OutcomeUnknown, why).to_status();
                    if !keyed {
                        return Err(status);
                    }
                    last_error = status;
                }
            }
        }
        Err(last_error)
    }

    pub async fn history(&self, request: pb::HistoryRequest) -> Result<pb::HistoryResponse, Status> {
        let mut last_error = Status::unavailable("no node configured");
        for index in self.pool.ranked(&[]) {
            match self.client(index).history(self.request(request.clone())).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if may_try_elsewhere(&status, true) => last_error = status,
                Err(status) => return Err(status),
            }
        }
        Err(last_error)
    }

    pub async fn list_spaces(&self, user: &str) -> Result<Vec<pb::SpaceInfo>, Status> {
        let mut last_error = Status::unavailable("no node configured");
        for index in self.pool.ranked(&[]) {
            let request = self.request(pb::ListSpacesRequest { user: user.to_string() });
            match self.client(index).list_spaces(request).await {
                Ok(response) => return Ok(response.into_inner().spaces),
                Err(status) if may_try_elsewhere(&status, true) => last_error = status,
                Err(status) => return Err(status),
            }
        }
        Err(last_error)
    }
}

/// Whether a failed call may be sent to another node: always for calls
/// that are safe to repeat, else only when the node was never reached.
fn may_try_elsewhere(status: &Status, repeatable: bool) -> bool {
    let kind = ApiError::from_status(status).kind;
    kind.surely_not_applied() || (repeatable && kind.is_transient())
}
