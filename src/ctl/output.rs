//! spacectl's output: tables for people, JSON (snake_case, stable keys) for
//! programs. History and tail print one JSON object per line.
//!
//! Everything goes through [`write_stdout`]: a reader that goes away early
//! (`spacectl … | head`) ends spacectl quietly with exit 0.

use serde_json::json;
use tabled::builder::Builder;
use tabled::settings::Style;

use super::human;
use super::Format;
use crate::pb;

/// `println!` through [`write_stdout`].
macro_rules! emit {
    ($($arg:tt)*) => {
        write_stdout(format!("{}\n", format_args!($($arg)*)).as_bytes())
    };
}

/// Writes to stdout and flushes. When the reader has gone (a closed pipe,
/// as after `| head`), spacectl ends at once with exit 0: the reader has
/// what it wanted, and nothing else is left to do with the output.
pub fn write_stdout(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            std::process::exit(1)
        }
    }
}

pub struct Output {
    format: Format,
}

/// A monitoring check's outcome.
pub struct Check {
    /// Nagios: 0 ok, 1 warning, 2 critical, 3 unknown.
    pub code: u8,
    pub summary: String,
    pub clusters: Vec<ClusterHealth>,
    pub regions_up: usize,
    /// Per cluster: entries the furthest replica trails its leader's commit.
    pub lag: std::collections::BTreeMap<u64, u64>,
}

pub fn unknown_check(why: &str) -> Check {
    Check {
        code: 3,
        summary: format!("no answer: {why}"),
        clusters: Vec::new(),
        regions_up: 0,
        lag: Default::default(),
    }
}

