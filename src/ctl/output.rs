//! spacectl's output: tables for people, JSON (snake_case, stable keys) for
//! programs. History and tail print one JSON object per line.

use serde_json::json;
use tabled::builder::Builder;
use tabled::settings::Style;

use super::Format;
use crate::pb;

pub struct Output {
    format: Format,
}

/// One cluster's health, from the replicas' status.
pub struct ClusterHealth {
    pub cluster_id: u64,
    pub healthy: bool,
    pub leader_id: Option<u64>,
    pub replicas: usize,
    pub answering: usize,
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
            let answering = rows.iter().filter(|r| r.role != "unreachable").count();
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

impl Output {
    pub fn new(format: Format) -> Output {
        Output { format }
    }

    pub fn posted(&self, response: &pb::PostResponse) {
        match self.format {
            Format::Json => {
                println!("{}", json!({"space": response.space, "seq": response.seq, "duplicate": response.duplicate}))
            }
            Format::Table if response.duplicate => {
                println!("{} (already posted: the key had committed before)", response.seq)
            }
            Format::Table => println!("{}", response.seq),
        }
    }

    pub fn message(&self, message: &pb::Message) {
        match self.format {
            Format::Json => println!("{}", message_json(message)),
            Format::Table => println!("{}\t{}\t{}", message.seq, message.author, message.body),
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
                println!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn space_created(&self, response: &pb::CreateSpaceResponse) {
        let Some(space) = &response.space else { return };
        match self.format {
            Format::Json => {
                let mut value = space_json(space);
                value["existed"] = json!(response.existed);
                println!("{value}");
            }
            Format::Table if response.existed => println!("space {} already exists (unchanged)", space.name),
            Format::Table => println!("created space {} with {} members", space.name, space.members.len()),
        }
    }

    pub fn space_info(&self, space: &pb::SpaceInfo) {
        match self.format {
            Format::Json => println!("{}", space_json(space)),
            Format::Table => {
                let attrs: std::collections::BTreeMap<_, _> = space.attrs.iter().collect();
                let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("name:     {}", space.name);
                println!("members:  {}", space.members.join(","));
                println!("attrs:    {}", attrs.join(" "));
                println!("cluster:  {}", space.cluster_id);
                println!("seqs:     {}..={}", space.first_seq, space.last_seq);
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
            Format::Json => println!(
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
                println!(
                    "{space} is on space cluster {} already (placement version {})",
                    moved.to_cluster, moved.version
                )
            }
            Format::Table => println!(
                "moved {space} from space cluster {} to {}: sealed at seq {}, {} messages copied, placement version {}",
                moved.from_cluster, moved.to_cluster, moved.sealed_seq, moved.messages_copied, moved.version
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
                println!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record(["CLUSTER", "VOTERS", "PREFERRED REGION", "SPACES"]);
                for c in &directory.clusters {
                    let voters: Vec<String> =
                        c.voters.iter().map(|v| format!("{v}@{}", region_of.get(v).copied().unwrap_or("?"))).collect();
                    let preferred =
                        if c.preferred_region.is_empty() { "-".to_string() } else { c.preferred_region.clone() };
                    builder.push_record([c.cluster_id.to_string(), voters.join(","), preferred, c.spaces.to_string()]);
                }
                println!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn members(&self, cluster: u64, members: &pb::ChangeMembersResponse) {
        match self.format {
            Format::Json => {
                println!("{}", json!({"cluster_id": cluster, "voters": members.voters, "learners": members.learners}))
            }
            Format::Table => {
                println!("space cluster {cluster}: voters {:?}, learners {:?}", members.voters, members.learners)
            }
        }
    }

    pub fn leader_transferred(&self, cluster: u64, to: u64, waited: bool) {
        match self.format {
            Format::Json => println!("{}", json!({"cluster_id": cluster, "to_node": to, "moved": waited})),
            Format::Table if waited => println!("node {to} leads space cluster {cluster}"),
            Format::Table => println!("asked node {to} to take over space cluster {cluster}"),
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
                println!("{}", serde_json::Value::Array(rows));
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
                println!("{}", builder.build().with(Style::blank()));
            }
        }
    }

    pub fn version(&self) {
        let version = env!("CARGO_PKG_VERSION");
        match self.format {
            Format::Json => println!("{}", json!({"spacectl": version})),
            Format::Table => println!("spacectl {version}"),
        }
    }

    pub fn preferred(&self, cluster: u64, region: &str) {
        match self.format {
            Format::Json => println!("{}", json!({"cluster_id": cluster, "preferred_region": region})),
            Format::Table => println!("space cluster {cluster} now prefers region {:?}", region),
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
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            }
            Format::Table => {
                let mut builder = Builder::default();
                builder.push_record([
                    "NODE", "REGION", "ADDRESS", "CLUSTER", "ROLE", "TERM", "LAST LOG", "COMMIT", "APPLIED", "LEADER",
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
                        r.error.clone(),
                    ]);
                }
                println!("{}", builder.build().with(Style::blank()));
            }
        }
    }
}
