//! `spaceraft chaos`: one run from start to verdict. Starts the cluster,
//! the workload and the nemesis; heals everything; checks liveness; reads
//! every replica's final history; checks the invariants; writes the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::chaos::checker::{self, CheckReport};
use crate::chaos::cluster::{ChaosCluster, ClusterSpec};
use crate::chaos::history::{to_jsonl, Event};
use crate::chaos::nemesis::{self, FaultKind, PlannedFault};
use crate::chaos::report;
use crate::chaos::workload::{self, Cursors, Publisher, Reader, Recorder, Subscriber};
use crate::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// Regions (3 or 5 make sense: a quorum must survive one region).
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// Nodes in each region (more than one: a region keeps serving when one
    /// of its nodes dies).
    #[arg(long, default_value_t = 1)]
    pub nodes_per_region: usize,
    /// Length of the faulty part of the run.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Seed of the fault schedule and the workload; random when absent
    /// (printed, for replay).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Faults to inject, comma separated.
    #[arg(long, default_value = "kill-region,partition-region,kill-leader,pause,kill-all,kill-gateway")]
    pub nemesis: String,
    /// Where the history and the report go.
    #[arg(long, default_value = "./chaos-out")]
    pub out: PathBuf,
    /// One-way latency between each pair of regions in milliseconds, in the
    /// order (1,2), (1,3), …, (2,3), …; the last value repeats.
    #[arg(long, value_delimiter = ',', default_value = "20,80,90")]
    pub latency_ms: Vec<u64>,
    /// First port; every process uses its own loopback address.
    #[arg(long, default_value_t = 17000)]
    pub base_port: u16,
    /// Publishers per region.
    #[arg(long, default_value_t = 1)]
    pub publishers_per_region: usize,
    /// Subscribers per region.
    #[arg(long, default_value_t = 2)]
    pub subscribers_per_region: usize,
    /// Spaces written and read.
    #[arg(long, default_value_t = 3)]
    pub spaces: usize,
    /// Spaces placed on each space cluster: with 1, every space gets a
    /// cluster of its own (voters across regions, leaders spread by
    /// preferred region), so faults hit several Raft groups at once.
    #[arg(long, default_value_t = 1)]
    pub spaces_per_cluster: u64,
    /// Size of each node's disk (a tmpfs mounted on its data directory,
    /// which needs root) when the `disk-full` nemesis runs.
    #[arg(long, default_value_t = 512)]
    pub disk_mib: u64,
}

/// How long liveness may take after the last heal: a space must accept a
/// post, every subscriber must catch up, every replica must converge.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);

pub struct ChaosOutcome {
    pub report: CheckReport,
    pub out: PathBuf,
}

