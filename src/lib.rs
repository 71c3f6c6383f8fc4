//! Spaceraft: a geo-replicated, strongly consistent message store for chat
//! spaces. A space's messages are ordered and durably logged by its space
//! cluster, one Raft group whose voters sit in different regions.
//!
//! Layout (follow a post from top to bottom):
//! - [`config`]: a node's configuration (TOML, `SPACERAFT_*` env, flags).
//! - [`node`]: a `spaceraft node` process: its gRPC services, the proposer
//!   that batches posts into Raft entries, its hosted groups.
//! - [`raft`]: openraft's types and the gRPC transport between nodes.
//! - [`gateway`]: a `spaceraft gateway` process: follows replicas and fans
//!   committed messages out to WebSocket and gRPC clients.
//! - [`space`]: the deterministic state machine logic: seqs, dedup,
//!   membership; no I/O.
//! - [`storage`]: the Raft log (fjall, group-committed fsync) and the space
//!   state (sled), snapshots and the data directory.
//! - [`ctl`]: the operator CLI `spacectl`.
//! - [`dev`]: `spaceraft dev`, a local multi-region cluster of processes.
//! - [`bench`]: `spaceraft bench`, load generators that print figures.
//! - [`chaos`]: `spaceraft chaos`, fault injection and the invariant checker.
//! - [`sim`]: `spaceraft sim`, the same faults on in-process Raft groups
//!   under a seeded, simulated clock: thousands of replayable runs a minute.
//! - [`placement`]: which space cluster a space goes to, from its attributes.
//! - [`error`]: API errors and their gRPC status codes.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod ctl;
pub mod dev;
pub mod error;
pub mod gateway;
pub mod node;
pub mod pb;
pub mod placement;
pub mod raft;
pub mod sim;
pub mod space;
pub mod storage;
