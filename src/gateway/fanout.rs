//! Fan-out: the committed messages of the spaces this gateway follows, and
//! the connected clients subscribed to each.
//!
//! Invariants:
//! - A feed accepts seq `next_seq` only, so messages from two upstreams (or
//!   from the old and new replica during a switch) are deduped by (space,
//!   seq) and a feed never moves backwards.
//! - A live subscriber receives seq s only when s is its own next seq: no
//!   gap, no duplicate. A subscriber that is behind (resuming, or after a gap)
//!   is not live; its session catches it up from the feed's buffer or the
//!   node's history and only then makes it live again.
//! - Each message is encoded once (a JSON frame shared by every WebSocket
//!   client) and offered to each client's bounded queue without waiting: a
//!   full queue closes that client as a slow consumer, never slowing others.
//!
//! Pure logic: no sockets; the upstream and the sessions drive it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch, Notify};

use crate::gateway::protocol::{CloseReason, ErrorCode, MessageView, ServerEvent};
use crate::pb;

/// A committed message ready to send: the message and its JSON frame,
/// encoded once for all WebSocket clients.
#[derive(Debug)]
pub struct Delivery {
    pub message: pb::Message,
    pub json: Utf8Bytes,
}

impl Delivery {
    pub fn new(message: pb::Message) -> Arc<Delivery> {
        let json = ServerEvent::Message(MessageView::from(&message)).to_json();
        Arc::new(Delivery { message, json: Utf8Bytes::from(json) })
    }
}

/// What a client's writer sends, in order.
#[derive(Debug)]
pub enum Outbound {
    Deliver(Arc<Delivery>),
    Event(ServerEvent),
}

/// The gateway's handle on one connected client: its bounded send queue
/// and the switch that closes it.
#[derive(Clone)]
pub struct ClientHandle {
    pub id: u64,
    pub user: String,
    queue: mpsc::Sender<Outbound>,
    close: Arc<watch::Sender<Option<CloseReason>>>,
    /// Woken when a subscription of this client fell behind and its session
    /// must catch it up.
    pub catch_up: Arc<Notify>,
}

/// The receiving ends a transport needs for one client.
pub struct ClientEnds {
    pub queue: mpsc::Receiver<Outbound>,
    pub close: watch::Receiver<Option<CloseReason>>,
}

impl ClientHandle {
    pub fn new(id: u64, user: String, queue_len_max: usize) -> (ClientHandle, ClientEnds) {
        let (queue, queue_receiver) = mpsc::channel(queue_len_max.max(1));
        let (close, close_receiver) = watch::channel(None);
        let handle = ClientHandle { id, user, queue, close: Arc::new(close), catch_up: Arc::new(Notify::new()) };
        (handle, ClientEnds { queue: queue_receiver, close: close_receiver })
    }

    /// Queues without waiting. A full queue closes the client as a slow
    /// consumer; returns whether the item was queued.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.queue.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Queues, waiting up to `wait` until the queue has room for this item
    /// and still `reserve` free slots after it: what a session sends (backlog,
    /// replies) must not fill the queue that live fan-out offers to without
    /// waiting. A client that does not make room in time is closed as a slow
    /// consumer.
    pub async fn send(&self, item: Outbound, wait: std::time::Duration) -> bool {
        let reserve = self.reserve();
        match tokio::time::timeout(wait, self.queue.reserve_many(reserve + 1)).await {
            Ok(Ok(mut permits)) => {
                permits.next().expect("one permit at least").send(item);
                true
            }
            Ok(Err(_)) => false,
            Err(_) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
        }
    }

    /// Waits up to `wait` until the queue has room beyond the live reserve;
    /// closes the client as a slow consumer if it never does.
    pub async fn wait_for_room(&self, wait: std::time::Duration) -> bool {
        let wanted = self.reserve() + 2;
        match tokio::time::timeout(wait, self.queue.reserve_many(wanted.min(self.queue.max_capacity()))).await {
            Ok(Ok(_permits)) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.close(CloseReason::SlowConsumer);
                false
            }
        }
    }

    /// Queue slots kept free for live fan-out: half the queue.
    fn reserve(&self) -> usize {
        self.queue.max_capacity() / 2
    }

    /// Whether `len` more items fit while keeping the live reserve free.
    fn has_room_for(&self, len: usize) -> bool {
        self.queue.capacity() >= len + self.reserve()
    }

    /// Closes the connection; the first reason wins.
    pub fn close(&self, reason: CloseReason) {
        self.close.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Changes when the connection is to be closed.
    pub fn close_requested(&self) -> watch::Receiver<Option<CloseReason>> {
        self.close.subscribe()
    }

    pub fn is_closed(&self) -> bool {
        self.close.borrow().is_some() || self.queue.is_closed()
    }
}

