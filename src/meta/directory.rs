//! The meta cluster's directory: nodes and their regions, space clusters
//! with their voters and preferred leader region, and where each space
//! lives (with a version that grows on every change), plus each cluster's
//! load as placement sees it.
//!
//! It is stored in the meta group's state machine tree, next to nothing
//! else, under its own key prefixes (upper-case, so they never meet the
//! space keys of [`crate::space::record`]):
//! - `N` node id (u64 BE) → [`NodeEntry`]
//! - `C` cluster id (u64 BE) → [`ClusterEntry`]
//! - `L` cluster id (u64 BE) → [`ClusterLoad`]
//! - `P` space name → [`SpacePlacement`]
//! - `D` space name → () : a deleted space, whose name is not placed again
//! - `M` space name → (cluster, log index) of the last member change recorded
//! - `K` → the last cluster id handed out
//!
//! [`apply`] is pure and deterministic like the space machine: every meta
//! replica makes the same changes from the same command.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::load::{ClusterLoad, Reason, SpaceProfile};
use crate::kv::{decode, encode, KvRead, Staging};

/// The Raft group id of the meta cluster; space clusters count from 1.
pub const META_GROUP_ID: u64 = 0;

const NODE_PREFIX: u8 = b'N';
const CLUSTER_PREFIX: u8 = b'C';
const LOAD_PREFIX: u8 = b'L';
const PLACEMENT_PREFIX: u8 = b'P';
const DELETED_PREFIX: u8 = b'D';
const MEMBERS_AS_OF_PREFIX: u8 = b'M';
const JOIN_TOKEN_PREFIX: u8 = b'J';
const LAST_CLUSTER_KEY: &[u8] = b"K";

/// A node as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: u64,
    pub region: String,
    pub addr: String,
    /// Drained by an operator: it leads no group and serves no gateway.
    #[serde(default)]
    pub drained: bool,
}

/// A space cluster: its voters (node ids) and where its leader should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterEntry {
    pub id: u64,
    pub voters: Vec<u64>,
    /// Replicas that follow the log without voting (being added).
    pub learners: Vec<u64>,
    /// Empty: no preference.
    pub preferred_region: String,
}

/// Where a space lives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpacePlacement {
    pub space: SpaceProfile,
    /// The attributes the space was created with.
    pub attrs: BTreeMap<String, String>,
    pub cluster: u64,
    /// 1 when placed; grows with every change (a move).
    pub version: u64,
    pub reason: Reason,
    /// Set while the space moves to this cluster.
    pub moving_to: Option<u64>,
}

/// A change to the directory; one Raft entry of the meta group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Adds a node or updates its address and region.
    RegisterNode(NodeEntry),
    /// Makes a space cluster with these voters and the next free id. With
    /// `only_if_none`, does nothing when a cluster exists already (the
    /// bootstrap's first cluster, proposed by every bootstrapping node).
    CreateCluster {
        voters: Vec<u64>,
        preferred_region: String,
        only_if_none: bool,
    },
    /// Records a space's placement; a space placed before keeps its first
    /// placement (a retried create).
    PlaceSpace {
        space: SpaceProfile,
        attrs: BTreeMap<String, String>,
        cluster: u64,
        reason: Reason,
    },
    SetPreferredRegion {
        cluster: u64,
        region: String,
    },
    /// Drains a node (or returns it to service).
    SetDrained {
        node: u64,
        drained: bool,
    },
    /// Records a cluster's members after a membership change.
    SetMembers {
        cluster: u64,
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// Marks a space as moving to `to` (idempotent).
    BeginMove {
        space: String,
        to: u64,
    },
    /// Places a moved space on `to`, where its copy is complete.
    FinishMove {
        space: String,
        to: u64,
    },
    /// Records a space's members after its cluster changed them at log
    /// index `as_of`; a report older than the last one recorded from the
    /// same cluster changes nothing (member changes racing each other).
    SetSpaceMembers {
        space: String,
        members: Vec<String>,
        cluster: u64,
        as_of: u64,
    },
    /// Forgets a deleted space's placement (a move under way included: the
    /// space is gone from its cluster already) and keeps its name from being
    /// placed again (idempotent).
    DeleteSpace {
        space: String,
    },
    /// Keeps a one-time join token's digest, valid until `expires_ms` (by
    /// the proposer's clock, as `now_ms` below: apply stays deterministic).
    AddJoinToken {
        digest: String,
        expires_ms: u64,
    },
    /// Registers a node that presents a join token: the token, unexpired at
    /// `now_ms`, is spent and the node registered in one step. A node
    /// registered already at that address needs no token (a restart).
    AdmitNode {
        node: NodeEntry,
        digest: String,
        now_ms: u64,
    },
}

