//! The client reads: history, space info, the list of spaces, and
//! subscriptions. A read is served from any replica's applied state (the
//! leader's after a read-index round when linearizable); a node that does
//! not host the space's cluster passes it to a voter. A space sealed by a
//! move is read where it moved to; one still being copied there answers
//! `moving`, to be retried.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, ErrorKind};
use crate::meta::directory::Directory;
use crate::node::host::Host;
use crate::node::lookup::read_index_here;
use crate::node::router::{Peer, RequestKind};
use crate::pb;
use crate::raft::group::Group;
use crate::space::{validate, SpaceRecord};
use crate::storage::SpaceReader;
use crate::wire::Hop;

/// Messages read from the store per step of a subscription.
const SUBSCRIBE_READ_LEN: usize = 512;

/// A subscription's events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEvent, ApiError>> + Send + 'static>>;

impl Host {
    /// A read of `space` on a replica of its cluster: `local` on this node's
    /// replica once the space's record is known there, `remote` at a voter.
    /// Goes on where the space moved to.
    async fn read_space<T, L, LF, R, RF>(
        &self,
        space: &str,
        request: RequestKind,
        hop: Hop,
        local: L,
        remote: R,
    ) -> Result<T, ApiError>
    where
        L: Fn(Arc<Group>, SpaceRecord) -> LF,
        LF: Future<Output = Result<T, ApiError>>,
        R: Fn(Peer, Hop) -> RF,
        RF: Future<Output = Result<T, ApiError>>,
    {
        let mut cluster = self.placement_fresh(space).await?.cluster;
        let mut moved = false;
        loop {
            let result = self
                .run(
                    self.route(cluster, request, hop),
                    |group: Arc<Group>| {
                        let local = &local;
                        async move {
                            if request.need == crate::node::router::Need::Leader {
                                self.linearize(&group).await?;
                            }
                            let record = match self.space_record(&group, space).await {
                                Err(error) if error.kind == ErrorKind::NotFound && moved => {
                                    return Err(ApiError::moving(space))
                                }
                                other => other?,
                            };
                            if record.importing {
                                return Err(ApiError::moving(space));
                            }
                            match record.moved_to {
                                Some(to) if !moved => Err(ApiError::new(
                                    ErrorKind::Moved { to },
                                    format!("space {space:?} moved to space cluster {to}"),
                                )),
                                _ => local(group, record).await,
                            }
                        }
                    },
                    &remote,
                )
                .await;
            match result {
                Err(ApiError { kind: ErrorKind::Moved { to }, .. }) if !moved => {
                    moved = true;
                    cluster = to;
                }
                done => return done,
            }
        }
    }

    /// Waits until this replica, the leader, has applied everything
    /// committed before now (a read-index round).
    async fn linearize(&self, group: &Group) -> Result<(), ApiError> {
        let wanted = read_index_here(group).await?;
        let mut applied = group.reader.applied.clone();
        let wait = Duration::from_millis(self.config.raft.leader_wait_ms);
        tokio::time::timeout(wait, applied.wait_for(|index| *index >= wanted))
            .await
            .map_err(|_| ApiError::new(ErrorKind::NoQuorum, "read index not applied in time"))?
            .map_err(|_| ApiError::shutting_down())?;
        Ok(())
    }

