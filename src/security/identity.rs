//! Identities. A process proves who it is with a certificate signed by the
//! cluster's CA that carries one URI name, `spaceraft://CLUSTER/KIND/NAME`:
//! `node/3`, `gateway/us-east`, `operator/admin`. A user proves who they
//! are with a bearer token whose subject is their name. The front door turns
//! either into a [`Principal`], and never believes a name a request merely
//! claims.

use crate::config::NodeId;

/// The URI scheme of the names in Spaceraft certificates.
pub const URI_SCHEME: &str = "spaceraft://";

/// What kind of process a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRole {
    Node(NodeId),
    Gateway(String),
    Operator(String),
}

/// The identity a certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The cluster it belongs to: a node refuses a certificate of another.
    pub cluster: String,
    pub role: CertRole,
}

impl CertIdentity {
    /// The URI name to put in a certificate.
    pub fn uri(&self) -> String {
        let (kind, name) = match &self.role {
            CertRole::Node(id) => ("node", id.to_string()),
            CertRole::Gateway(name) => ("gateway", name.clone()),
            CertRole::Operator(name) => ("operator", name.clone()),
        };
        format!("{URI_SCHEME}{}/{kind}/{name}", self.cluster)
    }

    /// Reads a URI name; None when it is not a Spaceraft identity.
    pub fn from_uri(uri: &str) -> Option<CertIdentity> {
        let rest = uri.strip_prefix(URI_SCHEME)?;
        let mut parts = rest.split('/');
        let (cluster, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || !crate::wire::is_cluster_id(cluster) || name.is_empty() {
            return None;
        }
        let role = match kind {
            "node" => CertRole::Node(name.parse().ok().filter(|id| *id > 0)?),
            "gateway" => CertRole::Gateway(name.to_string()),
            "operator" => CertRole::Operator(name.to_string()),
            _ => return None,
        };
        Some(CertIdentity { cluster: cluster.to_string(), role })
    }

    /// The identity named by a DER certificate (its first Spaceraft URI name).
    pub fn of_der(der: &[u8]) -> Result<CertIdentity, String> {
        let (_, certificate) =
            x509_parser::parse_x509_certificate(der).map_err(|error| format!("unreadable certificate: {error}"))?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| format!("unreadable certificate names: {error}"))?
            .ok_or_else(|| "the certificate has no subject alternative names".to_string())?;
        names
            .value
            .general_names
            .iter()
            .find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => CertIdentity::from_uri(uri),
                _ => None,
            })
            .ok_or_else(|| format!("the certificate names no {URI_SCHEME}CLUSTER/KIND/NAME identity"))
    }
}

/// What a request needs its caller to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No credential needed.
    Anyone,
    /// A user (bearer token), or a process acting for users.
    User,
    /// A gateway's certificate.
    Gateway,
    /// An operator: an operator certificate, or a token with the operator role.
    Operator,
    /// A node's certificate.
    Node,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Anyone => "anyone",
            Role::User => "user",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }
}

/// Who a request comes from, as the front door established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Security is off (`--insecure`): names are taken as claimed and every
    /// role is held.
    Insecure,
    /// No credential.
    Anonymous,
    /// A token's subject; `operator` when the token carries that role.
    User {
        name: String,
        operator: bool,
    },
    Node(NodeId),
    Gateway(String),
    Operator(String),
}

impl Principal {
    /// Whether this caller holds `role`. Nodes hold every role: they pass
    /// on requests whose callers they checked themselves.
    pub fn holds(&self, role: Role) -> bool {
        match self {
            Principal::Insecure | Principal::Node(_) => true,
            Principal::Anonymous => role == Role::Anyone,
            Principal::User { operator, .. } => match role {
                Role::Anyone | Role::User => true,
                Role::Operator => *operator,
                Role::Gateway | Role::Node => false,
            },
            Principal::Gateway(_) => matches!(role, Role::Anyone | Role::User | Role::Gateway),
            Principal::Operator(_) => matches!(role, Role::Anyone | Role::User | Role::Operator),
        }
    }

