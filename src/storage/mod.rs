//! Storage: where a node keeps its Raft logs and its space state machines.
//!
//! - [`log_store`]: every group's Raft log and vote in one fjall database;
//!   one fsync covers the appends of all groups (group commit).
//! - [`state_machine`]: every group's space state in a tree of the process's
//!   single sled `Db`; consistent snapshots while apply goes on.
//! - [`snapshot_file`]: the checksummed snapshot file format.
//! - [`state_writer`]: one sled write for the applies of many groups.
//! - [`flusher`]: the one task that writes sled out, off the async runtime.
//! - [`marker`]: what the log knows fsynced, kept apart from the journal, to
//!   tell a torn tail from lost data.
//! - [`data_dir`]: the layout and identity of a node's data directory.
//! - [`blocking`]: disk work off the async runtime, checked in debug builds.
//! - [`types`]: the openraft type configuration: what the log stores.
//!
//! Durability: a post is acknowledged only after its entry is fsynced in the
//! logs of a quorum. sled is written out by the flusher; if its last pages
//! are lost, the state is rebuilt from the latest durable snapshot plus the
//! log, which is purged only behind a durable snapshot.

pub mod blocking;
pub mod data_dir;
pub mod flusher;
pub mod log_store;
pub mod marker;
pub mod snapshot_file;
pub mod state_machine;
pub mod state_writer;
pub mod types;

pub use log_store::{LogEngine, LogStore};
pub use snapshot_file::SnapshotFile;
pub use state_machine::{SpaceReader, SpaceStateMachine, StorageError};
pub use state_writer::StateWriter;
