//! Node configuration: a TOML file, overridden by `SPACERAFT_*` environment
//! variables named after config keys, overridden by command-line flags, in
//! that order. Other `SPACERAFT_*` variables (spacectl's, the gateway's) are
//! not a node's: a node ignores them.
//!
//! Every bound lives here with a default and its unit last in its name. A bad
//! value is reported with its key and the source it came from (the file, the
//! environment or a flag), e.g.
//! `invalid type: found string "x", expected u64 for key "raft.heartbeat_interval_ms" in TOML file node.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::space::validate::Limits;

/// The id of a node; unique in a deployment, never reused.
pub type NodeId = u64;

/// The first space cluster, made at bootstrap with every peer as a voter.
pub const DEFAULT_CLUSTER_ID: u64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub region: String,
    /// Where the gRPC server listens.
    pub listen_addr: SocketAddr,
    /// Where peers and clients reach this node; defaults to `listen_addr`.
    #[serde(default)]
    pub advertise_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Initialize the space cluster with `peers` as its voters when this
    /// node's log is empty. Idempotent: an initialized cluster ignores it.
    #[serde(default)]
    pub bootstrap: bool,
    /// The voters of the space cluster at bootstrap, this node included.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub raft: RaftConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub space: SpaceConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub groups: GroupsConfig,
    /// The placement policy the meta leader applies to new spaces.
    #[serde(default)]
    pub placement: crate::placement::PlacementConfig,
    /// TLS, certificates and tokens (docs/security.md).
    #[serde(default)]
    pub security: SecurityConfig,
    /// A one-time token from `spacectl node join-token`, for a node that
    /// joins a running cluster (not needed by the bootstrap peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
}

/// How a process proves who it is and checks who calls it. Secure unless
/// `insecure` says otherwise: a node or gateway with neither certificates
/// nor `insecure = true` refuses to start.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Plaintext on every port and no authentication: every caller holds
    /// every role and names are believed as claimed. For a laptop only;
    /// logged at start and shown by `spacectl cluster status`.
    pub insecure: bool,
    /// The cluster CA's certificate (PEM): every process's certificate is
    /// signed by it, and only certificates it signed are believed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// This process's certificate (PEM), naming `spaceraft://CLUSTER/KIND/NAME`
    /// and the host names and addresses it is reached at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM, PKCS#8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The keys users' tokens are checked against: `KID.pem` (Ed25519
    /// public keys) and `KID.hs256` (secrets). Without it, only certificates
    /// are accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_keys_dir: Option<PathBuf>,
    /// A connection that has not finished its TLS handshake by then is closed.
    pub handshake_timeout_ms: u64,
    /// Open connections to a node from one IP address at most; more are
    /// closed at once. (A gateway bounds its clients' by
    /// `clients.connections_per_ip_max`.)
    pub connections_per_ip_max: usize,
    /// Posts one user may make per second on one node (a burst of twice
    /// that is allowed); beyond it, `resource_exhausted`. 0: no limit.
    pub posts_per_user_per_sec: u32,
    /// The largest snapshot a node accepts from its leader; a larger one is
    /// refused before it is written.
    pub snapshot_bytes_max: u64,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            insecure: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            token_keys_dir: None,
            handshake_timeout_ms: 5_000,
            connections_per_ip_max: 1_024,
            posts_per_user_per_sec: 200,
            snapshot_bytes_max: 16 * 1024 * 1024 * 1024,
        }
    }
}

impl SecurityConfig {
    /// Checks that a secure process has its certificate files.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.insecure {
            return Ok(());
        }
        for (key, value) in [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if value.is_none() {
                return Err(ConfigError(format!(
                    "security.{key} is not set: give the certificate files (spaceraft certs makes them) \
                     or run without TLS and authentication with --insecure"
                )));
            }
        }
        Ok(())
    }
}

