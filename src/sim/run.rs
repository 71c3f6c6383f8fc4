//! One seeded run: start a cluster, run the workload and the nemesis for
//! the simulated duration, heal everything, let the cluster settle, check.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{ReadPolicy, ServerState};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::check::{check_final, Ledger, PostRecord, ReadRecord, ReplicaFinal, Violation};
use super::net::{SimNet, SimNetwork, Transport};
use super::store::{Disk, Sabotage, SimStateMachine};
use super::{SimRaft, SimRuntime};
use crate::raft::types::NodeAddr;
use crate::space::{Command, CommandResult, PostCommand};

/// The spaces the workload posts to, and their members.
const SPACES: [&str; 2] = ["general", "random"];
const MEMBERS: [&str; 3] = ["alice", "bob", "carol"];

/// How long a healed cluster gets to finish every pending post and converge.
const SETTLE: Duration = Duration::from_secs(60);
/// How often the replication watchdog looks, as on the nodes.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long one client request waits before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Makes a membership change, as an operator's client would: it gives up
/// after [`REQUEST_TIMEOUT`] (a change can wait for good on a leader that
/// lost its quorum). Answers its outcome, for the trace.
async fn change_membership(raft: &SimRaft, changes: openraft::ChangeMembers<u64, NodeAddr>, retain: bool) -> String {
    match tokio::time::timeout(REQUEST_TIMEOUT, raft.change_membership(changes, retain)).await {
        Ok(Ok(_)) => "done".into(),
        Ok(Err(error)) => format!("failed: {error}"),
        Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
    }
}

/// What one run does.
#[derive(Debug, Clone)]
pub struct SimParams {
    /// Voters, one per region.
    pub nodes: u64,
    /// Simulated seconds of workload and faults before the final heal.
    pub secs: u64,
    /// Concurrent posting clients.
    pub clients: usize,
    /// A deliberate storage bug the checks must catch.
    pub sabotage: Option<Sabotage>,
    /// How replication streams cross the network.
    pub transport: Transport,
    /// Let a restarted leader resume in its old term (openraft's default,
    /// which the node turns off): shows the stale reads it allows.
    pub leader_restore: bool,
    /// Disk nemeses (wipe, corrupt, full, demote) and the keeper that
    /// re-admits a node after them. Off, a seed runs the schedule it ran
    /// before the sim learned disks.
    pub disk_faults: bool,
    /// Add the `amnesia` nemesis: the leader is isolated, the others elect
    /// and commit, then one of them loses its data and comes back hearing
    /// only the old leader (see docs/reliability.md, "Disks").
    pub amnesia: bool,
    /// Print the trace to stderr as the run goes.
    pub live: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            nodes: 3,
            secs: 30,
            clients: 4,
            sabotage: None,
            transport: Transport::Pipelined,
            leader_restore: false,
            disk_faults: true,
            amnesia: false,
            live: false,
        }
    }
}

/// What one run found and did.
#[derive(Debug, Clone, Serialize)]
pub struct SimOutcome {
    pub seed: u64,
    pub violations: Vec<Violation>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    pub posts_acked: u64,
    /// Attempts whose outcome the client could not know (then retried).
    pub posts_unknown: u64,
    pub reads: u64,
    /// Distinct leaders (term, node) that took office.
    pub leaders: u64,
    pub applies: u64,
    pub snapshot_installs: u64,
    pub messages: u64,
    /// Simulated milliseconds the run took, settling included.
    pub simulated_ms: u64,
    /// A hash of the whole event trace: equal for equal seeds.
    pub digest: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
}

/// Runs one seed on the current thread.
pub fn run_seed(seed: u64, params: &SimParams) -> SimOutcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    let params = params.clone();
    runtime.block_on(SimRuntime::scope(seed, async move {
        // The paused clock starts a fraction of a millisecond off the timer
        // wheel's grid, by however long the runtime took to build; sleeping
        // once puts it on the grid, so every run of a seed fires its timers
        // at the same instants.
        tokio::time::sleep(Duration::from_millis(1)).await;
        Sim::start(seed, params).await.run().await
    }))
}

/// The run's event log; its hash shows two runs of a seed are the same.
struct Trace {
    start: Instant,
    lines: Mutex<Vec<String>>,
    /// Also print each line to stderr as it happens.
    live: bool,
}

impl Trace {
    fn log(&self, line: impl Into<String>) {
        let at = self.start.elapsed().as_millis();
        let line = format!("{at:>7} ms  {}", line.into());
        if self.live {
            eprintln!("{line}");
        }
        self.lines.lock().expect("trace lock").push(line);
    }
}

