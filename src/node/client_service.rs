//! The `spaceraft.v1.Client` gRPC service of a node.
//!
//! A space's cluster comes from the directory (this node's meta replica).
//! Writes go to the leader of the space's cluster: proposed here when this
//! replica leads, forwarded over the shared peer connection otherwise. A
//! request for a cluster this node does not host goes to one of its voters
//! (this region's first). A new space is placed by the meta leader. Each hop
//! is marked, and a request only ever moves on to a later kind of hop
//! (client → meta leader → cluster voter → cluster leader), so it cannot
//! loop. Reads are served from this replica's applied state; a linearizable
//! History first confirms leadership with a read-index round and waits until
//! it is applied.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::errors::{ClientWriteError, LinearizableReadError};
use openraft::ReadPolicy;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::{NodeConfig, NodeId};
use crate::error::{ApiError, MOVED_TO_METADATA, MOVING_METADATA};
use crate::node::group::Group;
use crate::node::host::Host;
use crate::node::proposer::ProposeError;
use crate::pb;
use crate::placement::directory::Directory;
use crate::placement::SpaceProfile;
use crate::space::{validate, Command, CommandResult, PostCommand};
use crate::storage::state_machine::SpaceReader;

/// Metadata set on a request one node forwards to another: which kind of
/// hop it is on ([`Hop`]).
const HOP_METADATA: &str = "spaceraft-hop";
/// The attribute that names a space's org, for placement.
pub const ORG_ATTR: &str = "org";
/// The attribute that names a space's home region: a new cluster made for
/// it prefers its leader there.
pub const REGION_ATTR: &str = "region";
/// The attribute with a space's expected posts and reactions a minute.
pub const ACTIVITY_ATTR: &str = "activity_per_min";
/// Pause before routing a write again after the leader it went to refused
/// it or could not be reached.
const ROUTE_RETRY_PAUSE_MS: u64 = 20;
/// Pause before sending a post on after its space moved or was busy moving.
const MOVE_RETRY_PAUSE_MS: u64 = 50;
/// Messages read from the store per step of a subscription.
const SUBSCRIBE_READ_LEN: usize = 512;

pub struct ClientService {
    pub host: Arc<Host>,
    pub config: Arc<NodeConfig>,
}

enum Route {
    Local,
    Forward(String),
}

/// How a request reached this node; a request is only forwarded on to a
/// later kind of hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hop {
    /// From a client.
    Client,
    /// To the meta leader, to place a new space.
    Meta,
    /// To a voter of the space's cluster.
    Member,
    /// To the leader of the space's cluster.
    Leader,
}

impl Hop {
    fn of<T>(request: &Request<T>) -> Hop {
        match request.metadata().get(HOP_METADATA).and_then(|value| value.to_str().ok()) {
            Some("meta") => Hop::Meta,
            Some("member") => Hop::Member,
            Some(_) => Hop::Leader,
            None => Hop::Client,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Hop::Client => "client",
            Hop::Meta => "meta",
            Hop::Member => "member",
            Hop::Leader => "leader",
        }
    }
}

/// Where a space's cluster is served from, seen from this node.
enum Located {
    Here(Arc<Group>),
    /// Not hosted here: the cluster's voters, this region's first.
    Elsewhere {
        cluster: u64,
        voters: Vec<(NodeId, String)>,
    },
}

type ClientStub = pb::client_client::ClientClient<tonic::transport::Channel>;

/// The outcome of one attempt at a write on this replica.
enum Attempt<T> {
    Done(Result<T, Status>),
    /// This replica no longer leads (leader id and address if known).
    NotLeader(Option<(NodeId, String)>),
}

impl ClientService {
    /// Where `space`'s cluster is served from. A request on a member hop
    /// must find the cluster here.
    async fn locate(&self, space: &str, hop: Hop) -> Result<Located, ApiError> {
        let placement = self.host.placement_fresh(space).await?;
        self.locate_cluster(placement.cluster, hop).await
    }