/// Resolves once a close of the client is decided.
pub async fn close_decided(close: &mut watch::Receiver<Option<CloseReason>>) {
    let _ = close.wait_for(|reason| reason.is_some()).await.map(|_| ());
}

struct Subscriber {
    client: ClientHandle,
    /// The next seq this client must receive.
    next_seq: u64,
    live: bool,
}

struct SpaceFeed {
    /// Members as the replica reported them; None until the first Watching.
    members: Option<HashSet<String>>,
    /// The next seq the feed accepts. Set when the feed is created from what
    /// the first subscriber's history read found, so every watch an upstream
    /// sends carries a real cursor.
    next_seq: u64,
    /// The newest messages, for subscribers that resume close to the head.
    recent: VecDeque<Arc<Delivery>>,
    subscribers: HashMap<u64, Subscriber>,
    /// Unique per feed created, so an upstream can tell a feed dropped and
    /// created again (with another cursor) from the one it watched.
    generation: u64,
}

/// Where a followed space's feed stands, for an upstream's watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedCursor {
    pub space: String,
    pub next_seq: u64,
    pub generation: u64,
}

impl SpaceFeed {
    fn new(next_seq: u64, generation: u64) -> SpaceFeed {
        SpaceFeed { generation, members: None, next_seq, recent: VecDeque::new(), subscribers: HashMap::new() }
    }

    fn buffer_start(&self) -> u64 {
        self.recent.front().map(|delivery| delivery.message.seq).unwrap_or(self.next_seq)
    }
}

/// What a session should do next to make a subscriber live.
#[derive(Debug)]
pub enum GoLive {
    /// Live now; everything up to `last_seq` was queued.
    Live { last_seq: u64 },
    /// Send these (from the feed's buffer) first, then ask again.
    Buffered(Vec<Arc<Delivery>>),
    /// The feed's buffer does not reach back to the cursor: read the node's
    /// history from the cursor.
    NeedHistory,
    /// The client's queue is too full to turn live beside its reserve: let
    /// its writer drain, then ask again.
    Wait,
    /// The subscription is gone (unsubscribed, or the client closed).
    Gone,
}

/// Buffered messages a subscriber may be handed under the lock at once when
/// it turns live; more are sent by its session with backpressure first.
const LIVE_SWITCH_LEN_MAX: usize = 64;

/// The feeds of one gateway. Cheap to clone.
#[derive(Clone)]
pub struct Fanout {
    inner: Arc<FanoutInner>,
}

struct FanoutInner {
    feeds: Mutex<HashMap<String, SpaceFeed>>,
    /// Bumped whenever the set of followed spaces changes; upstreams watch it.
    spaces_version: watch::Sender<u64>,
    recent_len_max: usize,
    feeds_created: std::sync::atomic::AtomicU64,
}

/// Counters of what the feeds did, for status and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublishOutcome {
    pub accepted: usize,
    pub duplicates: usize,
    pub gaps: usize,
}

