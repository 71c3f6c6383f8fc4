//! Upstream: the gateway's Follow streams to replicas. One slot follows the
//! best replica (its own region's when healthy, else the nearest); in
//! redundant mode a second slot follows a replica in another region at the
//! same time, and the fan-out dedupes by (space, seq).
//!
//! A slot gives its replica up when the stream breaks, when it is silent
//! for `silence_ms_max` (no message and no progress), when it lags another
//! replica for `lag_ms_max`, or when a nearer replica has been healthy for
//! `home_healthy_ms_min`. It then follows the next best one, watching every
//! space from the fan-out's cursor: nothing is skipped and the fan-out drops
//! what it already had.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::gateway::config::UpstreamConfig;
use crate::gateway::fanout::Fanout;
use crate::gateway::nodes::NodePool;
use crate::gateway::protocol::ErrorCode;
use crate::pb;
use crate::pb::follow_event::Event;

/// What a slot is following now, for status.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SlotStatus {
    pub slot: usize,
    /// `region@addr` of the followed replica; empty while connecting.
    pub node: String,
    pub region: String,
    pub connected: bool,
    pub applied_index: u64,
    /// Replica switches since start, and why the last one happened.
    pub switches: u64,
    pub last_switch_reason: String,
    /// Entries behind the most any replica had applied (see
    /// [`NodePool::lag_entries`]).
    pub lag: u64,
}

/// Makes the report a gateway sends the node it follows.
pub type Reporter = Arc<dyn Fn() -> pb::GatewayReport + Send + Sync>;

/// The slots' status, shared with the status page. Cheap to clone.
#[derive(Clone, Default)]
pub struct UpstreamStatus {
    slots: Arc<Mutex<HashMap<usize, SlotStatus>>>,
    reporter: Arc<Mutex<Option<Reporter>>>,
}

impl UpstreamStatus {
    /// Sets what every slot reports to its replica at each health check.
    pub fn set_reporter(&self, reporter: Reporter) {
        *self.reporter.lock().expect("status lock") = Some(reporter);
    }

    fn report(&self) -> Option<pb::GatewayReport> {
        let reporter = self.reporter.lock().expect("status lock").clone();
        reporter.map(|report| report())
    }

    pub fn snapshot(&self) -> Vec<SlotStatus> {
        let slots = self.slots.lock().expect("status lock");
        let mut all: Vec<SlotStatus> = slots.values().cloned().collect();
        all.sort_by_key(|slot| slot.slot);
        all
    }

    fn update(&self, slot: usize, change: impl FnOnce(&mut SlotStatus)) {
        let mut slots = self.slots.lock().expect("status lock");
        let entry = slots.entry(slot).or_insert_with(|| SlotStatus { slot, ..Default::default() });
        change(entry);
    }

    /// The node index each slot follows now.
    fn followed(&self, pool: &NodePool) -> HashMap<usize, usize> {
        let slots = self.slots.lock().expect("status lock");
        slots
            .iter()
            .filter_map(|(slot, status)| {
                let index = pool.nodes.iter().position(|node| format_node(node) == status.node)?;
                Some((*slot, index))
            })
            .collect()
    }
}

fn format_node(node: &crate::gateway::nodes::NodeInfo) -> String {
    format!("{}@{}", node.endpoint.region, node.endpoint.addr)
}

