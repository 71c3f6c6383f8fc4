//! The chaos checker: reads a run's history and counts every violation of
//! the invariants of the design (docs/reliability.md), by class, like
//! Jepsen's queue checkers. Pure code: no cluster, no clock.
//!
//! The final history of a space is the longest replica's (after healing,
//! every replica must hold the same one); everything else is checked against
//! it:
//! - **lost**: an acknowledged post missing from a replica's final history;
//! - **duplicated**: a key committed more than once, a key acknowledged at two
//!   seqs, or a subscriber receiving a seq twice;
//! - **reordered**: a seq naming two messages (replicas disagree, an ack or a
//!   delivery or a read names another message than the final history at that
//!   seq), or a subscriber receiving seqs out of order;
//! - **gap**: a subscriber skipping a seq without a discontinuity signal, or a
//!   replica's history with a hole;
//! - **unexpected**: a committed or delivered message no publisher posted (or
//!   with another body), or a delivery past the end of the final history;
//! - **stale-read**: a History read that started after an ack at seq n and
//!   reported a last seq below n;
//! - **unauthorized**: a message or a read delivered to a non-member.
//!
//! Liveness is counted apart: a space that accepted no post after the last
//! heal, a subscriber that did not catch up to the final history in time, a
//! node or gateway that exited by itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::chaos::history::{Event, FinalMessage, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Anomaly {
    Lost,
    Duplicated,
    Reordered,
    Gap,
    Unexpected,
    StaleRead,
    Unauthorized,
}

pub const ANOMALIES: [Anomaly; 7] = [
    Anomaly::Lost,
    Anomaly::Duplicated,
    Anomaly::Reordered,
    Anomaly::Gap,
    Anomaly::Unexpected,
    Anomaly::StaleRead,
    Anomaly::Unauthorized,
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub spaces: u64,
    pub post_attempts: u64,
    pub posts_ok: u64,
    pub posts_failed: u64,
    pub posts_unknown: u64,
    /// Distinct keys posted, and how many of them committed.
    pub keys: u64,
    pub committed: u64,
    pub deliveries: u64,
    pub reads: u64,
    pub faults: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// No anomaly and no liveness failure.
    pub valid: bool,
    /// Every class, 0 when clean.
    pub anomalies: BTreeMap<Anomaly, u64>,
    pub liveness_failures: u64,
    /// The first violations found, for a human.
    pub examples: Vec<String>,
    pub stats: Stats,
}

/// Examples kept in a report.
const EXAMPLES_MAX: usize = 50;

struct Findings {
    anomalies: BTreeMap<Anomaly, u64>,
    liveness_failures: u64,
    examples: Vec<String>,
}

impl Findings {
    fn new() -> Findings {
        Findings {
            anomalies: ANOMALIES.iter().map(|anomaly| (*anomaly, 0)).collect(),
            liveness_failures: 0,
            examples: Vec::new(),
        }
    }

    fn add(&mut self, anomaly: Anomaly, example: impl FnOnce() -> String) {
        *self.anomalies.get_mut(&anomaly).expect("every class present") += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(format!("{anomaly:?}: {}", example()).to_lowercase_first());
        }
    }

    fn liveness(&mut self, example: String) {
        self.liveness_failures += 1;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(format!("liveness: {example}"));
        }
    }
}

trait LowercaseFirst {
    fn to_lowercase_first(self) -> String;
}

impl LowercaseFirst for String {
    fn to_lowercase_first(self) -> String {
        let mut chars = self.chars();
        match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => self,
        }
    }
}

