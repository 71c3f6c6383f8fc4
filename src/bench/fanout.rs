//! `spaceraft bench fanout`: one space, N subscribers, a publisher at a fixed
//! rate; delivered messages per second and delivery latency (post sent →
//! message received), through a gateway (WebSocket clients) and, as the peer
//! measured in the same run, through N direct `Subscribe` streams on a node.
//!
//! The gateway encodes each message once and shares one upstream stream for
//! all its clients; the node's Subscribe serves each subscriber from the store
//! on its own. Both runs use a fresh 3-region cluster of node processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use crate::bench::cluster::BenchCluster;
use crate::pb;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutBenchArgs {
    /// Subscribers of the space.
    #[arg(long, default_value_t = 500)]
    pub clients: usize,
    /// Posts per second.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of posting per run.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// First port of the runs' clusters.
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Skip the peer run (direct node subscriptions).
    #[arg(long)]
    pub gateway_only: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutRun {
    /// "gateway" or "node-subscribe".
    pub path: String,
    pub clients: usize,
    pub posted: u64,
    pub deliveries: u64,
    /// Deliveries expected (posted × clients) that never arrived.
    pub missing: u64,
    pub deliveries_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub runs: Vec<FanoutRun>,
}

/// One subscriber's latencies, merged at the end.
type Latencies = Arc<std::sync::Mutex<Histogram<u64>>>;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Records one delivery: the body starts with the post's send time in
/// nanoseconds since `start`.
fn record(histogram: &mut Histogram<u64>, start: Instant, body: &str) {
    let sent = body.split(' ').next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let latency = start.elapsed().saturating_sub(Duration::from_nanos(sent));
    let _ = histogram.record((latency.as_micros() as u64).max(1));
}

pub async fn fanout(args: FanoutBenchArgs) -> anyhow::Result<FanoutReport> {
    let mut runs = Vec::new();
    let paths: &[&str] = if args.gateway_only { &["gateway"] } else { &["gateway", "node-subscribe"] };
    for (run_index, path) in paths.iter().copied().enumerate() {
        eprintln!("run {}: {} subscribers through {path}", run_index + 1, args.clients);
        runs.push(run_once(&args, path, args.base_port + run_index as u16 * 10).await?);
    }
    Ok(FanoutReport { runs })
}

async fn run_once(args: &FanoutBenchArgs, path: &str, base_port: u16) -> anyhow::Result<FanoutRun> {
    let mut cluster = BenchCluster::start(base_port).await?;
    let mut members: Vec<String> = (0..args.clients).map(|i| format!("reader{i}")).collect();
    members.push("publisher".into());
    cluster.create_space("fan", &members).await?;
    let follower = cluster.follower().clone();
    let start = Instant::now();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut histograms: Vec<Latencies> = Vec::new();
    let mut readers = Vec::new();
    let ready = Arc::new(tokio::sync::Semaphore::new(0));
    let gateway = if path == "gateway" {
        let config = cluster.gateway_config(&follower.region, Default::default());
        Some(crate::gateway::server::start(config).await?)
    } else {
        None
    };
    let channels = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            let endpoint =
                crate::raft::network::endpoint(&follower.advertise_addr().to_string(), &Default::default(), None)?;
            channels.push(endpoint.connect().await?);
        }
        channels
    };
    for client in 0..args.clients {
        let latencies: Latencies = Arc::new(std::sync::Mutex::new(histogram()));
        histograms.push(latencies.clone());
        let (received, ready, user) = (received.clone(), ready.clone(), format!("reader{client}"));
        if let Some(gateway) = &gateway {
            let url = format!("ws://{}/v1/ws", gateway.http_addr);
            readers.push(tokio::spawn(async move {
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else { return };
                let hello = serde_json::json!({"type": "hello", "user": user});
                let subscribe = serde_json::json!({"type": "subscribe", "space": "fan"});
                if ws.send(Message::text(hello.to_string())).await.is_err()
                    || ws.send(Message::text(subscribe.to_string())).await.is_err()
                {
                    return;
                }
                while let Some(Ok(frame)) = ws.next().await {
                    let Message::Text(text) = frame else { continue };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                    match event["type"].as_str() {
                        Some("caught_up") => ready.add_permits(1),
                        Some("message") => {
                            record(
                                &mut latencies.lock().expect("latencies"),
                                start,
                                event["body"].as_str().unwrap_or(""),
                            );
                            received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }));
        } else {
            let mut node = pb::client_client::ClientClient::new(channels[client % channels.len()].clone());
            readers.push(tokio::spawn(async move {
                let request = pb::SubscribeRequest { space: "fan".into(), user, from_seq: 0 };
                let Ok(response) = node.subscribe(request).await else { return };
                let mut stream = response.into_inner();
                while let Some(Ok(event)) = stream.next().await {
                    match event.event {
                        Some(pb::subscribe_event::Event::CaughtUp(_)) => ready.add_permits(1),
                        Some(pb::subscribe_event::Event::Message(message)) => {
                            record(&mut latencies.lock().expect("latencies"), start, &message.body);
                            received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        None => {}
                    }
                }
            }));
        }
    }
    let all_ready = ready.acquire_many(args.clients as u32);
    tokio::time::timeout(Duration::from_secs(60), all_ready)
        .await
        .map_err(|_| anyhow::anyhow!("subscribers not ready"))??
        .forget();

    // Publish at the rate.
    let publish_start = Instant::now();
    let body = || {
        let sent = start.elapsed().as_nanos().to_string();
        let padding = args.size.saturating_sub(sent.len() + 1);
        format!("{sent} {}", "x".repeat(padding))
    };
    let posted = cluster.publish_at_rate("fan", "publisher", args.rate, args.secs, || Ok(()), body).await?;
    let expected = posted * args.clients as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    while received.load(std::sync::atomic::Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let deliveries = received.load(std::sync::atomic::Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }
    if let Some(gateway) = gateway {
        gateway.stop().await;
    }
    cluster.stop().await;
    let mut merged = histogram();
    for latencies in histograms {
        merged.add(&*latencies.lock().expect("latencies"))?;
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(FanoutRun {
        path: path.to_string(),
        clients: args.clients,
        posted,
        deliveries,
        missing: expected.saturating_sub(deliveries),
        deliveries_per_sec: deliveries as f64 / elapsed,
        p50_ms: ms(merged.value_at_quantile(0.5)),
        p99_ms: ms(merged.value_at_quantile(0.99)),
        max_ms: ms(merged.max()),
    })
}

pub fn print_fanout_report(report: &FanoutReport) {
    println!(
        "{:<15} {:>8} {:>7} {:>11} {:>8} {:>14} {:>9} {:>9} {:>9}",
        "path", "clients", "posted", "deliveries", "missing", "deliveries/s", "p50", "p99", "max"
    );
    for run in &report.runs {
        println!(
            "{:<15} {:>8} {:>7} {:>11} {:>8} {:>14.0} {:>6.1} ms {:>6.1} ms {:>6.0} ms",
            run.path,
            run.clients,
            run.posted,
            run.deliveries,
            run.missing,
            run.deliveries_per_sec,
            run.p50_ms,
            run.p99_ms,
            run.max_ms
        );
    }
    if let [gateway, node] = report.runs.as_slice() {
        if gateway.p99_ms > 0.0 {
            println!(
                "gateway vs node subscribe: {:.2}x the deliveries/s, p99 latency {:.1}x lower",
                gateway.deliveries_per_sec / node.deliveries_per_sec.max(1.0),
                node.p99_ms / gateway.p99_ms
            );
        }
    }
}
