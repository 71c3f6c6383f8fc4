//! A real cluster for integration tests: `spaceraft node` processes on
//! loopback ports, each with its own data directory, killed with SIGKILL and
//! restarted on the same directory.
#![allow(dead_code)]

pub mod ctl;
pub mod gateway;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spaceraft::pb;
use tonic::transport::Channel;

pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

/// Ports that were free a moment ago, never the same one twice in a test
/// binary: tests run in parallel, and a port handed to one test's cluster is
/// not yet bound when the next test asks.
pub fn free_ports(count: usize) -> Vec<u16> {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap();
    let mut ports = Vec::new();
    let mut held = Vec::new();
    while ports.len() < count {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = listener.local_addr().unwrap().port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            ports.push(port);
        }
        // Keep it bound until all are chosen, so the kernel picks others.
        held.push(listener);
    }
    ports
}

pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub config_path: PathBuf,
    pub data_dir: PathBuf,
    pub process: Option<Child>,
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    pub gateways: Vec<gateway::TestGateway>,
    /// The certificates of a secured cluster ([`TestCluster::start_secured`]).
    pub tls: Option<PathBuf>,
}

/// The operator of secured test clusters.
pub const OPERATOR: &str = "admin";

/// TLS (as the operator) to the nodes of secured clusters, by address:
/// [`try_connect`] dials them over TLS.
static TLS_BY_ADDR: std::sync::Mutex<Vec<(String, tonic::transport::ClientTlsConfig)>> =
    std::sync::Mutex::new(Vec::new());

/// Makes the certificates of `nodes` and `gateways` (and the operator's)
/// in `tls`; answers the cluster id.
pub fn make_certs(tls: &Path, nodes: &[u64]) -> String {
    let plan = spaceraft::security::certs::CertsPlan {
        dir: tls.to_path_buf(),
        cluster: None,
        nodes: nodes.to_vec(),
        gateways: REGIONS.iter().map(|region| region.to_string()).collect(),
        operators: vec![OPERATOR.into(), "intruder".into()],
        hosts: vec!["127.0.0.1".into(), "localhost".into()],
        days: 1,
    };
    spaceraft::security::certs::make(&plan).expect("make certificates").cluster
}

/// The `[security]` section of a secured process whose files are `stem`.
pub fn security_section(tls: &Path, stem: &str) -> String {
    use spaceraft::security::{certs, token};
    let (cert, key) = certs::pair(tls, stem);
    format!(
        "[security]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\ntoken_keys_dir = {:?}\n",
        certs::ca_pem(tls),
        cert,
        key,
        token::keys_dir(tls)
    )
}

/// TLS trusting the cluster in `tls`, presenting the certificate `stem`
/// (or none).
pub fn client_tls(tls: &Path, stem: Option<&str>) -> tonic::transport::ClientTlsConfig {
    use spaceraft::security::certs;
    let pair = stem.map(|stem| certs::pair(tls, stem));
    spaceraft::security::tls::ClientTls::load(
        &certs::ca_pem(tls),
        pair.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path())),
    )
    .expect("client TLS")
    .config()
}

pub fn spaceraft_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spaceraft")
}

/// Runs `spaceraft node --config CONFIG ARGS…`, expects it to refuse to
/// start, and returns what it said on stderr.
pub fn node_refuses_to_start(config: &Path, args: &[&str]) -> String {
    let output = Command::new(spaceraft_bin())
        .args(["node", "--config"])
        .arg(config)
        .args(args)
        .output()
        .expect("run spaceraft node");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "the node started but should have refused: {stderr}");
    stderr
}

pub fn spacectl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_spacectl")
}

