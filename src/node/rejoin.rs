//! Incarnations in membership: on every group it leads, a node records the
//! incarnation of each member's data directory, and re-admits a member that
//! came back with another one (it lost its data) once it has caught up.
//!
//! A member's votes count only from the incarnation its group's membership
//! records ([`crate::raft::network::refused_incarnation`]). A member whose
//! directory was wiped or found damaged answers with a new incarnation: it is
//! shown `needs-rejoin`, it is replicated to (a log that went back is caught
//! up from where it now ends, from a snapshot if need be), and the leader
//! records its new incarnation (`SetNodes`) only when the member itself
//! reports, with that incarnation, that it has applied everything the
//! leader had committed before asking. From then on it votes again.
//!
//! A member is recorded with incarnation 0 when its group is made; the
//! leader fills in the incarnation it first hears from it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::sync::watch;

use crate::config::NodeId;
use crate::node::host::Host;
use crate::pb;
use crate::raft::group::Group;
use crate::raft::types::NodeAddr;

/// How often the leaders' memberships are compared with what members answer.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long a renewed member has to answer the catch-up check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

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
        let mut probes = HashMap::new();
        for group in host.groups.all() {
            host.keep_incarnations(&group, &mut probes).await;
            host.watch_replication(&group, &mut progress).await;
        }
    }
}

impl Host {
    /// On a group this node leads: fills in unrecorded incarnations and
    /// re-admits renewed members that have caught up, in one `SetNodes`.
    /// `probes` caches this round's status answers of renewed members.
    async fn keep_incarnations(&self, group: &Group, probes: &mut HashMap<NodeId, Option<pb::NodeStatusResponse>>) {
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
                    if !probes.contains_key(id) {
                        let status = self.probe(&node.addr).await;
                        probes.insert(*id, status);
                    }
                    let caught_up = probes.get(id).and_then(Option::as_ref).is_some_and(|status| {
                        status.incarnation == incarnation
                            && status
                                .replicas
                                .iter()
                                .any(|replica| replica.cluster_id == group.id && replica.applied_index >= committed)
                    });
                    if caught_up {
                        tracing::warn!(
                            cluster = group.id,
                            node = id,
                            incarnation = format_args!("{incarnation:016x}"),
                            "re-admitting a member that lost its data: it has caught up to {committed}"
                        );
                        updates.insert(*id, NodeAddr { incarnation, ..node.clone() });
                    } else {
                        tracing::info!(
                            cluster = group.id,
                            node = id,
                            "a member lost its data (new incarnation {incarnation:016x}): \
                             its votes do not count until it has caught up to {committed}"
                        );
                        // Its log may have gone back: a heartbeat lets
                        // replication find out and send what it misses.
                        group.wake();
                        let _ = group.raft.trigger().heartbeat().await;
                    }
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

    /// A member's own status (its replicas and incarnation), or None.
    async fn probe(&self, addr: &str) -> Option<pb::NodeStatusResponse> {
        let mut admin = self.admin_stub(addr).ok()?;
        let mut request = tonic::Request::new(pb::NodeStatusRequest { summary: false });
        request.set_timeout(PROBE_TIMEOUT);
        tokio::time::timeout(PROBE_TIMEOUT, admin.node_status(request)).await.ok()?.ok().map(|r| r.into_inner())
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
