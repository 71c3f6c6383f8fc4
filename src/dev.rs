//! `spaceraft dev`: a whole local cluster, one OS process per node and one
//! per gateway, one node and one gateway per region, each node with its own
//! data directory; no setup.
//!
//! The first run writes each node's config (`<data-dir>/node-<id>.toml`) and
//! each gateway's (`<data-dir>/gateway-<region>.toml`), bootstraps the space
//! cluster and creates a demo space `general` (members alice, bob, carol);
//! later runs on the same data directory reuse the configs and restart the
//! same cluster with its data. Placement is sized for a laptop: a space of
//! another org gets its own cluster ([`dev_placement`]).
//!
//! It runs secured like a real deployment: the first run makes a CA and the
//! certificates of every node and gateway and of an operator
//! (`<data-dir>/tls`, [`crate::security::certs`]), serves TLS on every port,
//! and writes `<data-dir>/spacectl.env` for spacectl. `--insecure` runs it
//! plaintext and without authentication instead.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{NodeConfig, PeerConfig};
use crate::error::{ApiError, ErrorKind};
use crate::gateway::config::GatewayConfig;
use crate::placement::PlacementConfig;
use crate::wire::{stamped, ClusterId};

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
    /// First gRPC port; node i listens on base + i - 1, gateway i's page and
    /// WebSocket on base + 1000 + i - 1 and its gRPC on base + 1100 + i - 1
    /// (first run only).
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Gateways follow two replicas in different regions at once.
    #[arg(long)]
    pub redundant_upstream: bool,
    /// No TLS and no authentication (first run only): every caller may do
    /// anything. The default makes certificates and serves TLS.
    #[arg(long)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointsFile {
    /// The id of the cluster (`--cluster-id` / `SPACERAFT_CLUSTER_ID` for spacectl).
    #[serde(default)]
    pub cluster_id: String,
    /// The CA certificate every port's certificate is signed by (absent
    /// when the cluster runs with `--insecure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    pub nodes: Vec<NodeEndpoint>,
    #[serde(default)]
    pub gateways: Vec<GatewayEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GatewayEndpoint {
    pub region: String,
    /// The WebSocket endpoint.
    pub ws: String,
    /// The web page (and `/v1/status`).
    pub http: String,
    pub grpc: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeEndpoint {
    pub id: u64,
    pub region: String,
    pub grpc: String,
}

/// Placement sized for a laptop: a space cluster takes up to 100 spaces,
/// and a space with no affinity to any cluster (another org, no shared
/// members) starts a new cluster unless one is still empty. A few `spacectl
/// space create`s then show placement at work (`spacectl cluster list`),
/// and there is a second cluster to move a space to.
pub fn dev_placement() -> PlacementConfig {
    PlacementConfig { spaces_max: 100, new_affinity_fill: 1, ..PlacementConfig::default() }
}

fn config_path(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node-{id}.toml"))
}

/// Where a secured dev cluster keeps its CA, certificates and token keys.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// The operator identity `spaceraft dev` and its spacectl use.
pub const DEV_OPERATOR: &str = "admin";

/// Makes the certificates of `regions` nodes and gateways and of the
/// operator, unless they exist; answers the cluster's id.
fn make_certs(data_dir: &Path, regions: usize) -> anyhow::Result<String> {
    let plan = crate::security::certs::CertsPlan {
        dir: tls_dir(data_dir),
        cluster: None,
        nodes: (1..=regions as u64).collect(),
        gateways: REGION_NAMES[..regions].iter().map(|name| name.to_string()).collect(),
        operators: vec![DEV_OPERATOR.to_string()],
        hosts: vec!["127.0.0.1".into(), "localhost".into(), "::1".into()],
        days: 365,
    };
    Ok(crate::security::certs::make(&plan)?.cluster)
}

/// The security section of a process of a secured dev cluster.
fn secured(data_dir: &Path, stem: &str) -> crate::config::SecurityConfig {
    let tls = tls_dir(data_dir);
    let (cert, key) = crate::security::certs::pair(&tls, stem);
    crate::config::SecurityConfig {
        insecure: false,
        ca_file: Some(crate::security::certs::ca_pem(&tls)),
        cert_file: Some(cert),
        key_file: Some(key),
        token_keys_dir: Some(crate::security::token::keys_dir(&tls)),
        ..Default::default()
    }
}

/// TLS for this command's own calls (as the dev operator); None when the
/// cluster runs insecure.
pub fn operator_tls(data_dir: &Path) -> anyhow::Result<Option<crate::security::tls::ClientTls>> {
    let tls = tls_dir(data_dir);
    if !tls.join("ca.pem").exists() {
        return Ok(None);
    }
    let (cert, key) = crate::security::certs::pair(&tls, &crate::security::certs::operator_stem(DEV_OPERATOR));
    Ok(Some(crate::security::tls::ClientTls::load(&crate::security::certs::ca_pem(&tls), Some((&cert, &key)))?))
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
    if !args.insecure {
        make_certs(&data_dir, args.regions)?;
    }
    let mut nodes = Vec::new();
    for peer in &peers {
        let security = if args.insecure {
            crate::config::SecurityConfig { insecure: true, ..Default::default() }
        } else {
            secured(&data_dir, &crate::security::certs::node_stem(peer.id))
        };
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
            groups: Default::default(),
            placement: dev_placement(),
            network: Default::default(),
            security,
            join_token: None,
        };
        let path = config_path(&data_dir, peer.id);
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        nodes.push((path, config));
    }
    Ok(nodes)
}

