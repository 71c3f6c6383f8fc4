//! `spaceraft bench`: load generators that print figures.
//!
//! `bench post` runs N concurrent clients for S seconds, each posting
//! BYTES-byte messages with idempotency keys to a fresh space, one request
//! at a time per client, and prints throughput and commit latency
//! percentiles (HdrHistogram, microseconds). `bench failover` ([`failover`])
//! measures delivery through a gateway across the loss of its upstream.

pub mod cluster;
pub mod failover;
pub mod fanout;
pub mod groups;
pub mod leader_loss;
pub mod peers;
pub mod placement;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use crate::pb;

/// The closed-loop load every write benchmark drives: `bench post` and
/// each system of `bench peers`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Concurrent clients, each with one write in flight.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Body bytes per write.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// How long to write.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// HTTP/2 connections shared by the clients.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PostBenchArgs {
    /// Node gRPC addresses; the bench sends to the leader.
    #[arg(long, env = "SPACERAFT_ENDPOINTS", value_delimiter = ',', default_value = "127.0.0.1:7001")]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Send to any endpoint (exercising forwarding) instead of the leader.
    #[arg(long)]
    pub any_node: bool,
    /// Seconds of a peer measurement in the same run: the same clients
    /// calling GetSpace (a gRPC round trip that reads one record and writes
    /// nothing) on the same node, the ceiling the RPC layer sets. 0 skips it.
    #[arg(long, default_value_t = 5)]
    pub baseline_secs: u64,
    #[command(flatten)]
    pub tls: BenchTls,
    /// Print where the posts' time went: every node's per-stage latency
    /// figures over the posting phase (the admin `Stages` RPC).
    #[arg(long)]
    pub breakdown: bool,
}

/// TLS to a secured cluster's nodes (`. <data-dir>/spacectl.env` sets
/// these for `spaceraft dev`'s).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BenchTls {
    /// The cluster's CA certificate: talk TLS.
    #[arg(long, env = "SPACERAFT_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// A client certificate to present: an operator's, who may post as the
    /// bench user.
    #[arg(long, env = "SPACERAFT_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// The key of --cert.
    #[arg(long, env = "SPACERAFT_KEY")]
    pub key: Option<std::path::PathBuf>,
}

impl BenchTls {
    /// TLS to the nodes, when a CA is given.
    pub fn config(&self) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
        let Some(ca) = &self.cacert else { return Ok(None) };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(Some(crate::security::tls::ClientTls::load(ca, identity)?.config()))
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PostBenchReport {
    pub clients: usize,
    pub size_bytes: usize,
    pub secs: f64,
    pub posts_ok: u64,
    pub posts_failed: u64,
    pub posts_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The GetSpace round trips per second of the baseline phase (0 if skipped).
    pub baseline_rpcs_per_sec: f64,
    pub baseline_p50_us: u64,
    /// With --breakdown: each node's stage figures over the posting phase.
    pub breakdown: Vec<NodeStages>,
}

/// One node's stage figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeStages {
    pub endpoint: String,
    pub node_id: u64,
    pub stages: Vec<crate::stages::StageFigures>,
}

/// Every endpoint's stage figures (`reset` starts them over).
async fn node_stages(
    endpoints: &[String],
    tls: Option<&tonic::transport::ClientTlsConfig>,
    reset: bool,
) -> anyhow::Result<Vec<NodeStages>> {
    let mut all = Vec::new();
    for addr in endpoints {
        let endpoint = crate::raft::network::endpoint(addr, &Default::default(), tls)?;
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let reply = admin
            .stages(pb::StagesRequest { reset })
            .await
            .with_context(|| format!("reading the stage figures of {addr}"))?
            .into_inner();
        let stages = reply.stages.into_iter().map(Into::into).collect();
        all.push(NodeStages { endpoint: addr.clone(), node_id: reply.node_id, stages });
    }
    Ok(all)
}

