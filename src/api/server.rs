//! Starts a node: opens its data directory and stores, starts its Raft
//! groups, serves gRPC until shutdown, and stops cleanly.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::InitializeError;
use openraft::SnapshotPolicy;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::meta::directory::{Directory, MetaCommand, NodeEntry, META_GROUP_ID};
use crate::node::host::{Host, HostSecurity};
use crate::node::{leaders, quiesce};
use crate::pb;
use crate::raft::types::{NodeAddr, Raft};
use crate::security::gate::Gate;
use crate::security::identity::CertRole;
use crate::security::tls::TlsIdentity;
use crate::security::token::TokenKeys;
use crate::storage::data_dir::DataDir;
use crate::storage::{flusher, LogEngine};
use crate::wire::ClusterId;

/// Bound on one Raft message (an AppendEntries batch, a snapshot chunk):
/// `raft.append_entries_len_max` entries of at most
/// `raft.propose_batch_bytes_max` each fit below it with the defaults, and a
/// peer cannot make a node buffer more.
const RAFT_MESSAGE_BYTES_MAX: usize = 512 * 1024 * 1024;
/// Streams a peer may reset before this server accepted them, at once,
/// before the connection is closed (h2's default is 20).
const PENDING_ACCEPT_RESET_STREAMS_MAX: usize = 256;

/// openraft's configuration from ours.
pub fn openraft_config(raft: &crate::config::RaftConfig) -> anyhow::Result<openraft::Config> {
    let openraft_config = openraft::Config {
        cluster_name: "spaceraft".into(),
        heartbeat_interval: raft.heartbeat_interval_ms,
        election_timeout_min: raft.election_timeout_min_ms,
        election_timeout_max: raft.election_timeout_max_ms,
        install_snapshot_timeout: raft.install_snapshot_timeout_ms,
        max_payload_entries: raft.append_entries_len_max,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(raft.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: raft.snapshot_logs_kept_len,
        purge_batch_size: 256,
        // A region that was partitioned away asks before it disrupts the leader.
        enable_pre_vote: Some(true),
        // A restarted leader must win an election and commit in a new term
        // before it answers linearizable reads. Restored in its old term, it
        // takes its last durable commit index (which can trail what it had
        // acknowledged before the crash) as the read index, and serves stale
        // reads; `spaceraft sim` found this.
        enable_leader_restore: Some(false),
        // A node hosts thousands of groups: openraft preallocates its API
        // batch per group (4,096 messages by default), which made idle
        // groups cost megabytes each. Posts arrive batched by the proposer.
        api_batch_capacity: 64,
        // A follower whose log went back (its data was wiped, damaged, or
        // restored from an older copy) is caught up again from where its
        // log now ends; without this the leader kept sending from the old
        // match and the follower stayed behind for good. Such a follower's
        // votes do not count until it is re-admitted (incarnations), so
        // the reversion cannot elect a leader that lacks committed entries.
        allow_log_reversion: Some(true),
        // openraft's own replication backoff stays at its default: a longer
        // one ("100ms 200ms ...3s") shifted timings enough for `spaceraft sim
        // --seed 63 --nodes 5 --transport sequential` to trip openraft's
        // debug assertion that the apply cursor never goes back. Replication
        // to a failing peer is paced across groups by the transport instead.
        ..Default::default()
    };
    openraft_config.validate().context("raft configuration")
}

/// How long a stopping node lets requests in flight finish.
const SERVER_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A running node.
pub struct RunningNode {
    pub host: Arc<Host>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    flusher: tokio::task::JoinHandle<()>,
}

impl RunningNode {
    /// Stops serving, shuts every group down and flushes the state.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        // Requests in flight get a moment to finish; open streams (gateways'
        // follows, peers' append streams) never end by themselves, so what
        // is left then is closed.
        let served = match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, &mut self.server).await {
            Ok(joined) => joined.context("server task")?,
            Err(_) => {
                tracing::info!(waited = ?SERVER_DRAIN_TIMEOUT, "closing the connections still open");
                self.server.abort();
                Ok(())
            }
        };
        for group in self.host.groups.all() {
            let _ = group.raft.shutdown().await;
        }
        let _ = self.flusher.await;
        let _ = flusher::flush(self.host.db()).await;
        served
    }

    /// Waits until the server stops by itself (e.g. a serve error).
    pub fn is_finished(&self) -> bool {
        self.server.is_finished()
    }
}

