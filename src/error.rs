//! The errors every layer and every peer speak: an [`ApiError`] is a typed
//! [`ErrorKind`] (what a caller branches on) and a lowercase message (what a
//! person reads). It crosses the wire in one form ([`ApiError::to_status`],
//! [`ApiError::from_status`]): a gRPC code for generic clients, and the kind
//! with its details in response metadata (`spaceraft-error`,
//! `spaceraft-leader`, `spaceraft-moved-to`, `spaceraft-field`), so nodes,
//! gateways and spacectl decide retries, exit codes and close codes by kind.
//! Nothing decides anything by reading a message's text.

use std::fmt;

use crate::meta::directory::MetaError;
use crate::space::validate::InvalidRequest;
use crate::space::ApplyError;

/// Metadata key carrying an error's kind ([`ErrorKind::name`]).
pub const KIND_METADATA: &str = "spaceraft-error";
/// Metadata key carrying the leader hint of a `not_leader` error: `id@addr`.
pub const LEADER_METADATA: &str = "spaceraft-leader";
/// Metadata key carrying the cluster a space moved to.
pub const MOVED_TO_METADATA: &str = "spaceraft-moved-to";
/// Metadata key naming the invalid field of an `invalid` or `too_large` error.
pub const FIELD_METADATA: &str = "spaceraft-field";

/// A leader as a hint travels: its node id and gRPC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    pub node_id: u64,
    pub addr: String,
}

/// What went wrong, as callers branch on it. Each kind says whether the
/// request may have taken effect: only `outcome_unknown` (and a transport
/// failure after the request was sent) leaves that open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// This replica does not lead; the leader, when known. Nothing was proposed.
    NotLeader {
        leader: Option<LeaderHint>,
    },
    /// No leader or no quorum within the time allowed. Nothing was proposed.
    NoQuorum,
    /// Refused before anything was proposed (stopping, drained, busy).
    NotProposed,
    /// Proposed, then leadership changed or the answer was lost: it may or
    /// may not have committed. Only a request with an idempotency key may be
    /// sent again.
    OutcomeUnknown,
    /// The peer could not be connected to: the request never left.
    Unreachable,
    /// The space (or cluster, node) does not exist.
    NotFound,
    /// The space was deleted; its name is never taken again.
    Deleted,
    /// The user is not a member of the space.
    NotMember,
    /// It exists already, differently.
    Exists,
    /// The space moved to another space cluster.
    Moved {
        to: u64,
    },
    /// The space is being copied to its new cluster; try again shortly.
    Moving,
    /// The history asked for was trimmed by retention.
    Trimmed,
    /// A malformed field.
    Invalid {
        field: String,
    },
    /// A field over its limit.
    TooLarge {
        field: String,
    },
    /// The current state refuses it (a precondition does not hold).
    Refused,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    /// The request or peer belongs to another cluster.
    WrongCluster,
    Internal,
}

