//! The leader's per-follower progress watchdog. A follower that is up
//! (it answers the failure detector) but whose replication has not
//! advanced for `groups.replication_stall_ms` while the leader has more is
//! stalled: openraft 0.10 can keep waiting for the acknowledgement of a
//! pipelined batch that a broken stream never delivered (seen after a
//! follower restarted while entries were in flight, and in about 2 % of
//! `spaceraft sim` seeds with pipelined replication), and only a new leader
//! starts its streams afresh. So the leader hands leadership to its most
//! caught-up other voter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use openraft::{RaftMetrics, RaftTypeConfig, ServerState};

use crate::config::NodeId;
use crate::node::host::Host;
use crate::raft::group::Group;

/// Where each (group, follower) was last seen to advance.
#[derive(Default)]
pub struct Progress {
    seen: HashMap<(u64, NodeId), (u64, Instant)>,
}

/// What to do about one follower of a group this node leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Caught up, advancing, down, or not stalled for long enough.
    Fine,
    /// Stalled at this matched index.
    Stalled(u64),
}

impl Progress {
    /// Notes a follower's matched index at `now`; stalled when it has stayed
    /// below `leader_last` for `stall_after`.
    pub fn note(
        &mut self,
        (group, node): (u64, NodeId),
        (matched, leader_last, up): (u64, u64, bool),
        now: Instant,
        stall_after: Duration,
    ) -> Verdict {
        if matched >= leader_last || !up {
            self.seen.remove(&(group, node));
            return Verdict::Fine;
        }
        let (at, since) = *self.seen.entry((group, node)).or_insert((matched, now));
        if at != matched {
            self.seen.insert((group, node), (matched, now));
            return Verdict::Fine;
        }
        if now.duration_since(since) >= stall_after {
            Verdict::Stalled(matched)
        } else {
            Verdict::Fine
        }
    }

    fn forget_group(&mut self, group: u64) {
        self.seen.retain(|(g, _), _| *g != group);
    }
}

/// A follower of a group `me` leads that has stalled, and the voter to hand
/// leadership to: the most caught-up other voter that is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    pub stalled: NodeId,
    pub matched: u64,
    pub leader_last: u64,
    pub successor: NodeId,
}

/// Notes the progress of every follower of a group `me` leads (`metrics`);
/// a handover when one has stalled. `up` says which nodes answer.
pub fn check<C: RaftTypeConfig<NodeId = NodeId>>(
    metrics: &RaftMetrics<C>,
    (group, me): (u64, NodeId),
    progress: &mut Progress,
    (now, stall_after): (Instant, Duration),
    up: impl Fn(NodeId) -> bool,
) -> Option<Handover> {
    let (Some(replication), ServerState::Leader) = (metrics.replication.as_ref(), metrics.state) else {
        progress.forget_group(group);
        return None;
    };
    let leader_last = metrics.last_log_index.unwrap_or(0);
    let matched = |node: &NodeId| replication.get(node).cloned().flatten().map(|id| id.index).unwrap_or(0);
    for node in replication.keys().filter(|node| **node != me) {
        let noted = progress.note((group, *node), (matched(node), leader_last, up(*node)), now, stall_after);
        let Verdict::Stalled(at) = noted else { continue };
        let successor = metrics
            .membership_config
            .membership()
            .voter_ids()
            .filter(|voter| *voter != me && voter != node && up(*voter))
            .max_by_key(|voter| matched(voter));
        if let Some(successor) = successor {
            progress.forget_group(group);
            return Some(Handover { stalled: *node, matched: at, leader_last, successor });
        }
    }
    None
}

impl Host {
    /// On a group this node leads: hands leadership over when a follower
    /// has stalled (see the module).
    pub async fn watch_replication(&self, group: &Group, progress: &mut Progress) {
        let metrics = group.raft.metrics().borrow_watched().clone();
        let down = self.detector.down().borrow().clone();
        let stall_after = Duration::from_millis(self.config.groups.replication_stall_ms.max(1));
        let key = (group.id, self.config.node_id);
        let Some(handover) =
            check(&metrics, key, progress, (Instant::now(), stall_after), |node| !down.contains(&node))
        else {
            return;
        };
        let Handover { stalled, matched, leader_last, successor } = handover;
        tracing::warn!(
            cluster = group.id,
            node = stalled,
            matched,
            leader_last,
            successor,
            "replication to a follower has not advanced for {stall_after:?}: handing leadership over, so it \
             starts afresh"
        );
        group.wake();
        let _ = group.raft.trigger().transfer_leader(successor).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_is_stalled_only_when_up_behind_and_unmoved_for_long_enough() {
        let mut progress = Progress::default();
        let start = Instant::now();
        let stall = Duration::from_secs(10);
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(progress.note((1, 2), (5, 9, true), at(0), stall), Verdict::Fine);
        assert_eq!(progress.note((1, 2), (5, 9, true), at(9), stall), Verdict::Fine, "not long enough");
        assert_eq!(progress.note((1, 2), (5, 9, true), at(10), stall), Verdict::Stalled(5));
        assert_eq!(progress.note((1, 2), (6, 9, true), at(11), stall), Verdict::Fine, "it moved: the clock restarts");
        assert_eq!(progress.note((1, 2), (6, 9, true), at(20), stall), Verdict::Fine);
        assert_eq!(progress.note((1, 2), (6, 9, true), at(21), stall), Verdict::Stalled(6));
        assert_eq!(
            progress.note((1, 2), (6, 9, false), at(40), stall),
            Verdict::Fine,
            "a down follower is not stalled"
        );
        assert_eq!(progress.note((1, 2), (6, 9, true), at(41), stall), Verdict::Fine, "back up: the clock restarts");
        assert_eq!(progress.note((1, 2), (9, 9, true), at(60), stall), Verdict::Fine, "caught up");
        assert_eq!(progress.note((1, 3), (0, 9, true), at(60), stall), Verdict::Fine, "each follower on its own");
    }
}
