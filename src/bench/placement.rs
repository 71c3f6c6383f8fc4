//! `spaceraft bench placement`: what placing spaces by their attributes buys
//! over hashing their names, on a generated platform of orgs, users and
//! spaces. No cluster is started: both placements run the same workload, and
//! the report counts what each costs its users and gateways.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::placement::{place, ClusterLoad, Placement, PlacementConfig, SpaceProfile};

#[derive(clap::Args, Debug, Clone)]
pub struct PlacementBenchArgs {
    /// Organisations on the platform.
    #[arg(long, default_value_t = 200)]
    pub orgs: usize,
    /// Users per org, at most (sizes are skewed: few large orgs, many small).
    #[arg(long, default_value_t = 400)]
    pub users_per_org_max: usize,
    /// Regions, one gateway each; an org's users mostly live in one.
    #[arg(long, default_value_t = 3)]
    pub regions: usize,
    /// Spaces per cluster at most.
    #[arg(long, default_value_t = 500)]
    pub spaces_per_cluster_max: u64,
    /// Member overlap that places spaces together, in percent.
    #[arg(long, default_value_t = 50)]
    pub overlap_percent: u32,
    /// How full (percent) a cluster may be and still take a space with no
    /// affinity to it.
    #[arg(long, default_value_t = PlacementConfig::default().new_affinity_fill)]
    pub new_affinity_fill: u32,
    /// Seed of the generated platform: the same seed, the same platform.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One placement's cost.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementCost {
    pub clusters: usize,
    pub spaces_per_cluster_max: u64,
    /// Distinct clusters a user's spaces are on.
    pub clusters_per_user_mean: f64,
    pub clusters_per_user_p50: u64,
    pub clusters_per_user_p99: u64,
    /// Distinct clusters a gateway must follow to serve its region's users.
    pub upstreams_per_gateway_mean: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementReport {
    pub orgs: usize,
    pub users: usize,
    pub spaces: usize,
    pub attribute: PlacementCost,
    pub hash: PlacementCost,
}

struct Platform {
    spaces: Vec<SpaceProfile>,
    home_region: BTreeMap<String, usize>,
    users: usize,
}

/// Orgs of skewed sizes, each mostly in one region; its users join
/// channels of the org, direct messages with colleagues, and a few shared
/// channels with other orgs.
fn generate(args: &PlacementBenchArgs) -> Platform {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut spaces = Vec::new();
    let mut home_region = BTreeMap::new();
    let mut all_users: Vec<String> = Vec::new();
    for org in 0..args.orgs {
        let org_name = format!("org{org}");
        let size = (args.users_per_org_max as f64 / (1.0 + org as f64 * 0.2)).ceil().max(3.0) as usize;
        let region = rng.random_range(0..args.regions.max(1));
        let users: Vec<String> = (0..size).map(|user| format!("{org_name}-u{user}")).collect();
        for user in &users {
            let region = if rng.random_bool(0.9) { region } else { rng.random_range(0..args.regions.max(1)) };
            home_region.insert(user.clone(), region);
        }
        let channels = (size / 5).max(1);
        for channel in 0..channels {
            let want = rng.random_range(2..=size.min(40));
            let members: BTreeSet<String> = users.choose_multiple(&mut rng, want).cloned().collect();
            spaces.push(SpaceProfile {
                name: format!("{org_name}-c{channel}"),
                org: Some(org_name.clone()),
                members,
                activity_per_min: rng.random_range(0.0..50.0f64).powi(2) / 10.0,
            });
        }
        for dm in 0..size / 2 {
            let members: BTreeSet<String> = users.choose_multiple(&mut rng, 2).cloned().collect();
            spaces.push(SpaceProfile {
                name: format!("{org_name}-dm{dm}"),
                org: Some(org_name.clone()),
                members,
                activity_per_min: rng.random_range(0.0..2.0),
            });
        }
        all_users.extend(users);
    }
    for shared in 0..args.orgs / 4 {
        let members: BTreeSet<String> = all_users.choose_multiple(&mut rng, 20).cloned().collect();
        spaces.push(SpaceProfile {
            name: format!("shared{shared}"),
            org: None,
            members,
            activity_per_min: rng.random_range(0.0..20.0),
        });
    }
    // Spaces are created over time, not org by org.
    spaces.sort_by_key(|space| {
        let mut hasher = std::hash::DefaultHasher::new();
        (args.seed, &space.name).hash(&mut hasher);
        hasher.finish()
    });
    Platform { spaces, home_region, users: all_users.len() }
}

fn cost(platform: &Platform, cluster_of: &BTreeMap<String, u64>, regions: usize) -> PlacementCost {
    let mut per_user: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut per_gateway: Vec<BTreeSet<u64>> = vec![BTreeSet::new(); regions.max(1)];
    let mut per_cluster: BTreeMap<u64, u64> = BTreeMap::new();
    for space in &platform.spaces {
        let cluster = cluster_of[&space.name];
        *per_cluster.entry(cluster).or_default() += 1;
        for member in &space.members {
            per_user.entry(member).or_default().insert(cluster);
            per_gateway[platform.home_region[member]].insert(cluster);
        }
    }
    let mut counts: Vec<u64> = per_user.values().map(|clusters| clusters.len() as u64).collect();
    counts.sort_unstable();
    let at = |q: f64| counts.get(((counts.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0);
    PlacementCost {
        clusters: per_cluster.len(),
        spaces_per_cluster_max: per_cluster.values().copied().max().unwrap_or(0),
        clusters_per_user_mean: counts.iter().sum::<u64>() as f64 / counts.len().max(1) as f64,
        clusters_per_user_p50: at(0.5),
        clusters_per_user_p99: at(0.99),
        upstreams_per_gateway_mean: per_gateway.iter().map(|clusters| clusters.len()).sum::<usize>() as f64
            / per_gateway.len() as f64,
    }
}

/// Places the generated platform both ways and counts the cost of each.
pub fn placement(args: &PlacementBenchArgs) -> PlacementReport {
    let platform = generate(args);
    let config = PlacementConfig {
        overlap: crate::placement::OverlapThreshold::Percent(args.overlap_percent),
        spaces_max: args.spaces_per_cluster_max,
        new_affinity_fill: args.new_affinity_fill,
        ..PlacementConfig::default()
    };
    let mut clusters: Vec<ClusterLoad> = Vec::new();
    let mut by_attributes = BTreeMap::new();
    for space in &platform.spaces {
        let id = match place(space, &clusters, &config) {
            Placement::Existing { cluster, .. } => cluster,
            Placement::NewCluster { .. } => {
                clusters.push(ClusterLoad::new(clusters.len() as u64 + 1));
                clusters.len() as u64
            }
        };
        clusters[(id - 1) as usize].add(space);
        by_attributes.insert(space.name.clone(), id);
    }
    // The same number of clusters, chosen by a hash of the name.
    let count = clusters.len().max(1) as u64;
    let by_hash: BTreeMap<String, u64> = platform
        .spaces
        .iter()
        .map(|space| {
            let mut hasher = std::hash::DefaultHasher::new();
            space.name.hash(&mut hasher);
            (space.name.clone(), hasher.finish() % count + 1)
        })
        .collect();
    PlacementReport {
        orgs: args.orgs,
        users: platform.users,
        spaces: platform.spaces.len(),
        attribute: cost(&platform, &by_attributes, args.regions),
        hash: cost(&platform, &by_hash, args.regions),
    }
}

pub fn print_placement_report(report: &PlacementReport) {
    println!("{} orgs, {} users, {} spaces", report.orgs, report.users, report.spaces);
    println!("{:<34} {:>12} {:>12} {:>8}", "", "attributes", "name hash", "ratio");
    let rows: [(&str, f64, f64); 6] = [
        ("clusters", report.attribute.clusters as f64, report.hash.clusters as f64),
        (
            "spaces on the fullest cluster",
            report.attribute.spaces_per_cluster_max as f64,
            report.hash.spaces_per_cluster_max as f64,
        ),
        ("clusters per user, mean", report.attribute.clusters_per_user_mean, report.hash.clusters_per_user_mean),
        (
            "clusters per user, p50",
            report.attribute.clusters_per_user_p50 as f64,
            report.hash.clusters_per_user_p50 as f64,
        ),
        (
            "clusters per user, p99",
            report.attribute.clusters_per_user_p99 as f64,
            report.hash.clusters_per_user_p99 as f64,
        ),
        (
            "upstreams per gateway, mean",
            report.attribute.upstreams_per_gateway_mean,
            report.hash.upstreams_per_gateway_mean,
        ),
    ];
    for (name, attribute, hash) in rows {
        let ratio = if attribute > 0.0 { format!("{:.1}x", hash / attribute) } else { "-".into() };
        println!("{name:<34} {attribute:>12.1} {hash:>12.1} {ratio:>8}");
    }
}
