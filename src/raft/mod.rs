//! Raft: the openraft type configuration and the gRPC transport between
//! nodes. One connection per peer node carries every group's traffic; every
//! request names its group.

pub mod network;
pub mod service;
pub mod types;

pub use types::{NodeAddr, Raft, TypeConfig};