pub fn check(events: &[Event]) -> CheckReport {
    let mut findings = Findings::new();
    let mut stats = Stats::default();

    let mut members: HashMap<&str, HashSet<&str>> = HashMap::new();
    let mut finals: BTreeMap<&str, Vec<(&str, &[FinalMessage])>> = BTreeMap::new();
    let mut posted: HashMap<(&str, &str), &str> = HashMap::new(); // (space, key) → body
    let mut acks: Vec<(&str, &str, u64, u64)> = Vec::new(); // space, key, seq, end_ms
    let mut keys: HashSet<(&str, &str)> = HashSet::new();
    for event in events {
        match event {
            Event::Space { space, members: list } => {
                stats.spaces += 1;
                members.insert(space, list.iter().map(String::as_str).collect());
            }
            Event::Post { space, key, body, end_ms, outcome, seq, .. } => {
                stats.post_attempts += 1;
                keys.insert((space, key));
                posted.insert((space, key), body);
                match outcome {
                    Outcome::Ok => {
                        stats.posts_ok += 1;
                        if let Some(seq) = seq {
                            acks.push((space, key, *seq, *end_ms));
                        }
                    }
                    Outcome::Failed => stats.posts_failed += 1,
                    Outcome::Unknown => stats.posts_unknown += 1,
                }
            }
            Event::Final { node, space, messages } => finals.entry(space).or_default().push((node, messages)),
            Event::Fault { .. } => stats.faults += 1,
            _ => {}
        }
    }
    stats.keys = keys.len() as u64;

    // The final history of each space: the longest replica's.
    let mut reference: HashMap<&str, &[FinalMessage]> = HashMap::new();
    for (space, replicas) in &finals {
        let longest =
            replicas.iter().map(|(_, messages)| *messages).max_by_key(|messages| messages.len()).unwrap_or(&[]);
        reference.insert(space, longest);
        check_replicas(space, replicas, longest, &mut findings);
        check_committed(space, longest, &posted, &mut findings);
        stats.committed += longest.len() as u64;
    }
    let at = |space: &str, seq: u64| -> Option<&FinalMessage> {
        let messages = reference.get(space)?;
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        messages.get(index).filter(|message| message.seq == seq)
    };

    // Acknowledged posts: present on every replica, at the seq acknowledged.
    let mut acked_seq: HashMap<(&str, &str), u64> = HashMap::new();
    for (space, key, seq, _) in &acks {
        if let Some(first) = acked_seq.insert((space, key), *seq) {
            if first != *seq {
                findings.add(Anomaly::Duplicated, || {
                    format!("key {key} of {space} acknowledged at seqs {first} and {seq}")
                });
            }
        }
    }
    for ((space, key), seq) in &acked_seq {
        let replicas = finals.get(space).map(Vec::as_slice).unwrap_or(&[]);
        let missing: Vec<&str> = replicas
            .iter()
            .filter(|(_, messages)| !messages.iter().any(|message| message.key == *key))
            .map(|(node, _)| *node)
            .collect();
        if replicas.is_empty() || !missing.is_empty() {
            findings.add(Anomaly::Lost, || {
                format!("acknowledged post {key} of {space} (seq {seq}) missing on {missing:?}")
            });
            continue;
        }
        match at(space, *seq) {
            Some(message) if message.key == *key => {}
            other => findings.add(Anomaly::Reordered, || {
                format!(
                    "post {key} of {space} acknowledged at seq {seq}, the final history has {:?} there",
                    other.map(|m| &m.key)
                )
            }),
        }
    }

    check_deliveries(events, &members, &at, &reference, &mut findings, &mut stats);
    check_reads(events, &members, &acks, &at, &mut findings, &mut stats);

    for event in events {
        match event {
            Event::Liveness { space, ok: false, .. } => {
                findings.liveness(format!("space {space} accepted no post after the last heal"))
            }
            Event::Exited { process, status, at_ms } => {
                findings.liveness(format!("{process} exited by itself at {at_ms} ms ({status})"))
            }
            Event::CaughtUp { subscriber, space, last_seq, .. } => {
                let final_len = reference.get(space.as_str()).map(|messages| messages.len() as u64).unwrap_or(0);
                if *last_seq < final_len {
                    findings.liveness(format!(
                        "{subscriber} reached seq {last_seq} of {space}, the final history has {final_len}"
                    ));
                }
            }
            _ => {}
        }
    }

    let valid = findings.anomalies.values().all(|count| *count == 0) && findings.liveness_failures == 0;
    CheckReport {
        valid,
        anomalies: findings.anomalies,
        liveness_failures: findings.liveness_failures,
        examples: findings.examples,
        stats,
    }
}

/// Every replica holds the reference history: same message at every seq,
/// no hole.
fn check_replicas(
    space: &str,
    replicas: &[(&str, &[FinalMessage])],
    reference: &[FinalMessage],
    findings: &mut Findings,
) {
    for (node, messages) in replicas {
        for (index, message) in messages.iter().enumerate() {
            let expected_seq = index as u64 + 1;
            if message.seq != expected_seq {
                findings.add(Anomaly::Gap, || {
                    format!("{node}'s history of {space} has seq {} at position {expected_seq}", message.seq)
                });
                break;
            }
            if let Some(other) = reference.get(index) {
                if other.key != message.key || other.body != message.body {
                    findings.add(Anomaly::Reordered, || {
                        format!(
                            "seq {} of {space} names two messages: {:?} on {node}, {:?} elsewhere",
                            message.seq, message.key, other.key
                        )
                    });
                }
            }
        }
    }
}

