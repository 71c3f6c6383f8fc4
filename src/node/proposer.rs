//! The leader's proposer: batches concurrent posts into one Raft entry.
//!
//! Posts queue on a bounded channel; one task takes whatever is queued (up to
//! `propose_batch_len_max`), proposes it as one `Command::Posts` entry and
//! goes on with the next batch without waiting, up to `propose_inflight_max`
//! batches in flight. Each post is answered with its own result once its
//! entry is committed and applied.

use std::sync::Arc;

use openraft::errors::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::types::Raft;
use crate::space::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone)]
pub enum ProposeError {
    Refused(ApplyError),
    /// This replica does not lead; the leader's id and address if known.
    NotLeader(Option<(u64, String)>),
    /// Leadership changed after the entry was appended: it may or may not
    /// commit. A retry with the same idempotency key is safe.
    Unknown(String),
    Stopped(String),
}

struct Pending {
    post: PostCommand,
    reply: oneshot::Sender<Result<PostOutcome, ProposeError>>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Pending>,
}

impl Proposer {
    pub fn spawn(raft: Raft, batch_len_max: usize, inflight_max: usize) -> Proposer {
        let (queue, receiver) = mpsc::channel(batch_len_max * inflight_max.max(1) * 2);
        tokio::spawn(run(raft, receiver, batch_len_max.max(1), inflight_max.max(1)));
        Proposer { queue }
    }

    pub async fn propose(&self, post: PostCommand) -> Result<PostOutcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Pending { post, reply }).await.map_err(|_| ProposeError::Stopped("proposer stopped".into()))?;
        answer.await.map_err(|_| ProposeError::Stopped("proposer stopped".into()))?
    }
}

async fn run(raft: Raft, mut receiver: mpsc::Receiver<Pending>, batch_len_max: usize, inflight_max: usize) {
    let inflight = Arc::new(Semaphore::new(inflight_max));
    while let Some(first) = receiver.recv().await {
        let permit = inflight.clone().acquire_owned().await.expect("semaphore never closes");
        // Take what queued while the previous batches were in flight.
        let mut batch = vec![first];
        while batch.len() < batch_len_max {
            match receiver.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (posts, replies): (Vec<PostCommand>, Vec<_>) = batch.into_iter().map(|p| (p.post, p.reply)).unzip();
            let outcomes: Vec<Result<PostOutcome, ProposeError>> = match raft.client_write(Command::Posts(posts)).await
            {
                Ok(response) => match response.data {
                    CommandResult::Posts(results) => {
                        results.into_iter().map(|result| result.map_err(ProposeError::Refused)).collect()
                    }
                    other => {
                        let error = ProposeError::Stopped(format!("unexpected apply result {other:?}"));
                        vec![Err(error); replies.len()]
                    }
                },
                Err(error) => {
                    let failure = match error.api_error() {
                        Some(ClientWriteError::ForwardToLeader(forward)) => ProposeError::NotLeader(
                            forward.leader_id.zip(forward.leader_node.as_ref().map(|node| node.addr.clone())),
                        ),
                        Some(ClientWriteError::LogEntryDiscarded(_)) => ProposeError::Unknown(error.to_string()),
                        _ => ProposeError::Stopped(error.to_string()),
                    };
                    vec![Err(failure); replies.len()]
                }
            };
            debug_assert_eq!(outcomes.len(), replies.len());
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        });
    }
}