/// The address and region of the leader of space cluster `cluster`.
async fn find_leader(
    endpoints: &[String],
    cluster: u64,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<(String, String)> {
    for addr in endpoints {
        let Ok(endpoint) = crate::raft::network::endpoint(addr, &Default::default(), tls) else { continue };
        let Ok(channel) = endpoint.connect().await else { continue };
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let Ok(status) = admin.cluster_status(pb::ClusterStatusRequest {}).await else { continue };
        let replicas = status.into_inner().replicas;
        let of_cluster = |r: &&pb::ReplicaStatus| r.cluster_id == cluster;
        if let Some(leader) = replicas.iter().filter(of_cluster).find(|r| r.role == "leader") {
            return Ok((leader.grpc_addr.clone(), leader.region.clone()));
        }
    }
    anyhow::bail!("no leader found among {}", endpoints.join(","))
}

/// The leader of `cluster` once it sits in the cluster's preferred region
/// (leader placement moves it there a few seconds after the cluster is
/// made), or wherever it is after `wait`.
async fn settled_leader(
    endpoints: &[String],
    cluster: u64,
    wait: Duration,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + wait;
    let endpoint = crate::raft::network::endpoint(&endpoints[0], &Default::default(), tls)?;
    let mut admin = pb::admin_client::AdminClient::new(endpoint.connect().await.context("connecting")?);
    let directory = admin.directory(pb::DirectoryRequest::default()).await.context("reading the directory")?;
    let preferred = directory
        .into_inner()
        .clusters
        .into_iter()
        .find(|c| c.cluster_id == cluster)
        .map(|c| c.preferred_region)
        .filter(|region| !region.is_empty());
    let region = preferred.as_deref();
    loop {
        let found = find_leader(endpoints, cluster, tls).await;
        match found {
            Ok((addr, at)) if region.is_none_or(|region| region == at) => return Ok(addr),
            Ok((addr, at)) if Instant::now() >= deadline => {
                eprintln!("the leader stays in region {at}, not {region:?}; posting to it");
                return Ok(addr);
            }
            Err(error) if Instant::now() >= deadline => return Err(error),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The region of the first endpoint's node.
async fn first_region(endpoints: &[String], tls: Option<&tonic::transport::ClientTlsConfig>) -> Option<String> {
    let endpoint = crate::raft::network::endpoint(&endpoints[0], &Default::default(), tls).ok()?;
    let mut admin = pb::admin_client::AdminClient::new(endpoint.connect().await.ok()?);
    let replicas = admin.cluster_status(pb::ClusterStatusRequest {}).await.ok()?.into_inner().replicas;
    replicas.into_iter().find(|r| r.grpc_addr == endpoints[0]).map(|r| r.region)
}

pub async fn post(args: PostBenchArgs) -> anyhow::Result<PostBenchReport> {
    // The space first: placement picks its cluster, whose leader the posts
    // go to (unless --any-node).
    let space = format!("bench-{:08x}", rand::random::<u32>());
    let tls = args.tls.config()?;
    // The space's home region is the first endpoint's, so its cluster's
    // leader settles there and stays for the run.
    let region = first_region(&args.endpoints, tls.as_ref()).await;
    let first = crate::raft::network::endpoint(&args.endpoints[0], &Default::default(), tls.as_ref())?;
    let mut client = pb::client_client::ClientClient::new(first.connect().await.context("connecting")?);
    let attrs = region.iter().map(|region| (crate::node::write::REGION_ATTR.to_string(), region.clone())).collect();
    let created = client
        .create_space(pb::CreateSpaceRequest { name: space.clone(), members: vec!["bench".into()], attrs })
        .await
        .context("creating the bench space")?
        .into_inner();
    let cluster = created.space.map(|space| space.cluster_id).unwrap_or(crate::config::DEFAULT_CLUSTER_ID);
    let target = if args.any_node {
        args.endpoints[0].clone()
    } else {
        settled_leader(&args.endpoints, cluster, Duration::from_secs(15), tls.as_ref()).await?
    };
    let mut channels = Vec::new();
    for _ in 0..args.load.connections.max(1) {
        let endpoint = crate::raft::network::endpoint(&target, &Default::default(), tls.as_ref())?;
        channels.push(endpoint.connect().await.with_context(|| format!("connecting to {target}"))?);
    }
    let body: String = "x".repeat(args.load.size.max(1));
    eprintln!(
        "bench post: {} clients, {} B bodies, {} s, to {} ({}), space {}",
        args.load.clients,
        args.load.size,
        args.load.secs,
        target,
        if args.any_node { "any node" } else { "leader" },
        space
    );
    if args.breakdown {
        node_stages(&args.endpoints, tls.as_ref(), true).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.load.secs);
    let started = Instant::now();
    let body = Arc::new(body);
    let mut tasks = Vec::new();
    for client_number in 0..args.load.clients {
        let channel: Channel = channels[client_number % channels.len()].clone();
        let space = space.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::client_client::ClientClient::new(channel);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut failed = 0u64;
            let mut sequence = 0u64;
            while Instant::now() < deadline {
                sequence += 1;
                let request = pb::PostRequest {
                    space: space.clone(),
                    author: "bench".into(),
                    body: body.as_str().to_owned(),
                    idempotency_key: format!("c{client_number}-{sequence}"),
                };
                let sent = Instant::now();
                match client.post(request).await {
                    Ok(_) => {
                        let _ = histogram.record(sent.elapsed().as_micros().max(1) as u64);
                    }
                    Err(_) => failed += 1,
                }
            }
            (histogram, failed)
        }));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut failed = 0;
    for task in tasks {
        let (one, one_failed) = task.await?;
        histogram.add(&one)?;
        failed += one_failed;
    }
    let secs = started.elapsed().as_secs_f64();
    let report = PostBenchReport {
        clients: args.load.clients,
        size_bytes: args.load.size,
        secs,
        posts_ok: histogram.len(),
        posts_failed: failed,
        posts_per_sec: histogram.len() as f64 / secs,
        p50_us: histogram.value_at_quantile(0.50),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        baseline_rpcs_per_sec: 0.0,
        baseline_p50_us: 0,
        breakdown: if args.breakdown { node_stages(&args.endpoints, tls.as_ref(), false).await? } else { Vec::new() },
    };
    if args.baseline_secs == 0 {
        return Ok(report);
    }
    eprintln!("baseline: {} clients calling GetSpace for {} s", args.load.clients, args.baseline_secs);
    let deadline = Instant::now() + Duration::from_secs(args.baseline_secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client_number in 0..args.load.clients {
        let channel: Channel = channels[client_number % channels.len()].clone();
        let space = space.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::client_client::ClientClient::new(channel);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            while Instant::now() < deadline {
                let sent = Instant::now();
                if client.get_space(pb::GetSpaceRequest { name: space.clone() }).await.is_ok() {
                    let _ = histogram.record(sent.elapsed().as_micros().max(1) as u64);
                }
            }
            histogram
        }));
    }
    let mut baseline = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for task in tasks {
        baseline.add(&task.await?)?;
    }
    let mut report = report;
    report.baseline_rpcs_per_sec = baseline.len() as f64 / started.elapsed().as_secs_f64();
    report.baseline_p50_us = baseline.value_at_quantile(0.5);
    Ok(report)
}