/// Opens everything and starts serving; returns once the port is bound.
pub async fn start(config: NodeConfig) -> anyhow::Result<RunningNode> {
    let config = Arc::new(config);
    let mut data_dir = DataDir::open(&config.data_dir, config.node_id, &config.region)?;
    let state_dir = data_dir.state_dir();
    let db = crate::storage::blocking::run({
        let cache = config.storage.sm_cache_bytes;
        move || sled::Config::new().path(&state_dir).cache_capacity(cache).flush_every_ms(None).open()
    })
    .await?
    .with_context(|| {
        format!(
            "cannot open the state machine store in {} (is another node running on this data directory, or is it corrupt?)",
            data_dir.state_dir().display()
        )
    })?;
    let log_existed = data_dir.raft_log_dir().exists();
    if !data_dir.created && !log_existed {
        let why = format!("{} is missing", data_dir.raft_log_dir().display());
        crate::storage::data_dir::record_loss(&data_dir.root, &why).context("cannot record the lost raft log")?;
    }
    let engine = LogEngine::open(&data_dir.raft_log_dir(), config.storage.log_sync_batch_len_max)
        .with_context(|| format!("cannot open the raft log store in {}", data_dir.raft_log_dir().display()))?;
    let state_marker = check_states(&db, &engine, &data_dir).await?;
    // Every loss found (now or by a start cut off before it took a new
    // incarnation) was recorded before anything repaired it.
    if let Some(why) = data_dir.pending_loss().context("cannot read the recorded losses")? {
        let incarnation = data_dir.renew_incarnation().context("cannot take a new incarnation")?;
        tracing::error!(
            node_id = config.node_id,
            incarnation = format_args!("{incarnation:016x}"),
            "this node lost state it had acknowledged ({why}): it rejoins as a new incarnation and does not vote \
             until the leaders of its clusters re-admit it"
        );
    }

    let tls = node_tls(&config)?;
    let dial = tls.as_ref().map(TlsIdentity::client);
    check_id_is_unique(&config, dial.as_ref()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;

    let certified = tls.as_ref().map(|tls| tls.identity.cluster.clone());
    // A bootstrap node on a new data directory whose peers already run a
    // cluster lost its data: it takes that cluster's id and is caught up as
    // a member (its votes do not count until re-admitted), never
    // bootstraps a second cluster.
    let running =
        if data_dir.created && config.bootstrap { running_cluster(&config, dial.as_ref()).await } else { None };
    if let Some(id) = &running {
        tracing::warn!(
            node_id = config.node_id,
            cluster_id = %id,
            incarnation = format_args!("{:016x}", data_dir.incarnation),
            "the data directory is new but the peers run cluster {id}: rejoining it as a node that lost its data \
             (no bootstrap; this node does not vote until its clusters' leaders re-admit it)"
        );
    }
    // A directory that once took its peers' cluster never bootstraps one,
    // even restarted before it has caught up (its meta log still empty).
    let rejoined = data_dir.root.join(REJOINED_FILE).exists();
    let bootstrap_here = config.bootstrap && running.is_none() && !rejoined;
    let cluster = cluster_identity(&data_dir.root, bootstrap_here, certified, running).await?;
    let gate = Gate {
        insecure: config.security.insecure,
        cluster: cluster.clone(),
        tokens: match &config.security.token_keys_dir {
            Some(dir) if !config.security.insecure => {
                Some(Arc::new(TokenKeys::load_dir(dir).map_err(anyhow::Error::msg)?))
            }
            _ => None,
        },
    };
    let raft_config = Arc::new(openraft_config(&config.raft)?);
    let security = HostSecurity { gate, dial };
    let host = Arc::new(Host::new(config.clone(), db.clone(), engine, data_dir, raft_config, cluster, security));
    let meta = host.start_group(META_GROUP_ID).await?;
    if bootstrap_here {
        bootstrap(&meta.raft, &config).await?;
    }
    // The space clusters this node already hosts, before serving.
    host.reconcile().await?;
    let fresh = meta.raft.metrics().borrow_watched().current_term == 0;
    if fresh {
        host.quiet_until_ms.store(0, std::sync::atomic::Ordering::Relaxed);
    } else {
        tokio::spawn(quiesce::settle(host.clone()));
    }

    let (shutdown, shutdown_rx) = watch::channel(false);
    let flusher = tokio::spawn(flusher::run(
        db.clone(),
        config.storage.sm_flush_interval_ms,
        shutdown_rx.clone(),
        state_marker,
        {
            let host = host.clone();
            move || host.groups.all().iter().map(|group| (group.id, group.reader.applied_index())).collect()
        },
        {
            let host = host.clone();
            move |failure| *host.sm_failure.lock().expect("failure lock") = failure
        },
    ));
    tokio::spawn(host.clone().follow_directory(shutdown_rx.clone()));
    tokio::spawn(quiesce::run(host.clone(), shutdown_rx.clone()));
    tokio::spawn(leaders::run(host.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::node::rejoin::run(host.clone(), shutdown_rx.clone()));
    tokio::spawn(crate::node::disk::run(host.clone(), shutdown_rx.clone()));
    tokio::spawn(host.detector.clone().run(
        host.peers.clone(),
        {
            // The directory's nodes, and the configured peers: until
            // bootstrap has registered them, the directory lists none, and a
            // bootstrap slower than `down_after` would otherwise take every
            // peer as down and wait for a quorum for ever.
            let host = host.clone();
            move || {
                let mut nodes: std::collections::BTreeMap<crate::config::NodeId, String> =
                    host.config.peers.iter().map(|peer| (peer.id, peer.addr.clone())).collect();
                nodes.extend(Directory::nodes(&host.directory()).into_iter().map(|node| (node.id, node.addr)));
                nodes.into_iter().collect::<Vec<_>>()
            }
        },
        Duration::from_millis(config.groups.ping_interval_ms.max(1)),
        shutdown_rx.clone(),
    ));
    if host.cluster.get().is_none() {
        tokio::spawn(learn_cluster_id(host.clone(), shutdown_rx.clone()));
    }
    if bootstrap_here {
        tokio::spawn(bootstrap_directory(host.clone(), shutdown_rx.clone()));
    } else if fresh {
        // A fresh node that does not bootstrap joins: a no-op for a peer the
        // bootstrap node registers anyway, what adds a node started later.
        tokio::spawn(join(host.clone(), shutdown_rx.clone()));
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::client_server::ClientServer<crate::api::client::ClientApi>>().await;
    let message_bytes_max = config.limits.body_bytes_max * 4 + 64 * 1024;
    let services = crate::api::services(&host, message_bytes_max, RAFT_MESSAGE_BYTES_MAX);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        let handshake_timeout = Duration::from_millis(config.security.handshake_timeout_ms.max(1));
        builder = builder.tls_config(tls.server(handshake_timeout)).context("TLS configuration")?;
    }
    let router = builder
        .tcp_nodelay(true)
        .initial_stream_window_size(config.network.http2_stream_window_bytes)
        .initial_connection_window_size(config.network.http2_connection_window_bytes)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        // A heartbeat its leader stopped waiting for is a stream reset
        // before this server took it; past h2's default of 20 such streams
        // it closes the whole connection, every group's replication with it.
        .http2_max_pending_accept_reset_streams(Some(PENDING_ACCEPT_RESET_STREAMS_MAX))
        .add_service(health_service)
        .add_service(services.client)
        .add_service(services.admin)
        .add_service(services.raft);
    // Our own listener (bound early, so a busy port fails start), with
    // Nagle off: a Raft reply delayed 40 ms by Nagle and delayed ACKs would
    // stall every commit.
    let incoming = crate::security::conns::incoming(listener, config.security.connections_per_ip_max.max(1));
    let mut server_shutdown = shutdown_rx;
    let server = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_shutdown.wait_for(|stop| *stop).await;
            })
            .await
            .context("grpc server")
    });
    tracing::info!(node_id = config.node_id, region = %config.region, addr = %config.advertise_addr(), tls = tls.is_some(), "node started");
    Ok(RunningNode { host, shutdown, server, flusher })
}

