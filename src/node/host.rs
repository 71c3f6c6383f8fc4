//! The groups one node hosts, and how they come and go.
//!
//! Every node hosts a replica of the meta group ([`META_GROUP_ID`]), whose
//! state machine holds the directory. The node follows its meta replica:
//! every space cluster the directory lists with this node among its voters
//! is started here (all groups share the node's one sled database, one Raft
//! log engine with one fsync per batch across groups, and one connection per
//! peer node), and the cluster's first voter initializes it.
//!
//! Directory changes go to the meta leader ([`Host::meta_write`]); a fresh
//! read of the directory first waits for this replica to apply the leader's
//! commit index ([`Host::sync_group`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, InitializeError};
use openraft::ReadPolicy;
use tokio::sync::watch;

use crate::config::{NodeConfig, NodeId};
use crate::error::ApiError;
use crate::node::detector::Detector;
use crate::node::group::{Group, Groups};
use crate::node::proposer::{BatchBounds, Proposer};
use crate::pb;
use crate::placement::directory::{
    choose_voters, ClusterEntry, Directory, MetaCommand, MetaOutcome, SpacePlacement, META_GROUP_ID,
};
use crate::placement::{place, Placement, SpaceProfile};
use crate::raft::network::{PeerChannels, RaftNetwork};
use crate::raft::types::{NodeAddr, Raft};
use crate::space::{Command, CommandResult};
use crate::storage::data_dir::DataDir;
use crate::storage::{LogEngine, SpaceStateMachine};

/// Pause between tries of a directory change whose leader is changing.
const META_RETRY_PAUSE_MS: u64 = 50;
/// Bytes of messages per import entry when a space moves.
const MOVE_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// A gateway that has not reported for this long is forgotten.
const GATEWAY_FORGET_AFTER: Duration = Duration::from_secs(600);
/// Gateways a node keeps reports of.
const GATEWAYS_MAX: usize = 4096;

/// A change of a space cluster's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    AddLearner,
    Promote,
    Remove,
}

/// Everything needed to start groups on this node.
pub struct Host {
    pub config: Arc<NodeConfig>,
    pub groups: Groups,
    pub peers: PeerChannels,
    pub detector: Detector,
    db: sled::Db,
    engine: LogEngine,
    data_dir: DataDir,
    raft_config: Arc<openraft::Config>,
    /// Serializes group starts, so a group is started once.
    starting: tokio::sync::Mutex<()>,
    /// Serializes placement decisions on the meta leader: two spaces created
    /// at once do not both make a new cluster.
    placing: tokio::sync::Mutex<()>,
    /// Clusters whose initialization this process has settled.
    initialized: Mutex<BTreeSet<u64>>,
    /// Bumped after any group applies: follow sessions watch spaces of many
    /// groups and wake on this.
    applied_any: watch::Sender<u64>,
    /// Until then ([`crate::node::group::since_start_ms`]) a group with no
    /// known leader does not elect: the node has just started and its
    /// peers' leaders are making themselves known ([`crate::node::quiesce`]).
    pub quiet_until_ms: std::sync::atomic::AtomicU64,
    /// This node's drain flag from the directory, refreshed on every change.
    drained: std::sync::atomic::AtomicBool,
    /// When this node started.
    pub started: std::time::Instant,
    /// The latest report of each gateway that follows this node, by id.
    gateways: Mutex<BTreeMap<String, (pb::GatewayReport, std::time::Instant)>>,
}

impl Host {
    pub fn new(
        config: Arc<NodeConfig>,
        db: sled::Db,
        engine: LogEngine,
        data_dir: DataDir,
        raft_config: Arc<openraft::Config>,
    ) -> Host {
        let peers = PeerChannels::new(config.network.clone());
        let detector = Detector::new(config.node_id, Duration::from_millis(config.groups.down_after_ms));
        Host {
            config,
            groups: Groups::default(),
            peers,
            detector,
            db,
            engine,
            data_dir,
            raft_config,
            starting: tokio::sync::Mutex::new(()),
            placing: tokio::sync::Mutex::new(()),
            initialized: Mutex::new(BTreeSet::new()),
            applied_any: watch::channel(0).0,
            quiet_until_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            drained: std::sync::atomic::AtomicBool::new(false),
            started: std::time::Instant::now(),
            gateways: Mutex::new(BTreeMap::new()),
        }
    }