/// Writes a node config with timings short enough for tests.
pub fn write_config(path: &Path, id: u64, addr: &str, data_dir: &Path, peers: &[(u64, String)], extra: &str) {
    let mut text = format!(
        "node_id = {id}\nregion = \"{}\"\nlisten_addr = \"{addr}\"\ndata_dir = \"{}\"\nbootstrap = {}\n",
        REGIONS[(id as usize - 1) % 3],
        data_dir.display(),
        id == 1
    );
    // `join_token = ...` in `extra` is a top-level key.
    let (top_level, extra): (Vec<&str>, Vec<&str>) = extra.lines().partition(|line| line.starts_with("join_token"));
    for line in top_level {
        text.push_str(line);
        text.push('\n');
    }
    let extra = extra.join("\n") + "\n";
    for (peer_id, peer_addr) in peers {
        text.push_str(&format!(
            "[[peers]]\nid = {peer_id}\nregion = \"{}\"\naddr = \"{peer_addr}\"\n",
            REGIONS[(*peer_id as usize - 1) % 3]
        ));
    }
    // Plaintext, unless `extra` has a [security] section (t80's secured
    // clusters); every other test is about something else.
    let (security_extra, extra) = split_section(&extra, "[security]");
    if security_extra.is_empty() {
        text.push_str("[security]\ninsecure = true\n");
    } else {
        text.push_str(&format!("[security]\n{security_extra}"));
    }
    // A [groups] section in `extra` adds its keys to the test defaults.
    let (groups_extra, extra) = split_section(&extra, "[groups]");
    text.push_str(&format!(
        "[groups]\nping_interval_ms = 100\ndown_after_ms = 1000\nquiesce_after_ms = 1000\n\
         leader_check_interval_ms = 200\nleader_settle_ms = 1500\n{groups_extra}"
    ));
    // [raft] last: callers' extra lines may continue it.
    text.push_str(
        "[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 400\nelection_timeout_max_ms = 800\n",
    );
    text.push_str(&extra);
    std::fs::write(path, text).expect("write node config");
}

/// Takes the lines of TOML `section` (header excluded) out of `text`.
fn split_section(text: &str, section: &str) -> (String, String) {
    let (mut inside, mut taken, mut rest) = (false, String::new(), String::new());
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == section;
            if inside {
                continue;
            }
        }
        let into = if inside { &mut taken } else { &mut rest };
        into.push_str(line);
        into.push('\n');
    }
    (taken, rest)
}

impl TestCluster {
    /// Starts three nodes in three regions and waits for a leader.
    pub async fn start() -> TestCluster {
        Self::start_with("").await
    }

    pub async fn start_with(extra_config: &str) -> TestCluster {
        Self::start_as(extra_config, None).await
    }

    /// Three nodes with TLS on every port, certificates, token keys and
    /// security on, as a deployment runs (`security_extra`: more keys of
    /// their `[security]`); the test's own calls go as the operator.
    pub async fn start_secured(extra_config: &str, security_extra: &str) -> TestCluster {
        Self::start_as(extra_config, Some(security_extra)).await
    }

