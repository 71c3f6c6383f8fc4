//! What a chaos run records: one JSON object per line (`history.jsonl`),
//! field `type` names the record. The checker reads only this, so a run can
//! be checked again, or a crafted history checked, without a cluster.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged with a seq: committed.
    Ok,
    /// Refused before it could commit (a validation error, no leader that
    /// surely did not propose it).
    Failed,
    /// Timed out or broke mid-way: it may or may not have committed.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalMessage {
    pub seq: u64,
    pub key: String,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A space of the run and its members.
    Space { space: String, members: Vec<String> },
    /// One attempt at a post. Attempts of one logical post share its key.
    Post {
        process: String,
        space: String,
        key: String,
        body: String,
        start_ms: u64,
        end_ms: u64,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A message a subscriber received, in the order it received them.
    Delivery { subscriber: String, user: String, space: String, seq: u64, body: String, at_ms: u64 },
    /// The gateway said a subscriber's cursor could no longer be served
    /// (`resumed:false`): delivery restarts at `next_seq`.
    Discontinuity { subscriber: String, space: String, next_seq: u64, at_ms: u64 },
    /// A History read: the highest committed seq it reported and the seqs
    /// it returned, or its error.
    Read {
        reader: String,
        user: String,
        space: String,
        start_ms: u64,
        end_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        #[serde(default)]
        messages: Vec<FinalMessage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A fault the nemesis injected, and when it was healed (or 0).
    Fault { kind: String, target: String, start_ms: u64, end_ms: u64 },
    /// After the run, healed: a replica's whole history of a space.
    Final { node: String, space: String, messages: Vec<FinalMessage> },
    /// After the run: the last seq a subscriber had of a space once it was
    /// given time to catch up, and whether it did within the bound.
    CaughtUp { subscriber: String, space: String, last_seq: u64, caught_up: bool },
    /// After the last heal: whether a space accepted a post within the bound.
    Liveness { space: String, ok: bool, at_ms: u64 },
    /// A process nobody killed exited by itself (then restarted at the next
    /// heal).
    Exited { process: String, status: String, at_ms: u64 },
}

/// Reads a `history.jsonl`.
pub fn parse_jsonl(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| serde_json::from_str(line).map_err(|e| format!("line {}: {e}", number + 1)))
        .collect()
}

pub fn to_jsonl(events: &[Event]) -> String {
    let mut text = String::new();
    for event in events {
        text.push_str(&serde_json::to_string(event).expect("events serialize"));
        text.push('\n');
    }
    text
}
