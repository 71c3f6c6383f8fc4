//! Quiescence: idle groups stop their timers, so thousands of them cost
//! almost nothing.
//!
//! openraft drives heartbeats and election timeouts from a per-group ticker
//! (every `heartbeat_interval × 13/64`). One task per node looks at every
//! hosted group now and then and switches that ticker:
//! - a **leader** keeps ticking (heartbeats carry the commit index to
//!   followers) until its log has not grown for `groups.quiesce_after_ms`
//!   and every voter on a live node has matched its last entry; a write wakes
//!   it at once ([`crate::raft::group::Group::wake`]);
//! - a **follower** needs no timer while its leader's node is up: the
//!   failure detector ([`crate::node::detector`], one ping per node pair)
//!   stands in for all the groups' election timers. When the detector takes
//!   the leader's node as down, the leader's node answers with another
//!   incarnation than the membership records (it lost its data), or the
//!   follower knows no leader, its ticker starts and it elects as usual;
//! - a group whose Raft core stopped while the node runs is restarted from
//!   its stores.
//!
//! A node that starts keeps the groups it already had quiet while it asks
//! every peer to heartbeat once in the groups they lead ([`settle`]), so a
//! restart does not set off an election in every group it shares.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;

use crate::config::NodeId;
use crate::meta::directory::Directory;
use crate::node::host::Host;
use crate::pb;
use crate::raft::group::{since_start_ms, Group};

/// What the quiescer remembers of a group between looks.
struct Seen {
    last_log_index: u64,
    changed_at_ms: u64,
}

/// Runs until shutdown.
pub async fn run(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    if !host.config.groups.quiesce {
        host.quiet_until_ms.store(0, Ordering::Relaxed);
        return;
    }
    let every = Duration::from_millis((host.config.groups.quiesce_after_ms / 4).clamp(50, 1_000));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = host.detector.down();
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut was_down: Vec<NodeId> = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            changed = down.changed() => if changed.is_err() { return },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let down_nodes = down.borrow_and_update().clone();
        let back: Vec<NodeId> = was_down.iter().copied().filter(|node| !down_nodes.contains(node)).collect();
        if !back.is_empty() {
            catch_up(&host, &back).await;
        }
        was_down = down_nodes.clone();
        let now = since_start_ms();
        for group in host.groups.all() {
            if *shutdown.borrow() {
                return;
            }
            match look(&host, &group, &mut seen, &down_nodes, now) {
                Some(awake) => group.raft.runtime_config().tick(awake),
                // A store that failed stays failed: restarting the group
                // on it fails again at once. The process reopens its
                // stores once the disk has room ([`crate::node::disk`]).
                None if crate::node::disk::storage_failure(&group.raft.metrics().borrow_watched().running_state)
                    .is_some() => {}
                None => restart(&host, group.id).await,
            }
        }
    }
}

/// Whether `group`'s ticker should run; None when its core has stopped.
fn look(host: &Host, group: &Group, seen: &mut HashMap<u64, Seen>, down: &[NodeId], now: u64) -> Option<bool> {
    let me = host.node_id();
    let metrics = group.raft.metrics();
    let current = metrics.borrow_watched();
    let last_log_index = current.last_log_index.unwrap_or(0);
    let entry = seen.entry(group.id).or_insert(Seen { last_log_index, changed_at_ms: now });
    if entry.last_log_index != last_log_index {
        *entry = Seen { last_log_index, changed_at_ms: now };
    }
    let active_at = entry.changed_at_ms.max(group.woken_at_ms.load(Ordering::Relaxed));
    let idle = now.saturating_sub(active_at) >= host.config.groups.quiesce_after_ms;
    let awake = match current.state {
        ServerState::Shutdown => return None,
        ServerState::Candidate => true,
        ServerState::Leader => {
            let applied = current.last_applied.as_ref().map(|id| id.index()).unwrap_or(0);
            let caught_up = current.replication.as_ref().is_some_and(|replication| {
                current.membership_config.membership().voter_ids().all(|voter| {
                    voter == me
                        || down.contains(&voter)
                        || replication.get(&voter).and_then(|id| id.as_ref()).map(|id| id.index())
                            == Some(last_log_index)
                })
            });
            !(idle && caught_up && applied == last_log_index)
        }
        ServerState::Follower | ServerState::Learner => match current.current_leader {
            Some(leader) if leader != me => down.contains(&leader) || lost_its_data(host, group, &current, leader),
            // No leader known: elect, unless the node has just started and is
            // still letting its peers' leaders make themselves known.
            _ => now >= host.quiet_until_ms.load(Ordering::Relaxed),
        },
    };
    Some(awake)
}

