//! `spaceraft bench fanout`: one space, N subscribers, a publisher at a fixed
//! rate; delivered messages per second and delivery latency (post sent →
//! message received), through a gateway (WebSocket clients) and, as the peer
//! measured in the same run, through N direct `Subscribe` streams on a node.
//!
//! The gateway encodes each message once and shares one upstream stream for
//! all its clients; the node's Subscribe serves each subscriber from the store
//! on its own. Both runs use a fresh 3-region cluster of node processes; the
//! gateway runs as its own process, with its default configuration, as it is
//! deployed. Clients connect from many loopback addresses (at most
//! [`CLIENTS_PER_SOURCE`] each: a gateway admits 256 connections per address),
//! a few hundred at a time, as a crowd of devices would.

use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// Clients that connect and catch up at once.
const CONNECTS_AT_ONCE: usize = 256;
/// Clients per source address (a gateway admits at most
/// `clients.connections_per_ip_max`, 256 by default, from one address).
const CLIENTS_PER_SOURCE: usize = 200;

/// The loopback address client `client` connects from: 127.1.0.1 for the
/// first [`CLIENTS_PER_SOURCE`], then 127.1.0.2, …
fn source_address(client: usize) -> IpAddr {
    let n = client / CLIENTS_PER_SOURCE;
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// The only fields of a gateway event the readers look at, borrowed from
/// the frame where they can be.
#[derive(serde::Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    body: std::borrow::Cow<'a, str>,
}

/// A gateway process of the run's cluster, with the default client bounds.
struct GatewayProcess {
    child: tokio::process::Child,
    http_addr: SocketAddr,
}

impl GatewayProcess {
    async fn start(cluster: &BenchCluster, region: &str, base_port: u16) -> anyhow::Result<GatewayProcess> {
        let mut config = cluster.gateway_config(region, Default::default());
        config.http_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base_port + 1000);
        config.grpc_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), base_port + 1001);
        let path = cluster.dir().join("gateway.toml");
        std::fs::write(&path, toml::to_string_pretty(&config)?)?;
        let log = path.with_extension("log");
        let child = crate::dev::spawn_process(&std::env::current_exe()?, "gateway", &path, &log)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(config.http_addr).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the gateway did not listen within 30 s (log: {})",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(GatewayProcess { child, http_addr: config.http_addr })
    }
}

/// Connects one WebSocket client from `source` and subscribes it to "fan".
async fn connect_reader(
    http_addr: SocketAddr,
    source: IpAddr,
    user: &str,
) -> anyhow::Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(http_addr).await?;
    stream.set_nodelay(true)?;
    // Small read buffers, as a device holds one connection, not 10,000.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(format!("ws://{http_addr}/v1/ws"), stream, Some(config)).await?;
    let hello = serde_json::json!({"type": "hello", "user": user});
    let subscribe = serde_json::json!({"type": "subscribe", "space": "fan"});
    ws.send(Message::text(hello.to_string())).await?;
    ws.send(Message::text(subscribe.to_string())).await?;
    Ok(ws)
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
    // Every subscriber is a member of the one space.
    let members_len = args.clients + 1;
    let mut cluster = BenchCluster::start_with(base_port, |config| {
        config.limits.members_len_max = config.limits.members_len_max.max(members_len as _);
    })
    .await?;
    let mut members: Vec<String> = (0..args.clients).map(|i| format!("reader{i}")).collect();
    members.push("publisher".into());
    cluster.create_space("fan", &members).await?;
    let follower = cluster.follower().clone();
    let start = Instant::now();
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut histograms: Vec<Latencies> = Vec::new();
    let mut readers = Vec::new();
    let ready = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(tokio::sync::Semaphore::new(CONNECTS_AT_ONCE));
    let mut gateway = if path == "gateway" {
        Some(GatewayProcess::start(&cluster, &follower.region, base_port).await?)
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
        let (received, ready, failed, user) =
            (received.clone(), ready.clone(), failed.clone(), format!("reader{client}"));
        let connecting = connecting.clone();
        if let Some(gateway) = &gateway {
            let http_addr = gateway.http_addr;
            readers.push(tokio::spawn(async move {
                let mut permit = Some(connecting.acquire_owned().await.expect("semaphore open"));
                let mut ws = match connect_reader(http_addr, source_address(client), &user).await {
                    Ok(ws) => ws,
                    Err(error) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("a client could not connect: {error:#}");
                        }
                        return;
                    }
                };
                while let Some(Ok(frame)) = ws.next().await {
                    let Message::Text(text) = frame else { continue };
                    let Ok(event) = serde_json::from_str::<Event>(&text) else { continue };
                    match &*event.kind {
                        "caught_up" if permit.take().is_some() => {
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        "message" => {
                            record(&mut latencies.lock().expect("latencies"), start, &event.body);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }));
        } else {
            let mut node = pb::client_client::ClientClient::new(channels[client % channels.len()].clone());
            readers.push(tokio::spawn(async move {
                let mut permit = Some(connecting.acquire_owned().await.expect("semaphore open"));
                let request = pb::SubscribeRequest { space: "fan".into(), user, from_seq: 0 };
                let Ok(response) = node.subscribe(request).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let mut stream = response.into_inner();
                while let Some(Ok(event)) = stream.next().await {
                    match event.event {
                        Some(pb::subscribe_event::Event::CaughtUp(_)) if permit.take().is_some() => {
                            ready.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(pb::subscribe_event::Event::Message(message)) => {
                            record(&mut latencies.lock().expect("latencies"), start, &message.body);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }));
        }
    }
    let connected = Instant::now();
    wait_ready(args.clients as u64, &ready, &failed).await?;
    eprintln!(
        "{} subscribers caught up in {:.1} s; posting {} posts/s for {} s",
        args.clients,
        connected.elapsed().as_secs_f64(),
        args.rate,
        args.secs
    );

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
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = publish_start.elapsed().as_secs_f64();
    let deliveries = received.load(Ordering::Relaxed);
    for reader in readers {
        reader.abort();
    }
    if let Some(gateway) = gateway.as_mut() {
        let _ = gateway.child.kill().await;
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

/// Waits until every client has caught up, with a progress bar on a
/// terminal; fails when a client could not connect, or after a minute plus
/// a second per hundred clients.
async fn wait_ready(clients: u64, ready: &AtomicU64, failed: &AtomicU64) -> anyhow::Result<()> {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(clients)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} subscribers caught up  {per_sec}")
            .expect("a valid template"),
    );
    let deadline = Instant::now() + Duration::from_secs(60 + clients / 100);
    loop {
        let (caught_up, failed) = (ready.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        bar.set_position(caught_up);
        if caught_up == clients {
            bar.finish_and_clear();
            return Ok(());
        }
        if failed > 0 || Instant::now() >= deadline {
            bar.abandon();
            anyhow::bail!("{caught_up} of {clients} subscribers caught up, {failed} could not connect");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