impl Fanout {
    pub fn new(recent_len_max: usize) -> Fanout {
        Fanout {
            inner: Arc::new(FanoutInner {
                feeds: Mutex::new(HashMap::new()),
                spaces_version: watch::channel(0).0,
                recent_len_max,
                feeds_created: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    fn feeds(&self) -> std::sync::MutexGuard<'_, HashMap<String, SpaceFeed>> {
        self.inner.feeds.lock().expect("fanout lock")
    }

    fn bump_spaces(&self) {
        self.inner.spaces_version.send_modify(|version| *version += 1);
    }

    /// Changes whenever a space is added to or removed from the feeds.
    pub fn spaces_changed(&self) -> watch::Receiver<u64> {
        self.inner.spaces_version.subscribe()
    }

    /// The followed spaces and the next seq each feed needs.
    pub fn cursors(&self) -> Vec<FeedCursor> {
        self.feeds()
            .iter()
            .map(|(space, feed)| FeedCursor {
                space: space.clone(),
                next_seq: feed.next_seq,
                generation: feed.generation,
            })
            .collect()
    }

    /// Adds a (not yet live) subscriber at `next_seq`. When the space is not
    /// followed yet its feed starts at `feed_next_seq` (the head a history
    /// read just found) and the upstreams are asked to follow it.
    pub fn subscribe(&self, space: &str, client: &ClientHandle, next_seq: u64, feed_next_seq: u64) {
        debug_assert!(feed_next_seq >= 1, "a feed starts at a real seq");
        let mut feeds = self.feeds();
        let created = !feeds.contains_key(space);
        let feed = feeds.entry(space.to_string()).or_insert_with(|| {
            let generation = self.inner.feeds_created.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            SpaceFeed::new(feed_next_seq.max(1), generation)
        });
        feed.subscribers.insert(client.id, Subscriber { client: client.clone(), next_seq, live: false });
        drop(feeds);
        if created {
            self.bump_spaces();
        }
    }

    /// Removes a subscriber; a feed without subscribers is dropped and no
    /// longer followed.
    pub fn unsubscribe(&self, space: &str, client_id: u64) {
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get_mut(space) else { return };
        feed.subscribers.remove(&client_id);
        let empty = feed.subscribers.is_empty();
        if empty {
            feeds.remove(space);
        }
        drop(feeds);
        if empty {
            self.bump_spaces();
        }
    }

    /// Whether `user` is a member, as the replica reported; None until known.
    pub fn is_member(&self, space: &str, user: &str) -> Option<bool> {
        let feeds = self.feeds();
        let members = feeds.get(space)?.members.as_ref()?;
        Some(members.contains(user))
    }

    /// The replica answered a watch. A start past the feed's cursor is a
    /// discontinuity (retention trimmed what the feed needed): the feed jumps
    /// there and its buffer is dropped; behind subscribers find out from
    /// history.
    ///
    /// A watching answer also carries the members: subscribers no longer
    /// among them get a `not_member` error and are dropped, before any
    /// message committed after their removal reaches the feed.
    pub fn on_watching(&self, watching: &pb::Watching) {
        let Some(info) = watching.space.as_ref() else { return };
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get_mut(&info.name) else { return };
        let members: HashSet<String> = info.members.iter().cloned().collect();
        feed.subscribers.retain(|_, subscriber| {
            if members.contains(&subscriber.client.user) {
                return true;
            }
            let message = format!("user {:?} is not a member of space {:?}", subscriber.client.user, info.name);
            subscriber.client.offer(Outbound::Event(ServerEvent::error(
                None,
                Some(&info.name),
                ErrorCode::NotMember,
                message,
            )));
            false
        });
        feed.members = Some(members);
        if feed.subscribers.is_empty() {
            feeds.remove(&info.name);
            drop(feeds);
            self.bump_spaces();
            return;
        }
        if watching.next_seq > feed.next_seq {
            tracing::warn!(space = %info.name, from = feed.next_seq, to = watching.next_seq, "feed jumped: history trimmed");
            feed.next_seq = watching.next_seq;
            feed.recent.clear();
            for subscriber in feed.subscribers.values_mut() {
                if subscriber.live && subscriber.next_seq < feed.next_seq {
                    subscriber.live = false;
                    subscriber.client.catch_up.notify_one();
                }
            }
        }
    }

    /// Ends every subscription of a space that is gone (deleted): each
    /// subscriber gets an error event, and the feed is dropped.
    pub fn end_space(&self, space: &str, code: ErrorCode, message: &str) {
        let Some(feed) = self.feeds().remove(space) else { return };
        for subscriber in feed.subscribers.values() {
            let event = ServerEvent::error(None, Some(space), code, message.to_string());
            subscriber.client.offer(Outbound::Event(event));
        }
        self.bump_spaces();
    }

    /// Takes committed messages from an upstream and fans them out.
    pub fn publish(&self, messages: Vec<pb::Message>) -> PublishOutcome {
        let mut outcome = PublishOutcome::default();
        let mut feeds = self.feeds();
        for message in messages {
            let Some(feed) = feeds.get_mut(&message.space) else { continue };
            if message.seq < feed.next_seq {
                outcome.duplicates += 1;
                continue;
            }
            if message.seq > feed.next_seq {
                // Cannot happen while every upstream starts at the feed's
                // cursor; if it does, live subscribers notice the jump and
                // catch up from history rather than skip.
                tracing::warn!(space = %message.space, expected = feed.next_seq, got = message.seq, "gap in upstream");
                outcome.gaps += 1;
                feed.recent.clear();
            }
            outcome.accepted += 1;
            let seq = message.seq;
            feed.next_seq = seq + 1;
            let delivery = Delivery::new(message);
            if feed.recent.len() >= self.inner.recent_len_max.max(1) {
                feed.recent.pop_front();
            }
            feed.recent.push_back(delivery.clone());
            let members = feed.members.as_ref();
            let space = delivery.message.space.as_str();
            feed.subscribers.retain(|_, subscriber| {
                if !subscriber.live {
                    return !subscriber.client.is_closed();
                }
                if members.is_some_and(|members| !members.contains(&subscriber.client.user)) {
                    let message = format!("user {:?} is not a member of space {:?}", subscriber.client.user, space);
                    let event = ServerEvent::error(None, Some(space), ErrorCode::NotMember, message);
                    subscriber.client.offer(Outbound::Event(event));
                    return false;
                }
                if seq < subscriber.next_seq {
                    return true;
                }
                if seq > subscriber.next_seq {
                    subscriber.live = false;
                    subscriber.client.catch_up.notify_one();
                    return true;
                }
                if !subscriber.client.offer(Outbound::Deliver(delivery.clone())) {
                    return false;
                }
                subscriber.next_seq = seq + 1;
                true
            });
        }
        outcome
    }

    /// Tries to make a subscriber live at `next_seq` (the next seq its
    /// session has not yet queued). When `announce`, `caught_up` is queued
    /// under the lock, before any live message.
    pub fn go_live(&self, space: &str, client_id: u64, next_seq: u64, announce: bool) -> GoLive {
        let mut feeds = self.feeds();
        let Some(feed) = feeds.get_mut(space) else { return GoLive::Gone };
        let feed_next_seq = feed.next_seq;
        let buffer_start = feed.buffer_start();
        let buffered: Vec<Arc<Delivery>> = if next_seq >= feed_next_seq || next_seq < buffer_start {
            Vec::new()
        } else {
            feed.recent.iter().filter(|delivery| delivery.message.seq >= next_seq).cloned().collect()
        };
        let Some(subscriber) = feed.subscribers.get_mut(&client_id) else { return GoLive::Gone };
        if next_seq < buffer_start {
            return GoLive::NeedHistory;
        }
        // Hand over the rest under the lock only when it is short and fits
        // beside the live reserve; else the session sends it with
        // backpressure and asks again.
        if buffered.len() > LIVE_SWITCH_LEN_MAX || !subscriber.client.has_room_for(buffered.len() + 1) {
            if buffered.is_empty() {
                return GoLive::Wait;
            }
            return GoLive::Buffered(buffered);
        }
        for delivery in buffered {
            if !subscriber.client.offer(Outbound::Deliver(delivery)) {
                return GoLive::Gone;
            }
        }
        subscriber.next_seq = next_seq.max(feed_next_seq);
        let last_seq = subscriber.next_seq - 1;
        if announce
            && !subscriber.client.offer(Outbound::Event(ServerEvent::CaughtUp { space: space.to_string(), last_seq }))
        {
            return GoLive::Gone;
        }
        subscriber.live = true;
        GoLive::Live { last_seq }
    }

    /// The subscriptions of a client that are not live, with the seq each
    /// must resume from.
    pub fn behind(&self, client_id: u64, spaces: &[String]) -> Vec<(String, u64)> {
        let feeds = self.feeds();
        spaces
            .iter()
            .filter_map(|space| {
                let subscriber = feeds.get(space)?.subscribers.get(&client_id)?;
                (!subscriber.live).then(|| (space.clone(), subscriber.next_seq))
            })
            .collect()
    }

    /// Feeds and subscriptions, for status.
    pub fn counts(&self) -> (usize, usize) {
        let feeds = self.feeds();
        (feeds.len(), feeds.values().map(|feed| feed.subscribers.len()).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(space: &str, seq: u64) -> pb::Message {
        pb::Message {
            space: space.into(),
            seq,
            author: "bob".into(),
            body: format!("m{seq}"),
            idempotency_key: String::new(),
            log_index: seq,
        }
    }

    fn watching(space: &str, next_seq: u64, members: &[&str]) -> pb::Watching {
        pb::Watching {
            space: Some(pb::SpaceInfo {
                name: space.into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                ..Default::default()
            }),
            next_seq,
            resumed: true,
        }
    }

    fn drain(ends: &mut ClientEnds) -> Vec<u64> {
        let mut seqs = Vec::new();
        while let Ok(item) = ends.queue.try_recv() {
            if let Outbound::Deliver(delivery) = item {
                seqs.push(delivery.message.seq);
            }
        }
        seqs
    }

    #[tokio::test]
    async fn two_upstreams_are_deduped_by_seq() {
        let fanout = Fanout::new(16);
        let (alice, mut ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        assert!(matches!(fanout.go_live("general", 1, 1, false), GoLive::Live { last_seq: 0 }));
        let first = fanout.publish(vec![message("general", 1), message("general", 2)]);
        let second = fanout.publish(vec![message("general", 1), message("general", 2), message("general", 3)]);
        assert_eq!(first.accepted + second.accepted, 3);
        assert_eq!(second.duplicates, 2);
        assert_eq!(drain(&mut ends), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_resuming_subscriber_is_served_from_the_buffer_then_live() {
        let fanout = Fanout::new(16);
        let (bob, _) = ClientHandle::new(2, "bob".into(), 64);
        fanout.subscribe("general", &bob, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice", "bob"]));
        fanout.publish((1..=5).map(|seq| message("general", seq)).collect());
        let (alice, mut ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 3, 1);
        assert!(matches!(fanout.go_live("general", 1, 3, false), GoLive::Live { last_seq: 5 }));
        fanout.publish(vec![message("general", 6)]);
        assert_eq!(drain(&mut ends), vec![3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_cursor_behind_the_buffer_needs_history() {
        let fanout = Fanout::new(4);
        let (alice, _ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        fanout.publish((1..=10).map(|seq| message("general", seq)).collect());
        assert!(matches!(fanout.go_live("general", 1, 2, false), GoLive::NeedHistory));
        assert!(matches!(fanout.go_live("general", 1, 7, false), GoLive::Live { last_seq: 10 }));
    }

    #[tokio::test]
    async fn a_full_queue_closes_only_that_client() {
        let fanout = Fanout::new(16);
        let (slow, slow_ends) = ClientHandle::new(1, "alice".into(), 2);
        let (fast, mut fast_ends) = ClientHandle::new(2, "bob".into(), 64);
        for client in [&slow, &fast] {
            fanout.subscribe("general", client, 1, 1);
        }
        fanout.on_watching(&watching("general", 1, &["alice", "bob"]));
        for client in [&slow, &fast] {
            assert!(matches!(fanout.go_live("general", client.id, 1, false), GoLive::Live { .. }));
        }
        fanout.publish((1..=10).map(|seq| message("general", seq)).collect());
        assert_eq!(*slow_ends.close.borrow(), Some(CloseReason::SlowConsumer));
        assert_eq!(drain(&mut fast_ends), (1..=10).collect::<Vec<_>>());
        assert_eq!(fanout.counts(), (1, 1), "the slow client was dropped from the feed");
    }

    #[tokio::test]
    async fn a_feed_created_again_is_a_new_generation() {
        let fanout = Fanout::new(16);
        let (alice, _ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 1, 5);
        let first = fanout.cursors();
        fanout.unsubscribe("general", 1);
        assert!(fanout.cursors().is_empty());
        fanout.subscribe("general", &alice, 1, 9);
        let second = fanout.cursors();
        assert_eq!((first[0].next_seq, second[0].next_seq), (5, 9));
        assert_ne!(first[0].generation, second[0].generation);
    }

    #[tokio::test]
    async fn a_backlog_never_takes_the_room_live_messages_need() {
        let fanout = Fanout::new(16);
        let (alice, mut ends) = ClientHandle::new(1, "alice".into(), 8);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        // A backlog fills the queue up to its live reserve (half of it)...
        let wait = std::time::Duration::from_millis(50);
        for seq in 1..=4 {
            assert!(alice.send(Outbound::Deliver(Delivery::new(message("general", seq))), wait).await);
        }
        // ...and no further: one more waits, then closes a client that never reads.
        let (stuck, _stuck_ends) = ClientHandle::new(2, "bob".into(), 8);
        for seq in 1..=4 {
            assert!(stuck.send(Outbound::Deliver(Delivery::new(message("general", seq))), wait).await);
        }
        assert!(!stuck.send(Outbound::Deliver(Delivery::new(message("general", 5))), wait).await);
        assert!(stuck.is_closed());
        // Turning live waits for room beside the reserve.
        assert!(matches!(fanout.go_live("general", 1, 1, true), GoLive::Wait));
        ends.queue.try_recv().unwrap();
        ends.queue.try_recv().unwrap();
        assert!(matches!(fanout.go_live("general", 1, 1, true), GoLive::Live { last_seq: 0 }));
        // caught_up is queued before any live message.
        fanout.publish(vec![message("general", 1), message("general", 2)]);
        let mut kinds = Vec::new();
        while let Ok(item) = ends.queue.try_recv() {
            kinds.push(match item {
                Outbound::Deliver(delivery) => format!("m{}", delivery.message.seq),
                Outbound::Event(ServerEvent::CaughtUp { .. }) => "caught_up".to_string(),
                Outbound::Event(other) => format!("{other:?}"),
            });
        }
        assert_eq!(kinds, ["m3", "m4", "caught_up", "m1", "m2"]);
        assert!(!alice.is_closed(), "live offers had room");
    }

    #[tokio::test]
    async fn a_non_member_receives_nothing() {
        let fanout = Fanout::new(16);
        let (mallory, mut ends) = ClientHandle::new(1, "mallory".into(), 64);
        fanout.subscribe("general", &mallory, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        assert!(matches!(fanout.go_live("general", 1, 1, false), GoLive::Gone), "dropped at the watching answer");
        fanout.publish(vec![message("general", 1)]);
        assert!(drain(&mut ends).is_empty());
    }

    /// Kinds of what a client was queued: "m<seq>", or an error's code.
    fn kinds(ends: &mut ClientEnds) -> Vec<String> {
        let mut kinds = Vec::new();
        while let Ok(item) = ends.queue.try_recv() {
            kinds.push(match item {
                Outbound::Deliver(delivery) => format!("m{}", delivery.message.seq),
                Outbound::Event(ServerEvent::Error { code, .. }) => code.as_str().to_string(),
                Outbound::Event(other) => format!("{other:?}"),
            });
        }
        kinds
    }

    #[tokio::test]
    async fn a_removed_member_gets_not_member_and_nothing_posted_after() {
        let fanout = Fanout::new(16);
        let (alice, mut alice_ends) = ClientHandle::new(1, "alice".into(), 64);
        let (bob, mut bob_ends) = ClientHandle::new(2, "bob".into(), 64);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.subscribe("general", &bob, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice", "bob"]));
        let _ = fanout.go_live("general", 1, 1, false);
        let _ = fanout.go_live("general", 2, 1, false);
        fanout.publish(vec![message("general", 1)]);
        fanout.on_watching(&watching("general", 2, &["alice"]));
        fanout.publish(vec![message("general", 2)]);
        assert_eq!(kinds(&mut alice_ends), ["m1", "m2"]);
        assert_eq!(kinds(&mut bob_ends), ["m1", "not_member"]);
    }

    #[tokio::test]
    async fn a_deleted_space_ends_every_subscription() {
        let fanout = Fanout::new(16);
        let (alice, mut ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        let _ = fanout.go_live("general", 1, 1, false);
        let mut spaces = fanout.spaces_changed();
        spaces.borrow_and_update();
        fanout.end_space("general", ErrorCode::Deleted, "space \"general\" was deleted");
        assert!(spaces.has_changed().unwrap(), "upstreams stop following it");
        assert!(fanout.cursors().is_empty());
        fanout.publish(vec![message("general", 1)]);
        assert_eq!(kinds(&mut ends), ["deleted"]);
    }

    #[tokio::test]
    async fn a_jump_in_the_feed_sends_live_subscribers_back_to_history() {
        let fanout = Fanout::new(16);
        let (alice, ends) = ClientHandle::new(1, "alice".into(), 64);
        fanout.subscribe("general", &alice, 1, 1);
        fanout.on_watching(&watching("general", 1, &["alice"]));
        let _ = fanout.go_live("general", 1, 1, false);
        fanout.publish(vec![message("general", 1)]);
        fanout.publish(vec![message("general", 3)]);
        assert_eq!(fanout.behind(1, &["general".to_string()]), vec![("general".to_string(), 2)]);
        drop(ends);
    }
}
