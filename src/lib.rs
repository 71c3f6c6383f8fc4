//! Spaceraft: a geo-replicated, strongly consistent message store for chat
//! spaces. A space's messages are ordered and durably logged by its space
//! cluster, one Raft group whose voters sit in different regions.
//!
//! Layout (follow a post from top to bottom; each layer imports only the
//! layers below it, and `tests/t03_layers.rs` checks the `use crate::`
//! graph has no cycle; docs/architecture.md draws one post's path):
//! - [`api`]: the front door: the tonic services as thin adapters, and the
//!   one mapping of errors onto the wire.
//! - [`node`]: a `spaceraft node` process: the pure router and the runner
//!   that carries out its decisions, the client and admin operations, the
//!   life of its hosted groups.
//! - [`raft`]: the registry of a node's groups, the proposer that batches
//!   posts into Raft entries, the gRPC transport between nodes.
//! - [`storage`]: the Raft log (fjall, group-committed fsync), the space
//!   state (sled), snapshots, the data directory, openraft's type config.
//! - [`space`]: the deterministic space state machine: seqs, dedup,
//!   membership; no I/O.
//! - [`meta`]: the deterministic directory state machine of the meta
//!   cluster; [`kv`]: the key-value view both machines apply onto.
//! - [`placement`]: which space cluster a space goes to, from its attributes.
//! - [`error`]: the typed error kinds every layer and peer speaks, and
//!   their wire form; [`wire`]: what a request carries beside its message
//!   (cluster id, hop); [`config`]: configuration; [`pb`]: generated protobuf.
//!
//! Programs built on those:
//! - [`gateway`]: a `spaceraft gateway` process: follows replicas and fans
//!   committed messages out to WebSocket and gRPC clients.
//! - [`ctl`]: the operator CLI `spacectl`.
//! - [`dev`]: `spaceraft dev`, a local multi-region cluster of processes.
//! - [`bench`]: `spaceraft bench`, load generators that print figures.
//! - [`chaos`]: `spaceraft chaos`, fault injection and the invariant checker.
//! - [`sim`]: `spaceraft sim`, the same faults on in-process Raft groups
//!   under a seeded, simulated clock: thousands of replayable runs a minute.

pub mod api;
pub mod bench;
pub mod chaos;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod error;
pub mod gateway;
pub mod kv;
pub mod meta;
pub mod node;
pub mod pb;
pub mod placement;
pub mod raft;
pub mod security;
pub mod sim;
pub mod space;
pub mod stages;
pub mod storage;
pub mod wire;