impl ErrorKind {
    /// The kind's name on the wire and in JSON output.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::NotLeader { .. } => "not_leader",
            ErrorKind::NoQuorum => "no_quorum",
            ErrorKind::NotProposed => "not_proposed",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Deleted => "deleted",
            ErrorKind::NotMember => "not_member",
            ErrorKind::Exists => "exists",
            ErrorKind::Moved { .. } => "moved",
            ErrorKind::Moving => "moving",
            ErrorKind::Trimmed => "trimmed",
            ErrorKind::Invalid { .. } => "invalid",
            ErrorKind::TooLarge { .. } => "too_large",
            ErrorKind::Refused => "refused",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::ResourceExhausted => "resource_exhausted",
            ErrorKind::WrongCluster => "wrong_cluster",
            ErrorKind::Internal => "internal",
        }
    }

    /// The gRPC code generic clients see.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ErrorKind::NotLeader { .. }
            | ErrorKind::NoQuorum
            | ErrorKind::NotProposed
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Unreachable
            | ErrorKind::Moved { .. }
            | ErrorKind::Moving => Code::Unavailable,
            ErrorKind::NotFound | ErrorKind::Deleted => Code::NotFound,
            ErrorKind::NotMember | ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::Exists => Code::AlreadyExists,
            ErrorKind::Trimmed => Code::OutOfRange,
            ErrorKind::Invalid { .. } | ErrorKind::TooLarge { .. } => Code::InvalidArgument,
            ErrorKind::Refused | ErrorKind::WrongCluster => Code::FailedPrecondition,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::ResourceExhausted => Code::ResourceExhausted,
            ErrorKind::Internal => Code::Internal,
        }
    }

    /// Whether the request surely did not take effect, so sending it again
    /// (elsewhere, or later) cannot apply it twice.
    pub fn surely_not_applied(&self) -> bool {
        matches!(
            self,
            ErrorKind::NotLeader { .. }
                | ErrorKind::NoQuorum
                | ErrorKind::NotProposed
                | ErrorKind::Unreachable
                | ErrorKind::Moved { .. }
                | ErrorKind::Moving
        )
    }

    /// Whether the condition may pass by itself (a leader is elected, a
    /// peer comes back, a move finishes): worth another try while time is left.
    pub fn is_transient(&self) -> bool {
        self.surely_not_applied() || matches!(self, ErrorKind::OutcomeUnknown)
    }

    /// The kind of a status that carries none (sent by tonic itself, or a
    /// peer that is not a Spaceraft node), from its code and, for a
    /// connection that was never made, its source.
    fn of_untyped(status: &tonic::Status) -> ErrorKind {
        use tonic::Code;
        if never_connected(status) {
            return ErrorKind::Unreachable;
        }
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                ErrorKind::OutcomeUnknown
            }
            Code::NotFound => ErrorKind::NotFound,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::AlreadyExists => ErrorKind::Exists,
            // A Spaceraft `trimmed` always says so; an untyped OutOfRange is
            // gRPC's own: an answer larger than the client accepts.
            Code::OutOfRange => ErrorKind::TooLarge { field: "response".into() },
            Code::InvalidArgument => ErrorKind::Invalid { field: String::new() },
            Code::FailedPrecondition => ErrorKind::Refused,
            Code::ResourceExhausted => ErrorKind::ResourceExhausted,
            Code::Ok | Code::Internal | Code::Unimplemented | Code::DataLoss => ErrorKind::Internal,
        }
    }

    fn parse(name: &str, metadata: &tonic::metadata::MetadataMap) -> Option<ErrorKind> {
        let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok()).map(str::to_string);
        Some(match name {
            "not_leader" => ErrorKind::NotLeader { leader: text(LEADER_METADATA).and_then(|v| parse_leader(&v)) },
            "no_quorum" => ErrorKind::NoQuorum,
            "not_proposed" => ErrorKind::NotProposed,
            "outcome_unknown" => ErrorKind::OutcomeUnknown,
            "unreachable" => ErrorKind::Unreachable,
            "not_found" => ErrorKind::NotFound,
            "deleted" => ErrorKind::Deleted,
            "not_member" => ErrorKind::NotMember,
            "exists" => ErrorKind::Exists,
            "moved" => ErrorKind::Moved { to: text(MOVED_TO_METADATA)?.parse().ok()? },
            "moving" => ErrorKind::Moving,
            "trimmed" => ErrorKind::Trimmed,
            "invalid" => ErrorKind::Invalid { field: text(FIELD_METADATA).unwrap_or_default() },
            "too_large" => ErrorKind::TooLarge { field: text(FIELD_METADATA).unwrap_or_default() },
            "refused" => ErrorKind::Refused,
            "unauthenticated" => ErrorKind::Unauthenticated,
            "permission_denied" => ErrorKind::PermissionDenied,
            "resource_exhausted" => ErrorKind::ResourceExhausted,
            "wrong_cluster" => ErrorKind::WrongCluster,
            "internal" => ErrorKind::Internal,
            _ => return None,
        })
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn parse_leader(value: &str) -> Option<LeaderHint> {
    let (id, addr) = value.split_once('@')?;
    Some(LeaderHint { node_id: id.parse().ok()?, addr: addr.to_string() })
}

