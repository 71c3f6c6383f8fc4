//! The gate every listener puts in front of its services: it establishes
//! who a request comes from, once, from its certificate or else its bearer
//! token. A bad credential is refused, never taken as none.

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::Request;

use crate::error::{ApiError, ErrorKind};
use crate::security::identity::{CertRole, Principal};
use crate::security::token::TokenKeys;
use crate::wire::ClusterId;

/// Establishes principals. Cheap to clone.
#[derive(Clone)]
pub struct Gate {
    /// Security off: everyone is [`Principal::Insecure`].
    pub insecure: bool,
    /// Certificates of another cluster are refused.
    pub cluster: ClusterId,
    /// Token keys; None: tokens are refused.
    pub tokens: Option<Arc<TokenKeys>>,
}

impl Gate {
    /// Everyone is [`Principal::Insecure`].
    pub fn insecure() -> Gate {
        Gate { insecure: true, cluster: ClusterId::unknown(), tokens: None }
    }
}

/// The bearer token in a request's `authorization` metadata.
pub fn bearer(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).map(str::trim)
}

impl Gate {
    /// Who a request comes from: its certificate's identity, else its
    /// token's subject, else nobody.
    pub fn principal<T>(&self, request: &Request<T>) -> Result<Principal, ApiError> {
        if self.insecure {
            return Ok(Principal::Insecure);
        }
        if let Some(identity) = crate::security::tls::peer_identity(request.peer_certs()) {
            let ours = self.cluster.get().unwrap_or_default();
            if identity.cluster != ours {
                return Err(ApiError::new(
                    ErrorKind::WrongCluster,
                    format!("the caller's certificate is for cluster {}, this is cluster {ours}", identity.cluster),
                ));
            }
            return Ok(match identity.role {
                CertRole::Node(id) => Principal::Node(id),
                CertRole::Gateway(name) => Principal::Gateway(name),
                CertRole::Operator(name) => Principal::Operator(name),
            });
        }
        let Some(token) = bearer(request.metadata()) else { return Ok(Principal::Anonymous) };
        let Some(keys) = &self.tokens else {
            return Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "this node takes no tokens (no security.token_keys_dir)",
            ));
        };
        let verified = keys
            .verify(token, self.cluster.get())
            .map_err(|error| ApiError::new(ErrorKind::Unauthenticated, error.to_string()))?;
        Ok(Principal::User { name: verified.user, operator: verified.operator })
    }
}
