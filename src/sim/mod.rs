//! `spaceraft sim`: the in-process, deterministic layer of the chaos tests.
//!
//! One seed is one run: a cluster of openraft nodes running the real space
//! state machine logic ([`crate::space::SpaceMachine`]) over in-memory disks
//! that lose what was not fsynced when a node crashes, connected by an
//! in-process network with per-link latency, loss and cuts. Clients post with
//! idempotency keys and retry; readers make linearizable reads; a nemesis
//! schedule drawn from the seed crashes nodes, crashes all of them at once,
//! partitions, isolates the leader, cuts links one way, drops messages,
//! transfers leadership and forces snapshots.
//!
//! Everything runs on one thread under tokio's paused clock, and openraft's
//! randomness (election timeouts) comes from the seed through
//! [`runtime::SimRuntime`]: the same seed gives
//! the same run, event for event, so a failing seed replays exactly. A run
//! of 20 simulated seconds takes milliseconds of real time.
//!
//! Layout:
//! - [`runtime`]: openraft's runtime with seeded randomness.
//! - [`store`]: the simulated disk, the log store and the state machine.
//! - [`net`]: the simulated network, openraft's `RaftNetworkV2` over it.
//! - [`run`]: one seeded run: cluster, workload, nemesis, checks.
//! - [`check`]: the invariants checked during and after a run.
//! - [`cli`]: `spaceraft sim`: many seeds on all cores, or one replayed.

pub mod check;
pub mod cli;
pub mod net;
pub mod run;
pub mod runtime;
pub mod store;

use crate::raft::types::NodeAddr;
use crate::space::{Command, CommandResult};

pub use runtime::SimRuntime;

openraft::declare_raft_types!(
    /// The space clusters' types with the deterministic runtime.
    pub SimConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeAddr,
        AsyncRuntime = SimRuntime,
);

pub type SimRaft = openraft::Raft<SimConfig, store::SimStateMachine>;
pub type LogId = openraft::type_config::alias::LogIdOf<SimConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<SimConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<SimConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<SimConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<SimConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<SimConfig, Vec<u8>>;

/// Spawns a task that inherits the seeded randomness of its parent.
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    <SimRuntime as openraft_rt::AsyncRuntime>::spawn(future)
}