/// Whether the status comes from a connection that was never made (so the
/// request never reached the peer): tonic keeps the connect error as the
/// status' source.
fn never_connected(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An error of the node's API: its kind and what a person reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError { kind, message: message.into() }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, message)
    }

    pub fn refused(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Refused, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, message)
    }

    pub fn unknown_space(space: &str) -> ApiError {
        ApiError::not_found(format!("space {space:?} does not exist"))
    }

    pub fn not_member(space: &str, user: &str) -> ApiError {
        ApiError::new(ErrorKind::NotMember, format!("user {user:?} is not a member of space {space:?}"))
    }

    pub fn moving(space: &str) -> ApiError {
        ApiError::new(ErrorKind::Moving, format!("space {space:?} is being moved; retry shortly"))
    }

    pub fn trimmed(space: &str, from_seq: u64, first_seq: u64) -> ApiError {
        ApiError::new(
            ErrorKind::Trimmed,
            format!("space {space:?} no longer retains seq {from_seq}: the oldest retained seq is {first_seq}"),
        )
    }

    pub fn no_quorum(cluster: u64, waited_ms: u64) -> ApiError {
        ApiError::new(
            ErrorKind::NoQuorum,
            format!("no leader with a quorum for space cluster {cluster} within {waited_ms} ms"),
        )
    }

    pub fn not_leader(cluster: u64, leader: Option<LeaderHint>) -> ApiError {
        let hint = match &leader {
            Some(leader) => format!("node {} at {}", leader.node_id, leader.addr),
            None => "unknown".to_string(),
        };
        ApiError::new(
            ErrorKind::NotLeader { leader },
            format!("not the leader of space cluster {cluster}; leader is {hint}"),
        )
    }

    pub fn shutting_down() -> ApiError {
        ApiError::new(ErrorKind::NotProposed, "node is shutting down")
    }

    pub fn wrong_cluster(expected: &str, got: &str) -> ApiError {
        ApiError::new(
            ErrorKind::WrongCluster,
            format!("this node belongs to cluster {expected}, the request to cluster {got}: check the addresses"),
        )
    }

    /// The one mapping onto the wire: the gRPC code and the kind with its
    /// details in metadata.
    pub fn to_status(&self) -> tonic::Status {
        let mut status = tonic::Status::new(self.kind.code(), self.message.clone());
        let metadata = status.metadata_mut();
        insert(metadata, KIND_METADATA, self.kind.name());
        match &self.kind {
            ErrorKind::NotLeader { leader: Some(leader) } => {
                insert(metadata, LEADER_METADATA, &format!("{}@{}", leader.node_id, leader.addr))
            }
            ErrorKind::Moved { to } => insert(metadata, MOVED_TO_METADATA, &to.to_string()),
            ErrorKind::Invalid { field } | ErrorKind::TooLarge { field } => insert(metadata, FIELD_METADATA, field),
            _ => {}
        }
        status
    }

    /// What a peer's (or tonic's own) status means.
    pub fn from_status(status: &tonic::Status) -> ApiError {
        let kind = status
            .metadata()
            .get(KIND_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|name| ErrorKind::parse(name, status.metadata()))
            .unwrap_or_else(|| ErrorKind::of_untyped(status));
        let message = if status.message().is_empty() { kind.name().to_string() } else { status.message().to_string() };
        ApiError { kind, message }
    }
}

/// A peer's answer: its message, or its error read by kind.
pub fn answer_of<T>(reply: Result<tonic::Response<T>, tonic::Status>) -> Result<T, ApiError> {
    reply.map(tonic::Response::into_inner).map_err(|status| ApiError::from_status(&status))
}

/// A status as the code and text it travels with inside a message (an
/// answer in a Raft reply envelope), to become that status again there.
pub fn status_code_and_text(status: &tonic::Status) -> (i32, String) {
    (status.code() as i32, status.message().to_string())
}