/// What applying a [`MetaCommand`] answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaOutcome {
    NodeRegistered,
    JoinTokenAdded,
    ClusterCreated { id: u64, created: bool },
    SpacePlaced { placement: SpacePlacement, existed: bool },
    PreferenceSet,
    MembersSet,
    Moving { placement: SpacePlacement },
    Moved { placement: SpacePlacement },
    SpaceMembersSet { placement: SpacePlacement },
    SpaceDeleted { existed: bool },
}

/// Why apply refused a meta command; refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("space cluster {0} does not exist")]
    UnknownCluster(u64),
    #[error("node {0} is not registered")]
    UnknownNode(u64),
    #[error("a space cluster needs at least one voter")]
    NoVoters,
    #[error("space {0:?} is not placed")]
    UnknownSpace(String),
    #[error("space {space:?} is already moving to space cluster {to}")]
    AlreadyMoving { space: String, to: u64 },
    #[error("space {0:?} was deleted; the names of deleted spaces are not taken again")]
    Deleted(String),
    #[error(
        "node {0} presented no valid join token (unknown, used or expired): mint one with `spacectl node join-token`"
    )]
    JoinTokenRefused(u64),
}

fn id_key(prefix: u8, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(prefix);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn name_key(prefix: u8, space: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + space.len());
    key.push(prefix);
    key.extend_from_slice(space.as_bytes());
    key
}

fn placement_key(space: &str) -> Vec<u8> {
    name_key(PLACEMENT_PREFIX, space)
}

fn read<R: KvRead, T: for<'a> Deserialize<'a>>(store: &R, key: &[u8]) -> Option<T> {
    let bytes = store.get(key)?;
    Some(decode(&bytes).expect("directory records are written by this module"))
}

fn read_overlay<S: Staging, T: for<'a> Deserialize<'a>>(overlay: &S, key: &[u8]) -> Option<T> {
    let bytes = overlay.get(key)?;
    Some(decode(&bytes).expect("directory records are written by this module"))
}