/// Many groups on one node: liveness, quiescence and leader placement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Stop the timers of idle groups (see `quiesce_after_ms`); off keeps
    /// every group heartbeating, which costs CPU per group.
    pub quiesce: bool,
    /// Voters of a space cluster made by placement (one per region, as many
    /// regions as there are up to this).
    pub cluster_voters_len: usize,
    /// How often each node pings each other node (one ping per node pair,
    /// whatever the number of groups).
    pub ping_interval_ms: u64,
    /// A node that answered no ping for this long is taken as down: the
    /// quiesced groups it led wake up and elect a new leader.
    pub down_after_ms: u64,
    /// A group whose log has not grown for this long, with every voter
    /// caught up, stops its timers (no heartbeats, no election timer).
    pub quiesce_after_ms: u64,
    /// How often a leader checks whether its cluster's leadership belongs
    /// in another region.
    pub leader_check_interval_ms: u64,
    /// A leader moves leadership to the preferred region only after leading
    /// this long and seeing the target up this long (no flapping).
    pub leader_settle_ms: u64,
    /// A follower that is up but whose replication has not advanced for
    /// this long while the leader has more is taken as stalled: the leader
    /// hands leadership to a caught-up voter, which replicates afresh.
    pub replication_stall_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            quiesce: true,
            cluster_voters_len: 3,
            ping_interval_ms: 250,
            down_after_ms: 1_000,
            quiesce_after_ms: 3_000,
            leader_check_interval_ms: 1_000,
            leader_settle_ms: 5_000,
            replication_stall_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: NodeId,
    pub region: String,
    pub addr: String,
}

/// Raft timing and batching. The defaults suit links between regions (tens
/// to a hundred milliseconds one way), not a LAN. openraft waits one
/// heartbeat interval for a heartbeat's reply, so the interval must stay
/// well above the longest round trip between voters (the failure detector
/// warns when it is not).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A whole snapshot transfer must finish within this.
    pub install_snapshot_timeout_ms: u64,
    /// Entries per AppendEntries request.
    pub append_entries_len_max: u64,
    /// Build a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, so lagging followers catch
    /// up from the log instead of a snapshot.
    pub snapshot_logs_kept_len: u64,
    /// Posts batched into one Raft entry by the leader's proposer.
    pub propose_batch_len_max: usize,
    /// Bytes of posts batched into one Raft entry (a larger post goes alone).
    pub propose_batch_bytes_max: usize,
    /// Proposal batches in flight at once on the leader.
    pub propose_inflight_max: usize,
    /// How long a request waits for a leader to be known before failing.
    pub leader_wait_ms: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            install_snapshot_timeout_ms: 120_000,
            append_entries_len_max: 64,
            snapshot_logs_since_last: 50_000,
            snapshot_logs_kept_len: 10_000,
            propose_batch_len_max: 1_024,
            propose_batch_bytes_max: 4 * 1024 * 1024,
            propose_inflight_max: 16,
            leader_wait_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub body_bytes_max: usize,
    pub name_len_max: usize,
    pub members_len_max: usize,
    pub idempotency_key_len_max: usize,
    /// Messages a History call returns at most.
    pub history_len_max: u32,
    /// Bytes of messages a History page carries at most (at least one
    /// message): a page of large messages stops early, below the 4 MiB a
    /// gRPC client accepts by default.
    pub history_bytes_max: usize,
    /// Messages buffered per subscriber. A subscriber that reads slower waits
    /// at its cursor (nothing more is buffered); it resumes from the store.
    pub subscribe_queue_len_max: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let limits = Limits::default();
        LimitsConfig {
            body_bytes_max: limits.body_bytes_max,
            name_len_max: limits.name_len_max,
            members_len_max: limits.members_len_max,
            idempotency_key_len_max: limits.idempotency_key_len_max,
            history_len_max: 1_000,
            history_bytes_max: 2 * 1024 * 1024,
            subscribe_queue_len_max: 1_024,
        }
    }
}

impl LimitsConfig {
    pub fn request_limits(&self) -> Limits {
        Limits {
            body_bytes_max: self.body_bytes_max,
            name_len_max: self.name_len_max,
            members_len_max: self.members_len_max,
            idempotency_key_len_max: self.idempotency_key_len_max,
        }
    }
}