/// Each committed key once, each committed message one that was posted.
fn check_committed(
    space: &str,
    messages: &[FinalMessage],
    posted: &HashMap<(&str, &str), &str>,
    findings: &mut Findings,
) {
    let mut seen: HashSet<&str> = HashSet::new();
    for message in messages {
        if !seen.insert(&message.key) {
            findings.add(Anomaly::Duplicated, || {
                format!("key {} committed twice in {space} (again at seq {})", message.key, message.seq)
            });
        }
        match posted.get(&(space, message.key.as_str())) {
            Some(body) if *body == message.body => {}
            Some(_) => findings.add(Anomaly::Unexpected, || {
                format!("seq {} of {space} has another body than key {} was posted with", message.seq, message.key)
            }),
            None => findings.add(Anomaly::Unexpected, || {
                format!("seq {} of {space} has key {:?}, which no publisher posted", message.seq, message.key)
            }),
        }
    }
}

fn check_deliveries<'a>(
    events: &'a [Event],
    members: &HashMap<&str, HashSet<&str>>,
    at: &dyn Fn(&str, u64) -> Option<&'a FinalMessage>,
    reference: &HashMap<&str, &[FinalMessage]>,
    findings: &mut Findings,
    stats: &mut Stats,
) {
    // Per (subscriber, space): the highest seq received, every seq seen, and
    // the seqs a discontinuity excused.
    let mut streams: HashMap<(&str, &str), Stream> = HashMap::new();
    for event in events {
        match event {
            Event::Discontinuity { subscriber, space, next_seq, .. } => {
                let stream = streams.entry((subscriber, space)).or_default();
                if *next_seq > stream.last + 1 {
                    stream.excused.push((stream.last + 1, next_seq - 1));
                }
                stream.last = stream.last.max(next_seq.saturating_sub(1));
            }
            Event::Delivery { subscriber, user, space, seq, body, .. } => {
                stats.deliveries += 1;
                if !members.get(space.as_str()).is_some_and(|list| list.contains(user.as_str())) {
                    findings.add(Anomaly::Unauthorized, || {
                        format!("{subscriber} ({user}) received seq {seq} of {space}, not being a member")
                    });
                    continue;
                }
                let stream = streams.entry((subscriber, space)).or_default();
                if !stream.seen.insert(*seq) {
                    findings.add(Anomaly::Duplicated, || format!("{subscriber} received seq {seq} of {space} twice"));
                    continue;
                }
                if *seq <= stream.last {
                    let last = stream.last;
                    findings.add(Anomaly::Reordered, || {
                        format!("{subscriber} received seq {seq} of {space} after seq {last}")
                    });
                }
                stream.last = stream.last.max(*seq);
                match at(space, *seq) {
                    Some(message) if message.body == *body => {}
                    Some(message) => findings.add(Anomaly::Reordered, || {
                        format!(
                            "{subscriber} received {body:?} as seq {seq} of {space}, the final history has {:?}",
                            message.body
                        )
                    }),
                    None => {
                        let final_len = reference.get(space.as_str()).map(|m| m.len()).unwrap_or(0);
                        findings.add(Anomaly::Unexpected, || {
                            format!(
                                "{subscriber} received seq {seq} of {space}, beyond the final history ({final_len})"
                            )
                        })
                    }
                }
            }
            _ => {}
        }
    }
    // A gap: a seq never received while a later one was, and no
    // discontinuity excused it.
    let mut ordered: Vec<_> = streams.into_iter().collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    for ((subscriber, space), stream) in ordered {
        let missing = (1..=stream.last).find(|seq| {
            !stream.seen.contains(seq) && !stream.excused.iter().any(|(from, to)| (*from..=*to).contains(seq))
        });
        if let Some(seq) = missing {
            findings.add(Anomaly::Gap, || {
                format!("{subscriber} never received seq {seq} of {space} (received up to {})", stream.last)
            });
        }
    }
}

/// One subscriber's stream of one space, as the checker follows it.
#[derive(Default)]
struct Stream {
    last: u64,
    seen: BTreeSet<u64>,
    excused: Vec<(u64, u64)>,
}

