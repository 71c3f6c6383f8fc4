//! Incarnations in membership: on every group it leads, a node records the
//! incarnation of each member's data directory, and re-admits a member that
//! came back with another one (it lost its data).
//!
//! A member's replies (votes, and acknowledgements of appends, heartbeats
//! and snapshots) count only from the incarnation its group's *committed*
//! membership records ([`crate::raft::network::Admitted`]). A member whose
//! directory was wiped or found damaged answers with a new incarnation: it is
//! shown `needs-rejoin` and the leader records its new incarnation
//! (`SetNodes`) at once. Until that change is committed nothing the member
//! answers counts, so a leader cut off from the others (whose committed
//! membership still records the old incarnation) can never commit with it;
//! from then on it is caught up like any follower (a log that went back is
//! caught up from where it now ends, from a snapshot if need be), and its
//! vote counts only for candidates that have applied the change, whose logs
//! hold everything committed before it.
//!
//! A member is recorded with incarnation 0 when its group is made; the
//! leader fills in the incarnation it first hears from it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;

use crate::config::NodeId;
use crate::node::host::Host;
use crate::raft::group::Group;
use crate::raft::types::NodeAddr;

/// How often the leaders' memberships are compared with what members answer.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// What the leader knows of one member's incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incarnation {
    /// The membership records what the member answers with (or nothing
    /// was heard from it yet).
    Current,
    /// Recorded as 0: to be filled in with what it answers.
    Unrecorded(u64),
    /// It answers with another incarnation than the one recorded: it lost
    /// its data and must catch up before it is re-admitted.
    Renewed(u64),
}

/// Compares the recorded incarnation with the one a member answered with.
pub fn classify(recorded: u64, answered: Option<u64>) -> Incarnation {
    match answered {
        Some(answered) if answered != recorded && recorded == 0 => Incarnation::Unrecorded(answered),
        Some(answered) if answered != recorded => Incarnation::Renewed(answered),
        _ => Incarnation::Current,
    }
}

/// Keeps the memberships of the groups this node leads up to date, and
/// watches their followers' progress ([`crate::node::watchdog`]), until
/// shutdown.
pub async fn run(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let mut progress = crate::node::watchdog::Progress::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        for group in host.groups.all() {
            host.keep_incarnations(&group).await;
            host.watch_replication(&group, &mut progress).await;
        }
    }
}

impl Host {
    /// On a group this node leads: fills in unrecorded incarnations and
    /// re-admits renewed members, in one `SetNodes`.
    async fn keep_incarnations(&self, group: &Group) {
        let metrics = group.raft.metrics().borrow_watched().clone();
        if metrics.state != ServerState::Leader {
            return;
        }
        let committed = metrics.local_committed.map(|id| id.index).unwrap_or(0);
        let me = self.config.node_id;
        let mut updates: BTreeMap<NodeId, NodeAddr> = BTreeMap::new();
        for (id, node) in metrics.membership_config.membership().nodes() {
            // Members answer every Raft reply and failure detector ping
            // with their incarnation, so an idle group learns it too.
            let answered = if *id == me { Some(self.peers.incarnation()) } else { self.peers.seen_incarnation(*id) };
            match classify(node.incarnation, answered) {
                Incarnation::Current => {}
                Incarnation::Unrecorded(incarnation) => {
                    updates.insert(*id, NodeAddr { incarnation, ..node.clone() });
                }
                Incarnation::Renewed(incarnation) => {
                    // Recorded at once: its replies count from the moment
                    // this change is committed (never before, and never by
                    // a stale leader, whose committed membership still
                    // records the old incarnation), so it is caught up from
                    // here; entries committed before the change are in the
                    // log of every candidate that counts its vote.
                    tracing::warn!(
                        cluster = group.id,
                        node = id,
                        incarnation = format_args!("{incarnation:016x}"),
                        "re-admitting a member that lost its data: its replies count once this is committed at \
                         {committed} or later"
                    );
                    updates.insert(*id, NodeAddr { incarnation, ..node.clone() });
                }
            }
        }
        if updates.is_empty() {
            return;
        }
        // A quiescent group does not tick: wake it, or the change waits.
        group.wake();
        let change = openraft::ChangeMembers::SetNodes(updates.clone());
        match group.raft.change_membership(change, false).await {
            Ok(_) => {
                tracing::info!(cluster = group.id, nodes = ?updates.keys().collect::<Vec<_>>(), "incarnations recorded")
            }
            Err(error) => tracing::info!(cluster = group.id, %error, "cannot record incarnations yet"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_renewed_only_when_it_answers_with_another_recorded_incarnation() {
        assert_eq!(classify(7, None), Incarnation::Current, "nothing heard yet");
        assert_eq!(classify(7, Some(7)), Incarnation::Current);
        assert_eq!(classify(0, None), Incarnation::Current);
        assert_eq!(classify(0, Some(9)), Incarnation::Unrecorded(9));
        assert_eq!(classify(7, Some(9)), Incarnation::Renewed(9));
    }
}