/// Rules stamped into a space when it is created.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SpaceConfig {
    /// How many of a space's newest messages remember their idempotency key.
    pub dedup_window_len: u64,
    /// How many of a space's newest messages are kept; 0 keeps all.
    pub retain_messages_max: u64,
}

impl Default for SpaceConfig {
    fn default() -> Self {
        SpaceConfig { dedup_window_len: 100_000, retain_messages_max: 0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// How often the process-wide flusher writes the state machine (sled) out.
    pub sm_flush_interval_ms: u64,
    /// Appends waiting for one shared fsync of the Raft log at most.
    pub log_sync_batch_len_max: usize,
    /// sled's page cache.
    pub sm_cache_bytes: u64,
    /// Free bytes kept on the data directory's file system: below this, the
    /// node refuses the posts it leads with `resource_exhausted`, before
    /// the disk is full.
    pub disk_reserve_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            sm_flush_interval_ms: 500,
            log_sync_batch_len_max: 4_096,
            sm_cache_bytes: 256 * 1024 * 1024,
            disk_reserve_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub connect_timeout_ms: u64,
    /// Timeout of a forwarded client request.
    pub forward_timeout_ms: u64,
    /// HTTP/2 flow-control windows: large, so one shared connection is not
    /// capped at ~1 MiB per round trip across regions.
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    /// AppendEntries requests in flight on one replication stream.
    pub append_pipeline_len_max: usize,
    /// How often a Follow stream reports progress to its gateway, which
    /// switches replicas when progress stops.
    pub follow_progress_interval_ms: u64,
    /// The local address connections to peers are made from (default: the
    /// system's choice). Lets a network fault injector tell regions apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            connect_timeout_ms: 2_000,
            forward_timeout_ms: 10_000,
            http2_stream_window_bytes: 16 * 1024 * 1024,
            http2_connection_window_bytes: 64 * 1024 * 1024,
            append_pipeline_len_max: 64,
            follow_progress_interval_ms: 250,
            source_ip: None,
        }
    }
}

/// Values given as command-line flags; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerConfig>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityFlags>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
}

/// The security keys settable by flags.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SecurityFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
}

/// The top-level keys of [`NodeConfig`]: the only `SPACERAFT_*` variables a
/// node reads (`SPACERAFT_NODE_ID`, `SPACERAFT_RAFT__HEARTBEAT_INTERVAL_MS`,
/// …). Every other `SPACERAFT_*` name belongs to another tool (spacectl's
/// `SPACERAFT_ENDPOINTS` and `SPACERAFT_USER`, the gateway's
/// `SPACERAFT_GATEWAY_*`, the `--config` flag's `SPACERAFT_CONFIG`, the log
/// filter `SPACERAFT_LOG`): one shell can hold them all while it runs nodes.
/// A unit test keeps this list equal to the struct's fields.
pub const ENV_CONFIG_KEYS: &[&str] = &[
    "node_id",
    "region",
    "listen_addr",
    "advertise_addr",
    "data_dir",
    "bootstrap",
    "peers",
    "raft",
    "limits",
    "space",
    "storage",
    "network",
    "groups",
    "placement",
    "security",
    "join_token",
];

/// `SPACERAFT_*` names that other tools (or the node process itself) read;
/// a node ignores them without a warning.
const ENV_OF_OTHER_TOOLS: &[&str] = &[
    "config",
    "log",
    "endpoints",
    "output",
    "user",
    "yes",
    "dial_timeout",
    "command_timeout",
    "cluster_id",
    "cacert",
    "cert",
    "key",
    "token",
    "signing_key",
    // Kept by `spaceraft node` across the restarts that reopen failed stores.
    "storage_restarts",
];

/// Whether the `SPACERAFT_*` variable whose name (after the prefix, lower
/// case, nested keys joined by `.`) is `key` sets a node config key.
pub fn is_node_env_key(key: &str) -> bool {
    let top_level = key.split('.').next().unwrap_or(key);
    ENV_CONFIG_KEYS.contains(&top_level)
}

