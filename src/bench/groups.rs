//! `spaceraft bench groups`: what many space clusters cost a node.
//!
//! For each cluster count: three node processes in three regions (release
//! binary, fsync on), one space per cluster (placement capped at one space
//! per cluster, so each space makes a new cluster), then idle:
//! CPU per node (user + system time from `/proc/<pid>/stat` over the
//! measuring window, as a percentage of one core) and resident memory, once
//! leader placement has put each cluster's leader in its preferred region
//! (a third of them in each); then
//! one region is killed with SIGKILL: how long until every cluster has a
//! leader again, and the idle cost of the survivors. The same is measured
//! with quiescence off as the peer in the same run.
//!
//! `--throughput` measures posts a second spread over 100 clusters against
//! the same load on one cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use super::cluster::BenchCluster;
use crate::meta::directory::META_GROUP_ID;
use crate::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct GroupsBenchArgs {
    /// Space cluster counts to measure, one fresh cluster of nodes each.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub clusters: Vec<usize>,
    /// Idle time before measuring, after setup and after the region kill.
    #[arg(long, default_value_t = 10)]
    pub settle_secs: u64,
    /// Length of each CPU measurement.
    #[arg(long, default_value_t = 20)]
    pub measure_secs: u64,
    /// Spaces created at once during setup.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Skip the peer measurement with quiescence off.
    #[arg(long)]
    pub no_baseline: bool,
    /// Measure posts a second over 100 clusters against one cluster
    /// instead of idle cost.
    #[arg(long)]
    pub throughput: bool,
    /// Concurrent posting clients in the throughput run.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Seconds of posting per throughput run.
    #[arg(long, default_value_t = 10)]
    pub post_secs: u64,
    /// First port of the runs' clusters (each run uses a few from here).
    #[arg(long, default_value_t = 7400)]
    pub base_port: u16,
}