/// Whether `leader`'s node now answers with another incarnation than the
/// one it led this group as (its last append here, or the membership's
/// record): it lost its data, and the leadership with it. It sends no
/// heartbeat, yet its node answers every ping, so the group would wait for
/// it for ever: its followers elect instead.
fn lost_its_data(
    host: &Host,
    group: &Group,
    current: &openraft::RaftMetrics<crate::raft::TypeConfig>,
    leader: NodeId,
) -> bool {
    let Some(found) = host.peers.seen_incarnation(leader) else { return false };
    let recorded = current.membership_config.membership().get_node(&leader).map_or(0, |node| node.incarnation);
    let led_as = group.leader_appended_as(leader).unwrap_or(0);
    [recorded, led_as].into_iter().any(|was| crate::raft::network::refused_incarnation(leader, was, found).is_some())
}

/// Nodes the detector sees again: the groups led here replicate to them at
/// once instead of waiting out their backoff.
async fn catch_up(host: &Host, back: &[NodeId]) {
    for group in host.groups.all() {
        let leads = group.raft.metrics().borrow_watched().current_leader == Some(host.node_id());
        if leads {
            group.wake();
            let _ = group.raft.trigger().reset_backoff(back.iter().copied()).await;
        }
    }
}

/// Starts a group whose core stopped on its own (a fatal error other than
/// a storage failure) again from its stores.
async fn restart(host: &Host, id: u64) {
    tracing::warn!(group_id = id, "the group's raft core stopped; restarting it");
    host.groups.remove(id);
    if let Err(error) = host.start_group(id).await {
        tracing::error!(group_id = id, error = %format!("{error:#}"), "cannot restart the group");
    }
}

/// After a start: asks every peer to heartbeat once in the groups it leads
/// with this node as a member, then lets leaderless groups elect after one
/// election timeout.
pub async fn settle(host: Arc<Host>) {
    let me = host.node_id();
    let tree = host.directory();
    let nodes = crate::storage::blocking::run(move || Directory::nodes(&tree)).await.unwrap_or_default();
    let peers: Vec<(NodeId, String)> =
        nodes.into_iter().filter(|node| node.id != me).map(|node| (node.id, node.addr)).collect();
    let asks = peers.into_iter().map(|(id, addr)| {
        let host = host.clone();
        async move {
            let Ok(channel) = host.peers.channel(&addr) else { return };
            let mut client = pb::admin_client::AdminClient::new(channel);
            let mut request = tonic::Request::new(pb::NudgeRequest { from_node: me });
            request.set_timeout(Duration::from_secs(1));
            match tokio::time::timeout(Duration::from_secs(1), client.nudge(request)).await {
                Ok(Ok(reply)) => tracing::debug!(peer = id, groups = reply.into_inner().groups, "peer heartbeated"),
                _ => tracing::debug!(peer = id, "peer did not answer the nudge"),
            }
        }
    });
    futures::future::join_all(asks).await;
    let quiet_ms = host.config.raft.election_timeout_min_ms;
    host.quiet_until_ms.store(since_start_ms() + quiet_ms, Ordering::Relaxed);
}