    async fn locate_cluster(&self, cluster: u64, hop: Hop) -> Result<Located, ApiError> {
        if let Some(group) = self.host.local_cluster(cluster).await? {
            return Ok(Located::Here(group));
        }
        if hop >= Hop::Member {
            return Err(ApiError::Internal(format!(
                "space cluster {cluster} is not hosted on node {}, which was asked as its voter",
                self.config.node_id
            )));
        }
        let voters = self.host.cluster_addrs(cluster).await?;
        Ok(Located::Elsewhere { cluster, voters })
    }

    /// For reads: the cluster holding the space's newest messages. A space
    /// sealed by a move is read where it moved to; one still being copied
    /// there is not readable for that moment (retry).
    async fn locate_for_read(&self, space: &str, hop: Hop) -> Result<Located, ApiError> {
        let mut located = self.locate(space, hop).await?;
        let mut moved = false;
        loop {
            let Located::Here(group) = &located else { return Ok(located) };
            let record = match self.host.space_record(group, space).await {
                Err(ApiError::UnknownSpace { .. }) if moved => return Err(ApiError::Moving { space: space.into() }),
                other => other?,
            };
            if record.importing {
                return Err(ApiError::Moving { space: space.to_string() });
            }
            match record.moved_to {
                Some(to) if !moved => {
                    moved = true;
                    located = self.locate_cluster(to, hop).await?;
                }
                _ => return Ok(located),
            }
        }
    }

    /// Where a write must go: here, or the leader's address. Waits up to
    /// `leader_wait_ms` for a leader to be known.
    async fn route(&self, group: &Group, forwarded: bool) -> Result<Route, ApiError> {
        match self.host.leader_of(group).await? {
            None => Ok(Route::Local),
            Some(leader) if forwarded => Err(ApiError::NotLeader { cluster_id: group.id, leader: Some(leader) }),
            Some((_, addr)) => Ok(Route::Forward(addr)),
        }
    }

    fn forward_client(&self, addr: &str) -> Result<ClientStub, ApiError> {
        let channel =
            self.host.peers.channel(addr).map_err(|e| ApiError::Internal(format!("bad peer address {addr}: {e}")))?;
        Ok(pb::client_client::ClientClient::new(channel))
    }

