//! The front door: every request a node takes enters here. The tonic
//! services are thin adapters ([`client`], [`admin`], [`raft`]): they read
//! what the request carries beside its message (the hop it is on, the
//! cluster it is meant for), call the node ([`crate::node`]), and answer,
//! mapping every error onto the wire in one way ([`crate::error::ApiError::to_status`]).
//!
//! [`services`] builds them behind one interceptor, the [`FrontDoor`]: it
//! refuses requests meant for another cluster (`wrong_cluster`) and
//! establishes who is calling ([`Gate`]); each handler then admits
//! the call by the table in [`authz::RPCS`] before it reaches the node.
//! [`server`] starts a node process: its stores, its groups, and these
//! services with `grpc.health.v1`.

pub mod admin;
pub mod authz;
pub mod client;
pub mod raft;
pub mod server;

use std::sync::Arc;

use tonic::service::interceptor::InterceptedService;

use crate::node::host::Host;
use crate::pb;
use crate::security::gate::Gate;
use crate::security::Principal;
use crate::wire::ClusterId;

/// Refuses a request that names another cluster than this node's, and
/// puts on every other one the [`Principal`] it comes from.
#[derive(Clone)]
pub struct FrontDoor {
    cluster: ClusterId,
    gate: Gate,
}

impl tonic::service::Interceptor for FrontDoor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.cluster.check(request.metadata()).map_err(|error| error.to_status())?;
        let principal = self.gate.principal(&request).map_err(|error| error.to_status())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// The principal of `request`, if it may call `path` (see [`authz::RPCS`]).
pub fn admit<T>(request: &tonic::Request<T>, path: &'static str) -> Result<Principal, tonic::Status> {
    let principal = authz::principal_of(request);
    authz::allowed(&principal, authz::rule(path)).map_err(|error| error.to_status())?;
    Ok(principal)
}

/// The node's gRPC services, ready to serve.
pub struct Services {
    pub client: InterceptedService<pb::client_server::ClientServer<client::ClientApi>, FrontDoor>,
    pub admin: InterceptedService<pb::admin_server::AdminServer<admin::AdminApi>, FrontDoor>,
    pub raft: InterceptedService<pb::raft_server::RaftServer<raft::RaftApi>, Gate>,
}

/// The Raft service's interceptor: the principal only (a Raft message's
/// cluster is checked, or learned, by the service itself).
impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let principal = self.principal(&request).map_err(|error| error.to_status())?;
        request.extensions_mut().insert(principal);
        Ok(request)
    }
}

/// Builds the services of `host`: a client request is bounded by
/// `message_bytes_max`, a Raft message by `raft_bytes_max`.
pub fn services(host: &Arc<Host>, message_bytes_max: usize, raft_bytes_max: usize) -> Services {
    let gate = host.gate.clone();
    let check = FrontDoor { cluster: host.cluster.clone(), gate: gate.clone() };
    let client = pb::client_server::ClientServer::new(client::ClientApi { host: host.clone() })
        .max_decoding_message_size(message_bytes_max);
    let admin = pb::admin_server::AdminServer::new(admin::AdminApi { host: host.clone() });
    let raft = pb::raft_server::RaftServer::new(raft::RaftApi { host: host.clone() })
        .max_decoding_message_size(raft_bytes_max)
        .max_encoding_message_size(raft_bytes_max);
    Services {
        client: InterceptedService::new(client, check.clone()),
        admin: InterceptedService::new(admin, check),
        raft: InterceptedService::new(raft, gate),
    }
}
