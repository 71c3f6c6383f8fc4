//! Users' bearer tokens: JWTs signed with EdDSA (Ed25519) or HS256.
//!
//! A token names its user in `sub`, must carry `exp`, may carry `aud` (then
//! it must be this cluster's id) and `roles` (`operator` makes its holder an
//! operator). Verification keys live in a directory, one file per key id
//! (`kid`): `KID.pem` (an Ed25519 public key) or `KID.hs256` (a shared
//! secret). Several keys let an issuer rotate: add the new key, sign with
//! it, remove the old one once its tokens have expired.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The role a token grants on top of being its subject.
pub const OPERATOR_ROLE: &str = "operator";
/// Clock difference tolerated between an issuer and a node, in seconds.
const LEEWAY_SECS: u64 = 30;
/// A token longer than this is refused before it is parsed.
pub const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is expired")]
    Expired,
    #[error("the token is not signed by a key this cluster trusts{0}")]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token is for cluster {token}, not {ours}")]
    WrongAudience { token: String, ours: String },
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("no token keys are configured: tokens cannot be checked")]
    NoKeys,
}

/// A checked token: who, and whether an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: String,
    pub operator: bool,
}

struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The keys tokens are checked against.
#[derive(Default)]
pub struct TokenKeys {
    keys: HashMap<String, Key>,
}

impl TokenKeys {
    /// Reads every `KID.pem` and `KID.hs256` in `dir`.
    pub fn load_dir(dir: &Path) -> Result<TokenKeys, String> {
        let entries =
            std::fs::read_dir(dir).map_err(|error| format!("cannot read token keys in {}: {error}", dir.display()))?;
        let mut keys = TokenKeys::default();
        for entry in entries {
            let path = entry.map_err(|error| format!("cannot read {}: {error}", dir.display()))?.path();
            let (Some(kid), Some(extension)) = (
                path.file_stem().and_then(|stem| stem.to_str()),
                path.extension().and_then(|extension| extension.to_str()),
            ) else {
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            let key = match extension {
                "pem" => Key {
                    algorithm: Algorithm::EdDSA,
                    key: DecodingKey::from_ed_pem(&bytes)
                        .map_err(|error| format!("{} is not an Ed25519 public key: {error}", path.display()))?,
                },
                "hs256" => {
                    Key { algorithm: Algorithm::HS256, key: DecodingKey::from_secret(secret_of(&bytes, &path)?) }
                }
                _ => continue,
            };
            keys.keys.insert(kid.to_string(), key);
        }
        if keys.keys.is_empty() {
            return Err(format!("{} holds no token key (KID.pem or KID.hs256)", dir.display()));
        }
        Ok(keys)
    }

    /// The key ids loaded.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort();
        ids
    }

    /// Checks `token` for cluster `cluster` (None: any audience).
    pub fn verify(&self, token: &str, cluster: Option<&str>) -> Result<Verified, TokenError> {
        if self.keys.is_empty() {
            return Err(TokenError::NoKeys);
        }
        if token.len() > TOKEN_BYTES_MAX {
            return Err(TokenError::Malformed(format!("longer than {TOKEN_BYTES_MAX} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|error| TokenError::Malformed(error.to_string()))?;
        let key = match &header.kid {
            Some(kid) => self.keys.get(kid).ok_or_else(|| TokenError::UnknownKey(format!(" (kid {kid:?})")))?,
            None if self.keys.len() == 1 => self.keys.values().next().expect("one key"),
            None => return Err(TokenError::UnknownKey(" (the token names no kid)".into())),
        };
        if header.alg != key.algorithm {
            return Err(TokenError::UnknownKey(format!(" ({:?} with a {:?} key)", header.alg, key.algorithm)));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // Checked below: an absent audience is allowed.
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed(error.to_string()),
            }
        })?;
        let claims = claims.claims;
        if let (Some(token_cluster), Some(ours)) = (&claims.aud, cluster) {
            if token_cluster != ours {
                return Err(TokenError::WrongAudience { token: token_cluster.clone(), ours: ours.to_string() });
            }
        }
        crate::space::validate::check_name("token subject", &claims.sub, &Default::default())
            .map_err(|error| TokenError::Malformed(error.to_string()))?;
        Ok(Verified { operator: claims.roles.iter().any(|role| role == OPERATOR_ROLE), user: claims.sub })
    }
}

/// Reads an HS256 secret file: its bytes, trimmed; at least 32 of them.
fn secret_of<'a>(bytes: &'a [u8], path: &Path) -> Result<&'a [u8], String> {
    let secret = bytes.trim_ascii();
    if secret.len() < 32 {
        return Err(format!("{} holds a secret of {} bytes; HS256 needs 32 or more", path.display(), secret.len()));
    }
    Ok(secret)
}

