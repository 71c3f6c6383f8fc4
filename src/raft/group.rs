//! One space cluster replica hosted on this node, and the registry of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use crate::raft::proposer::Proposer;
use crate::raft::types::Raft;
use crate::storage::SpaceReader;

/// Everything a node needs to serve one group.
pub struct Group {
    pub id: u64,
    pub raft: Raft,
    /// Reads the applied state for History and Subscribe.
    pub reader: SpaceReader,
    /// Batches posts into Raft entries when this replica leads.
    pub proposer: Proposer,
    /// Where received snapshots are written before install.
    pub snapshot_dir: PathBuf,
    /// When a write last woke this group ([`since_start_ms`]).
    pub woken_at_ms: AtomicU64,
    /// The node and incarnation the last append or snapshot to this
    /// replica came from: its leader, as it was then.
    pub appended_by: std::sync::Mutex<(u64, u64)>,
}

/// Milliseconds since the first call in this process: a cheap clock for
/// atomics.
pub fn since_start_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Group {
    /// Restarts the group's timers before a write: a quiesced leader must
    /// heartbeat again so followers learn the new commit index promptly.
    /// The quiescer stops them again once the group is idle.
    pub fn wake(&self) {
        self.woken_at_ms.store(since_start_ms(), Ordering::Relaxed);
        self.raft.runtime_config().tick(true);
    }

    /// Notes the sender of an append or snapshot to this replica.
    pub fn appended_by(&self, node: u64, incarnation: u64) {
        *self.appended_by.lock().expect("appended_by lock") = (node, incarnation);
    }

    /// The incarnation `leader` last sent an append or snapshot here as, if
    /// it sent the last one.
    pub fn leader_appended_as(&self, leader: u64) -> Option<u64> {
        let (node, incarnation) = *self.appended_by.lock().expect("appended_by lock");
        (node == leader && incarnation != 0).then_some(incarnation)
    }

    /// A write through Raft on a woken group.
    pub async fn woken_write(&self, command: crate::space::Command) -> WriteResult {
        self.wake();
        self.raft.client_write(command).await
    }
}

/// What a write through a group's Raft answers.
pub type WriteResult = Result<
    openraft::raft::ClientWriteResponse<crate::raft::types::TypeConfig>,
    openraft::errors::RaftError<
        crate::raft::types::TypeConfig,
        openraft::errors::ClientWriteError<crate::raft::types::TypeConfig>,
    >,
>;

/// The groups hosted on this node, by id; cheap to clone.
#[derive(Clone, Default)]
pub struct Groups {
    groups: Arc<RwLock<BTreeMap<u64, Arc<Group>>>>,
}

impl Groups {
    pub fn get(&self, id: u64) -> Option<Arc<Group>> {
        self.groups.read().expect("groups lock").get(&id).cloned()
    }

    pub fn insert(&self, group: Group) {
        self.groups.write().expect("groups lock").insert(group.id, Arc::new(group));
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Group>> {
        self.groups.write().expect("groups lock").remove(&id)
    }

    pub fn all(&self) -> Vec<Arc<Group>> {
        self.groups.read().expect("groups lock").values().cloned().collect()
    }
}
