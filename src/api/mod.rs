//! The front door: every request a node takes enters here. The tonic
//! services are thin adapters ([`client`], [`admin`], [`raft`]): they read
//! what the request carries beside its message (the hop it is on, the
//! cluster it is meant for), call the node ([`crate::node`]), and answer,
//! mapping every error onto the wire in one way ([`crate::error::ApiError::to_status`]).
//!
//! [`services`] builds them behind one interceptor that refuses requests
//! meant for another cluster (`wrong_cluster`); [`server`] starts a node
//! process: its stores, its groups, and these services with
//! `grpc.health.v1`.

pub mod admin;
pub mod client;
pub mod raft;
pub mod server;

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;

use crate::node::host::Host;
use crate::pb;
use crate::wire::ClusterId;

/// Refuses a request that names another cluster than this node's.
#[derive(Clone)]
pub struct ClusterCheck {
    cluster: ClusterId,
}

impl tonic::service::Interceptor for ClusterCheck {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.cluster.check(request.metadata()).map_err(|error| error.to_status())?;
        Ok(request)
    }
}

/// The node's gRPC services, ready to serve.
pub struct Services {
    pub client: InterceptedService<pb::client_server::ClientServer<client::ClientApi>, ClusterCheck>,
    pub admin: InterceptedService<pb::admin_server::AdminServer<admin::AdminApi>, ClusterCheck>,
    pub raft: pb::raft_server::RaftServer<raft::RaftApi>,
}

/// Builds the services of `host`: a client request is bounded by
/// `message_bytes_max`, a Raft message by `raft_bytes_max`.
pub fn services(host: &Arc<Host>, message_bytes_max: usize, raft_bytes_max: usize) -> Services {
    let check = ClusterCheck { cluster: host.cluster.clone() };
    let client = pb::client_server::ClientServer::new(client::ClientApi { host: host.clone() })
        .max_decoding_message_size(message_bytes_max);
    let admin = pb::admin_server::AdminServer::new(admin::AdminApi { host: host.clone() });
    let raft = pb::raft_server::RaftServer::new(raft::RaftApi { host: host.clone() })
        .max_decoding_message_size(raft_bytes_max)
        .max_encoding_message_size(raft_bytes_max);
    Services {
        client: InterceptedService::new(client, check.clone()),
        admin: InterceptedService::new(admin, check),
        raft,
    }
}
