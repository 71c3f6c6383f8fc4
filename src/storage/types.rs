//! The openraft type configuration shared by every space cluster: the
//! entries the log stores ([`crate::space::Command`]), the node address
//! kept in membership, and the snapshot file. It lives with storage, which
//! persists all of these; [`crate::raft`] re-exports it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::space::{Command, CommandResult};

/// How a node is reached and where it lives; stored in Raft membership.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeAddr {
    /// host:port of the node's gRPC server.
    pub addr: String,
    pub region: String,
    /// The incarnation of the member's data directory
    /// ([`crate::storage::data_dir::Identity::incarnation`]); 0 until the
    /// leader has learned it. A member that answers with another incarnation
    /// lost its data: its votes do not count until it is re-admitted.
    pub incarnation: u64,
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{:016x}", self.region, self.addr, self.incarnation)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateSpace { name, members, .. } => {
                write!(f, "create-space {name} ({} members)", members.len())
            }
            Command::Posts(posts) => write!(f, "posts x{}", posts.len()),
            Command::Meta(meta) => write!(f, "meta {meta:?}"),
            Command::SealSpace { name, to } => write!(f, "seal-space {name} (to cluster {to})"),
            Command::ImportSpace { record, blocks, first, last } => {
                write!(f, "import-space {} ({} blocks, first {first}, last {last})", record.name, blocks.len())
            }
            Command::UpdateMembers { name, add, remove, .. } => {
                write!(f, "update-members {name} (+{} -{})", add.len(), remove.len())
            }
            Command::DeleteSpace { name } => write!(f, "delete-space {name}"),
            Command::DropSealed { name } => write!(f, "drop-sealed {name}"),
        }
    }
}

openraft::declare_raft_types!(
    /// Types of the space clusters' Raft groups.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeAddr,
);

pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, crate::storage::SnapshotFile>;
pub type Raft = openraft::Raft<TypeConfig, crate::storage::SpaceStateMachine>;