/// Runs one upstream slot forever.
pub async fn run_slot(slot: usize, pool: NodePool, fanout: Fanout, config: UpstreamConfig, status: UpstreamStatus) {
    let mut switches = 0u64;
    // Short-lived follows in a row: when every replica is down, retries
    // slow down.
    let mut failures_in_a_row = 0u32;
    loop {
        let index = choose(slot, &pool, &status);
        let node = &pool.nodes[index];
        let node_name = format_node(node);
        status.update(slot, |one| {
            one.node = node_name.clone();
            one.region = node.endpoint.region.clone();
            one.connected = false;
        });
        let followed_at = Instant::now();
        let reason = follow_once(slot, index, &pool, &fanout, &config, &status).await;
        if followed_at.elapsed() > Duration::from_millis(config.silence_ms_max) {
            failures_in_a_row = 0;
        }
        switches += 1;
        tracing::info!(slot, node = %node_name, %reason, "upstream switch");
        if reason.is_failure() {
            pool.mark_failed(index);
        }
        status.update(slot, |one| {
            one.connected = false;
            one.switches = switches;
            one.last_switch_reason = reason.to_string();
        });
        if reason.is_failure() {
            // The next replica is tried at once; once every replica has
            // failed in a row, pauses grow (100 ms doubling to 1.6 s) so a
            // cluster that is all down is not dialled in a tight loop.
            failures_in_a_row += 1;
            let round = failures_in_a_row / pool.nodes.len().max(1) as u32;
            let pause_ms = if round == 0 { 0 } else { 50u64 << round.min(5) };
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
    }
}

/// The best replica for a slot: slot 0 takes the best; slot 1 (redundant
/// mode) the best in a region slot 0 does not follow.
fn choose(slot: usize, pool: &NodePool, status: &UpstreamStatus) -> usize {
    let followed = status.followed(pool);
    let others: Vec<usize> = followed.iter().filter(|(other, _)| **other != slot).map(|(_, index)| *index).collect();
    let ranked = pool.ranked(&[]);
    let other_regions: Vec<&str> = others.iter().map(|index| pool.nodes[*index].endpoint.region.as_str()).collect();
    ranked
        .iter()
        .copied()
        .find(|index| !others.contains(index) && !other_regions.contains(&pool.nodes[*index].endpoint.region.as_str()))
        .or_else(|| ranked.iter().copied().find(|index| !others.contains(index)))
        .unwrap_or(ranked[0])
}

#[derive(Debug)]
enum SwitchReason {
    ConnectFailed(String),
    StreamEnded,
    StreamError(String),
    Silent(u64),
    Lagging(u64),
    GoingHome,
}

impl SwitchReason {
    fn is_failure(&self) -> bool {
        !matches!(self, SwitchReason::GoingHome)
    }
}

impl std::fmt::Display for SwitchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchReason::ConnectFailed(why) => write!(f, "connect failed: {why}"),
            SwitchReason::StreamEnded => write!(f, "stream ended"),
            SwitchReason::StreamError(why) => write!(f, "stream error: {why}"),
            SwitchReason::Silent(ms) => write!(f, "silent for {ms} ms"),
            SwitchReason::Lagging(applied) => write!(f, "lagging at applied index {applied}"),
            SwitchReason::GoingHome => write!(f, "a nearer replica is healthy again"),
        }
    }
}

