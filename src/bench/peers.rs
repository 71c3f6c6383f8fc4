//! `spaceraft bench peers`: one closed-loop load generator for Spaceraft and
//! the systems it is compared with, so all are driven the same way: N
//! clients, each with one write in flight, a fresh BYTES-byte body each,
//! waiting for the write's acknowledgement before the next:
//! - **spaceraft**: a `Post` with an idempotency key, answered with its seq
//!   once committed (fsynced on a quorum) and applied, to the leader of the
//!   space's cluster;
//! - **etcd**: a `KV.Put` of a fresh key, answered once committed by etcd's
//!   Raft (fsynced on a quorum);
//! - **nats**: a JetStream publish to an R3 file stream, answered with the
//!   stream ack once the stream's Raft group has it (NATS does not fsync
//!   each write by default: it syncs every 2 minutes).
//!
//! `bench peers-report` turns the JSON lines of many runs into the Markdown
//! table and SVG plots of docs/benchmarks.md.

pub mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

use crate::pb;

/// The etcd v3 KV API's Put (proto/etcd/kv.proto).
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Spaceraft,
    Etcd,
    Nats,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Spaceraft => "spaceraft",
            System::Etcd => "etcd",
            System::Nats => "nats",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PeersBenchArgs {
    /// The system to drive.
    #[arg(long, value_enum)]
    pub system: System,
    /// Its addresses: Spaceraft nodes' gRPC (the posts go to each space's
    /// leader), etcd client URLs (the first is used: give its leader), NATS
    /// servers (the first is used).
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Spaceraft: start a 3-region cluster of node processes for the run
    /// (plaintext, fsync on, in a temporary directory) instead of using
    /// --endpoints, and stop it after.
    #[arg(long)]
    pub own_cluster: bool,
    /// With --own-cluster: at most this many spaces per space cluster (1:
    /// every space gets a cluster of its own).
    #[arg(long)]
    pub spaces_per_cluster: Option<u64>,
    /// With --own-cluster: its first port.
    #[arg(long, default_value_t = 7600)]
    pub base_port: u16,
    #[command(flatten)]
    pub load: crate::bench::LoadArgs,
    /// Spaces (etcd: key prefixes, NATS: subjects) the writes are spread
    /// over, round robin per client.
    #[arg(long, default_value_t = 1)]
    pub spaces: usize,
    /// A label for the run in the report (e.g. "100 clusters").
    #[arg(long, default_value = "")]
    pub label: String,
    /// Spaceraft: TLS (an operator's certificate, who may post as the
    /// bench user).
    #[command(flatten)]
    pub tls: super::BenchTls,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeersReport {
    pub system: System,
    pub label: String,
    pub clients: usize,
    pub size_bytes: usize,
    pub spaces: usize,
    pub secs: f64,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub writes_per_sec: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// (quantile, microseconds) for a latency CDF.
    pub cdf: Vec<(f64, u64)>,
}

/// One client's way to write.
enum Writer {
    Spaceraft {
        /// Per space: its name and a client to its cluster's leader.
        spaces: Vec<(String, pb::client_client::ClientClient<Channel>)>,
    },
    Etcd(etcdserverpb::kv_client::KvClient<Channel>),
    Nats(async_nats::jetstream::Context),
}

const NATS_STREAM: &str = "BENCH";

impl Writer {
    /// Writes `body` as write number `n` of client `client`, to space
    /// `space` (an index below the space count).
    async fn write(&mut self, client: usize, n: u64, space: usize, body: &[u8]) -> anyhow::Result<()> {
        match self {
            Writer::Spaceraft { spaces } => {
                let (name, stub) = &mut spaces[space];
                stub.post(pb::PostRequest {
                    space: name.clone(),
                    author: "bench".into(),
                    body: String::from_utf8_lossy(body).into_owned(),
                    idempotency_key: format!("c{client}-{n}"),
                })
                .await?;
            }
            Writer::Etcd(kv) => {
                kv.put(etcdserverpb::PutRequest {
                    key: format!("bench/{space}/c{client}-{n}").into_bytes(),
                    value: body.to_vec(),
                    ..Default::default()
                })
                .await?;
            }
            Writer::Nats(jetstream) => {
                let subject = format!("bench.{space}");
                jetstream.publish(subject, body.to_vec().into()).await?.await?;
            }
        }
        Ok(())
    }
}

async fn connect(addr: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> anyhow::Result<Channel> {
    let endpoint = crate::raft::network::endpoint(addr, &Default::default(), tls)?;
    endpoint.connect().await.with_context(|| format!("connecting to {addr}"))
}

/// Makes the writers, one per client, sharing `connections` connections.
async fn writers(args: &PeersBenchArgs) -> anyhow::Result<Vec<Writer>> {
    let connections = args.load.connections.max(1);
    let spaces = args.spaces.max(1);
    match args.system {
        System::Spaceraft => {
            let tls = args.tls.config()?;
            let region = super::first_region(&args.endpoints, tls.as_ref()).await;
            let mut client = pb::client_client::ClientClient::new(connect(&args.endpoints[0], tls.as_ref()).await?);
            let run = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
            let mut placed = Vec::new();
            for space in 0..spaces {
                let name = format!("bench-{run}-{space}");
                let attrs =
                    region.iter().map(|region| (crate::node::write::REGION_ATTR.to_string(), region.clone())).collect();
                let created = client
                    .create_space(pb::CreateSpaceRequest { name: name.clone(), members: vec!["bench".into()], attrs })
                    .await
                    .with_context(|| format!("creating space {name}"))?
                    .into_inner();
                let cluster = created.space.map(|space| space.cluster_id).unwrap_or(crate::config::DEFAULT_CLUSTER_ID);
                placed.push((name, cluster));
            }
            let mut leaders: HashMap<u64, String> = HashMap::new();
            for (_, cluster) in &placed {
                if !leaders.contains_key(cluster) {
                    let wait = Duration::from_secs(15);
                    let leader = super::settled_leader(&args.endpoints, *cluster, wait, tls.as_ref()).await?;
                    leaders.insert(*cluster, leader);
                }
            }
            let clusters = leaders.len();
            eprintln!("{spaces} spaces on {clusters} space clusters");
            // Per leader address, `connections` channels.
            let mut channels: HashMap<String, Vec<Channel>> = HashMap::new();
            for addr in leaders.values() {
                if !channels.contains_key(addr) {
                    let mut pool = Vec::new();
                    for _ in 0..connections {
                        pool.push(connect(addr, tls.as_ref()).await?);
                    }
                    channels.insert(addr.clone(), pool);
                }
            }
            Ok((0..args.load.clients)
                .map(|client| Writer::Spaceraft {
                    spaces: placed
                        .iter()
                        .map(|(name, cluster)| {
                            let pool = &channels[&leaders[cluster]];
                            (name.clone(), pb::client_client::ClientClient::new(pool[client % pool.len()].clone()))
                        })
                        .collect(),
                })
                .collect())
        }
        System::Etcd => {
            let mut pool = Vec::new();
            for _ in 0..connections {
                pool.push(connect(&args.endpoints[0], None).await?);
            }
            Ok((0..args.load.clients)
                .map(|client| Writer::Etcd(etcdserverpb::kv_client::KvClient::new(pool[client % pool.len()].clone())))
                .collect())
        }
        System::Nats => {
            let mut pool = Vec::new();
            for _ in 0..connections {
                let client = async_nats::connect(args.endpoints[0].as_str())
                    .await
                    .with_context(|| format!("connecting to NATS at {}", args.endpoints[0]))?;
                pool.push(async_nats::jetstream::new(client));
            }
            let config = async_nats::jetstream::stream::Config {
                name: NATS_STREAM.into(),
                subjects: vec!["bench.>".into()],
                num_replicas: 3,
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            };
            let _ = pool[0].delete_stream(NATS_STREAM).await;
            // A cluster just started elects its JetStream meta leader first.
            let deadline = Instant::now() + Duration::from_secs(30);
            while let Err(error) = pool[0].create_stream(config.clone()).await {
                anyhow::ensure!(Instant::now() < deadline, "creating the JetStream stream: {error}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok((0..args.load.clients).map(|client| Writer::Nats(pool[client % pool.len()].clone())).collect())
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

pub async fn run(mut args: PeersBenchArgs) -> anyhow::Result<PeersReport> {
    let own = if args.own_cluster {
        anyhow::ensure!(args.system == System::Spaceraft, "--own-cluster starts Spaceraft nodes only");
        let spaces_max = args.spaces_per_cluster;
        let cluster = super::cluster::BenchCluster::start_with(args.base_port, |config| {
            if let Some(spaces_max) = spaces_max {
                config.placement.spaces_max = spaces_max;
            }
        })
        .await?;
        args.endpoints = cluster.nodes.iter().map(|c| c.advertise_addr().to_string()).collect();
        args.tls = super::BenchTls::default();
        Some(cluster)
    } else {
        None
    };
    anyhow::ensure!(!args.endpoints.is_empty(), "give --endpoints (or --own-cluster)");
    let report = drive(&args).await;
    if let Some(cluster) = own {
        cluster.stop().await;
    }
    report
}

async fn drive(args: &PeersBenchArgs) -> anyhow::Result<PeersReport> {
    let writers = writers(args).await?;
    eprintln!(
        "bench peers: {}, {} clients, {} B, {} spaces, {} s",
        args.system.name(),
        args.load.clients,
        args.load.size,
        args.spaces.max(1),
        args.load.secs
    );
    let body: Arc<Vec<u8>> = Arc::new(vec![b'x'; args.load.size.max(1)]);
    let spaces = args.spaces.max(1);
    let deadline = Instant::now() + Duration::from_secs(args.load.secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut writer) in writers.into_iter().enumerate() {
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let (mut failed, mut last_error) = (0u64, None);
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                match writer.write(client, n, (client + n as usize) % spaces, &body).await {
                    Ok(()) => latencies.saturating_record(sent.elapsed().as_micros().max(1) as u64),
                    Err(error) => {
                        failed += 1;
                        last_error = Some(error.to_string());
                    }
                }
            }
            (latencies, failed, last_error)
        }));
    }
    let mut latencies = histogram();
    let mut failed = 0;
    for task in tasks {
        let (one, one_failed, last_error) = task.await?;
        latencies.add(&one)?;
        failed += one_failed;
        if let Some(error) = last_error {
            eprintln!("a client's last failed write: {error}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let quantiles = (1..100).map(|q| q as f64 / 100.0).chain([0.995, 0.999, 0.9999, 1.0]);
    Ok(PeersReport {
        system: args.system,
        label: args.label.clone(),
        clients: args.load.clients,
        size_bytes: args.load.size,
        spaces,
        secs,
        writes_ok: latencies.len(),
        writes_failed: failed,
        writes_per_sec: latencies.len() as f64 / secs,
        p50_us: latencies.value_at_quantile(0.5),
        p90_us: latencies.value_at_quantile(0.9),
        p99_us: latencies.value_at_quantile(0.99),
        p999_us: latencies.value_at_quantile(0.999),
        max_us: latencies.max(),
        cdf: quantiles.map(|q| (q, latencies.value_at_quantile(q))).collect(),
    })
}

pub fn print(report: &PeersReport) {
    println!(
        "{}: {} ok, {} failed in {:.1} s = {:.0} writes/s; p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
        report.system.name(),
        report.writes_ok,
        report.writes_failed,
        report.secs,
        report.writes_per_sec,
        report.p50_us as f64 / 1000.0,
        report.p99_us as f64 / 1000.0,
        report.p999_us as f64 / 1000.0,
        report.max_us as f64 / 1000.0
    );
}
