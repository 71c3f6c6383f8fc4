//! Who is asking, and how we know: certificates for processes (nodes,
//! gateways, operators' tools), signed tokens for users, and the roles they
//! hold. What each role may do is decided in the front door
//! ([`crate::api::authz`]); this module only establishes identities and
//! makes the TLS configurations every listener and dialer uses.
//!
//! - [`gate`]: the [`Principal`] of a request, from its certificate or token.
//! - [`identity`]: what a certificate names (`spaceraft://CLUSTER/node/ID`),
//!   and the [`identity::Principal`] a request comes from.
//! - [`token`]: users' bearer tokens (JWT, EdDSA or HS256): minted by an
//!   issuer holding a signing key, checked against a directory of keys.
//! - [`tls`]: loading the PEM files, rustls configurations for tonic and
//!   for the gateway's HTTP listener.
//! - [`certs`]: making a CA and the certificates of a cluster (`spaceraft certs`).
//! - [`join`]: one-time join tokens (only their hash is kept).
//! - [`rate`]: per-user post rates; [`conns`]: connections per address.

pub mod certs;
pub mod conns;
pub mod gate;
pub mod identity;
pub mod join;
pub mod rate;
pub mod tls;
pub mod token;

pub use identity::{CertIdentity, CertRole, Principal, Role};