#[derive(Default)]
struct Tally {
    faults: BTreeMap<&'static str, u64>,
    acked: u64,
    unknown: u64,
    leaders: BTreeSet<(u64, u64)>,
    /// Highest acknowledged seq per space.
    acked_seq: BTreeMap<String, u64>,
    posts: Vec<PostRecord>,
    reads: Vec<ReadRecord>,
}

struct Sim {
    seed: u64,
    params: SimParams,
    config: Arc<openraft::Config>,
    net: Arc<SimNet>,
    disks: BTreeMap<u64, Arc<Disk>>,
    ledger: Arc<Ledger>,
    trace: Arc<Trace>,
    tally: Mutex<Tally>,
    /// A voter the nemesis made a learner for a while; the keeper promotes
    /// every other learner back.
    demoted: Mutex<Option<u64>>,
}

fn sub_seed(seed: u64, stream: u64) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (seed, stream).hash(&mut hasher);
    hasher.finish()
}

fn node_addr(node: u64, data_incarnation: u64) -> NodeAddr {
    NodeAddr { addr: format!("sim-node-{node}"), region: format!("region-{node}"), incarnation: data_incarnation }
}

/// A new data incarnation: random, never 0 (as `node.json`'s).
fn new_data_incarnation(rng: &mut StdRng) -> u64 {
    rng.random_range(1..=u64::MAX)
}

impl Sim {
    async fn start(seed: u64, params: SimParams) -> Arc<Sim> {
        // The timing the sim's seeds were recorded with (its regression
        // seeds replay schedules that depend on it), across its 20 to 90 ms
        // one-way links.
        let raft = crate::config::RaftConfig {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1_000,
            election_timeout_max_ms: 2_000,
            ..Default::default()
        };
        let mut config = crate::api::server::openraft_config(&raft).expect("the sim's raft configuration is valid");
        // Snapshots and purges often, so installs and restarts from a
        // snapshot happen in every run.
        config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(40);
        config.max_in_snapshot_log_to_keep = 8;
        config.purge_batch_size = 1;
        if params.leader_restore {
            config.enable_leader_restore = Some(true);
        }
        let config = Arc::new(config.validate().expect("the sim raft configuration is valid"));

        let start = Instant::now();
        let mut setup = StdRng::seed_from_u64(sub_seed(seed, 0));
        // Regions 20 to 90 ms apart one way, as in the WAN of the chaos runs.
        let mut latency = BTreeMap::new();
        for a in 1..=params.nodes {
            for b in a + 1..=params.nodes {
                let one_way = Duration::from_millis(setup.random_range(20..=90));
                latency.insert((a, b), one_way);
                latency.insert((b, a), one_way);
            }
        }
        let mut data = StdRng::seed_from_u64(sub_seed(seed, 6));
        let disks = (1..=params.nodes)
            .map(|node| {
                let fsync = Duration::from_micros(setup.random_range(500..=5_000));
                (node, Disk::new(fsync, params.sabotage, new_data_incarnation(&mut data)))
            })
            .collect();
        let sim = Arc::new(Sim {
            seed,
            config,
            net: SimNet::new(sub_seed(seed, 1), latency, params.transport),
            disks,
            ledger: Arc::new(Ledger::new(start)),
            trace: Arc::new(Trace { start, lines: Mutex::new(Vec::new()), live: params.live }),
            tally: Mutex::new(Tally::default()),
            demoted: Mutex::new(None),
            params,
        });
        for node in 1..=sim.params.nodes {
            sim.boot(node).await;
        }
        let voters: BTreeMap<u64, NodeAddr> =
            (1..=sim.params.nodes).map(|node| (node, node_addr(node, sim.disks[&node].data_incarnation()))).collect();
        let first = sim.net.raft(1).expect("node 1 is up");
        first.initialize(voters).await.expect("a fresh cluster initializes");
        sim
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().expect("tally lock")
    }

    fn fault(&self, kind: &'static str, detail: String) {
        *self.tally().faults.entry(kind).or_default() += 1;
        self.trace.log(format!("nemesis {kind}: {detail}"));
    }

