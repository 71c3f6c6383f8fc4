//! The leader's proposer: batches concurrent posts into one Raft entry.
//!
//! Posts queue on a bounded channel. When no batch is in flight, whatever is
//! queued (up to `propose_batch_len_max`) is proposed at once as one
//! `Command::Posts` entry; while batches are in flight, only full batches go
//! ahead (up to `propose_inflight_max`), so posts arriving during a commit
//! round share one entry: one append, one fsync and one replication message
//! for many posts. Each post is answered with its own result once its entry
//! is committed and applied, or as of unknown outcome at once when the
//! replica loses its leadership, or its quorum for the leader lease, with the
//! post in flight (the client may send it again with its key).

use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::{Instant as _, ServerState};
use tokio::sync::{mpsc, oneshot};

use crate::raft::types::Raft;
use crate::space::{ApplyError, Command, CommandResult, PostCommand, PostOutcome};
use crate::stages::{self, Stage};

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
    /// When the post was queued.
    queued: Instant,
    /// The outcome, and when it was known.
    reply: oneshot::Sender<(Result<PostOutcome, ProposeError>, Instant)>,
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
            .send(Pending { post, queued: Instant::now(), reply })
            .await
            .map_err(|_| ProposeError::NotQueued("proposer stopped".into()))?;
        let (outcome, known) =
            answer.await.map_err(|_| ProposeError::Unknown("proposer stopped with the post in flight".into()))?;
        stages::since(Stage::PostReply, known);
        outcome
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
    /// How long a leader may go without a quorum acknowledging it before
    /// the batches it has in flight are answered as of unknown outcome
    /// (openraft's leader lease: it then refuses new proposals too).
    pub lease: Duration,
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
            dispatch(raft.clone(), batch, bounds.lease, done_tx.clone());
        }
    }
}

/// Resolves when this replica's leadership of the term it leads now is gone
/// or has gone `lease` without a quorum's acknowledgement (isolated, paused
/// or its peers down): what it has in flight may or may not commit, and
/// waiting longer tells the client nothing. Never resolves on a replica that
/// does not lead (its proposals are refused at once).
async fn leadership_lost(raft: Raft, lease: Duration) -> String {
    let mut server = raft.server_metrics();
    let term = {
        let metrics = server.borrow_watched();
        (metrics.state == ServerState::Leader).then(|| metrics.vote.leader_id)
    };
    let Some(term) = term else {
        return std::future::pending().await;
    };
    let data = raft.data_metrics();
    let began = tokio::time::Instant::now();
    let mut probe = tokio::time::interval(lease / 4);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    probe.tick().await;
    loop {
        tokio::select! {
            changed = server.changed() => {
                if changed.is_err() {
                    return "its raft stopped".into();
                }
                let lost = {
                    let metrics = server.borrow_watched();
                    (metrics.state != ServerState::Leader || metrics.vote.leader_id != term)
                        .then(|| format!("it lost leadership (now {:?}, leader {:?})", metrics.state, metrics.current_leader))
                };
                if let Some(why) = lost {
                    return why;
                }
            }
            _ = probe.tick() => {
                // An idle leader's last acknowledgement may be old: only the
                // time since this batch began counts.
                let acked = { data.borrow_watched().last_quorum_acked.as_ref().map(|acked| acked.elapsed()) };
                let unacked = acked.unwrap_or(Duration::MAX).min(began.elapsed());
                if unacked > lease {
                    return format!("no quorum acknowledged it for {lease:?}");
                }
            }
        }
    }
}

fn dispatch(raft: Raft, batch: Vec<Pending>, lease: Duration, done: mpsc::UnboundedSender<()>) {
    tokio::spawn(async move {
        let proposed = Instant::now();
        stages::count(Stage::BatchPosts, batch.len() as u64);
        for pending in &batch {
            stages::record(Stage::ProposeQueue, proposed.duration_since(pending.queued));
        }
        let (posts, replies): (Vec<PostCommand>, Vec<_>) = batch.into_iter().map(|p| (p.post, p.reply)).unzip();
        let written = tokio::select! {
            biased;
            written = raft.client_write(Command::Posts(posts)) => written,
            why = leadership_lost(raft.clone(), lease) => {
                tracing::info!("answering {} posts in flight as of unknown outcome: {why}", replies.len());
                let why = format!("the leader's replica: {why}, with the post in flight");
                for reply in replies {
                    let _ = reply.send((Err(ProposeError::Unknown(why.clone())), Instant::now()));
                }
                let _ = done.send(());
                return;
            }
        };
        let outcomes: Vec<Result<PostOutcome, ProposeError>> = match written {
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
        let known = Instant::now();
        stages::record(Stage::RaftWrite, known.duration_since(proposed));
        debug_assert_eq!(outcomes.len(), replies.len());
        for (reply, outcome) in replies.into_iter().zip(outcomes) {
            let _ = reply.send((outcome, known));
        }
        let _ = done.send(());
    });
}
