//! Placement: which space cluster a space goes to, chosen from the space's
//! attribute data rather than a hash of its name (see the design's
//! "Placement" section).
//!
//! - [`policy`]: the decision itself, pure and deterministic, over what the
//!   meta cluster's directory records ([`crate::meta`]).

pub mod policy;

pub use policy::{place, ClusterLoad, OverlapThreshold, Placement, PlacementConfig, Reason, SpaceProfile};
