//! `spacectl snapshot save` and `snapshot status`: a cluster's state as one
//! checksummed file, like `etcdctl snapshot save/status`.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use serde::Serialize;

use super::client::{CtlError, Endpoints};
use crate::space::record::{self, MessageBlock, DELETED_PREFIX, MESSAGE_PREFIX, SPACE_PREFIX};
use crate::storage::snapshot_file::SnapshotReader;

/// What a snapshot file holds.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotSummary {
    pub cluster_id: u64,
    pub last_log_index: u64,
    pub last_log_term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Key-value pairs of the state machine.
    pub keys: u64,
    pub spaces: u64,
    pub deleted_spaces: u64,
    pub messages: u64,
    pub size_bytes: u64,
    /// CRC-32 of the whole file, in hex: compare copies with it.
    pub crc32: String,
}

/// Reads and checks every frame of a snapshot file.
pub fn summarize(path: &Path) -> Result<SnapshotSummary, CtlError> {
    use openraft::vote::RaftLeaderId;
    let failed = |why: String| CtlError::Failed(format!("{}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| failed(e.to_string()))?;
    let mut reader = SnapshotReader::open(path).map_err(|e| failed(e.to_string()))?;
    let membership = reader.meta.last_membership.membership();
    let last_log_id = reader.meta.last_log_id;
    let mut summary = SnapshotSummary {
        cluster_id: reader.group_id,
        last_log_index: last_log_id.map(|id| id.index()).unwrap_or(0),
        last_log_term: last_log_id.map(|id| id.committed_leader_id().term()).unwrap_or(0),
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        keys: 0,
        spaces: 0,
        deleted_spaces: 0,
        messages: 0,
        size_bytes: bytes.len() as u64,
        crc32: format!("{:08x}", crc32fast::hash(&bytes)),
    };
    while let Some(pairs) = reader.next_pairs().map_err(|e| failed(format!("corrupt: {e}")))? {
        for (key, value) in pairs {
            summary.keys += 1;
            match key.first() {
                Some(&SPACE_PREFIX) => summary.spaces += 1,
                Some(&DELETED_PREFIX) => summary.deleted_spaces += 1,
                Some(&MESSAGE_PREFIX) => {
                    let block: MessageBlock =
                        record::decode(&value).map_err(|e| failed(format!("corrupt message block: {e}")))?;
                    summary.messages += block.messages.len() as u64;
                }
                _ => {}
            }
        }
    }
    Ok(summary)
}

/// Streams a fresh snapshot of `cluster` into `path` (through a `.part`
/// file, checked, made durable and renamed), showing progress on a
/// terminal. Returns what it holds and the node that built it.
pub async fn save(endpoints: &Endpoints, cluster: u64, path: &Path) -> Result<(SnapshotSummary, u64), CtlError> {
    let part = PathBuf::from(format!("{}.part", path.display()));
    let failed = |why: String| CtlError::Failed(format!("{}: {why}", part.display()));
    let mut stream = endpoints.save_snapshot(cluster).await?;
    let mut file = std::fs::File::create(&part).map_err(|e| failed(e.to_string()))?;
    let progress = progress_bar();
    let mut node_id = 0;
    let received = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|status| {
                CtlError::Unreachable(format!("snapshot stream: {}", crate::error::ApiError::from_status(&status)))
            })?;
            if chunk.total_bytes > 0 {
                progress.set_length(chunk.total_bytes);
                node_id = chunk.node_id;
            }
            file.write_all(&chunk.data).map_err(|e| failed(e.to_string()))?;
            progress.inc(chunk.data.len() as u64);
        }
        file.sync_all().map_err(|e| failed(e.to_string()))
    }
    .await;
    progress.finish_and_clear();
    drop(file);
    let summary = received.and_then(|()| summarize(&part));
    let summary = match summary {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
    };
    std::fs::rename(&part, path).map_err(|e| failed(e.to_string()))?;
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::storage::snapshot_file::sync_dir(dir).map_err(|e| failed(e.to_string()))?;
    Ok((summary, node_id))
}

fn progress_bar() -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template("{spinner} snapshot {bytes}/{total_bytes} {bar:30} {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::new(0).with_style(style)
}
