//! The nodes a gateway talks to: one lazy gRPC channel each, their health
//! as probed at a fixed interval, and the order in which to try them.
//!
//! The order is the gateway's idea of "near": a healthy replica in its own
//! region first, then healthy ones in the other regions nearest first, then
//! the unhealthy ones (a probe can be wrong, and trying costs little).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;

use crate::gateway::config::{GatewayConfig, NodeEndpoint};
use crate::meta::directory::META_GROUP_ID;
use crate::pb;
use crate::wire::{stamped, ClusterId, Stamped};

/// Applied index by space cluster.
pub type Applied = std::collections::HashMap<u64, u64>;

/// What the last probes said about one node.
#[derive(Debug, Clone, Default)]
pub struct NodeHealth {
    pub healthy: bool,
    /// Since when it has been healthy without a break.
    pub healthy_since: Option<Instant>,
    pub applied_index: u64,
    /// The applied index of each space cluster it hosts.
    pub applied_by_cluster: Applied,
    /// When a follow of it last failed; it is avoided for a while.
    pub failed_at: Option<Instant>,
}

pub struct NodeInfo {
    pub endpoint: NodeEndpoint,
    /// Its requests carry the cluster id once known.
    pub channel: Stamped,
    /// 0 for this gateway's region, then by `regions_by_distance`.
    pub distance: usize,
}

/// The nodes and their health. Cheap to clone.
#[derive(Clone)]
pub struct NodePool {
    pub nodes: Arc<Vec<NodeInfo>>,
    health: Arc<Mutex<Vec<NodeHealth>>>,
    /// (when, highest applied index of each cluster any probe saw then),
    /// newest last.
    applied_seen: Arc<Mutex<Vec<(Instant, Applied)>>>,
    failed_cooldown: Duration,
    /// The cluster the nodes belong to: configured, or learned from the
    /// first probe answered; a node of another cluster fails its probes.
    pub cluster: ClusterId,
}

impl NodePool {
    /// The pool of `config`'s nodes, dialed over TLS when `tls` is given.
    pub fn new(config: &GatewayConfig, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<NodePool, String> {
        let mut order: Vec<String> = vec![config.region.clone()];
        for region in config.regions_by_distance.iter().chain(config.nodes.iter().map(|node| &node.region)) {
            if !order.contains(region) {
                order.push(region.clone());
            }
        }
        let cluster = match &config.cluster_id {
            Some(id) if crate::wire::is_cluster_id(id) => ClusterId::known(id),
            Some(id) => return Err(format!("cluster_id {id:?} is not a cluster id (16 hex digits)")),
            None => ClusterId::unknown(),
        };
        let mut nodes = Vec::new();
        for endpoint in &config.nodes {
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut dial = Endpoint::from_shared(format!("{scheme}://{}", endpoint.addr))
                .map_err(|e| format!("bad node address {}: {e}", endpoint.addr))?;
            if let Some(tls) = &tls {
                dial = dial.tls_config(tls.clone()).map_err(|e| format!("TLS to {}: {e}", endpoint.addr))?;
            }
            let channel = dial
                .connect_timeout(Duration::from_millis(config.upstream.connect_timeout_ms))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .initial_stream_window_size(Some(8 * 1024 * 1024))
                .initial_connection_window_size(Some(32 * 1024 * 1024))
                .local_address(config.upstream.source_ip)
                .connect_lazy();
            let channel = stamped(channel, &cluster);
            let distance = order.iter().position(|region| *region == endpoint.region).unwrap_or(order.len());
            nodes.push(NodeInfo { endpoint: endpoint.clone(), channel, distance });
        }
        let health = vec![NodeHealth::default(); nodes.len()];
        Ok(NodePool {
            nodes: Arc::new(nodes),
            health: Arc::new(Mutex::new(health)),
            applied_seen: Arc::new(Mutex::new(Vec::new())),
            failed_cooldown: Duration::from_millis(config.upstream.failed_cooldown_ms),
            cluster,
        })
    }

    pub fn health(&self, index: usize) -> NodeHealth {
        self.health.lock().expect("health lock")[index].clone()
    }

    /// Sets what the probes said, for tests of the choice of replica.
    #[cfg(test)]
    pub fn set_health(&self, index: usize, healthy: bool, healthy_since: Option<Instant>) {
        let mut health = self.health.lock().expect("health lock");
        health[index].healthy = healthy;
        health[index].healthy_since = healthy_since;
    }

    pub fn mark_failed(&self, index: usize) {
        let mut health = self.health.lock().expect("health lock");
        health[index].failed_at = Some(Instant::now());
        health[index].healthy = false;
        health[index].healthy_since = None;
    }

    /// Node indexes, best first, leaving out `exclude`.
    pub fn ranked(&self, exclude: &[usize]) -> Vec<usize> {
        let health = self.health.lock().expect("health lock");
        let now = Instant::now();
        let mut indexes: Vec<usize> = (0..self.nodes.len()).filter(|index| !exclude.contains(index)).collect();
        indexes.sort_by_key(|&index| {
            let one = &health[index];
            let cooling = one.failed_at.is_some_and(|at| now.duration_since(at) < self.failed_cooldown);
            (cooling, !one.healthy, self.nodes[index].distance, index)
        });
        indexes
    }

    /// Whether a node has been healthy for `healthy_for` and is not cooling
    /// down after a failure.
    pub fn healthy_for(&self, index: usize, healthy_for: Duration) -> bool {
        let health = self.health.lock().expect("health lock");
        let now = Instant::now();
        let one = &health[index];
        one.healthy
            && one.healthy_since.is_some_and(|since| now.duration_since(since) >= healthy_for)
            && one.failed_at.is_none_or(|at| now.duration_since(at) >= self.failed_cooldown * 2)
    }

    /// Whether a replica that has applied `applied` (per space cluster it
    /// hosts) is lagging: another replica had applied more of one of those
    /// clusters at least `lag_max` ago. Clusters it does not host do not
    /// count (a node relays them from one that does).
    pub fn is_lagging(&self, applied: &Applied, lag_max: Duration) -> bool {
        let seen = self.applied_seen.lock().expect("applied lock");
        let now = Instant::now();
        seen.iter().any(|(at, highest)| {
            now.duration_since(*at) >= lag_max
                && applied.iter().any(|(cluster, index)| highest.get(cluster).is_some_and(|high| high > index))
        })
    }

    /// Entries a replica that has applied `applied` is behind the most any
    /// replica had applied when last probed, summed over its clusters.
    pub fn lag_entries(&self, applied: &Applied) -> u64 {
        let seen = self.applied_seen.lock().expect("applied lock");
        let Some((_, highest)) = seen.last() else { return 0 };
        applied.iter().map(|(cluster, index)| highest.get(cluster).map_or(0, |high| high.saturating_sub(*index))).sum()
    }

    /// Probes every node forever: health and applied index.
    pub async fn probe_forever(self, interval: Duration, keep_for: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let probes = self.nodes.iter().map(|node| probe(node.channel.clone(), &self.cluster, interval));
            let results = futures::future::join_all(probes).await;
            let now = Instant::now();
            let mut highest = Applied::new();
            {
                let mut health = self.health.lock().expect("health lock");
                for (one, result) in health.iter_mut().zip(results) {
                    match result {
                        Some(applied) => {
                            if !one.healthy {
                                one.healthy_since = Some(now);
                            }
                            one.healthy = true;
                            one.applied_index = applied.values().sum();
                            for (cluster, index) in &applied {
                                let high = highest.entry(*cluster).or_insert(0);
                                *high = (*high).max(*index);
                            }
                            one.applied_by_cluster = applied;
                        }
                        None => {
                            one.healthy = false;
                            one.healthy_since = None;
                        }
                    }
                }
            }
            let mut seen = self.applied_seen.lock().expect("applied lock");
            seen.push((now, highest));
            seen.retain(|(at, _)| now.duration_since(*at) <= keep_for);
        }
    }
}

