//! The commands a space cluster's Raft log carries and their results.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{MessageBlock, SpaceRecord};
use crate::meta::directory::{MetaCommand, MetaError, MetaOutcome};

/// One Raft entry's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a space. The proposing node stamps the dedup window and the
    /// retention bound so every replica applies the same rules.
    CreateSpace {
        name: String,
        members: Vec<String>,
        attrs: BTreeMap<String, String>,
        dedup_window_len: u64,
        retain_messages_max: u64,
    },
    /// Many posts, possibly to many spaces, batched into one entry by the
    /// leader's proposer; results come back in the same order.
    Posts(Vec<PostCommand>),
    /// A change to the directory; only the meta group carries these.
    Meta(MetaCommand),
    /// Seals a space that moves to cluster `to`: from this entry on the
    /// space takes no post here (refused with [`ApplyError::Moved`]).
    /// Answers the sealed record.
    SealSpace { name: String, to: u64 },
    /// Copies a moving space in, in order: the first chunk (re)creates the
    /// space as importing with the sealed record's counters, each chunk
    /// adds message blocks, the last one opens the space for posts, its seqs
    /// going on from the sealed `last_seq`.
    ImportSpace { record: SpaceRecord, blocks: Vec<MessageBlock>, first: bool, last: bool },
    /// Adds and removes members of a space (removals after additions). The
    /// proposing node stamps its member bound. Answers the new record.
    UpdateMembers { name: String, add: Vec<String>, remove: Vec<String>, members_len_max: u64 },
    /// Deletes a space with its messages and keys, leaving a tombstone: the
    /// name is not taken again, so no cursor of the old space can be read
    /// against a new one. Deleting a deleted space succeeds again.
    DeleteSpace { name: String },
    /// Drops the messages and keys of a sealed copy once its move finished:
    /// the record stays (sealed, retaining nothing), so readers that still
    /// look here are sent where the space went. Answers how many messages
    /// were dropped.
    DropSealed { name: String },
}

/// One message to append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostCommand {
    pub space: String,
    pub author: String,
    pub body: String,
    /// Empty when the client gave no idempotency key.
    pub idempotency_key: String,
}

/// The outcome of a committed post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostOutcome {
    pub seq: u64,
    /// True when the key had committed before: `seq` is the original one.
    pub duplicate: bool,
}

/// Why apply refused a command. Refusals are deterministic: every replica
/// refuses the same commands, and a refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("space {space:?} does not exist")]
    UnknownSpace { space: String },
    #[error("user {user:?} is not a member of space {space:?}")]
    NotMember { space: String, user: String },
    #[error("space {space:?} already exists with other members or attributes")]
    SpaceExists { space: String },
    #[error("space {space:?} moved to space cluster {to}")]
    Moved { space: String, to: u64 },
    #[error("space {space:?} is being moved here and takes posts once the copy is complete")]
    Importing { space: String },
    #[error("space {space:?} would have no member left")]
    NoMembersLeft { space: String },
    /// A command no state could make valid (a name outside the alphabet, a
    /// body over the protocol's ceiling): apply checks every command itself,
    /// whoever proposed it.
    #[error("{why}")]
    Invalid { field: String, too_large: bool, why: String },
    #[error("space {space:?} would have {len} members; at most {max} are allowed")]
    TooManyMembers { space: String, len: u64, max: u64 },
    #[error("space {space:?} was deleted; the names of deleted spaces are not taken again")]
    Deleted { space: String },
    #[error("space {space:?} is not sealed by a move here")]
    NotSealed { space: String },
}

/// What applying one entry answers to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub enum CommandResult {
    /// Blank and membership entries answer nothing.
    #[default]
    None,
    SpaceCreated {
        /// True when an identical space already existed (a retried create).
        existed: bool,
        result: Result<(), ApplyError>,
    },
    Posts(Vec<Result<PostOutcome, ApplyError>>),
    Meta(Result<MetaOutcome, MetaError>),
    Sealed(Result<SpaceRecord, ApplyError>),
    Imported(Result<(), ApplyError>),
    /// The new record, and the log index of the change.
    MembersUpdated(Result<(SpaceRecord, u64), ApplyError>),
    /// The deleted space's last seq; None when it was deleted before.
    Deleted(Result<Option<u64>, ApplyError>),
    SealedDropped(Result<u64, ApplyError>),
}
