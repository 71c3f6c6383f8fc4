//! The placement policy: for a new space, the space cluster it joins, or a
//! new cluster. Pure code: the same space and the same clusters give the
//! same decision on every node.
//!
//! In order:
//! 1. **Capacity.** Only clusters with fewer than `spaces_max` spaces, and
//!    whose activity plus the space's stays within `activity_max`, are
//!    candidates. With none left, a new cluster is created.
//! 2. **Org.** Candidates that already hold spaces of the space's org come
//!    first, so an org's spaces stay together.
//! 3. **Member overlap.** Among those (or among all candidates when none
//!    holds the org), a cluster whose members cover the space's members at or
//!    above the threshold (a percentage of the space's members, or a count) is
//!    preferred, the one sharing the most members first: users' spaces then
//!    span few clusters, and a gateway needs few upstream subscriptions.
//! 4. **Activity.** A hot space (at least `hot_activity` posts and reactions
//!    a minute) goes to the least active of the preferred clusters, so hot
//!    spaces spread instead of piling onto one leader.
//! 5. **Ties** go to the cluster with the fewest spaces, then the lowest id.
//!
//! A space with no affinity to any candidate starts its org (or its group of
//! members) on the least loaded cluster that is still under `new_affinity_fill`
//! percent of `spaces_max`, keeping the rest of each cluster for the spaces
//! that will follow it there; when every cluster is past that, a new cluster
//! is created. Without that headroom, early clusters fill with a mix of every
//! org and placement is no better than a hash.

use serde::{Deserialize, Serialize};

pub use crate::meta::load::{ClusterLoad, Reason, SpaceProfile};

/// Whether `load` can take `space` within the configured bounds.
fn has_room_for(load: &ClusterLoad, space: &SpaceProfile, config: &PlacementConfig) -> bool {
    load.spaces < config.spaces_max && load.activity_per_min + space.activity_per_min <= config.activity_max_per_min
}

/// When two member sets overlap enough to be placed together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapThreshold {
    /// At least this percentage of the new space's members.
    Percent(u32),
    /// At least this many members.
    Count(usize),
}

impl OverlapThreshold {
    pub fn met(self, shared: usize, members: usize) -> bool {
        match self {
            OverlapThreshold::Percent(percent) => members > 0 && shared * 100 >= percent as usize * members,
            OverlapThreshold::Count(count) => shared >= count.max(1),
        }
    }
}

/// The policy's knobs (the `[placement]` section of a node's config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementConfig {
    pub overlap: OverlapThreshold,
    pub spaces_max: u64,
    pub activity_max_per_min: f64,
    pub hot_activity_per_min: f64,
    /// How full (percent of `spaces_max`) a cluster may be and still take a
    /// space with no affinity to it.
    pub new_affinity_fill: u32,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            overlap: OverlapThreshold::Percent(50),
            spaces_max: 1_000,
            activity_max_per_min: 60_000.0,
            hot_activity_per_min: 600.0,
            new_affinity_fill: 10,
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    Existing { cluster: u64, reason: Reason },
    NewCluster { reason: Reason },
}

/// Chooses the cluster for `space` among `clusters`.
pub fn place(space: &SpaceProfile, clusters: &[ClusterLoad], config: &PlacementConfig) -> Placement {
    let candidates: Vec<&ClusterLoad> =
        clusters.iter().filter(|cluster| has_room_for(cluster, space, config)).collect();
    if candidates.is_empty() {
        return Placement::NewCluster { reason: Reason::NoCapacity };
    }
    let members = space.members.len();
    let same_org: Vec<&ClusterLoad> = match &space.org {
        Some(org) => candidates.iter().copied().filter(|cluster| cluster.orgs.contains_key(org)).collect(),
        None => Vec::new(),
    };
    let pool = if same_org.is_empty() { &candidates } else { &same_org };
    let overlapping: Vec<&ClusterLoad> =
        pool.iter().copied().filter(|cluster| config.overlap.met(cluster.shared_members(space), members)).collect();
    let preferred: &[&ClusterLoad] = if !overlapping.is_empty() { &overlapping } else { pool };
    let affinity = !same_org.is_empty() || !overlapping.is_empty();
    if !affinity {
        let headroom =
            |cluster: &&ClusterLoad| cluster.spaces * 100 < config.new_affinity_fill as u64 * config.spaces_max;
        return match preferred.iter().copied().filter(headroom).min_by(|a, b| by_load(a, b)) {
            Some(least) => Placement::Existing { cluster: least.id, reason: Reason::LeastLoaded },
            None => Placement::NewCluster { reason: Reason::NoHeadroom },
        };
    }

    let hot = space.activity_per_min >= config.hot_activity_per_min;
    let chosen = if hot {
        preferred
            .iter()
            .copied()
            .min_by(|a, b| a.activity_per_min.total_cmp(&b.activity_per_min).then_with(|| by_load(a, b)))
    } else {
        preferred
            .iter()
            .copied()
            .min_by(|a, b| b.shared_members(space).cmp(&a.shared_members(space)).then_with(|| by_load(a, b)))
    }
    .expect("preferred clusters are not empty");
    let shared_members = chosen.shared_members(space);
    let reason = match (&space.org, same_org.is_empty(), hot) {
        (_, _, true) => Reason::HotSpread { shared_members },
        (Some(org), false, _) => Reason::SameOrg { org: org.clone(), shared_members },
        _ => Reason::MemberOverlap { shared_members },
    };
    Placement::Existing { cluster: chosen.id, reason }
}