    pub async fn history(&self, request: pb::HistoryRequest, hop: Hop) -> Result<pb::HistoryResponse, ApiError> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits)?;
        check_reader(&request.user, &limits)?;
        let limit = match request.limit {
            0 => self.config.limits.history_len_max,
            asked => asked.min(self.config.limits.history_len_max),
        } as usize;
        let bytes_max = self.config.limits.history_bytes_max.max(1);
        let kind = if request.linearizable { RequestKind::IDEMPOTENT_WRITE } else { RequestKind::READ };
        self.read_space(
            &request.space,
            kind,
            hop,
            |group, _record| {
                let (reader, space, user, from_seq) =
                    (group.reader.clone(), request.space.clone(), request.user.clone(), request.from_seq);
                off_runtime(move || read_history(&reader, &space, &user, from_seq, (limit, bytes_max)))
            },
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.client_stub(&to.addr)?;
                    crate::error::answer_of(client.history(self.forward(request, hop)).await)
                }
            },
        )
        .await
    }

    pub async fn get_space(&self, request: pb::GetSpaceRequest, hop: Hop) -> Result<pb::SpaceInfo, ApiError> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.name, &limits)?;
        self.read_space(
            &request.name,
            RequestKind::READ,
            hop,
            |group, record| async move { Ok(record_info(record, group.id)) },
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.client_stub(&to.addr)?;
                    crate::error::answer_of(client.get_space(self.forward(request, hop)).await)
                }
            },
        )
        .await
    }

    /// A subscription to `space` from `from_seq` (0: what comes next).
    pub async fn subscribe(self: &Arc<Self>, request: pb::SubscribeRequest, hop: Hop) -> Result<EventStream, ApiError> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits)?;
        check_reader(&request.user, &limits)?;
        let cluster = self.placement_fresh(&request.space).await?.cluster;
        self.run(
            self.route(cluster, RequestKind::READ, hop),
            |group: Arc<Group>| {
                let request = request.clone();
                async move {
                    let record = self.space_record(&group, &request.space).await?;
                    if !may_read(&record, &request.user) {
                        return Err(ApiError::not_member(&request.space, &request.user));
                    }
                    let from_seq = if request.from_seq == 0 { record.last_seq + 1 } else { request.from_seq };
                    // (A sealed copy's dropped messages are read where the space went.)
                    if from_seq < record.first_seq && record.moved_to.is_none() {
                        return Err(ApiError::trimmed(&request.space, from_seq, record.first_seq));
                    }
                    let (sender, receiver) = mpsc::channel(self.config.limits.subscribe_queue_len_max.max(1));
                    let subscription = Subscription {
                        host: self.clone(),
                        reader: group.reader.clone(),
                        space: request.space,
                        user: request.user,
                        next_seq: from_seq,
                        sender,
                    };
                    tokio::spawn(subscription.run());
                    Ok(Box::pin(ReceiverStream::new(receiver)) as EventStream)
                }
            },
            |to, hop| {
                let request = request.clone();
                async move {
                    let mut client = self.client_stub(&to.addr)?;
                    let reply = client.subscribe(self.forward(request, hop)).await;
                    let stream = reply.map_err(|status| ApiError::from_status(&status))?.into_inner();
                    let events =
                        futures::StreamExt::map(stream, |event| event.map_err(|status| ApiError::from_status(&status)));
                    Ok(Box::pin(events) as EventStream)
                }
            },
        )
        .await
    }

    /// Every space (a user's, with `user`): fresh when the meta cluster
    /// answers, else what this node's replica knows (a listing stays
    /// available without a meta quorum).
    pub async fn list_spaces(&self, request: pb::ListSpacesRequest) -> Result<pb::ListSpacesResponse, ApiError> {
        check_reader(&request.user, &self.config.limits.request_limits())?;
        if let Err(error) = self.sync_group(&self.meta()).await {
            tracing::debug!(%error, "listing spaces from the local directory");
        }
        let (tree, groups, user) = (self.directory(), self.groups.clone(), request.user.clone());
        let spaces = off_runtime(move || {
            let mut spaces = Vec::new();
            for placement in Directory::placements(&tree) {
                if !user.is_empty() && !placement.space.members.contains(&user) {
                    continue;
                }
                let name = placement.space.name.clone();
                let stored = match groups.get(placement.cluster) {
                    Some(group) => group.reader.space(&name)?.map(|record| record_info(record, placement.cluster)),
                    None => None,
                };
                spaces.push(stored.unwrap_or_else(|| pb::SpaceInfo {
                    name,
                    members: placement.space.members.into_iter().collect(),
                    attrs: placement.attrs.into_iter().collect(),
                    cluster_id: placement.cluster,
                    first_seq: 0,
                    last_seq: 0,
                }));
            }
            Ok(spaces)
        })
        .await?;
        Ok(pb::ListSpacesResponse { spaces })
    }
}