/// Writes (first run) or reads the gateways' configs: one per region, each
/// knowing every node.
pub fn prepare_gateways(
    args: &DevArgs,
    nodes: &[(PathBuf, NodeConfig)],
    cluster_id: &str,
) -> anyhow::Result<Vec<(PathBuf, GatewayConfig)>> {
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let endpoints: Vec<crate::gateway::config::NodeEndpoint> = nodes
        .iter()
        .map(|(_, node)| crate::gateway::config::NodeEndpoint {
            region: node.region.clone(),
            addr: node.advertise_addr().to_string(),
        })
        .collect();
    let secure = !nodes.first().is_some_and(|(_, node)| node.security.insecure);
    let ws_scheme = if secure { "wss" } else { "ws" };
    let ws_url = |index: usize| format!("{ws_scheme}://127.0.0.1:{}/v1/ws", args.base_port as usize + 1000 + index);
    let mut gateways = Vec::new();
    for (index, (_, node)) in nodes.iter().enumerate() {
        let path = data_dir.join(format!("gateway-{}.toml", node.region));
        if path.exists() {
            let mut config = GatewayConfig::load(Some(&path), &Default::default())?;
            if config.cluster_id.as_deref() != Some(cluster_id) {
                config.cluster_id = Some(cluster_id.to_string());
                std::fs::write(&path, toml::to_string_pretty(&config)?)?;
            }
            gateways.push((path.clone(), config));
            continue;
        }
        let port = |offset: usize| -> anyhow::Result<std::net::SocketAddr> {
            Ok(format!("127.0.0.1:{}", args.base_port as usize + offset + index).parse()?)
        };
        let config = GatewayConfig {
            region: node.region.clone(),
            http_addr: port(1000)?,
            grpc_addr: port(1100)?,
            nodes: endpoints.clone(),
            regions_by_distance: Vec::new(),
            peer_gateways: (1..nodes.len()).map(|step| ws_url((index + step) % nodes.len())).collect(),
            cluster_id: Some(cluster_id.to_string()),
            upstream: crate::gateway::config::UpstreamConfig {
                redundant: args.redundant_upstream,
                ..Default::default()
            },
            // The page fails over to the other gateways: their pages' origins.
            clients: crate::gateway::config::ClientsConfig {
                allowed_origins: (0..nodes.len())
                    .filter(|other| *other != index)
                    .map(|other| format!("https://127.0.0.1:{}", args.base_port as usize + 1000 + other))
                    .collect(),
                ..Default::default()
            },
            security: if secure {
                secured(&data_dir, &crate::security::certs::gateway_stem(&node.region))
            } else {
                crate::config::SecurityConfig { insecure: true, ..Default::default() }
            },
            // The page logs in by name: this is a laptop's cluster.
            dev_login_signing_key: secure.then(|| crate::security::certs::signing_key(&tls_dir(&data_dir))),
        };
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        gateways.push((path, config));
    }
    Ok(gateways)
}

pub fn spawn_process(exe: &Path, role: &str, config: &Path, log_path: &Path) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
    tokio::process::Command::new(exe)
        .arg(role)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {role} with {}", config.display()))
}