/// Every value under `prefix`, in key order.
fn scan<R: KvRead, T: for<'a> Deserialize<'a>>(store: &R, prefix: u8) -> Vec<T> {
    store
        .keys_between(&[prefix], &[prefix, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .iter()
        .filter_map(|key| read(store, key))
        .collect()
}

/// Applies one meta command.
pub fn apply<S: Staging>(overlay: &mut S, command: &MetaCommand) -> Result<MetaOutcome, MetaError> {
    match command {
        MetaCommand::RegisterNode(node) => {
            // A registration again (every bootstrap start) keeps the drain.
            let drained =
                read_overlay::<S, NodeEntry>(overlay, &id_key(NODE_PREFIX, node.id)).is_some_and(|n| n.drained);
            overlay.insert(id_key(NODE_PREFIX, node.id), encode(&NodeEntry { drained, ..node.clone() }));
            Ok(MetaOutcome::NodeRegistered)
        }
        MetaCommand::AddJoinToken { digest, expires_ms } => {
            overlay.insert(name_key(JOIN_TOKEN_PREFIX, digest), encode(expires_ms));
            Ok(MetaOutcome::JoinTokenAdded)
        }
        MetaCommand::AdmitNode { node, digest, now_ms } => {
            let registered = read_overlay::<S, NodeEntry>(overlay, &id_key(NODE_PREFIX, node.id));
            if registered.is_some_and(|known| known.addr == node.addr) {
                return Ok(MetaOutcome::NodeRegistered);
            }
            let key = name_key(JOIN_TOKEN_PREFIX, digest);
            if read_overlay::<S, u64>(overlay, &key).is_none_or(|expires| expires <= *now_ms) {
                return Err(MetaError::JoinTokenRefused(node.id));
            }
            overlay.remove(key);
            overlay.insert(id_key(NODE_PREFIX, node.id), encode(&NodeEntry { drained: false, ..node.clone() }));
            Ok(MetaOutcome::NodeRegistered)
        }
        MetaCommand::CreateCluster { voters, preferred_region, only_if_none } => {
            let last: u64 = read_overlay(overlay, LAST_CLUSTER_KEY).unwrap_or(0);
            if *only_if_none && last > 0 {
                return Ok(MetaOutcome::ClusterCreated { id: 1, created: false });
            }
            if voters.is_empty() {
                return Err(MetaError::NoVoters);
            }
            if let Some(unknown) = voters.iter().find(|id| overlay.get(&id_key(NODE_PREFIX, **id)).is_none()) {
                return Err(MetaError::UnknownNode(*unknown));
            }
            let id = last + 1;
            let mut voters = voters.clone();
            voters.sort_unstable();
            voters.dedup();
            let entry = ClusterEntry { id, voters, learners: Vec::new(), preferred_region: preferred_region.clone() };
            overlay.insert(id_key(CLUSTER_PREFIX, id), encode(&entry));
            overlay.insert(id_key(LOAD_PREFIX, id), encode(&ClusterLoad::new(id)));
            overlay.insert(LAST_CLUSTER_KEY.to_vec(), encode(&id));
            Ok(MetaOutcome::ClusterCreated { id, created: true })
        }
        MetaCommand::PlaceSpace { space, attrs, cluster, reason } => {
            if let Some(placement) = read_overlay::<S, SpacePlacement>(overlay, &placement_key(&space.name)) {
                return Ok(MetaOutcome::SpacePlaced { placement, existed: true });
            }
            if overlay.get(&name_key(DELETED_PREFIX, &space.name)).is_some() {
                return Err(MetaError::Deleted(space.name.clone()));
            }
            let Some(mut load) = read_overlay::<S, ClusterLoad>(overlay, &id_key(LOAD_PREFIX, *cluster)) else {
                return Err(MetaError::UnknownCluster(*cluster));
            };
            load.add(space);
            overlay.insert(id_key(LOAD_PREFIX, *cluster), encode(&load));
            let placement = SpacePlacement {
                space: space.clone(),
                attrs: attrs.clone(),
                cluster: *cluster,
                version: 1,
                reason: reason.clone(),
                moving_to: None,
            };
            overlay.insert(placement_key(&space.name), encode(&placement));
            Ok(MetaOutcome::SpacePlaced { placement, existed: false })
        }
        MetaCommand::SetPreferredRegion { cluster, region } => {
            let Some(mut entry) = read_overlay::<S, ClusterEntry>(overlay, &id_key(CLUSTER_PREFIX, *cluster)) else {
                return Err(MetaError::UnknownCluster(*cluster));
            };
            entry.preferred_region = region.clone();
            overlay.insert(id_key(CLUSTER_PREFIX, *cluster), encode(&entry));
            Ok(MetaOutcome::PreferenceSet)
        }
        MetaCommand::SetDrained { node, drained } => {
            let Some(mut entry) = read_overlay::<S, NodeEntry>(overlay, &id_key(NODE_PREFIX, *node)) else {
                return Err(MetaError::UnknownNode(*node));
            };
            entry.drained = *drained;
            overlay.insert(id_key(NODE_PREFIX, *node), encode(&entry));
            Ok(MetaOutcome::NodeRegistered)
        }
        MetaCommand::SetMembers { cluster, voters, learners } => {
            let Some(mut entry) = read_overlay::<S, ClusterEntry>(overlay, &id_key(CLUSTER_PREFIX, *cluster)) else {
                return Err(MetaError::UnknownCluster(*cluster));
            };
            if voters.is_empty() {
                return Err(MetaError::NoVoters);
            }
            if let Some(unknown) =
                voters.iter().chain(learners).find(|id| overlay.get(&id_key(NODE_PREFIX, **id)).is_none())
            {
                return Err(MetaError::UnknownNode(*unknown));
            }
            let sorted = |ids: &Vec<u64>| {
                let mut ids = ids.clone();
                ids.sort_unstable();
                ids.dedup();
                ids
            };
            entry.voters = sorted(voters);
            entry.learners = sorted(learners).into_iter().filter(|id| !entry.voters.contains(id)).collect();
            overlay.insert(id_key(CLUSTER_PREFIX, *cluster), encode(&entry));
            Ok(MetaOutcome::MembersSet)
        }
        MetaCommand::BeginMove { space, to } => {
            let Some(mut placement) = read_overlay::<S, SpacePlacement>(overlay, &placement_key(space)) else {
                return Err(MetaError::UnknownSpace(space.clone()));
            };
            if overlay.get(&id_key(CLUSTER_PREFIX, *to)).is_none() {
                return Err(MetaError::UnknownCluster(*to));
            }
            match placement.moving_to {
                Some(moving) if moving == *to => return Ok(MetaOutcome::Moving { placement }),
                Some(moving) => return Err(MetaError::AlreadyMoving { space: space.clone(), to: moving }),
                None if placement.cluster == *to => return Ok(MetaOutcome::Moved { placement }),
                None => {}
            }
            placement.moving_to = Some(*to);
            placement.version += 1;
            overlay.insert(placement_key(space), encode(&placement));
            Ok(MetaOutcome::Moving { placement })
        }
        MetaCommand::FinishMove { space, to } => {
            let Some(mut placement) = read_overlay::<S, SpacePlacement>(overlay, &placement_key(space)) else {
                return Err(MetaError::UnknownSpace(space.clone()));
            };
            if placement.cluster == *to && placement.moving_to.is_none() {
                return Ok(MetaOutcome::Moved { placement });
            }
            let (Some(mut from_load), Some(mut to_load)) = (
                read_overlay::<S, ClusterLoad>(overlay, &id_key(LOAD_PREFIX, placement.cluster)),
                read_overlay::<S, ClusterLoad>(overlay, &id_key(LOAD_PREFIX, *to)),
            ) else {
                return Err(MetaError::UnknownCluster(*to));
            };
            from_load.remove(&placement.space);
            to_load.add(&placement.space);
            overlay.insert(id_key(LOAD_PREFIX, placement.cluster), encode(&from_load));
            overlay.insert(id_key(LOAD_PREFIX, *to), encode(&to_load));
            placement.cluster = *to;
            placement.moving_to = None;
            placement.version += 1;
            overlay.insert(placement_key(space), encode(&placement));
            Ok(MetaOutcome::Moved { placement })
        }
        MetaCommand::SetSpaceMembers { space, members, cluster, as_of } => {
            let Some(mut placement) = read_overlay::<S, SpacePlacement>(overlay, &placement_key(space)) else {
                return Err(MetaError::UnknownSpace(space.clone()));
            };
            let as_of_key = name_key(MEMBERS_AS_OF_PREFIX, space);
            let last: Option<(u64, u64)> = read_overlay(overlay, &as_of_key);
            if last.is_some_and(|(last_cluster, last_index)| last_cluster == *cluster && last_index >= *as_of) {
                return Ok(MetaOutcome::SpaceMembersSet { placement });
            }
            overlay.insert(as_of_key, encode(&(*cluster, *as_of)));
            let Some(mut load) = read_overlay::<S, ClusterLoad>(overlay, &id_key(LOAD_PREFIX, placement.cluster))
            else {
                return Err(MetaError::UnknownCluster(placement.cluster));
            };
            load.remove(&placement.space);
            placement.space.members = members.iter().cloned().collect();
            load.add(&placement.space);
            placement.version += 1;
            overlay.insert(id_key(LOAD_PREFIX, placement.cluster), encode(&load));
            overlay.insert(placement_key(space), encode(&placement));
            Ok(MetaOutcome::SpaceMembersSet { placement })
        }
        MetaCommand::DeleteSpace { space } => {
            let Some(placement) = read_overlay::<S, SpacePlacement>(overlay, &placement_key(space)) else {
                let existed = overlay.get(&name_key(DELETED_PREFIX, space)).is_some();
                if !existed {
                    return Err(MetaError::UnknownSpace(space.clone()));
                }
                return Ok(MetaOutcome::SpaceDeleted { existed: false });
            };
            if let Some(mut load) = read_overlay::<S, ClusterLoad>(overlay, &id_key(LOAD_PREFIX, placement.cluster)) {
                load.remove(&placement.space);
                overlay.insert(id_key(LOAD_PREFIX, placement.cluster), encode(&load));
            }
            overlay.remove(placement_key(space));
            overlay.remove(name_key(MEMBERS_AS_OF_PREFIX, space));
            overlay.insert(name_key(DELETED_PREFIX, space), encode(&()));
            Ok(MetaOutcome::SpaceDeleted { existed: true })
        }
    }
}

/// Reads of the applied directory.
pub struct Directory;

impl Directory {
    pub fn node<R: KvRead>(store: &R, id: u64) -> Option<NodeEntry> {
        read(store, &id_key(NODE_PREFIX, id))
    }

    pub fn nodes<R: KvRead>(store: &R) -> Vec<NodeEntry> {
        scan(store, NODE_PREFIX)
    }

    pub fn cluster<R: KvRead>(store: &R, id: u64) -> Option<ClusterEntry> {
        read(store, &id_key(CLUSTER_PREFIX, id))
    }

    pub fn clusters<R: KvRead>(store: &R) -> Vec<ClusterEntry> {
        scan(store, CLUSTER_PREFIX)
    }

    pub fn loads<R: KvRead>(store: &R) -> Vec<ClusterLoad> {
        scan(store, LOAD_PREFIX)
    }

    pub fn placement<R: KvRead>(store: &R, space: &str) -> Option<SpacePlacement> {
        read(store, &placement_key(space))
    }

    pub fn placements<R: KvRead>(store: &R) -> Vec<SpacePlacement> {
        scan(store, PLACEMENT_PREFIX)
    }

    /// Whether a space of this name was deleted.
    pub fn is_deleted<R: KvRead>(store: &R, space: &str) -> bool {
        store.get(&name_key(DELETED_PREFIX, space)).is_some()
    }

    /// The spaces `user` is a member of, by name.
    pub fn spaces_of<R: KvRead>(store: &R, user: &str) -> BTreeSet<String> {
        Self::placements(store)
            .into_iter()
            .filter(|placement| user.is_empty() || placement.space.members.contains(user))
            .map(|placement| placement.space.name)
            .collect()
    }

    /// The voters of `cluster` with their directory entries (a voter the
    /// directory does not know is left out).
    pub fn voters<R: KvRead>(store: &R, cluster: &ClusterEntry) -> BTreeMap<u64, NodeEntry> {
        cluster.voters.iter().filter_map(|id| Some((*id, Self::node(store, *id)?))).collect()
    }
}

/// The voters for a new space cluster, `replicas` of them: first one node
/// per region (regions in the order of their least loaded node), in each the
/// node that holds the fewest cluster replicas, then the lowest id; with
/// fewer regions than `replicas`, the least loaded remaining nodes fill up.
/// Only nodes `alive` says are up are chosen, and never a drained node (a
/// decommissioned node stays drained): it is on its way out.
pub fn choose_voters(
    nodes: &[NodeEntry],
    clusters: &[ClusterEntry],
    replicas: usize,
    alive: impl Fn(u64) -> bool,
) -> Vec<u64> {
    let mut hosted: BTreeMap<u64, usize> = BTreeMap::new();
    for cluster in clusters {
        for voter in &cluster.voters {
            *hosted.entry(*voter).or_default() += 1;
        }
    }
    let mut candidates: Vec<(usize, u64, &str)> = nodes
        .iter()
        .filter(|node| alive(node.id) && !node.drained)
        .map(|node| (hosted.get(&node.id).copied().unwrap_or(0), node.id, node.region.as_str()))
        .collect();
    candidates.sort_unstable();
    let mut regions_used = BTreeSet::new();
    let mut voters = Vec::new();
    for (_, id, region) in &candidates {
        if voters.len() < replicas.max(1) && regions_used.insert(*region) {
            voters.push(*id);
        }
    }
    for (_, id, _) in &candidates {
        if voters.len() < replicas.max(1) && !voters.contains(id) {
            voters.push(*id);
        }
    }
    voters.sort_unstable();
    voters
}

#[cfg(test)]
mod tests {
    use super::*;

    type Store = BTreeMap<Vec<u8>, Vec<u8>>;

    /// Writes straight into the map: a failed command stages nothing.
    struct Direct<'a>(&'a mut Store);

    impl Staging for Direct<'_> {
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.get(key).cloned()
        }

        fn insert(&mut self, key: Vec<u8>, value: Vec<u8>) {
            self.0.insert(key, value);
        }

        fn remove(&mut self, key: Vec<u8>) {
            self.0.remove(&key);
        }
    }

    fn run(store: &mut Store, command: MetaCommand) -> Result<MetaOutcome, MetaError> {
        let mut staged = store.clone();
        let result = apply(&mut Direct(&mut staged), &command);
        if result.is_ok() {
            *store = staged;
        }
        result
    }

    fn node(id: u64, region: &str) -> MetaCommand {
        MetaCommand::RegisterNode(NodeEntry {
            id,
            region: region.into(),
            addr: format!("127.0.0.1:{}", 7000 + id),
            drained: false,
        })
    }

    fn profile(name: &str, org: &str, members: &[&str]) -> SpaceProfile {
        SpaceProfile {
            name: name.into(),
            org: Some(org.into()),
            members: members.iter().map(|m| m.to_string()).collect(),
            activity_per_min: 0.0,
        }
    }

    #[test]
    fn clusters_get_increasing_ids_and_the_bootstrap_cluster_is_made_once() {
        let mut store = Store::new();
        for (id, region) in [(1, "a"), (2, "b"), (3, "c")] {
            run(&mut store, node(id, region)).unwrap();
        }
        let first =
            MetaCommand::CreateCluster { voters: vec![3, 1, 2], preferred_region: "a".into(), only_if_none: true };
        assert_eq!(run(&mut store, first.clone()).unwrap(), MetaOutcome::ClusterCreated { id: 1, created: true });
        assert_eq!(run(&mut store, first).unwrap(), MetaOutcome::ClusterCreated { id: 1, created: false });
        let second =
            MetaCommand::CreateCluster { voters: vec![2], preferred_region: String::new(), only_if_none: false };
        assert_eq!(run(&mut store, second).unwrap(), MetaOutcome::ClusterCreated { id: 2, created: true });
        assert_eq!(Directory::cluster(&store, 1).unwrap().voters, vec![1, 2, 3]);
        assert_eq!(Directory::clusters(&store).len(), 2);
        assert_eq!(Directory::nodes(&store).len(), 3);
    }

    #[test]
    fn unknown_voters_and_clusters_are_refused_and_change_nothing() {
        let mut store = Store::new();
        run(&mut store, node(1, "a")).unwrap();
        let before = store.clone();
        let bad =
            MetaCommand::CreateCluster { voters: vec![1, 9], preferred_region: String::new(), only_if_none: false };
        assert_eq!(run(&mut store, bad), Err(MetaError::UnknownNode(9)));
        let place = MetaCommand::PlaceSpace {
            space: profile("x", "o", &["u"]),
            attrs: BTreeMap::new(),
            cluster: 4,
            reason: Reason::LeastLoaded,
        };
        assert_eq!(run(&mut store, place), Err(MetaError::UnknownCluster(4)));
        assert_eq!(store, before);
    }

    #[test]
    fn a_placement_is_kept_and_counted_once() {
        let mut store = Store::new();
        run(&mut store, node(1, "a")).unwrap();
        run(
            &mut store,
            MetaCommand::CreateCluster { voters: vec![1], preferred_region: String::new(), only_if_none: false },
        )
        .unwrap();
        let place = MetaCommand::PlaceSpace {
            space: profile("x", "o", &["u", "v"]),
            attrs: BTreeMap::new(),
            cluster: 1,
            reason: Reason::LeastLoaded,
        };
        let MetaOutcome::SpacePlaced { placement, existed: false } = run(&mut store, place.clone()).unwrap() else {
            panic!("first placement")
        };
        assert_eq!((placement.cluster, placement.version), (1, 1));
        let MetaOutcome::SpacePlaced { existed: true, .. } = run(&mut store, place).unwrap() else { panic!("retry") };
        let load = &Directory::loads(&store)[0];
        assert_eq!((load.spaces, load.orgs["o"], load.members["u"]), (1, 1, 1));
        assert_eq!(Directory::spaces_of(&store, "v").into_iter().collect::<Vec<_>>(), vec!["x".to_string()]);
        assert!(Directory::spaces_of(&store, "w").is_empty());
    }

    #[test]
    fn members_follow_the_space_and_a_deleted_name_is_never_placed_again() {
        let mut store = Store::new();
        run(&mut store, node(1, "a")).unwrap();
        let create =
            MetaCommand::CreateCluster { voters: vec![1], preferred_region: String::new(), only_if_none: false };
        run(&mut store, create).unwrap();
        let place = MetaCommand::PlaceSpace {
            space: profile("x", "o", &["u"]),
            attrs: BTreeMap::new(),
            cluster: 1,
            reason: Reason::LeastLoaded,
        };
        run(&mut store, place.clone()).unwrap();
        let set = |members: &[&str], as_of| MetaCommand::SetSpaceMembers {
            space: "x".into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            cluster: 1,
            as_of,
        };
        let MetaOutcome::SpaceMembersSet { placement } = run(&mut store, set(&["u", "v"], 7)).unwrap() else {
            panic!("set")
        };
        assert_eq!(placement.version, 2);
        let MetaOutcome::SpaceMembersSet { placement } = run(&mut store, set(&["u"], 5)).unwrap() else {
            panic!("set")
        };
        assert_eq!(placement.version, 2, "an older report changes nothing");
        assert!(Directory::spaces_of(&store, "v").contains("x"));
        assert_eq!(Directory::loads(&store)[0].members.get("v"), Some(&1));

        let delete = MetaCommand::DeleteSpace { space: "x".into() };
        assert_eq!(run(&mut store, delete.clone()), Ok(MetaOutcome::SpaceDeleted { existed: true }));
        assert_eq!(run(&mut store, delete), Ok(MetaOutcome::SpaceDeleted { existed: false }), "idempotent");
        assert!(Directory::placement(&store, "x").is_none() && Directory::is_deleted(&store, "x"));
        let load = &Directory::loads(&store)[0];
        assert!(load.spaces == 0 && load.members.is_empty() && load.orgs.is_empty());
        let before = store.clone();
        assert_eq!(run(&mut store, place), Err(MetaError::Deleted("x".into())));
        let unknown = MetaCommand::DeleteSpace { space: "never".into() };
        assert_eq!(run(&mut store, unknown), Err(MetaError::UnknownSpace("never".into())));
        assert_eq!(store, before, "refusals change nothing");
    }

    #[test]
    fn a_move_bumps_the_version_and_moves_the_load() {
        let mut store = Store::new();
        run(&mut store, node(1, "a")).unwrap();
        for _ in 0..2 {
            let create =
                MetaCommand::CreateCluster { voters: vec![1], preferred_region: String::new(), only_if_none: false };
            run(&mut store, create).unwrap();
        }
        let place = MetaCommand::PlaceSpace {
            space: profile("x", "o", &["u"]),
            attrs: BTreeMap::new(),
            cluster: 1,
            reason: Reason::LeastLoaded,
        };
        run(&mut store, place).unwrap();
        let begin = MetaCommand::BeginMove { space: "x".into(), to: 2 };
        let MetaOutcome::Moving { placement } = run(&mut store, begin.clone()).unwrap() else { panic!("moving") };
        assert_eq!((placement.cluster, placement.moving_to, placement.version), (1, Some(2), 2));
        assert!(matches!(run(&mut store, begin).unwrap(), MetaOutcome::Moving { .. }), "begin is idempotent");
        let other = MetaCommand::BeginMove { space: "x".into(), to: 1 };
        assert_eq!(run(&mut store, other), Err(MetaError::AlreadyMoving { space: "x".into(), to: 2 }));
        let finish = MetaCommand::FinishMove { space: "x".into(), to: 2 };
        let MetaOutcome::Moved { placement } = run(&mut store, finish.clone()).unwrap() else { panic!("moved") };
        assert_eq!((placement.cluster, placement.moving_to, placement.version), (2, None, 3));
        assert!(matches!(run(&mut store, finish).unwrap(), MetaOutcome::Moved { .. }), "finish is idempotent");
        let loads = Directory::loads(&store);
        assert_eq!((loads[0].spaces, loads[1].spaces), (0, 1));
        assert!(loads[0].members.is_empty() && loads[0].orgs.is_empty());
    }

    #[test]
    fn voters_spread_over_regions_and_avoid_loaded_and_dead_nodes() {
        let nodes: Vec<NodeEntry> = [(1, "a"), (2, "a"), (3, "b"), (4, "c"), (5, "c")]
            .iter()
            .map(|(id, region)| NodeEntry { id: *id, region: region.to_string(), addr: String::new(), drained: false })
            .collect();
        let clusters =
            vec![ClusterEntry { id: 1, voters: vec![1, 3, 4], learners: Vec::new(), preferred_region: String::new() }];
        assert_eq!(choose_voters(&nodes, &clusters, 3, |_| true), vec![2, 3, 5]);
        // Region b is down: a second node of another region fills in.
        assert_eq!(choose_voters(&nodes, &clusters, 3, |id| id != 3), vec![1, 2, 5]);
        assert_eq!(choose_voters(&nodes, &clusters, 1, |_| true).len(), 1);
        // Node 3 drained (or decommissioned): never a voter of a new cluster.
        let mut drained = nodes.clone();
        drained[2].drained = true;
        assert_eq!(choose_voters(&drained, &clusters, 3, |_| true), vec![1, 2, 5]);
    }
}
