//! One client's session, whatever its transport (WebSocket or gRPC): the
//! requests it makes after `hello`, its subscriptions and their catch-up.
//!
//! A subscription starts with a history read on a node as the client's user
//! (so the node, not only the gateway, decides membership), then joins the
//! space's feed not yet live, and is caught up from the node's history and
//! the feed's buffer until it reaches the feed's head, where it turns live.
//! The seq the session queues next only ever grows by one per message, so
//! a client sees no gap and no duplicate, across resumes and replica
//! switches alike.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};

use crate::gateway::config::GatewayConfig;
use crate::gateway::fanout::{ClientHandle, Delivery, Fanout, GoLive, Outbound};
use crate::gateway::node_api::NodeApi;
use crate::gateway::protocol::{ClientRequest, ErrorCode, MessageView, ServerEvent, SpaceView};
use crate::pb;
use crate::space::validate;

/// Messages read per history call while catching a subscription up.
const CATCH_UP_READ_LEN: u32 = 1_000;
/// How long a catch-up waits for the feed to move before reading again.
const CATCH_UP_WAIT_MS: u64 = 250;
/// Unproductive history reads before catch-up reads from the leader.
const CATCH_UP_TRIES_BEFORE_LEADER: u32 = 4;
/// A catch-up that makes no progress for this long ends the subscription
/// with `unavailable` (the client subscribes again).
const CATCH_UP_STALLED_MS_MAX: u64 = 30_000;

/// What every session of a gateway shares.
pub struct Shared {
    pub region: String,
    pub api: NodeApi,
    pub fanout: Fanout,
    pub config: Arc<GatewayConfig>,
}

pub struct Session {
    shared: Arc<Shared>,
    client: ClientHandle,
    /// Subscribed spaces.
    spaces: BTreeSet<String>,
    posts: Arc<Semaphore>,
    send_wait: Duration,
}

/// A request's outcome when it fails: code and message for an error frame.
type Failure = (ErrorCode, String);

fn failure(status: &tonic::Status) -> Failure {
    (ErrorCode::from_status(status), crate::error::ApiError::from_status(status).to_string())
}

impl Session {
    pub fn new(shared: Arc<Shared>, client: ClientHandle) -> Session {
        let posts = Arc::new(Semaphore::new(shared.config.clients.posts_inflight_max.max(1)));
        let send_wait = Duration::from_millis(shared.config.clients.send_wait_ms_max);
        Session { shared, client, spaces: BTreeSet::new(), posts, send_wait }
    }

