//! Who may call what: every RPC a node or gateway serves, the roles that may
//! call it ([`RPCS`], the table docs/security.md prints), and the gate that
//! checks a request's [`Principal`] (established once, from its certificate
//! or its bearer token, by [`crate::security::gate::Gate`]) before the node sees it.
//!
//! Membership is not decided here but by the node, against the space's
//! record, for the user this gate binds the request to: a user's token
//! binds every user field of their requests to them; nodes, gateways and
//! operators name the user a request is for.

use tonic::Request;

use crate::error::{ApiError, ErrorKind};
use crate::security::identity::{Principal, Role};

/// An RPC and the roles that may call it (any one of them suffices).
#[derive(Debug, Clone, Copy)]
pub struct RpcRule {
    pub path: &'static str,
    pub roles: &'static [Role],
    /// What else is checked, for the docs.
    pub also: &'static str,
}

const USER: &[Role] = &[Role::User];
const OPERATOR: &[Role] = &[Role::Operator];
const NODE: &[Role] = &[Role::Node];
const ANYONE: &[Role] = &[Role::Anyone];

/// Every RPC served, and who may call it. Nodes hold every role (they pass
/// on requests whose callers they checked).
pub const RPCS: &[RpcRule] = &[
    RpcRule { path: "spaceraft.v1.Client/CreateSpace", roles: USER, also: "a user becomes the space's owner" },
    RpcRule {
        path: "spaceraft.v1.Client/Post",
        roles: USER,
        also: "the author must be a member (checked again by the state machine)",
    },
    RpcRule { path: "spaceraft.v1.Client/History", roles: USER, also: "members only; an operator may read any space" },
    RpcRule {
        path: "spaceraft.v1.Client/Subscribe",
        roles: USER,
        also: "members only; an operator may read any space",
    },
    RpcRule { path: "spaceraft.v1.Client/GetSpace", roles: USER, also: "members only; an operator may read any space" },
    RpcRule { path: "spaceraft.v1.Client/ListSpaces", roles: USER, also: "a user lists their own spaces" },
    RpcRule { path: "spaceraft.v1.Client/Follow", roles: &[Role::Gateway], also: "" },
    RpcRule { path: "spaceraft.v1.Client/UpdateMembers", roles: USER, also: "the space's owner or an operator" },
    RpcRule { path: "spaceraft.v1.Client/DeleteSpace", roles: USER, also: "the space's owner or an operator" },
    RpcRule { path: "spaceraft.v1.Admin/ClusterStatus", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/NodeStatus", roles: &[Role::Operator, Role::Gateway], also: "" },
    RpcRule { path: "spaceraft.v1.Admin/Directory", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/MoveSpace", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/ChangeMembers", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/TransferLeader", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/SetDrained", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/SetPreferredRegion", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/Gateways", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/SaveSnapshot", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/Stages", roles: OPERATOR, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/JoinToken", roles: OPERATOR, also: "" },
    RpcRule {
        path: "spaceraft.v1.Admin/Join",
        roles: NODE,
        also: "the certificate's node id, and a one-time join token unless already registered at that address",
    },
    RpcRule { path: "spaceraft.v1.Admin/Ping", roles: ANYONE, also: "answers the node id and cluster id only" },
    RpcRule { path: "spaceraft.v1.Admin/Propose", roles: NODE, also: "commands are validated as requests are" },
    RpcRule { path: "spaceraft.v1.Admin/ReadIndex", roles: NODE, also: "" },
    RpcRule { path: "spaceraft.v1.Admin/Nudge", roles: NODE, also: "" },
    RpcRule { path: "spaceraft.v1.Raft/Vote", roles: NODE, also: "the sender it claims must be its certificate's" },
    RpcRule { path: "spaceraft.v1.Raft/PreVote", roles: NODE, also: "the sender it claims must be its certificate's" },
    RpcRule { path: "spaceraft.v1.Raft/Append", roles: NODE, also: "the sender it claims must be its certificate's" },
    RpcRule {
        path: "spaceraft.v1.Raft/AppendStream",
        roles: NODE,
        also: "the sender it claims must be its certificate's",
    },
    RpcRule {
        path: "spaceraft.v1.Raft/AppendEnvelope",
        roles: NODE,
        also: "the sender each request claims must be its certificate's",
    },
    RpcRule {
        path: "spaceraft.v1.Raft/InstallSnapshot",
        roles: NODE,
        also: "the sender's certificate; size bounded by security.snapshot_bytes_max",
    },
    RpcRule {
        path: "spaceraft.v1.Raft/TransferLeader",
        roles: NODE,
        also: "the sender it claims must be its certificate's",
    },
    RpcRule {
        path: "spaceraft.v1.Gateway/Session",
        roles: USER,
        also: "a token (authorization: Bearer); the session's user is its subject",
    },
    RpcRule { path: "grpc.health.v1.Health/Check", roles: ANYONE, also: "" },
];

/// The rule of `path`. Every served RPC has one (a unit test checks the
/// proto files against the table).
pub fn rule(path: &str) -> &'static RpcRule {
    RPCS.iter().find(|rule| rule.path == path).unwrap_or_else(|| panic!("no authorization rule for {path}"))
}

/// Whether `principal` may call the RPC of `rule`.
pub fn allowed(principal: &Principal, rule: &RpcRule) -> Result<(), ApiError> {
    if rule.roles.iter().any(|role| principal.holds(*role)) {
        return Ok(());
    }
    let roles: Vec<&str> = rule.roles.iter().map(|role| role.name()).collect();
    let needs = format!("{} needs the {} role", rule.path, roles.join(" or "));
    if *principal == Principal::Anonymous {
        return Err(ApiError::new(ErrorKind::Unauthenticated, format!("{needs}: present a certificate or a token")));
    }
    Err(ApiError::new(ErrorKind::PermissionDenied, format!("{needs}; {} does not hold it", principal.describe())))
}

/// The principal the front door put on a request (Anonymous if none).
pub fn principal_of<T>(request: &Request<T>) -> Principal {
    request.extensions().get::<Principal>().cloned().unwrap_or(Principal::Anonymous)
}

/// The user a request is for, as `principal` may name it.
pub fn user_for(principal: &Principal, claimed: &str) -> Result<String, ApiError> {
    principal.user_for(claimed).map_err(|why| ApiError::new(ErrorKind::PermissionDenied, why))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rpc in the proto files has a rule, and every rule an rpc.
    #[test]
    fn the_table_covers_every_rpc_of_the_proto_files() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/spaceraft/v1");
        let mut served = vec!["grpc.health.v1.Health/Check".to_string()];
        for entry in std::fs::read_dir(root).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            let mut service = String::new();
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap().to_string();
                }
                if let Some(rest) = line.strip_prefix("rpc ") {
                    let name = rest.split('(').next().unwrap().trim();
                    served.push(format!("spaceraft.v1.{service}/{name}"));
                }
            }
        }
        served.sort();
        let mut table: Vec<String> = RPCS.iter().map(|rule| rule.path.to_string()).collect();
        table.sort();
        assert_eq!(served, table);
    }

    #[test]
    fn refusals_say_what_is_missing() {
        let post = rule("spaceraft.v1.Client/Post");
        let error = allowed(&Principal::Anonymous, post).unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unauthenticated);
        let status = rule("spaceraft.v1.Admin/ClusterStatus");
        let error = allowed(&Principal::User { name: "alice".into(), operator: false }, status).unwrap_err();
        assert_eq!(error.kind, ErrorKind::PermissionDenied);
        assert!(error.message.contains("operator"), "{}", error.message);
        assert!(allowed(&Principal::Operator("admin".into()), status).is_ok());
        assert!(allowed(&Principal::Gateway("us-east".into()), rule("spaceraft.v1.Admin/NodeStatus")).is_ok());
        assert!(allowed(&Principal::Gateway("us-east".into()), rule("spaceraft.v1.Raft/Vote")).is_err());
    }
}