/// One node's cost over one window.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCost {
    pub node_id: u64,
    pub cpu_percent_of_core: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleRun {
    pub clusters: usize,
    pub quiesce: bool,
    pub setup_secs: f64,
    pub all_up: Vec<NodeCost>,
    /// Clusters the killed region led.
    pub led_by_killed: usize,
    /// Seconds from the SIGKILL of one region until every cluster had a
    /// leader on a surviving node.
    pub region_kill_recovery_secs: f64,
    pub region_down: Vec<NodeCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRun {
    pub clusters: usize,
    pub posts_per_sec: f64,
    pub posts_failed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupsReport {
    pub idle: Vec<IdleRun>,
    pub throughput: Vec<ThroughputRun>,
}

pub async fn groups(args: GroupsBenchArgs) -> anyhow::Result<GroupsReport> {
    let mut report = GroupsReport { idle: Vec::new(), throughput: Vec::new() };
    if args.throughput {
        for clusters in [1, 100] {
            report.throughput.push(throughput(&args, clusters).await?);
        }
        return Ok(report);
    }
    for clusters in args.clusters.clone() {
        let modes: &[bool] = if args.no_baseline { &[true] } else { &[true, false] };
        for quiesce in modes {
            report.idle.push(idle(&args, clusters, *quiesce).await?);
        }
    }
    Ok(report)
}

/// One space per cluster: every space after the first makes a new cluster.
async fn start(args: &GroupsBenchArgs, quiesce: bool, one_space_per_cluster: bool) -> anyhow::Result<BenchCluster> {
    BenchCluster::start_with(args.base_port, |config| {
        config.groups.quiesce = quiesce;
        if one_space_per_cluster {
            config.placement.spaces_max = 1;
        }
    })
    .await
}

async fn create_spaces(cluster: &BenchCluster, count: usize, concurrency: usize) -> anyhow::Result<()> {
    let progress = indicatif::ProgressBar::new(count as u64)
        .with_style(indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} {elapsed}").expect("template"));
    progress.set_message("creating spaces");
    let created = futures::stream::iter(0..count)
        .map(|i| {
            let mut client = cluster.client.clone();
            let progress = progress.clone();
            async move {
                let request = pb::CreateSpaceRequest {
                    name: format!("space-{i}"),
                    members: vec!["poster".into()],
                    attrs: [("org".to_string(), format!("org-{i}"))].into(),
                };
                let mut result = client.create_space(request.clone()).await;
                // The meta leader may be busy electing the first time round.
                for _ in 0..5 {
                    if result.as_ref().is_err_and(|status| status.code() == tonic::Code::Unavailable) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        result = client.create_space(request.clone()).await;
                    }
                }
                progress.inc(1);
                result.with_context(|| format!("creating space-{i}"))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    progress.finish_and_clear();
    created.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(())
}

/// Space clusters hosted by `node`, and how many of them know a leader
/// that `leader_ok` accepts.
async fn led_clusters(
    cluster: &BenchCluster,
    node: u64,
    leader_ok: impl Fn(u64) -> bool,
) -> anyhow::Result<(usize, usize)> {
    let addr = cluster.node(node).advertise_addr().to_string();
    let channel = crate::raft::network::endpoint(&addr, &Default::default(), None)?.connect().await?;
    let mut admin = pb::admin_client::AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let status = admin.node_status(pb::NodeStatusRequest::default()).await?.into_inner();
    let spaces: Vec<&pb::ReplicaStatus> = status.replicas.iter().filter(|r| r.cluster_id != META_GROUP_ID).collect();
    let led = spaces.iter().filter(|r| r.leader_id != 0 && leader_ok(r.leader_id)).count();
    Ok((spaces.len(), led))
}

/// Waits until each of `nodes` hosts `count` space clusters, each with a
/// leader `leader_ok` accepts.
async fn wait_for_leaders(
    cluster: &BenchCluster,
    nodes: &[u64],
    count: usize,
    leader_ok: impl Fn(u64) -> bool + Copy,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut ready = true;
        let mut seen = Vec::new();
        for node in nodes {
            let (hosted, led) = led_clusters(cluster, *node, leader_ok).await.unwrap_or((0, 0));
            ready &= hosted >= count && led >= count;
            seen.push((node, hosted, led));
        }
        if ready {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "clusters without a leader after {timeout:?}: {seen:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every cluster with a preferred region is led from there
/// (leader placement has spread the leaders); returns how many are.
async fn wait_for_preferred_leaders(cluster: &BenchCluster, timeout: Duration) -> anyhow::Result<usize> {
    let addr = cluster.node(1).advertise_addr().to_string();
    let channel = crate::raft::network::endpoint(&addr, &Default::default(), None)?.connect().await?;
    let mut admin = pb::admin_client::AdminClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let directory = admin.directory(pb::DirectoryRequest {}).await?.into_inner();
    let region_of: std::collections::HashMap<u64, String> =
        directory.nodes.iter().map(|node| (node.node_id, node.region.clone())).collect();
    let preferred: std::collections::HashMap<u64, String> = directory
        .clusters
        .iter()
        .filter(|c| !c.preferred_region.is_empty())
        .map(|c| (c.cluster_id, c.preferred_region.clone()))
        .collect();
    let deadline = Instant::now() + timeout;
    loop {
        let status = admin.node_status(pb::NodeStatusRequest::default()).await?.into_inner();
        let misplaced = status
            .replicas
            .iter()
            .filter(|r| preferred.get(&r.cluster_id).is_some_and(|region| region_of.get(&r.leader_id) != Some(region)))
            .count();
        if misplaced == 0 {
            return Ok(preferred.len());
        }
        anyhow::ensure!(Instant::now() < deadline, "{misplaced} clusters still led outside their preferred region");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').context("/proc stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the name.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("VmRSS")?;
    let kib: f64 = line.split_whitespace().nth(1).context("VmRSS value")?.parse()?;
    Ok(kib / 1024.0)
}

/// Clock ticks a second of `/proc/<pid>/stat` times.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

async fn measure(cluster: &BenchCluster, nodes: &[u64], secs: u64) -> anyhow::Result<Vec<NodeCost>> {
    let pids: Vec<(u64, u32)> =
        nodes.iter().map(|id| Ok((*id, cluster.pid(*id).context("node pid")?))).collect::<anyhow::Result<_>>()?;
    let before: Vec<u64> = pids.iter().map(|(_, pid)| cpu_ticks(*pid)).collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let mut costs = Vec::new();
    for ((id, pid), before) in pids.iter().zip(before) {
        let used = (cpu_ticks(*pid)? - before) as f64 / CLOCK_TICKS_PER_SEC;
        costs.push(NodeCost { node_id: *id, cpu_percent_of_core: 100.0 * used / elapsed, rss_mib: rss_mib(*pid)? });
    }
    Ok(costs)
}

async fn idle(args: &GroupsBenchArgs, clusters: usize, quiesce: bool) -> anyhow::Result<IdleRun> {
    eprintln!("bench groups: {clusters} clusters, quiescence {}", if quiesce { "on" } else { "off" });
    let cluster = start(args, quiesce, true).await?;
    let setup = Instant::now();
    create_spaces(&cluster, clusters, args.concurrency).await?;
    let all = [1, 2, 3];
    let setup_timeout = Duration::from_secs(60 + clusters as u64 / 10);
    wait_for_leaders(&cluster, &all, clusters, |_| true, setup_timeout).await?;
    wait_for_preferred_leaders(&cluster, setup_timeout).await?;
    let setup_secs = setup.elapsed().as_secs_f64();
    eprintln!("bench groups: set up in {setup_secs:.1} s; settling {} s", args.settle_secs);
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let all_up = measure(&cluster, &all, args.measure_secs).await?;

    let led_by_killed = led_clusters(&cluster, 3, |leader| leader == 3).await?.1;
    cluster.signal(3, "-KILL")?;
    let killed = Instant::now();
    let survivors = [1, 2];
    wait_for_leaders(&cluster, &survivors, clusters, |leader| leader != 3, setup_timeout).await?;
    let region_kill_recovery_secs = killed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let region_down = measure(&cluster, &survivors, args.measure_secs).await?;
    cluster.stop().await;
    Ok(IdleRun { clusters, quiesce, setup_secs, all_up, led_by_killed, region_kill_recovery_secs, region_down })
}

async fn throughput(args: &GroupsBenchArgs, clusters: usize) -> anyhow::Result<ThroughputRun> {
    eprintln!("bench groups: throughput over {clusters} cluster(s)");
    let spaces = 100;
    let cluster = start(args, true, clusters > 1).await?;
    create_spaces(&cluster, spaces, args.concurrency).await?;
    wait_for_leaders(&cluster, &[1, 2, 3], clusters, |_| true, Duration::from_secs(120)).await?;
    let endpoints: Vec<String> = cluster.nodes.iter().map(|c| c.advertise_addr().to_string()).collect();
    let mut channels = Vec::new();
    for addr in &endpoints {
        channels.push(crate::raft::network::endpoint(addr, &Default::default(), None)?.connect().await?);
    }
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + Duration::from_secs(args.post_secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|client_index| {
            let mut client = pb::client_client::ClientClient::new(channels[client_index % channels.len()].clone());
            let (acked, failed) = (acked.clone(), failed.clone());
            tokio::spawn(async move {
                let mut n = 0usize;
                while Instant::now() < deadline {
                    let space = format!("space-{}", (client_index * 7919 + n) % spaces);
                    n += 1;
                    let request = pb::PostRequest {
                        space,
                        author: "poster".into(),
                        body: "x".repeat(256),
                        idempotency_key: format!("{client_index}-{n}"),
                    };
                    match client.post(request).await {
                        Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let secs = started.elapsed().as_secs_f64();
    cluster.stop().await;
    Ok(ThroughputRun {
        clusters,
        posts_per_sec: acked.load(Ordering::Relaxed) as f64 / secs,
        posts_failed: failed.load(Ordering::Relaxed),
    })
}

pub fn print_groups_report(report: &GroupsReport) {
    for run in &report.idle {
        println!(
            "{} clusters, quiescence {}: set up in {:.1} s",
            run.clusters,
            if run.quiesce { "on" } else { "off" },
            run.setup_secs
        );
        for (label, costs) in [("all up", &run.all_up), ("region down", &run.region_down)] {
            let line: Vec<String> = costs
                .iter()
                .map(|cost| {
                    format!("node {} {:.1}% of a core, {:.0} MiB", cost.node_id, cost.cpu_percent_of_core, cost.rss_mib)
                })
                .collect();
            println!("  idle, {label}: {}", line.join("; "));
        }
        println!(
            "  the killed region led {} clusters; every cluster led again {:.1} s after the kill",
            run.led_by_killed, run.region_kill_recovery_secs
        );
    }
    let mean =
        |costs: &[NodeCost]| costs.iter().map(|c| c.cpu_percent_of_core).sum::<f64>() / costs.len().max(1) as f64;
    for on in report.idle.iter().filter(|run| run.quiesce) {
        if let Some(off) = report.idle.iter().find(|run| !run.quiesce && run.clusters == on.clusters) {
            println!(
                "{} clusters idle: quiescence costs {:.1}% of a core per node against {:.1}% without ({:.0}x less)",
                on.clusters,
                mean(&on.all_up),
                mean(&off.all_up),
                mean(&off.all_up) / mean(&on.all_up).max(0.01)
            );
        }
    }
    for run in &report.throughput {
        println!("{} cluster(s): {:.0} posts/s ({} failed)", run.clusters, run.posts_per_sec, run.posts_failed);
    }
    if let [one, many] = report.throughput.as_slice() {
        println!("100 clusters against 1: {:.2}x", many.posts_per_sec / one.posts_per_sec.max(0.01));
    }
}
