//! A `spaceraft gateway` process: binds its HTTP (page, WebSocket, status)
//! and gRPC listeners, starts the node prober and the upstream slots, and
//! closes every client with "going away" on shutdown. It holds no durable
//! state: clients resume elsewhere from their own cursors.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch;

use crate::gateway::auth::ClientAuth;
use crate::gateway::config::GatewayConfig;
use crate::gateway::fanout::{ClientHandle, Fanout};
use crate::gateway::listener::Bounds;
use crate::gateway::node_api::NodeApi;
use crate::gateway::nodes::NodePool;
use crate::gateway::protocol::CloseReason;
use crate::gateway::session::Shared;
use crate::gateway::upstream::{self, SlotStatus, UpstreamStatus};
use crate::pb;
use crate::security::identity::CertRole;
use crate::security::tls::TlsIdentity;

/// What the transports share: the sessions' context, the connected clients
/// and the counters the status page shows.
pub struct GatewayState {
    pub shared: Arc<Shared>,
    /// Who a client is (its token's subject).
    pub auth: ClientAuth,
    pub pool: NodePool,
    pub upstream: UpstreamStatus,
    next_client_id: AtomicU64,
    clients: Mutex<HashMap<u64, ClientHandle>>,
    connections: AtomicUsize,
    pub slow_consumers_closed: AtomicU64,
}

