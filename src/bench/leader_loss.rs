//! `spaceraft bench leader-loss`: how long posts stop when a space
//! cluster's leader is lost. Each trial starts a fresh 3-region cluster
//! (node processes, default configuration, fsync on), creates a space, and
//! runs closed-loop posters that retry a failed post, with the same
//! idempotency key, on the next node at once. Two seconds in, the leader's
//! node is killed (SIGKILL: the process and its region's node die) or
//! frozen (SIGSTOP: a paused or isolated leader, its connections open and
//! silent). The figure is the time from the fault to the first acknowledged
//! post sent after it (a reply already on its way when the fault hit says
//! nothing of recovery); every acknowledged post is then read back once, in
//! order.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::bench::cluster::BenchCluster;
use crate::bench::failover::Fault;
use crate::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct LeaderLossBenchArgs {
    /// Trials per fault, each on a fresh cluster.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// How the leader is lost: killed (kill) or frozen (stop); both when
    /// not given.
    #[arg(long, value_enum)]
    pub fault: Option<Fault>,
    /// Concurrent posters.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// First port of the trials' clusters.
    #[arg(long, default_value_t = 7351)]
    pub base_port: u16,
    /// How long a poster waits for one attempt before it sends the same
    /// post (same idempotency key) to the next node: what bounds the wait
    /// on a frozen leader, which can answer nothing.
    #[arg(long, default_value_t = 1000)]
    pub attempt_timeout_ms: u64,
    /// Also run every trial with the nodes' failure detector set to this
    /// `groups.down_after_ms` (and pings at a quarter of it), as the peer of
    /// the default in the same run.
    #[arg(long)]
    pub down_after_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaderLossTrial {
    pub fault: Fault,
    /// The nodes' `groups.down_after_ms`.
    pub down_after_ms: u64,
    /// From the fault to the next acknowledged post.
    pub gap_ms: f64,
    pub acked: u64,
    /// Acknowledged posts missing from, repeated in or out of order in the
    /// space's history (must be 0).
    pub anomalies: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaderLossReport {
    pub trials: Vec<LeaderLossTrial>,
}

/// One acknowledged post.
#[derive(Clone)]
struct Ack {
    at: Instant,
    /// When the attempt that was acknowledged was sent.
    sent: Instant,
    key: String,
    seq: u64,
}

/// The leader of the cluster holding `space`, from any node that answers.
async fn leader_of(addrs: &[String], cluster: u64) -> Option<u64> {
    for addr in addrs {
        let Ok(endpoint) = crate::raft::network::endpoint(addr, &Default::default(), None) else { continue };
        let Ok(Ok(channel)) = tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await else { continue };
        let mut admin = pb::admin_client::AdminClient::new(channel);
        let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_secs(2), admin.cluster_status(pb::ClusterStatusRequest {})).await
        else {
            continue;
        };
        let status = status.into_inner();
        if let Some(leader) = status.replicas.iter().find(|r| r.cluster_id == cluster && r.role == "leader") {
            return Some(leader.node_id);
        }
    }
    None
}

async fn trial(
    args: &LeaderLossBenchArgs,
    fault: Fault,
    down_after_ms: u64,
    number: usize,
) -> anyhow::Result<LeaderLossTrial> {
    let mut cluster = BenchCluster::start_with(args.base_port, |config| {
        if config.groups.down_after_ms != down_after_ms {
            config.groups.down_after_ms = down_after_ms;
            config.groups.ping_interval_ms = (down_after_ms / 4).max(50);
        }
    })
    .await?;
    let attempt_timeout = Duration::from_millis(args.attempt_timeout_ms.max(1));
    let space = "leader-loss";
    cluster.create_space(space, &["poster".into()]).await?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|c| c.advertise_addr().to_string()).collect();
    let info = cluster.client.get_space(pb::GetSpaceRequest { name: space.into() }).await?.into_inner();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every acknowledgement: when, when its attempt was sent, and its
    // (key, seq).
    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    let mut posters = Vec::new();
    for client in 0..args.clients {
        let (addrs, stop, acks) = (addrs.clone(), stop.clone(), acks.clone());
        posters.push(tokio::spawn(async move {
            let mut stubs = Vec::new();
            for addr in &addrs {
                let endpoint = crate::raft::network::endpoint(addr, &Default::default(), None)?;
                stubs.push(pb::client_client::ClientClient::new(endpoint.connect_lazy()));
            }
            let (mut node, mut n) = (client % stubs.len(), 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("c{client}-{n}");
                loop {
                    let request = pb::PostRequest {
                        space: space.into(),
                        author: "poster".into(),
                        body: format!("post {key}"),
                        idempotency_key: key.clone(),
                    };
                    let (call, sent) = (stubs[node].post(request), Instant::now());
                    match tokio::time::timeout(attempt_timeout, call).await {
                        Ok(Ok(reply)) => {
                            let ack = Ack { at: Instant::now(), sent, key: key.clone(), seq: reply.into_inner().seq };
                            acks.lock().expect("ack lock").push(ack);
                            break;
                        }
                        _ if stop.load(std::sync::atomic::Ordering::Relaxed) => return Ok(()),
                        // Anything else: the same post on the next node.
                        _ => node = (node + 1) % stubs.len(),
                    }
                }
            }
            Ok::<(), anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = leader_of(&addrs, info.cluster_id).await.context("the space's cluster has no leader")?;
    let signal = match fault {
        Fault::Kill => "-KILL",
        Fault::Stop => "-STOP",
    };
    cluster.signal(leader, signal)?;
    let faulted = Instant::now();
    let deadline = faulted + Duration::from_secs(30);
    let gap = loop {
        // Replies already on their way when the fault hit do not count:
        // the next acknowledged post is the first one sent after it.
        let first_after =
            acks.lock().expect("ack lock").iter().filter(|ack| ack.sent > faulted).map(|ack| ack.at).min();
        if let Some(at) = first_after {
            break at - faulted;
        }
        anyhow::ensure!(Instant::now() < deadline, "no post was acknowledged within 30 s of the fault");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for poster in posters {
        poster.await??;
    }
    // Every acknowledged post exactly once, at its seq, in the history.
    let survivor = cluster.nodes.iter().find(|c| c.node_id != leader).context("a survivor")?;
    let endpoint = crate::raft::network::endpoint(&survivor.advertise_addr().to_string(), &Default::default(), None)?;
    let mut client = pb::client_client::ClientClient::new(endpoint.connect().await?);
    let acked = acks.lock().expect("ack lock").clone();
    let mut history = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = client
            .history(pb::HistoryRequest {
                space: space.into(),
                user: "poster".into(),
                from_seq,
                limit: 1000,
                linearizable: true,
            })
            .await?
            .into_inner();
        let Some(last) = page.messages.last().map(|m| m.seq) else { break };
        history.extend(page.messages);
        from_seq = last + 1;
    }
    let mut anomalies = 0u64;
    for Ack { key, seq, .. } in &acked {
        let found: Vec<_> = history.iter().filter(|m| m.body == format!("post {key}")).collect();
        if found.len() != 1 || found[0].seq != *seq {
            anomalies += 1;
        }
    }
    anomalies += history.windows(2).filter(|pair| pair[1].seq <= pair[0].seq).count() as u64;
    cluster.stop().await;
    eprintln!(
        "trial {number}, down_after_ms {down_after_ms}: {fault:?} leader node {leader}: next post acknowledged {} ms later",
        gap.as_millis()
    );
    Ok(LeaderLossTrial {
        fault,
        down_after_ms,
        gap_ms: gap.as_secs_f64() * 1000.0,
        acked: acked.len() as u64,
        anomalies,
    })
}

pub async fn leader_loss(args: LeaderLossBenchArgs) -> anyhow::Result<LeaderLossReport> {
    let faults = match args.fault {
        Some(fault) => vec![fault],
        None => vec![Fault::Kill, Fault::Stop],
    };
    let default_down_after = crate::config::GroupsConfig::default().down_after_ms;
    let detectors: Vec<u64> = std::iter::once(default_down_after).chain(args.down_after_ms).collect();
    let mut trials = Vec::new();
    for fault in faults {
        for number in 1..=args.trials {
            // Alternating, so neither setting always runs first.
            for down_after_ms in &detectors {
                trials.push(trial(&args, fault, *down_after_ms, number).await?);
            }
        }
    }
    Ok(LeaderLossReport { trials })
}

pub fn print_leader_loss_report(report: &LeaderLossReport) {
    let mut detectors: Vec<u64> = report.trials.iter().map(|t| t.down_after_ms).collect();
    detectors.sort();
    detectors.dedup();
    for (fault, down_after_ms) in
        [Fault::Kill, Fault::Stop].into_iter().flat_map(|f| detectors.iter().map(move |d| (f, *d)))
    {
        let trials: Vec<&LeaderLossTrial> =
            report.trials.iter().filter(|t| t.fault == fault && t.down_after_ms == down_after_ms).collect();
        let mut gaps: Vec<f64> = trials.iter().map(|t| t.gap_ms).collect();
        if gaps.is_empty() {
            continue;
        }
        gaps.sort_by(f64::total_cmp);
        let anomalies: u64 = trials.iter().map(|t| t.anomalies).sum();
        let acked: u64 = trials.iter().map(|t| t.acked).sum();
        println!(
            "{fault:?}, down_after_ms {down_after_ms}: next acknowledged post after {:.0} ms median, {:.0} ms max ({} trials; {acked} posts acknowledged, {anomalies} lost, repeated or out of order)",
            gaps[gaps.len() / 2],
            gaps[gaps.len() - 1],
            gaps.len()
        );
    }
}