/// The leading messages whose encoded size stays within `bytes_max`; at
/// least the first, so a page always makes progress.
pub fn within_bytes(messages: impl Iterator<Item = pb::Message>, bytes_max: usize) -> Vec<pb::Message> {
    use prost::Message as _;
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for message in messages {
        // The field's tag and length prefix: a few bytes more than the message.
        bytes += message.encoded_len() + 8;
        if bytes > bytes_max && !page.is_empty() {
            break;
        }
        page.push(message);
    }
    page
}

/// Reads up to `limit` messages of `space` from `from_seq` for `user`, in a
/// page of at most `bytes_max` bytes of messages; `from_seq` 0 means the
/// first retained seq.
pub fn read_history(
    reader: &SpaceReader,
    space: &str,
    user: &str,
    from_seq: u64,
    (limit, bytes_max): (usize, usize),
) -> Result<pb::HistoryResponse, ApiError> {
    let record = reader.space(space)?.ok_or_else(|| ApiError::unknown_space(space))?;
    if !may_read(&record, user) {
        return Err(ApiError::not_member(space, user));
    }
    let from_seq = if from_seq == 0 { record.first_seq } else { from_seq };
    if from_seq < record.first_seq {
        return Err(ApiError::trimmed(space, from_seq, record.first_seq));
    }
    let messages = reader.messages(space, from_seq, record.last_seq, limit)?;
    let messages = within_bytes(messages.into_iter().map(|message| wire_message(space, message)), bytes_max);
    Ok(pb::HistoryResponse { messages, first_seq: record.first_seq, last_seq: record.last_seq })
}

/// A stored message as the protocol carries it.
pub fn wire_message(space: &str, message: crate::space::record::SeqMessage) -> pb::Message {
    pb::Message {
        space: space.to_string(),
        seq: message.seq,
        author: message.record.author,
        body: message.record.body,
        idempotency_key: message.record.idempotency_key,
        log_index: message.record.log_index,
    }
}

/// The info of `space` as this replica has it.
pub async fn space_info(group: &Group, name: &str) -> Result<pb::SpaceInfo, ApiError> {
    let (reader, space) = (group.reader.clone(), name.to_string());
    let record = off_runtime(move || Ok(reader.space(&space)?)).await?;
    let record = record.ok_or_else(|| ApiError::internal(format!("created space {name:?} is not readable")))?;
    Ok(record_info(record, group.id))
}

pub fn record_info(record: SpaceRecord, cluster_id: u64) -> pb::SpaceInfo {
    pb::SpaceInfo {
        name: record.name,
        members: record.members.into_iter().collect(),
        attrs: record.attrs.into_iter().collect(),
        cluster_id,
        first_seq: record.first_seq,
        last_seq: record.last_seq,
    }
}

/// Runs a read of the state machine store on a blocking thread: a sled read
/// that misses its cache goes to disk, and disk waits stay off the runtime.
pub async fn off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::storage::blocking::run(read).await.map_err(|e| ApiError::internal(format!("read task failed: {e}")))?
}

/// An empty reader is an operator read. Until authentication lands a user
/// is only a claimed name, so this reveals nothing a claimed name would not;
/// a named reader must be a member.
fn check_reader(user: &str, limits: &validate::Limits) -> Result<(), ApiError> {
    if user.is_empty() {
        return Ok(());
    }
    Ok(validate::check_name("user name", user, limits)?)
}

pub fn may_read(record: &SpaceRecord, user: &str) -> bool {
    user.is_empty() || record.members.contains(user)
}

/// One subscription: stored messages from `next_seq`, then live ones, each
/// exactly once and in seq order. Ends when the client goes away, when the
/// user stops being a member, or when retention overtakes the cursor.
struct Subscription {
    host: Arc<Host>,
    reader: SpaceReader,
    space: String,
    user: String,
    next_seq: u64,
    sender: mpsc::Sender<Result<pb::SubscribeEvent, ApiError>>,
}

impl Subscription {
    async fn run(mut self) {
        if let Err(error) = self.feed().await {
            let _ = self.sender.send(Err(error)).await;
        }
    }

