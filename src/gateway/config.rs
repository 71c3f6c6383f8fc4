//! Gateway configuration: a TOML file, overridden by `SPACERAFT_GATEWAY_*`
//! environment variables (nested keys joined by `__`, e.g.
//! `SPACERAFT_GATEWAY_CLIENTS__SEND_QUEUE_LEN_MAX`), overridden by flags.
//! Every bound has a default and its unit last in its name.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The region this gateway serves; it follows a replica here when one
    /// is healthy.
    pub region: String,
    /// HTTP: the web page, `/v1/ws` (WebSocket), `/v1/status`, `/healthz`.
    pub http_addr: SocketAddr,
    /// gRPC: `spaceraft.v1.Gateway` for native clients.
    pub grpc_addr: SocketAddr,
    /// The nodes of the deployment; the gateway follows and forwards to them.
    pub nodes: Vec<NodeEndpoint>,
    /// Other regions, nearest first: where to follow from when no replica in
    /// this region is healthy. Regions not listed come after, in the order of
    /// `nodes`.
    #[serde(default)]
    pub regions_by_distance: Vec<String>,
    /// WebSocket URLs of other gateways, nearest first. Sent to clients in
    /// `welcome`, so the web page can reconnect to another gateway when this
    /// one is gone.
    #[serde(default)]
    pub peer_gateways: Vec<String>,
    /// The id of the cluster the nodes belong to (`spacectl cluster
    /// status`, or a node's data directory); learned from the first node
    /// that answers when not set. A node of another cluster is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    #[serde(default)]
    pub clients: ClientsConfig,
    /// TLS on both listeners and to the nodes (the gateway's certificate
    /// names `spaceraft://CLUSTER/gateway/NAME`), and the keys users' tokens
    /// are checked against (docs/security.md).
    #[serde(default)]
    pub security: crate::config::SecurityConfig,
    /// For a development cluster only: a token signing key with which
    /// `POST /v1/login` hands the web page a token for any user name it
    /// asks for. Never set it where users are real.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_login_signing_key: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeEndpoint {
    pub region: String,
    /// host:port of the node's gRPC server.
    pub addr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Follow two replicas in different regions at once and dedupe by
    /// (space, seq), so losing one costs no delivery delay.
    pub redundant: bool,
    /// A followed replica that sends nothing (not even progress) for this
    /// long is given up and another is followed.
    pub silence_ms_max: u64,
    /// A followed replica whose applied index stays behind one another
    /// replica reached for this long is lagging: another is followed.
    pub lag_ms_max: u64,
    /// How often the gateway probes every node's health and applied index.
    pub probe_interval_ms: u64,
    /// A replica of this region must have been healthy this long before the
    /// gateway moves back to it from another region.
    pub home_healthy_ms_min: u64,
    /// A replica that failed is not chosen again for this long (unless no
    /// other is left).
    pub failed_cooldown_ms: u64,
    pub connect_timeout_ms: u64,
    /// Timeout of a post, history or list call forwarded to a node.
    pub request_timeout_ms: u64,
    /// How long a post with an idempotency key waits for one node before
    /// it is sent to the next as well (sending it again is safe: the key
    /// commits it once). A post without a key waits `request_timeout_ms`
    /// for the first node it reached.
    pub post_attempt_ms: u64,
    /// The local address connections to nodes are made from (default: the
    /// system's choice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            redundant: false,
            silence_ms_max: 1_500,
            lag_ms_max: 3_000,
            probe_interval_ms: 500,
            home_healthy_ms_min: 3_000,
            failed_cooldown_ms: 2_000,
            connect_timeout_ms: 1_000,
            request_timeout_ms: 10_000,
            post_attempt_ms: 1_500,
            source_ip: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientsConfig {
    /// Frames queued per client. A client whose queue overflows is closed
    /// with code 4008 (slow consumer) and resumes from its cursors.
    pub send_queue_len_max: usize,
    /// How long a catch-up or reply may wait for room in a client's queue
    /// before the client is closed as a slow consumer.
    pub send_wait_ms_max: u64,
    /// After a close is decided, how long the writer may take to get the
    /// close frame out before the connection is dropped.
    pub close_wait_ms_max: u64,
    /// Largest frame accepted from a client.
    pub frame_bytes_max: usize,
    /// The first frame must be `hello` within this.
    pub hello_wait_ms_max: u64,
    /// Newest messages kept per followed space to serve resuming clients
    /// without a history read.
    pub space_buffer_len_max: usize,
    /// Spaces one client may subscribe to.
    pub subscriptions_len_max: usize,
    /// Posts of one client in flight at once.
    pub posts_inflight_max: usize,
    /// Connected clients at most; more are refused (HTTP 503 on WebSocket,
    /// UNAVAILABLE on gRPC) and should try another gateway.
    pub connections_max: usize,
    /// Open HTTP connections from one IP address at most; more are closed
    /// at once.
    pub connections_per_ip_max: usize,
    /// A connection that has not sent a request's headers by then is
    /// closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// Origins (`https://chat.example.com`) whose pages may open the
    /// WebSocket. Empty: only the gateway's own page. A request without an
    /// Origin (not a browser) is not checked.
    pub allowed_origins: Vec<String>,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        ClientsConfig {
            send_queue_len_max: 1_024,
            send_wait_ms_max: 5_000,
            close_wait_ms_max: 5_000,
            frame_bytes_max: 256 * 1024,
            hello_wait_ms_max: 10_000,
            space_buffer_len_max: 1_024,
            subscriptions_len_max: 1_000,
            posts_inflight_max: 64,
            connections_max: 100_000,
            connections_per_ip_max: 256,
            header_read_timeout_ms: 10_000,
            allowed_origins: Vec::new(),
        }
    }
}