/// This node's TLS identity; None when security is off (announced loudly).
/// Its certificate must name this node's id.
fn node_tls(config: &NodeConfig) -> anyhow::Result<Option<TlsIdentity>> {
    if config.security.insecure {
        tracing::warn!(
            node_id = config.node_id,
            "SECURITY IS OFF (--insecure): plaintext on every port, no authentication, every caller may do anything"
        );
        return Ok(None);
    }
    let tls = TlsIdentity::from_config(&config.security)?;
    if tls.identity.role != CertRole::Node(config.node_id) {
        anyhow::bail!(
            "the certificate {} names {}, not node {}",
            config.security.cert_file.as_deref().unwrap_or(std::path::Path::new("")).display(),
            tls.identity.uri(),
            config.node_id
        );
    }
    Ok(Some(tls))
}

/// A configured peer's status, if it answers within a second.
async fn peer_status(
    addr: &str,
    config: &NodeConfig,
    dial: Option<&tonic::transport::ClientTlsConfig>,
) -> Option<pb::NodeStatusResponse> {
    let endpoint = crate::raft::network::endpoint(addr, &config.network, dial).ok()?;
    let channel = tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await.ok()?.ok()?;
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let status = tokio::time::timeout(Duration::from_secs(1), admin.node_status(pb::NodeStatusRequest::default()));
    Some(status.await.ok()?.ok()?.into_inner())
}