    /// Waits for any group's apply (after a move the space goes on in
    /// another group), or for the client to leave (Err).
    async fn wait(&self, applied: &mut tokio::sync::watch::Receiver<u64>) -> Result<(), ()> {
        tokio::select! {
            changed = applied.changed() => changed.map_err(|_| ()),
            _ = self.sender.closed() => Err(()),
        }
    }

    /// Feeds the subscription until it ends: Ok when the client left, the
    /// error to send otherwise.
    async fn feed(&mut self) -> Result<(), ApiError> {
        let mut applied = self.host.applied_any();
        let mut caught_up_sent = false;
        let mut moved = false;
        loop {
            // Mark the current applied index as seen before reading, so an
            // apply that lands during the read wakes the next wait.
            applied.borrow_and_update();
            let (reader, space) = (self.reader.clone(), self.space.clone());
            let record = match off_runtime(move || Ok(reader.space(&space)?)).await? {
                // Moved, and the copy has not started or finished here yet.
                Some(record) if record.importing => None,
                None if moved => None,
                Some(record) => Some(record),
                None => {
                    let (reader, space) = (self.reader.clone(), self.space.clone());
                    let deleted = off_runtime(move || Ok(reader.is_deleted(&space)?)).await.unwrap_or(false);
                    return Err(if deleted {
                        ApiError::new(ErrorKind::Deleted, format!("space {:?} was deleted", self.space))
                    } else {
                        ApiError::unknown_space(&self.space)
                    });
                }
            };
            let Some(record) = record else {
                if self.wait(&mut applied).await.is_err() {
                    return Ok(());
                }
                continue;
            };
            // Every message of the sealed copy is delivered, or they were
            // dropped after the move: go on where the space moved to, from
            // the same cursor.
            let sealed_done = self.next_seq > record.last_seq || self.next_seq < record.first_seq;
            if let (Some(to), true) = (record.moved_to, sealed_done) {
                match self.host.local_cluster(to).await {
                    Ok(Some(group)) => {
                        self.reader = group.reader.clone();
                        moved = true;
                        continue;
                    }
                    _ => {
                        return Err(ApiError::new(
                            ErrorKind::Moved { to },
                            format!(
                                "space {:?} moved to space cluster {to}, not hosted on this node: subscribe again from seq {}",
                                self.space, self.next_seq
                            ),
                        ))
                    }
                }
            }
            if !may_read(&record, &self.user) {
                return Err(ApiError::not_member(&self.space, &self.user));
            }
            if self.next_seq < record.first_seq {
                return Err(ApiError::trimmed(&self.space, self.next_seq, record.first_seq));
            }
            let (reader, space, next_seq, last_seq) =
                (self.reader.clone(), self.space.clone(), self.next_seq, record.last_seq);
            let messages =
                off_runtime(move || Ok(reader.messages(&space, next_seq, last_seq, SUBSCRIBE_READ_LEN)?)).await?;
            // Fewer than asked while the record says more exist means a gap
            // (trimmed under us, or a restore in progress): look again.
            let expected_len =
                (record.last_seq + 1).saturating_sub(self.next_seq).min(SUBSCRIBE_READ_LEN as u64) as usize;
            let complete = messages.len() == expected_len;
            let read_all = complete && messages.len() < SUBSCRIBE_READ_LEN;
            for message in messages {
                debug_assert_eq!(message.seq, self.next_seq, "subscription must not skip or repeat a seq");
                self.next_seq = message.seq + 1;
                let event = pb::SubscribeEvent {
                    event: Some(pb::subscribe_event::Event::Message(wire_message(&self.space, message))),
                };
                if self.sender.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if !complete {
                // Wait for the state to change rather than spin on a gap.
                if self.wait(&mut applied).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            if !read_all {
                continue;
            }
            if !caught_up_sent {
                caught_up_sent = true;
                let event = pb::SubscribeEvent {
                    event: Some(pb::subscribe_event::Event::CaughtUp(pb::CaughtUp { last_seq: self.next_seq - 1 })),
                };
                if self.sender.send(Ok(event)).await.is_err() {
                    return Ok(());
                }
            }
            if self.wait(&mut applied).await.is_err() {
                return Ok(());
            }
        }
    }
}