/// Whether a `SPACERAFT_*` variable that no node reads is worth a warning:
/// not another tool's, so perhaps a misspelt config key.
fn is_unknown_env_key(key: &str) -> bool {
    !is_node_env_key(key) && !ENV_OF_OTHER_TOOLS.contains(&key) && !key.starts_with("gateway_")
}

impl NodeConfig {
    /// Loads the layers: `file` (if given), then the `SPACERAFT_*` variables
    /// named after config keys (nested keys joined by `__`, e.g.
    /// `SPACERAFT_RAFT__HEARTBEAT_INTERVAL_MS`; see [`ENV_CONFIG_KEYS`]),
    /// then `flags`.
    pub fn load(file: Option<&Path>, flags: &FlagOverrides) -> Result<NodeConfig, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let env = Env::prefixed("SPACERAFT_").split("__");
        for (key, _) in env.iter().filter(|(key, _)| is_unknown_env_key(key.as_str())) {
            let variable = format!("SPACERAFT_{}", key.as_str().replace('.', "__").to_ascii_uppercase());
            tracing::warn!(%variable, "ignored: not a node config key");
        }
        let figment = figment
            .merge(env.filter(|key| is_node_env_key(&key.as_str().to_ascii_lowercase())))
            .merge(Serialized::globals(flags));
        let config: NodeConfig = figment.extract().map_err(|error| {
            let messages: Vec<String> = error.into_iter().map(|one| one.to_string()).collect();
            ConfigError(messages.join("; "))
        })?;
        config.check()?;
        Ok(config)
    }

    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise_addr.unwrap_or(self.listen_addr)
    }

    /// Checks relations between keys that serde cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("invalid value for key \"{key}\": {why}")));
        if self.node_id == 0 {
            return bad("node_id", "node ids start at 1");
        }
        if self.region.is_empty() {
            return bad("region", "must not be empty");
        }
        if self.bootstrap && !self.peers.iter().any(|peer| peer.id == self.node_id) {
            return bad("peers", "bootstrap needs this node among the peers");
        }
        let mut ids: Vec<NodeId> = self.peers.iter().map(|peer| peer.id).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|pair| pair[0] == pair[1]) {
            return bad("peers", "two peers have the same id");
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 || raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return bad(
                "raft.election_timeout_min_ms",
                "must be larger than raft.heartbeat_interval_ms (and that above 0)",
            );
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return bad("raft.election_timeout_max_ms", "must be larger than raft.election_timeout_min_ms");
        }
        if raft.propose_batch_len_max == 0 || raft.propose_inflight_max == 0 {
            return bad("raft.propose_batch_len_max", "batch and in-flight bounds must be at least 1");
        }
        if self.limits.body_bytes_max == 0 {
            return bad("limits.body_bytes_max", "must be at least 1");
        }
        // Apply refuses anything past the protocol's ceilings: a node
        // configured above them would acknowledge nothing it accepted.
        let ceilings = crate::space::validate::CEILINGS;
        let limits = &self.limits;
        for (key, value, ceiling) in [
            ("limits.body_bytes_max", limits.body_bytes_max, ceilings.body_bytes_max),
            ("limits.name_len_max", limits.name_len_max, ceilings.name_len_max),
            ("limits.members_len_max", limits.members_len_max, ceilings.members_len_max),
            ("limits.idempotency_key_len_max", limits.idempotency_key_len_max, ceilings.idempotency_key_len_max),
        ] {
            if value > ceiling {
                return bad(key, &format!("{value} is above the protocol's ceiling of {ceiling}"));
            }
        }
        if self.space.dedup_window_len == 0 {
            return bad("space.dedup_window_len", "must be at least 1");
        }
        self.security.check()
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

