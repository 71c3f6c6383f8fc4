//! `spaceraft sim`: many seeds on every core, or one seed replayed with its
//! event trace.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::bail;
use serde::Serialize;

use super::check::Violation;
use super::net::Transport;
use super::run::{run_seed, SimOutcome, SimParams};
use super::store::Sabotage;

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    pub seeds: u64,
    /// The first seed of the range; a random one (printed) when not given.
    #[arg(long)]
    pub first_seed: Option<u64>,
    /// Replay this one seed and print its event trace.
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    pub seed: Option<u64>,
    /// Voters, one per region (3, 5 or 7).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Simulated seconds of workload and faults per seed.
    #[arg(long, default_value_t = 30)]
    pub secs: u64,
    /// Concurrent posting clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// How replication streams cross the simulated network.
    #[arg(long, value_enum, default_value = "pipelined")]
    pub transport: Transport,
    /// Let a restarted leader resume in its old term (the node does not),
    /// to see the stale reads that allows.
    #[arg(long)]
    pub leader_restore: bool,
    /// Leave out the disk nemeses (wipe, corrupt, disk full, demote): a
    /// seed then runs the schedule it ran before the sim learned disks.
    #[arg(long)]
    pub no_disk_faults: bool,
    /// Add the `amnesia` nemesis: an isolated leader meets a follower of
    /// the next leader that lost its data (an open gap: docs/reliability.md).
    #[arg(long)]
    pub amnesia: bool,
    /// Plant a storage bug, to see the checks catch it.
    #[arg(long, value_enum)]
    pub sabotage: Option<Sabotage>,
    /// With --seed: print the trace to stderr while the run goes.
    #[arg(long, requires = "seed")]
    pub follow: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The result of many seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SimSummary {
    pub first_seed: u64,
    pub seeds: u64,
    pub nodes: u64,
    pub simulated_secs_per_seed: u64,
    pub wall_secs: f64,
    pub seeds_per_minute: f64,
    /// Simulated time over wall-clock time.
    pub speedup: f64,
    pub faults: BTreeMap<&'static str, u64>,
    pub posts_acked: u64,
    pub posts_unknown: u64,
    pub reads: u64,
    pub leaders: u64,
    pub snapshot_installs: u64,
    pub messages: u64,
    /// Seeds that broke an invariant, with what they broke.
    pub failed: Vec<FailedSeed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailedSeed {
    pub seed: u64,
    pub violations: Vec<Violation>,
}

/// Runs one seed, turning a panic into a violation.
pub fn run_guarded(seed: u64, params: &SimParams) -> SimOutcome {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_seed(seed, params))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            SimOutcome {
                seed,
                violations: vec![Violation { at_ms: 0, class: "panic", detail: message }],
                faults: BTreeMap::new(),
                posts_acked: 0,
                posts_unknown: 0,
                reads: 0,
                leaders: 0,
                applies: 0,
                snapshot_installs: 0,
                messages: 0,
                simulated_ms: 0,
                digest: 0,
                trace: Vec::new(),
            }
        }
    }
}

/// Runs seeds `first..first + count` on `threads` threads.
pub fn run_many(
    first: u64,
    count: u64,
    params: &SimParams,
    threads: usize,
    on_done: impl Fn(&SimOutcome) + Sync,
) -> SimSummary {
    let started = Instant::now();
    let next = AtomicU64::new(first);
    let summary = Mutex::new(SimSummary {
        first_seed: first,
        seeds: count,
        nodes: params.nodes,
        simulated_secs_per_seed: params.secs,
        wall_secs: 0.0,
        seeds_per_minute: 0.0,
        speedup: 0.0,
        faults: BTreeMap::new(),
        posts_acked: 0,
        posts_unknown: 0,
        reads: 0,
        leaders: 0,
        snapshot_installs: 0,
        messages: 0,
        failed: Vec::new(),
    });
    let simulated_ms = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= first + count {
                    return;
                }
                let outcome = run_guarded(seed, params);
                simulated_ms.fetch_add(outcome.simulated_ms, Ordering::Relaxed);
                {
                    let mut summary = summary.lock().expect("summary lock");
                    for (kind, n) in &outcome.faults {
                        *summary.faults.entry(kind).or_default() += n;
                    }
                    summary.posts_acked += outcome.posts_acked;
                    summary.posts_unknown += outcome.posts_unknown;
                    summary.reads += outcome.reads;
                    summary.leaders += outcome.leaders;
                    summary.snapshot_installs += outcome.snapshot_installs;
                    summary.messages += outcome.messages;
                    if !outcome.violations.is_empty() {
                        summary.failed.push(FailedSeed { seed, violations: outcome.violations.clone() });
                    }
                }
                on_done(&outcome);
            });
        }
    });
    let mut summary = summary.into_inner().expect("summary lock");
    summary.failed.sort_by_key(|failed| failed.seed);
    let wall = started.elapsed().as_secs_f64();
    summary.wall_secs = wall;
    summary.seeds_per_minute = count as f64 * 60.0 / wall.max(1e-9);
    summary.speedup = simulated_ms.load(Ordering::Relaxed) as f64 / 1000.0 / wall.max(1e-9);
    summary
}

