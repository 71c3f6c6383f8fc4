//! A node: one `spaceraft node` process in one region. It hosts replicas of
//! space clusters ([`group`]), serves the client, admin and Raft gRPC
//! services, and batches posts into Raft entries when it leads
//! ([`proposer`]). [`server`] wires it all together and runs it.

pub mod admin_service;
pub mod client_service;
pub mod detector;
pub mod follow;
pub mod group;
pub mod host;
pub mod leaders;
pub mod proposer;
pub mod quiesce;
pub mod server;