/// Runs the cluster until Ctrl-C, then stops every process.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let nodes = prepare(&args)?;
    let exe = std::env::current_exe().context("finding the spaceraft executable")?;
    let mut children = Vec::new();
    for (path, config) in &nodes {
        let child = spawn_process(&exe, "node", path, &config.data_dir.with_extension("log"))?;
        children.push((format!("node {}", config.node_id), child));
    }
    // The bootstrap node keeps the cluster's id in its data directory; every
    // request this command makes names it, so nodes of another cluster that
    // answer these ports are refused, never used.
    let (first_node, first_child) = (&nodes[0].1, &mut children[0].1);
    let cluster_id = wait_for_cluster_id(first_node, first_child, Duration::from_secs(30)).await?;
    let gateways = prepare_gateways(&args, &nodes, &cluster_id)?;
    let data_dir = nodes[0].1.data_dir.parent().map(Path::to_path_buf).unwrap_or_default();
    let tls = operator_tls(&data_dir)?;
    let (http, ws) = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    let endpoints = EndpointsFile {
        cluster_id: cluster_id.clone(),
        ca: tls.is_some().then(|| crate::security::certs::ca_pem(&tls_dir(&data_dir))),
        nodes: nodes
            .iter()
            .map(|(_, c)| NodeEndpoint {
                id: c.node_id,
                region: c.region.clone(),
                grpc: c.advertise_addr().to_string(),
            })
            .collect(),
        gateways: gateways
            .iter()
            .map(|(_, gateway)| GatewayEndpoint {
                region: gateway.region.clone(),
                ws: format!("{ws}://{}/v1/ws", gateway.http_addr),
                http: format!("{http}://{}", gateway.http_addr),
                grpc: gateway.grpc_addr.to_string(),
            })
            .collect(),
    };
    for (path, gateway) in &gateways {
        let log_path = data_dir.join(format!("gateway-{}.log", gateway.region));
        children.push((format!("gateway {}", gateway.region), spawn_process(&exe, "gateway", path, &log_path)?));
    }
    let endpoints_path = data_dir.join("endpoints.json");
    std::fs::write(&endpoints_path, serde_json::to_vec_pretty(&endpoints)?)?;
    let all: Vec<String> = endpoints.nodes.iter().map(|n| n.grpc.clone()).collect();
    let env_path = data_dir.join("spacectl.env");
    std::fs::write(&env_path, spacectl_env(&all, &cluster_id, tls.is_some().then_some(data_dir.as_path())))?;

    let cluster = ClusterId::known(&cluster_id);
    let dial = tls.as_ref().map(crate::security::tls::ClientTls::config);
    let leader = wait_for_leader(&all, &cluster, dial.as_ref(), Duration::from_secs(30)).await?;
    let demo = match leader {
        Some(_) => create_demo_space(&all, &cluster, dial.as_ref()).await,
        None => None,
    };
    println!("spaceraft dev: {} regions, cluster {cluster_id}, data in {}", nodes.len(), data_dir.display());
    for node in &endpoints.nodes {
        println!(
            "  node {} {:<10} grpc {}   log {}",
            node.id,
            node.region,
            node.grpc,
            data_dir.join(format!("node-{}.log", node.id)).display()
        );
    }
    for gateway in &endpoints.gateways {
        println!(
            "  gateway {:<10} page {}   ws {}   grpc {}   log {}",
            gateway.region,
            gateway.http,
            gateway.ws,
            gateway.grpc,
            data_dir.join(format!("gateway-{}.log", gateway.region)).display()
        );
    }
    match leader {
        Some(leader) => println!("  space cluster 1 leader: node {leader}"),
        None => println!("  space cluster 1 has no leader yet (see the node logs)"),
    }
    if let Some(demo) = demo {
        println!("  {demo}");
    }
    println!("  endpoints: {}", endpoints_path.display());
    match &endpoints.ca {
        Some(ca) => println!(
            "  TLS on every port; CA certificate {} (operator certificate and token keys beside it)",
            ca.display()
        ),
        None => println!("  SECURITY IS OFF (--insecure): plaintext, no authentication"),
    }
    println!("try:");
    if let (Some(first), Some(second)) = (endpoints.gateways.first(), endpoints.gateways.get(1)) {
        println!("  open {}/?user=alice and {}/?user=bob in two browser windows", first.http, second.http);
        if endpoints.ca.is_some() {
            println!("    (the browser does not know the dev CA: accept the warning, or import the CA certificate)");
        }
    }
    println!("  . {}    # spacectl's endpoints, cluster id, CA and operator certificate", env_path.display());
    println!("  spacectl space create random --members alice,bob");
    println!("  spacectl post general 'hello' --as alice");
    println!("  spacectl tail general --from 1");
    println!("Ctrl-C stops the cluster.");

    // A process that exits (or is killed to try a failover) is reported;
    // the others keep running until Ctrl-C.
    let mut running: Vec<(String, tokio::process::Child)> = children;
    let mut stopped = Vec::new();
    loop {
        let waits = running.iter_mut().map(|(name, child)| {
            let name = name.clone();
            Box::pin(async move { (name, child.wait().await) })
        });
        let any_exit = futures::future::select_all(waits);
        tokio::select! {
            _ = shutdown_signal() => {
                eprintln!("stopping...");
                break;
            }
            ((id, status), _, _) = any_exit => {
                eprintln!("{id} exited ({}); the others keep running", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                stopped.push(id);
            }
        }
        running.retain_mut(|(id, _)| !stopped.contains(id));
        if running.is_empty() {
            eprintln!("every process has exited");
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
                eprintln!("{id} did not stop in 10s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    eprintln!("stopped");
    Ok(())
}

/// What `. spacectl.env` sets: where the nodes are, which cluster, and (when
/// secured) the CA, the operator's certificate and the token signing key.
fn spacectl_env(endpoints: &[String], cluster_id: &str, secured: Option<&Path>) -> String {
    let mut lines = vec![
        format!("export SPACERAFT_ENDPOINTS={}", endpoints.join(",")),
        format!("export SPACERAFT_CLUSTER_ID={cluster_id}"),
    ];
    if let Some(data_dir) = secured {
        let tls = tls_dir(data_dir);
        let (cert, key) = crate::security::certs::pair(&tls, &crate::security::certs::operator_stem(DEV_OPERATOR));
        lines.push(format!("export SPACERAFT_CACERT={}", crate::security::certs::ca_pem(&tls).display()));
        lines.push(format!("export SPACERAFT_CERT={}", cert.display()));
        lines.push(format!("export SPACERAFT_KEY={}", key.display()));
        lines.push(format!("export SPACERAFT_SIGNING_KEY={}", crate::security::certs::signing_key(&tls).display()));
    }
    lines.join("\n") + "\n"
}

/// Creates the demo space `general` unless it exists; says what happened.
pub async fn create_demo_space(
    endpoints: &[String],
    cluster: &ClusterId,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Option<String> {
    let members: Vec<String> = ["alice", "bob", "carol"].iter().map(|m| m.to_string()).collect();
    for addr in endpoints {
        let Ok(endpoint) = crate::raft::network::endpoint(addr, &Default::default(), tls) else { continue };
        let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await else { continue };
        let mut client = crate::pb::client_client::ClientClient::new(stamped(channel, cluster));
        let request = crate::pb::CreateSpaceRequest {
            name: "general".into(),
            members: members.clone(),
            attrs: [("org".to_string(), "demo".to_string())].into_iter().collect(),
        };
        match tokio::time::timeout(Duration::from_secs(10), client.create_space(request)).await {
            Ok(Ok(_)) => return Some("demo space: general (members alice, bob, carol)".into()),
            Ok(Err(status)) if ApiError::from_status(&status).kind == ErrorKind::Exists => {
                return Some("space general exists with other members; no demo space created".into())
            }
            _ => continue,
        }
    }
    None
}

/// Sends SIGTERM so the process shuts down cleanly.
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

/// Polls the nodes until one reports a leader of the first space cluster.
/// A node that answers for another cluster (`wrong_cluster`) ends the wait
/// with an error: something else listens where this cluster's nodes should.
pub async fn wait_for_leader(
    endpoints: &[String],
    cluster: &ClusterId,
    tls: Option<&tonic::transport::ClientTlsConfig>,
    timeout: Duration,
) -> anyhow::Result<Option<u64>> {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        for addr in endpoints {
            let Ok(endpoint) = crate::raft::network::endpoint(addr, &Default::default(), tls) else { continue };
            let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_millis(500), endpoint.connect()).await else {
                continue;
            };
            let mut admin = crate::pb::admin_client::AdminClient::new(stamped(channel, cluster));
            let status = admin.node_status(crate::pb::NodeStatusRequest::default());
            match tokio::time::timeout(Duration::from_secs(1), status).await {
                Ok(Ok(response)) => {
                    let replicas = response.into_inner().replicas;
                    let first_cluster = replicas.iter().filter(|r| r.cluster_id == crate::config::DEFAULT_CLUSTER_ID);
                    if let Some(leader) = first_cluster.map(|r| r.leader_id).find(|id| *id != 0) {
                        return Ok(Some(leader));
                    }
                }
                Ok(Err(status)) if ApiError::from_status(&status).kind == ErrorKind::WrongCluster => {
                    anyhow::bail!(
                        "the node answering {addr} belongs to another cluster, not to cluster {} started here: \
                         is another Spaceraft cluster using these ports? (stop it, or pick others with --base-port)",
                        cluster.get().unwrap_or("?")
                    );
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(None)
}

/// Waits until the bootstrap node `node` has kept the cluster's id in its
/// data directory; fails when its process exits first.
async fn wait_for_cluster_id(
    node: &NodeConfig,
    child: &mut tokio::process::Child,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(id) = crate::wire::read_cluster_id(&node.data_dir)? {
            return Ok(id);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "node {} exited ({status}) before it started: see {}",
                node.node_id,
                node.data_dir.with_extension("log").display()
            );
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("node {} did not start within {timeout:?}: see its log", node.node_id);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
