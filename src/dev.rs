//! `spaceraft dev`: a whole local cluster, one OS process per node, one node
//! per region, each with its own data directory; no setup.
//!
//! The first run writes each node's config (`<data-dir>/node-<id>.toml`) and
//! bootstraps the space cluster; later runs on the same data directory reuse
//! the configs and restart the same cluster with its data.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, PeerConfig};

/// Region names for `--regions N`, in order.
pub const REGION_NAMES: &[&str] =
    &["us-east", "eu-west", "ap-south", "us-west", "eu-north", "ap-east", "sa-east", "af-south", "me-central"];

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of regions (one node each).
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// Where the nodes keep their data, configs and endpoints.json.
    #[arg(long, default_value = "./data/dev")]
    pub data_dir: PathBuf,
    /// First gRPC port; node i listens on base + i - 1 (first run only).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointsFile {
    pub nodes: Vec<NodeEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeEndpoint {
    pub id: u64,
    pub region: String,
    pub grpc: String,
}

fn config_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node-{id}.toml"))
}

/// Writes node configs for a new cluster, or reads those of an existing one.
pub fn prepare(args: &DevArgs) -> anyhow::Result<Vec<(PathBuf, NodeConfig)>> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    if config_path(&data_dir, 1).exists() {
        let mut nodes = Vec::new();
        for id in 1.. {
            let path = config_path(&data_dir, id);
            if !path.exists() {
                break;
            }
            let config = NodeConfig::load(Some(&path), &Default::default())?;
            nodes.push((path, config));
        }
        if nodes.len() != args.regions && args.regions != 3 {
            eprintln!(
                "note: {} already holds a cluster of {} regions; --regions {} is ignored (use another --data-dir)",
                data_dir.display(),
                nodes.len(),
                args.regions
            );
        }
        return Ok(nodes);
    }
    if args.regions == 0 || args.regions > REGION_NAMES.len() {
        anyhow::bail!("--regions must be between 1 and {}", REGION_NAMES.len());
    }
    let peers: Vec<PeerConfig> = (0..args.regions)
        .map(|i| PeerConfig {
            id: i as u64 + 1,
            region: REGION_NAMES[i].to_string(),
            addr: format!("127.0.0.1:{}", args.base_port as usize + i),
        })
        .collect();
    let mut nodes = Vec::new();
    for peer in &peers {
        let config = NodeConfig {
            node_id: peer.id,
            region: peer.region.clone(),
            listen_addr: peer.addr.parse()?,
            advertise_addr: None,
            data_dir: data_dir.join(format!("node-{}", peer.id)),
            bootstrap: peer.id == 1,
            peers: peers.clone(),
            raft: Default::default(),
            limits: Default::default(),
            space: Default::default(),
            storage: Default::default(),
            network: Default::default(),
        };
        let path = config_path(&data_dir, peer.id);
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        nodes.push((path, config));
    }
    Ok(nodes)
}

/// Runs the cluster until Ctrl-C, then stops every node.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let nodes = prepare(&args)?;
    let exe = std::env::current_exe().context("finding the spaceraft executable")?;
    let mut children = Vec::new();
    for (path, config) in &nodes {
        let log_path = config.data_dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let child = tokio::process::Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", config.node_id))?;
        children.push((config.node_id, child));
    }
    let endpoints = EndpointsFile {
        nodes: nodes
            .iter()
            .map(|(_, c)| NodeEndpoint {
                id: c.node_id,
                region: c.region.clone(),
                grpc: c.advertise_addr().to_string(),
            })
            .collect(),
    };
    let data_dir = nodes[0].1.data_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let endpoints_path = data_dir.join("endpoints.json");
    std::fs::write(&endpoints_path, serde_json::to_vec_pretty(&endpoints)?)?;

    let all: Vec<String> = endpoints.nodes.iter().map(|n| n.grpc.clone()).collect();
    let leader = wait_for_leader(&all, Duration::from_secs(30)).await;
    println!("spaceraft dev: {} regions, data in {}", nodes.len(), data_dir.display());
    for node in &endpoints.nodes {
        println!(
            "  node {} {:<10} grpc {}   log {}",
            node.id,
            node.region,
            node.grpc,
            data_dir.join(format!("node-{}.log", node.id)).display()
        );
    }
    match leader {
        Some(leader) => println!("  space cluster 1 leader: node {leader}"),
        None => println!("  space cluster 1 has no leader yet (see the node logs)"),
    }
    println!("  endpoints: {}", endpoints_path.display());
    println!("try:");
    println!("  export SPACERAFT_ENDPOINTS={}", all.join(","));
    println!("  spacectl space create general --members alice,bob");
    println!("  spacectl post general 'hello' --as alice");
    println!("  spacectl tail general --from 1");
    println!("Ctrl-C stops the cluster.");

    // A node that exits (or is killed to try a failover) is reported; the
    // others keep running until Ctrl-C.
    let mut running: Vec<(u64, tokio::process::Child)> = children;
    let mut stopped = Vec::new();
    loop {
        let waits = running.iter_mut().map(|(id, child)| {
            let id = *id;
            Box::pin(async move { (id, child.wait().await) })
        });
        let any_exit = futures::future::select_all(waits);
        tokio::select! {
            _ = shutdown_signal() => {
                eprintln!("stopping...");
                break;
            }
            ((id, status), _, _) = any_exit => {
                eprintln!("node {id} exited ({}); the others keep running", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                stopped.push(id);
            }
        }
        running.retain_mut(|(id, _)| !stopped.contains(id));
        if running.is_empty() {
            eprintln!("every node has exited");
            return Ok(());
        }
    }
    let mut children = running;
    for (id, child) in children.iter_mut() {
        if let Some(pid) = child.id() {
            terminate(pid);
        }
        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("node {id} did not stop in 10s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    eprintln!("stopped");
    Ok(())
}

/// Sends SIGTERM so the node shuts down cleanly.
fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Polls the nodes until one reports a leader.
pub async fn wait_for_leader(endpoints: &[String], timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        for addr in endpoints {
            let Ok(endpoint) = crate::raft::network::endpoint(addr, &Default::default()) else { continue };
            let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_millis(500), endpoint.connect()).await else {
                continue;
            };
            let mut admin = crate::pb::admin_client::AdminClient::new(channel);
            if let Ok(Ok(response)) =
                tokio::time::timeout(Duration::from_secs(1), admin.node_status(crate::pb::NodeStatusRequest {})).await
            {
                if let Some(leader) = response.into_inner().replicas.iter().map(|r| r.leader_id).find(|id| *id != 0) {
                    return Some(leader);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