pub async fn run(args: ChaosArgs) -> anyhow::Result<ChaosOutcome> {
    let kinds = nemesis::parse_kinds(&args.nemesis).map_err(anyhow::Error::msg)?;
    anyhow::ensure!((1..=9).contains(&args.regions), "--regions must be between 1 and 9");
    anyhow::ensure!(args.nodes_per_region >= 1, "--nodes-per-region must be at least 1");
    let seed = args.seed.unwrap_or_else(rand::random);
    let run_ms = args.secs * 1000;
    let node_count = (args.regions * args.nodes_per_region) as u8;
    let plan = nemesis::schedule(seed, &kinds, args.regions as u8, node_count, run_ms);
    eprintln!(
        "chaos: seed {seed}, {} regions × {} nodes, {} s, {} faults planned (replay: spaceraft chaos --seed {seed} --secs {} --regions {} --nemesis {})",
        args.regions,
        args.nodes_per_region,
        args.secs,
        plan.len(),
        args.secs,
        args.regions,
        args.nemesis
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let cluster_dir = args.out.join("cluster");
    let _ = std::fs::remove_dir_all(&cluster_dir);
    let spec = ClusterSpec {
        regions: args.regions,
        nodes_per_region: args.nodes_per_region,
        base_port: args.base_port,
        latency_ms: latency_pairs(args.regions, &args.latency_ms),
        spaces_per_cluster: args.spaces_per_cluster.max(1),
        disk_mib: kinds.contains(&FaultKind::DiskFull).then_some(args.disk_mib),
    };
    let mut cluster = ChaosCluster::start(&spec, &cluster_dir).await?;
    eprintln!("chaos: cluster up in {}", cluster_dir.display());

    // --- spaces and their members
    let recorder = Recorder::new();
    let users: Vec<String> = (1..=6).map(|i| format!("u{i}")).collect();
    let spaces: Vec<String> = (0..args.spaces).map(|i| format!("chaos-{i}")).collect();
    create_spaces(&cluster, &spaces, &users).await?;
    for space in &spaces {
        recorder.push(Event::Space { space: space.clone(), members: users.clone() });
    }

    // --- the workload
    let (stop_writers, writers_stopped) = watch::channel(false);
    let (stop_subscribers, subscribers_stopped) = watch::channel(false);
    let gateway_urls: Vec<String> = cluster.gateways.iter().map(|gateway| gateway.ws_url()).collect();
    let urls_from = |region: usize| -> Vec<String> {
        (0..gateway_urls.len()).map(|i| gateway_urls[(region + i) % gateway_urls.len()].clone()).collect()
    };
    let mut writers = Vec::new();
    let mut subscriber_tasks = Vec::new();
    let mut subscriber_cursors: Vec<(String, Cursors)> = Vec::new();
    for region in 0..args.regions {
        let region_name = &cluster.region_names[region];
        for p in 0..args.publishers_per_region {
            let publisher = Publisher {
                name: format!("pub-{region_name}-{p}"),
                user: users[(region + p) % users.len()].clone(),
                spaces: spaces.clone(),
                urls: urls_from(region),
                seed: seed ^ (0x9e37 + (region * 31 + p) as u64),
                pause: Duration::from_millis(40),
            };
            writers.push(tokio::spawn(publisher.run(recorder.clone(), writers_stopped.clone())));
        }
        for s in 0..args.subscribers_per_region {
            let name = format!("sub-{region_name}-{s}");
            let cursors: Cursors = Arc::default();
            subscriber_cursors.push((name.clone(), cursors.clone()));
            let subscriber = Subscriber {
                name,
                user: users[(region + s + 3) % users.len()].clone(),
                spaces: spaces.clone(),
                urls: urls_from(region),
            };
            subscriber_tasks.push(tokio::spawn(subscriber.run(recorder.clone(), cursors, subscribers_stopped.clone())));
        }
        let reader = Reader {
            name: format!("reader-{region_name}"),
            user: users[region % users.len()].clone(),
            spaces: spaces.clone(),
            urls: urls_from(region),
            seed: seed ^ (0x51ed + region as u64),
            interval: Duration::from_millis(700),
        };
        writers.push(tokio::spawn(reader.run(recorder.clone(), writers_stopped.clone())));
    }
    // A non-member who asks for everything and must receive nothing.
    let outsider =
        Subscriber { name: "sub-outsider".into(), user: "mallory".into(), spaces: spaces.clone(), urls: urls_from(0) };
    subscriber_tasks.push(tokio::spawn(outsider.run(recorder.clone(), Arc::default(), subscribers_stopped.clone())));

    // --- the nemesis
    let started = Instant::now();
    for fault in &plan {
        let at = Duration::from_millis(fault.at_ms);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let start_ms = recorder.now_ms();
        let target = apply(&mut cluster, fault, args.regions as u8).await?;
        eprintln!(
            "chaos: [{:>6.1} s] {} {} for {:.1} s",
            started.elapsed().as_secs_f64(),
            fault.kind.name(),
            target,
            fault.duration_ms as f64 / 1000.0
        );
        tokio::time::sleep(Duration::from_millis(fault.duration_ms)).await;
        note_exits(&mut cluster, &recorder);
        heal(&mut cluster, fault)?;
        recorder.push(Event::Fault { kind: fault.kind.name().into(), target, start_ms, end_ms: recorder.now_ms() });
    }
    note_exits(&mut cluster, &recorder);
    heal_everything(&mut cluster)?;
    let last_heal_ms = recorder.now_ms();
    if let Some(wait) = Duration::from_millis(run_ms).checked_sub(started.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    let _ = stop_writers.send(true);
    for writer in writers {
        let _ = writer.await;
    }
    eprintln!("chaos: faults over; checking liveness");

    // --- liveness: every space takes a post, every subscriber catches up
    let all_urls = urls_from(0);
    for space in &spaces {
        let key = format!("liveness-{space}");
        let deadline = Instant::now() + LIVENESS_BOUND;
        let mut connection = None;
        let mut ok = false;
        while !ok && Instant::now() < deadline {
            let posted = workload::post_until_settled(
                &recorder,
                "liveness",
                &users[0],
                &all_urls,
                &mut connection,
                space,
                (&key, &format!("liveness check of {space}")),
                Some(deadline),
            )
            .await;
            ok = posted.is_some();
        }
        recorder.push(Event::Liveness {
            space: space.clone(),
            ok,
            at_ms: recorder.now_ms().saturating_sub(last_heal_ms),
        });
    }
    let finals = converged_histories(&cluster, &spaces).await?;
    let final_len: std::collections::HashMap<&str, u64> =
        finals.iter().map(|(space, messages)| (space.as_str(), messages.len() as u64)).collect();
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        let behind = subscriber_cursors.iter().any(|(_, cursors)| {
            let cursors = cursors.lock().expect("cursors lock");
            spaces.iter().any(|space| cursors.get(space).copied().unwrap_or(0) < final_len[space.as_str()])
        });
        if !behind || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_subscribers.send(true);
    for task in subscriber_tasks {
        let _ = task.await;
    }
    for (name, cursors) in &subscriber_cursors {
        let cursors = cursors.lock().expect("cursors lock");
        for space in &spaces {
            let last_seq = cursors.get(space).copied().unwrap_or(0);
            recorder.push(Event::CaughtUp {
                subscriber: name.clone(),
                space: space.clone(),
                last_seq,
                caught_up: last_seq >= final_len[space.as_str()],
            });
        }
    }
    note_exits(&mut cluster, &recorder);
    for node in &cluster.nodes {
        for space in &spaces {
            let messages = cluster
                .final_history(node.id, space)
                .await
                .with_context(|| format!("reading the final history of {space} on node-{}", node.id))?;
            recorder.push(Event::Final { node: format!("node-{}", node.id), space: space.clone(), messages });
        }
    }
    cluster.stop_all();

    // --- verdict and report
    let events = recorder.events();
    let report = checker::check(&events);
    std::fs::write(args.out.join("history.jsonl"), to_jsonl(&events))?;
    let summary = report::summary(&args, seed, &plan, &events, &report, last_heal_ms);
    std::fs::write(args.out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    std::fs::write(args.out.join("report.md"), report::markdown(&summary))?;
    std::fs::write(args.out.join("timeline.svg"), report::timeline_svg(&events, run_ms.max(recorder.now_ms())))?;
    Ok(ChaosOutcome { report, out: args.out })
}

/// Records the processes that exited by themselves (a liveness failure).
fn note_exits(cluster: &mut ChaosCluster, recorder: &Recorder) {
    for (process, status) in cluster.exited_by_themselves() {
        eprintln!("chaos: {process} exited by itself ({status})");
        recorder.push(Event::Exited { process, status, at_ms: recorder.now_ms() });
    }
}

fn latency_pairs(regions: usize, latency_ms: &[u64]) -> Vec<((u8, u8), u64)> {
    let mut pairs = Vec::new();
    let mut index = 0;
    for a in 1..=regions as u8 {
        for b in a + 1..=regions as u8 {
            let ms = latency_ms.get(index).or(latency_ms.last()).copied().unwrap_or(0);
            pairs.push(((a, b), ms));
            index += 1;
        }
    }
    pairs
}

async fn create_spaces(cluster: &ChaosCluster, spaces: &[String], users: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for space in spaces {
        loop {
            let created = match cluster.any_client().await {
                Some(mut client) => client
                    .create_space(pb::CreateSpaceRequest {
                        name: space.clone(),
                        members: users.to_vec(),
                        attrs: [("org".to_string(), "chaos".to_string())].into_iter().collect(),
                    })
                    .await
                    .is_ok(),
                None => false,
            };
            if created {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "could not create space {space}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Injects a fault; returns what it hit, for the record.
async fn apply(cluster: &mut ChaosCluster, fault: &PlannedFault, regions: u8) -> anyhow::Result<String> {
    let names = cluster.region_names.clone();
    let region_name = |region: u8| names[region as usize - 1].clone();
    Ok(match fault.kind {
        FaultKind::KillRegion => {
            for id in cluster.nodes_of(fault.target) {
                cluster.kill_node(id);
            }
            cluster.kill_gateway(fault.target);
            region_name(fault.target)
        }
        FaultKind::PartitionRegion => {
            let all: Vec<u8> = (1..=regions).collect();
            cluster.proxy.partition(fault.target, &all);
            region_name(fault.target)
        }
        FaultKind::KillLeader => match cluster.leader().await {
            Some(leader) => {
                cluster.kill_node(leader);
                format!("node-{leader}")
            }
            None => "none (no leader)".into(),
        },
        FaultKind::Pause => {
            cluster.pause_node(fault.target as u64, true);
            format!("node-{}", fault.target)
        }
        FaultKind::KillAll => {
            for id in 1..=cluster.nodes.len() as u64 {
                cluster.kill_node(id);
            }
            "all nodes".into()
        }
        FaultKind::KillGateway => {
            cluster.kill_gateway(fault.target);
            format!("gateway-{}", region_name(fault.target))
        }
        FaultKind::WipeDisk => {
            for id in cluster.nodes_of(fault.target) {
                cluster.wipe_node(id)?;
            }
            region_name(fault.target)
        }
        FaultKind::DiskFull => {
            cluster.fill_disk(fault.target as u64)?;
            format!("node-{}", fault.target)
        }
    })
}

fn heal(cluster: &mut ChaosCluster, fault: &PlannedFault) -> anyhow::Result<()> {
    match fault.kind {
        FaultKind::PartitionRegion => cluster.proxy.heal_all(),
        FaultKind::Pause => cluster.pause_node(fault.target as u64, false),
        FaultKind::DiskFull => {
            cluster.free_disk(fault.target as u64);
            heal_everything(cluster)?
        }
        _ => heal_everything(cluster)?,
    }
    Ok(())
}

/// Restarts whatever is down, continues whatever is paused, heals the net.
fn heal_everything(cluster: &mut ChaosCluster) -> anyhow::Result<()> {
    cluster.proxy.heal_all();
    for id in 1..=cluster.nodes.len() as u64 {
        if cluster.nodes[id as usize - 1].paused {
            cluster.pause_node(id, false);
        }
        cluster.start_node(id)?;
    }
    for region in 1..=cluster.gateways.len() as u8 {
        cluster.start_gateway(region)?;
    }
    Ok(())
}

/// Waits until every replica of every space cluster has applied as far as
/// the most advanced replica of that cluster (bounded), then returns the
/// longest history of each space.
async fn converged_histories(
    cluster: &ChaosCluster,
    spaces: &[String],
) -> anyhow::Result<Vec<(String, Vec<crate::chaos::history::FinalMessage>)>> {
    let deadline = Instant::now() + LIVENESS_BOUND;
    loop {
        let mut applied = Vec::new();
        for node in &cluster.nodes {
            applied.push(cluster.applied_indexes(node.id).await);
        }
        let all_answer = applied.iter().all(Option::is_some);
        let mut highest: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
        for (group, index) in applied.iter().flatten().flatten() {
            let high = highest.entry(*group).or_insert(0);
            *high = (*high).max(*index);
        }
        let converged = applied.iter().flatten().all(|node| node.iter().all(|(group, index)| highest[group] == *index));
        if (all_answer && converged) || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut finals = Vec::new();
    for space in spaces {
        let mut longest = Vec::new();
        for node in &cluster.nodes {
            if let Ok(messages) = cluster.final_history(node.id, space).await {
                if messages.len() > longest.len() {
                    longest = messages;
                }
            }
        }
        finals.push((space.clone(), longest));
    }
    Ok(finals)
}
