//! The openraft type configuration shared by every space cluster: the
//! entries the log stores ([`crate::space::Command`]), the node address
//! kept in membership, and the snapshot file. It lives with storage, which
//! persists all of these; [`crate::raft`] re-exports it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

/// The data incarnation each member of one group has in the group's
/// *committed* membership (as its state machine last applied it), shared by
/// the state machine, which sets it, and the group's clients and Raft
/// service, which read it. A leader counts no reply (an append, heartbeat,
/// snapshot or vote) from another incarnation: a member that lost its data
/// may have lost entries it acknowledged, and a leader whose own committed
/// membership still records the old incarnation (a stale one, cut off
/// while the others went on) must not count it. An uncommitted re-admission
/// does not count: a stale leader can append one too.
#[derive(Clone, Default)]
pub struct Admitted(Arc<std::sync::RwLock<BTreeMap<u64, u64>>>);

impl Admitted {
    /// Records the members' incarnations of a newly applied membership.
    pub fn set(&self, members: impl IntoIterator<Item = (u64, u64)>) {
        *self.0.write().expect("admitted lock") = members.into_iter().collect();
    }

    /// The incarnation the committed membership records for `node` (0: not
    /// learned yet), if it is a member.
    pub fn get(&self, node: u64) -> Option<u64> {
        self.0.read().expect("admitted lock").get(&node).copied()
    }

    /// Why a message of `node` carrying incarnation `found` must not count.
    pub fn refused(&self, node: u64, found: u64) -> Option<String> {
        refused_incarnation(node, self.get(node)?, found)
    }
}

/// Why a message of `node` that carries incarnation `found` must not count
/// when the membership records `recorded` (0: not learned yet); None when
/// it may.
pub fn refused_incarnation(node: u64, recorded: u64, found: u64) -> Option<String> {
    (recorded != 0 && found != recorded).then(|| {
        format!(
            "node {node} answers as incarnation {found:016x}, but the membership records {recorded:016x}: \
             it lost its data and does not vote until it is re-admitted"
        )
    })
}
