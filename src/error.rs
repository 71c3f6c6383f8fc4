//! The errors of the client and admin APIs, and their one mapping to gRPC
//! status codes. Messages are lowercase and name what was wrong.

use crate::config::NodeId;
use crate::space::validate::InvalidRequest;
use crate::space::ApplyError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Invalid(#[from] InvalidRequest),
    #[error("space {space:?} does not exist")]
    UnknownSpace { space: String },
    #[error("user {user:?} is not a member of space {space:?}")]
    NotMember { space: String, user: String },
    #[error("space {space:?} already exists with other members or attributes")]
    SpaceExists { space: String },
    /// History or a subscription asked for messages trimmed by retention.
    #[error("space {space:?} no longer retains seq {from_seq}: the oldest retained seq is {first_seq}")]
    Trimmed { space: String, from_seq: u64, first_seq: u64 },
    /// This node is not the leader and could not forward.
    #[error("not the leader of space cluster {cluster_id}; leader is {leader:?}")]
    NotLeader { cluster_id: u64, leader: Option<(NodeId, String)> },
    #[error("no leader for space cluster {cluster_id} within {waited_ms} ms")]
    NoLeader { cluster_id: u64, waited_ms: u64 },
    #[error("node is shutting down")]
    ShuttingDown,
    /// The space moved to another space cluster (a post that reached its
    /// old cluster after the move sealed it there).
    #[error("space {space:?} moved to space cluster {to}")]
    Moved { space: String, to: u64 },
    /// The space is being copied into its new cluster.
    #[error("space {space:?} is being moved; retry shortly")]
    Moving { space: String },
    /// A request the current state refuses (e.g. a move to a cluster that
    /// does not exist).
    #[error("{0}")]
    Refused(String),
    /// A transient failure: no quorum, a read index not confirmed in time.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// A forwarded request failed at the leader; carries its status.
    #[error("{0}")]
    Forwarded(String, tonic::Code),
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> Self {
        match error {
            ApplyError::UnknownSpace { space } => ApiError::UnknownSpace { space },
            ApplyError::NotMember { space, user } => ApiError::NotMember { space, user },
            ApplyError::SpaceExists { space } => ApiError::SpaceExists { space },
            ApplyError::Moved { space, to } => ApiError::Moved { space, to },
            ApplyError::Importing { space } => ApiError::Moving { space },
            refused @ (ApplyError::NoMembersLeft { .. }
            | ApplyError::TooManyMembers { .. }
            | ApplyError::Deleted { .. }
            | ApplyError::NotSealed { .. }) => ApiError::Refused(refused.to_string()),
        }
    }
}

/// Metadata key that carries the new cluster of a moved space.
pub const MOVED_TO_METADATA: &str = "spaceraft-moved-to";
/// Metadata key set while a space is being copied into its new cluster.
pub const MOVING_METADATA: &str = "spaceraft-moving";

/// Metadata key that carries the leader hint on a NotLeader status.
pub const LEADER_HINT_METADATA: &str = "spaceraft-leader";

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::Invalid(_) => tonic::Status::invalid_argument(message),
            ApiError::UnknownSpace { .. } => tonic::Status::not_found(message),
            ApiError::NotMember { .. } => tonic::Status::permission_denied(message),
            ApiError::SpaceExists { .. } => tonic::Status::already_exists(message),
            ApiError::Trimmed { .. } => tonic::Status::out_of_range(message),
            ApiError::NotLeader { leader, .. } => {
                let mut status = tonic::Status::unavailable(message);
                if let Some((_, addr)) = leader {
                    if let Ok(value) = addr.parse() {
                        status.metadata_mut().insert(LEADER_HINT_METADATA, value);
                    }
                }
                status
            }
            ApiError::NoLeader { .. } | ApiError::ShuttingDown | ApiError::Unavailable(_) => {
                tonic::Status::unavailable(message)
            }
            ApiError::Moved { to, .. } => {
                let mut status = tonic::Status::unavailable(message);
                status.metadata_mut().insert(MOVED_TO_METADATA, to.to_string().parse().expect("digits"));
                status
            }
            ApiError::Moving { .. } => {
                let mut status = tonic::Status::unavailable(message);
                status.metadata_mut().insert(MOVING_METADATA, "1".parse().expect("ascii"));
                status
            }
            ApiError::Refused(_) => tonic::Status::failed_precondition(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
            ApiError::Forwarded(_, code) => tonic::Status::new(code, message),
        }
    }
}