    /// The user this caller is bound to: a plain user acts only as
    /// themself. None for callers trusted to name the user a request is for
    /// (nodes, gateways, operators, and everyone when security is off).
    pub fn bound_user(&self) -> Option<&str> {
        match self {
            Principal::User { name, operator: false } => Some(name),
            _ => None,
        }
    }

    /// The user a request is for: the caller's own name for a plain user
    /// (a request that claims another is refused), else what it claims.
    pub fn user_for(&self, claimed: &str) -> Result<String, String> {
        match self.bound_user() {
            None => Ok(claimed.to_string()),
            Some(name) if claimed.is_empty() || claimed == name => Ok(name.to_string()),
            Some(name) => Err(format!("the token is for {name:?}, but the request is for {claimed:?}")),
        }
    }

    /// Whether this caller's posts count against their user's rate: a
    /// user's, and a gateway's (for its users); not a node passing a post
    /// on, an operator, or anyone when security is off.
    pub fn is_rate_limited(&self) -> bool {
        match self {
            Principal::User { operator, .. } => !operator,
            Principal::Gateway(_) | Principal::Anonymous => true,
            Principal::Insecure | Principal::Node(_) | Principal::Operator(_) => false,
        }
    }

    /// How logs and errors name this caller.
    pub fn describe(&self) -> String {
        match self {
            Principal::Insecure => "anyone (security off)".into(),
            Principal::Anonymous => "an anonymous caller".into(),
            Principal::User { name, operator: false } => format!("user {name}"),
            Principal::User { name, operator: true } => format!("operator {name} (token)"),
            Principal::Node(id) => format!("node {id}"),
            Principal::Gateway(name) => format!("gateway {name}"),
            Principal::Operator(name) => format!("operator {name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_reject_what_is_not_an_identity() {
        for role in [CertRole::Node(3), CertRole::Gateway("us-east".into()), CertRole::Operator("admin".into())] {
            let identity = CertIdentity { cluster: "0123456789abcdef".into(), role };
            assert_eq!(CertIdentity::from_uri(&identity.uri()), Some(identity));
        }
        for bad in [
            "spaceraft://0123456789abcdef/node/0",
            "spaceraft://0123456789abcdef/node/x",
            "spaceraft://nothex/node/1",
            "spaceraft://0123456789abcdef/king/1",
            "spaceraft://0123456789abcdef/node/1/more",
            "https://0123456789abcdef/node/1",
            "spaceraft://0123456789abcdef/gateway/",
        ] {
            assert_eq!(CertIdentity::from_uri(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_are_held_as_the_security_table_says() {
        let user = Principal::User { name: "alice".into(), operator: false };
        let token_operator = Principal::User { name: "root".into(), operator: true };
        let cases = [
            (Principal::Anonymous, [true, false, false, false, false]),
            (user.clone(), [true, true, false, false, false]),
            (token_operator, [true, true, false, true, false]),
            (Principal::Operator("admin".into()), [true, true, false, true, false]),
            (Principal::Gateway("us-east".into()), [true, true, true, false, false]),
            (Principal::Node(2), [true, true, true, true, true]),
            (Principal::Insecure, [true, true, true, true, true]),
        ];
        let roles = [Role::Anyone, Role::User, Role::Gateway, Role::Operator, Role::Node];
        for (principal, held) in cases {
            for (role, expected) in roles.iter().zip(held) {
                assert_eq!(principal.holds(*role), expected, "{principal:?} holds {role:?}");
            }
        }
        assert_eq!(user.user_for(""), Ok("alice".into()));
        assert_eq!(user.user_for("alice"), Ok("alice".into()));
        assert!(user.user_for("bob").is_err());
        assert_eq!(Principal::Gateway("g".into()).user_for("bob"), Ok("bob".into()));
        assert!(user.is_rate_limited() && Principal::Gateway("g".into()).is_rate_limited());
        assert!(!Principal::Node(1).is_rate_limited() && !Principal::Operator("admin".into()).is_rate_limited());
        assert!(!Principal::Insecure.is_rate_limited());
    }
}
