//! The cluster a chaos run attacks: `spaceraft node` and `spaceraft
//! gateway` processes, each region on its own loopback network 127.0.R.0/24
//! (R = 1, 2, …), every node reached by the others and by the gateways
//! through the [`FaultProxy`] on a public address of its region.
//!
//! Node k of region R listens on 127.0.R.(10+k) and connects out from it;
//! its public (advertised) address is 127.0.R.(100+k), the proxy's. The
//! gateway of region R listens on and connects from 127.0.R.2. The harness
//! itself reads nodes directly on their listen addresses, from 127.0.0.1.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tonic::transport::Channel;

use crate::chaos::history::FinalMessage;
use crate::chaos::proxy::FaultProxy;
use crate::config::{NodeConfig, PeerConfig};
use crate::gateway::config::{GatewayConfig, NodeEndpoint, UpstreamConfig};
use crate::pb;

/// How long reading a replica's whole history of a space may take.
const FINAL_HISTORY_WAIT: Duration = Duration::from_secs(30);
pub struct ChaosNode {
    pub id: u64,
    pub region: u8,
    /// Where it listens; the harness reads it here.
    pub listen: SocketAddr,
    /// Where peers and gateways reach it, through the proxy.
    pub public: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    data_dir: PathBuf,
    process: Option<Child>,
    pub paused: bool,
}

pub struct ChaosGateway {
    pub region: u8,
    pub http: SocketAddr,
    config_path: PathBuf,
    log_path: PathBuf,
    process: Option<Child>,
}

impl ChaosGateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.http)
    }
}

pub struct ChaosCluster {
    exe: PathBuf,
    pub region_names: Vec<String>,
    pub nodes: Vec<ChaosNode>,
    pub gateways: Vec<ChaosGateway>,
    pub proxy: FaultProxy,
    /// The tmpfs mounted on each node's data directory, when the run fills
    /// disks.
    disks: Vec<PathBuf>,
}

/// The shape of a cluster.
pub struct ClusterSpec {
    pub regions: usize,
    pub nodes_per_region: usize,
    pub base_port: u16,
    /// One-way latency between regions i and j (1-based), milliseconds.
    pub latency_ms: Vec<((u8, u8), u64)>,
    /// The placement's `spaces_max`: how many spaces share a cluster.
    pub spaces_per_cluster: u64,
    /// Put each node's data directory on a tmpfs of its own of this many
    /// MiB, so its disk can fill (mounting needs root).
    pub disk_mib: Option<u64>,
}

/// The file that fills a node's disk, inside its data directory (on its
/// tmpfs).
const FILLER: &str = "chaos-disk-filler";

fn ip(region: u8, host: u8) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, region, host))
}

