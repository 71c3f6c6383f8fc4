//! A fresh local cluster for a benchmark run: three node processes in three
//! regions (release binary, fsync on) in a temporary directory, and the
//! gateway configuration that points at them.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;

use crate::config::NodeConfig;
use crate::dev::{self, DevArgs};
use crate::gateway::config::{GatewayConfig, NodeEndpoint, UpstreamConfig};
use crate::pb;

pub struct BenchCluster {
    /// Removed when the run ends.
    _dir: tempfile::TempDir,
    pub nodes: Vec<NodeConfig>,
    processes: Vec<(u64, tokio::process::Child)>,
    pub leader: u64,
    /// A client connected to the leader.
    pub client: pb::client_client::ClientClient<Channel>,
}

impl BenchCluster {
    pub async fn start(base_port: u16) -> anyhow::Result<BenchCluster> {
        Self::start_with(base_port, |_| {}).await
    }

    /// Starts with each node's configuration changed by `tweak` first.
    pub async fn start_with(base_port: u16, tweak: impl Fn(&mut NodeConfig)) -> anyhow::Result<BenchCluster> {
        let dir = tempfile::tempdir().context("temp dir")?;
        // Plaintext: these benchmarks measure the core, not TLS.
        let dev_args = DevArgs {
            regions: 3,
            data_dir: dir.path().to_path_buf(),
            base_port,
            redundant_upstream: false,
            insecure: true,
        };
        let mut prepared = dev::prepare(&dev_args)?;
        for (path, config) in prepared.iter_mut() {
            tweak(config);
            std::fs::write(path, toml::to_string_pretty(config)?)?;
        }
        let exe = std::env::current_exe()?;
        let mut processes = Vec::new();
        for (path, config) in &prepared {
            let child = dev::spawn_process(&exe, "node", path, &config.data_dir.with_extension("log"))?;
            processes.push((config.node_id, child));
        }
        let nodes: Vec<NodeConfig> = prepared.into_iter().map(|(_, config)| config).collect();
        let addrs: Vec<String> = nodes.iter().map(|c| c.advertise_addr().to_string()).collect();
        let leader = dev::wait_for_leader(&addrs, &crate::wire::ClusterId::unknown(), None, Duration::from_secs(30))
            .await?
            .context("no leader")?;
        let leader_addr = nodes.iter().find(|c| c.node_id == leader).context("leader address")?.advertise_addr();
        let channel =
            crate::raft::network::endpoint(&leader_addr.to_string(), &Default::default(), None)?.connect().await?;
        let client = pb::client_client::ClientClient::new(channel);
        Ok(BenchCluster { _dir: dir, nodes, processes, leader, client })
    }

    /// The run's directory (removed when the run ends).
    pub fn dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn node(&self, id: u64) -> &NodeConfig {
        self.nodes.iter().find(|c| c.node_id == id).expect("node of the cluster")
    }

    /// A node that does not lead.
    pub fn follower(&self) -> &NodeConfig {
        self.nodes.iter().find(|c| c.node_id != self.leader).expect("a follower")
    }

    pub async fn create_space(&mut self, name: &str, members: &[String]) -> anyhow::Result<()> {
        let request =
            pb::CreateSpaceRequest { name: name.into(), members: members.to_vec(), attrs: Default::default() };
        self.client.create_space(request).await.with_context(|| format!("creating space {name}"))?;
        Ok(())
    }

    /// Posts to `space` as `author` at `rate` posts a second for `secs`,
    /// each post its own task so a slow commit never slows the rate.
    /// `before_each` runs before each post (to inject a fault on time) and
    /// `body` makes each post's body. Returns the posts acknowledged.
    pub async fn publish_at_rate(
        &self,
        space: &str,
        author: &str,
        rate: u64,
        secs: u64,
        mut before_each: impl FnMut() -> anyhow::Result<()>,
        mut body: impl FnMut() -> String,
    ) -> anyhow::Result<u64> {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = std::time::Instant::now();
        let mut in_flight = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            ticker.tick().await;
            before_each()?;
            let (mut client, acked) = (self.client.clone(), acked.clone());
            let request = pb::PostRequest {
                space: space.into(),
                author: author.into(),
                body: body(),
                idempotency_key: String::new(),
            };
            in_flight.push(tokio::spawn(async move {
                if client.post(request).await.is_ok() {
                    acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for task in in_flight {
            let _ = task.await;
        }
        Ok(acked.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// A gateway in `region` knowing every node, listening on free ports.
    pub fn gateway_config(&self, region: &str, upstream: UpstreamConfig) -> GatewayConfig {
        GatewayConfig {
            region: region.to_string(),
            http_addr: "127.0.0.1:0".parse().expect("address"),
            grpc_addr: "127.0.0.1:0".parse().expect("address"),
            nodes: self
                .nodes
                .iter()
                .map(|c| NodeEndpoint { region: c.region.clone(), addr: c.advertise_addr().to_string() })
                .collect(),
            regions_by_distance: Vec::new(),
            peer_gateways: Vec::new(),
            cluster_id: None,
            upstream,
            clients: Default::default(),
            security: crate::config::SecurityConfig { insecure: true, ..Default::default() },
            dev_login_signing_key: None,
        }
    }

    /// The process id of a node.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.processes.iter().find(|(node, _)| *node == id).and_then(|(_, p)| p.id())
    }

    /// Sends a signal (`-STOP`, `-KILL`, …) to a node's process.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let pid = self.processes.iter().find(|(node, _)| *node == id).and_then(|(_, p)| p.id());
        if let Some(pid) = pid {
            std::process::Command::new("kill").arg(signal).arg(pid.to_string()).status()?;
        }
        Ok(())
    }

    /// Kills every node (a stopped one is continued first so it can die).
    pub async fn stop(mut self) {
        for (_, process) in self.processes.iter_mut() {
            if let Some(pid) = process.id() {
                let _ = std::process::Command::new("kill").arg("-CONT").arg(pid.to_string()).status();
            }
            let _ = process.kill().await;
        }
    }
}
