//! The life of the groups a node hosts: started from their stores, the
//! first voter initializes a new cluster, and the directory (this node's
//! meta replica) says which space clusters live here.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use openraft::errors::InitializeError;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::meta::directory::{ClusterEntry, Directory};
use crate::node::host::Host;
use crate::raft::group::Group;
use crate::raft::network::RaftNetwork;
use crate::raft::proposer::{BatchBounds, Proposer};
use crate::raft::types::{NodeAddr, Raft};
use crate::storage::SpaceStateMachine;

impl Host {
    /// Starts group `id` here (once; an existing one is returned).
    pub async fn start_group(&self, id: u64) -> anyhow::Result<Arc<Group>> {
        if let Some(group) = self.groups.get(id) {
            return Ok(group);
        }
        let _starting = self.starting.lock().await;
        if let Some(group) = self.groups.get(id) {
            return Ok(group);
        }
        let snapshot_dir = self.data_dir.snapshot_dir(id);
        let mut state_machine =
            SpaceStateMachine::open(self.db.clone(), self.state_writer.clone(), id, snapshot_dir.clone())
                .await
                .with_context(|| format!("cannot open the state machine of group {id}"))?;
        let mut log = self.engine.group(id);
        crate::raft::repair_log_behind_state(&mut log, &mut state_machine)
            .await
            .with_context(|| format!("cannot check the log of group {id} against its state"))?;
        let reader = state_machine.reader();
        let network = RaftNetwork {
            group_id: id,
            self_id: self.config.node_id,
            self_addr: self.config.advertise_addr().to_string(),
            channels: self.peers.clone(),
            admitted: reader.admitted.clone(),
        };
        let raft = Raft::new(self.config.node_id, self.raft_config.clone(), network, log, state_machine)
            .await
            .with_context(|| format!("cannot start raft for group {id}"))?;
        let raft_bounds = &self.config.raft;
        let proposer = Proposer::spawn(
            raft.clone(),
            BatchBounds {
                len_max: raft_bounds.propose_batch_len_max,
                bytes_max: raft_bounds.propose_batch_bytes_max,
                inflight_max: raft_bounds.propose_inflight_max,
                lease: std::time::Duration::from_millis(raft_bounds.election_timeout_max_ms),
            },
        );
        let mut applied = reader.applied.clone();
        let applied_any = self.applied_any.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                applied_any.send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        self.groups.insert(Group {
            id,
            raft,
            reader,
            proposer,
            snapshot_dir,
            woken_at_ms: std::sync::atomic::AtomicU64::new(crate::raft::group::since_start_ms()),
            appended_by: Default::default(),
        });
        tracing::debug!(group_id = id, "group started");
        Ok(self.groups.get(id).expect("just inserted"))
    }

    /// Starts every space cluster the directory puts on this node, and
    /// initializes the ones whose first voter this node is.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let tree = self.directory();
        let me = self.config.node_id;
        let (clusters, drained) = crate::storage::blocking::run(move || {
            (Directory::clusters(&tree), Directory::node(&tree, me).is_some_and(|node| node.drained))
        })
        .await?;
        self.drained.store(drained, std::sync::atomic::Ordering::Relaxed);
        for cluster in
            clusters.into_iter().filter(|cluster| cluster.voters.contains(&me) || cluster.learners.contains(&me))
        {
            if self.initialized.lock().expect("initialized lock").contains(&cluster.id) {
                continue;
            }
            let group = self.start_group(cluster.id).await?;
            if cluster.voters.first() == Some(&me) {
                self.initialize(&group.raft, &cluster).await?;
            }
            self.initialized.lock().expect("initialized lock").insert(cluster.id);
        }
        Ok(())
    }

    async fn initialize(&self, raft: &Raft, cluster: &ClusterEntry) -> anyhow::Result<()> {
        if raft.is_initialized().await? {
            return Ok(());
        }
        let (tree, entry) = (self.directory(), cluster.clone());
        let voters = crate::storage::blocking::run(move || Directory::voters(&tree, &entry)).await?;
        let members: BTreeMap<u64, NodeAddr> = voters
            .into_iter()
            .map(|(id, node)| (id, NodeAddr { addr: node.addr, region: node.region, incarnation: 0 }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(cluster = cluster.id, voters = ?cluster.voters, "space cluster initialized");
                Ok(())
            }
            Err(error) => match error.api_error() {
                Some(InitializeError::NotAllowed(_)) => Ok(()),
                _ => Err(anyhow::anyhow!("cannot initialize space cluster {}: {error}", cluster.id)),
            },
        }
    }

    /// Follows the directory until shutdown: starts the groups it adds.
    pub async fn follow_directory(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.meta().reader.applied.clone();
        loop {
            applied.borrow_and_update();
            if let Err(error) = self.reconcile().await {
                tracing::warn!(%error, "cannot start the groups the directory lists");
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// This node's group of `cluster` when it is one of its voters (started
    /// now if the directory change that added it is still on its way).
    pub async fn local_cluster(&self, cluster: u64) -> Result<Option<Arc<Group>>, ApiError> {
        if let Some(group) = self.groups.get(cluster) {
            return Ok(Some(group));
        }
        let tree = self.directory();
        let entry = crate::storage::blocking::run(move || Directory::cluster(&tree, cluster))
            .await
            .map_err(|e| ApiError::internal(format!("directory read failed: {e}")))?;
        match entry {
            Some(entry)
                if entry.voters.contains(&self.config.node_id) || entry.learners.contains(&self.config.node_id) =>
            {
                let group = self.start_group(cluster).await.map_err(|e| ApiError::internal(format!("{e:#}")))?;
                if entry.voters.first() == Some(&self.config.node_id) {
                    self.initialize(&group.raft, &entry).await.map_err(|e| ApiError::internal(format!("{e:#}")))?;
                }
                Ok(Some(group))
            }
            _ => Ok(None),
        }
    }
}
