//! A node's runtime: the groups it hosts and what they share. [`Host`] is
//! the one value every part of a node holds; its operations are written by
//! concern, each in its own file:
//! - [`crate::node::life`]: groups started, initialized, following the directory;
//! - [`crate::node::runner`] (with the pure [`crate::node::router`]): every
//!   request routed to its cluster's leader or replica;
//! - [`crate::node::commands`]: writes to a cluster or to the directory;
//! - [`crate::node::lookup`]: fresh reads of the directory and of spaces;
//! - [`crate::node::write`], [`crate::node::read`]: the client operations;
//! - [`crate::node::spaces`], [`crate::node::moves`], [`crate::node::members`]:
//!   space and cluster administration;
//! - [`crate::node::status`], [`crate::node::snapshot`],
//!   [`crate::node::gateways`]: what operators read.
//!
//! Every node hosts a replica of the meta group, whose state machine holds
//! the directory; the node follows it and starts every space cluster the
//! directory puts here. All groups share the node's one sled database, one
//! Raft log engine with one fsync per batch across groups, and one
//! connection per peer node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{NodeConfig, NodeId};
use crate::error::ApiError;
use crate::meta::directory::META_GROUP_ID;
use crate::node::detector::Detector;
use crate::pb;
use crate::raft::group::{Group, Groups};
use crate::raft::network::PeerChannels;
use crate::security::gate::Gate;
use crate::security::rate::PostRates;
use crate::storage::data_dir::DataDir;
use crate::storage::{LogEngine, StateWriter};
use crate::wire::{ClusterId, Hop, Stamped};

/// A client of a peer's `Client` service; its requests carry the cluster id.
pub type ClientStub = pb::client_client::ClientClient<Stamped>;
/// A client of a peer's `Admin` service; its requests carry the cluster id.
pub type AdminStub = pb::admin_client::AdminClient<Stamped>;

/// How a node checks its callers and dials its peers.
pub struct HostSecurity {
    pub gate: Gate,
    /// TLS to peers (None: plaintext, security off).
    pub dial: Option<tonic::transport::ClientTlsConfig>,
}

/// Everything a node's groups share.
pub struct Host {
    pub config: Arc<NodeConfig>,
    /// The cluster this node belongs to (known once bootstrapped or joined).
    pub cluster: ClusterId,
    pub groups: Groups,
    pub peers: PeerChannels,
    pub detector: Detector,
    pub(crate) db: sled::Db,
    /// Commits the applies of this node's groups (see [`StateWriter`]).
    pub(crate) state_writer: StateWriter,
    pub(crate) engine: LogEngine,
    pub(crate) data_dir: DataDir,
    pub(crate) raft_config: Arc<openraft::Config>,
    /// Serializes learning the cluster id.
    pub(crate) learning_cluster: tokio::sync::Mutex<()>,
    /// Serializes group starts, so a group is started once.
    pub(crate) starting: tokio::sync::Mutex<()>,
    /// Serializes placement decisions on the meta leader: two spaces created
    /// at once do not both make a new cluster.
    pub(crate) placing: tokio::sync::Mutex<()>,
    /// Clusters whose initialization this process has settled.
    pub(crate) initialized: Mutex<BTreeSet<u64>>,
    /// Bumped after any group applies: follow sessions watch spaces of many
    /// groups and wake on this.
    pub(crate) applied_any: watch::Sender<u64>,
    /// Until then ([`crate::raft::group::since_start_ms`]) a group with no
    /// known leader does not elect: the node has just started and its
    /// peers' leaders are making themselves known ([`crate::node::quiesce`]).
    pub quiet_until_ms: std::sync::atomic::AtomicU64,
    /// This node's drain flag from the directory, refreshed on every change.
    pub(crate) drained: std::sync::atomic::AtomicBool,
    /// Free bytes of the data directory's disk ([`crate::node::disk`]).
    pub(crate) disk_free_bytes: std::sync::atomic::AtomicU64,
    /// Why the state machine store last failed to write out, if it did.
    pub(crate) sm_failure: Mutex<Option<String>>,
    /// When this node started.
    pub started: std::time::Instant,
    /// The latest report of each gateway that follows this node, by id.
    pub(crate) gateways: Mutex<BTreeMap<String, (pb::GatewayReport, std::time::Instant)>>,
    /// Establishes who calls this node.
    pub gate: Gate,
    /// Each user's post allowance on this node.
    pub post_rates: PostRates,
    /// Placements read from the local directory, valid while the meta
    /// replica's applied index stays what it was when they were read.
    pub(crate) placements: Mutex<PlacementCache>,
}

