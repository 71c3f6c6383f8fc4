//! The leader's proposer: batches concurrent posts into one Raft entry.
//!
//! Posts queue on a bounded channel. When no batch is in flight, whatever is
//! queued (up to `propose_batch_len_max`) is proposed at once as one
//! `Command::Posts` entry; while batches are in flight, only full batches go
//! ahead (up to `propose_inflight_max`), so posts arriving during a commit
//! round share one entry: one append, one fsync and one replication message
//! for many posts. Each post is answered with its own result once its entry
//! is committed and applied.

use openraft::errors::ClientWriteError;
use tokio::sync::{mpsc, oneshot};

use crate::raft::types::Raft;
use crate::space::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};

/// Why a proposal did not produce an outcome.
#[derive(Debug, Clone)]
pub enum ProposeError {
    Refused(ApplyError),
    /// This replica does not lead; the leader's id and address if known.
    NotLeader(Option<(u64, String)>),
    /// The post never reached the proposer (it is stopping): nothing was
    /// proposed.
    NotQueued(String),
    /// Leadership changed after the entry was appended, or the proposer
    /// stopped with the post in flight: it may or may not commit. A retry
    /// with the same idempotency key is safe.
    Unknown(String),
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
    pub fn spawn(raft: Raft, bounds: BatchBounds) -> Proposer {
        let (queue, receiver) = mpsc::channel(bounds.len_max.max(1) * bounds.inflight_max.max(1) * 2);
        tokio::spawn(run(raft, receiver, bounds));
        Proposer { queue }
    }

    pub async fn propose(&self, post: PostCommand) -> Result<PostOutcome, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { post, reply })
            .await
            .map_err(|_| ProposeError::NotQueued("proposer stopped".into()))?;
        answer.await.map_err(|_| ProposeError::Unknown("proposer stopped with the post in flight".into()))?
    }
}

/// Bounds of the proposer's batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchBounds {
    /// Posts per entry.
    pub len_max: usize,
    /// Bytes of post bodies per entry (a post larger than this goes alone).
    pub bytes_max: usize,
    /// Full batches in flight at once.
    pub inflight_max: usize,
}

/// How many of the queued posts the next batch takes, and whether that is a
/// full batch.
fn next_batch_len(queued: &[Pending], bounds: &BatchBounds) -> (usize, bool) {
    let mut bytes = 0usize;
    for (taken, pending) in queued.iter().enumerate() {
        if taken == bounds.len_max {
            return (taken, true);
        }
        bytes += pending.post.body.len() + pending.post.author.len() + pending.post.idempotency_key.len();
        if bytes > bounds.bytes_max && taken > 0 {
            return (taken, true);
        }
    }
    (queued.len(), false)
}

async fn run(raft: Raft, mut receiver: mpsc::Receiver<Pending>, bounds: BatchBounds) {
    let batch_len_max = bounds.len_max.max(1);
    let inflight_max = bounds.inflight_max.max(1);
    // Completions of in-flight batches.
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
    let mut inflight = 0usize;
    let mut queued: Vec<Pending> = Vec::with_capacity(batch_len_max);
    let mut open = true;
    while open || inflight > 0 {
        tokio::select! {
            next = receiver.recv(), if open && queued.len() < batch_len_max => match next {
                Some(first) => {
                    queued.push(first);
                    while queued.len() < batch_len_max {
                        match receiver.try_recv() {
                            Ok(next) => queued.push(next),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            Some(()) = done_rx.recv(), if inflight > 0 => inflight -= 1,
        }
        // Send at once when nothing is in flight (lowest latency); while a
        // batch is in flight, only full batches go ahead, so posts that
        // arrive during a commit round share the next entry.
        while !queued.is_empty() {
            let (take, full) = next_batch_len(&queued, &bounds);
            if !(inflight == 0 || (full && inflight < inflight_max)) {
                break;
            }
            let batch: Vec<Pending> = queued.drain(..take).collect();
            inflight += 1;
            dispatch(raft.clone(), batch, done_tx.clone());
        }
    }
}

fn dispatch(raft: Raft, batch: Vec<Pending>, done: mpsc::UnboundedSender<()>) {
    tokio::spawn(async move {
        let (posts, replies): (Vec<PostCommand>, Vec<_>) = batch.into_iter().map(|p| (p.post, p.reply)).unzip();
        let outcomes: Vec<Result<PostOutcome, ProposeError>> = match raft.client_write(Command::Posts(posts)).await {
            Ok(response) => match response.data {
                CommandResult::Posts(results) => {
                    results.into_iter().map(|result| result.map_err(ProposeError::Refused)).collect()
                }
                other => {
                    let error = ProposeError::Unknown(format!("unexpected apply result {other:?}"));
                    vec![Err(error); replies.len()]
                }
            },
            Err(error) => {
                let failure = match error.api_error() {
                    Some(ClientWriteError::ForwardToLeader(forward)) => ProposeError::NotLeader(
                        forward.leader_id.zip(forward.leader_node.as_ref().map(|node| node.addr.clone())),
                    ),
                    Some(ClientWriteError::LogEntryDiscarded(_)) => ProposeError::Unknown(error.to_string()),
                    _ => ProposeError::Unknown(error.to_string()),
                };
                vec![Err(failure); replies.len()]
            }
        };
        debug_assert_eq!(outcomes.len(), replies.len());
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcome);
        }
        let _ = done.send(());
    });
}