async fn follow_once(
    slot: usize,
    index: usize,
    pool: &NodePool,
    fanout: &Fanout,
    config: &UpstreamConfig,
    status: &UpstreamStatus,
) -> SwitchReason {
    let node = &pool.nodes[index];
    let mut spaces_changed = fanout.spaces_changed();
    spaces_changed.borrow_and_update();
    let cursors = fanout.cursors();
    // Room for every initial watch plus the changes that follow.
    let (requests, request_receiver) = mpsc::channel::<pb::FollowRequest>(cursors.len() + 1024);
    // Watch every followed space from the fan-out's cursor before the call,
    // so the replica starts sending at once. `watched` holds the feed
    // generation each watch was sent for: a feed dropped and created again
    // is watched again from its new cursor.
    let mut watched: HashMap<String, u64> = HashMap::new();
    for cursor in cursors {
        let _ = requests.try_send(watch_request(&cursor.space, cursor.next_seq));
        watched.insert(cursor.space, cursor.generation);
    }
    let mut client =
        pb::client_client::ClientClient::new(node.channel.clone()).max_decoding_message_size(64 * 1024 * 1024);
    let connect = client.follow(tokio_stream::wrappers::ReceiverStream::new(request_receiver));
    let response =
        match tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms + config.silence_ms_max), connect)
            .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(status)) => {
                return SwitchReason::ConnectFailed(crate::error::ApiError::from_status(&status).to_string())
            }
            Err(_) => return SwitchReason::ConnectFailed("timed out".into()),
        };
    let mut events = response.into_inner();
    status.update(slot, |one| one.connected = true);
    let silence_max = Duration::from_millis(config.silence_ms_max);
    let lag_max = Duration::from_millis(config.lag_ms_max);
    let home_after = Duration::from_millis(config.home_healthy_ms_min);
    let mut checks = tokio::time::interval(Duration::from_millis(config.probe_interval_ms));
    let mut last_heard = Instant::now();
    // What the probes last saw, until the replica reports its own progress.
    let mut applied_index = pool.health(index).applied_index;
    let mut applied_by_cluster = pool.health(index).applied_by_cluster;
    let mut lagging_since: Option<Instant> = None;
    // Spaces to watch again, and when.
    let mut rewatch: HashMap<String, Instant> = HashMap::new();
    loop {
        if let Some(reason) = send_due_watches(&mut rewatch, &watched, fanout, &requests) {
            return reason;
        }
        tokio::select! {
            event = events.next() => {
                let event = match event {
                    None => return SwitchReason::StreamEnded,
                    Some(Err(status)) => return SwitchReason::StreamError(crate::error::ApiError::from_status(&status).to_string()),
                    Some(Ok(event)) => event,
                };
                last_heard = Instant::now();
                match event.event {
                    Some(Event::Watching(watching)) => fanout.on_watching(&watching),
                    Some(Event::Messages(batch)) => {
                        fanout.publish(batch.messages);
                    }
                    Some(Event::Ended(ended)) if ended.code == "deleted" => {
                        let message = format!("space {:?} was deleted", ended.space);
                        fanout.end_space(&ended.space, ErrorCode::Deleted, &message);
                    }
                    Some(Event::Ended(ended)) if watched.contains_key(&ended.space) => {
                        // The replica stopped following the space. Every feed
                        // exists because a node served its history, so
                        // unless the space was deleted this replica is behind (has
                        // not applied the create, or is restoring a snapshot)
                        // or retention overtook the cursor: watch again from
                        // the feed's cursor, at once when trimmed (the replica
                        // then starts at its first retained seq and the
                        // fan-out treats the jump as a discontinuity), after
                        // a pause otherwise.
                        let pause = if ended.code == "trimmed" { Duration::ZERO } else { REWATCH_PAUSE };
                        rewatch.insert(ended.space, Instant::now() + pause);
                    }
                    Some(Event::Progress(progress)) => {
                        applied_index = progress.applied_index;
                        applied_by_cluster = progress.applied_by_cluster.into_iter().collect();
                        status.update(slot, |one| one.applied_index = applied_index);
                    }
                    Some(Event::Ended(_)) | None => {}
                }
            }
            changed = spaces_changed.changed() => {
                if changed.is_err() {
                    return SwitchReason::StreamEnded;
                }
                let current: HashMap<String, (u64, u64)> = fanout
                    .cursors()
                    .into_iter()
                    .map(|cursor| (cursor.space, (cursor.next_seq, cursor.generation)))
                    .collect();
                for (space, (next_seq, generation)) in &current {
                    if watched.get(space) != Some(generation) {
                        watched.insert(space.clone(), *generation);
                        if let Err(reason) = send_request(&requests, watch_request(space, *next_seq)) {
                            return reason;
                        }
                    }
                }
                let gone: Vec<String> = watched.keys().filter(|space| !current.contains_key(*space)).cloned().collect();
                for space in gone {
                    watched.remove(&space);
                    rewatch.remove(&space);
                    let unwatch = pb::FollowRequest {
                        request: Some(pb::follow_request::Request::Unwatch(pb::Unwatch { space })),
                    };
                    if let Err(reason) = send_request(&requests, unwatch) {
                        return reason;
                    }
                }
            }
            _ = checks.tick() => {
                let lag = pool.lag_entries(&applied_by_cluster);
                status.update(slot, |one| one.lag = lag);
                if let Some(report) = status.report() {
                    let report = pb::FollowRequest { request: Some(pb::follow_request::Request::Report(report)) };
                    if let Err(reason) = send_request(&requests, report) {
                        return reason;
                    }
                }
                let silent_for = last_heard.elapsed();
                if silent_for >= silence_max {
                    return SwitchReason::Silent(silent_for.as_millis() as u64);
                }
                if pool.is_lagging(&applied_by_cluster, lag_max) {
                    let since = *lagging_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= lag_max.min(Duration::from_millis(config.probe_interval_ms * 2)) {
                        return SwitchReason::Lagging(applied_index);
                    }
                } else {
                    lagging_since = None;
                }
                // Move only to the replica this slot would choose now, and
                // only when it is nearer and has been healthy for a while:
                // a redundant slot keeps to a region the other slot does not
                // follow, and a flapping replica does not pull slots back
                // and forth.
                if should_go_home(slot, index, pool, status, home_after) {
                    return SwitchReason::GoingHome;
                }
            }
        }
    }
}