/// A node's applied index of each space cluster it hosts, when it answers
/// in time, is not drained (a drained node refuses follows: taking it as
/// healthy made a gateway whose home it is switch back to it every few
/// seconds), and every one of those clusters knows a leader.
async fn probe(channel: Stamped, cluster: &ClusterId, timeout: Duration) -> Option<Applied> {
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let mut request = tonic::Request::new(pb::NodeStatusRequest::default());
    request.set_timeout(timeout);
    let status = tokio::time::timeout(timeout, admin.node_status(request)).await.ok()?.ok()?.into_inner();
    if !status.cluster_id.is_empty() && cluster.learn(&status.cluster_id) != status.cluster_id {
        tracing::warn!(node_cluster = %status.cluster_id, cluster = ?cluster.get(), "a configured node belongs to another cluster");
        return None;
    }
    if status.drained {
        return None;
    }
    let mut applied = Applied::new();
    for replica in status.replicas.iter().filter(|replica| replica.cluster_id != META_GROUP_ID) {
        if replica.leader_id == 0 {
            return None;
        }
        applied.insert(replica.cluster_id, replica.applied_index);
    }
    Some(applied)
}

/// Three nodes in us-east (home), eu-west and ap-south, nearest first;
/// for unit tests of the choice of replica (channels connect lazily).
#[cfg(test)]
pub fn test_pool() -> NodePool {
    let config = GatewayConfig {
        region: "us-east".into(),
        http_addr: "127.0.0.1:0".parse().expect("address"),
        grpc_addr: "127.0.0.1:0".parse().expect("address"),
        nodes: ["us-east", "eu-west", "ap-south"]
            .iter()
            .enumerate()
            .map(|(i, region)| NodeEndpoint { region: region.to_string(), addr: format!("127.0.0.1:{}", 7001 + i) })
            .collect(),
        regions_by_distance: vec!["eu-west".into(), "ap-south".into()],
        peer_gateways: Vec::new(),
        cluster_id: None,
        upstream: Default::default(),
        clients: Default::default(),
        security: crate::config::SecurityConfig { insecure: true, ..Default::default() },
        dev_login_signing_key: None,
    };
    NodePool::new(&config, None).expect("test pool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replica_lags_only_behind_what_another_had_long_enough_ago() {
        let pool = test_pool();
        let now = Instant::now();
        let seen = |pairs: &[(u64, u64)]| pairs.iter().copied().collect::<Applied>();
        pool.applied_seen
            .lock()
            .unwrap()
            .extend([(now - Duration::from_secs(5), seen(&[(1, 100), (2, 50)])), (now, seen(&[(1, 200), (2, 80)]))]);
        let lag_max = Duration::from_secs(3);
        assert!(pool.is_lagging(&seen(&[(1, 99)]), lag_max), "100 was applied elsewhere 5 s ago");
        assert!(!pool.is_lagging(&seen(&[(1, 100)]), lag_max));
        assert!(!pool.is_lagging(&seen(&[(1, 150)]), lag_max), "200 was seen only now");
        assert!(pool.is_lagging(&seen(&[(1, 100), (2, 10)]), lag_max), "behind in cluster 2");
        assert!(!pool.is_lagging(&seen(&[(2, 50)]), lag_max), "cluster 1 is not hosted there: it does not count");
    }
}
