//! The `Follow` stream a gateway opens on a node: many spaces, of any space
//! clusters the node hosts, over one stream, each with its own cursor.
//!
//! Invariant: for every watched space the messages sent are exactly the
//! committed seqs from the cursor on, in order, once each. A read that finds
//! fewer messages than the space record promises (a gap: a restore in
//! progress) stops before the gap and looks again after the next apply.
//! A progress event goes out at a fixed interval whatever happens, so the
//! gateway can tell a dead or lagging replica from an idle space.
//!
//! A space whose cluster this node does not host is followed through a node
//! that hosts it ([`Relays`]): one Follow stream per such node, its events
//! passed on as they come, so a gateway can follow every space through any
//! one node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::META_GROUP_ID;
use crate::node::host::Host;
use crate::node::read::{off_runtime, wire_message};
use crate::pb;
use crate::pb::follow_event::Event;
use crate::storage::state_machine::SpaceReader;

/// Requests queued into one relay stream.
const RELAY_REQUESTS_LEN_MAX: usize = 4096;
/// Messages read per space per step, and per batch event at most.
const FOLLOW_READ_LEN: usize = 512;

type EventSender = mpsc::Sender<Result<pb::FollowEvent, ApiError>>;

/// What one follow session needs to know about where it runs.
pub struct FollowContext {
    pub node_id: u64,
    pub region: String,
    pub host: Arc<Host>,
    pub progress_interval: Duration,
}

/// A watched space's cursor: the next seq to send, the replica of the
/// space's cluster it is read from, and a digest of the members last told
/// to the gateway (a change is sent as a new `Watching`).
struct Cursor {
    next: u64,
    reader: SpaceReader,
    cluster: u64,
    members: u64,
}

type Cursors = BTreeMap<String, Cursor>;

fn members_digest(members: &std::collections::BTreeSet<String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    members.hash(&mut hasher);
    hasher.finish()
}

fn watching(record: crate::space::SpaceRecord, cluster: u64, next_seq: u64, resumed: bool) -> pb::FollowEvent {
    let space = pb::SpaceInfo {
        name: record.name,
        members: record.members.into_iter().collect(),
        attrs: record.attrs.into_iter().collect(),
        cluster_id: cluster,
        first_seq: record.first_seq,
        last_seq: record.last_seq,
    };
    pb::FollowEvent { event: Some(Event::Watching(pb::Watching { space: Some(space), next_seq, resumed })) }
}