fn by_load(a: &ClusterLoad, b: &ClusterLoad) -> std::cmp::Ordering {
    a.spaces
        .cmp(&b.spaces)
        .then_with(|| a.activity_per_min.total_cmp(&b.activity_per_min))
        .then_with(|| a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn space(name: &str, org: Option<&str>, members: &[&str], activity: f64) -> SpaceProfile {
        SpaceProfile {
            name: name.into(),
            org: org.map(str::to_string),
            members: members.iter().map(|member| member.to_string()).collect(),
            activity_per_min: activity,
        }
    }

    fn cluster_with(id: u64, spaces: &[SpaceProfile]) -> ClusterLoad {
        let mut cluster = ClusterLoad::new(id);
        for space in spaces {
            cluster.add(space);
        }
        cluster
    }

    fn chosen(placement: &Placement) -> Option<u64> {
        match placement {
            Placement::Existing { cluster, .. } => Some(*cluster),
            Placement::NewCluster { .. } => None,
        }
    }

    #[test]
    fn an_orgs_spaces_stay_together() {
        let clusters = [
            cluster_with(1, &[space("a", Some("acme"), &["ann"], 1.0)]),
            cluster_with(2, &[space("b", Some("globex"), &["bob"], 1.0)]),
        ];
        let placement = place(&space("c", Some("globex"), &["cat"], 1.0), &clusters, &PlacementConfig::default());
        assert_eq!(
            placement,
            Placement::Existing { cluster: 2, reason: Reason::SameOrg { org: "globex".into(), shared_members: 0 } }
        );
    }

    #[test]
    fn overlapping_members_go_together_at_the_threshold_and_not_below() {
        let clusters = [
            cluster_with(1, &[space("a", None, &["ann", "bob"], 1.0)]),
            cluster_with(2, &[space("b", None, &["cat", "dan"], 1.0)]),
        ];
        let config = PlacementConfig { overlap: OverlapThreshold::Percent(50), ..PlacementConfig::default() };
        let half = place(&space("c", None, &["cat", "eve"], 1.0), &clusters, &config);
        assert_eq!(half, Placement::Existing { cluster: 2, reason: Reason::MemberOverlap { shared_members: 1 } });
        let third = place(&space("d", None, &["cat", "eve", "fay"], 1.0), &clusters, &config);
        assert_eq!(third, Placement::Existing { cluster: 1, reason: Reason::LeastLoaded });
        let by_count = PlacementConfig { overlap: OverlapThreshold::Count(1), ..config };
        assert_eq!(chosen(&place(&space("d", None, &["cat", "eve", "fay"], 1.0), &clusters, &by_count)), Some(2));
    }

    #[test]
    fn full_clusters_are_skipped_and_a_new_one_made_when_all_are_full() {
        let config = PlacementConfig { spaces_max: 1, ..PlacementConfig::default() };
        let clusters = [cluster_with(1, &[space("a", Some("acme"), &["ann"], 1.0)]), ClusterLoad::new(2)];
        assert_eq!(chosen(&place(&space("b", Some("acme"), &["ann"], 1.0), &clusters, &config)), Some(2));
        let full = [cluster_with(1, &[space("a", Some("acme"), &["ann"], 1.0)])];
        assert_eq!(
            place(&space("b", Some("acme"), &["ann"], 1.0), &full, &config),
            Placement::NewCluster { reason: Reason::NoCapacity }
        );
    }

    #[test]
    fn hot_spaces_spread_over_the_clusters_of_their_org() {
        let config = PlacementConfig { hot_activity_per_min: 100.0, ..PlacementConfig::default() };
        let clusters = [
            cluster_with(1, &[space("a", Some("acme"), &["ann"], 500.0)]),
            cluster_with(2, &[space("b", Some("acme"), &["ann"], 5.0), space("c", Some("acme"), &["ann"], 5.0)]),
        ];
        let placement = place(&space("d", Some("acme"), &["ann"], 300.0), &clusters, &config);
        assert_eq!(placement, Placement::Existing { cluster: 2, reason: Reason::HotSpread { shared_members: 1 } });
    }

    fn arbitrary_space() -> impl Strategy<Value = SpaceProfile> {
        (
            "[a-z]{1,6}",
            proptest::option::of(prop_oneof!["acme", "globex", "initech"]),
            proptest::collection::btree_set("u[0-9]{1,2}", 1..8),
            0.0f64..1000.0,
        )
            .prop_map(|(name, org, members, activity_per_min)| SpaceProfile {
                name,
                org: org.map(|org| org.to_string()),
                members,
                activity_per_min,
            })
    }

    fn arbitrary_clusters() -> impl Strategy<Value = Vec<ClusterLoad>> {
        proptest::collection::vec(proptest::collection::vec(arbitrary_space(), 0..6), 0..6).prop_map(|groups| {
            groups.iter().enumerate().map(|(id, spaces)| cluster_with(id as u64 + 1, spaces)).collect()
        })
    }

    fn arbitrary_config() -> impl Strategy<Value = PlacementConfig> {
        (
            prop_oneof![
                (1u32..=100).prop_map(OverlapThreshold::Percent),
                (1usize..5).prop_map(OverlapThreshold::Count)
            ],
            1u64..8,
            100.0f64..5000.0,
            10.0f64..1000.0,
        )
            .prop_map(|(overlap, spaces_max, activity_max_per_min, hot_activity_per_min)| PlacementConfig {
                overlap,
                spaces_max,
                activity_max_per_min,
                hot_activity_per_min,
                new_affinity_fill: 50,
            })
    }

    proptest! {
        #[test]
        fn the_same_inputs_give_the_same_decision(
            space in arbitrary_space(), clusters in arbitrary_clusters(), config in arbitrary_config()
        ) {
            prop_assert_eq!(place(&space, &clusters, &config), place(&space, &clusters, &config));
        }

        #[test]
        fn capacity_is_respected(space in arbitrary_space(), clusters in arbitrary_clusters(), config in arbitrary_config()) {
            match place(&space, &clusters, &config) {
                Placement::Existing { cluster, .. } => {
                    let cluster = clusters.iter().find(|c| c.id == cluster).expect("an existing cluster");
                    prop_assert!(cluster.spaces < config.spaces_max);
                    prop_assert!(cluster.activity_per_min + space.activity_per_min <= config.activity_max_per_min);
                }
                Placement::NewCluster { reason: Reason::NoCapacity } => {
                    prop_assert!(clusters.iter().all(|c| !has_room_for(c, &space, &config)));
                }
                Placement::NewCluster { reason } => {
                    prop_assert_eq!(reason, Reason::NoHeadroom);
                    for c in clusters.iter().filter(|c| has_room_for(c, &space, &config)) {
                        prop_assert!(c.spaces * 100 >= config.new_affinity_fill as u64 * config.spaces_max);
                        prop_assert!(!space.org.as_ref().is_some_and(|org| c.orgs.contains_key(org)));
                        prop_assert!(!config.overlap.met(c.shared_members(&space), space.members.len()));
                    }
                }
            }
        }

        #[test]
        fn an_org_with_room_keeps_its_spaces_and_overlap_meets_the_threshold(
            space in arbitrary_space(), clusters in arbitrary_clusters(), config in arbitrary_config()
        ) {
            let placement = place(&space, &clusters, &config);
            if let Placement::Existing { cluster, reason } = &placement {
                let chosen = clusters.iter().find(|c| c.id == *cluster).expect("an existing cluster");
                if let Some(org) = &space.org {
                    let org_has_room = clusters.iter().any(|c| c.orgs.contains_key(org) && has_room_for(c, &space, &config));
                    if org_has_room {
                        prop_assert!(chosen.orgs.contains_key(org), "{placement:?}");
                    }
                }
                if let Reason::MemberOverlap { shared_members } = reason {
                    prop_assert!(config.overlap.met(*shared_members, space.members.len()));
                    prop_assert_eq!(*shared_members, chosen.shared_members(&space));
                }
            }
        }
    }
}
