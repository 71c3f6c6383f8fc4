//! Placement: which space cluster a space goes to, chosen from the space's
//! attribute data rather than a hash of its name (see the design's
//! "Placement" section).
//!
//! - [`policy`]: the decision itself, pure and deterministic.
//! - [`directory`]: the meta cluster's record of nodes, space clusters and
//!   placements, and its apply logic.

pub mod directory;
pub mod policy;

pub use policy::{place, ClusterLoad, OverlapThreshold, Placement, PlacementConfig, Reason, SpaceProfile};
