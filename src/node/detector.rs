//! The failure detector: one ping per node pair and interval, whatever the
//! number of groups the two nodes share. Quiesced groups have no timers of
//! their own; this is what tells them their leader's node is gone.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::NodeId;
use crate::pb;
use crate::raft::network::PeerChannels;

#[derive(Clone)]
pub struct Detector {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    down_after: Duration,
    started: Instant,
    /// When each node last answered, and since when it has answered
    /// without a gap longer than `down_after`.
    last_seen: Mutex<BTreeMap<NodeId, (Instant, Instant)>>,
    /// The set of nodes taken as down, published on every change.
    down: watch::Sender<Vec<NodeId>>,
    /// Raft's heartbeat interval, which is also how long openraft waits for
    /// a heartbeat's reply.
    heartbeat: Duration,
    /// When a slow link to each node was last warned about.
    warned: Mutex<BTreeMap<NodeId, Instant>>,
}

/// How often a slow link to one node is warned about.
const SLOW_LINK_WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether a ping's round trip leaves too little of the heartbeat interval:
/// openraft waits one interval for a heartbeat's reply, so heartbeats over a
/// link slower than three quarters of it time out whenever it slows a little
/// more, and a leader whose heartbeats time out holds no lease (and each
/// abandoned one resets an HTTP/2 stream of the shared connection).
pub fn slow_link(round_trip: Duration, heartbeat: Duration) -> bool {
    round_trip.saturating_mul(4) > heartbeat.saturating_mul(3)
}

impl Detector {
    pub fn new(me: NodeId, down_after: Duration, heartbeat: Duration) -> Detector {
        Detector {
            inner: Arc::new(Inner {
                me,
                down_after,
                started: Instant::now(),
                last_seen: Mutex::new(BTreeMap::new()),
                down: watch::channel(Vec::new()).0,
                heartbeat,
                warned: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Whether `node` answered within `down_after` (a node never heard from
    /// counts as up for the first `down_after` of this process).
    pub fn is_up(&self, node: NodeId) -> bool {
        if node == self.inner.me {
            return true;
        }
        let seen = self.inner.last_seen.lock().expect("detector lock").get(&node).map(|(last, _)| *last);
        seen.unwrap_or(self.inner.started).elapsed() < self.inner.down_after
    }

    /// Whether `node` answered before and has not within `down_after`: it
    /// was up and stopped answering (a node never heard from is not known
    /// down: it may just be no peer of this one).
    pub fn known_down(&self, node: NodeId) -> bool {
        let seen = self.inner.last_seen.lock().expect("detector lock").get(&node).map(|(last, _)| *last);
        node != self.inner.me && seen.is_some_and(|last| last.elapsed() >= self.inner.down_after)
    }

    /// How long `node` has been up without interruption (None: down, or
    /// never heard from).
    pub fn up_for(&self, node: NodeId) -> Option<Duration> {
        if node == self.inner.me {
            return Some(self.inner.started.elapsed());
        }
        let (last, since) = self.inner.last_seen.lock().expect("detector lock").get(&node).copied()?;
        (last.elapsed() < self.inner.down_after).then(|| since.elapsed())
    }

    /// The nodes taken as down; changes wake the receiver.
    /// How long ago each node last answered.
    pub fn last_seen(&self) -> BTreeMap<NodeId, Duration> {
        let last_seen = self.inner.last_seen.lock().expect("detector lock");
        last_seen.iter().map(|(node, (last, _))| (*node, last.elapsed())).collect()
    }

    pub fn down(&self) -> watch::Receiver<Vec<NodeId>> {
        self.inner.down.subscribe()
    }

    fn seen(&self, node: NodeId) {
        let now = Instant::now();
        let mut last_seen = self.inner.last_seen.lock().expect("detector lock");
        let since = match last_seen.get(&node) {
            Some((last, since)) if last.elapsed() < self.inner.down_after => *since,
            _ => now,
        };
        last_seen.insert(node, (now, since));
    }

    /// Warns (at most once a minute per node) when the round trip to
    /// `node` is too long for the heartbeat interval ([`slow_link`]).
    fn note_round_trip(&self, node: NodeId, round_trip: Duration) {
        let heartbeat = self.inner.heartbeat;
        if !slow_link(round_trip, heartbeat) {
            return;
        }
        let mut warned = self.inner.warned.lock().expect("detector lock");
        if warned.get(&node).is_some_and(|last| last.elapsed() < SLOW_LINK_WARN_EVERY) {
            return;
        }
        warned.insert(node, Instant::now());
        tracing::warn!(
            node,
            round_trip_ms = round_trip.as_millis() as u64,
            heartbeat_interval_ms = heartbeat.as_millis() as u64,
            "the round trip to a node is over three quarters of the raft heartbeat interval: heartbeats to it time out \
             (openraft waits one interval for the reply); raise raft.heartbeat_interval_ms and the election timeouts"
        );
    }

    fn publish(&self, nodes: &[NodeId]) {
        let down: Vec<NodeId> = nodes.iter().copied().filter(|node| !self.is_up(*node)).collect();
        self.inner.down.send_if_modified(|current| {
            if *current == down {
                return false;
            }
            tracing::info!(down = ?down, "nodes taken as down changed");
            *current = down;
            true
        });
    }

    /// Pings every node `nodes` lists each `interval` until shutdown.
    pub async fn run(
        self,
        peers: PeerChannels,
        nodes: impl Fn() -> Vec<(NodeId, String)> + Send + Sync + 'static,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let nodes = std::sync::Arc::new(nodes);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            // (The list comes from the directory: a store read, off the runtime.)
            let listed = crate::storage::blocking::run({
                let nodes = nodes.clone();
                move || nodes()
            })
            .await
            .unwrap_or_default();
            let others: Vec<(NodeId, String)> = listed.into_iter().filter(|(id, _)| *id != self.inner.me).collect();
            let pings = others.iter().map(|(id, addr)| {
                let (peers, detector, id, addr) = (peers.clone(), self.clone(), *id, addr.clone());
                async move {
                    let Ok(channel) = peers.channel(&addr) else { return };
                    let mut client = pb::admin_client::AdminClient::new(channel);
                    let mut request = tonic::Request::new(pb::PingRequest { from_node: detector.inner.me });
                    request.set_timeout(interval.max(Duration::from_millis(200)));
                    let sent = Instant::now();
                    if let Ok(Ok(reply)) =
                        tokio::time::timeout(interval.max(Duration::from_millis(200)), client.ping(request)).await
                    {
                        let reply = reply.into_inner();
                        if reply.node_id == id {
                            detector.seen(id);
                            detector.note_round_trip(id, sent.elapsed());
                            peers.saw(id, reply.incarnation);
                        }
                    }
                }
            });
            futures::future::join_all(pings).await;
            let ids: Vec<NodeId> = others.iter().map(|(id, _)| *id).collect();
            self.publish(&ids);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_slow_when_its_round_trip_is_over_half_the_heartbeat() {
        let heartbeat = Duration::from_millis(250);
        assert!(!slow_link(Duration::from_millis(40), heartbeat));
        assert!(!slow_link(Duration::from_millis(187), heartbeat));
        assert!(slow_link(Duration::from_millis(188), heartbeat));
        assert!(slow_link(Duration::from_millis(180), Duration::from_millis(100)), "the chaos harness's slowest pair");
    }
}
