//! Which cluster this node belongs to: made at bootstrap, learned from the
//! first Raft message (or the join answer) by a node started without it,
//! kept in the data directory; peers of another cluster are refused.

use tonic::metadata::MetadataMap;

use crate::error::ApiError;
use crate::node::host::Host;
use crate::wire::{cluster_of, is_cluster_id, write_cluster_id};

impl Host {
    /// Checks a peer's request names this node's cluster; a node that does
    /// not know its cluster yet learns the one it names first.
    pub async fn admit_peer(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        if self.cluster.get().is_none() {
            if let Some(id) = cluster_of(metadata).filter(|id| is_cluster_id(id)) {
                self.learn_cluster_id(id).await?;
            }
        }
        self.cluster.check_peer(metadata)
    }

    /// Keeps `id` as this node's cluster, durably, unless it knows one.
    pub async fn learn_cluster_id(&self, id: &str) -> Result<(), ApiError> {
        let _learning = self.learning_cluster.lock().await;
        if self.cluster.get().is_some() {
            return Ok(());
        }
        let (root, kept) = (self.data_dir.root.clone(), id.to_string());
        crate::storage::blocking::run(move || write_cluster_id(&root, &kept))
            .await
            .map_err(|e| ApiError::internal(format!("cluster id write failed: {e}")))?
            .map_err(|e| ApiError::internal(format!("cannot keep the cluster id: {e}")))?;
        self.cluster.learn(id);
        tracing::info!(cluster_id = id, "this node belongs to cluster {id}");
        Ok(())
    }
}
