//! `spaceraft bench failover`: delivery latency through a gateway across the
//! loss of the replica (and region) it follows, with one upstream and with
//! two (redundant mode), measured in the same run.
//!
//! Each run starts a fresh 3-region cluster (node processes, fsync on) and
//! a gateway in the region of a follower, so losing that region's node costs
//! the gateway its upstream but leaves commits running. A publisher posts at
//! a fixed rate to the leader; a WebSocket reader on the gateway records,
//! per message, the time from post to delivery. At `--fault-at-secs` the
//! followed node is frozen (`stop`: SIGSTOP, like a region that vanishes
//! without closing its connections) or killed (`kill`: SIGKILL, the kernel
//! resets its connections at once).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::cluster::BenchCluster;
use crate::gateway::config::UpstreamConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// SIGSTOP: the node freezes; its connections stay open and silent.
    Stop,
    /// SIGKILL: the node dies; its connections are reset.
    Kill,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FailoverBenchArgs {
    /// Seconds of posting per run.
    #[arg(long, default_value_t = 12)]
    pub secs: u64,
    /// When the followed node is lost, in seconds from the start of posting.
    #[arg(long, default_value_t = 4)]
    pub fault_at_secs: u64,
    /// Posts per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// How the followed node is lost: frozen (stop) or killed (kill).
    #[arg(long, value_enum, default_value_t = Fault::Stop)]
    pub fault: Fault,
    /// First port of the runs' clusters (each run uses a few from here).
    #[arg(long, default_value_t = 7301)]
    pub base_port: u16,
    /// The gateway's silence bound (upstream.silence_ms_max).
    #[arg(long, default_value_t = UpstreamConfig::default().silence_ms_max)]
    pub silence_ms_max: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverRun {
    pub upstreams: usize,
    pub fault: Fault,
    pub posted: u64,
    pub delivered: u64,
    /// Deliveries out of order or repeated (must be 0).
    pub anomalies: u64,
    pub before_p50_ms: f64,
    pub before_p99_ms: f64,
    /// Messages posted in the 5 s after the fault.
    pub after_p50_ms: f64,
    pub after_p99_ms: f64,
    pub after_max_ms: f64,
    /// Messages of that window delivered more than 250 ms after their post.
    pub after_delayed_over_250ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub runs: Vec<FailoverRun>,
}

/// One message's post time (from the run's start) and delivery latency.
type Sample = (Duration, Duration);

pub async fn failover(args: FailoverBenchArgs) -> anyhow::Result<FailoverReport> {
    let mut runs = Vec::new();
    for (run_index, upstreams) in [1usize, 2].into_iter().enumerate() {
        eprintln!("run {}: {upstreams} upstream(s), fault {:?}", run_index + 1, args.fault);
        let base_port = args.base_port + run_index as u16 * 10;
        runs.push(run_once(&args, upstreams, base_port).await?);
    }
    Ok(FailoverReport { runs })
}

async fn run_once(args: &FailoverBenchArgs, upstreams: usize, base_port: u16) -> anyhow::Result<FailoverRun> {
    let mut cluster = BenchCluster::start(base_port).await?;
    let victim = cluster.follower().clone();
    let victim_id = victim.node_id;
    cluster.create_space("bench", &["publisher".into(), "reader".into()]).await?;
    let upstream =
        UpstreamConfig { redundant: upstreams == 2, silence_ms_max: args.silence_ms_max, ..Default::default() };
    let gateway_config = cluster.gateway_config(&victim.region, upstream);
    let gateway = crate::gateway::server::start(gateway_config).await?;
    let connected_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = gateway.state.status();
        let ready = status.upstreams.len() == upstreams && status.upstreams.iter().all(|slot| slot.connected);
        if ready && status.upstreams[0].region == victim.region {
            break;
        }
        anyhow::ensure!(Instant::now() < connected_deadline, "gateway did not follow its region's node");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The reader: records (post time, latency) per seq.
    let url = format!("ws://{}/v1/ws", gateway.http_addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    let hello = serde_json::json!({"type": "hello", "user": "reader", "cursors": {"bench": 0}});
    ws.send(Message::text(hello.to_string())).await?;
    let start = Instant::now();
    let samples: Arc<Mutex<BTreeMap<u64, Sample>>> = Arc::default();
    let anomalies = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (samples, anomalies) = (samples.clone(), anomalies.clone());
        tokio::spawn(async move {
            let mut last_seq = 0u64;
            while let Some(Ok(frame)) = ws.next().await {
                let Message::Text(text) = frame else { continue };
                let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                if event["type"] != "message" {
                    continue;
                }
                let received = start.elapsed();
                let seq = event["seq"].as_u64().unwrap_or(0);
                if seq != last_seq + 1 {
                    anomalies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                last_seq = last_seq.max(seq);
                let posted_at = Duration::from_nanos(event["body"].as_str().and_then(|b| b.parse().ok()).unwrap_or(0));
                samples.lock().expect("samples").insert(seq, (posted_at, received.saturating_sub(posted_at)));
            }
        })
    };

    // The publisher: `rate` posts a second; the fault comes on time.
    let mut fault_at = None;
    let inject = || -> anyhow::Result<()> {
        if fault_at.is_none() && start.elapsed() >= Duration::from_secs(args.fault_at_secs) {
            cluster.signal(victim_id, if args.fault == Fault::Stop { "-STOP" } else { "-KILL" })?;
            fault_at = Some(start.elapsed());
        }
        Ok(())
    };
    let body = || start.elapsed().as_nanos().to_string();
    let posted = cluster.publish_at_rate("bench", "publisher", args.rate, args.secs, inject, body).await?;
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while (samples.lock().expect("samples").len() as u64) < posted && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reader.abort();
    gateway.stop().await;
    cluster.stop().await;

    let fault_at = fault_at.context("the run ended before the fault")?;
    let samples = samples.lock().expect("samples").clone();
    let mut before = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut after = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut delayed = 0;
    for (posted_at, latency) in samples.values() {
        let micros = (latency.as_micros() as u64).max(1);
        if *posted_at < fault_at {
            before.record(micros)?;
        } else if *posted_at < fault_at + Duration::from_secs(5) {
            after.record(micros)?;
            if *latency > Duration::from_millis(250) {
                delayed += 1;
            }
        }
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(FailoverRun {
        upstreams,
        fault: args.fault,
        posted,
        delivered: samples.len() as u64,
        anomalies: anomalies.load(std::sync::atomic::Ordering::Relaxed),
        before_p50_ms: ms(before.value_at_quantile(0.5)),
        before_p99_ms: ms(before.value_at_quantile(0.99)),
        after_p50_ms: ms(after.value_at_quantile(0.5)),
        after_p99_ms: ms(after.value_at_quantile(0.99)),
        after_max_ms: ms(after.max()),
        after_delayed_over_250ms: delayed,
    })
}

pub fn print_failover_report(report: &FailoverReport) {
    println!(
        "{:<10} {:<6} {:>7} {:>9} {:>9} {:>12} {:>12} {:>11} {:>11} {:>10} {:>9}",
        "upstreams",
        "fault",
        "posted",
        "delivered",
        "anomalies",
        "before p50",
        "before p99",
        "after p50",
        "after p99",
        "after max",
        ">250ms"
    );
    for run in &report.runs {
        println!(
            "{:<10} {:<6} {:>7} {:>9} {:>9} {:>9.2} ms {:>9.2} ms {:>8.2} ms {:>8.2} ms {:>7.0} ms {:>9}",
            run.upstreams,
            format!("{:?}", run.fault).to_lowercase(),
            run.posted,
            run.delivered,
            run.anomalies,
            run.before_p50_ms,
            run.before_p99_ms,
            run.after_p50_ms,
            run.after_p99_ms,
            run.after_max_ms,
            run.after_delayed_over_250ms
        );
    }
    if let [one, two] = report.runs.as_slice() {
        if two.after_max_ms > 0.0 {
            println!(
                "worst delivery after the fault: 1 upstream {:.0} ms, 2 upstreams {:.0} ms ({:.1}x)",
                one.after_max_ms,
                two.after_max_ms,
                one.after_max_ms / two.after_max_ms
            );
        }
    }
}