impl ChaosCluster {
    /// Writes every config under `dir`, starts the proxy, the nodes and the
    /// gateways, and waits for a leader.
    pub async fn start(spec: &ClusterSpec, dir: &Path) -> anyhow::Result<ChaosCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let exe = std::env::current_exe().context("finding the spaceraft executable")?;
        let region_names: Vec<String> = (0..spec.regions)
            .map(|i| crate::dev::REGION_NAMES[i % crate::dev::REGION_NAMES.len()].to_string())
            .collect();
        let proxy = FaultProxy::default();
        for ((a, b), ms) in &spec.latency_ms {
            proxy.set_latency(*a, *b, *ms);
        }
        let mut nodes = Vec::new();
        for region in 1..=spec.regions as u8 {
            for k in 0..spec.nodes_per_region {
                let id = nodes.len() as u64 + 1;
                let port = spec.base_port + id as u16;
                nodes.push(ChaosNode {
                    id,
                    region,
                    listen: SocketAddr::new(ip(region, 10 + k as u8), port),
                    public: SocketAddr::new(ip(region, 100 + k as u8), port),
                    config_path: dir.join(format!("node-{id}.toml")),
                    log_path: dir.join(format!("node-{id}.log")),
                    data_dir: dir.join(format!("node-{id}")),
                    process: None,
                    paused: false,
                });
            }
        }
        let peers: Vec<PeerConfig> = nodes
            .iter()
            .map(|node| PeerConfig {
                id: node.id,
                region: region_names[node.region as usize - 1].clone(),
                addr: node.public.to_string(),
            })
            .collect();
        for node in &nodes {
            let config = NodeConfig {
                node_id: node.id,
                region: region_names[node.region as usize - 1].clone(),
                listen_addr: node.listen,
                advertise_addr: Some(node.public),
                data_dir: node.data_dir.clone(),
                bootstrap: node.id == 1,
                peers: peers.clone(),
                raft: Default::default(),
                limits: Default::default(),
                space: Default::default(),
                storage: Default::default(),
                groups: Default::default(),
                placement: crate::placement::PlacementConfig {
                    spaces_max: spec.spaces_per_cluster,
                    ..Default::default()
                },
                network: crate::config::NetworkConfig { source_ip: Some(node.listen.ip()), ..Default::default() },
                // The chaos run checks ordering and durability on loopback,
                // behind its own fault-injecting proxy: plaintext.
                security: crate::config::SecurityConfig { insecure: true, ..Default::default() },
                join_token: None,
            };
            std::fs::write(&node.config_path, toml::to_string_pretty(&config)?)?;
            proxy
                .listen(node.public, node.listen, node.region)
                .await
                .with_context(|| format!("proxy on {}", node.public))?;
        }
        let gateway_port = spec.base_port + 500;
        let http_of = |region: u8| SocketAddr::new(ip(region, 2), gateway_port);
        let mut gateways = Vec::new();
        for region in 1..=spec.regions as u8 {
            let name = &region_names[region as usize - 1];
            let config = GatewayConfig {
                region: name.clone(),
                http_addr: http_of(region),
                grpc_addr: SocketAddr::new(ip(region, 2), gateway_port + 1),
                nodes: nodes
                    .iter()
                    .map(|node| NodeEndpoint {
                        region: region_names[node.region as usize - 1].clone(),
                        addr: node.public.to_string(),
                    })
                    .collect(),
                regions_by_distance: Vec::new(),
                peer_gateways: (1..=spec.regions as u8)
                    .filter(|other| *other != region)
                    .map(|other| format!("ws://{}/v1/ws", http_of(other)))
                    .collect(),
                cluster_id: None,
                upstream: UpstreamConfig { source_ip: Some(ip(region, 2)), ..Default::default() },
                clients: Default::default(),
                security: crate::config::SecurityConfig { insecure: true, ..Default::default() },
                dev_login_signing_key: None,
            };
            let config_path = dir.join(format!("gateway-{name}.toml"));
            std::fs::write(&config_path, toml::to_string_pretty(&config)?)?;
            gateways.push(ChaosGateway {
                region,
                http: http_of(region),
                config_path,
                log_path: dir.join(format!("gateway-{name}.log")),
                process: None,
            });
        }
        let mut cluster = ChaosCluster { exe, region_names, nodes, gateways, proxy, disks: Vec::new() };
        if let Some(mib) = spec.disk_mib {
            for index in 0..cluster.nodes.len() {
                let data_dir = cluster.nodes[index].data_dir.clone();
                cluster.mount_tmpfs(&data_dir, mib)?;
            }
        }
        for id in 1..=cluster.nodes.len() as u64 {
            cluster.start_node(id)?;
        }
        for region in 1..=spec.regions as u8 {
            cluster.start_gateway(region)?;
        }
        cluster.wait_for_leader(Duration::from_secs(60)).await.context("no leader elected")?;
        Ok(cluster)
    }

    fn spawn(&self, role: &str, config: &Path, log: &Path) -> anyhow::Result<Child> {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(&self.exe)
            .arg(role)
            .arg("--config")
            .arg(config)
            .env("SPACERAFT_LOG", "info,openraft=warn,fjall=warn,lsm_tree=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {role} {}", config.display()))
    }

    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        let index = id as usize - 1;
        if self.nodes[index].process.is_some() {
            return Ok(());
        }
        let child = self.spawn("node", &self.nodes[index].config_path, &self.nodes[index].log_path)?;
        self.nodes[index].process = Some(child);
        self.nodes[index].paused = false;
        Ok(())
    }

    /// SIGKILL.
    pub fn kill_node(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.paused = false;
    }

    /// SIGKILL, then deletes everything in the node's data directory: it
    /// restarts as a node that lost its disk.
    pub fn wipe_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.kill_node(id);
        let data_dir = &self.nodes[id as usize - 1].data_dir;
        let Ok(entries) = std::fs::read_dir(data_dir) else { return Ok(()) };
        for entry in entries {
            let path = entry?.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("wiping {}", path.display()))?;
        }
        Ok(())
    }

    /// Fills the node's disk to the last byte.
    pub fn fill_disk(&self, id: u64) -> anyhow::Result<()> {
        use std::io::Write;
        let data_dir = &self.nodes[id as usize - 1].data_dir;
        anyhow::ensure!(self.disks.contains(data_dir), "node {id}'s data directory is not on a disk of its own");
        let mut file = std::fs::File::create(data_dir.join(FILLER)).context("creating the disk filler")?;
        let chunk = vec![0x5a_u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        while file.write_all(&chunk[..512]).is_ok() {}
        let _ = file.sync_all();
        Ok(())
    }

    /// Frees what [`ChaosCluster::fill_disk`] took.
    pub fn free_disk(&self, id: u64) {
        let _ = std::fs::remove_file(self.nodes[id as usize - 1].data_dir.join(FILLER));
    }

    fn mount_tmpfs(&mut self, at: &Path, mib: u64) -> anyhow::Result<()> {
        std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .stderr(Stdio::null())
            .status()
            .context("running mount")?;
        anyhow::ensure!(
            status.success(),
            "could not mount a tmpfs on {} (the disk-full nemesis gives each node a disk of its own, which needs root)",
            at.display()
        );
        self.disks.push(at.to_path_buf());
        Ok(())
    }

    /// SIGSTOP (`pause`) or SIGCONT.
    pub fn pause_node(&mut self, id: u64, pause: bool) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(child) = &node.process {
            let signal = if pause { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill").arg(signal).arg(child.id().to_string()).status();
            node.paused = pause;
        }
    }

    pub fn start_gateway(&mut self, region: u8) -> anyhow::Result<()> {
        let index = region as usize - 1;
        if self.gateways[index].process.is_some() {
            return Ok(());
        }
        let child = self.spawn("gateway", &self.gateways[index].config_path, &self.gateways[index].log_path)?;
        self.gateways[index].process = Some(child);
        Ok(())
    }

    pub fn kill_gateway(&mut self, region: u8) {
        if let Some(mut child) = self.gateways[region as usize - 1].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The nodes and gateways whose process exited though nobody killed
    /// it, with how it ended; they count as down from now on.
    pub fn exited_by_themselves(&mut self) -> Vec<(String, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(status) = node.process.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                node.process = None;
                exited.push((format!("node-{}", node.id), status.to_string()));
            }
        }
        for gateway in &mut self.gateways {
            if let Some(status) = gateway.process.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                gateway.process = None;
                exited
                    .push((format!("gateway-{}", self.region_names[gateway.region as usize - 1]), status.to_string()));
            }
        }
        exited
    }

    pub fn nodes_of(&self, region: u8) -> Vec<u64> {
        self.nodes.iter().filter(|node| node.region == region).map(|node| node.id).collect()
    }

    /// Kills every process (continuing paused ones first).
    pub fn stop_all(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if self.nodes[id as usize - 1].paused {
                self.pause_node(id, false);
            }
            self.kill_node(id);
        }
        for region in 1..=self.gateways.len() as u8 {
            self.kill_gateway(region);
        }
    }

    async fn admin(&self, id: u64) -> Option<pb::admin_client::AdminClient<Channel>> {
        let node = &self.nodes[id as usize - 1];
        if node.process.is_none() || node.paused {
            return None;
        }
        let endpoint = crate::raft::network::endpoint(&node.listen.to_string(), &Default::default(), None).ok()?;
        let channel = tokio::time::timeout(Duration::from_millis(500), endpoint.connect()).await.ok()?.ok()?;
        Some(pb::admin_client::AdminClient::new(channel))
    }

    /// The current leader as a running node reports it.
    pub async fn leader(&self) -> Option<u64> {
        for node in &self.nodes {
            let Some(mut admin) = self.admin(node.id).await else { continue };
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), admin.node_status(pb::NodeStatusRequest::default())).await
            else {
                continue;
            };
            if let Some(replica) = first_cluster(&status.into_inner()) {
                if replica.role == "leader" {
                    return Some(replica.node_id);
                }
            }
        }
        None
    }

    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(leader) = self.leader().await {
                return Some(leader);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// A node's applied index of each space cluster it hosts (None when it
    /// does not answer).
    pub async fn applied_indexes(&self, id: u64) -> Option<std::collections::BTreeMap<u64, u64>> {
        let mut admin = self.admin(id).await?;
        let status = tokio::time::timeout(Duration::from_secs(1), admin.node_status(pb::NodeStatusRequest::default()))
            .await
            .ok()?
            .ok()?;
        let status = status.into_inner();
        Some(
            status
                .replicas
                .iter()
                .filter(|replica| replica.cluster_id != crate::meta::directory::META_GROUP_ID)
                .map(|replica| (replica.cluster_id, replica.applied_index))
                .collect(),
        )
    }

    /// A replica's whole history of a space (operator read on the node),
    /// within [`FINAL_HISTORY_WAIT`]: a node that does not answer is a
    /// finding, not a hang.
    pub async fn final_history(&self, id: u64, space: &str) -> anyhow::Result<Vec<FinalMessage>> {
        tokio::time::timeout(FINAL_HISTORY_WAIT, self.read_history(id, space)).await.map_err(|_| {
            anyhow::anyhow!("node-{id} did not answer its history of {space} within {FINAL_HISTORY_WAIT:?}")
        })?
    }

    async fn read_history(&self, id: u64, space: &str) -> anyhow::Result<Vec<FinalMessage>> {
        let node = &self.nodes[id as usize - 1];
        let channel =
            crate::raft::network::endpoint(&node.listen.to_string(), &Default::default(), None)?.connect().await?;
        let mut client = pb::client_client::ClientClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
        let mut messages = Vec::new();
        let mut from_seq = 0;
        loop {
            let request = pb::HistoryRequest {
                space: space.into(),
                user: String::new(),
                from_seq,
                limit: 500,
                linearizable: false,
            };
            let page = client.history(request).await?.into_inner();
            let Some(last) = page.messages.last() else { return Ok(messages) };
            from_seq = last.seq + 1;
            messages.extend(page.messages.into_iter().map(|m| FinalMessage {
                seq: m.seq,
                key: m.idempotency_key,
                body: m.body,
            }));
        }
    }

    /// A client to any running node (for setup: creating spaces).
    pub async fn any_client(&self) -> Option<pb::client_client::ClientClient<Channel>> {
        for node in &self.nodes {
            if node.process.is_none() || node.paused {
                continue;
            }
            let Ok(endpoint) = crate::raft::network::endpoint(&node.listen.to_string(), &Default::default(), None)
            else {
                continue;
            };
            if let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await {
                return Some(pb::client_client::ClientClient::new(channel));
            }
        }
        None
    }
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        self.stop_all();
        for disk in &self.disks {
            let _ = Command::new("umount").arg("-l").arg(disk).status();
        }
    }
}

/// A node's replica of the first space cluster, where the chaos workload's
/// spaces live.
fn first_cluster(status: &pb::NodeStatusResponse) -> Option<pb::ReplicaStatus> {
    status.replicas.iter().find(|replica| replica.cluster_id == crate::config::DEFAULT_CLUSTER_ID).cloned()
}
