//! Saving a snapshot of a space cluster for an operator: a replica builds a
//! fresh snapshot and streams its file.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::node::router::RequestKind;
use crate::pb;
use crate::raft::group::Group;
use crate::wire::Hop;

/// How long SaveSnapshot waits for the snapshot to be built.
const SNAPSHOT_BUILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Bytes per chunk of a streamed snapshot file.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A snapshot file's chunks.
pub type SnapshotStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::SnapshotFileChunk, ApiError>> + Send + 'static>>;

impl Host {
    /// A fresh snapshot of `cluster` from a replica that hosts it.
    pub async fn save_snapshot(&self, cluster: u64, hop: Hop) -> Result<SnapshotStream, ApiError> {
        self.run(
            self.route(cluster, RequestKind::READ, hop),
            |group: Arc<Group>| snapshot_here(self, group),
            |to, hop| async move {
                let mut client = self.admin_stub(&to.addr)?;
                let reply =
                    client.save_snapshot(self.forward(pb::SaveSnapshotRequest { cluster_id: cluster }, hop)).await;
                let stream = reply.map_err(|status| ApiError::from_status(&status))?.into_inner();
                let chunks =
                    futures::StreamExt::map(stream, |chunk| chunk.map_err(|status| ApiError::from_status(&status)));
                Ok(Box::pin(chunks) as SnapshotStream)
            },
        )
        .await
    }
}

/// Builds a snapshot of this replica covering everything applied when asked,
/// and streams its file.
async fn snapshot_here(host: &Host, group: Arc<Group>) -> Result<SnapshotStream, ApiError> {
    // A snapshot covering everything applied when asked.
    let wanted = group.raft.metrics().borrow_watched().last_applied.map(|id| id.index).unwrap_or(0);
    group.raft.trigger().snapshot().await.map_err(|e| ApiError::internal(e.to_string()))?;
    let mut metrics = group.raft.metrics();
    let built = tokio::time::timeout(SNAPSHOT_BUILD_TIMEOUT, async {
        loop {
            if metrics.borrow_watched().snapshot.is_some_and(|id| id.index >= wanted) {
                return Ok(());
            }
            if metrics.changed().await.is_err() {
                return Err(ApiError::shutting_down());
            }
        }
    })
    .await;
    match built {
        Ok(result) => result?,
        Err(_) => return Err(ApiError::new(ErrorKind::NotProposed, "the snapshot was not built in time")),
    }
    let snapshot = group
        .raft
        .get_snapshot()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .ok_or_else(|| ApiError::internal("no snapshot after building one"))?;
    let last_log_index = snapshot.meta.last_log_id.map(|id| id.index).unwrap_or(0);
    // Opened before anything can replace it: a newer snapshot deletes
    // the file's name, not the open file.
    let path = snapshot.snapshot.path.clone();
    let (file, total_bytes) = crate::storage::blocking::run(move || {
        let file = std::fs::File::open(&path)?;
        let total_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok::<_, std::io::Error>((file, total_bytes))
    })
    .await
    .map_err(|e| ApiError::internal(format!("cannot open the snapshot: {e}")))?
    .map_err(|e| ApiError::internal(format!("cannot open the snapshot: {e}")))?;
    let node_id = host.config.node_id;
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    crate::storage::blocking::spawn(move || {
        use std::io::Read;
        let mut file = file;
        let mut first = true;
        loop {
            let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let read = match file.read(&mut data) {
                Ok(read) => read,
                Err(error) => {
                    let _ = sender.blocking_send(Err(ApiError::internal(format!("snapshot read failed: {error}"))));
                    return;
                }
            };
            if read == 0 && !first {
                return;
            }
            data.truncate(read);
            let chunk = if first {
                pb::SnapshotFileChunk { data, total_bytes, last_log_index, node_id }
            } else {
                pb::SnapshotFileChunk { data, ..Default::default() }
            };
            first = false;
            if sender.blocking_send(Ok(chunk)).is_err() {
                return;
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver)) as SnapshotStream)
}
