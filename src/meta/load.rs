//! What the directory records of spaces and clusters for placement: a
//! space's profile, a cluster's load, and the reason a space was placed.
//! Plain data; the policy that reads it is [`crate::placement`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// What placement knows of a space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceProfile {
    pub name: String,
    pub org: Option<String>,
    pub members: BTreeSet<String>,
    /// Posts and reactions a minute (expected, or measured).
    pub activity_per_min: f64,
}

/// What placement knows of a space cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterLoad {
    pub id: u64,
    pub spaces: u64,
    pub activity_per_min: f64,
    /// Spaces per org.
    pub orgs: BTreeMap<String, u64>,
    /// Spaces per member.
    pub members: BTreeMap<String, u64>,
}

impl ClusterLoad {
    pub fn new(id: u64) -> ClusterLoad {
        ClusterLoad { id, ..ClusterLoad::default() }
    }

    /// Counts `space` as placed here.
    pub fn add(&mut self, space: &SpaceProfile) {
        self.spaces += 1;
        self.activity_per_min += space.activity_per_min;
        if let Some(org) = &space.org {
            *self.orgs.entry(org.clone()).or_default() += 1;
        }
        for member in &space.members {
            *self.members.entry(member.clone()).or_default() += 1;
        }
    }

    /// Stops counting `space` here (it moved away).
    pub fn remove(&mut self, space: &SpaceProfile) {
        self.spaces = self.spaces.saturating_sub(1);
        self.activity_per_min = (self.activity_per_min - space.activity_per_min).max(0.0);
        let drop_count = |map: &mut BTreeMap<String, u64>, key: &String| {
            if let Some(count) = map.get_mut(key) {
                *count -= 1;
                if *count == 0 {
                    map.remove(key);
                }
            }
        };
        if let Some(org) = &space.org {
            drop_count(&mut self.orgs, org);
        }
        for member in &space.members {
            drop_count(&mut self.members, member);
        }
    }

    /// Members of `space` that already have a space here.
    pub fn shared_members(&self, space: &SpaceProfile) -> usize {
        space.members.iter().filter(|member| self.members.contains_key(*member)).count()
    }
}

/// Why a cluster was chosen; shown to operators and stored in the
/// directory (externally tagged: the directory's binary encoding cannot
/// read internally tagged enums).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The cluster holds other spaces of the org.
    SameOrg { org: String, shared_members: usize },
    /// The cluster's members cover the space's above the threshold.
    MemberOverlap { shared_members: usize },
    /// A hot space, sent to the least active cluster with affinity.
    HotSpread { shared_members: usize },
    /// No affinity anywhere: the least loaded cluster with headroom.
    LeastLoaded,
    /// Every cluster is full.
    NoCapacity,
    /// No affinity anywhere, and every cluster is past `new_affinity_fill`.
    NoHeadroom,
}