    /// Keeps a gateway's latest report (at most [`GATEWAYS_MAX`] gateways:
    /// past that the stalest is forgotten, so reports under made-up ids
    /// cannot grow a node's memory without bound).
    pub fn gateway_reported(&self, report: pb::GatewayReport) {
        let mut gateways = self.gateways.lock().expect("gateways lock");
        if !gateways.contains_key(&report.gateway_id) && gateways.len() >= GATEWAYS_MAX {
            let stalest = gateways.iter().min_by_key(|(_, (_, at))| *at).map(|(id, _)| id.clone());
            if let Some(id) = stalest {
                gateways.remove(&id);
            }
        }
        gateways.insert(report.gateway_id.clone(), (report, std::time::Instant::now()));
    }

    /// The gateways that reported here within [`GATEWAY_FORGET_AFTER`],
    /// with how long ago.
    pub fn gateways(&self) -> Vec<(pb::GatewayReport, Duration)> {
        let mut gateways = self.gateways.lock().expect("gateways lock");
        gateways.retain(|_, (_, at)| at.elapsed() < GATEWAY_FORGET_AFTER);
        gateways.values().map(|(report, at)| (report.clone(), at.elapsed())).collect()
    }

    /// The root of this node's data directory.
    pub fn data_root(&self) -> std::path::PathBuf {
        self.data_dir.root.clone()
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Wakes on any apply of any group hosted here.
    pub fn applied_any(&self) -> watch::Receiver<u64> {
        self.applied_any.subscribe()
    }

    /// The meta replica; started before anything else.
    pub fn meta(&self) -> Arc<Group> {
        self.groups.get(META_GROUP_ID).expect("the meta group starts first")
    }

    /// The applied directory of this node's meta replica.
    pub fn directory(&self) -> sled::Tree {
        self.meta().reader.tree.clone()
    }

    /// Starts group `id` here (once; an existing one is returned).
    pub async fn start_group(&self, id: u64) -> anyhow::Result<Arc<Group>> {
        if let Some(group) = self.groups.get(id) {
            return Ok(group);
        }
        let _starting = self.starting.lock().await;
        if let Some(group) = self.groups.get(id) {
            return Ok(group);
        }
        let snapshot_dir = self.data_dir.snapshot_dir(id);
        let mut state_machine = SpaceStateMachine::open(self.db.clone(), id, snapshot_dir.clone())
            .await
            .with_context(|| format!("cannot open the state machine of group {id}"))?;
        let mut log = self.engine.group(id);
        crate::raft::repair_log_behind_state(&mut log, &mut state_machine)
            .await
            .with_context(|| format!("cannot check the log of group {id} against its state"))?;
        let reader = state_machine.reader();
        let network = RaftNetwork {
            group_id: id,
            self_id: self.config.node_id,
            self_addr: self.config.advertise_addr().to_string(),
            channels: self.peers.clone(),
        };
        let raft = Raft::new(self.config.node_id, self.raft_config.clone(), network, log, state_machine)
            .await
            .with_context(|| format!("cannot start raft for group {id}"))?;
        let raft_bounds = &self.config.raft;
        let proposer = Proposer::spawn(
            raft.clone(),
            BatchBounds {
                len_max: raft_bounds.propose_batch_len_max,
                bytes_max: raft_bounds.propose_batch_bytes_max,
                inflight_max: raft_bounds.propose_inflight_max,
            },
        );
        let mut applied = reader.applied.clone();
        let applied_any = self.applied_any.clone();
        tokio::spawn(async move {
            while applied.changed().await.is_ok() {
                applied_any.send_modify(|count| *count = count.wrapping_add(1));
            }
        });
        self.groups.insert(Group {
            id,
            raft,
            reader,
            proposer,
            snapshot_dir,
            woken_at_ms: std::sync::atomic::AtomicU64::new(crate::node::group::since_start_ms()),
        });
        tracing::debug!(group_id = id, "group started");
        Ok(self.groups.get(id).expect("just inserted"))
    }

    /// Starts every space cluster the directory puts on this node, and
    /// initializes the ones whose first voter this node is.
    pub async fn reconcile(&self) -> anyhow::Result<()> {
        let tree = self.directory();
        let me = self.config.node_id;
        let (clusters, drained) = tokio::task::spawn_blocking(move || {
            (Directory::clusters(&tree), Directory::node(&tree, me).is_some_and(|node| node.drained))
        })
        .await?;
        self.drained.store(drained, std::sync::atomic::Ordering::Relaxed);
        for cluster in
            clusters.into_iter().filter(|cluster| cluster.voters.contains(&me) || cluster.learners.contains(&me))
        {
            if self.initialized.lock().expect("initialized lock").contains(&cluster.id) {
                continue;
            }
            let group = self.start_group(cluster.id).await?;
            if cluster.voters.first() == Some(&me) {
                self.initialize(&group.raft, &cluster).await?;
            }
            self.initialized.lock().expect("initialized lock").insert(cluster.id);
        }
        Ok(())
    }

    async fn initialize(&self, raft: &Raft, cluster: &ClusterEntry) -> anyhow::Result<()> {
        if raft.is_initialized().await? {
            return Ok(());
        }
        let tree = self.directory();
        let members: BTreeMap<u64, NodeAddr> = Directory::voters(&tree, cluster)
            .into_iter()
            .map(|(id, node)| (id, NodeAddr { addr: node.addr, region: node.region }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(cluster = cluster.id, voters = ?cluster.voters, "space cluster initialized");
                Ok(())
            }
            Err(error) => match error.api_error() {
                Some(InitializeError::NotAllowed(_)) => Ok(()),
                _ => Err(anyhow::anyhow!("cannot initialize space cluster {}: {error}", cluster.id)),
            },
        }
    }

    /// Follows the directory until shutdown: starts the groups it adds.
    pub async fn follow_directory(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut applied = self.meta().reader.applied.clone();
        loop {
            applied.borrow_and_update();
            if let Err(error) = self.reconcile().await {
                tracing::warn!(%error, "cannot start the groups the directory lists");
            }
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Where the leader of `group` is: `None` when it is this node, its id
    /// and address otherwise. Waits up to `raft.leader_wait_ms`.
    pub async fn leader_of(&self, group: &Group) -> Result<Option<(NodeId, String)>, ApiError> {
        let wait_ms = self.config.raft.leader_wait_ms;
        let mut metrics = group.raft.metrics();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let (leader, membership) = {
                let current = metrics.borrow_watched();
                (current.current_leader, current.membership_config.clone())
            };
            if let Some(leader) = leader {
                if leader == self.config.node_id {
                    return Ok(None);
                }
                if let Some(node) = membership.membership().get_node(&leader) {
                    return Ok(Some((leader, node.addr.clone())));
                }
            }
            if tokio::time::timeout_at(deadline, metrics.changed()).await.is_err() {
                return Err(ApiError::NoLeader { cluster_id: group.id, waited_ms: wait_ms });
            }
        }
    }

    fn admin_client(&self, addr: &str) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>, ApiError> {
        let channel =
            self.peers.channel(addr).map_err(|e| ApiError::Internal(format!("bad peer address {addr}: {e}")))?;
        Ok(pb::admin_client::AdminClient::new(channel))
    }

    /// The leader's commit index of `group`, confirmed by a read-index round
    /// on the leader (here or over the network).
    pub async fn read_index(&self, group: &Group) -> Result<u64, ApiError> {
        match self.leader_of(group).await? {
            None => {
                let log_id = group.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.map_err(|error| {
                    ApiError::Unavailable(format!("read index of group {} failed: {error}", group.id))
                })?;
                Ok(log_id.index())
            }
            Some((_, addr)) => {
                let mut client = self.admin_client(&addr)?;
                let mut request = tonic::Request::new(pb::ReadIndexRequest { cluster_id: group.id });
                request.set_timeout(Duration::from_millis(self.config.network.forward_timeout_ms));
                let reply = client
                    .read_index(request)
                    .await
                    .map_err(|status| ApiError::Forwarded(status.message().to_string(), status.code()))?;
                Ok(reply.into_inner().index)
            }
        }
    }

    /// Waits until this replica of `group` has applied everything committed
    /// before the call.
    pub async fn sync_group(&self, group: &Group) -> Result<(), ApiError> {
        let wanted = self.read_index(group).await?;
        let mut applied = group.reader.applied.clone();
        let wait = Duration::from_millis(self.config.raft.leader_wait_ms);
        tokio::time::timeout(wait, applied.wait_for(|index| *index >= wanted))
            .await
            .map_err(|_| ApiError::Unavailable(format!("group {} did not apply its read index in time", group.id)))?
            .map_err(|_| ApiError::ShuttingDown)?;
        Ok(())
    }

    /// Commits a directory change through the meta leader and returns what
    /// apply answered. Retries while the meta leader changes.
    pub async fn meta_write(&self, command: MetaCommand) -> Result<MetaOutcome, ApiError> {
        let meta = self.meta();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms);
        loop {
            let attempt: Result<(), String> = match self.leader_of(&meta).await? {
                None => match meta.woken_write(Command::Meta(command.clone())).await {
                    Ok(response) => match response.data {
                        CommandResult::Meta(result) => {
                            return result.map_err(|refused| ApiError::Refused(refused.to_string()))
                        }
                        other => return Err(ApiError::Internal(format!("directory answered {other:?}"))),
                    },
                    Err(error) => match error.api_error() {
                        Some(ClientWriteError::ForwardToLeader(_)) => Err(format!("{error}")),
                        _ => return Err(ApiError::Internal(format!("directory write failed: {error}"))),
                    },
                },
                Some((_, addr)) => {
                    let mut client = self.admin_client(&addr)?;
                    let bytes = postcard::to_stdvec(&command).expect("meta commands serialize");
                    let mut request = tonic::Request::new(pb::ProposeMetaRequest { command: bytes });
                    request.set_timeout(Duration::from_millis(self.config.network.forward_timeout_ms));
                    match client.propose_meta(request).await {
                        Ok(reply) => {
                            let reply = reply.into_inner();
                            if !reply.refused.is_empty() {
                                return Err(ApiError::Refused(reply.refused));
                            }
                            return postcard::from_bytes(&reply.outcome)
                                .map_err(|e| ApiError::Internal(format!("undecodable directory answer: {e}")));
                        }
                        Err(status) if status.code() == tonic::Code::Unavailable => Err(status.message().to_string()),
                        Err(status) => return Err(ApiError::Forwarded(status.message().to_string(), status.code())),
                    }
                }
            };
            if let Err(why) = attempt {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::Internal(format!("directory write did not reach the meta leader: {why}")));
                }
                tokio::time::sleep(Duration::from_millis(META_RETRY_PAUSE_MS)).await;
            }
        }
    }

    /// The placement of `space` in the local directory.
    pub async fn placement(&self, space: &str) -> Result<Option<SpacePlacement>, ApiError> {
        let (tree, space) = (self.directory(), space.to_string());
        tokio::task::spawn_blocking(move || Directory::placement(&tree, &space))
            .await
            .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))
    }

    /// The placement of `space`, reading the meta leader's commit first when
    /// the local directory does not know it (a space created a moment ago
    /// elsewhere).
    pub async fn placement_fresh(&self, space: &str) -> Result<SpacePlacement, ApiError> {
        if let Some(placement) = self.placement(space).await? {
            return Ok(placement);
        }
        self.sync_group(&self.meta()).await?;
        self.placement(space).await?.ok_or_else(|| ApiError::UnknownSpace { space: space.to_string() })
    }

    /// Places a new space (on the meta leader): the policy picks a cluster,
    /// or a new cluster is made with voters across regions.
    pub async fn place_space(
        &self,
        profile: SpaceProfile,
        attrs: BTreeMap<String, String>,
        home_region: Option<&str>,
    ) -> Result<SpacePlacement, ApiError> {
        let _placing = self.placing.lock().await;
        if let Some(placement) = self.placement(&profile.name).await? {
            return Ok(placement);
        }
        if self.is_deleted(&profile.name).await? {
            return Err(ApiError::Refused(crate::placement::directory::MetaError::Deleted(profile.name).to_string()));
        }
        self.wait_for_first_cluster().await?;
        let tree = self.directory();
        let (loads, nodes, clusters) = {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || {
                (Directory::loads(&tree), Directory::nodes(&tree), Directory::clusters(&tree))
            })
            .await
            .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))?
        };
        let (cluster, reason) = match place(&profile, &loads, &self.config.placement) {
            Placement::Existing { cluster, reason } => (cluster, reason),
            Placement::NewCluster { reason } => {
                let voters = choose_voters(&nodes, &clusters, self.config.groups.cluster_voters_len, |id| {
                    self.detector.is_up(id)
                });
                if voters.is_empty() {
                    return Err(ApiError::Internal("no registered node is up to host a new space cluster".into()));
                }
                let regions: BTreeSet<&str> = nodes.iter().map(|node| node.region.as_str()).collect();
                let preferred_region = match home_region.filter(|region| regions.contains(region)) {
                    Some(region) => region.to_string(),
                    // Spread leaderships over the regions.
                    None => {
                        regions.iter().nth(clusters.len() % regions.len().max(1)).copied().unwrap_or("").to_string()
                    }
                };
                let command = MetaCommand::CreateCluster { voters, preferred_region, only_if_none: false };
                match self.meta_write(command).await? {
                    MetaOutcome::ClusterCreated { id, .. } => {
                        tracing::info!(cluster = id, space = %profile.name, "made a new space cluster");
                        (id, reason)
                    }
                    other => return Err(ApiError::Internal(format!("directory answered {other:?}"))),
                }
            }
        };
        match self.meta_write(MetaCommand::PlaceSpace { space: profile, attrs, cluster, reason }).await? {
            MetaOutcome::SpacePlaced { placement, .. } => Ok(placement),
            other => Err(ApiError::Internal(format!("directory answered {other:?}"))),
        }
    }

    /// Runs `command` on the leader of space cluster `cluster`: here, or
    /// through the leader's node, or through a voter when the cluster is not
    /// hosted here. Retries while leadership moves.
    pub async fn cluster_write(&self, cluster: u64, command: &Command) -> Result<CommandResult, ApiError> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms);
        loop {
            let attempt = match self.local_cluster(cluster).await? {
                Some(group) => match self.leader_of(&group).await? {
                    None => match group.woken_write(command.clone()).await {
                        Ok(response) => return Ok(response.data),
                        Err(error) => match error.api_error() {
                            Some(ClientWriteError::ForwardToLeader(_)) => Err(ApiError::Unavailable(error.to_string())),
                            _ => return Err(ApiError::Internal(format!("write to cluster {cluster} failed: {error}"))),
                        },
                    },
                    Some((_, addr)) => self.propose_at(&addr, cluster, command, true).await,
                },
                None => {
                    let mut last = Err(ApiError::Unavailable(format!("space cluster {cluster} has no voter")));
                    for (_, addr) in self.cluster_addrs(cluster).await? {
                        last = self.propose_at(&addr, cluster, command, false).await;
                        if last.is_ok() {
                            break;
                        }
                    }
                    last
                }
            };
            match attempt {
                Err(ApiError::Unavailable(why)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(cluster, %why, "cluster write: trying again");
                    tokio::time::sleep(Duration::from_millis(META_RETRY_PAUSE_MS)).await;
                }
                done => return done,
            }
        }
    }

    async fn propose_at(
        &self,
        addr: &str,
        cluster: u64,
        command: &Command,
        forwarded: bool,
    ) -> Result<CommandResult, ApiError> {
        let mut client = self.admin_client(addr)?;
        let bytes = postcard::to_stdvec(command).expect("commands serialize");
        let mut request = tonic::Request::new(pb::ProposeRequest { cluster_id: cluster, command: bytes, forwarded });
        request.set_timeout(Duration::from_millis(self.config.network.forward_timeout_ms));
        match client.propose(request).await {
            Ok(reply) => postcard::from_bytes(&reply.into_inner().result)
                .map_err(|e| ApiError::Internal(format!("undecodable command result: {e}"))),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(ApiError::Unavailable(status.message().to_string()))
            }
            Err(status) => Err(ApiError::Forwarded(status.message().to_string(), status.code())),
        }
    }

    /// Moves `space` to space cluster `to`, online: the directory marks the
    /// move, the old cluster seals the space (later posts there are refused
    /// with "moved", and the node that sent them retries them on `to`), its
    /// messages are copied into `to` in chunks (with their idempotency
    /// keys, so retried posts stay deduplicated), `to` opens the space with
    /// seqs going on from the sealed one, and the directory places it on
    /// `to`. Every step is idempotent: running the move again finishes one
    /// that was cut short. Runs on a node that hosts the old cluster.
    pub async fn move_space(&self, space: &str, to: u64) -> Result<pb::MoveSpaceResponse, ApiError> {
        let placement = self.placement_fresh(space).await?;
        let from = placement.cluster;
        if from == to && placement.moving_to.is_none() {
            return Ok(pb::MoveSpaceResponse {
                from_cluster: from,
                to_cluster: to,
                sealed_seq: 0,
                messages_copied: 0,
                version: placement.version,
            });
        }
        let group = self.local_cluster(from).await?.ok_or_else(|| {
            ApiError::Internal(format!("space cluster {from} is not hosted here; run the move on one of its voters"))
        })?;
        self.meta_write(MetaCommand::BeginMove { space: space.to_string(), to }).await?;
        let sealed = match self.cluster_write(from, &Command::SealSpace { name: space.to_string(), to }).await? {
            CommandResult::Sealed(result) => result.map_err(ApiError::from)?,
            other => return Err(ApiError::Internal(format!("seal answered {other:?}"))),
        };
        self.sync_group(&group).await?;
        let blocks = {
            let (reader, name, last_seq) = (group.reader.clone(), space.to_string(), sealed.last_seq);
            tokio::task::spawn_blocking(move || reader.blocks(&name, last_seq))
                .await
                .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))??
        };
        let messages_copied: u64 = blocks.iter().map(|block| block.messages.len() as u64).sum();
        let mut chunks: Vec<Vec<crate::space::record::MessageBlock>> = vec![Vec::new()];
        let mut chunk_bytes = 0;
        for block in blocks {
            let bytes: usize =
                block.messages.iter().map(|m| m.body.len() + m.author.len() + m.idempotency_key.len() + 16).sum();
            if chunk_bytes + bytes > MOVE_CHUNK_BYTES_MAX && !chunks.last().expect("one chunk").is_empty() {
                chunks.push(Vec::new());
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunks.last_mut().expect("one chunk").push(block);
        }
        let count = chunks.len();
        for (index, blocks) in chunks.into_iter().enumerate() {
            let command =
                Command::ImportSpace { record: sealed.clone(), blocks, first: index == 0, last: index + 1 == count };
            match self.cluster_write(to, &command).await? {
                CommandResult::Imported(result) => result.map_err(ApiError::from)?,
                other => return Err(ApiError::Internal(format!("import answered {other:?}"))),
            }
        }
        let version = match self.meta_write(MetaCommand::FinishMove { space: space.to_string(), to }).await? {
            MetaOutcome::Moved { placement } => placement.version,
            other => return Err(ApiError::Internal(format!("directory answered {other:?}"))),
        };
        tracing::info!(space, from, to, sealed_seq = sealed.last_seq, messages_copied, "space moved");
        // The old cluster keeps the sealed record only; readers still there
        // are sent on. Failing here leaves a copy behind, not a broken move.
        match self.cluster_write(from, &Command::DropSealed { name: space.to_string() }).await {
            Ok(CommandResult::SealedDropped(Ok(dropped))) => {
                tracing::info!(space, from, dropped, "sealed copy dropped")
            }
            other => tracing::warn!(space, from, ?other, "the sealed copy was not dropped"),
        }
        Ok(pb::MoveSpaceResponse {
            from_cluster: from,
            to_cluster: to,
            sealed_seq: sealed.last_seq,
            messages_copied,
            version,
        })
    }

    /// Adds and removes members of `space` in its cluster, then records the
    /// new members in the directory (where placement and `space list --as`
    /// read them). Answers the space's record.
    pub async fn update_space_members(
        &self,
        space: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<crate::space::SpaceRecord, ApiError> {
        let placement = self.placement_fresh(space).await?;
        if placement.moving_to.is_some() {
            return Err(ApiError::Moving { space: space.to_string() });
        }
        let members_len_max = self.config.limits.request_limits().members_len_max as u64;
        let command = Command::UpdateMembers { name: space.to_string(), add, remove, members_len_max };
        let (record, as_of) = match self.cluster_write(placement.cluster, &command).await? {
            CommandResult::MembersUpdated(result) => result.map_err(ApiError::from)?,
            other => return Err(ApiError::Internal(format!("member change answered {other:?}"))),
        };
        let members = record.members.iter().cloned().collect();
        let set = MetaCommand::SetSpaceMembers { space: space.to_string(), members, cluster: placement.cluster, as_of };
        self.meta_write(set).await?;
        Ok(record)
    }

    /// Deletes `space`: its cluster drops the record, messages and keys and
    /// keeps a tombstone, then the directory forgets the placement and keeps
    /// the name from being placed again. Gateways end their subscribers'
    /// subscriptions. Running it again (after it was cut short) finishes it.
    /// Answers the deleted space's last seq (None when it was deleted before).
    pub async fn delete_space(&self, space: &str) -> Result<Option<u64>, ApiError> {
        let placement = match self.placement_fresh(space).await {
            Ok(placement) => placement,
            Err(ApiError::UnknownSpace { .. }) if self.is_deleted(space).await? => return Ok(None),
            Err(error) => return Err(error),
        };
        if placement.moving_to.is_some() {
            return Err(ApiError::Refused(format!("space {space:?} is being moved; finish the move first")));
        }
        let last_seq =
            match self.cluster_write(placement.cluster, &Command::DeleteSpace { name: space.to_string() }).await? {
                CommandResult::Deleted(result) => result.map_err(ApiError::from)?,
                other => return Err(ApiError::Internal(format!("delete answered {other:?}"))),
            };
        self.meta_write(MetaCommand::DeleteSpace { space: space.to_string() }).await?;
        tracing::info!(space, cluster = placement.cluster, ?last_seq, "space deleted");
        Ok(last_seq)
    }

    /// Whether the local directory has `space` as deleted.
    pub async fn is_deleted(&self, space: &str) -> Result<bool, ApiError> {
        let (tree, space) = (self.directory(), space.to_string());
        tokio::task::spawn_blocking(move || Directory::is_deleted(&tree, &space))
            .await
            .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))
    }

    /// Changes a space cluster's members, on its leader: adds `node` as a
    /// learner (its replica starts and catches up), promotes a learner to
    /// voter, or removes a member. A removal that would leave fewer voters up
    /// (as the failure detector sees them) than a majority of the remaining
    /// ones is refused unless `force`. The directory records the result.
    pub async fn change_members(
        &self,
        group: &Group,
        node: NodeId,
        change: MemberChange,
        force: bool,
    ) -> Result<(Vec<u64>, Vec<u64>), ApiError> {
        let cluster = group.id;
        let tree = self.directory();
        let (entry, node_entry) = {
            let tree = tree.clone();
            tokio::task::spawn_blocking(move || (Directory::cluster(&tree, cluster), Directory::node(&tree, node)))
                .await
                .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))?
        };
        let node_entry = node_entry.ok_or_else(|| ApiError::Refused(format!("node {node} is not registered")))?;
        // The meta cluster's members are its Raft membership (every node
        // hosts it, and a joined node is its learner); a space cluster's are
        // in the directory, which records every change.
        let is_meta = cluster == META_GROUP_ID;
        let (mut voters, mut learners) = if is_meta {
            let metrics = group.raft.metrics().borrow_watched().clone();
            let membership = metrics.membership_config.membership();
            (membership.voter_ids().collect::<Vec<_>>(), membership.learner_ids().collect::<Vec<_>>())
        } else {
            let entry = entry.ok_or_else(|| ApiError::Refused(format!("space cluster {cluster} does not exist")))?;
            (entry.voters.clone(), entry.learners.clone())
        };
        let refused = |error: openraft::errors::RaftError<
            crate::raft::types::TypeConfig,
            ClientWriteError<crate::raft::types::TypeConfig>,
        >| match error.api_error() {
            Some(ClientWriteError::ForwardToLeader(_)) => ApiError::Unavailable(format!("not the leader: {error}")),
            Some(_) => ApiError::Refused(error.to_string()),
            None => ApiError::Internal(error.to_string()),
        };
        group.wake();
        match change {
            MemberChange::AddLearner => {
                if voters.contains(&node) {
                    return Err(ApiError::Refused(format!(
                        "node {node} is a voter of space cluster {cluster} already"
                    )));
                }
                if !learners.contains(&node) {
                    learners.push(node);
                }
                if !is_meta {
                    self.meta_write(MetaCommand::SetMembers {
                        cluster,
                        voters: voters.clone(),
                        learners: learners.clone(),
                    })
                    .await?;
                }
                let addr = NodeAddr { addr: node_entry.addr, region: node_entry.region };
                group.raft.add_learner(node, addr, true).await.map_err(refused)?;
            }
            MemberChange::Promote => {
                if voters.contains(&node) {
                    return Ok((voters, learners));
                }
                if !learners.contains(&node) {
                    return Err(ApiError::Refused(format!(
                        "node {node} is not a learner of space cluster {cluster}: add it first"
                    )));
                }
                let change = openraft::ChangeMembers::AddVoterIds([node].into());
                group.raft.change_membership(change, false).await.map_err(refused)?;
                voters.push(node);
                learners.retain(|id| *id != node);
            }
            MemberChange::Remove => {
                if voters.contains(&node) {
                    let remaining: Vec<u64> = voters.iter().copied().filter(|id| *id != node).collect();
                    if remaining.is_empty() {
                        return Err(ApiError::Refused(format!(
                            "node {node} is the last voter of space cluster {cluster}"
                        )));
                    }
                    let up = remaining.iter().filter(|id| self.detector.is_up(**id)).count();
                    if up <= remaining.len() / 2 && !force {
                        return Err(ApiError::Refused(format!(
                            "removing node {node} leaves {up} of {} voters up, no majority: refused without force",
                            remaining.len()
                        )));
                    }
                    let change = openraft::ChangeMembers::RemoveVoters([node].into());
                    group.raft.change_membership(change, false).await.map_err(refused)?;
                    voters = remaining;
                } else if learners.contains(&node) {
                    let change = openraft::ChangeMembers::RemoveNodes([node].into());
                    group.raft.change_membership(change, false).await.map_err(refused)?;
                    learners.retain(|id| *id != node);
                } else {
                    return Err(ApiError::Refused(format!("node {node} is not a member of space cluster {cluster}")));
                }
            }
        }
        if !is_meta {
            self.meta_write(MetaCommand::SetMembers { cluster, voters: voters.clone(), learners: learners.clone() })
                .await?;
        }
        tracing::info!(cluster, node, ?change, ?voters, ?learners, "cluster members changed");
        Ok((voters, learners))
    }

    /// The stored record of `space` in this replica of its cluster. A space
    /// the directory places there but this replica has not applied yet (it
    /// was created a moment ago) is waited for with a read-index round.
    pub async fn space_record(&self, group: &Group, space: &str) -> Result<crate::space::SpaceRecord, ApiError> {
        let read = || {
            let (reader, space) = (group.reader.clone(), space.to_string());
            async move {
                tokio::task::spawn_blocking(move || reader.space(&space))
                    .await
                    .map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?
            }
        };
        if let Some(record) = read().await? {
            return Ok(record);
        }
        self.sync_group(group).await?;
        read().await?.ok_or_else(|| ApiError::UnknownSpace { space: space.to_string() })
    }

    /// Waits (up to `raft.leader_wait_ms`) until the directory holds a
    /// space cluster: right after bootstrap, the first one is on its way.
    async fn wait_for_first_cluster(&self) -> Result<(), ApiError> {
        let mut applied = self.meta().reader.applied.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms);
        loop {
            applied.borrow_and_update();
            let tree = self.directory();
            let any = tokio::task::spawn_blocking(move || Directory::loads(&tree).into_iter().next().is_some())
                .await
                .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))?;
            if any {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ApiError::ShuttingDown),
                Err(_) => {
                    return Err(ApiError::Internal(
                        "the directory holds no space cluster yet (is the cluster bootstrapped?)".into(),
                    ))
                }
            }
        }
    }

    /// Whether an operator drained this node (as of the last directory
    /// change this node applied).
    pub fn is_drained(&self) -> bool {
        self.drained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The addresses of `cluster`'s voters, this node's region first.
    pub async fn cluster_addrs(&self, cluster: u64) -> Result<Vec<(NodeId, String)>, ApiError> {
        let tree = self.directory();
        let region = self.config.region.clone();
        tokio::task::spawn_blocking(move || {
            let entry = Directory::cluster(&tree, cluster)
                .ok_or_else(|| ApiError::Internal(format!("space cluster {cluster} is not in the directory")))?;
            let mut voters: Vec<(bool, u64, String)> = Directory::voters(&tree, &entry)
                .into_values()
                .map(|node| (node.region != region, node.id, node.addr))
                .collect();
            voters.sort();
            Ok(voters.into_iter().map(|(_, id, addr)| (id, addr)).collect())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))?
    }

    /// This node's group of `cluster` when it is one of its voters (started
    /// now if the directory change that added it is still on its way).
    pub async fn local_cluster(&self, cluster: u64) -> Result<Option<Arc<Group>>, ApiError> {
        if let Some(group) = self.groups.get(cluster) {
            return Ok(Some(group));
        }
        let tree = self.directory();
        let entry = tokio::task::spawn_blocking(move || Directory::cluster(&tree, cluster))
            .await
            .map_err(|e| ApiError::Internal(format!("directory read failed: {e}")))?;
        match entry {
            Some(entry)
                if entry.voters.contains(&self.config.node_id) || entry.learners.contains(&self.config.node_id) =>
            {
                let group = self.start_group(cluster).await.map_err(|e| ApiError::Internal(format!("{e:#}")))?;
                if entry.voters.first() == Some(&self.config.node_id) {
                    self.initialize(&group.raft, &entry).await.map_err(|e| ApiError::Internal(format!("{e:#}")))?;
                }
                Ok(Some(group))
            }
            _ => Ok(None),
        }
    }
}