    /// Starts node 1 alone, and nodes 2 and 3 only `gap` later: node 1's
    /// bootstrap outlasts its failure detector's grace for peers it never
    /// heard from.
    pub async fn start_staggered(gap: Duration) -> TestCluster {
        let mut cluster = Self::configure("", None);
        cluster.start_node(1);
        tokio::time::sleep(gap).await;
        cluster.start_node(2);
        cluster.start_node(3);
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    async fn start_as(extra_config: &str, security_extra: Option<&str>) -> TestCluster {
        let mut cluster = Self::configure(extra_config, security_extra);
        for id in 1..=3 {
            cluster.start_node(id);
        }
        cluster.wait_for_leader(Duration::from_secs(30)).await;
        cluster
    }

    /// Three nodes' configs and directories, none started.
    fn configure(extra_config: &str, security_extra: Option<&str>) -> TestCluster {
        let secured = security_extra.is_some();
        let dir = tempfile::tempdir().expect("temp dir");
        let ports = free_ports(3);
        let peers: Vec<(u64, String)> =
            ports.iter().enumerate().map(|(i, p)| (i as u64 + 1, format!("127.0.0.1:{p}"))).collect();
        let tls = secured.then(|| dir.path().join("tls"));
        if let Some(tls) = &tls {
            make_certs(tls, &[1, 2, 3]);
            let operator = client_tls(tls, Some(&spaceraft::security::certs::operator_stem(OPERATOR)));
            let mut registry = TLS_BY_ADDR.lock().unwrap();
            registry.extend(peers.iter().map(|(_, addr)| (addr.clone(), operator.clone())));
        }
        let mut nodes = Vec::new();
        for (id, addr) in &peers {
            let config_path = dir.path().join(format!("node-{id}.toml"));
            let data_dir = dir.path().join(format!("node-{id}"));
            let mut extra = extra_config.to_string();
            if let Some(tls) = &tls {
                extra.push_str(&security_section(tls, &spaceraft::security::certs::node_stem(*id)));
                extra.push_str(security_extra.unwrap_or_default());
            }
            write_config(&config_path, *id, addr, &data_dir, &peers, &extra);
            nodes.push(TestNode { id: *id, addr: addr.clone(), config_path, data_dir, process: None });
        }
        TestCluster { dir, nodes, gateways: Vec::new(), tls }
    }

    /// Starts one more node (not a bootstrap peer: it joins the running
    /// cluster) and returns its id.
    pub fn add_node(&mut self, extra_config: &str) -> u64 {
        let id = self.nodes.len() as u64 + 1;
        let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
        let mut peers: Vec<(u64, String)> = self.nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
        peers.push((id, addr.clone()));
        let config_path = self.dir.path().join(format!("node-{id}.toml"));
        let data_dir = self.dir.path().join(format!("node-{id}"));
        let mut extra = extra_config.to_string();
        if let Some(tls) = &self.tls {
            make_certs(tls, &[id]);
            extra.push_str(&security_section(tls, &spaceraft::security::certs::node_stem(id)));
            let operator = client_tls(tls, Some(&spaceraft::security::certs::operator_stem(OPERATOR)));
            TLS_BY_ADDR.lock().unwrap().push((addr.clone(), operator));
        }
        write_config(&config_path, id, &addr, &data_dir, &peers, &extra);
        self.nodes.push(TestNode { id, addr, config_path, data_dir, process: None });
        self.start_node(id);
        id
    }

    pub fn node(&self, id: u64) -> &TestNode {
        &self.nodes[id as usize - 1]
    }

    pub fn endpoints(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    pub fn start_node(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.process.is_none(), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.data_dir.with_extension("log"))
            .expect("node log");
        let child = Command::new(spaceraft_bin())
            .arg("node")
            .arg("--config")
            .arg(&node.config_path)
            // SPACERAFT_TEST_NODE_LOG overrides the nodes' log filter when
            // a failure needs more.
            .env(
                "SPACERAFT_LOG",
                std::env::var("SPACERAFT_TEST_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,fjall=warn,lsm_tree=warn".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start spaceraft node");
        node.process = Some(child);
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill_node(&mut self, id: u64) {
        let node = &mut self.nodes[id as usize - 1];
        if let Some(mut child) = node.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (up to `timeout`) for the node to exit; returns
    /// whether it exited cleanly in time (it is killed when not).
    pub async fn stop_node(&mut self, id: u64, timeout: Duration) -> bool {
        self.signal_node(id, "TERM");
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.process.take().expect("node is running");
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return status.success();
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (e.g. "STOP", "CONT") to a running node.
    pub fn signal_node(&self, id: u64, signal: &str) {
        let pid = self.node(id).process.as_ref().expect("node is running").id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn node_log(&self, id: u64) -> String {
        std::fs::read_to_string(self.node(id).data_dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn client(&self, id: u64) -> pb::client_client::ClientClient<Channel> {
        pb::client_client::ClientClient::new(connect(&self.node(id).addr).await)
    }

    pub async fn admin(&self, id: u64) -> pb::admin_client::AdminClient<Channel> {
        pb::admin_client::AdminClient::new(connect(&self.node(id).addr).await)
    }

    /// The leader's id as seen by any running node, within `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        wait_until(timeout, "a leader of the first space cluster", async || {
            let mut roles = Vec::new();
            for node in self.nodes.iter().filter(|n| n.process.is_some()) {
                let Ok(channel) = try_connect(&node.addr).await else { continue };
                let mut admin = pb::admin_client::AdminClient::new(channel);
                if let Ok(status) = admin.node_status(pb::NodeStatusRequest::default()).await {
                    let status = status.into_inner();
                    if let Some(replica) = space_replica(&status) {
                        if replica.role == "leader" {
                            return Ok(replica.node_id);
                        }
                        roles.push(format!("node {}: {}", node.id, replica.role));
                    }
                }
            }
            Err(roles)
        })
        .await
    }

    /// Waits until every running node has applied at least `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for node in self.nodes.iter().filter(|n| n.process.is_some()) {
            let what = format!("node {} to apply index {index}", node.id);
            let left = deadline.saturating_duration_since(Instant::now());
            wait_until(left, &what, async || {
                let mut admin = pb::admin_client::AdminClient::new(connect(&node.addr).await);
                let status = admin.node_status(pb::NodeStatusRequest::default()).await.map_err(|e| e.to_string())?;
                match space_replica(&status.into_inner()) {
                    Some(replica) if replica.applied_index >= index => Ok(()),
                    Some(replica) => Err(format!("applied {}", replica.applied_index)),
                    None => Err("no replica yet".to_string()),
                }
            })
            .await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            self.kill_node(id);
        }
        for index in 0..self.gateways.len() {
            self.kill_gateway(index);
        }
        // Keep the node logs of a failed test for the post-mortem.
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!("spaceraft-failed-test-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for node in &self.nodes {
                let log = node.data_dir.with_extension("log");
                let _ = std::fs::copy(&log, keep.join(format!("node-{}.log", node.id)));
            }
            for gateway in &self.gateways {
                let _ = std::fs::copy(&gateway.log_path, keep.join(format!("gateway-{}.log", gateway.region)));
            }
            eprintln!("node logs kept in {}", keep.display());
        }
    }
}

pub async fn try_connect(addr: &str) -> Result<Channel, tonic::transport::Error> {
    let tls = TLS_BY_ADDR.lock().unwrap().iter().find(|(known, _)| known == addr).map(|(_, tls)| tls.clone());
    let endpoint = match tls {
        Some(tls) => tonic::transport::Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(tls)?,
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
    };
    endpoint.connect_timeout(Duration::from_millis(500)).timeout(Duration::from_secs(10)).connect().await
}

/// Connects, retrying while the node starts (up to 20 s).
pub async fn connect(addr: &str) -> Channel {
    let what = format!("a connection to {addr}");
    wait_until(Duration::from_secs(20), &what, async || try_connect(addr).await).await
}

/// Every message of a space as `node` serves it (operator read, paged).
pub async fn full_history(cluster: &TestCluster, node: u64, space: &str) -> Vec<pb::Message> {
    let mut client = cluster.client(node).await;
    let mut messages = Vec::new();
    let mut from_seq = 1;
    loop {
        let page = client
            .history(pb::HistoryRequest {
                space: space.into(),
                user: String::new(),
                from_seq,
                limit: 100,
                linearizable: false,
            })
            .await
            .expect("history")
            .into_inner();
        if page.messages.is_empty() {
            return messages;
        }
        from_seq = page.messages.last().unwrap().seq + 1;
        messages.extend(page.messages);
    }
}

pub async fn create_space(cluster: &TestCluster, node: u64, name: &str, members: &[&str]) {
    let mut client = cluster.client(node).await;
    client
        .create_space(pb::CreateSpaceRequest {
            name: name.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            attrs: Default::default(),
        })
        .await
        .expect("create space");
}

/// A node's replica of the first space cluster (the one bootstrap makes,
/// where the tests' spaces are placed), out of its status; none while the
/// node is still starting it.
pub fn space_replica(status: &pb::NodeStatusResponse) -> Option<&pb::ReplicaStatus> {
    status.replicas.iter().find(|replica| replica.cluster_id == spaceraft::config::DEFAULT_CLUSTER_ID)
}

/// How often [`wait_until`] and [`wait_until_blocking`] look again.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Runs `condition` until it returns `Ok`, and returns its value. `Err`
/// carries what was observed instead; after `timeout` the test panics,
/// naming `what` it waited for and the last observation.
pub async fn wait_until<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut condition: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(observed) if Instant::now() >= deadline => give_up(timeout, what, observed),
            Err(_) => tokio::time::sleep(WAIT_POLL_INTERVAL).await,
        }
    }
}

