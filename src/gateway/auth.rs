//! Who a gateway's client is. With security on, a client proves it with a
//! token (the WebSocket `hello`'s `token`, or gRPC `authorization: Bearer`):
//! its user is the token's subject, and a `hello` that names another user
//! is refused. With security off, the `hello`'s user is believed.
//!
//! A development cluster may also let the page log in by name
//! (`POST /v1/login`), signing tokens with `dev_login_signing_key`.

use std::path::Path;
use std::time::Duration;

use crate::gateway::config::GatewayConfig;
use crate::gateway::protocol::CloseReason;
use crate::security::token::{Signer, TokenKeys};
use crate::space::validate;
use crate::wire::ClusterId;

/// How long a token from the development login lasts.
const DEV_LOGIN_TTL: Duration = Duration::from_secs(12 * 3600);

pub struct ClientAuth {
    insecure: bool,
    keys: Option<TokenKeys>,
    cluster: ClusterId,
    login: Option<Signer>,
}

impl ClientAuth {
    pub fn from_config(config: &GatewayConfig, cluster: ClusterId) -> anyhow::Result<ClientAuth> {
        let insecure = config.security.insecure;
        let keys = match &config.security.token_keys_dir {
            Some(dir) if !insecure => Some(TokenKeys::load_dir(dir).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        if !insecure && keys.is_none() {
            tracing::warn!("no security.token_keys_dir: no user can log in to this gateway");
        }
        let login = match config.dev_login_signing_key.as_deref() {
            Some(path) => {
                tracing::warn!(key = %path.display(), "development login on: POST /v1/login gives anyone a token for any name");
                Some(Signer::load(Path::new(path)).map_err(anyhow::Error::msg)?)
            }
            None => None,
        };
        Ok(ClientAuth { insecure, keys, cluster, login })
    }

    /// Security off: names are believed.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// The user a client is, from the name it claims and the token it
    /// shows; a refusal is the close the client gets.
    pub fn user(&self, claimed: &str, token: Option<&str>) -> Result<String, CloseReason> {
        let token = token.map(str::trim).filter(|token| !token.is_empty());
        let refused = |why: String| CloseReason::Unauthenticated(why);
        let user = match (self.insecure, token) {
            (true, _) => claimed.to_string(),
            (false, None) => return Err(refused("a token is needed (hello's token, or authorization: Bearer)".into())),
            (false, Some(token)) => {
                let Some(keys) = self.keys.as_ref() else {
                    return Err(refused("this gateway takes no tokens (no security.token_keys_dir)".into()));
                };
                let verified = keys.verify(token, self.cluster.get()).map_err(|error| refused(error.to_string()))?;
                if !claimed.is_empty() && claimed != verified.user {
                    return Err(refused(format!("the token is for {:?}, not {claimed:?}", verified.user)));
                }
                verified.user
            }
        };
        validate::check_name("user name", &user, &validate::Limits::default())
            .map_err(|error| CloseReason::Protocol(error.to_string()))?;
        Ok(user)
    }

    /// A development login: a token for `user`; None when not enabled.
    pub fn dev_login(&self, user: &str) -> Option<Result<String, String>> {
        let signer = self.login.as_ref()?;
        Some(signer.mint(user, DEV_LOGIN_TTL, false, self.cluster.get()))
    }
}