    /// Starts a process of `node` on its disk.
    async fn boot(self: &Arc<Sim>, node: u64) {
        let incarnation = self.net.next_incarnation();
        let (mut store, mut machine) = self.disks[&node].open(node, self.ledger.clone());
        if crate::raft::repair_log_behind_state(&mut store, &mut machine).await.expect("the disk reads") {
            self.trace.log(format!("node {node}: log behind its applied state repaired"));
        }
        let data = self.disks[&node].data_incarnation();
        let admitted = machine.admitted();
        let network = SimNetwork {
            net: self.net.clone(),
            me: super::net::End { node, incarnation },
            data,
            admitted: admitted.clone(),
        };
        let raft =
            SimRaft::new(node, self.config.clone(), network, store, machine).await.expect("a node starts on its disk");
        self.net.up(node, incarnation, data, admitted, raft.clone());
        self.trace.log(format!("node {node} up (incarnation {incarnation}, data {data:016x})"));
        let sim = self.clone();
        super::spawn(async move { sim.watch(node, incarnation, raft).await });
    }

    /// SIGKILL: the disk loses what was not synced, connections break.
    async fn crash(&self, node: u64) {
        self.disks[&node].crash();
        if let Some(raft) = self.net.down(node) {
            let _ = raft.shutdown().await;
        }
        self.trace.log(format!("node {node} crashed"));
    }