/// Values given as flags; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeEndpoint>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<crate::config::SecurityFlags>,
}

impl GatewayConfig {
    pub fn load(file: Option<&Path>, flags: &GatewayFlags) -> Result<GatewayConfig, ConfigError> {
        let mut figment = Figment::new();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("config file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        let figment = figment.merge(Env::prefixed("SPACERAFT_GATEWAY_").split("__")).merge(Serialized::globals(flags));
        let config: GatewayConfig = figment.extract().map_err(|error| {
            let messages: Vec<String> = error.into_iter().map(|one| one.to_string()).collect();
            ConfigError(messages.join("; "))
        })?;
        config.check()?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, why: &str| Err(ConfigError(format!("invalid value for key \"{key}\": {why}")));
        if self.region.is_empty() {
            return bad("region", "must not be empty");
        }
        if self.nodes.is_empty() {
            return bad("nodes", "at least one node is needed");
        }
        if self.clients.send_queue_len_max == 0 || self.clients.space_buffer_len_max == 0 {
            return bad("clients.send_queue_len_max", "queue and buffer bounds must be at least 1");
        }
        if self.upstream.post_attempt_ms == 0 {
            return bad("upstream.post_attempt_ms", "must be above 0");
        }
        if self.upstream.silence_ms_max == 0 || self.upstream.probe_interval_ms == 0 {
            return bad("upstream.silence_ms_max", "intervals must be above 0");
        }
        if self.clients.connections_per_ip_max == 0 || self.clients.header_read_timeout_ms == 0 {
            return bad("clients.connections_per_ip_max", "connection bounds must be above 0");
        }
        self.security.check()
    }
}

/// Parses a node flag: REGION@HOST:PORT.
pub fn parse_node(text: &str) -> Result<NodeEndpoint, String> {
    let (region, addr) = text.split_once('@').ok_or_else(|| format!("expected REGION@HOST:PORT, got {text:?}"))?;
    if region.is_empty() || addr.is_empty() {
        return Err(format!("expected REGION@HOST:PORT, got {text:?}"));
    }
    Ok(NodeEndpoint { region: region.to_string(), addr: addr.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_with_flags_on_top_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "region = \"us-east\"\nhttp_addr = \"127.0.0.1:8001\"\ngrpc_addr = \"127.0.0.1:8101\"\n\
             [[nodes]]\nregion = \"us-east\"\naddr = \"127.0.0.1:7001\"\n[upstream]\nredundant = true\n\
             [security]\ninsecure = true\n",
        )
        .unwrap();
        let flags = GatewayFlags { region: Some("eu-west".into()), ..Default::default() };
        let config = GatewayConfig::load(Some(&path), &flags).unwrap();
        assert_eq!(config.region, "eu-west");
        assert!(config.upstream.redundant);
        assert_eq!(config.clients.send_queue_len_max, 1_024);
    }

    #[test]
    fn an_unknown_key_and_a_bad_node_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            "region = \"x\"\nhttp_addr = \"127.0.0.1:1\"\ngrpc_addr = \"127.0.0.1:2\"\nnodes = []\nspeed = 3\n",
        )
        .unwrap();
        let error = GatewayConfig::load(Some(&path), &GatewayFlags::default()).unwrap_err();
        assert!(error.0.contains("speed"), "{error}");
        assert!(parse_node("no-at-sign").is_err());
        assert_eq!(parse_node("us-east@127.0.0.1:7001").unwrap().region, "us-east");
    }
}
