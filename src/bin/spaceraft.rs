//! `spaceraft`: the node process, the local dev cluster and the benchmarks.

/// mimalloc: the hot path allocates many small buffers (gRPC frames, entries,
/// records); glibc's allocator cost about a sixth of the CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spaceraft::config::{parse_peer, FlagOverrides, NodeConfig, PeerConfig, SecurityFlags};

#[derive(Parser, Debug)]
#[command(name = "spaceraft", version, about = "Geo-replicated, strongly consistent message store for chat spaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one node.
    Node(NodeArgs),
    /// Run one gateway: follows replicas, serves WebSocket/gRPC clients and the web page.
    Gateway(GatewayArgs),
    /// Run a local multi-region cluster (one process per node).
    Dev(spaceraft::dev::DevArgs),
    /// Make a cluster's CA, certificates and token signing key (files that
    /// exist are kept: run it again to add a node's certificate).
    Certs(CertsArgs),
    /// A chaos run: a real cluster, a workload, seeded faults, a checker and a report.
    Chaos(spaceraft::chaos::run::ChaosArgs),
    /// Seeded, deterministic fault runs of in-process Raft groups under a
    /// simulated clock; one seed replays exactly.
    Sim(spaceraft::sim::cli::SimArgs),
    /// Benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// One space, N subscribers: deliveries/s and latency through a gateway
    /// and through direct node subscriptions (starts its own clusters).
    Fanout {
        #[command(flatten)]
        args: spaceraft::bench::fanout::FanoutBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delivery latency through a gateway across the loss of the replica it
    /// follows, with one upstream and with two (starts its own clusters).
    Failover {
        #[command(flatten)]
        args: spaceraft::bench::failover::FailoverBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Idle CPU and memory per node with many space clusters, all up and
    /// with a region killed, with quiescence on and off; or (--throughput)
    /// posts a second over 100 clusters against 1 (starts its own clusters).
    Groups {
        #[command(flatten)]
        args: spaceraft::bench::groups::GroupsBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Spaces placed by their attributes against placed by a hash of their
    /// names, on a generated platform: clusters per user, upstreams per
    /// gateway (no cluster is started).
    Placement {
        #[command(flatten)]
        args: spaceraft::bench::placement::PlacementBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// How long posts stop when a space cluster's leader is killed or
    /// frozen (starts its own clusters).
    LeaderLoss {
        #[command(flatten)]
        args: spaceraft::bench::leader_loss::LeaderLossBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One closed-loop generator against Spaceraft, etcd or NATS
    /// JetStream (a running cluster of each): writes/s and latency.
    Peers {
        #[command(flatten)]
        args: spaceraft::bench::peers::PeersBenchArgs,
        /// Print the report as one JSON line (for `bench peers-report`).
        #[arg(long)]
        json: bool,
    },
    /// The JSON lines of `bench peers` runs as a Markdown table (printed)
    /// and SVG plots.
    PeersReport {
        #[command(flatten)]
        args: spaceraft::bench::peers::report::PeersReportArgs,
    },
    /// Concurrent posters; throughput and commit latency.
    Post {
        #[command(flatten)]
        args: spaceraft::bench::PostBenchArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
struct NodeArgs {
    /// TOML config file; env SPACERAFT_* and these flags override it.
    #[arg(long, env = "SPACERAFT_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id: unique in the deployment, never reused (node_id).
    #[arg(long)]
    node_id: Option<u64>,
    /// The region this node runs in (region).
    #[arg(long)]
    region: Option<String>,
    /// host:port to listen on (listen_addr).
    #[arg(long)]
    listen: Option<String>,
    /// host:port peers and clients use to reach this node (advertise_addr;
    /// default: the listen address).
    #[arg(long)]
    advertise: Option<String>,
    /// Where this node keeps its Raft log, state machine and snapshots
    /// (data_dir); created if missing.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initialize the space cluster with the peers if it is new (idempotent).
    #[arg(long)]
    bootstrap: bool,
    /// A voter of the space cluster, as ID=REGION@HOST:PORT; repeatable.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<PeerConfig>,
    /// No TLS and no authentication (security.insecure): every caller may
    /// do anything. Announced in the log and by `spacectl cluster status`.
    #[arg(long)]
    insecure: bool,
    /// A one-time token from `spacectl node join-token` (join_token), for a
    /// node joining a running cluster.
    #[arg(long, env = "SPACERAFT_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CertsArgs {
    /// Where the files go (created; existing files are kept).
    #[arg(long, default_value = "./certs")]
    dir: PathBuf,
    /// The cluster's id (16 hex digits); made when the directory has none.
    #[arg(long)]
    cluster_id: Option<String>,
    /// A node id to make a certificate for; repeatable.
    #[arg(long = "node")]
    nodes: Vec<u64>,
    /// A gateway name (its region) to make a certificate for; repeatable.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// An operator name to make a client certificate for; repeatable.
    #[arg(long = "operator")]
    operators: Vec<String>,
    /// A host name or IP address the nodes and gateways are reached at
    /// (put in their certificates); repeatable.
    #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
    hosts: Vec<String>,
    /// Validity of the certificates.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(clap::Args, Debug)]
struct GatewayArgs {
    /// TOML config file; env SPACERAFT_GATEWAY_* and these flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The region this gateway runs in: it follows a replica there when one
    /// is healthy.
    #[arg(long)]
    region: Option<String>,
    /// host:port for the page, /v1/ws and /v1/status.
    #[arg(long)]
    http: Option<String>,
    /// host:port for the gRPC Gateway service.
    #[arg(long)]
    grpc: Option<String>,
    /// A node to follow and forward to, as REGION@HOST:PORT; repeatable.
    #[arg(long = "node", value_parser = spaceraft::gateway::config::parse_node)]
    nodes: Vec<spaceraft::gateway::config::NodeEndpoint>,
    /// No TLS, and a client's claimed name is believed (security.insecure).
    #[arg(long)]
    insecure: bool,
}

/// A benchmark's report as JSON, or as the benchmark prints it.
fn print_report<T: serde::Serialize>(report: &T, json: bool, print: fn(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print(report);
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPACERAFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn"));
    // Colour only for a person at a terminal: log files and collectors get
    // plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc commits its arenas eagerly, and
    // with huge pages each small allocation of each of thousands of Raft
    // groups (openraft preallocates buffers per group) pinned a whole 2 MiB
    // page: 2.6 MiB resident per idle group instead of 0.3. The kernel
    // checks the flag at fault time, so it covers arenas mapped before main.
    // SAFETY: prctl with integer arguments only changes this process's flag.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let cli = Cli::parse();
    if let Command::Sim(args) = cli.command {
        // Each worker thread runs its own paused-clock runtimes; logs only
        // when asked for, as they would drown the summary.
        if std::env::var_os("SPACERAFT_LOG").is_some() {
            init_tracing();
        }
        return match spaceraft::sim::cli::main(args) {
            Ok(code) => code,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::from(2)
            }
        };
    }
    init_tracing();
    // A gateway holds a socket per client, a node one per peer and client:
    // the soft limit on open files (often 1,024) goes up to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Node(args) => run_node(args).await,
            Command::Gateway(args) => run_gateway(args).await,
            Command::Chaos(args) => run_chaos(args).await,
            Command::Dev(args) => spaceraft::dev::run(args).await,
            Command::Certs(args) => make_certs(args),
            Command::Sim(_) => unreachable!("runs without the shared runtime"),
            Command::Bench(BenchCommand::Fanout { args, json }) => print_report(
                &spaceraft::bench::fanout::fanout(args).await?,
                json,
                spaceraft::bench::fanout::print_fanout_report,
            ),
            Command::Bench(BenchCommand::Failover { args, json }) => print_report(
                &spaceraft::bench::failover::failover(args).await?,
                json,
                spaceraft::bench::failover::print_failover_report,
            ),
            Command::Bench(BenchCommand::Groups { args, json }) => print_report(
                &spaceraft::bench::groups::groups(args).await?,
                json,
                spaceraft::bench::groups::print_groups_report,
            ),
            Command::Bench(BenchCommand::Placement { args, json }) => print_report(
                &spaceraft::bench::placement::placement(&args),
                json,
                spaceraft::bench::placement::print_placement_report,
            ),
            Command::Bench(BenchCommand::LeaderLoss { args, json }) => print_report(
                &spaceraft::bench::leader_loss::leader_loss(args).await?,
                json,
                spaceraft::bench::leader_loss::print_leader_loss_report,
            ),
            Command::Bench(BenchCommand::Peers { args, json }) => {
                let report = spaceraft::bench::peers::run(args).await?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    spaceraft::bench::peers::print(&report);
                }
                Ok(())
            }
            Command::Bench(BenchCommand::PeersReport { args }) => {
                print!("{}", spaceraft::bench::peers::report::run(&args)?);
                Ok(())
            }
            Command::Bench(BenchCommand::Post { args, json }) => {
                print_report(&spaceraft::bench::post(args).await?, json, spaceraft::bench::print_post_report)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let flags = FlagOverrides {
        node_id: args.node_id,
        region: args.region,
        listen_addr: args.listen,
        advertise_addr: args.advertise,
        data_dir: args.data_dir,
        bootstrap: args.bootstrap.then_some(true),
        peers: (!args.peers.is_empty()).then_some(args.peers),
        security: args.insecure.then_some(SecurityFlags { insecure: Some(true) }),
        join_token: args.join_token,
    };
    let config = NodeConfig::load(args.config.as_deref(), &flags)?;
    let node = spaceraft::api::server::start(config).await?;
    tokio::select! {
        _ = spaceraft::dev::shutdown_signal() => {
            tracing::info!("shutting down");
            node.stop().await
        }
        why = spaceraft::node::disk::storage_failed(node.host.clone()) => {
            let uptime = node.host.started.elapsed();
            let (root, reserve) = (node.host.data_root(), node.host.config.storage.disk_reserve_bytes);
            let _ = node.stop().await;
            restart_after_storage_failure(&why, uptime, root, reserve).await
        }
    }
}

/// Counts the restarts of a node after storage failures, across `exec`.
const STORAGE_RESTARTS_VAR: &str = "SPACERAFT_STORAGE_RESTARTS";

/// Replaces this process with a fresh one of itself (same arguments), to
/// reopen stores that failed; the pause doubles with each restart that
/// follows a short run (up to 5 minutes), so a failure that comes back at
/// once does not spin. It waits, too, until the disk of `root` has
/// `reserve` bytes free again, so the new process can open its stores.
async fn restart_after_storage_failure(
    why: &str,
    uptime: Duration,
    root: std::path::PathBuf,
    reserve: u64,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let earlier: u32 = std::env::var(STORAGE_RESTARTS_VAR).ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let restarts = if uptime > Duration::from_secs(600) { 0 } else { earlier };
    let pause = Duration::from_secs(1u64 << restarts.min(9)).min(Duration::from_secs(300));
    tracing::error!(
        %why, restarts, ?pause,
        "storage failed and the disk has room: restarting this node to reopen its stores"
    );
    tokio::time::sleep(pause).await;
    if !spaceraft::node::disk::has_room(root.clone(), reserve).await {
        tracing::error!(reserve_bytes = reserve, "the data directory's disk filled again: waiting for room to restart");
        while !spaceraft::node::disk::has_room(root.clone(), reserve).await {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let exe = std::env::current_exe().context("cannot find this program to restart it")?;
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(STORAGE_RESTARTS_VAR, (restarts + 1).to_string())
        .exec();
    Err(anyhow::anyhow!("cannot restart after a storage failure: {error}"))
}

fn make_certs(args: CertsArgs) -> anyhow::Result<()> {
    let plan = spaceraft::security::certs::CertsPlan {
        dir: args.dir.clone(),
        cluster: args.cluster_id,
        nodes: args.nodes,
        gateways: args.gateways,
        operators: args.operators,
        hosts: args.hosts,
        days: args.days,
    };
    let made = spaceraft::security::certs::make(&plan)?;
    println!("cluster {} in {}", made.cluster, args.dir.display());
    for path in &made.written {
        println!("  wrote {}", path.display());
    }
    if made.written.is_empty() {
        println!("  nothing new: every file asked for exists");
    }
    Ok(())
}

async fn run_gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let flags = spaceraft::gateway::config::GatewayFlags {
        region: args.region,
        http_addr: args.http,
        grpc_addr: args.grpc,
        nodes: (!args.nodes.is_empty()).then_some(args.nodes),
        security: args.insecure.then_some(SecurityFlags { insecure: Some(true) }),
    };
    let config = spaceraft::gateway::config::GatewayConfig::load(args.config.as_deref(), &flags)?;
    let gateway = spaceraft::gateway::server::start(config).await?;
    spaceraft::dev::shutdown_signal().await;
    tracing::info!("shutting down");
    gateway.stop().await;
    Ok(())
}

async fn run_chaos(args: spaceraft::chaos::run::ChaosArgs) -> anyhow::Result<()> {
    let outcome = spaceraft::chaos::run::run(args).await?;
    let report = &outcome.report;
    let found: Vec<String> = report
        .anomalies
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(class, count)| format!("{class:?} {count}"))
        .collect();
    println!(
        "chaos: {} — {} post attempts ({} ok, {} unknown), {} committed, {} deliveries, {} reads, {} faults; anomalies: {}; liveness failures: {}",
        if report.valid { "PASSED" } else { "FAILED" },
        report.stats.post_attempts,
        report.stats.posts_ok,
        report.stats.posts_unknown,
        report.stats.committed,
        report.stats.deliveries,
        report.stats.reads,
        report.stats.faults,
        if found.is_empty() { "none".to_string() } else { found.join(", ") },
        report.liveness_failures
    );
    for example in report.examples.iter().take(10) {
        println!("  {example}");
    }
    println!("report: {}", outcome.out.join("report.md").display());
    anyhow::ensure!(report.valid, "the chaos run found violations");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of `command` and its subcommands that has no help
    /// text, as `spaceraft node --node-id`.
    fn without_help(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let generated = ["help", "version"].contains(&arg.get_id().as_str());
            if !generated && !arg.is_hide_set() && arg.get_help().is_none() && arg.get_long_help().is_none() {
                let name = arg.get_long().map(|long| format!("--{long}")).unwrap_or_else(|| arg.get_id().to_string());
                missing.push(format!("{path} {name}"));
            }
        }
        for subcommand in command.get_subcommands() {
            without_help(subcommand, &format!("{path} {}", subcommand.get_name()), missing);
        }
    }

    #[test]
    fn every_argument_of_every_subcommand_has_help() {
        let mut missing = Vec::new();
        without_help(&super::Cli::command(), "spaceraft", &mut missing);
        assert!(missing.is_empty(), "arguments without help text:\n{}", missing.join("\n"));
    }
}