    fn hop_request<T>(&self, message: T, hop: Hop) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(HOP_METADATA, hop.name().parse().expect("ascii"));
        request.set_timeout(Duration::from_millis(self.config.network.forward_timeout_ms));
        request
    }

    fn forwarded_request<T>(&self, message: T) -> Request<T> {
        self.hop_request(message, Hop::Leader)
    }

    /// Sends a request for a cluster not hosted here to one of its voters,
    /// the next one when a voter surely did not take it.
    async fn to_member<Req, T, F, FF>(
        &self,
        cluster: u64,
        voters: &[(NodeId, String)],
        request: &Req,
        mut call: F,
    ) -> Result<T, Status>
    where
        Req: Clone,
        F: FnMut(ClientStub, Request<Req>) -> FF,
        FF: std::future::Future<Output = Result<T, Status>>,
    {
        let mut last = None;
        for (_, addr) in voters {
            let client = self.forward_client(addr)?;
            match call(client, self.hop_request(request.clone(), Hop::Member)).await {
                Err(status) if status.code() == tonic::Code::Unavailable && surely_not_proposed(&status) => {
                    last = Some(status);
                }
                done => return done,
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable(format!("space cluster {cluster} has no reachable voter"))))
    }

    async fn post(&self, request: pb::PostRequest, hop: Hop) -> Result<pb::PostResponse, Status> {
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        validate::check_name("user name", &request.author, &limits).map_err(ApiError::from)?;
        validate::check_body(&request.body, &limits).map_err(ApiError::from)?;
        validate::check_idempotency_key(&request.idempotency_key, &limits).map_err(ApiError::from)?;
        // A post refused because its space moved (or is being copied to its
        // new cluster) committed nothing: the node the client called sends
        // it on to where the space went.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms * 2);
        let mut cluster = None;
        loop {
            let result = self.post_once(&request, hop, cluster).await;
            let status = match &result {
                Err(status) if hop == Hop::Client => status,
                _ => return result,
            };
            let moved_to = status.metadata().get(MOVED_TO_METADATA).and_then(|v| v.to_str().ok()?.parse().ok());
            if moved_to.is_some() {
                cluster = moved_to;
            } else if !status.metadata().contains_key(MOVING_METADATA) {
                return result;
            }
            if tokio::time::Instant::now() >= deadline {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(MOVE_RETRY_PAUSE_MS)).await;
        }
    }

    /// One attempt at a post, on the space's cluster or on `cluster`.
    async fn post_once(
        &self,
        request: &pb::PostRequest,
        hop: Hop,
        cluster: Option<u64>,
    ) -> Result<pb::PostResponse, Status> {
        let forwarded = hop == Hop::Leader;
        let located = match cluster {
            Some(cluster) => self.locate_cluster(cluster, hop).await?,
            None => self.locate(&request.space, hop).await?,
        };
        let group = match located {
            Located::Here(group) => group,
            Located::Elsewhere { cluster, voters } => {
                let post =
                    |mut client: ClientStub, request| async move { client.post(request).await.map(|r| r.into_inner()) };
                return self.to_member(cluster, &voters, request, post).await;
            }
        };
        let post = PostCommand {
            space: request.space.clone(),
            author: request.author.clone(),
            body: request.body.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        self.on_leader(
            &group,
            forwarded,
            || async {
                match group.proposer.propose(post.clone()).await {
                    Ok(outcome) => Attempt::Done(Ok(pb::PostResponse {
                        space: request.space.clone(),
                        seq: outcome.seq,
                        duplicate: outcome.duplicate,
                    })),
                    Err(ProposeError::Refused(error)) => Attempt::Done(Err(ApiError::from(error).into())),
                    Err(ProposeError::NotLeader(leader)) => Attempt::NotLeader(leader),
                    Err(ProposeError::Unknown(why)) => Attempt::Done(Err(Status::unavailable(format!(
                        "leadership changed while posting; the post may or may not have committed, retry with the same idempotency key ({why})"
                    )))),
                    Err(ProposeError::Stopped(why)) => {
                        Attempt::Done(Err(Status::unavailable(format!("node is stopping: {why}"))))
                    }
                }
            },
            |mut client, request_to_forward| async move { client.post(request_to_forward).await.map(|r| r.into_inner()) },
            request,
            !request.idempotency_key.is_empty(),
        )
        .await
    }

    async fn create_space(&self, request: pb::CreateSpaceRequest, hop: Hop) -> Result<pb::CreateSpaceResponse, Status> {
        let forwarded = hop == Hop::Leader;
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.name, &limits).map_err(ApiError::from)?;
        validate::check_members(&request.members, &limits).map_err(ApiError::from)?;
        for (key, value) in &request.attrs {
            validate::check_name("attribute name", key, &limits).map_err(ApiError::from)?;
            if value.len() > limits.body_bytes_max {
                return Err(ApiError::Internal("attribute value too large".into()).into());
            }
        }
        let group = match self.place(&request, hop).await? {
            Placed::Here(group) => group,
            Placed::Answered(response) => return Ok(response),
            Placed::Elsewhere { cluster, voters } => {
                let create = |mut client: ClientStub, request| async move {
                    client.create_space(request).await.map(|r| r.into_inner())
                };
                return self.to_member(cluster, &voters, &request, create).await;
            }
        };
        let command = Command::CreateSpace {
            name: request.name.clone(),
            members: request.members.clone(),
            attrs: request.attrs.clone().into_iter().collect::<BTreeMap<_, _>>(),
            dedup_window_len: self.config.space.dedup_window_len,
            retain_messages_max: self.config.space.retain_messages_max,
        };
        self.on_leader(
            &group,
            forwarded,
            || async {
                match group.raft.client_write(command.clone()).await {
                    Ok(response) => {
                        let CommandResult::SpaceCreated { existed, result } = response.data else {
                            return Attempt::Done(Err(Status::internal("unexpected apply result for create space")));
                        };
                        if let Err(error) = result {
                            return Attempt::Done(Err(ApiError::from(error).into()));
                        }
                        let space = space_info(&group.reader, group.id, &request.name);
                        Attempt::Done(
                            space
                                .map(|space| pb::CreateSpaceResponse { space: Some(space), existed })
                                .ok_or_else(|| Status::internal("created space is not readable")),
                        )
                    }
                    Err(error) => match error.api_error() {
                        Some(ClientWriteError::ForwardToLeader(forward)) => Attempt::NotLeader(
                            forward.leader_id.zip(forward.leader_node.as_ref().map(|node| node.addr.clone())),
                        ),
                        _ => Attempt::Done(Err(Status::unavailable(format!("create space failed: {error}")))),
                    },
                }
            },
            |mut client, request_to_forward| async move {
                client.create_space(request_to_forward).await.map(|r| r.into_inner())
            },
            &request,
            true,
        )
        .await
    }

    /// Runs `write` on a group woken first (a quiesced leader heartbeats
    /// again, so followers learn the commit promptly).
    async fn woken<T>(group: &Group, write: impl std::future::Future<Output = T>) -> T {
        group.wake();
        write.await
    }

    /// Where a space being created goes: its placement, made by the meta
    /// leader (forwarded there when this node does not lead the meta group).
    async fn place(&self, request: &pb::CreateSpaceRequest, hop: Hop) -> Result<Placed, Status> {
        let placement = match self.host.placement(&request.name).await? {
            Some(placement) => placement,
            None if hop >= Hop::Member => self.host.placement_fresh(&request.name).await?,
            None => match self.host.leader_of(&self.host.meta()).await? {
                Some((_, addr)) if hop == Hop::Client => {
                    let mut client = self.forward_client(&addr)?;
                    let response = client.create_space(self.hop_request(request.clone(), Hop::Meta)).await?;
                    return Ok(Placed::Answered(response.into_inner()));
                }
                _ => {
                    let attrs = &request.attrs;
                    let profile = SpaceProfile {
                        name: request.name.clone(),
                        org: attrs.get(ORG_ATTR).cloned(),
                        members: request.members.iter().cloned().collect(),
                        activity_per_min: attrs
                            .get(ACTIVITY_ATTR)
                            .and_then(|value| value.parse::<f64>().ok())
                            .filter(|value| value.is_finite() && *value >= 0.0)
                            .unwrap_or(0.0),
                    };
                    self.host
                        .place_space(
                            profile,
                            attrs.clone().into_iter().collect(),
                            attrs.get(REGION_ATTR).map(String::as_str),
                        )
                        .await?
                }
            },
        };
        Ok(match self.locate(&placement.space.name, hop).await? {
            Located::Here(group) => Placed::Here(group),
            Located::Elsewhere { cluster, voters } => Placed::Elsewhere { cluster, voters },
        })
    }

    /// Runs a write where the leader is: `local` when this replica leads,
    /// else `forward` (one hop) to the leader's node. A write can race a
    /// leader change, so it routes again, after a short pause that lets the
    /// new leader become known, until `raft.leader_wait_ms` is over.
    async fn on_leader<Req, T, L, LF, F, FF>(
        &self,
        group: &Group,
        forwarded: bool,
        mut local: L,
        mut forward: F,
        request: &Req,
        retry_is_safe: bool,
    ) -> Result<T, Status>
    where
        Req: Clone,
        L: FnMut() -> LF,
        LF: std::future::Future<Output = Attempt<T>>,
        F: FnMut(pb::client_client::ClientClient<tonic::transport::Channel>, Request<Req>) -> FF,
        FF: std::future::Future<Output = Result<T, Status>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.raft.leader_wait_ms);
        let mut attempt = 0u32;
        while tokio::time::Instant::now() < deadline {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(ROUTE_RETRY_PAUSE_MS)).await;
            }
            attempt += 1;
            match self.route(group, forwarded).await? {
                Route::Forward(addr) => {
                    let client = self.forward_client(&addr)?;
                    match forward(client, self.forwarded_request(request.clone())).await {
                        // The leader we knew stepped down or died: learn the new
                        // one. Sending again is safe when the write is
                        // idempotent, or surely was not proposed.
                        Err(status)
                            if status.code() == tonic::Code::Unavailable
                                && !forwarded
                                && (retry_is_safe || surely_not_proposed(&status)) =>
                        {
                            tracing::debug!(%status, "forwarded write failed; routing again");
                        }
                        done => return done,
                    }
                }
                Route::Local => match Self::woken(group, local()).await {
                    Attempt::Done(done) => return done,
                    Attempt::NotLeader(leader) if forwarded => {
                        return Err(ApiError::NotLeader { cluster_id: group.id, leader }.into());
                    }
                    Attempt::NotLeader(_) => {}
                },
            }
        }
        Err(ApiError::NoLeader { cluster_id: group.id, waited_ms: self.config.raft.leader_wait_ms }.into())
    }

    /// Waits until this replica has applied everything committed before now
    /// (read index on the leader). Only call on the leader.
    async fn linearize(&self, group: &Group) -> Result<(), Status> {
        let read_log_id = match group.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read_log_id) => read_log_id,
            Err(error) => {
                return Err(match error.api_error() {
                    Some(LinearizableReadError::ForwardToLeader(_)) => {
                        ApiError::NotLeader { cluster_id: group.id, leader: None }.into()
                    }
                    _ => Status::unavailable(format!("linearizable read failed: {error}")),
                })
            }
        };
        let wanted = read_log_id.index();
        let mut applied = group.reader.applied.clone();
        let wait = Duration::from_millis(self.config.raft.leader_wait_ms);
        tokio::time::timeout(wait, applied.wait_for(|index| *index >= wanted))
            .await
            .map_err(|_| Status::unavailable("read index not applied in time"))?
            .map_err(|_| Status::unavailable("node is stopping"))?;
        Ok(())
    }

    async fn history(&self, request: pb::HistoryRequest, hop: Hop) -> Result<pb::HistoryResponse, Status> {
        let forwarded = hop == Hop::Leader;
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        check_reader(&request.user, &limits)?;
        let group = match self.locate_for_read(&request.space, hop).await? {
            Located::Here(group) => group,
            Located::Elsewhere { cluster, voters } => {
                let read = |mut client: ClientStub, request| async move {
                    client.history(request).await.map(|r| r.into_inner())
                };
                return self.to_member(cluster, &voters, &request, read).await;
            }
        };
        if request.linearizable {
            match self.route(&group, forwarded).await? {
                Route::Forward(addr) => {
                    let mut client = self.forward_client(&addr)?;
                    return Ok(client.history(self.forwarded_request(request)).await?.into_inner());
                }
                Route::Local => self.linearize(&group).await?,
            }
        }
        self.host.space_record(&group, &request.space).await?;
        let limit = match request.limit {
            0 => self.config.limits.history_len_max,
            asked => asked.min(self.config.limits.history_len_max),
        } as usize;
        let reader = group.reader.clone();
        off_runtime(move || read_history(&reader, &request.space, &request.user, request.from_seq, limit))
            .await
            .map_err(Status::from)
    }
}