/// [`wait_until`] for a condition whose every call returns a future that
/// owns what it uses: such a wait can run in a spawned task, where the
/// futures of an `AsyncFnMut` are not known to be `Send`.
pub async fn wait_until_owned<T, E: std::fmt::Debug, Fut: std::future::Future<Output = Result<T, E>>>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Fut,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(observed) if Instant::now() >= deadline => give_up(timeout, what, observed),
            Err(_) => tokio::time::sleep(WAIT_POLL_INTERVAL).await,
        }
    }
}

fn give_up(timeout: Duration, what: &str, observed: impl std::fmt::Debug) -> ! {
    panic!("timed out after {timeout:?} waiting for {what}; last observed: {observed:?}")
}

/// [`wait_until`] for code that is not async (a thread, a child process).
pub fn wait_until_blocking<T, E: std::fmt::Debug>(
    timeout: Duration,
    what: &str,
    mut condition: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match condition() {
            Ok(value) => return value,
            Err(observed) if Instant::now() >= deadline => give_up(timeout, what, observed),
            Err(_) => std::thread::sleep(WAIT_POLL_INTERVAL),
        }
    }
}

/// Any failed post is worth another try.
pub fn any_failure(_: &tonic::Status) -> bool {
    true
}

/// Only a failure a node may not have a moment later is worth another try
/// (no leader, a killed node, a timeout); anything else fails the test.
pub fn unavailable_or_timeout(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
    )
}