/// Refuses to start a second process with an id that is already in use: a
/// peer list that puts this id at another address, or a reachable peer that
/// answers with this id.
async fn check_id_is_unique(
    config: &NodeConfig,
    dial: Option<&tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<()> {
    let advertise = config.advertise_addr().to_string();
    for peer in &config.peers {
        if peer.id == config.node_id && peer.addr != advertise {
            anyhow::bail!(
                "the peers list puts node {} at {}, but this node advertises {}: two nodes with one id?",
                peer.id,
                peer.addr,
                advertise
            );
        }
    }
    let advertise = advertise.as_str();
    let asks = config.peers.iter().filter(|peer| peer.addr != advertise).map(|peer| async move {
        let status = peer_status(&peer.addr, config, dial).await?;
        if status.replicas.first().is_some_and(|replica| replica.node_id == config.node_id) {
            return Some(format!("node id {} is already running at {}", config.node_id, peer.addr));
        }
        let registered = status.members.iter().find(|member| member.node_id == config.node_id)?;
        (registered.grpc_addr != advertise).then(|| {
            format!(
                "node id {} is registered at {} in space cluster {}, but this node advertises {}",
                config.node_id, registered.grpc_addr, registered.cluster_id, advertise
            )
        })
    });
    if let Some(problem) = futures::future::join_all(asks).await.into_iter().flatten().next() {
        anyhow::bail!("{problem}: refusing to start a second node with that id");
    }
    Ok(())
}

/// Checks each group's state machine against its state marker and its log,
/// before any group starts. A state with a damaged record is dropped (its
/// snapshots kept) and counts as behind. A state behind what was flushed
/// (sled rolled back over damage) is rebuilt from its snapshot and log when they reach
/// back far enough: logged, nothing else to do. A state that cannot be (its
/// log starts past it and no snapshot file bridges the gap) is forgotten,
/// with its log (the vote stays): the group starts empty and its leader
/// catches it up once it re-admits the node; the loss is recorded first
/// ([`crate::storage::data_dir::record_loss`]). Answers the state marker the
/// flusher goes on from.
async fn check_states(db: &sled::Db, engine: &LogEngine, data_dir: &DataDir) -> anyhow::Result<flusher::StateMarker> {
    use openraft::storage::RaftLogStorage;
    let root = data_dir.root.clone();
    let flushed = match crate::storage::marker::read_applied(&root) {
        Ok(flushed) => flushed.unwrap_or_default(),
        Err(error) => {
            tracing::error!(%error, "cannot tell what the state machine had flushed; checking it against the log only");
            Default::default()
        }
    };
    let mut groups: std::collections::BTreeSet<u64> = flushed.keys().copied().collect();
    groups.extend(engine.groups().iter().copied());
    // A tree neither marker nor log knows (its group's log was forgotten).
    groups.extend(
        db.tree_names()
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok()?.strip_prefix("sm.")?.parse::<u64>().ok()),
    );
    let mut recorded = flushed.clone();
    for group in groups {
        let snapshot_dir = data_dir.snapshot_dir(group);
        let stored = crate::storage::blocking::run({
            let (db, dir) = (db.clone(), snapshot_dir.clone());
            move || crate::storage::state_machine::stored_state(&db, group, &dir)
        })
        .await?
        .with_context(|| format!("cannot read the state machine of group {group}"))?;
        if let Some(damage) = &stored.damaged {
            tracing::error!(
                group_id = group,
                %damage,
                snapshot = stored.snapshot,
                "the state machine has a damaged record; dropping it to rebuild it from its snapshot and log"
            );
            crate::storage::blocking::run({
                let db = db.clone();
                move || crate::storage::state_machine::drop_damaged_tree(&db, group)
            })
            .await?
            .with_context(|| format!("cannot drop the damaged state machine of group {group}"))?;
        }
        let mut log = engine.group(group);
        let purged = log.get_log_state().await?.last_purged_log_id.map(|id| id.index).unwrap_or(0);
        let flushed_at = flushed.get(&group).copied().unwrap_or(0);
        if stored.rebuilt() < purged {
            let why = format!(
                "group {group}: its state machine is at {} (snapshot {}, {flushed_at} was flushed) but its log \
                 starts after {purged}",
                stored.applied, stored.snapshot
            );
            crate::storage::data_dir::record_loss(&root, &why).context("cannot record the lost state")?;
            crate::storage::blocking::run({
                let db = db.clone();
                move || crate::storage::state_machine::forget_stored_state(&db, group, &snapshot_dir)
            })
            .await?
            .with_context(|| format!("cannot drop the state machine of group {group}"))?;
            log.forget_log().await.with_context(|| format!("cannot drop the log of group {group}"))?;
            recorded.remove(&group);
        } else if stored.rebuilt() < flushed_at {
            tracing::error!(
                group_id = group,
                applied = stored.applied,
                snapshot = stored.snapshot,
                flushed = flushed_at,
                "the state machine lost writes it had flushed; rebuilding it from its snapshot and log"
            );
        }
    }
    if recorded != flushed {
        let (root, marks) = (root.clone(), recorded.clone());
        crate::storage::blocking::run(move || crate::storage::marker::write_applied(&root, &marks))
            .await?
            .context("cannot write the state marker")?;
    }
    Ok(flusher::StateMarker { root, recorded })
}