pub fn print_post_report(report: &PostBenchReport) {
    println!(
        "posts: {} ok, {} failed in {:.1} s = {:.0} posts/s",
        report.posts_ok, report.posts_failed, report.secs, report.posts_per_sec
    );
    println!(
        "commit latency: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        report.p50_us as f64 / 1000.0,
        report.p99_us as f64 / 1000.0,
        report.p999_us as f64 / 1000.0,
        report.max_us as f64 / 1000.0
    );
    for node in &report.breakdown {
        println!("node {} ({}): stage figures over the posting phase", node.node_id, node.endpoint);
        println!("  {:<16} {:>9} {:>10} {:>10} {:>10} {:>10}", "stage", "count", "mean", "p50", "p99", "max");
        for f in node.stages.iter().filter(|f| f.count > 0) {
            let shown = |value: f64| {
                if f.is_count {
                    format!("{value:.1}")
                } else {
                    format!("{:.3}ms", value / 1000.0)
                }
            };
            println!(
                "  {:<16} {:>9} {:>10} {:>10} {:>10} {:>10}",
                f.stage,
                f.count,
                shown(f.mean),
                shown(f.p50 as f64),
                shown(f.p99 as f64),
                shown(f.max as f64)
            );
        }
    }
    if report.baseline_rpcs_per_sec > 0.0 {
        println!(
            "baseline (GetSpace round trips, same clients and node): {:.0} rpcs/s, p50 {:.2} ms; posts/baseline = {:.2}",
            report.baseline_rpcs_per_sec,
            report.baseline_p50_us as f64 / 1000.0,
            report.posts_per_sec / report.baseline_rpcs_per_sec
        );
    }
}