fn insert(metadata: &mut tonic::metadata::MetadataMap, key: &'static str, value: &str) {
    if let Ok(value) = value.parse() {
        metadata.insert(key, value);
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> Self {
        error.to_status()
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(error: InvalidRequest) -> Self {
        let kind = match error.is_too_large() {
            true => ErrorKind::TooLarge { field: error.field() },
            false => ErrorKind::Invalid { field: error.field() },
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> Self {
        let kind = match &error {
            ApplyError::UnknownSpace { .. } => ErrorKind::NotFound,
            ApplyError::NotMember { .. } => ErrorKind::NotMember,
            ApplyError::SpaceExists { .. } => ErrorKind::Exists,
            ApplyError::Moved { to, .. } => ErrorKind::Moved { to: *to },
            ApplyError::Importing { .. } => ErrorKind::Moving,
            ApplyError::Deleted { .. } => ErrorKind::Deleted,
            ApplyError::TooManyMembers { .. } => ErrorKind::TooLarge { field: "members".into() },
            ApplyError::Invalid { field, too_large: true, .. } => ErrorKind::TooLarge { field: field.clone() },
            ApplyError::Invalid { field, too_large: false, .. } => ErrorKind::Invalid { field: field.clone() },
            ApplyError::NoMembersLeft { .. } | ApplyError::NotSealed { .. } => ErrorKind::Refused,
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<crate::storage::StorageError> for ApiError {
    fn from(error: crate::storage::StorageError) -> Self {
        ApiError::internal(error.to_string())
    }
}

impl From<MetaError> for ApiError {
    fn from(error: MetaError) -> Self {
        let kind = match &error {
            // A cluster or node named as the target of a change: the change
            // is refused (the request's object missing is `not_found`,
            // checked where it is named).
            MetaError::UnknownCluster(_) | MetaError::UnknownNode(_) => ErrorKind::Refused,
            MetaError::UnknownSpace(_) => ErrorKind::NotFound,
            MetaError::Deleted(_) => ErrorKind::Deleted,
            MetaError::NoVoters | MetaError::AlreadyMoving { .. } => ErrorKind::Refused,
            MetaError::JoinTokenRefused(_) => ErrorKind::PermissionDenied,
        };
        ApiError::new(kind, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<ErrorKind> {
        vec![
            ErrorKind::NotLeader { leader: Some(LeaderHint { node_id: 3, addr: "10.0.0.3:7003".into() }) },
            ErrorKind::NotLeader { leader: None },
            ErrorKind::NoQuorum,
            ErrorKind::NotProposed,
            ErrorKind::OutcomeUnknown,
            ErrorKind::Unreachable,
            ErrorKind::NotFound,
            ErrorKind::Deleted,
            ErrorKind::NotMember,
            ErrorKind::Exists,
            ErrorKind::Moved { to: 7 },
            ErrorKind::Moving,
            ErrorKind::Trimmed,
            ErrorKind::Invalid { field: "space_name".into() },
            ErrorKind::TooLarge { field: "body".into() },
            ErrorKind::Refused,
            ErrorKind::Unauthenticated,
            ErrorKind::PermissionDenied,
            ErrorKind::ResourceExhausted,
            ErrorKind::WrongCluster,
            ErrorKind::Internal,
        ]
    }

    #[test]
    fn grpcs_own_out_of_range_is_not_taken_for_trimmed_history() {
        let status = tonic::Status::out_of_range("decoded message length too large: found 4483284 bytes");
        assert_eq!(ApiError::from_status(&status).kind, ErrorKind::TooLarge { field: "response".into() });
    }

    #[test]
    fn every_kind_survives_the_wire_whatever_the_message() {
        for kind in every_kind() {
            for message in ["", "not the leader", "tcp connect error", "something else entirely"] {
                let error = ApiError::new(kind.clone(), message);
                let back = ApiError::from_status(&error.to_status());
                assert_eq!(back.kind, kind, "kind {kind:?} with message {message:?}");
            }
        }
    }

    #[test]
    fn statuses_without_a_kind_are_classified_by_code_not_text() {
        let status = tonic::Status::unavailable("not the leader; tcp connect error");
        assert_eq!(ApiError::from_status(&status).kind, ErrorKind::OutcomeUnknown);
        let status = tonic::Status::not_found("whatever");
        assert_eq!(ApiError::from_status(&status).kind, ErrorKind::NotFound);
    }

    #[test]
    fn only_outcome_unknown_leaves_the_outcome_open_among_transient_kinds() {
        for kind in every_kind() {
            if kind.is_transient() && !kind.surely_not_applied() {
                assert_eq!(kind, ErrorKind::OutcomeUnknown);
            }
        }
    }
}