/// Reads up to `limit` messages of `space` from `from_seq` for `user`;
/// `from_seq` 0 means the first retained seq.
pub fn read_history(
    reader: &SpaceReader,
    space: &str,
    user: &str,
    from_seq: u64,
    limit: usize,
) -> Result<pb::HistoryResponse, ApiError> {
    let record = reader.space(space)?.ok_or_else(|| ApiError::UnknownSpace { space: space.to_string() })?;
    if !may_read(&record, user) {
        return Err(ApiError::NotMember { space: space.to_string(), user: user.to_string() });
    }
    let from_seq = if from_seq == 0 { record.first_seq } else { from_seq };
    if from_seq < record.first_seq {
        return Err(ApiError::Trimmed { space: space.to_string(), from_seq, first_seq: record.first_seq });
    }
    let messages = reader.messages(space, from_seq, record.last_seq, limit)?;
    Ok(pb::HistoryResponse { messages, first_seq: record.first_seq, last_seq: record.last_seq })
}

pub fn space_info(reader: &SpaceReader, cluster_id: u64, name: &str) -> Option<pb::SpaceInfo> {
    let record = reader.space(name).ok().flatten()?;
    Some(record_info(record, cluster_id))
}

fn record_info(record: crate::space::SpaceRecord, cluster_id: u64) -> pb::SpaceInfo {
    pb::SpaceInfo {
        name: record.name,
        members: record.members.into_iter().collect(),
        attrs: record.attrs.into_iter().collect(),
        cluster_id,
        first_seq: record.first_seq,
        last_seq: record.last_seq,
    }
}