/// Parses `ID=REGION@HOST:PORT` as used by `--peer`.
pub fn parse_peer(text: &str) -> Result<PeerConfig, String> {
    let (id, rest) = text.split_once('=').ok_or_else(|| format!("peer {text:?} is not ID=REGION@HOST:PORT"))?;
    let (region, addr) = rest.split_once('@').ok_or_else(|| format!("peer {text:?} is not ID=REGION@HOST:PORT"))?;
    let id: NodeId = id.parse().map_err(|_| format!("peer {text:?}: {id:?} is not a node id"))?;
    Ok(PeerConfig { id, region: region.to_string(), addr: addr.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    const MINIMAL: &str =
        "node_id = 1\nregion = \"us-east\"\nlisten_addr = \"127.0.0.1:7001\"\ndata_dir = \"d\"\n[security]\ninsecure = true\n";

    #[test]
    fn a_node_without_certificates_or_insecure_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &MINIMAL.replace("insecure = true", ""));
        let error = NodeConfig::load(Some(&path), &FlagOverrides::default()).unwrap_err().to_string();
        assert!(error.contains("security.ca_file") && error.contains("--insecure"), "{error}");
        let flags = FlagOverrides { security: Some(SecurityFlags { insecure: Some(true) }), ..Default::default() };
        assert!(NodeConfig::load(Some(&path), &flags).unwrap().security.insecure);
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), MINIMAL);
        let flags = FlagOverrides { region: Some("eu-west".into()), ..Default::default() };
        let config = NodeConfig::load(Some(&path), &flags).unwrap();
        assert_eq!(config.region, "eu-west");
        assert_eq!(config.raft, RaftConfig::default());
    }

    #[test]
    fn a_bad_value_names_its_key_and_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("{MINIMAL}[raft]\nheartbeat_interval_ms = \"fast\"\n"));
        let error = NodeConfig::load(Some(&path), &FlagOverrides::default()).unwrap_err().to_string();
        assert!(error.contains("raft.heartbeat_interval_ms"), "{error}");
        assert!(error.contains("node.toml"), "{error}");
    }

    #[test]
    fn a_limit_above_the_protocols_ceiling_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("{MINIMAL}[limits]\nbody_bytes_max = 8388608\n"));
        let error = NodeConfig::load(Some(&path), &FlagOverrides::default()).unwrap_err().to_string();
        assert!(error.contains("limits.body_bytes_max") && error.contains("ceiling"), "{error}");
    }

    #[test]
    fn an_unknown_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &format!("{MINIMAL}[raft]\nheartbeat_ms = 5\n"));
        let error = NodeConfig::load(Some(&path), &FlagOverrides::default()).unwrap_err().to_string();
        assert!(error.contains("heartbeat_ms"), "{error}");
    }

    #[test]
    fn the_env_config_keys_are_the_config_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), MINIMAL);
        let mut config = NodeConfig::load(Some(&path), &FlagOverrides::default()).unwrap();
        config.join_token = Some("a token".into());
        let value = serde_json::to_value(&config).unwrap();
        let mut fields: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut listed = ENV_CONFIG_KEYS.to_vec();
        fields.sort_unstable();
        listed.sort_unstable();
        assert_eq!(fields, listed);
    }

    #[test]
    fn a_node_reads_only_config_keys_from_the_environment() {
        for key in ["node_id", "raft.heartbeat_interval_ms", "placement.spaces_max", "peers"] {
            assert!(is_node_env_key(key), "{key}");
        }
        for key in ["config", "log", "endpoints", "output", "user", "yes", "dial_timeout", "command_timeout"] {
            assert!(!is_node_env_key(key), "{key}");
            assert!(!is_unknown_env_key(key), "{key} is another tool's, no warning");
        }
        assert!(!is_node_env_key("gateway_clients.send_queue_len_max"));
        assert!(!is_unknown_env_key("gateway_clients.send_queue_len_max"));
        assert!(is_unknown_env_key("nodeid"), "a misspelt key is warned about");
    }

    #[test]
    fn peers_parse_from_flags() {
        assert_eq!(
            parse_peer("2=eu-west@127.0.0.1:7002").unwrap(),
            PeerConfig { id: 2, region: "eu-west".into(), addr: "127.0.0.1:7002".into() }
        );
        assert!(parse_peer("eu-west@127.0.0.1:7002").is_err());
    }
}