pub fn check_cluster(
    replicas: &[pb::ReplicaStatus],
    expect_regions: usize,
    lag_warning: u64,
    lag_critical: u64,
) -> Check {
    let clusters = health(replicas);
    let regions_up = replicas
        .iter()
        .filter(|r| r.role != "unreachable")
        .map(|r| r.region.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let mut lag = std::collections::BTreeMap::new();
    for cluster in &clusters {
        let rows: Vec<&pb::ReplicaStatus> =
            replicas.iter().filter(|r| r.cluster_id == cluster.cluster_id && r.role != "unreachable").collect();
        let commit = rows.iter().find(|r| r.role == "leader").map(|r| r.commit_index).unwrap_or(0);
        let behind = rows.iter().map(|r| commit.saturating_sub(r.applied_index)).max().unwrap_or(0);
        lag.insert(cluster.cluster_id, behind);
    }
    let unhealthy = clusters.iter().filter(|c| !c.healthy).count();
    let unreachable = replicas.iter().filter(|r| !answers_as_voter(r)).count();
    let max_lag = lag.values().copied().max().unwrap_or(0);
    let code = if unhealthy > 0 || regions_up < expect_regions || max_lag >= lag_critical {
        2
    } else if unreachable > 0 || max_lag >= lag_warning {
        1
    } else {
        0
    };
    let summary = format!(
        "{}, {unhealthy} without a leader or majority, {} answering (expected {expect_regions}), {} unreachable, max lag {max_lag}",
        human::count(clusters.len() as u64, "cluster"),
        human::count(regions_up as u64, "region"),
        human::count(unreachable as u64, "replica"),
    );
    Check { code, summary, clusters, regions_up, lag }
}

pub fn print_check(check: &Check, format: super::CheckFormat) {
    let label = ["OK", "WARNING", "CRITICAL", "UNKNOWN"][check.code.min(3) as usize];
    let max_lag = check.lag.values().copied().max().unwrap_or(0);
    let unhealthy = check.clusters.iter().filter(|c| !c.healthy).count();
    match format {
        super::CheckFormat::Nagios => emit!(
            "SPACERAFT {label} - {} | clusters={} unhealthy={unhealthy} regions={} max_lag={max_lag}",
            check.summary,
            check.clusters.len(),
            check.regions_up
        ),
        super::CheckFormat::Json => emit!(
            "{}",
            json!({
                "status": label.to_lowercase(),
                "code": check.code,
                "summary": check.summary,
                "regions_up": check.regions_up,
                "clusters": check.clusters.iter().map(|c| json!({
                    "cluster_id": c.cluster_id,
                    "healthy": c.healthy,
                    "leader_id": c.leader_id,
                    "lag": check.lag.get(&c.cluster_id).copied().unwrap_or(0),
                })).collect::<Vec<_>>(),
            })
        ),
        super::CheckFormat::Prometheus => {
            emit!("# HELP spaceraft_check_status 0 ok, 1 warning, 2 critical, 3 unknown.");
            emit!("# TYPE spaceraft_check_status gauge");
            emit!("spaceraft_check_status {}", check.code);
            emit!("# TYPE spaceraft_regions_up gauge");
            emit!("spaceraft_regions_up {}", check.regions_up);
            emit!("# TYPE spaceraft_cluster_healthy gauge");
            for c in &check.clusters {
                emit!("spaceraft_cluster_healthy{{cluster=\"{}\"}} {}", c.cluster_id, u8::from(c.healthy));
            }
            emit!("# TYPE spaceraft_cluster_lag_entries gauge");
            for (cluster, behind) in &check.lag {
                emit!("spaceraft_cluster_lag_entries{{cluster=\"{cluster}\"}} {behind}");
            }
        }
    }
}

/// One cluster's health, from the replicas' status.
pub struct ClusterHealth {
    pub cluster_id: u64,
    pub healthy: bool,
    pub leader_id: Option<u64>,
    pub replicas: usize,
    pub answering: usize,
}

/// Whether a replica row answers and may vote: not unreachable, not a
/// configured voter without a replica (`missing`), not a replica whose node
/// lost its data and is not re-admitted yet (`needs-rejoin`), not one whose
/// Raft stopped on a storage failure (`storage-failed`).
pub fn answers_as_voter(replica: &pb::ReplicaStatus) -> bool {
    !matches!(replica.role.as_str(), "unreachable" | "missing" | "needs-rejoin" | "storage-failed")
}

/// Per cluster: a leader that answers as leader, and a majority of its
/// replicas answering.
pub fn health(replicas: &[pb::ReplicaStatus]) -> Vec<ClusterHealth> {
    let mut clusters: std::collections::BTreeMap<u64, Vec<&pb::ReplicaStatus>> = std::collections::BTreeMap::new();
    for replica in replicas {
        clusters.entry(replica.cluster_id).or_default().push(replica);
    }
    clusters
        .into_iter()
        .map(|(cluster_id, rows)| {
            // A voter with no replica (`missing`) or one that lost its data
            // (`needs-rejoin`) counts, as not answering.
            let answering = rows.iter().filter(|r| answers_as_voter(r)).count();
            let leader_id = rows.iter().find(|r| r.role == "leader").map(|r| r.node_id);
            ClusterHealth {
                cluster_id,
                healthy: leader_id.is_some() && answering * 2 > rows.len(),
                leader_id,
                replicas: rows.len(),
                answering,
            }
        })
        .collect()
}

fn message_json(message: &pb::Message) -> serde_json::Value {
    json!({
        "space": message.space,
        "seq": message.seq,
        "author": message.author,
        "body": message.body,
        "key": message.idempotency_key,
        "log_index": message.log_index,
    })
}

fn space_json(space: &pb::SpaceInfo) -> serde_json::Value {
    let attrs: std::collections::BTreeMap<_, _> = space.attrs.iter().collect();
    json!({
        "name": space.name,
        "members": space.members,
        "attrs": attrs,
        "cluster_id": space.cluster_id,
        "first_seq": space.first_seq,
        "last_seq": space.last_seq,
    })
}

/// "1.2s ago"-style age of a replica's last contact.
fn last_seen(ms: Option<u64>) -> String {
    match ms {
        None => "-".into(),
        Some(0) => "now".into(),
        Some(ms) if ms < 10_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{}s ago", ms / 1000),
    }
}

impl Output {
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    pub fn posted(&self, response: &pb::PostResponse) {
        match self.format {
            Format::Json => {
                emit!("{}", json!({"space": response.space, "seq": response.seq, "duplicate": response.duplicate}))
            }
            Format::Table if response.duplicate => {
                emit!("{} (already posted: the key had committed before)", response.seq)
            }
            Format::Table => emit!("{}", response.seq),
        }
    }

    pub fn message(&self, message: &pb::Message) {
        match self.format {
            Format::Json => emit!("{}", message_json(message)),
            Format::Table => emit!("{}\t{}\t{}", message.seq, message.author, message.body),
        }
    }

    pub fn messages(&self, messages: &[pb::Message]) {
        match self.format {
            Format::Json => messages.iter().for_each(|m| self.message(m)),
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record(["SEQ", "AUTHOR", "BODY"]);
                for message in messages {
                    builder.push_record([message.seq.to_string(), message.author.clone(), message.body.clone()]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn space_created(&self, response: &pb::CreateSpaceResponse) {
        let Some(space) = &response.space else { return };
        match self.format {
            Format::Json => {
                let mut value = space_json(space);
                value["existed"] = json!(response.existed);
                emit!("{value}");
            }
            Format::Table if response.existed => emit!("space {} already exists (unchanged)", space.name),
            Format::Table => {
                emit!("created space {} with {}", space.name, human::count(space.members.len() as u64, "member"))
            }
        }
    }

    /// A space, with its placement when given.
    pub fn space_info(&self, space: &pb::SpaceInfo, placement: Option<&pb::DirectoryPlacement>) {
        match self.format {
            Format::Json => {
                let mut value = space_json(space);
                if let Some(placement) = placement {
                    let reason: serde_json::Value =
                        serde_json::from_str(&placement.reason).unwrap_or_else(|_| json!(placement.reason));
                    value["placement"] = json!({
                        "cluster_id": placement.cluster_id,
                        "version": placement.version,
                        "reason": reason,
                        "moving_to": if placement.moving_to == 0 { serde_json::Value::Null } else { json!(placement.moving_to) },
                    });
                }
                emit!("{value}");
            }
            Format::Table => {
                let attrs: std::collections::BTreeMap<_, _> = space.attrs.iter().collect();
                let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                emit!("name:       {}", space.name);
                emit!("members:    {}", space.members.join(", "));
                emit!("attrs:      {}", if attrs.is_empty() { "none".to_string() } else { attrs.join(" ") });
                emit!("cluster:    {}", space.cluster_id);
                emit!("seqs:       {}", human::seq_range(space.first_seq, space.last_seq));
                if let Some(placement) = placement {
                    emit!("placement:  version {}, {}", placement.version, human::placement_reason(&placement.reason));
                    if placement.moving_to != 0 {
                        emit!("moving to:  space cluster {}", placement.moving_to);
                    }
                }
            }
        }
    }

    pub fn space_deleted(&self, deleted: &pb::DeleteSpaceResponse) {
        match self.format {
            Format::Json => {
                emit!("{}", json!({"space": deleted.space, "existed": deleted.existed, "last_seq": deleted.last_seq}))
            }
            Format::Table if deleted.existed => {
                emit!("deleted space {} (its last seq was {})", deleted.space, deleted.last_seq)
            }
            Format::Table => emit!("space {} was deleted before", deleted.space),
        }
    }

    pub fn space_list(&self, spaces: &[pb::SpaceInfo]) {
        match self.format {
            Format::Json => {
                emit!("{}", serde_json::Value::Array(spaces.iter().map(space_json).collect()))
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record(["NAME", "CLUSTER", "MEMBERS", "SEQS"]);
                for space in spaces {
                    builder.push_record([
                        space.name.clone(),
                        space.cluster_id.to_string(),
                        space.members.len().to_string(),
                        human::seq_range(space.first_seq, space.last_seq),
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn cluster_info(&self, cluster: &pb::DirectoryCluster, replicas: &[pb::ReplicaStatus]) {
        let rows: Vec<&pb::ReplicaStatus> = replicas.iter().filter(|r| r.cluster_id == cluster.cluster_id).collect();
        let commit = rows.iter().find(|r| r.role == "leader").map(|r| r.commit_index).unwrap_or(0);
        let lag = |r: &pb::ReplicaStatus| (r.role != "unreachable").then(|| commit.saturating_sub(r.applied_index));
        match self.format {
            Format::Json => emit!(
                "{}",
                json!({
                    "cluster_id": cluster.cluster_id,
                    "voters": cluster.voters,
                    "learners": cluster.learners,
                    "preferred_region": if cluster.preferred_region.is_empty() { serde_json::Value::Null } else { json!(cluster.preferred_region) },
                    "spaces": cluster.spaces,
                    "replicas": rows.iter().map(|r| json!({
                        "node_id": r.node_id,
                        "region": r.region,
                        "role": r.role,
                        "term": r.term,
                        "commit_index": r.commit_index,
                        "applied_index": r.applied_index,
                        "lag": lag(r),
                        "last_seen_ms": r.last_seen_ms,
                        "error": if r.error.is_empty() { serde_json::Value::Null } else { json!(r.error) },
                    })).collect::<Vec<_>>(),
                })
            ),
            Format::Table => {
                let preferred =
                    if cluster.preferred_region.is_empty() { "-" } else { cluster.preferred_region.as_str() };
                emit!(
                    "space cluster {}: {}, preferred leader region {preferred}",
                    cluster.cluster_id,
                    human::count(cluster.spaces, "space")
                );
                let mut builder = Builder::default();
                builder.push_record(["NODE", "REGION", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LAST SEEN"]);
                let mut sorted = rows.clone();
                sorted.sort_by(|a, b| (&a.region, a.node_id).cmp(&(&b.region, b.node_id)));
                for r in sorted {
                    let role = if r.role == "leader" { "leader *".to_string() } else { r.role.clone() };
                    builder.push_record([
                        r.node_id.to_string(),
                        r.region.clone(),
                        role,
                        r.term.to_string(),
                        r.commit_index.to_string(),
                        r.applied_index.to_string(),
                        lag(r).map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
                        last_seen(r.last_seen_ms),
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn snapshot_saved(&self, file: &std::path::Path, summary: &super::snapshot::SnapshotSummary, node_id: u64) {
        match self.format {
            Format::Json => {
                let mut value = json!(summary);
                value["file"] = json!(file.display().to_string());
                value["node_id"] = json!(node_id);
                emit!("{value}");
            }
            Format::Table => {
                emit!(
                    "saved a snapshot of cluster {} at log index {} (built by node {node_id}) to {}",
                    summary.cluster_id,
                    summary.last_log_index,
                    file.display()
                );
                self.snapshot_status(file, summary);
            }
        }
    }

    pub fn snapshot_status(&self, file: &std::path::Path, summary: &super::snapshot::SnapshotSummary) {
        match self.format {
            Format::Json => {
                let mut value = json!(summary);
                value["file"] = json!(file.display().to_string());
                emit!("{value}");
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder
                    .push_record(["CLUSTER", "INDEX", "TERM", "VOTERS", "KEYS", "SPACES", "MESSAGES", "SIZE", "CRC32"]);
                builder.push_record([
                    summary.cluster_id.to_string(),
                    summary.last_log_index.to_string(),
                    summary.last_log_term.to_string(),
                    human::ids(&summary.voters),
                    summary.keys.to_string(),
                    summary.spaces.to_string(),
                    summary.messages.to_string(),
                    indicatif::HumanBytes(summary.size_bytes).to_string(),
                    summary.crc32.clone(),
                ]);
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    /// One row per gateway.
    pub fn gateway_list(&self, gateways: &[pb::GatewayInfo]) {
        let reports = gateways.iter().filter_map(|g| Some((g, g.report.as_ref()?)));
        match self.format {
            Format::Json => {
                let rows: Vec<serde_json::Value> = reports
                    .map(|(info, r)| {
                        json!({
                            "gateway_id": r.gateway_id,
                            "region": r.region,
                            "http_addr": r.http_addr,
                            "grpc_addr": r.grpc_addr,
                            "version": r.version,
                            "uptime_ms": r.uptime_ms,
                            "clients": r.clients,
                            "feeds": r.feeds,
                            "subscriptions": r.subscriptions,
                            "upstreams": r.upstreams.iter().map(|u| json!({
                                "node": u.node,
                                "region": u.region,
                                "connected": u.connected,
                                "applied_index": u.applied_index,
                                "lag": u.lag,
                                "switches": u.switches,
                                "last_switch_reason": if u.last_switch_reason.is_empty() { serde_json::Value::Null } else { json!(u.last_switch_reason) },
                            })).collect::<Vec<_>>(),
                            "reported_to": info.node_id,
                            "last_report_ms": info.last_report_ms,
                        })
                    })
                    .collect();
                emit!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record([
                    "GATEWAY",
                    "REGION",
                    "CLIENTS",
                    "SUBSCRIPTIONS",
                    "SPACES",
                    "UPSTREAM",
                    "LAG",
                    "LAST REPORT",
                ]);
                for (info, r) in reports {
                    let upstream: Vec<String> = r
                        .upstreams
                        .iter()
                        .map(|u| if u.connected { u.node.clone() } else { format!("{} (connecting)", u.node) })
                        .collect();
                    let lag: Vec<String> = r.upstreams.iter().map(|u| u.lag.to_string()).collect();
                    builder.push_record([
                        r.gateway_id.clone(),
                        r.region.clone(),
                        r.clients.to_string(),
                        r.subscriptions.to_string(),
                        r.feeds.to_string(),
                        upstream.join(", "),
                        lag.join(", "),
                        last_seen(Some(info.last_report_ms.max(1))),
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    /// One row per node.
    /// A minted user token: the token alone in a table (for `$(...)`).
    pub fn token(&self, user: &str, token: &str, ttl: std::time::Duration) {
        match self.format {
            Format::Json => emit!("{}", json!({ "user": user, "token": token, "ttl_secs": ttl.as_secs() })),
            Format::Table => emit!("{token}"),
        }
    }

    /// A minted join token: shown once.
    pub fn join_token(&self, reply: &pb::JoinTokenReply) {
        match self.format {
            Format::Json => emit!("{}", json!({ "token": reply.token, "expires_unix_ms": reply.expires_unix_ms })),
            Format::Table => emit!("{}", reply.token),
        }
    }

    pub fn node_status(&self, nodes: &[pb::NodeSummary]) {
        let insecure: Vec<u64> = nodes.iter().filter(|n| n.insecure).map(|n| n.node_id).collect();
        if !insecure.is_empty() {
            eprintln!(
                "warning: security is off (--insecure) on {}: plaintext, no authentication",
                human::nodes(&insecure)
            );
        }
        match self.format {
            Format::Json => {
                let rows: Vec<serde_json::Value> = nodes
                    .iter()
                    .map(|n| {
                        let roles: std::collections::BTreeMap<_, _> = n.roles.iter().collect();
                        json!({
                            "node_id": n.node_id,
                            "region": n.region,
                            "address": n.grpc_addr,
                            "health": n.health,
                            "version": if n.version.is_empty() { serde_json::Value::Null } else { json!(n.version) },
                            "uptime_ms": n.uptime_ms,
                            "groups": n.groups,
                            "groups_led": n.groups_led,
                            "roles": roles,
                            "db_size_bytes": n.db_size_bytes,
                            "drained": n.drained,
                            "insecure": n.insecure,
                            "errors": n.errors,
                        })
                    })
                    .collect();
                emit!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record([
                    "NODE", "REGION", "ADDRESS", "HEALTH", "ROLES", "GROUPS", "LED", "DB SIZE", "UPTIME", "ERRORS",
                ]);
                for n in nodes {
                    let roles: std::collections::BTreeMap<_, _> = n.roles.iter().collect();
                    let roles: Vec<String> =
                        roles.iter().map(|(role, count)| human::role_count(role, u64::from(**count))).collect();
                    let health = if n.drained { format!("{} (drained)", n.health) } else { n.health.clone() };
                    let reachable = n.health != "unreachable";
                    let errors = match n.errors.len() {
                        0 => String::new(),
                        1 => n.errors[0].clone(),
                        more => format!("{} (+{} more)", n.errors[0], more - 1),
                    };
                    builder.push_record([
                        n.node_id.to_string(),
                        n.region.clone(),
                        n.grpc_addr.clone(),
                        health,
                        if reachable { roles.join(", ") } else { "-".into() },
                        if reachable { n.groups.to_string() } else { "-".into() },
                        if reachable { n.groups_led.to_string() } else { "-".into() },
                        if reachable { indicatif::HumanBytes(n.db_size_bytes).to_string() } else { "-".into() },
                        if reachable {
                            indicatif::HumanDuration(std::time::Duration::from_millis(n.uptime_ms)).to_string()
                        } else {
                            "-".into()
                        },
                        errors,
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    /// A spinner on stderr for a long operation, when stderr is a terminal.
    pub fn spinner(&self, message: String) -> indicatif::ProgressBar {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return indicatif::ProgressBar::hidden();
        }
        let spinner = indicatif::ProgressBar::new_spinner().with_message(message);
        spinner.enable_steady_tick(std::time::Duration::from_millis(100));
        spinner
    }

    pub fn space_moved(&self, space: &str, moved: &pb::MoveSpaceResponse) {
        match self.format {
            Format::Json => emit!(
                "{}",
                json!({
                    "space": space,
                    "from_cluster": moved.from_cluster,
                    "to_cluster": moved.to_cluster,
                    "sealed_seq": moved.sealed_seq,
                    "messages_copied": moved.messages_copied,
                    "version": moved.version,
                })
            ),
            Format::Table if moved.from_cluster == moved.to_cluster => {
                emit!("{space} is on space cluster {} already (placement version {})", moved.to_cluster, moved.version)
            }
            Format::Table => emit!(
                "moved {space} from space cluster {} to {}: sealed at seq {}, {} copied, placement version {}",
                moved.from_cluster,
                moved.to_cluster,
                moved.sealed_seq,
                human::count(moved.messages_copied, "message"),
                moved.version
            ),
        }
    }

    pub fn cluster_list(&self, directory: &pb::DirectoryResponse) {
        let region_of: std::collections::BTreeMap<u64, &str> =
            directory.nodes.iter().map(|n| (n.node_id, n.region.as_str())).collect();
        match self.format {
            Format::Json => {
                let rows: Vec<serde_json::Value> = directory
                    .clusters
                    .iter()
                    .map(|c| {
                        json!({
                            "cluster_id": c.cluster_id,
                            "voters": c.voters,
                            "preferred_region": if c.preferred_region.is_empty() { serde_json::Value::Null } else { json!(c.preferred_region) },
                            "spaces": c.spaces,
                        })
                    })
                    .collect();
                emit!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record(["CLUSTER", "VOTERS", "PREFERRED REGION", "SPACES"]);
                for c in &directory.clusters {
                    let voters: Vec<String> =
                        c.voters.iter().map(|v| format!("{v}@{}", region_of.get(v).copied().unwrap_or("?"))).collect();
                    let preferred =
                        if c.preferred_region.is_empty() { "-".to_string() } else { c.preferred_region.clone() };
                    builder.push_record([c.cluster_id.to_string(), voters.join(", "), preferred, c.spaces.to_string()]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn members(&self, cluster: u64, members: &pb::ChangeMembersResponse) {
        match self.format {
            Format::Json => {
                emit!("{}", json!({"cluster_id": cluster, "voters": members.voters, "learners": members.learners}))
            }
            Format::Table => {
                emit!(
                    "space cluster {cluster}: voters {}; learners {}",
                    human::ids(&members.voters),
                    human::ids(&members.learners)
                )
            }
        }
    }

    pub fn leader_transferred(&self, cluster: u64, to: u64, waited: bool) {
        match self.format {
            Format::Json => emit!("{}", json!({"cluster_id": cluster, "to_node": to, "moved": waited})),
            Format::Table if waited => emit!("node {to} leads space cluster {cluster}"),
            Format::Table => emit!("asked node {to} to take over space cluster {cluster}"),
        }
    }

    pub fn health(&self, clusters: &[ClusterHealth]) {
        match self.format {
            Format::Json => {
                let rows: Vec<serde_json::Value> = clusters
                    .iter()
                    .map(|c| {
                        json!({
                            "cluster_id": c.cluster_id,
                            "healthy": c.healthy,
                            "leader_id": c.leader_id,
                            "replicas": c.replicas,
                            "answering": c.answering,
                        })
                    })
                    .collect();
                emit!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record(["CLUSTER", "HEALTHY", "LEADER", "ANSWERING"]);
                for c in clusters {
                    builder.push_record([
                        c.cluster_id.to_string(),
                        if c.healthy { "yes" } else { "NO" }.to_string(),
                        c.leader_id.map(|id| id.to_string()).unwrap_or_else(|| "-".into()),
                        format!("{}/{}", c.answering, c.replicas),
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn drained(&self, nodes: &[u64], drained: bool) {
        match self.format {
            Format::Json => emit!("{}", json!({"nodes": nodes, "drained": drained})),
            Format::Table if drained => emit!("drained {}", human::nodes(nodes)),
            Format::Table => emit!("{} back in service", human::nodes(nodes)),
        }
    }

    pub fn version(&self) {
        let version = env!("CARGO_PKG_VERSION");
        match self.format {
            Format::Json => emit!("{}", json!({"spacectl": version})),
            Format::Table => emit!("spacectl {version}"),
        }
    }

    pub fn preferred(&self, cluster: u64, region: &str) {
        match self.format {
            Format::Json => emit!("{}", json!({"cluster_id": cluster, "preferred_region": region})),
            Format::Table if region.is_empty() => emit!("space cluster {cluster} now has no preferred leader region"),
            Format::Table => emit!("space cluster {cluster} now prefers its leader in region {region}"),
        }
    }

    pub fn cluster_status(&self, replicas: &[pb::ReplicaStatus]) {
        match self.format {
            Format::Json => {
                let rows: Vec<serde_json::Value> = replicas
                    .iter()
                    .map(|r| {
                        json!({
                            "node_id": r.node_id,
                            "region": r.region,
                            "address": r.grpc_addr,
                            "cluster_id": r.cluster_id,
                            "role": r.role,
                            "term": r.term,
                            "last_log_index": r.last_log_index,
                            "commit_index": r.commit_index,
                            "applied_index": r.applied_index,
                            "leader_id": if r.leader_id == 0 { serde_json::Value::Null } else { json!(r.leader_id) },
                            "error": if r.error.is_empty() { serde_json::Value::Null } else { json!(r.error) },
                            "snapshot_index": r.snapshot_index,
                            "purged_index": r.purged_index,
                            "last_seen_ms": r.last_seen_ms,
                        })
                    })
                    .collect();
                emit!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record([
                    "NODE",
                    "REGION",
                    "ADDRESS",
                    "CLUSTER",
                    "ROLE",
                    "TERM",
                    "LAST LOG",
                    "COMMIT",
                    "APPLIED",
                    "LEADER",
                    "LAST SEEN",
                    "ERROR",
                ]);
                for r in replicas {
                    builder.push_record([
                        r.node_id.to_string(),
                        r.region.clone(),
                        r.grpc_addr.clone(),
                        r.cluster_id.to_string(),
                        r.role.clone(),
                        r.term.to_string(),
                        r.last_log_index.to_string(),
                        r.commit_index.to_string(),
                        r.applied_index.to_string(),
                        if r.leader_id == 0 { "-".into() } else { r.leader_id.to_string() },
                        last_seen(r.last_seen_ms),
                        r.error.clone(),
                    ]);
                }
                emit!("{}", builder.build().with(Style::blank()));
            }
        }
    }
}
