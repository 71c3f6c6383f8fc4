//! A gateway: one `spaceraft gateway` process in one region. It follows the
//! committed log of the spaces its clients want from a replica (its own
//! region's when healthy) and fans each message out to the connected
//! clients that are members, over WebSocket (JSON) and gRPC.
//!
//! Follow a message from top to bottom:
//! - [`upstream`]: Follow streams to replicas, switching replica on failure,
//!   silence or lag; optionally two at once ([`nodes`] ranks the replicas).
//! - [`fanout`]: per-space feeds deduped by (space, seq), each message
//!   encoded once and offered to every live member subscriber's bounded queue.
//! - [`session`]: one client's requests and the catch-up of its
//!   subscriptions from history to live; [`node_api`] makes its calls.
//! - [`ws`] and [`grpc`]: the two transports; [`protocol`] their messages.
//! - [`server`]: wires it all and serves ([`listener`]: the bounded HTTP
//!   listener); [`auth`]: who a client is; [`config`]: its configuration.

pub mod auth;
pub mod config;
pub mod fanout;
pub mod grpc;
pub mod listener;
pub mod node_api;
pub mod nodes;
pub mod protocol;
pub mod server;
pub mod session;
pub mod upstream;
pub mod ws;
