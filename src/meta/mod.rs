//! The meta cluster's state machine: the directory of nodes, regions, space
//! clusters and placements ([`directory`]), and what it records for
//! placement ([`load`]). Pure and deterministic, over the key-value view of
//! [`crate::kv`]; the policy that decides placements is
//! [`crate::placement`], which reads these records.

pub mod directory;
pub mod load;
