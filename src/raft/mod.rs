//! Raft: the groups a node hosts ([`group`]: the registry, each group's
//! openraft instance and state reader), the proposer that batches posts into
//! entries ([`proposer`]), and the sending side of the transport between
//! nodes ([`network`]): one connection per peer node carries every group's
//! traffic; every request names its group and its cluster. The openraft
//! type configuration is the storage layer's ([`types`]), since the log and
//! the state machine store its entries; the receiving side of the transport
//! is a service of the front door ([`crate::api`]).

pub mod group;
pub mod mux;
pub mod network;
pub mod proposer;

pub use crate::storage::types;
pub use group::{Group, Groups};
pub use types::{NodeAddr, Raft, TypeConfig};

use openraft::storage::{RaftLogStorage, RaftStateMachine};

/// Repairs, before a group starts, a log that a crash left behind its state
/// machine: the state machine (or its durable snapshot) has applied an entry
/// `A`, while the durable log ends with an entry ordered before `A` at an
/// index at or after `A`'s. That happens when a follower applied entries
/// that replaced an old leader's suffix and persisted the state (or a
/// snapshot) before the replacement reached the log's disk. openraft then
/// refuses the stores ("inverted log order").
///
/// The log's entries from `A`'s index on are all of a lower term than `A`
/// (else the log would end after `A`), so none of them is committed: a
/// committed entry cannot follow a committed entry of a higher term. They
/// are dropped and the log is purged up to `A`, as openraft itself does when
/// the log merely ends before `A`. Returns whether anything was repaired.
pub async fn repair_log_behind_state<C, LS, SM>(log: &mut LS, machine: &mut SM) -> std::io::Result<bool>
where
    C: openraft::RaftTypeConfig,
    LS: RaftLogStorage<C>,
    SM: RaftStateMachine<C>,
{
    let (Some(applied), _) = machine.applied_state().await? else { return Ok(false) };
    let last_log_id = log.get_log_state().await?.last_log_id;
    let inverted = last_log_id.as_ref().is_some_and(|last| *last < applied && last.index() >= applied.index());
    if !inverted {
        return Ok(false);
    }
    tracing::warn!(
        last_log_id = %last_log_id.as_ref().map(ToString::to_string).unwrap_or_default(),
        applied = %applied,
        "the log ends with entries the applied state replaced; dropping them"
    );
    log.truncate_after(Some(applied.clone())).await?;
    log.purge(applied).await?;
    Ok(true)
}

/// The vote to answer a leader's snapshot with, without installing it, when
/// this replica's log already holds the snapshot's last log id: then the log
/// matches the leader's up to there (same index and leader, same entries
/// before it), and every entry the snapshot covers is committed, so the
/// replica has all of it and applies it as usual. A leader that lost track of
/// a follower sends such a snapshot; installing it would move openraft's log
/// cursor back below entries the follower had already accepted, which
/// openraft's debug builds assert against and which gains nothing. None: the
/// snapshot must be installed.
pub async fn snapshot_already_held<C, SM>(
    raft: &openraft::Raft<C, SM>,
    last: Option<openraft::type_config::alias::LogIdOf<C>>,
) -> Result<Option<openraft::type_config::alias::VoteOf<C>>, openraft::errors::Fatal<C>>
where
    C: openraft::RaftTypeConfig,
    SM: RaftStateMachine<C>,
{
    let Some(last) = last else { return Ok(None) };
    raft.with_raft_state(move |state| {
        (state.log_ids.get(last.index()).as_ref() == Some(&last)).then(|| state.vote_ref().clone())
    })
    .await
}
