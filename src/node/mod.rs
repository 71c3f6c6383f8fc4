//! A node: one `spaceraft node` process in one region. It hosts replicas of
//! space clusters and serves the requests the front door ([`crate::api`])
//! hands it. Organised by operation:
//! - [`host`]: what a node's groups share, and [`life`] of the groups;
//! - [`router`] (pure) and [`runner`]: where every request goes next;
//! - [`write`], [`read`], [`commands`], [`lookup`]: the message path and the
//!   directory reads and writes under it;
//! - [`spaces`], [`moves`], [`members`], [`operate`], [`snapshot`],
//!   [`status`], [`gateways`]: administration and what operators read;
//! - [`follow`]: gateways' follow streams; [`leaders`], [`quiesce`],
//!   [`detector`]: leader placement, idle groups, the failure detector;
//!   [`disk`]: the data directory's free space and its reserve;
//! - [`identity`]: which cluster the node belongs to; [`rejoin`]: the
//!   incarnations membership records, and members re-admitted after data loss;
//!   [`watchdog`]: followers whose replication stalled. The process itself
//!   (stores opened, groups started, gRPC served) is wired in
//!   [`crate::api::server`].

pub mod commands;
pub mod detector;
pub mod disk;
pub mod follow;
pub mod gateways;
pub mod host;
pub mod identity;
pub mod leaders;
pub mod life;
pub mod lookup;
pub mod members;
pub mod moves;
pub mod operate;
pub mod quiesce;
pub mod read;
pub mod rejoin;
pub mod router;
pub mod runner;

pub mod snapshot;
pub mod spaces;
pub mod status;
pub mod watchdog;
pub mod write;
