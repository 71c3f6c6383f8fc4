//! Leader placement: each space cluster's leadership sits in its preferred
//! region (set when the cluster is made, or by an operator) whenever a voter
//! there is healthy.
//!
//! A leader outside the preferred region hands leadership to a voter inside
//! it once it has led for `groups.leader_settle_ms`, the target's node has
//! been up that long without interruption, and the target has every entry.
//! Leadership moves only *to* the preferred region, and at most once per
//! settle period per cluster, so it does not flap: a region that comes and
//! goes gets leadership back only after it has stayed up. Leadership leaves
//! a failed region by election (the surviving voters elect among
//! themselves).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;

use crate::config::NodeId;
use crate::meta::directory::{Directory, META_GROUP_ID};
use crate::node::host::Host;
use crate::raft::group::since_start_ms;

/// How soon a drained node tries again to hand over a leadership.
const DRAINED_RETRY_MS: u64 = 1_000;

/// Runs until shutdown.
pub async fn run(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let config = host.config.groups.clone();
    let mut ticks = tokio::time::interval(Duration::from_millis(config.leader_check_interval_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per group: since when this node leads it, and when it last handed
    // leadership over.
    let mut leading_since: HashMap<u64, u64> = HashMap::new();
    let mut handed_at: HashMap<u64, u64> = HashMap::new();
    let settle_ms = config.leader_settle_ms;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let tree = host.directory();
        let Ok((preferred, drained)) = crate::storage::blocking::run(move || {
            let preferred =
                Directory::clusters(&tree).into_iter().map(|c| (c.id, c.preferred_region)).collect::<HashMap<_, _>>();
            let drained: Vec<NodeId> =
                Directory::nodes(&tree).into_iter().filter(|n| n.drained).map(|n| n.id).collect();
            (preferred, drained)
        })
        .await
        else {
            continue;
        };
        let me_drained = drained.contains(&host.node_id());
        let now = since_start_ms();
        for group in host.groups.all() {
            if group.id == META_GROUP_ID && !me_drained {
                continue;
            }
            let target = {
                let metrics = group.raft.metrics();
                let current = metrics.borrow_watched();
                if current.state != ServerState::Leader {
                    leading_since.remove(&group.id);
                    continue;
                }
                let since = *leading_since.entry(group.id).or_insert(now);
                let region = preferred.get(&group.id).map(String::as_str).unwrap_or("");
                // A drained node hands over at once (again after a second if
                // the first try did not take); otherwise only towards the
                // preferred region, after settling.
                let pause = if me_drained { DRAINED_RETRY_MS } else { settle_ms };
                if !me_drained
                    && (region.is_empty() || region == host.config.region || now.saturating_sub(since) < settle_ms)
                {
                    continue;
                }
                if handed_at.get(&group.id).is_some_and(|at| now.saturating_sub(*at) < pause) {
                    continue;
                }
                let last_log_index = current.last_log_index.unwrap_or(0);
                let matched = |node: NodeId| {
                    current
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&node).cloned().flatten())
                        .map(|id| id.index())
                        == Some(last_log_index)
                };
                let membership = current.membership_config.membership();
                let settled =
                    |node: NodeId| host.detector.up_for(node).is_some_and(|up| up >= Duration::from_millis(settle_ms));
                let candidates = || membership.voter_ids().filter(|id| *id != host.node_id() && !drained.contains(id));
                let in_region = candidates()
                    .filter(|id| membership.get_node(id).is_some_and(|node| node.region == region))
                    .find(|id| settled(*id) && matched(*id));
                let up = |id: NodeId| host.detector.is_up(id);
                if me_drained {
                    in_region
                        .or_else(|| candidates().find(|id| up(*id) && matched(*id)))
                        .or_else(|| candidates().find(|id| up(*id)))
                } else {
                    in_region
                }
            };
            if let Some(target) = target {
                tracing::info!(cluster = group.id, to = target, "moving leadership to the preferred region");
                handed_at.insert(group.id, now);
                group.wake();
                if let Err(error) = group.raft.trigger().transfer_leader(target).await {
                    tracing::warn!(cluster = group.id, %error, "leadership transfer failed");
                }
            }
        }
    }
}