/// The id of the cluster the configured peers run, if one answers: a peer
/// that knows its cluster id and whose meta replica has seen a term.
async fn running_cluster(config: &NodeConfig, dial: Option<&tonic::transport::ClientTlsConfig>) -> Option<String> {
    let advertise = config.advertise_addr().to_string();
    let asks = config.peers.iter().filter(|peer| peer.addr != advertise).map(|peer| async move {
        let status = peer_status(&peer.addr, config, dial).await?;
        let meta_started =
            status.replicas.iter().any(|replica| replica.cluster_id == META_GROUP_ID && replica.term > 0);
        (crate::wire::is_cluster_id(&status.cluster_id) && meta_started).then_some(status.cluster_id)
    });
    futures::future::join_all(asks).await.into_iter().flatten().next()
}

/// Initializes the meta group with the configured peers as its voters,
/// once: an initialized group (this node's log is not empty) is left alone.
async fn bootstrap(raft: &Raft, config: &NodeConfig) -> anyhow::Result<()> {
    if raft.is_initialized().await? {
        tracing::info!("meta cluster already initialized; bootstrap skipped");
        return Ok(());
    }
    let members: BTreeMap<u64, NodeAddr> = config
        .peers
        .iter()
        .map(|peer| (peer.id, NodeAddr { addr: peer.addr.clone(), region: peer.region.clone(), incarnation: 0 }))
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(voters = config.peers.len(), "meta cluster initialized");
            Ok(())
        }
        Err(error) => match error.api_error() {
            Some(InitializeError::NotAllowed(_)) => Ok(()),
            _ => Err(anyhow::anyhow!("bootstrap failed: {error}")),
        },
    }
}