/// A forwarded write that failed in a way that proves the leader did not
/// propose it: it answered "not the leader" / "no leader", or it could not
/// be connected to at all.
fn surely_not_proposed(status: &tonic::Status) -> bool {
    status.metadata().contains_key(crate::error::LEADER_HINT_METADATA)
        || status.message().starts_with("not the leader")
        || status.message().starts_with("no leader")
        || status.message().contains("tcp connect error")
}

/// Runs a read of the state machine store on a blocking thread: a sled read
/// that misses its cache goes to disk, and disk waits stay off the runtime.
async fn off_runtime<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(read).await.map_err(|e| ApiError::Internal(format!("read task failed: {e}")))?
}

/// An empty reader is an operator read. Until authentication lands a user
/// is only a claimed name, so this reveals nothing a claimed name would not;
/// a named reader must be a member.
fn check_reader(user: &str, limits: &validate::Limits) -> Result<(), ApiError> {
    if user.is_empty() {
        return Ok(());
    }
    validate::check_name("user name", user, limits).map_err(ApiError::from)
}

fn may_read(record: &crate::space::SpaceRecord, user: &str) -> bool {
    user.is_empty() || record.members.contains(user)
}

/// What placing a space being created found.
enum Placed {
    Here(Arc<Group>),
    Elsewhere {
        cluster: u64,
        voters: Vec<(NodeId, String)>,
    },
    /// The meta leader, asked over the network, did it all.
    Answered(pb::CreateSpaceResponse),
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeEvent, Status>> + Send + 'static>>;
type FollowStream = Pin<Box<dyn Stream<Item = Result<pb::FollowEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::client_server::Client for ClientService {
    async fn create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::CreateSpaceResponse>, Status> {
        let hop = Hop::of(&request);
        Ok(Response::new(self.create_space(request.into_inner(), hop).await?))
    }

    async fn post(&self, request: Request<pb::PostRequest>) -> Result<Response<pb::PostResponse>, Status> {
        let hop = Hop::of(&request);
        Ok(Response::new(self.post(request.into_inner(), hop).await?))
    }

    async fn history(&self, request: Request<pb::HistoryRequest>) -> Result<Response<pb::HistoryResponse>, Status> {
        let hop = Hop::of(&request);
        Ok(Response::new(self.history(request.into_inner(), hop).await?))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        let hop = Hop::of(&request);
        let request = request.into_inner();
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        check_reader(&request.user, &limits)?;
        let group = match self.locate(&request.space, hop).await? {
            Located::Here(group) => group,
            Located::Elsewhere { cluster, voters } => {
                let open = |mut client: ClientStub, request| async move {
                    client.subscribe(request).await.map(|r| r.into_inner())
                };
                let stream = self.to_member(cluster, &voters, &request, open).await?;
                return Ok(Response::new(Box::pin(stream)));
            }
        };
        let reader = group.reader.clone();
        let record = self.host.space_record(&group, &request.space).await?;
        if !may_read(&record, &request.user) {
            return Err(ApiError::NotMember { space: request.space, user: request.user }.into());
        }
        let from_seq = if request.from_seq == 0 { record.last_seq + 1 } else { request.from_seq };
        // (A sealed copy's dropped messages are read where the space went.)
        if from_seq < record.first_seq && record.moved_to.is_none() {
            return Err(ApiError::Trimmed { space: request.space, from_seq, first_seq: record.first_seq }.into());
        }
        let (sender, receiver) = mpsc::channel(self.config.limits.subscribe_queue_len_max.max(1));
        tokio::spawn(follow(self.host.clone(), reader, request.space, request.user, from_seq, sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_spaces(
        &self,
        request: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        let request = request.into_inner();
        check_reader(&request.user, &self.config.limits.request_limits())?;
        // Fresh when the meta cluster answers; else what this node's replica
        // knows (a listing stays available without a meta quorum).
        if let Err(error) = self.host.sync_group(&self.host.meta()).await {
            tracing::debug!(%error, "listing spaces from the local directory");
        }
        let (tree, groups, user) = (self.host.directory(), self.host.groups.clone(), request.user.clone());
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
        Ok(Response::new(pb::ListSpacesResponse { spaces }))
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<tonic::Streaming<pb::FollowRequest>>,
    ) -> Result<Response<FollowStream>, Status> {
        if self.host.is_drained() {
            return Err(Status::unavailable("this node is drained: follow another replica"));
        }
        let context = crate::node::follow::FollowContext {
            node_id: self.config.node_id,
            region: self.config.region.clone(),
            host: self.host.clone(),
            progress_interval: Duration::from_millis(self.config.network.follow_progress_interval_ms.max(1)),
        };
        let (sender, receiver) = mpsc::channel(self.config.limits.subscribe_queue_len_max.max(1));
        tokio::spawn(crate::node::follow::serve(context, request.into_inner(), sender));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn update_members(
        &self,
        request: Request<pb::UpdateMembersRequest>,
    ) -> Result<Response<pb::SpaceInfo>, Status> {
        let request = request.into_inner();
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        if request.add.is_empty() && request.remove.is_empty() {
            return Err(Status::invalid_argument("name at least one member to add or remove"));
        }
        for user in request.add.iter().chain(&request.remove) {
            validate::check_name("user name", user, &limits).map_err(ApiError::from)?;
        }
        let record = self.host.update_space_members(&request.space, request.add, request.remove).await?;
        let cluster = self.host.placement(&request.space).await?.map(|placement| placement.cluster).unwrap_or(0);
        Ok(Response::new(record_info(record, cluster)))
    }

    async fn delete_space(
        &self,
        request: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        let request = request.into_inner();
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.space, &limits).map_err(ApiError::from)?;
        let deleted = self.host.delete_space(&request.space).await?;
        Ok(Response::new(pb::DeleteSpaceResponse {
            space: request.space,
            existed: deleted.is_some(),
            last_seq: deleted.unwrap_or(0),
        }))
    }

    async fn get_space(&self, request: Request<pb::GetSpaceRequest>) -> Result<Response<pb::SpaceInfo>, Status> {
        let hop = Hop::of(&request);
        let request = request.into_inner();
        let limits = self.config.limits.request_limits();
        validate::check_name("space name", &request.name, &limits).map_err(ApiError::from)?;
        let group = match self.locate_for_read(&request.name, hop).await? {
            Located::Here(group) => group,
            Located::Elsewhere { cluster, voters } => {
                let get = |mut client: ClientStub, request| async move {
                    client.get_space(request).await.map(|r| r.into_inner())
                };
                return Ok(Response::new(self.to_member(cluster, &voters, &request, get).await?));
            }
        };
        let record = self.host.space_record(&group, &request.name).await?;
        Ok(Response::new(record_info(record, group.id)))
    }
}

/// Feeds one subscription: stored messages from `next_seq`, then live ones,
/// each exactly once and in seq order. Ends when the client goes away, when
/// the user stops being a member, or when retention overtakes the cursor.
async fn follow(
    host: Arc<Host>,
    mut reader: SpaceReader,
    space: String,
    user: String,
    mut next_seq: u64,
    sender: mpsc::Sender<Result<pb::SubscribeEvent, Status>>,
) {
    // Any group's apply wakes it: after a move the space goes on in another.
    let mut applied = host.applied_any();
    let mut caught_up_sent = false;
    let mut moved = false;
    loop {
        // Mark the current applied index as seen before reading, so an apply
        // that lands during the read wakes the next wait.
        applied.borrow_and_update();
        let space_read = {
            let (reader, space) = (reader.clone(), space.clone());
            off_runtime(move || reader.space(&space)).await
        };
        let record = match space_read {
            // Moved, and the copy has not started or finished here yet.
            Ok(Some(record)) if record.importing => None,
            Ok(None) if moved => None,
            Ok(Some(record)) => Some(record),
            Ok(None) => {
                let error = match reader.is_deleted(&space) {
                    Ok(true) => Status::not_found(format!("space {space:?} was deleted")),
                    _ => ApiError::UnknownSpace { space: space.clone() }.into(),
                };
                let _ = sender.send(Err(error)).await;
                return;
            }
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        let Some(record) = record else {
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = sender.closed() => return,
            }
            continue;
        };
        // Every message of the sealed copy is delivered, or they were
        // dropped after the move: go on where the space moved to, from the
        // same cursor.
        let sealed_done = next_seq > record.last_seq || next_seq < record.first_seq;
        if let (Some(to), true) = (record.moved_to, sealed_done) {
            match host.local_cluster(to).await {
                Ok(Some(group)) => {
                    reader = group.reader.clone();
                    moved = true;
                    continue;
                }
                _ => {
                    let error = Status::unavailable(format!(
                        "space {space:?} moved to space cluster {to}, not hosted on this node: subscribe again from seq {next_seq}"
                    ));
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            }
        }
        if !may_read(&record, &user) {
            let _ = sender.send(Err(ApiError::NotMember { space: space.clone(), user: user.clone() }.into())).await;
            return;
        }
        if next_seq < record.first_seq {
            let error = ApiError::Trimmed { space: space.clone(), from_seq: next_seq, first_seq: record.first_seq };
            let _ = sender.send(Err(error.into())).await;
            return;
        }
        let messages_read = {
            let (reader, space, last_seq) = (reader.clone(), space.clone(), record.last_seq);
            off_runtime(move || reader.messages(&space, next_seq, last_seq, SUBSCRIBE_READ_LEN)).await
        };
        let messages = match messages_read {
            Ok(messages) => messages,
            Err(error) => {
                let _ = sender.send(Err(error.into())).await;
                return;
            }
        };
        // Fewer than asked while the record says more exist means a gap
        // (trimmed under us, or a restore in progress): look again.
        let expected_len = (record.last_seq + 1).saturating_sub(next_seq).min(SUBSCRIBE_READ_LEN as u64) as usize;
        let complete = messages.len() == expected_len;
        let read_all = complete && messages.len() < SUBSCRIBE_READ_LEN;
        for message in messages {
            debug_assert_eq!(message.seq, next_seq, "subscription must not skip or repeat a seq");
            next_seq = message.seq + 1;
            let event = pb::SubscribeEvent { event: Some(pb::subscribe_event::Event::Message(message)) };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        if !complete {
            // Wait for the state to change rather than spin on a gap.
            tokio::select! {
                changed = applied.changed() => if changed.is_err() { return },
                _ = sender.closed() => return,
            }
            continue;
        }
        if !read_all {
            continue;
        }
        if !caught_up_sent {
            caught_up_sent = true;
            let event = pb::SubscribeEvent {
                event: Some(pb::subscribe_event::Event::CaughtUp(pb::CaughtUp { last_seq: next_seq - 1 })),
            };
            if sender.send(Ok(event)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            _ = sender.closed() => return,
        }
    }
}
