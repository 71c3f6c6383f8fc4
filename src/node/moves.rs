//! Moving a space to another space cluster, online.

use crate::error::ApiError;
use crate::meta::directory::{MetaCommand, MetaOutcome};
use crate::node::host::Host;
use crate::pb;
use crate::space::{Command, CommandResult};

/// Bytes of messages per import entry when a space moves.
const MOVE_CHUNK_BYTES_MAX: usize = 1024 * 1024;

impl Host {
    /// Moves `space` to space cluster `to`, online: the directory marks the
    /// move, the old cluster seals the space (later posts there are refused
    /// with "moved", and the node that sent them retries them on `to`), its
    /// messages are copied into `to` in chunks (with their idempotency
    /// keys, so retried posts stay deduplicated), `to` opens the space with
    /// seqs going on from the sealed one, and the directory places it on
    /// `to`. Every step is idempotent: running the move again finishes one
    /// that was cut short. Runs on a node that hosts the old cluster.
    pub async fn move_space(&self, space: &str, to: u64) -> Result<pb::MoveSpaceResponse, ApiError> {
        let placement = self.placement_fresh(space).await?;
        let from = placement.cluster;
        if from == to && placement.moving_to.is_none() {
            return Ok(pb::MoveSpaceResponse {
                from_cluster: from,
                to_cluster: to,
                sealed_seq: 0,
                messages_copied: 0,
                version: placement.version,
            });
        }
        let group = self.local_cluster(from).await?.ok_or_else(|| {
            ApiError::internal(format!("space cluster {from} is not hosted here; run the move on one of its voters"))
        })?;
        self.meta_write(MetaCommand::BeginMove { space: space.to_string(), to }).await?;
        let sealed = match self.cluster_write(from, &Command::SealSpace { name: space.to_string(), to }).await? {
            CommandResult::Sealed(result) => result.map_err(ApiError::from)?,
            other => return Err(ApiError::internal(format!("seal answered {other:?}"))),
        };
        self.sync_group(&group).await?;
        let blocks = {
            let (reader, name, last_seq) = (group.reader.clone(), space.to_string(), sealed.last_seq);
            crate::storage::blocking::run(move || reader.blocks(&name, last_seq))
                .await
                .map_err(|e| ApiError::internal(format!("read task failed: {e}")))??
        };
        let messages_copied: u64 = blocks.iter().map(|block| block.messages.len() as u64).sum();
        let mut chunks: Vec<Vec<crate::space::record::MessageBlock>> = vec![Vec::new()];
        let mut chunk_bytes = 0;
        for block in blocks {
            let bytes: usize =
                block.messages.iter().map(|m| m.body.len() + m.author.len() + m.idempotency_key.len() + 16).sum();
            if chunk_bytes + bytes > MOVE_CHUNK_BYTES_MAX && !chunks.last().expect("one chunk").is_empty() {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunks.last_mut().expect("one chunk").push(block);
        }
        let count = chunks.len();
        for (index, blocks) in chunks.into_iter().enumerate() {
            let command =
                Command::ImportSpace { record: sealed.clone(), blocks, first: index == 0, last: index + 1 == count };
            match self.cluster_write(to, &command).await? {
                CommandResult::Imported(result) => result.map_err(ApiError::from)?,
                other => return Err(ApiError::internal(format!("import answered {other:?}"))),
            }
        }
        let version = match self.meta_write(MetaCommand::FinishMove { space: space.to_string(), to }).await? {
            MetaOutcome::Moved { placement } => placement.version,
            other => return Err(ApiError::internal(format!("directory answered {other:?}"))),
        };
        tracing::info!(space, from, to, sealed_seq = sealed.last_seq, messages_copied, "space moved");
        // The old cluster keeps the sealed record only; readers still there
        // are sent on. Failing here leaves a copy behind, not a broken move.
        match self.cluster_write(from, &Command::DropSealed { name: space.to_string() }).await {
            Ok(CommandResult::SealedDropped(Ok(dropped))) => {
                tracing::info!(space, from, dropped, "sealed copy dropped")
            }
            other => tracing::warn!(space, from, ?other, "the sealed copy was not dropped"),
        }
        Ok(pb::MoveSpaceResponse {
            from_cluster: from,
            to_cluster: to,
            sealed_seq: sealed.last_seq,
            messages_copied,
            version,
        })
    }
}