    /// Follows one process's metrics: leaders taking office, and fatal
    /// errors of a process nobody crashed.
    async fn watch(self: Arc<Sim>, node: u64, incarnation: u64, raft: SimRaft) {
        let mut metrics = raft.metrics();
        drop(raft);
        let mut in_office = None;
        loop {
            let (leader, fatal) = {
                let m = metrics.borrow_watched();
                let leader = (m.state == ServerState::Leader).then_some(m.vote.leader_id.term);
                (leader, m.running_state.as_ref().err().map(|e| e.to_string()))
            };
            if let Some(fatal) = fatal {
                let alive = self.net.incarnation(node) == Some(incarnation);
                if alive && self.disks[&node].failed_full() {
                    // As a node does: it stops on the storage error and
                    // restarts itself once its disk has room.
                    self.trace.log(format!("node {node} stopped on its full disk: {fatal}"));
                } else if alive {
                    self.ledger.violation("fatal", format!("node {node} stopped: {fatal}"));
                }
                return;
            }
            if leader != in_office {
                in_office = leader;
                if let Some(term) = leader {
                    self.tally().leaders.insert((term, node));
                    self.trace.log(format!("node {node} leads term {term}"));
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    fn leader(&self) -> Option<u64> {
        self.net.live_nodes().into_iter().find(|node| self.net.raft(*node).is_some_and(|raft| raft.is_leader()))
    }

    async fn run(self: Arc<Sim>) -> SimOutcome {
        self.create_spaces().await;
        let stop = Instant::now() + Duration::from_secs(self.params.secs);
        let mut tasks = Vec::new();
        for client in 0..self.params.clients {
            let sim = self.clone();
            tasks.push(super::spawn(async move { sim.client(client, stop).await }));
        }
        let reader = {
            let sim = self.clone();
            super::spawn(async move { sim.reader(stop).await })
        };
        let keeper = self.params.disk_faults.then(|| {
            let sim = self.clone();
            super::spawn(async move { sim.keeper(stop + SETTLE).await })
        });
        self.clone().nemesis(stop).await;
        self.heal_all().await;
        let settle_by = Instant::now() + SETTLE;
        let watchdog = {
            let sim = self.clone();
            super::spawn(async move { sim.watchdog(settle_by).await })
        };
        for task in tasks {
            let _ = task.await;
        }
        let _ = reader.await;
        self.probe(settle_by).await;
        let replicas = self.converge(settle_by).await;
        watchdog.abort();
        if let Some(keeper) = keeper {
            keeper.abort();
        }

        let now_ms = self.ledger.elapsed_ms();
        let tally = std::mem::take(&mut *self.tally());
        let mut violations = self.ledger.violations();
        violations.extend(check_final(now_ms, &SPACES, &tally.posts, &tally.reads, &replicas, &self.ledger));
        for post in tally.posts.iter().filter(|post| post.acked.is_none()) {
            violations.push(Violation {
                at_ms: now_ms,
                class: "liveness",
                detail: format!("post {:?} to {} was never acknowledged after the heal", post.key, post.space),
            });
        }
        for violation in &violations {
            self.trace.log(format!("VIOLATION {}: {}", violation.class, violation.detail));
        }
        let (applies, snapshot_installs) = self.ledger.counts();
        let trace = std::mem::take(&mut *self.trace.lines.lock().expect("trace lock"));
        let mut hasher = std::hash::DefaultHasher::new();
        trace.hash(&mut hasher);
        for node in self.net.live_nodes() {
            if let Some(raft) = self.net.down(node) {
                let _ = raft.shutdown().await;
            }
        }
        SimOutcome {
            seed: self.seed,
            violations,
            faults: tally.faults,
            posts_acked: tally.acked,
            posts_unknown: tally.unknown,
            reads: tally.reads.len() as u64,
            leaders: tally.leaders.len() as u64,
            applies,
            snapshot_installs,
            messages: self.net.messages(),
            simulated_ms: now_ms,
            digest: hasher.finish(),
            trace,
        }
    }

    /// Posts new keys until `stop`, each until acknowledged; a key still
    /// pending at `stop` goes on until the settle deadline.
    async fn client(self: Arc<Sim>, client: usize, stop: Instant) {
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, 100 + client as u64));
        let deadline = stop + SETTLE;
        let mut hint = None;
        let mut n = 0;
        while Instant::now() < stop {
            n += 1;
            let space = *SPACES.choose(&mut rng).expect("spaces");
            let key = format!("c{client}-{n}");
            let index = self.tally().posts.len();
            self.tally().posts.push(PostRecord { space: space.into(), key: key.clone(), acked: None });
            let command = Command::Posts(vec![PostCommand {
                space: space.into(),
                author: MEMBERS.choose(&mut rng).expect("members").to_string(),
                body: format!("message {n} of client {client}"),
                idempotency_key: key.clone(),
            }]);
            let Some((seq, log_id)) = self.write_until(&command, deadline, &mut hint, &mut rng).await else {
                return;
            };
            {
                let mut tally = self.tally();
                tally.acked += 1;
                tally.posts[index].acked = Some((seq, log_id));
                let highest = tally.acked_seq.entry(space.into()).or_default();
                *highest = (*highest).max(seq);
            }
            self.trace.log(format!("client {client}: {key} acknowledged as {space}#{seq} at {log_id}"));
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        }
    }

    /// Writes `command` (retrying the same idempotency key) until it is
    /// acknowledged or `deadline` passes; its seq and log id.
    async fn write_until(
        &self,
        command: &Command,
        deadline: Instant,
        hint: &mut Option<u64>,
        rng: &mut StdRng,
    ) -> Option<(u64, crate::sim::LogId)> {
        while Instant::now() < deadline {
            let live = self.net.live_nodes();
            let node = match hint.filter(|node| live.contains(node)) {
                Some(node) => node,
                None => match live.choose(rng) {
                    Some(node) => *node,
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Some(raft) = self.net.raft(node) else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(command.clone())).await {
                Ok(Ok(response)) => match response.data {
                    CommandResult::Posts(results) => match results.first() {
                        Some(Ok(outcome)) => return Some((outcome.seq, response.log_id)),
                        other => {
                            self.ledger.violation("refused", format!("a valid post was refused: {other:?}"));
                            return None;
                        }
                    },
                    other => {
                        self.ledger.violation("refused", format!("a post was answered with {other:?}"));
                        return None;
                    }
                },
                Ok(Err(error)) => {
                    if let Some(forward) = error.forward_to_leader() {
                        // Not appended: a plain failure.
                        *hint = forward.leader_id.filter(|leader| *leader != node);
                    } else {
                        // Appended, then leadership or the process was lost.
                        self.tally().unknown += 1;
                        *hint = None;
                    }
                }
                Err(_) => {
                    self.tally().unknown += 1;
                    *hint = None;
                }
            }
            // Even a redirect waits a little: two nodes with stale views
            // may point at each other.
            let pause = if hint.is_some() { 1..10 } else { 20..150 };
            tokio::time::sleep(Duration::from_millis(rng.random_range(pause))).await;
        }
        None
    }

    /// Linearizable reads of a space's last seq, against what was
    /// acknowledged before each read began.
    async fn reader(self: Arc<Sim>, stop: Instant) {
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, 2));
        while Instant::now() < stop {
            tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
            let Some(node) = self.net.live_nodes().choose(&mut rng).copied() else { continue };
            let Some(raft) = self.net.raft(node) else { continue };
            let space = *SPACES.choose(&mut rng).expect("spaces");
            let acked_before = self.tally().acked_seq.get(space).copied().unwrap_or(0);
            let at_ms = self.ledger.elapsed_ms();
            let read = async {
                raft.ensure_linearizable(ReadPolicy::ReadIndex).await.ok()?;
                raft.with_state_machine(move |machine: &mut SimStateMachine| {
                    let seen = machine.last_seq(space);
                    Box::pin(async move { seen })
                })
                .await
                .ok()
            };
            if let Ok(Some(seen)) = tokio::time::timeout(REQUEST_TIMEOUT, read).await {
                self.tally().reads.push(ReadRecord { at_ms, node, space: space.into(), acked_before, seen });
            }
        }
    }

    /// The fault schedule: one fault at a time, drawn from the seed, until
    /// `stop`.
    async fn nemesis(self: Arc<Sim>, stop: Instant) {
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, 3));
        let nodes: Vec<u64> = (1..=self.params.nodes).collect();
        loop {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..1_000))).await;
            let hold = Duration::from_millis(rng.random_range(200..4_000));
            if Instant::now() + hold >= stop {
                return;
            }
            let kinds = match (self.params.disk_faults, self.params.amnesia) {
                (_, true) => 15,
                (true, false) => 14,
                (false, false) => 10,
            };
            match rng.random_range(0..kinds) {
                0 => {
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    self.fault("crash", format!("node {node} for {hold:?}"));
                    self.crash(node).await;
                    tokio::time::sleep(hold).await;
                    self.boot(node).await;
                }
                1 => {
                    let Some(leader) = self.leader() else { continue };
                    self.fault("crash-leader", format!("node {leader} for {hold:?}"));
                    self.crash(leader).await;
                    tokio::time::sleep(hold).await;
                    self.boot(leader).await;
                }
                2 => {
                    self.fault("crash-all", format!("for {hold:?}"));
                    for node in &nodes {
                        self.crash(*node).await;
                    }
                    tokio::time::sleep(hold).await;
                    let mut order = nodes.clone();
                    order.sort_by_key(|_| rng.random::<u32>());
                    for node in order {
                        self.boot(node).await;
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
                    }
                }
                3 => {
                    let minority_len = rng.random_range(1..=(nodes.len() - 1) / 2);
                    let mut shuffled = nodes.clone();
                    shuffled.sort_by_key(|_| rng.random::<u32>());
                    let minority: BTreeSet<u64> = shuffled[..minority_len].iter().copied().collect();
                    self.fault("partition", format!("{minority:?} from the rest for {hold:?}"));
                    for a in &nodes {
                        for b in &nodes {
                            if minority.contains(a) != minority.contains(b) {
                                self.net.cut(*a, *b);
                            }
                        }
                    }
                    tokio::time::sleep(hold).await;
                    self.net.heal();
                }
                4 => {
                    let Some(leader) = self.leader() else { continue };
                    self.fault("isolate-leader", format!("node {leader} for {hold:?}"));
                    for other in nodes.iter().filter(|node| **node != leader) {
                        self.net.cut(leader, *other);
                        self.net.cut(*other, leader);
                    }
                    tokio::time::sleep(hold).await;
                    self.net.heal();
                }
                5 => {
                    // One direction only: the node hears the others but is
                    // not heard, or the reverse.
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    let outbound = rng.random_bool(0.5);
                    let way = if outbound { "cannot send" } else { "cannot hear" };
                    self.fault("one-way", format!("node {node} {way} for {hold:?}"));
                    for other in nodes.iter().filter(|other| **other != node) {
                        if outbound {
                            self.net.cut(node, *other);
                        } else {
                            self.net.cut(*other, node);
                        }
                    }
                    tokio::time::sleep(hold).await;
                    self.net.heal();
                }
                6 => {
                    let per_mille = rng.random_range(100..=400);
                    self.fault("loss", format!("{} % of messages for {hold:?}", per_mille / 10));
                    self.net.set_loss(per_mille);
                    tokio::time::sleep(hold).await;
                    self.net.heal();
                }
                7 => {
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    let factor = rng.random_range(5..=20);
                    self.fault("slow", format!("node {node}'s links {factor}x slower for {hold:?}"));
                    self.net.set_slow(node, factor);
                    tokio::time::sleep(hold).await;
                    self.net.heal();
                }
                8 => {
                    let Some(leader) = self.leader() else { continue };
                    let Some(to) =
                        nodes.iter().filter(|node| **node != leader).collect::<Vec<_>>().choose(&mut rng).copied()
                    else {
                        continue;
                    };
                    self.fault("transfer-leader", format!("from node {leader} to node {to}"));
                    if let Some(raft) = self.net.raft(leader) {
                        let _ = raft.trigger().transfer_leader(*to).await;
                    }
                }
                9 => {
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    let Some(raft) = self.net.raft(node) else { continue };
                    self.fault("snapshot", format!("node {node}"));
                    let _ = raft.trigger().snapshot().await;
                }
                10 | 11 => {
                    // One node at a time loses data: while another is still
                    // to be re-admitted, a second loss could leave no quorum
                    // of members with their data (then only an operator can
                    // help, and the run could not end live).
                    if !self.all_admitted() {
                        continue;
                    }
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    let data = new_data_incarnation(&mut rng);
                    let disk = &self.disks[&node];
                    if self.net.raft(node).is_some() {
                        self.crash(node).await;
                    }
                    let wipe = rng.random_bool(0.5);
                    if wipe {
                        self.fault("wipe", format!("node {node}'s data directory, down for {hold:?}"));
                        disk.wipe(data);
                    } else if let Some((first, last)) = disk.durable_span() {
                        let index = rng.random_range(first..=last);
                        self.fault(
                            "corrupt",
                            format!("node {node}'s log record {index} (of {first}..={last}), down for {hold:?}"),
                        );
                        disk.damage(index, data);
                    } else {
                        self.fault("corrupt", format!("node {node}: no log record to damage, down for {hold:?}"));
                    }
                    tokio::time::sleep(hold).await;
                    self.boot(node).await;
                }
                12 => {
                    let node = *nodes.choose(&mut rng).expect("nodes");
                    self.fault("disk-full", format!("node {node} for {hold:?}"));
                    self.disks[&node].set_full(true);
                    tokio::time::sleep(hold).await;
                    self.disks[&node].set_full(false);
                    self.restart_if_failed(node).await;
                }
                14 => {
                    let Some(old) = self.leader() else { continue };
                    if !self.all_admitted() || nodes.len() != 3 {
                        continue;
                    }
                    self.amnesia(old, hold, &mut rng).await;
                }
                _ => {
                    let Some(leader) = self.leader() else { continue };
                    let Some(raft) = self.net.raft(leader) else { continue };
                    if !self.all_admitted() {
                        continue;
                    }
                    let followers: Vec<u64> = nodes.iter().copied().filter(|node| *node != leader).collect();
                    let node = *followers.choose(&mut rng).expect("followers");
                    self.fault("demote", format!("node {node} to a learner for {hold:?}"));
                    *self.demoted.lock().expect("demoted lock") = Some(node);
                    let removed = [node].into_iter().collect();
                    let changed = change_membership(&raft, openraft::ChangeMembers::RemoveVoters(removed), true).await;
                    self.trace.log(format!("demote node {node}: {changed}"));
                    tokio::time::sleep(hold).await;
                    *self.demoted.lock().expect("demoted lock") = None;
                }
            }
        }
    }

    /// The `amnesia` nemesis (three nodes): `old`, the leader, is cut off;
    /// once another node leads and has had a second to commit, the third
    /// loses its data and comes back able to reach only `old`, for `hold`.
    async fn amnesia(self: &Arc<Sim>, old: u64, hold: Duration, rng: &mut StdRng) {
        let nodes: Vec<u64> = (1..=self.params.nodes).collect();
        for other in nodes.iter().filter(|node| **node != old) {
            self.net.cut(old, *other);
            self.net.cut(*other, old);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let new = loop {
            let leading = nodes
                .iter()
                .copied()
                .find(|node| *node != old && self.net.raft(*node).is_some_and(|raft| raft.is_leader()));
            if leading.is_some() || Instant::now() >= deadline {
                break leading;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let Some(new) = new else {
            self.fault("amnesia", format!("node {old} cut off; no other leader within 5 s"));
            self.net.heal();
            return;
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let wiped = nodes.iter().copied().find(|node| *node != old && *node != new).expect("three nodes");
        self.fault(
            "amnesia",
            format!("node {old} cut off, node {new} leads; node {wiped} wiped and hears only node {old} for {hold:?}"),
        );
        self.crash(wiped).await;
        self.disks[&wiped].wipe(new_data_incarnation(rng));
        self.net.heal();
        for (a, b) in [(old, new), (new, wiped)] {
            self.net.cut(a, b);
            self.net.cut(b, a);
        }
        self.boot(wiped).await;
        tokio::time::sleep(hold).await;
        self.net.heal();
    }

    /// Whether every node is a voter, the membership (as the leader has
    /// it) records every node's current data incarnation and every node has
    /// applied such a membership: then one node may lose its data or its
    /// vote and a quorum of voters with their data that accept each other
    /// remains. (A member that has not yet applied another's re-admission
    /// refuses that member's replies; losing a third node's data then
    /// leaves no quorum without an operator.)
    fn all_admitted(&self) -> bool {
        let Some(raft) = self.leader().and_then(|leader| self.net.raft(leader)) else { return false };
        let metrics = raft.metrics().borrow_watched().clone();
        // A joint or uncommitted configuration may still need the old
        // voters' quorum.
        let settled = metrics.membership_config.log_id() <= &metrics.last_applied;
        let membership = metrics.membership_config.membership();
        let uniform = membership.get_joint_config().len() == 1;
        let voters = membership.voter_ids().count() as u64 == self.params.nodes;
        // Every node has applied a membership that records every node's
        // current incarnation: replies count everywhere.
        let learned = (1..=self.params.nodes).all(|node| {
            self.net.admitted_of(node).is_some_and(|admitted| {
                (1..=self.params.nodes)
                    .all(|member| admitted.get(member) == Some(self.disks[&member].data_incarnation()))
            })
        });
        settled
            && uniform
            && voters
            && learned
            && membership.nodes().all(|(node, addr)| addr.incarnation == self.disks[node].data_incarnation())
    }

    /// A node whose Raft stopped on its full disk restarts itself once
    /// there is room, as `spaceraft node` does.
    async fn restart_if_failed(self: &Arc<Sim>, node: u64) {
        let stopped = self.net.raft(node).is_some_and(|raft| raft.metrics().borrow_watched().running_state.is_err());
        if stopped && self.disks[&node].failed_full() {
            self.trace.log(format!("node {node} restarts: its disk has room again"));
            self.crash(node).await;
            self.boot(node).await;
        }
    }

    /// Until `until`, once a second on the leader, as the nodes' incarnation
    /// keeper ([`crate::node::rejoin`]) does: re-admits at once a member
    /// whose data incarnation is not the one the membership records (its
    /// replies count once the change is committed), and promotes back the
    /// learners the nemesis is no longer demoting.
    async fn keeper(self: Arc<Sim>, until: Instant) {
        while Instant::now() < until {
            tokio::time::sleep(WATCHDOG_INTERVAL).await;
            let Some((leader, raft)) = self.leader().and_then(|leader| Some((leader, self.net.raft(leader)?))) else {
                continue;
            };
            let metrics = raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership().clone();
            for (node, addr) in membership.nodes() {
                let Some(data) = self.net.data_of(*node).filter(|data| *data != addr.incarnation) else { continue };
                if *node == leader {
                    continue;
                }
                let applied = self.net.raft(*node).and_then(|member| member.metrics().borrow_watched().last_applied);
                let applied = applied.map(|id| id.index).unwrap_or(0);
                let readmitted = NodeAddr { incarnation: data, ..addr.clone() };
                let nodes = [(*node, readmitted)].into_iter().collect();
                let changed = change_membership(&raft, openraft::ChangeMembers::SetNodes(nodes), false).await;
                self.trace.log(format!("keeper: re-admit node {node} (data {data:016x}) at {applied}: {}", changed));
            }
            let demoted = *self.demoted.lock().expect("demoted lock");
            let learners: BTreeSet<u64> = membership.learner_ids().filter(|node| Some(*node) != demoted).collect();
            if !learners.is_empty() {
                let changed =
                    change_membership(&raft, openraft::ChangeMembers::AddVoterIds(learners.clone()), false).await;
                self.trace.log(format!("keeper: promote {learners:?}: {}", changed));
            }
        }
    }

    async fn create_spaces(&self) {
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, 4));
        let mut hint = None;
        for space in SPACES {
            let command = Command::CreateSpace {
                name: space.into(),
                members: MEMBERS.iter().map(|member| member.to_string()).collect(),
                attrs: BTreeMap::new(),
                dedup_window_len: 1_000_000,
                retain_messages_max: 0,
            };
            let deadline = Instant::now() + SETTLE;
            while Instant::now() < deadline {
                let node = hint.unwrap_or(1);
                let Some(raft) = self.net.raft(node) else { break };
                match tokio::time::timeout(REQUEST_TIMEOUT, raft.client_write(command.clone())).await {
                    Ok(Ok(_)) => break,
                    Ok(Err(error)) => hint = error.forward_to_leader().and_then(|forward| forward.leader_id),
                    Err(_) => hint = None,
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..150))).await;
            }
        }
        self.trace.log("spaces created");
    }

    /// After the heal, until `until`: the nodes' replication watchdog
    /// ([`crate::node::watchdog`]) on the leader, on the simulated clock.
    async fn watchdog(self: Arc<Sim>, until: Instant) {
        let stall_after = Duration::from_millis(crate::config::GroupsConfig::default().replication_stall_ms);
        let mut progress = crate::node::watchdog::Progress::default();
        while Instant::now() < until {
            tokio::time::sleep(WATCHDOG_INTERVAL).await;
            let Some((leader, raft)) = self.leader().and_then(|leader| Some((leader, self.net.raft(leader)?))) else {
                continue;
            };
            let metrics = raft.metrics().borrow_watched().clone();
            let now = (Instant::now().into_std(), stall_after);
            let live = self.net.live_nodes();
            let up = |node| live.contains(&node);
            if let Some(handover) = crate::node::watchdog::check(&metrics, (0, leader), &mut progress, now, up) {
                self.trace.log(format!("watchdog: {handover:?}: leadership handed over"));
                let _ = raft.trigger().transfer_leader(handover.successor).await;
            }
        }
    }

    /// Every node up, every disk with room, every link whole.
    async fn heal_all(self: &Arc<Sim>) {
        self.net.heal();
        *self.demoted.lock().expect("demoted lock") = None;
        for node in 1..=self.params.nodes {
            self.disks[&node].set_full(false);
            if self.net.raft(node).is_none() {
                self.boot(node).await;
            } else {
                self.restart_if_failed(node).await;
            }
        }
        self.trace.log("healed");
    }

    /// After the heal the cluster must take a new post.
    async fn probe(&self, deadline: Instant) {
        let mut rng = StdRng::seed_from_u64(sub_seed(self.seed, 5));
        let key = "probe".to_string();
        let index = self.tally().posts.len();
        self.tally().posts.push(PostRecord { space: SPACES[0].into(), key: key.clone(), acked: None });
        let command = Command::Posts(vec![PostCommand {
            space: SPACES[0].into(),
            author: MEMBERS[0].into(),
            body: "after the heal".into(),
            idempotency_key: key,
        }]);
        if let Some(acked) = self.write_until(&command, deadline, &mut None, &mut rng).await {
            self.tally().posts[index].acked = Some(acked);
            self.trace.log(format!("probe acknowledged as seq {}", acked.0));
        }
    }

    /// Waits until every replica has applied the leader's whole log, then
    /// takes their final states. A replica still behind at `deadline` is a
    /// violation; the states are taken anyway, so the other checks run.
    async fn converge(&self, deadline: Instant) -> Vec<ReplicaFinal> {
        loop {
            let rafts: Vec<(u64, SimRaft)> =
                (1..=self.params.nodes).filter_map(|node| self.net.raft(node).map(|raft| (node, raft))).collect();
            let heads: Vec<(u64, Option<u64>, Option<u64>)> = rafts
                .iter()
                .map(|(node, raft)| {
                    let m = raft.metrics().borrow_watched().clone();
                    (*node, m.last_log_index, m.last_applied.map(|id| id.index))
                })
                .collect();
            let top = heads.iter().filter_map(|(_, last, _)| *last).max();
            let converged = rafts.len() as u64 == self.params.nodes
                && self.leader().is_some()
                && heads.iter().all(|(_, last, applied)| *last == top && *applied == top);
            let late = Instant::now() >= deadline;
            if converged || late {
                if late && !converged {
                    let behind: Vec<String> = heads
                        .iter()
                        .filter(|(_, last, applied)| *last != top || *applied != top)
                        .map(|(node, last, applied)| format!("node {node} at log {last:?}, applied {applied:?}"))
                        .collect();
                    self.ledger.violation(
                        "stalled-replica",
                        format!(
                            "{SETTLE:?} after the heal the leader's log ends at {top:?}, but {}",
                            behind.join(", ")
                        ),
                    );
                }
                let mut replicas = Vec::new();
                for (node, raft) in rafts {
                    let state = raft
                        .with_state_machine(|machine: &mut SimStateMachine| {
                            let (last_applied, kv) = machine.state();
                            let copy = (last_applied, kv.clone());
                            Box::pin(async move { copy })
                        })
                        .await;
                    let Ok((last_applied, kv)) = state else { continue };
                    replicas.push(ReplicaFinal {
                        node,
                        last_applied,
                        kv,
                        log: self.disks[&node].log_ids(),
                        committed: last_applied,
                    });
                }
                self.trace.log(format!("settled at index {top:?}"));
                return replicas;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