/// Placements read at one applied index of the meta replica.
#[derive(Default)]
pub(crate) struct PlacementCache {
    pub applied: u64,
    pub spaces: std::collections::HashMap<String, crate::meta::directory::SpacePlacement>,
}

impl PlacementCache {
    /// Spaces cached at most; past it the cache starts over.
    const SPACES_MAX: usize = 100_000;

    pub fn get(&mut self, applied: u64, space: &str) -> Option<crate::meta::directory::SpacePlacement> {
        if self.applied != applied {
            self.applied = applied;
            self.spaces.clear();
            return None;
        }
        self.spaces.get(space).cloned()
    }

    pub fn put(&mut self, applied: u64, placement: crate::meta::directory::SpacePlacement) {
        if self.applied != applied || self.spaces.len() >= Self::SPACES_MAX {
            self.applied = applied;
            self.spaces.clear();
        }
        self.spaces.insert(placement.space.name.clone(), placement);
    }
}

impl Host {
    pub fn new(
        config: Arc<NodeConfig>,
        db: sled::Db,
        engine: LogEngine,
        data_dir: DataDir,
        raft_config: Arc<openraft::Config>,
        cluster: ClusterId,
        security: HostSecurity,
    ) -> Host {
        let peers = PeerChannels::new(config.network.clone(), cluster.clone(), security.dial, data_dir.incarnation);
        let post_rates = PostRates::new(config.security.posts_per_user_per_sec);
        let detector = Detector::new(
            config.node_id,
            Duration::from_millis(config.groups.down_after_ms),
            Duration::from_millis(config.raft.heartbeat_interval_ms),
        );
        Host {
            cluster,
            config,
            groups: Groups::default(),
            peers,
            detector,
            db,
            state_writer: StateWriter::default(),
            engine,
            data_dir,
            raft_config,
            learning_cluster: tokio::sync::Mutex::new(()),
            starting: tokio::sync::Mutex::new(()),
            placing: tokio::sync::Mutex::new(()),
            initialized: Mutex::new(BTreeSet::new()),
            applied_any: watch::channel(0).0,
            quiet_until_ms: std::sync::atomic::AtomicU64::new(u64::MAX),
            drained: std::sync::atomic::AtomicBool::new(false),
            disk_free_bytes: std::sync::atomic::AtomicU64::new(u64::MAX),
            sm_failure: Mutex::new(None),
            started: std::time::Instant::now(),
            gateways: Mutex::new(BTreeMap::new()),
            gate: security.gate,
            post_rates,
            placements: Mutex::default(),
        }
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

    /// Whether an operator drained this node (as of the last directory
    /// change this node applied).
    pub fn is_drained(&self) -> bool {
        self.drained.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A stub for a peer's `Client` service.
    pub fn client_stub(&self, addr: &str) -> Result<ClientStub, ApiError> {
        let channel =
            self.peers.channel(addr).map_err(|e| ApiError::internal(format!("bad peer address {addr}: {e}")))?;
        Ok(pb::client_client::ClientClient::new(channel).max_decoding_message_size(512 * 1024 * 1024))
    }

    /// A stub for a peer's `Admin` service.
    pub fn admin_stub(&self, addr: &str) -> Result<AdminStub, ApiError> {
        let channel =
            self.peers.channel(addr).map_err(|e| ApiError::internal(format!("bad peer address {addr}: {e}")))?;
        Ok(pb::admin_client::AdminClient::new(channel))
    }

    /// A request passed on to a peer: marked with its hop, bounded by
    /// `network.forward_timeout_ms`.
    pub fn forward<T>(&self, message: T, hop: Hop) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        hop.mark(&mut request);
        request.set_timeout(Duration::from_millis(self.config.network.forward_timeout_ms));
        request
    }
}