/// Whether a slot following node `index` should move to the replica it
/// would choose now: only when that one is nearer and has been healthy for
/// `home_after`.
fn should_go_home(slot: usize, index: usize, pool: &NodePool, status: &UpstreamStatus, home_after: Duration) -> bool {
    let best = choose(slot, pool, status);
    best != index && pool.nodes[best].distance < pool.nodes[index].distance && pool.healthy_for(best, home_after)
}

/// Pause before watching again a space a replica stopped following.
const REWATCH_PAUSE: Duration = Duration::from_millis(500);

/// Queues a request on the follow stream without waiting: the loop that
/// sends also reads the replica's events, so it must never block on a full
/// queue (the replica may be blocked sending to it). A full queue means the
/// replica is not keeping up: leave it.
fn send_request(requests: &mpsc::Sender<pb::FollowRequest>, request: pb::FollowRequest) -> Result<(), SwitchReason> {
    requests.try_send(request).map_err(|error| match error {
        mpsc::error::TrySendError::Full(_) => SwitchReason::StreamError("follow requests not taken in time".into()),
        mpsc::error::TrySendError::Closed(_) => SwitchReason::StreamEnded,
    })
}

/// Sends the watches that are due, each from the feed's current cursor;
/// spaces no longer followed are dropped.
fn send_due_watches(
    rewatch: &mut HashMap<String, Instant>,
    watched: &HashMap<String, u64>,
    fanout: &Fanout,
    requests: &mpsc::Sender<pb::FollowRequest>,
) -> Option<SwitchReason> {
    if rewatch.is_empty() {
        return None;
    }
    let now = Instant::now();
    let due: Vec<String> = rewatch.iter().filter(|(_, at)| **at <= now).map(|(space, _)| space.clone()).collect();
    if due.is_empty() {
        return None;
    }
    let cursors: HashMap<String, u64> =
        fanout.cursors().into_iter().map(|cursor| (cursor.space, cursor.next_seq)).collect();
    for space in due {
        rewatch.remove(&space);
        let (Some(next_seq), true) = (cursors.get(&space), watched.contains_key(&space)) else { continue };
        if let Err(reason) = send_request(requests, watch_request(&space, *next_seq)) {
            return Some(reason);
        }
    }
    None
}

fn watch_request(space: &str, next_seq: u64) -> pb::FollowRequest {
    pb::FollowRequest {
        request: Some(pb::follow_request::Request::Watch(pb::Watch { space: space.to_string(), next_seq })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::nodes::test_pool;

    fn follow(status: &UpstreamStatus, pool: &NodePool, slot: usize, index: usize) {
        let node = format_node(&pool.nodes[index]);
        status.update(slot, |one| one.node = node);
    }

    #[tokio::test]
    async fn a_redundant_pair_does_not_flap_while_home_is_down() {
        let (pool, status) = (test_pool(), UpstreamStatus::default());
        let long_ago = Instant::now() - Duration::from_secs(60);
        // us-east (home) is down; eu-west and ap-south are healthy.
        pool.set_health(0, false, None);
        pool.set_health(1, true, Some(long_ago));
        pool.set_health(2, true, Some(long_ago));
        follow(&status, &pool, 1, 1);
        assert_eq!(choose(0, &pool, &status), 2, "the main slot takes the region the other does not follow");
        follow(&status, &pool, 0, 2);
        let home_after = Duration::from_secs(3);
        assert!(!should_go_home(0, 2, &pool, &status, home_after), "eu-west is nearer but taken: stay");
        assert!(!should_go_home(1, 1, &pool, &status, home_after));
        // Home comes back: only after it has been healthy for a while.
        pool.set_health(0, true, Some(Instant::now()));
        assert!(!should_go_home(0, 2, &pool, &status, home_after));
        pool.set_health(0, true, Some(long_ago));
        assert!(should_go_home(0, 2, &pool, &status, home_after));
    }

    #[tokio::test]
    async fn a_single_slot_prefers_home_then_the_nearest_region() {
        let (pool, status) = (test_pool(), UpstreamStatus::default());
        let long_ago = Instant::now() - Duration::from_secs(60);
        for index in 0..3 {
            pool.set_health(index, true, Some(long_ago));
        }
        assert_eq!(choose(0, &pool, &status), 0);
        pool.mark_failed(0);
        assert_eq!(choose(0, &pool, &status), 1, "eu-west is the nearest other region");
        pool.mark_failed(1);
        assert_eq!(choose(0, &pool, &status), 2);
    }
}