    /// Runs the session: welcome, the hello's cursors, then requests until
    /// the client leaves or is closed. Leaves every feed on the way out.
    pub async fn run(mut self, cursors: BTreeMap<String, u64>, mut requests: mpsc::Receiver<ClientRequest>) {
        let (spaces, listing_failed) = match self.shared.api.list_spaces(&self.client.user).await {
            Ok(spaces) => (spaces.into_iter().map(SpaceView::from).collect(), None),
            Err(status) => (Vec::new(), Some(failure(&status))),
        };
        let welcome = ServerEvent::Welcome {
            user: self.client.user.clone(),
            region: self.shared.region.clone(),
            spaces,
            gateways: self.shared.config.peer_gateways.clone(),
        };
        self.send(welcome).await;
        if let Some((code, message)) = listing_failed {
            self.send(ServerEvent::error(None, None, code, format!("listing spaces failed: {message}"))).await;
        }
        for (space, after) in cursors {
            if self.client.is_closed() {
                break;
            }
            self.subscribe(space, Some(after)).await;
        }
        let catch_up = self.client.catch_up.clone();
        loop {
            if self.client.is_closed() {
                break;
            }
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    self.handle(request).await;
                }
                _ = catch_up.notified() => self.catch_up_behind().await,
            }
        }
        for space in std::mem::take(&mut self.spaces) {
            self.shared.fanout.unsubscribe(&space, self.client.id);
        }
    }

    async fn send(&self, event: ServerEvent) -> bool {
        self.client.send(Outbound::Event(event), self.send_wait).await
    }

    async fn handle(&mut self, request: ClientRequest) {
        match request {
            ClientRequest::Hello { .. } => {
                self.client.close(crate::gateway::protocol::CloseReason::Protocol("hello sent twice".into()));
            }
            ClientRequest::Subscribe { space, after } => self.subscribe(space, after).await,
            ClientRequest::Unsubscribe { space } => {
                if self.spaces.remove(&space) {
                    self.shared.fanout.unsubscribe(&space, self.client.id);
                    self.send(ServerEvent::Unsubscribed { space }).await;
                } else {
                    let message = format!("not subscribed to space {space:?}");
                    self.send(ServerEvent::error(None, Some(&space), ErrorCode::NotSubscribed, message)).await;
                }
            }
            ClientRequest::Post { reference, space, body, key } => self.post(reference, space, body, key).await,
            ClientRequest::History { reference, space, from, limit } => {
                let event = match self.history(&space, from, limit).await {
                    Ok(response) => ServerEvent::History {
                        reference,
                        space,
                        messages: response.messages.iter().map(MessageView::from).collect(),
                        first_seq: response.first_seq,
                        last_seq: response.last_seq,
                    },
                    Err((code, message)) => ServerEvent::error(Some(&reference), Some(&space), code, message),
                };
                self.send(event).await;
            }
            ClientRequest::Spaces { reference } => {
                let event = match self.shared.api.list_spaces(&self.client.user).await {
                    Ok(spaces) => {
                        ServerEvent::Spaces { reference, spaces: spaces.into_iter().map(SpaceView::from).collect() }
                    }
                    Err(status) => {
                        let (code, message) = failure(&status);
                        ServerEvent::error(Some(&reference), None, code, message)
                    }
                };
                self.send(event).await;
            }
            ClientRequest::Ping { reference } => {
                self.send(ServerEvent::Pong { reference }).await;
            }
        }
    }

    /// Checks a space name and the gateway's view of membership.
    fn check_space(&self, space: &str) -> Result<(), Failure> {
        let limits = validate::Limits::default();
        validate::check_name("space name", space, &limits).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
        if self.shared.fanout.is_member(space, &self.client.user) == Some(false) {
            let message = format!("user {:?} is not a member of space {space:?}", self.client.user);
            return Err((ErrorCode::NotMember, message));
        }
        Ok(())
    }

    async fn history(&self, space: &str, from: u64, limit: u32) -> Result<pb::HistoryResponse, Failure> {
        self.check_space(space)?;
        // Linearizable: a read that starts after an ack at seq n reaches n,
        // whichever node serves it.
        self.read_from(space, from, limit, true).await
    }

    async fn post(&self, reference: String, space: String, body: String, key: String) {
        if let Err((code, message)) = self.check_space(&space) {
            self.send(ServerEvent::error(Some(&reference), Some(&space), code, message)).await;
            return;
        }
        let Ok(permit) = self.posts.clone().acquire_owned().await else { return };
        let api = self.shared.api.clone();
        let client = self.client.clone();
        let send_wait = self.send_wait;
        let request = pb::PostRequest { space: space.clone(), author: client.user.clone(), body, idempotency_key: key };
        // Posts run concurrently so a client can pipeline them; each answer
        // carries the client's ref.
        tokio::spawn(async move {
            let event = match api.post(request).await {
                Ok(response) => {
                    ServerEvent::Posted { reference, space, seq: response.seq, duplicate: response.duplicate }
                }
                Err(status) => {
                    let (code, message) = failure(&status);
                    ServerEvent::error(Some(&reference), Some(&space), code, message)
                }
            };
            client.send(Outbound::Event(event), send_wait).await;
            drop(permit);
        });
    }

    async fn subscribe(&mut self, space: String, after: Option<u64>) {
        if let Err((code, message)) = self.check_space(&space) {
            self.send(ServerEvent::error(None, Some(&space), code, message)).await;
            return;
        }
        if !self.spaces.contains(&space) && self.spaces.len() >= self.shared.config.clients.subscriptions_len_max {
            let message = format!("at most {} subscriptions", self.shared.config.clients.subscriptions_len_max);
            self.send(ServerEvent::error(None, Some(&space), ErrorCode::BadRequest, message)).await;
            return;
        }
        if self.spaces.remove(&space) {
            self.shared.fanout.unsubscribe(&space, self.client.id);
        }
        // The first read, as the client's user, decides membership at the
        // node and finds where to start.
        let from = match after {
            // From the first retained message: a fresh start, not a resume.
            Some(0) => 0,
            Some(after) => after.saturating_add(1),
            None => u64::MAX,
        };
        let (resumed, response) = match self.first_read(&space, from).await {
            Ok(response) => (true, response),
            Err((ErrorCode::Trimmed, _)) => match self.history(&space, 0, CATCH_UP_READ_LEN).await {
                Ok(response) => (false, response),
                Err((code, message)) => {
                    self.send(ServerEvent::error(None, Some(&space), code, message)).await;
                    return;
                }
            },
            Err((code, message)) => {
                self.send(ServerEvent::error(None, Some(&space), code, message)).await;
                return;
            }
        };
        let next_seq = match (resumed, after) {
            (false, _) | (true, Some(0)) => response.first_seq,
            (true, Some(_)) => from,
            (true, None) => response.last_seq + 1,
        };
        self.shared.fanout.subscribe(&space, &self.client, next_seq, response.last_seq + 1);
        self.spaces.insert(space.clone());
        let subscribed =
            ServerEvent::Subscribed { space: space.clone(), resumed, next_seq, last_seq: response.last_seq };
        if !self.send(subscribed).await {
            return;
        }
        let mut next = next_seq;
        for message in response.messages {
            if message.seq != next {
                break;
            }
            next += 1;
            if !self.client.send(Outbound::Deliver(Delivery::new(message)), self.send_wait).await {
                return;
            }
        }
        self.catch_up(&space, next, true).await;
    }

    /// The first read of a subscription, retried while the failure is
    /// transient (no leader during an election, a node unreachable), up to
    /// [`CATCH_UP_STALLED_MS_MAX`]: a client's subscription survives a
    /// failover instead of failing with it.
    async fn first_read(&self, space: &str, from: u64) -> Result<pb::HistoryResponse, Failure> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(CATCH_UP_STALLED_MS_MAX);
        loop {
            match self.history(space, from, CATCH_UP_READ_LEN).await {
                Err((ErrorCode::Unavailable, message))
                    if tokio::time::Instant::now() < deadline && !self.client.is_closed() =>
                {
                    tracing::debug!(space, %message, "first read of a subscription failed; trying again");
                    self.wait_for_feed().await;
                }
                done => return done,
            }
        }
    }

    /// Subscriptions the feed found behind (a jump in the feed): catch up.
    async fn catch_up_behind(&mut self) {
        let spaces: Vec<String> = self.spaces.iter().cloned().collect();
        for (space, next) in self.shared.fanout.behind(self.client.id, &spaces) {
            self.catch_up(&space, next, false).await;
        }
    }

    /// Queues what the subscription misses from `next` on, until it is live.
    /// A history read that makes no progress (the node read from is behind,
    /// or unreachable) is retried, from the leader after a few tries, and
    /// given up with an `unavailable` error after [`CATCH_UP_STALLED_MS_MAX`].
    async fn catch_up(&mut self, space: &str, mut next: u64, announce: bool) {
        let mut unproductive = 0u32;
        let mut stalled_since: Option<tokio::time::Instant> = None;
        loop {
            if self.client.is_closed() {
                return;
            }
            if let Some(since) = stalled_since {
                if since.elapsed() >= Duration::from_millis(CATCH_UP_STALLED_MS_MAX) {
                    let message = format!("could not read space {space:?} from seq {next}; subscribe again");
                    self.end_subscription(space, ErrorCode::Unavailable, message).await;
                    return;
                }
            }
            match self.shared.fanout.go_live(space, self.client.id, next, announce) {
                GoLive::Live { .. } | GoLive::Gone => return,
                GoLive::Wait => {
                    // Room comes when the client reads.
                    if !self.client.wait_for_room(self.send_wait).await {
                        return;
                    }
                }
                GoLive::Buffered(deliveries) => {
                    for delivery in deliveries {
                        debug_assert_eq!(delivery.message.seq, next, "catch-up must not skip or repeat a seq");
                        next = delivery.message.seq + 1;
                        if !self.client.send(Outbound::Deliver(delivery), self.send_wait).await {
                            return;
                        }
                    }
                }
                GoLive::NeedHistory => {
                    let from_leader = unproductive >= CATCH_UP_TRIES_BEFORE_LEADER;
                    let response = match self.read_from(space, next, CATCH_UP_READ_LEN, from_leader).await {
                        Ok(response) => response,
                        Err((ErrorCode::Trimmed, _)) => {
                            // Retention overtook the cursor: say so, restart
                            // at the first retained seq.
                            let Ok(first) = self.read_from(space, 0, 1, false).await else {
                                stalled_since.get_or_insert_with(tokio::time::Instant::now);
                                self.wait_for_feed().await;
                                continue;
                            };
                            next = first.first_seq;
                            let event = ServerEvent::Subscribed {
                                space: space.to_string(),
                                resumed: false,
                                next_seq: next,
                                last_seq: first.last_seq,
                            };
                            if !self.send(event).await {
                                return;
                            }
                            continue;
                        }
                        Err((ErrorCode::Unavailable, message)) => {
                            tracing::debug!(space, %message, "catch-up read failed; trying again");
                            unproductive += 1;
                            stalled_since.get_or_insert_with(tokio::time::Instant::now);
                            self.wait_for_feed().await;
                            continue;
                        }
                        Err((code, message)) => {
                            self.end_subscription(space, code, message).await;
                            return;
                        }
                    };
                    let mut progressed = false;
                    for message in response.messages {
                        if message.seq != next {
                            break;
                        }
                        next += 1;
                        progressed = true;
                        if !self.client.send(Outbound::Deliver(Delivery::new(message)), self.send_wait).await {
                            return;
                        }
                    }
                    if progressed {
                        unproductive = 0;
                        stalled_since = None;
                    } else {
                        // The node read from is behind the feed: give it a
                        // moment, then ask the leader.
                        unproductive += 1;
                        stalled_since.get_or_insert_with(tokio::time::Instant::now);
                        self.wait_for_feed().await;
                    }
                }
            }
        }
    }

    async fn end_subscription(&mut self, space: &str, code: ErrorCode, message: String) {
        self.spaces.remove(space);
        self.shared.fanout.unsubscribe(space, self.client.id);
        self.send(ServerEvent::error(None, Some(space), code, message)).await;
    }

    /// A history read for catch-up as the client's user; `from_leader`
    /// makes it linearizable, served after a read index on the leader.
    async fn read_from(
        &self,
        space: &str,
        from: u64,
        limit: u32,
        from_leader: bool,
    ) -> Result<pb::HistoryResponse, Failure> {
        let request = pb::HistoryRequest {
            space: space.to_string(),
            user: self.client.user.clone(),
            from_seq: from,
            limit,
            linearizable: from_leader,
        };
        self.shared.api.history(request).await.map_err(|status| failure(&status))
    }

    async fn wait_for_feed(&self) {
        tokio::time::sleep(Duration::from_millis(CATCH_UP_WAIT_MS)).await;
    }
}