/// How long a join waits for a peer's answer: longer than the peer's own
/// wait for its write ([`crate::node::commands::WRITE_ANSWER_WAIT`]).
const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(15);

/// A node started after bootstrap, not among the bootstrap peers: asks the
/// peers to register it and make it a learner of the meta cluster (a peer
/// passes the request on to the meta leader), retrying until one does; it
/// keeps the id of the cluster it joined.
async fn join(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let config = host.config.clone();
    let me = config.advertise_addr().to_string();
    let targets: Vec<String> = config.peers.iter().map(|peer| peer.addr.clone()).filter(|addr| *addr != me).collect();
    let mut pause = Duration::from_millis(200);
    loop {
        for addr in &targets {
            let Ok(mut client) = host.admin_stub(addr) else { continue };
            let mut request = tonic::Request::new(pb::JoinRequest {
                node_id: config.node_id,
                region: config.region.clone(),
                grpc_addr: me.clone(),
                join_token: config.join_token.clone().unwrap_or_default(),
            });
            // A peer that takes the request and never answers must not hold
            // the join: the next try (or the next peer) may succeed.
            request.set_timeout(JOIN_ANSWER_WAIT);
            match client.join(request).await {
                Ok(reply) => {
                    let cluster_id = reply.into_inner().cluster_id;
                    if crate::wire::is_cluster_id(&cluster_id) {
                        if let Err(error) = host.learn_cluster_id(&cluster_id).await {
                            tracing::warn!(%error, "cannot keep the id of the cluster joined");
                            continue;
                        }
                    }
                    tracing::info!(through = %addr, cluster_id, "joined the cluster: registered, following the directory");
                    return;
                }
                Err(status) => {
                    let error = crate::error::ApiError::from_status(&status);
                    tracing::debug!(%error, kind = %error.kind, peer = %addr, "join not taken yet");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// A node that does not know its cluster yet asks its peers (the first one
/// that names its cluster is believed, as the first Raft message would be),
/// so its own requests carry the id from its first moments and no peer
/// refuses them.
async fn learn_cluster_id(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let me = host.config.advertise_addr().to_string();
    let peers: Vec<String> =
        host.config.peers.iter().map(|peer| peer.addr.clone()).filter(|addr| *addr != me).collect();
    let mut pause = Duration::from_millis(50);
    while host.cluster.get().is_none() {
        for addr in &peers {
            let Ok(mut client) = host.admin_stub(addr) else { continue };
            let mut request = tonic::Request::new(pb::PingRequest { from_node: host.config.node_id });
            request.set_timeout(Duration::from_secs(1));
            let Ok(reply) = client.ping(request).await else { continue };
            let cluster_id = reply.into_inner().cluster_id;
            if crate::wire::is_cluster_id(&cluster_id) {
                if let Err(error) = host.learn_cluster_id(&cluster_id).await {
                    tracing::warn!(%error, "cannot keep the cluster id");
                }
                break;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Written in a data directory that took the cluster id its peers run (it
/// lost its data): the node never bootstraps a cluster again.
const REJOINED_FILE: &str = "rejoined";

/// The cluster this node belongs to: the one its certificate names (which
/// its data directory, if it names one, must agree with); else kept in its
/// data directory; made now by a bootstrap node that has none; unknown
/// (learned from its peers) for any other node started without one.
async fn cluster_identity(
    root: &std::path::Path,
    bootstrap: bool,
    certified: Option<String>,
    running: Option<String>,
) -> anyhow::Result<ClusterId> {
    let root = root.to_path_buf();
    crate::storage::blocking::run(move || -> anyhow::Result<ClusterId> {
        let kept = crate::wire::read_cluster_id(&root)?;
        if let Some(certified) = certified {
            match kept {
                Some(kept) if kept != certified => anyhow::bail!(
                    "this data directory belongs to cluster {kept}, but the node's certificate is for cluster {certified}"
                ),
                Some(_) => {}
                None => {
                    crate::wire::write_cluster_id(&root, &certified)
                        .with_context(|| format!("cannot keep the cluster id in {}", root.display()))?;
                }
            }
            return Ok(ClusterId::known(&certified));
        }
        if let Some(id) = kept {
            return Ok(ClusterId::known(&id));
        }
        if let Some(id) = running {
            // Kept, so that the next start (whose directory is no longer
            // new, so it does not ask the peers again) neither makes a
            // cluster id nor bootstraps a cluster of its own.
            crate::wire::write_cluster_id(&root, &id)
                .with_context(|| format!("cannot keep the cluster id in {}", root.display()))?;
            std::fs::write(root.join(REJOINED_FILE), format!("{id}\n"))
                .and_then(|()| std::fs::File::open(root.join(REJOINED_FILE))?.sync_all())
                .with_context(|| format!("cannot record the rejoin in {}", root.display()))?;
            return Ok(ClusterId::known(&id));
        }
        if !bootstrap {
            return Ok(ClusterId::unknown());
        }
        let id = crate::wire::new_cluster_id();
        crate::wire::write_cluster_id(&root, &id)
            .with_context(|| format!("cannot keep the cluster id in {}", root.display()))?;
        tracing::info!(cluster_id = %id, "made a new cluster id");
        Ok(ClusterId::known(&id))
    })
    .await?
}

/// Registers the configured peers in the directory and makes the first
/// space cluster with all of them as voters (once), retrying until the meta
/// cluster has a leader.
async fn bootstrap_directory(host: Arc<Host>, mut shutdown: watch::Receiver<bool>) {
    let config = host.config.clone();
    let mut commands: Vec<MetaCommand> = config
        .peers
        .iter()
        .map(|peer| {
            MetaCommand::RegisterNode(NodeEntry {
                id: peer.id,
                region: peer.region.clone(),
                addr: peer.addr.clone(),
                drained: false,
            })
        })
        .collect();
    commands.push(MetaCommand::CreateCluster {
        voters: config.peers.iter().map(|peer| peer.id).collect(),
        preferred_region: String::new(),
        only_if_none: true,
    });
    let mut pause = Duration::from_millis(100);
    for command in commands {
        loop {
            match host.meta_write(command.clone()).await {
                Ok(_) => break,
                Err(error) => tracing::debug!(%error, "bootstrap: directory not writable yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
    tracing::info!("bootstrap: directory written");
}