fn params(args: &SimArgs) -> anyhow::Result<SimParams> {
    if !(3..=7).contains(&args.nodes) || args.nodes.is_multiple_of(2) {
        bail!("--nodes must be 3, 5 or 7 (got {})", args.nodes);
    }
    if args.secs == 0 || args.clients == 0 {
        bail!("--secs and --clients must be above 0");
    }
    Ok(SimParams {
        nodes: args.nodes,
        secs: args.secs,
        clients: args.clients,
        sabotage: args.sabotage,
        transport: args.transport,
        leader_restore: args.leader_restore,
        disk_faults: !args.no_disk_faults,
        amnesia: args.amnesia,
        live: args.follow,
    })
}

fn print_violations(violations: &[Violation]) {
    for violation in violations {
        println!("  {:>7} ms  {:<16} {}", violation.at_ms, violation.class, violation.detail);
    }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `spaceraft sim`.
pub fn main(args: SimArgs) -> anyhow::Result<ExitCode> {
    let params = params(&args)?;
    if let Some(seed) = args.seed {
        let outcome = run_guarded(seed, &params);
        if args.json {
            println!("{}", serde_json::to_string_pretty(&outcome)?);
        } else {
            for line in &outcome.trace {
                println!("{line}");
            }
            println!(
                "seed {seed}: {} faults, {} posts acknowledged, {} unknown then retried, {} reads, {} leaders, \
                 {} snapshot installs, {} simulated ms, trace digest {:016x}",
                outcome.faults.values().sum::<u64>(),
                outcome.posts_acked,
                outcome.posts_unknown,
                outcome.reads,
                outcome.leaders,
                outcome.snapshot_installs,
                outcome.simulated_ms,
                outcome.digest
            );
            if outcome.violations.is_empty() {
                println!("no violations");
            } else {
                println!("{} violations:", outcome.violations.len());
                print_violations(&outcome.violations);
            }
        }
        return Ok(if outcome.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }

    let first = args.first_seed.unwrap_or_else(|| rand::random::<u32>() as u64);
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    eprintln!(
        "sim: seeds {first}..{} ({} runs), {} nodes, {} simulated s each, {} clients, {threads} threads{}",
        first + args.seeds,
        args.seeds,
        params.nodes,
        params.secs,
        params.clients,
        params.sabotage.map(|s| format!(", sabotage {s:?}")).unwrap_or_default()
    );
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(args.seeds)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  eta {eta}  {msg}")
            .expect("a valid template"),
    );
    let failures = Arc::new(AtomicU64::new(0));
    let summary = run_many(first, args.seeds, &params, threads, |outcome| {
        if !outcome.violations.is_empty() {
            let failed = failures.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{failed} failed"));
        }
        bar.inc(1);
    });
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let runs = summary.seeds.max(1);
        println!(
            "{} seeds in {:.1} s: {:.0} seeds/min, {:.0}x real time ({} simulated s each)",
            thousands(summary.seeds),
            summary.wall_secs,
            summary.seeds_per_minute,
            summary.speedup,
            summary.simulated_secs_per_seed
        );
        let faults: Vec<String> = summary.faults.iter().map(|(kind, n)| format!("{kind} {}", thousands(*n))).collect();
        println!("faults: {}", faults.join(", "));
        println!(
            "posts acknowledged {} ({} per seed), unknown outcomes retried {}, linearizable reads {}, \
             leaders {} ({:.1} per seed), snapshot installs {}, messages {}",
            thousands(summary.posts_acked),
            summary.posts_acked / runs,
            thousands(summary.posts_unknown),
            thousands(summary.reads),
            thousands(summary.leaders),
            summary.leaders as f64 / runs as f64,
            thousands(summary.snapshot_installs),
            thousands(summary.messages)
        );
        if summary.failed.is_empty() {
            println!("violations: none");
        } else {
            println!("violations in {} of {} seeds:", summary.failed.len(), summary.seeds);
            for failed in summary.failed.iter().take(20) {
                println!(
                    "seed {} (replay: spaceraft sim --seed {} {}):",
                    failed.seed,
                    failed.seed,
                    replay_flags(&args)
                );
                print_violations(&failed.violations[..failed.violations.len().min(5)]);
            }
        }
    }
    Ok(if summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The flags that shape a run, for the replay command line.
fn replay_flags(args: &SimArgs) -> String {
    let mut flags = format!(
        "--nodes {} --secs {} --clients {} --transport {}",
        args.nodes,
        args.secs,
        args.clients,
        clap::ValueEnum::to_possible_value(&args.transport).map(|v| v.get_name().to_string()).unwrap_or_default()
    );
    if args.leader_restore {
        flags.push_str(" --leader-restore");
    }
    if args.no_disk_faults {
        flags.push_str(" --no-disk-faults");
    }
    if args.amnesia {
        flags.push_str(" --amnesia");
    }
    if let Some(sabotage) = args.sabotage {
        flags.push_str(&format!(
            " --sabotage {}",
            clap::ValueEnum::to_possible_value(&sabotage).map(|v| v.get_name().to_string()).unwrap_or_default()
        ));
    }
    flags
}