/// How long one post attempt may take before it is tried again.
const POST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Posts `request` until a node acknowledges it, and returns its seq. Each
/// attempt goes to the next of `addrs` in turn, starting at `first`, with
/// the same idempotency key, so the post commits once however many attempts
/// it takes. A failure `retryable` refuses fails the test at once; after
/// `timeout`, the test fails with the last failure.
pub async fn post_until_acknowledged(
    addrs: &[String],
    first: usize,
    request: pb::PostRequest,
    timeout: Duration,
    retryable: fn(&tonic::Status) -> bool,
) -> u64 {
    assert!(!request.idempotency_key.is_empty(), "a retried post needs an idempotency key");
    let what = format!("post {} to be acknowledged", request.idempotency_key);
    let mut attempt = first;
    // Each attempt owns what it uses, so a post can run in a spawned task.
    let next_attempt = || {
        let addr = addrs[attempt % addrs.len()].clone();
        attempt += 1;
        let request = request.clone();
        async move {
            let channel = try_connect(&addr).await.map_err(|error| format!("{addr}: {error}"))?;
            let mut client = pb::client_client::ClientClient::new(channel);
            let key = request.idempotency_key.clone();
            match tokio::time::timeout(POST_ATTEMPT_TIMEOUT, client.post(request)).await {
                Ok(Ok(response)) => Ok(response.into_inner().seq),
                Ok(Err(status)) => {
                    assert!(retryable(&status), "post {key} failed with a status not worth retrying: {status}");
                    Err(format!("{addr}: {status}"))
                }
                Err(_) => Err(format!("{addr}: no answer within {POST_ATTEMPT_TIMEOUT:?}")),
            }
        }
    };
    wait_until_owned(timeout, &what, next_attempt).await
}

/// The cluster's id, as the bootstrap node keeps it in its data directory.
pub fn cluster_id(cluster: &TestCluster) -> String {
    spaceraft::wire::read_cluster_id(&cluster.node(1).data_dir)
        .expect("readable cluster id")
        .expect("the bootstrap node keeps the cluster id")
}
