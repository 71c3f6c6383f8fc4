//! Carries out the router's decisions ([`crate::node::router`]) for every
//! request that must reach a space cluster's leader or one of its replicas:
//! observes this node's role in the cluster, asks the router what to do,
//! serves here or forwards to a peer, waits, and gives up with the last
//! error. The one place a node retries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::node::router::{decide, Next, Peer, RequestKind, Role, Situation, LEADER_POLL_MS};
use crate::raft::Group;
use crate::wire::Hop;

/// Where a request goes: its cluster, what it needs, the hop it arrived on,
/// and how long it may take.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub cluster: u64,
    pub request: RequestKind,
    pub hop: Hop,
    pub wait_ms: u64,
}

impl Host {
    /// A route for `cluster` that may take `raft.leader_wait_ms`.
    pub fn route(&self, cluster: u64, request: RequestKind, hop: Hop) -> Route {
        Route { cluster, request, hop, wait_ms: self.config.raft.leader_wait_ms }
    }

    /// Runs a request: `local` on this node's replica when the router says
    /// serve, `remote` to the peer it names (with the hop to mark the
    /// request with) when it says forward.
    pub async fn run<T, L, LF, R, RF>(&self, route: Route, mut local: L, mut remote: R) -> Result<T, ApiError>
    where
        L: FnMut(Arc<Group>) -> LF,
        LF: Future<Output = Result<T, ApiError>>,
        R: FnMut(Peer, Hop) -> RF,
        RF: Future<Output = Result<T, ApiError>>,
    {
        let deadline = Instant::now() + Duration::from_millis(route.wait_ms);
        let mut last_error: Option<ApiError> = None;
        let mut attempts = 0u32;
        let mut paused = false;
        loop {
            let (role, group) = self.observe(route.cluster).await?;
            let time_left = deadline.saturating_duration_since(Instant::now());
            let next = decide(&Situation {
                request: route.request,
                hop: route.hop,
                role: &role,
                last_error: last_error.as_ref().map(|error| &error.kind),
                attempts,
                paused,
                time_left_ms: time_left.as_millis() as u64,
            });
            let result = match next {
                Next::Serve => {
                    let group = group.expect("the router serves only on a hosted replica");
                    group.wake();
                    local(group).await
                }
                Next::Forward { to, .. } if self.detector.known_down(to.node_id) => {
                    // The leader it names stopped answering: wait for the
                    // election rather than send the request to it.
                    let wait = Duration::from_millis(LEADER_POLL_MS).min(time_left);
                    match &group {
                        Some(group) => {
                            let mut metrics = group.raft.metrics();
                            let _ = tokio::time::timeout(wait, metrics.changed()).await;
                        }
                        None => tokio::time::sleep(wait).await,
                    }
                    paused = true;
                    continue;
                }
                Next::Forward { to, hop } => self.forward_while_up(to, hop, &mut remote).await,
                Next::Wait { after_ms } => {
                    let wait = Duration::from_millis(after_ms).min(time_left);
                    match &group {
                        Some(group) => {
                            let mut metrics = group.raft.metrics();
                            let _ = tokio::time::timeout(wait, metrics.changed()).await;
                        }
                        None => tokio::time::sleep(wait).await,
                    }
                    paused = true;
                    continue;
                }
                Next::GiveUp(kind) => return Err(give_up(route, kind, last_error)),
            };
            attempts += 1;
            paused = false;
            match result {
                Ok(value) => return Ok(value),
                Err(error) => {
                    tracing::debug!(cluster = route.cluster, kind = %error.kind, %error, "attempt failed");
                    last_error = Some(error);
                }
            }
        }
    }

    /// Sends a request on to `to`, and gives up on it as of unknown outcome
    /// once the failure detector takes `to` as down (frozen, cut off):
    /// waiting out the request's whole deadline on it told the client
    /// nothing, and a request safe to resend goes on to the next leader.
    async fn forward_while_up<T, R, RF>(&self, to: Peer, hop: Hop, remote: &mut R) -> Result<T, ApiError>
    where
        R: FnMut(Peer, Hop) -> RF,
        RF: Future<Output = Result<T, ApiError>>,
    {
        let target = to.node_id;
        let forward = remote(to, hop);
        tokio::pin!(forward);
        let mut check = tokio::time::interval(Duration::from_millis(LEADER_POLL_MS));
        loop {
            tokio::select! {
                result = &mut forward => return result,
                _ = check.tick() => {
                    if self.detector.known_down(target) {
                        let why = format!("node {target} stopped answering with the request in flight");
                        return Err(ApiError::new(ErrorKind::OutcomeUnknown, why));
                    }
                }
            }
        }
    }

    /// This node's role in `cluster`, and its replica when hosted here.
    async fn observe(&self, cluster: u64) -> Result<(Role, Option<Arc<Group>>), ApiError> {
        let Some(group) = self.local_cluster(cluster).await? else {
            let voters = match self.cluster_addrs(cluster).await {
                // Made a moment ago: this replica of the directory may not
                // have applied it yet; read the meta leader's commit first.
                Err(error) if error.kind == ErrorKind::NotFound => {
                    // (Boxed: the meta group is hosted on every node, so this
                    // read-index round never comes back here.)
                    let meta = self.meta();
                    Box::pin(self.sync_group(&meta)).await?;
                    if let Some(group) = self.local_cluster(cluster).await? {
                        return Ok((self.role_in(&group), Some(group)));
                    }
                    self.cluster_addrs(cluster).await?
                }
                other => other?,
            };
            return Ok((Role::Absent { voters }, None));
        };
        Ok((self.role_in(&group), Some(group)))
    }

    /// This node's role in `group`, from its Raft metrics and the failure
    /// detector.
    fn role_in(&self, group: &Group) -> Role {
        {
            let metrics = group.raft.metrics();
            let current = metrics.borrow_watched();
            let membership = current.membership_config.membership();
            match current.current_leader {
                Some(leader) if leader == self.config.node_id && current.state == ServerState::Leader => {
                    let voters: Vec<u64> = membership.voter_ids().collect();
                    let up =
                        voters.iter().filter(|id| **id == self.config.node_id || self.detector.is_up(**id)).count();
                    Role::Leader { quorum_up: up > voters.len() / 2 }
                }
                Some(leader) if leader != self.config.node_id => Role::Follower {
                    leader: membership.get_node(&leader).map(|node| Peer { node_id: leader, addr: node.addr.clone() }),
                },
                _ => Role::Follower { leader: None },
            }
        }
    }
}

/// The error a request ends with: the last attempt's when it has the kind
/// the router gave up with, else one of that kind that says what came last.
fn give_up(route: Route, kind: ErrorKind, last_error: Option<ApiError>) -> ApiError {
    match last_error {
        Some(error) if error.kind == kind => error,
        Some(error) => ApiError::new(
            kind.clone(),
            match kind {
                ErrorKind::NoQuorum => format!(
                    "no leader with a quorum for space cluster {} within {} ms (last: {error})",
                    route.cluster, route.wait_ms
                ),
                _ => format!("space cluster {}: {error}", route.cluster),
            },
        ),
        None => match kind {
            ErrorKind::NoQuorum => ApiError::no_quorum(route.cluster, route.wait_ms),
            ErrorKind::NotLeader { leader } => ApiError::not_leader(route.cluster, leader),
            ErrorKind::NotProposed => ApiError::new(
                ErrorKind::NotProposed,
                format!("space cluster {} is not hosted on this node; try another voter", route.cluster),
            ),
            other => ApiError::new(other.clone(), format!("space cluster {}: {other}", route.cluster)),
        },
    }
}