fn check_reads<'a>(
    events: &'a [Event],
    members: &HashMap<&str, HashSet<&str>>,
    acks: &[(&str, &str, u64, u64)],
    at: &dyn Fn(&str, u64) -> Option<&'a FinalMessage>,
    findings: &mut Findings,
    stats: &mut Stats,
) {
    for event in events {
        let Event::Read { reader, user, space, start_ms, last_seq, messages, error, .. } = event else { continue };
        stats.reads += 1;
        if error.is_some() {
            continue;
        }
        if !members.get(space.as_str()).is_some_and(|list| list.contains(user.as_str())) {
            findings.add(Anomaly::Unauthorized, || format!("{reader} ({user}) read {space}, not being a member"));
            continue;
        }
        let acked_before = acks
            .iter()
            .filter(|(ack_space, _, _, end_ms)| ack_space == space && end_ms < start_ms)
            .map(|(_, _, seq, _)| *seq)
            .max();
        if let (Some(acked), Some(last)) = (acked_before, last_seq) {
            if *last < acked {
                findings.add(Anomaly::StaleRead, || {
                    format!("{reader} read {space} up to seq {last} after seq {acked} was acknowledged")
                });
            }
        }
        for message in messages {
            if let Some(expected) = at(space, message.seq) {
                if expected.key != message.key || expected.body != message.body {
                    findings.add(Anomaly::Reordered, || {
                        format!("{reader} read {:?} as seq {} of {space}", message.body, message.seq)
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: u64, key: &str) -> FinalMessage {
        FinalMessage { seq, key: key.into(), body: format!("body {key}") }
    }

    fn post(key: &str, outcome: Outcome, seq: Option<u64>, end_ms: u64) -> Event {
        Event::Post {
            process: "p1".into(),
            space: "s".into(),
            key: key.into(),
            body: format!("body {key}"),
            start_ms: end_ms.saturating_sub(5),
            end_ms,
            outcome,
            seq,
            error: None,
        }
    }

    fn delivery(subscriber: &str, user: &str, seq: u64, key: &str) -> Event {
        Event::Delivery {
            subscriber: subscriber.into(),
            user: user.into(),
            space: "s".into(),
            seq,
            body: format!("body {key}"),
            at_ms: 100 + seq,
        }
    }

    fn finals(messages: Vec<FinalMessage>) -> Vec<Event> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|node| Event::Final { node: node.to_string(), space: "s".into(), messages: messages.clone() })
            .collect()
    }

    /// Three posts (one retried after an unknown outcome), three replicas
    /// agreeing, a subscriber that got everything, a fresh read.
    fn clean() -> Vec<Event> {
        let mut events = vec![
            Event::Space { space: "s".into(), members: vec!["alice".into(), "bob".into()] },
            post("k1", Outcome::Ok, Some(1), 10),
            post("k2", Outcome::Unknown, None, 20),
            post("k2", Outcome::Ok, Some(2), 30),
            post("k3", Outcome::Ok, Some(3), 40),
            post("k4", Outcome::Failed, None, 45),
            delivery("sub1", "alice", 1, "k1"),
            delivery("sub1", "alice", 2, "k2"),
            delivery("sub1", "alice", 3, "k3"),
            Event::Read {
                reader: "r1".into(),
                user: "bob".into(),
                space: "s".into(),
                start_ms: 50,
                end_ms: 55,
                last_seq: Some(3),
                messages: vec![message(3, "k3")],
                error: None,
            },
            Event::Liveness { space: "s".into(), ok: true, at_ms: 60 },
            Event::CaughtUp { subscriber: "sub1".into(), space: "s".into(), last_seq: 3, caught_up: true },
        ];
        events.extend(finals(vec![message(1, "k1"), message(2, "k2"), message(3, "k3")]));
        events
    }

    fn only(report: &CheckReport, anomaly: Anomaly) {
        let others: Vec<_> =
            report.anomalies.iter().filter(|(class, count)| **class != anomaly && **count > 0).collect();
        assert!(report.anomalies[&anomaly] > 0, "{anomaly:?} not found: {:?}", report.examples);
        assert!(others.is_empty(), "other classes reported: {others:?} {:?}", report.examples);
        assert!(!report.valid);
    }

    #[test]
    fn a_clean_history_passes() {
        let report = check(&clean());
        assert!(report.valid, "{:?}", report.examples);
        assert_eq!(report.stats.posts_ok, 3);
        assert_eq!(report.stats.committed, 3);
        assert_eq!(report.stats.keys, 4);
    }

    #[test]
    fn a_lost_acknowledged_post_is_found() {
        let mut events: Vec<Event> = clean().into_iter().filter(|e| !matches!(e, Event::Final { .. })).collect();
        events.retain(|e| !matches!(e, Event::Delivery { seq: 3, .. } | Event::Read { .. } | Event::CaughtUp { .. }));
        events.extend(finals(vec![message(1, "k1"), message(2, "k2")]));
        only(&check(&events), Anomaly::Lost);
    }

    #[test]
    fn a_key_committed_twice_is_found() {
        let mut events: Vec<Event> = clean().into_iter().filter(|e| !matches!(e, Event::Final { .. })).collect();
        events.extend(finals(vec![message(1, "k1"), message(2, "k2"), message(3, "k3"), message(4, "k2")]));
        events.push(Event::CaughtUp { subscriber: "sub2".into(), space: "s".into(), last_seq: 4, caught_up: true });
        events.retain(|e| !matches!(e, Event::CaughtUp { subscriber, .. } if subscriber == "sub1"));
        only(&check(&events), Anomaly::Duplicated);
    }

    #[test]
    fn a_delivery_out_of_order_is_found() {
        let mut events = clean();
        let first = events.iter().position(|e| matches!(e, Event::Delivery { seq: 2, .. })).unwrap();
        events.swap(first, first + 1);
        only(&check(&events), Anomaly::Reordered);
    }

    #[test]
    fn replicas_that_disagree_are_found() {
        let mut events: Vec<Event> =
            clean().into_iter().filter(|e| !matches!(e, Event::Final { node, .. } if node == "n3")).collect();
        let swapped =
            vec![message(1, "k1"), FinalMessage { seq: 2, key: "k2".into(), body: "body k3".into() }, message(3, "k3")];
        events.push(Event::Final { node: "n3".into(), space: "s".into(), messages: swapped });
        let report = check(&events);
        assert!(report.anomalies[&Anomaly::Reordered] > 0);
    }

    #[test]
    fn a_skipped_seq_is_a_gap_unless_announced() {
        let events: Vec<Event> = clean().into_iter().filter(|e| !matches!(e, Event::Delivery { seq: 2, .. })).collect();
        only(&check(&events), Anomaly::Gap);
        let mut announced = Vec::new();
        for event in clean() {
            if matches!(event, Event::Delivery { seq: 2, .. }) {
                continue;
            }
            if matches!(event, Event::Delivery { seq: 3, .. }) {
                announced.push(Event::Discontinuity {
                    subscriber: "sub1".into(),
                    space: "s".into(),
                    next_seq: 3,
                    at_ms: 99,
                });
            }
            announced.push(event);
        }
        assert!(check(&announced).valid);
    }

    #[test]
    fn a_message_nobody_posted_is_unexpected() {
        let mut events: Vec<Event> = clean().into_iter().filter(|e| !matches!(e, Event::Final { .. })).collect();
        events.extend(finals(vec![message(1, "k1"), message(2, "k2"), message(3, "k3"), message(4, "ghost")]));
        events.retain(|e| !matches!(e, Event::CaughtUp { .. }));
        only(&check(&events), Anomaly::Unexpected);
    }

    #[test]
    fn a_read_behind_an_earlier_ack_is_stale() {
        let events: Vec<Event> = clean()
            .into_iter()
            .map(|event| match event {
                Event::Read { reader, user, space, start_ms, end_ms, .. } => Event::Read {
                    reader,
                    user,
                    space,
                    start_ms,
                    end_ms,
                    last_seq: Some(2),
                    messages: vec![message(2, "k2")],
                    error: None,
                },
                other => other,
            })
            .collect();
        only(&check(&events), Anomaly::StaleRead);
    }

    #[test]
    fn a_delivery_to_a_non_member_is_unauthorized() {
        let mut events = clean();
        events.push(delivery("sub9", "mallory", 1, "k1"));
        only(&check(&events), Anomaly::Unauthorized);
    }

    #[test]
    fn liveness_failures_are_counted_apart() {
        let mut events = clean();
        events.push(Event::Liveness { space: "s".into(), ok: false, at_ms: 70 });
        events.push(Event::CaughtUp { subscriber: "sub2".into(), space: "s".into(), last_seq: 1, caught_up: false });
        let report = check(&events);
        assert_eq!(report.liveness_failures, 2);
        assert!(report.anomalies.values().all(|count| *count == 0));
        assert!(!report.valid);
    }

    #[test]
    fn a_history_round_trips_through_jsonl() {
        let events = clean();
        let text = crate::chaos::history::to_jsonl(&events);
        assert_eq!(crate::chaos::history::parse_jsonl(&text).unwrap(), events);
    }
}