/// An issuer: signs tokens with one key.
pub struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    /// Loads a signing key: `KID.pem` (an Ed25519 private key, PKCS#8) or
    /// `KID.hs256` (a secret); the file's stem is the key id.
    pub fn load(path: &Path) -> Result<Signer, String> {
        let kid = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or("default").to_string();
        let bytes =
            std::fs::read(path).map_err(|error| format!("cannot read signing key {}: {error}", path.display()))?;
        let (algorithm, key) = if path.extension().is_some_and(|extension| extension == "hs256") {
            (Algorithm::HS256, EncodingKey::from_secret(secret_of(&bytes, path)?))
        } else {
            let key = EncodingKey::from_ed_pem(&bytes)
                .map_err(|error| format!("{} is not an Ed25519 private key: {error}", path.display()))?;
            (Algorithm::EdDSA, key)
        };
        Ok(Signer { kid, algorithm, key })
    }

    /// A token for `user` that expires `ttl` from now.
    pub fn mint(&self, user: &str, ttl: Duration, operator: bool, cluster: Option<&str>) -> Result<String, String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        self.mint_claims(&Claims {
            sub: user.to_string(),
            exp: now + ttl.as_secs().max(1),
            iat: now,
            aud: cluster.map(str::to_string),
            roles: if operator { vec![OPERATOR_ROLE.to_string()] } else { Vec::new() },
        })
    }

    /// A token with exactly these claims (tests make expired ones).
    pub fn mint_claims(&self, claims: &Claims) -> Result<String, String> {
        crate::space::validate::check_name("user name", &claims.sub, &Default::default()).map_err(|e| e.to_string())?;
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|error| format!("cannot sign the token: {error}"))
    }
}

/// Where [`crate::security::certs`] keeps a cluster's token keys.
pub fn keys_dir(tls_dir: &Path) -> PathBuf {
    tls_dir.join("token-keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(dir: &Path, kid: &str) -> Signer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join(format!("{kid}.pem")), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("keys").join(format!("{kid}.pem")), key.public_key_pem()).unwrap();
        Signer::load(&dir.join(format!("{kid}.pem"))).unwrap()
    }

    #[test]
    fn a_token_verifies_and_forgeries_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let signer = issuer(dir.path(), "k1");
        let keys = TokenKeys::load_dir(&dir.path().join("keys")).unwrap();
        let token = signer.mint("alice", Duration::from_secs(60), false, Some("0123456789abcdef")).unwrap();
        assert_eq!(
            keys.verify(&token, Some("0123456789abcdef")),
            Ok(Verified { user: "alice".into(), operator: false })
        );
        assert!(matches!(keys.verify(&token, Some("fedcba9876543210")), Err(TokenError::WrongAudience { .. })));
        let operator = signer.mint("root", Duration::from_secs(60), true, None).unwrap();
        assert!(keys.verify(&operator, Some("0123456789abcdef")).unwrap().operator);

        // Another issuer's key, with the same kid: the signature fails.
        let other = issuer(&dir.path().join("other"), "k1");
        let forged = other.mint("alice", Duration::from_secs(60), true, None).unwrap();
        assert_eq!(keys.verify(&forged, None), Err(TokenError::BadSignature));
        // A payload edited after signing.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_claims = base64_url(br#"{"sub":"mallory","exp":99999999999}"#);
        parts[1] = &forged_claims;
        assert!(keys.verify(&parts.join("."), None).is_err());
        // Expired, unsigned, garbage.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let expired = signer
            .mint_claims(&Claims { sub: "alice".into(), exp: now - 3600, iat: 0, aud: None, roles: vec![] })
            .unwrap();
        assert_eq!(keys.verify(&expired, None), Err(TokenError::Expired));
        let none_alg = format!("{}.{}.", base64_url(br#"{"alg":"none","kid":"k1"}"#), forged_claims);
        assert!(keys.verify(&none_alg, None).is_err());
        assert!(matches!(keys.verify("garbage", None), Err(TokenError::Malformed(_))));
    }

    #[test]
    fn hs256_keys_rotate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.hs256"), "a".repeat(40)).unwrap();
        std::fs::write(dir.path().join("new.hs256"), "b".repeat(40)).unwrap();
        let keys = TokenKeys::load_dir(dir.path()).unwrap();
        assert_eq!(keys.ids(), ["new", "old"]);
        for kid in ["old", "new"] {
            let signer = Signer::load(&dir.path().join(format!("{kid}.hs256"))).unwrap();
            let token = signer.mint("bob", Duration::from_secs(60), false, None).unwrap();
            assert_eq!(keys.verify(&token, None).unwrap().user, "bob");
        }
        std::fs::write(dir.path().join("short.hs256"), "tooshort").unwrap();
        let Err(refused) = TokenKeys::load_dir(dir.path()) else { panic!("a short secret was taken") };
        assert!(refused.contains("32 or more"), "{refused}");
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