impl GatewayState {
    /// Registers a client; None when the gateway is full.
    pub fn admit(&self, user: String) -> Option<(ClientHandle, crate::gateway::fanout::ClientEnds)> {
        let connections_max = self.shared.config.clients.connections_max;
        if self.connections.fetch_add(1, Ordering::SeqCst) >= connections_max {
            self.connections.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let id = self.next_client_id.fetch_add(1, Ordering::Relaxed);
        let (client, ends) = ClientHandle::new(id, user, self.shared.config.clients.send_queue_len_max);
        self.clients.lock().expect("clients lock").insert(id, client.clone());
        Some((client, ends))
    }

    /// Whether new connections are refused now.
    pub fn is_full(&self) -> bool {
        self.connections.load(Ordering::SeqCst) >= self.shared.config.clients.connections_max
    }

    /// Counts a close the gateway decided, when it is decided (the close
    /// frame may take a while to reach a client that reads nothing).
    pub fn closing(&self, reason: Option<&CloseReason>) {
        if reason == Some(&CloseReason::SlowConsumer) {
            self.slow_consumers_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn leave(&self, client: &ClientHandle) {
        if self.clients.lock().expect("clients lock").remove(&client.id).is_some() {
            self.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn close_all(&self, reason: CloseReason) {
        for client in self.clients.lock().expect("clients lock").values() {
            client.close(reason.clone());
        }
    }

    /// What this gateway reports to the nodes it follows.
    fn report(&self, http_addr: SocketAddr, grpc_addr: SocketAddr, started: std::time::Instant) -> pb::GatewayReport {
        let (feeds, subscriptions) = self.shared.fanout.counts();
        pb::GatewayReport {
            gateway_id: format!("{}@{http_addr}", self.shared.region),
            region: self.shared.region.clone(),
            http_addr: http_addr.to_string(),
            grpc_addr: grpc_addr.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: started.elapsed().as_millis() as u64,
            clients: self.connections.load(Ordering::SeqCst) as u64,
            feeds: feeds as u64,
            subscriptions: subscriptions as u64,
            upstreams: self
                .upstream
                .snapshot()
                .into_iter()
                .map(|slot| pb::GatewayUpstream {
                    node: slot.node,
                    region: slot.region,
                    connected: slot.connected,
                    applied_index: slot.applied_index,
                    lag: slot.lag,
                    switches: slot.switches,
                    last_switch_reason: slot.last_switch_reason,
                })
                .collect(),
        }
    }

    pub fn status(&self) -> GatewayStatus {
        let (feeds, subscriptions) = self.shared.fanout.counts();
        let nodes = self
            .pool
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let health = self.pool.health(index);
                NodeView {
                    region: node.endpoint.region.clone(),
                    addr: node.endpoint.addr.clone(),
                    healthy: health.healthy,
                    applied_index: health.applied_index,
                }
            })
            .collect();
        GatewayStatus {
            region: self.shared.region.clone(),
            redundant: self.shared.config.upstream.redundant,
            clients: self.connections.load(Ordering::SeqCst),
            feeds,
            subscriptions,
            slow_consumers_closed: self.slow_consumers_closed.load(Ordering::Relaxed),
            upstreams: self.upstream.snapshot(),
            nodes,
        }
    }
}

/// `GET /v1/status`.
#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    pub region: String,
    pub redundant: bool,
    pub clients: usize,
    /// Spaces followed.
    pub feeds: usize,
    pub subscriptions: usize,
    pub slow_consumers_closed: u64,
    pub upstreams: Vec<SlotStatus>,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub region: String,
    pub addr: String,
    pub healthy: bool,
    pub applied_index: u64,
}

pub struct RunningGateway {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: Arc<GatewayState>,
    shutdown: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningGateway {
    /// Closes every client with "going away" and stops serving.
    pub async fn stop(self) {
        self.state.close_all(CloseReason::GoingAway);
        let wait = Duration::from_millis(self.state.shared.config.clients.close_wait_ms_max.min(2_000));
        let deadline = tokio::time::Instant::now() + wait;
        while self.state.connections.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.shutdown.send(true);
        for server in self.servers {
            server.abort();
        }
    }
}

/// The gateway's TLS identity (None: security off, announced). Its
/// certificate must be a gateway's, and names the cluster it serves.
fn gateway_tls(config: &mut GatewayConfig) -> anyhow::Result<Option<TlsIdentity>> {
    if config.security.insecure {
        tracing::warn!(
            region = %config.region,
            "SECURITY IS OFF (--insecure): plaintext, and every client is believed to be who it claims"
        );
        return Ok(None);
    }
    let tls = TlsIdentity::from_config(&config.security)?;
    let CertRole::Gateway(_) = &tls.identity.role else {
        anyhow::bail!("the certificate names {}, not a gateway", tls.identity.uri());
    };
    match &config.cluster_id {
        Some(configured) if *configured != tls.identity.cluster => anyhow::bail!(
            "cluster_id is {configured}, but the gateway's certificate is for cluster {}",
            tls.identity.cluster
        ),
        _ => config.cluster_id = Some(tls.identity.cluster.clone()),
    }
    Ok(Some(tls))
}

pub async fn start(mut config: GatewayConfig) -> anyhow::Result<RunningGateway> {
    let tls = gateway_tls(&mut config)?;
    let config = Arc::new(config);
    let pool = NodePool::new(&config, tls.as_ref().map(TlsIdentity::client)).map_err(anyhow::Error::msg)?;
    let auth = ClientAuth::from_config(&config, pool.cluster.clone())?;
    let fanout = Fanout::new(config.clients.space_buffer_len_max);
    let api = NodeApi {
        pool: pool.clone(),
        timeout: Duration::from_millis(config.upstream.request_timeout_ms),
        post_attempt: Duration::from_millis(config.upstream.post_attempt_ms),
    };
    let shared =
        Arc::new(Shared { region: config.region.clone(), api, fanout: fanout.clone(), config: config.clone() });
    let state = Arc::new(GatewayState {
        shared,
        auth,
        pool: pool.clone(),
        upstream: UpstreamStatus::default(),
        next_client_id: AtomicU64::new(1),
        clients: Mutex::new(HashMap::new()),
        connections: AtomicUsize::new(0),
        slow_consumers_closed: AtomicU64::new(0),
    });

    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on http_addr {}", config.http_addr))?;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on grpc_addr {}", config.grpc_addr))?;
    let http_addr = http_listener.local_addr()?;
    let grpc_addr = grpc_listener.local_addr()?;
    let reporting = Arc::downgrade(&state);
    let started = std::time::Instant::now();
    state.upstream.set_reporter(Arc::new(move || {
        let Some(state) = reporting.upgrade() else { return pb::GatewayReport::default() };
        state.report(http_addr, grpc_addr, started)
    }));

    let mut servers = Vec::new();
    let probe_interval = Duration::from_millis(config.upstream.probe_interval_ms);
    let keep_for = Duration::from_millis(config.upstream.lag_ms_max * 2 + config.upstream.probe_interval_ms);
    servers.push(tokio::spawn(pool.clone().probe_forever(probe_interval, keep_for)));
    let slots = if config.upstream.redundant { 2 } else { 1 };
    for slot in 0..slots {
        let run =
            upstream::run_slot(slot, pool.clone(), fanout.clone(), config.upstream.clone(), state.upstream.clone());
        servers.push(tokio::spawn(run));
        if slot == 0 && slots > 1 {
            // Let the main slot pick first so the redundant one takes
            // another region.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (shutdown, shutdown_receiver) = watch::channel(false);
    let router = crate::gateway::ws::router(state.clone());
    let handshake_timeout = Duration::from_millis(config.security.handshake_timeout_ms.max(1));
    let bounds = Bounds {
        connections_per_ip_max: config.clients.connections_per_ip_max,
        handshake_timeout,
        header_read_timeout: Duration::from_millis(config.clients.header_read_timeout_ms),
    };
    let acceptor = match &tls {
        Some(tls) => Some(tokio_rustls::TlsAcceptor::from(tls.rustls_server()?)),
        None => None,
    };
    servers.push(tokio::spawn(crate::gateway::listener::serve(
        http_listener,
        router,
        acceptor,
        bounds,
        shutdown_receiver.clone(),
    )));
    let grpc_service = crate::gateway::grpc::GatewayGrpc { state: state.clone() };
    let grpc_frame_bytes_max = config.clients.frame_bytes_max;
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<crate::pb::gateway_server::GatewayServer<crate::gateway::grpc::GatewayGrpc>>().await;
    let mut grpc_shutdown = shutdown_receiver;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server(handshake_timeout)).context("TLS configuration")?;
    }
    servers.push(tokio::spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let serve = builder
            .tcp_nodelay(true)
            .add_service(health_service)
            .add_service(
                crate::pb::gateway_server::GatewayServer::new(grpc_service)
                    .max_decoding_message_size(grpc_frame_bytes_max),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_shutdown.wait_for(|stop| *stop).await;
            });
        if let Err(error) = serve.await {
            tracing::error!(%error, "grpc server failed");
        }
    }));
    tracing::info!(region = %config.region, %http_addr, %grpc_addr, nodes = config.nodes.len(), redundant = config.upstream.redundant, tls = tls.is_some(), "gateway serving");
    Ok(RunningGateway { http_addr, grpc_addr, state, shutdown, servers })
}