/// Serves one follow stream until the gateway hangs up.
pub async fn serve(
    context: FollowContext,
    mut requests: impl futures::Stream<Item = Result<pb::FollowRequest, ApiError>> + Unpin + Send,
    sender: EventSender,
) {
    let mut applied = context.host.applied_any();
    let mut cursors = Cursors::new();
    let mut relays =
        Relays { host: context.host.clone(), sender: sender.clone(), streams: HashMap::new(), spaces: HashMap::new() };
    let mut progress = tokio::time::interval(context.progress_interval);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the last pump stopped at its length bound, or a watch was added,
    // so it must run again without waiting for a new apply.
    let mut more = false;
    loop {
        tokio::select! {
            biased;
            _ = sender.closed() => return,
            request = requests.next() => {
                let Some(Ok(request)) = request else { return };
                match request.request {
                    Some(pb::follow_request::Request::Watch(watch)) => {
                        relays.unwatch(&watch.space);
                        match start_watch(&context.host, &watch).await {
                            Ok(Start::Here(cursor, event)) => {
                                cursors.insert(watch.space, cursor);
                                if sender.send(Ok(event)).await.is_err() {
                                    return;
                                }
                                more = true;
                            }
                            Ok(Start::Elsewhere(cluster)) => {
                                cursors.remove(&watch.space);
                                if let Err(event) = relays.watch(watch, cluster).await {
                                    if sender.send(Ok(event)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(event) => {
                                cursors.remove(&watch.space);
                                if sender.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Some(pb::follow_request::Request::Unwatch(unwatch)) => {
                        relays.unwatch(&unwatch.space);
                        cursors.remove(&unwatch.space);
                    }
                    Some(pb::follow_request::Request::Report(report)) => context.host.gateway_reported(report),
                    None => {}
                }
            }
            _ = progress.tick() => {
                // A drained node serves no gateway: ending the stream sends
                // the gateway to another replica, from its cursors.
                if context.host.is_drained() {
                    return;
                }
                let (applied_index, has_leader, applied_by_cluster) = progress_of(&context.host);
                let event = pb::FollowEvent {
                    event: Some(Event::Progress(pb::Progress {
                        node_id: context.node_id,
                        region: context.region.clone(),
                        applied_index,
                        has_leader,
                        applied_by_cluster,
                    })),
                };
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            changed = applied.changed(), if !more => {
                if changed.is_err() {
                    return;
                }
                more = true;
            }
            _ = std::future::ready(()), if more => {
                applied.borrow_and_update();
                match pump(&context.host, &mut cursors, &sender).await {
                    Ok(again) => more = again,
                    Err(()) => return,
                }
            }
        }
    }
}

/// Progress over the space clusters hosted here: the sum of their applied
/// indexes (comparable between nodes that host the same clusters, the
/// figure a gateway's health probe reads too, and growing with every
/// apply), and whether every one of them knows a leader.
fn progress_of(host: &Host) -> (u64, bool, HashMap<u64, u64>) {
    let (mut applied_index, mut has_leader, mut by_cluster) = (0, true, HashMap::new());
    for group in host.groups.all().iter().filter(|group| group.id != META_GROUP_ID) {
        let metrics = group.raft.metrics();
        let current = metrics.borrow_watched();
        let applied = current.last_applied.as_ref().map(|id| id.index()).unwrap_or(0);
        applied_index += applied;
        by_cluster.insert(group.id, applied);
        has_leader &= current.current_leader.is_some();
    }
    (applied_index, has_leader, by_cluster)
}

/// Where a watch is served from.
enum Start {
    /// Here: where to start, and the answer.
    Here(Cursor, pb::FollowEvent),
    /// Through a node that hosts this cluster.
    Elsewhere(u64),
}

/// Answers a watch: where delivery starts and the replica it reads, or why
/// it cannot.
async fn start_watch(host: &Host, watch: &pb::Watch) -> Result<Start, pb::FollowEvent> {
    let cluster = match host.placement_fresh(&watch.space).await {
        Ok(placement) => placement.cluster,
        Err(error) if error.kind == ErrorKind::NotFound && host.is_deleted(&watch.space).await.unwrap_or(false) => {
            return Err(ended(&watch.space, "deleted", "the space was deleted", 0))
        }
        Err(error) if error.kind == ErrorKind::NotFound => {
            return Err(ended(&watch.space, "unknown_space", "space does not exist", 0))
        }
        Err(error) => return Err(ended(&watch.space, "unavailable", &error.to_string(), 0)),
    };
    let reader = match host.local_cluster(cluster).await {
        Ok(Some(group)) => {
            // Waits for a space created a moment ago to reach this replica.
            if let Err(error) = host.space_record(&group, &watch.space).await {
                let code = if error.kind == ErrorKind::NotFound { "unknown_space" } else { "unavailable" };
                return Err(ended(&watch.space, code, &error.to_string(), 0));
            }
            group.reader.clone()
        }
        Ok(None) => return Ok(Start::Elsewhere(cluster)),
        Err(error) => return Err(ended(&watch.space, "unavailable", &error.to_string(), 0)),
    };
    let record = {
        let (reader, space) = (reader.clone(), watch.space.clone());
        off_runtime(move || Ok(reader.space(&space)?)).await
    };
    let record = match record {
        Ok(Some(record)) => record,
        // Placed, but not yet created in its cluster's replica here.
        Ok(None) => return Err(ended(&watch.space, "unknown_space", "space does not exist", 0)),
        Err(error) => return Err(ended(&watch.space, "internal", &error.to_string(), 0)),
    };
    let (next_seq, resumed) = match watch.next_seq {
        0 => (record.last_seq + 1, true),
        // A sealed copy whose messages were dropped: the cursor holds, and
        // the follow moves on to where the space went.
        wanted if record.moved_to.is_some() => (wanted, true),
        wanted if wanted < record.first_seq => (record.first_seq, false),
        wanted => (wanted, true),
    };
    let members = members_digest(&record.members);
    let event = watching(record, cluster, next_seq, resumed);
    Ok(Start::Here(Cursor { next: next_seq, reader, cluster, members }, event))
}

/// Spaces followed through other nodes: one Follow stream per node.
struct Relays {
    host: Arc<Host>,
    sender: EventSender,
    /// Requests into the stream to each node, by address.
    streams: HashMap<String, mpsc::Sender<pb::FollowRequest>>,
    /// The node each relayed space is followed through.
    spaces: HashMap<String, String>,
}

impl Relays {
    /// Follows `watch.space` of `cluster` through one of its voters (this
    /// region's first).
    async fn watch(&mut self, watch: pb::Watch, cluster: u64) -> Result<(), pb::FollowEvent> {
        let space = watch.space.clone();
        let voters = self
            .host
            .cluster_addrs(cluster)
            .await
            .map_err(|error| ended(&space, "unavailable", &error.to_string(), 0))?;
        let addr = voters
            .first()
            .map(|voter| voter.addr.clone())
            .ok_or_else(|| ended(&space, "unavailable", "the cluster has no voter", 0))?;
        let stream = match self.streams.get(&addr) {
            Some(stream) if !stream.is_closed() => stream.clone(),
            _ => {
                let stream = self.open(&addr);
                self.streams.insert(addr.clone(), stream.clone());
                stream
            }
        };
        let request = pb::FollowRequest { request: Some(pb::follow_request::Request::Watch(watch)) };
        stream
            .send(request)
            .await
            .map_err(|_| ended(&space, "unavailable", "the relay to the hosting node closed", 0))?;
        self.spaces.insert(space, addr);
        Ok(())
    }

    fn unwatch(&mut self, space: &str) {
        let Some(addr) = self.spaces.remove(space) else { return };
        if let Some(stream) = self.streams.get(&addr) {
            let unwatch = pb::Unwatch { space: space.to_string() };
            let _ = stream.try_send(pb::FollowRequest { request: Some(pb::follow_request::Request::Unwatch(unwatch)) });
        }
    }

    /// Opens a Follow stream to the node at `addr` and passes its events on
    /// (not its progress: this stream's progress is this node's). When it
    /// ends, every space still followed through it is ended as unavailable,
    /// and the gateway watches them again.
    fn open(&self, addr: &str) -> mpsc::Sender<pb::FollowRequest> {
        let (requests, receiver) = mpsc::channel::<pb::FollowRequest>(RELAY_REQUESTS_LEN_MAX);
        let (sender, channel) = (self.sender.clone(), self.host.peers.channel(addr));
        let watched: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
        tokio::spawn(async move {
            let recorded = watched.clone();
            let outbound = tokio_stream::wrappers::ReceiverStream::new(receiver).map(move |request| {
                let mut watched = recorded.lock().expect("relay lock");
                match &request.request {
                    Some(pb::follow_request::Request::Watch(watch)) => watched.insert(watch.space.clone()),
                    Some(pb::follow_request::Request::Unwatch(unwatch)) => watched.remove(&unwatch.space),
                    Some(pb::follow_request::Request::Report(_)) | None => false,
                };
                request
            });
            if let Ok(channel) = channel {
                let mut client =
                    pb::client_client::ClientClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
                if let Ok(response) = client.follow(outbound).await {
                    let mut events = response.into_inner();
                    while let Some(Ok(event)) = events.next().await {
                        match &event.event {
                            Some(Event::Progress(_)) | None => continue,
                            Some(Event::Ended(ended)) => {
                                watched.lock().expect("relay lock").remove(&ended.space);
                            }
                            _ => {}
                        }
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let left: Vec<String> = watched.lock().expect("relay lock").drain().collect();
            for space in left {
                let event = ended(&space, "unavailable", "the node this space was followed through went away", 0);
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        requests
    }
}

fn ended(space: &str, code: &str, message: &str, first_seq: u64) -> pb::FollowEvent {
    pb::FollowEvent {
        event: Some(Event::Ended(pb::WatchEnded {
            space: space.to_string(),
            code: code.to_string(),
            message: message.to_string(),
            first_seq,
        })),
    }
}

/// What one read step found for one space.
enum Step {
    Messages(Vec<pb::Message>, bool),
    Ended(pb::FollowEvent),
    /// Every message of the sealed copy was sent: the space goes on in
    /// this cluster.
    Moved(u64),
    /// The members changed: the record, and its members' digest.
    Members(crate::space::SpaceRecord, u64),
}

/// Sends what was committed past every cursor. Returns whether more is
/// readable right away (a read stopped at its length bound), Err when the
/// gateway left.
async fn pump(host: &Host, cursors: &mut Cursors, sender: &EventSender) -> Result<bool, ()> {
    let wanted: Vec<(String, u64, SpaceReader, u64)> = cursors
        .iter()
        .map(|(space, cursor)| (space.clone(), cursor.next, cursor.reader.clone(), cursor.members))
        .collect();
    let steps = off_runtime(move || Ok(read_step(wanted))).await;
    let Ok(steps) = steps else { return Err(()) };
    let mut more = false;
    let mut batch = Vec::new();
    for (space, step) in steps {
        match step {
            Step::Messages(messages, full) => {
                more |= full;
                if let Some(last) = messages.last() {
                    let cursor = cursors.get_mut(&space).expect("cursor of a read space");
                    debug_assert_eq!(messages[0].seq, cursor.next, "follow must not skip or repeat a seq");
                    cursor.next = last.seq + 1;
                }
                batch.extend(messages);
                if batch.len() >= FOLLOW_READ_LEN {
                    send_batch(sender, &mut batch).await?;
                }
            }
            Step::Ended(event) => {
                cursors.remove(&space);
                send_batch(sender, &mut batch).await?;
                sender.send(Ok(event)).await.map_err(|_| ())?;
            }
            Step::Moved(to) => match host.local_cluster(to).await {
                Ok(Some(group)) => {
                    let cursor = cursors.get_mut(&space).expect("cursor of a read space");
                    cursor.reader = group.reader.clone();
                    cursor.cluster = to;
                    more = true;
                }
                _ => {
                    cursors.remove(&space);
                    send_batch(sender, &mut batch).await?;
                    let message = format!("the space moved to space cluster {to}, which this node does not host");
                    sender.send(Ok(ended(&space, "moved", &message, 0))).await.map_err(|_| ())?;
                }
            },
            Step::Members(record, digest) => {
                send_batch(sender, &mut batch).await?;
                let cursor = cursors.get_mut(&space).expect("cursor of a read space");
                cursor.members = digest;
                let event = watching(record, cursor.cluster, cursor.next, true);
                sender.send(Ok(event)).await.map_err(|_| ())?;
                more = true;
            }
        }
    }
    send_batch(sender, &mut batch).await?;
    Ok(more)
}

async fn send_batch(sender: &EventSender, batch: &mut Vec<pb::Message>) -> Result<(), ()> {
    if batch.is_empty() {
        return Ok(());
    }
    let messages = std::mem::take(batch);
    let event = pb::FollowEvent { event: Some(Event::Messages(pb::MessageBatch { messages })) };
    sender.send(Ok(event)).await.map_err(|_| ())
}

/// Reads, for each (space, next seq), what is committed from there (up to
/// [`FOLLOW_READ_LEN`]), and whether more is readable now.
fn read_step(wanted: Vec<(String, u64, SpaceReader, u64)>) -> Vec<(String, Step)> {
    let mut steps = Vec::with_capacity(wanted.len());
    for (space, next_seq, reader, members) in wanted {
        let record = match reader.space(&space) {
            Ok(Some(record)) => record,
            Ok(None) if reader.is_deleted(&space).unwrap_or(false) => {
                let event = ended(&space, "deleted", "the space was deleted", 0);
                steps.push((space, Step::Ended(event)));
                continue;
            }
            // A record missing after the watch found it, and no tombstone:
            // a snapshot is being restored. Keep the cursor and look again
            // after the next apply.
            Ok(None) => continue,
            Err(error) => {
                let event = ended(&space, "internal", &error.to_string(), 0);
                steps.push((space, Step::Ended(event)));
                continue;
            }
        };
        if record.importing {
            // Being copied in by a move: readable once complete.
            continue;
        }
        let digest = members_digest(&record.members);
        if digest != members {
            // The members changed after every message sent so far was
            // committed (they are at most `record.last_seq` of an earlier
            // read). Tell the gateway before any message read now, so a
            // removed member gets nothing posted after the removal.
            steps.push((space, Step::Members(record, digest)));
            continue;
        }
        // A sealed copy goes on where the space moved once its messages are
        // sent, or at once when they were dropped after the move (the new
        // cluster holds the same seqs).
        if let Some(to) = record.moved_to {
            if record.last_seq < next_seq || next_seq < record.first_seq {
                steps.push((space, Step::Moved(to)));
                continue;
            }
        }
        if record.last_seq < next_seq {
            continue;
        }
        if next_seq < record.first_seq {
            let message = ApiError::trimmed(&space, next_seq, record.first_seq);
            let event = ended(&space, "trimmed", &message.to_string(), record.first_seq);
            steps.push((space, Step::Ended(event)));
            continue;
        }
        match reader.messages(&space, next_seq, record.last_seq, FOLLOW_READ_LEN) {
            Ok(messages) => {
                // A full read may have left more behind: read again now. A
                // short read before last_seq is a gap: wait for the next apply.
                let full = messages.len() == FOLLOW_READ_LEN;
                let messages = messages.into_iter().map(|message| wire_message(&space, message)).collect();
                steps.push((space, Step::Messages(messages, full)));
            }
            Err(error) => {
                let event = ended(&space, "internal", &error.to_string(), 0);
                steps.push((space, Step::Ended(event)));
            }
        }
    }
    steps
}
