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
