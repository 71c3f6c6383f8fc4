//! The receiving side of the Raft transport: the `spaceraft.v1.Raft` gRPC
//! service. It routes each request to its group's Raft, and refuses requests
//! of another cluster (`wrong_cluster`: every Raft message names its
//! cluster; a node that does not know its cluster yet learns it from the
//! first one), meant for another node id, or sent by a node that claims an
//! id registered at another address (two processes configured with one id).
//! With security on, only nodes may call it, and a message's claimed sender
//! must be the node its certificate names.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tonic::{Request, Response, Status, Streaming};

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use tonic::metadata::MetadataMap;

use crate::api::authz::principal_of;
use crate::error::{ApiError, ErrorKind};
use crate::node::host::Host;
use crate::pb;
use crate::pb::raft_envelope_item::Kind;
use crate::raft::group::Group;
use crate::raft::types::{Snapshot, SnapshotMeta, TypeConfig, Vote};
use crate::security::Principal;
use crate::storage::SnapshotFile;

pub struct RaftApi {
    pub host: Arc<Host>,
}

/// Decodes a Raft message's postcard payload; anything undecodable is
/// `INVALID_ARGUMENT`. Public for the fuzz targets (fuzz/).
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    postcard::from_bytes(payload).map_err(|e| Status::invalid_argument(format!("undecodable raft payload: {e}")))
}

/// A reply, carrying this node's incarnation: a candidate counts the vote
/// only if the membership records that incarnation.
fn reply<T: serde::Serialize, E: std::fmt::Display>(incarnation: u64, result: Result<T, E>) -> pb::RaftReply {
    match result {
        Ok(value) => pb::RaftReply {
            payload: postcard::to_stdvec(&value).expect("raft messages serialize"),
            error: String::new(),
            incarnation,
        },
        Err(error) => pb::RaftReply { payload: Vec::new(), error: error.to_string(), incarnation },
    }
}

impl RaftApi {
    fn incarnation(&self) -> u64 {
        self.host.peers.incarnation()
    }

    /// Refuses a vote request from a member whose membership records another
    /// incarnation: it lost its data, and its log may lack entries it had
    /// acknowledged. (Appends are taken from any incarnation: a leader was
    /// elected by counted votes, and refusing a re-admitted leader would lock
    /// out a follower whose log has not reached the re-admission yet.)
    fn check_candidate(&self, group: &Group, request: &pb::RaftRequest) -> Result<(), Status> {
        match group.reader.admitted.refused(request.from_node, request.from_incarnation) {
            Some(why) => {
                tracing::warn!(group = group.id, from_node = request.from_node, "refusing a vote request: {why}");
                Err(Status::failed_precondition(why))
            }
            None => Ok(()),
        }
    }

    /// Checks that a Raft message (from a caller admitted as a node) claims
    /// the sender its certificate names; then finds its group.
    async fn route(
        &self,
        principal: &Principal,
        metadata: &MetadataMap,
        request: &pb::RaftRequest,
    ) -> Result<Arc<Group>, Status> {
        check_claim(principal, request)?;
        self.host.admit_peer(metadata).await.map_err(|error| error.to_status())?;
        self.find(request)
    }

    /// The group a Raft message is for, if it is hosted here and the
    /// sender is the node its membership registers at that address.
    fn find(&self, request: &pb::RaftRequest) -> Result<Arc<Group>, Status> {
        let node_id = self.host.config.node_id;
        if request.to_node != node_id {
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {}: check the peer addresses",
                node_id, request.to_node
            )));
        }
        let group = self.host.groups.get(request.group_id).ok_or_else(|| {
            Status::not_found(format!("space cluster {} is not hosted on node {node_id}", request.group_id))
        })?;
        // The membership only: cloning the whole metrics for every message
        // cost a leader of many groups more than the message itself.
        let membership = group.raft.server_metrics().borrow_watched().membership_config.clone();
        if let Some(known) = membership.membership().get_node(&request.from_node) {
            if known.addr != request.from_addr {
                tracing::warn!(from_node = request.from_node, from_addr = %request.from_addr, registered = %known.addr,
                    "refusing raft request from a node whose id is registered at another address");
                return Err(Status::permission_denied(format!(
                    "node id {} is registered at {}, but this request came from {}: duplicate node id?",
                    request.from_node, known.addr, request.from_addr
                )));
            }
        }
        Ok(group)
    }

    /// Checks and decodes the first request of an exchange.
    fn open(
        &self,
        principal: &Principal,
        request: Option<pb::RaftRequest>,
    ) -> Result<(Arc<Group>, pb::RaftRequest, AppendEntriesRequest<TypeConfig>), Status> {
        let request = request.ok_or_else(|| Status::invalid_argument("an envelope item without its request"))?;
        check_claim(principal, &request)?;
        let group = self.find(&request)?;
        let append = decode(&request.payload)?;
        Ok((group, request, append))
    }
}

/// Replication streams open on one `AppendEnvelope` call, at most.
const EXCHANGES_OPEN_MAX: usize = 65_536;

/// Reply items per reply envelope, at most.
const REPLY_ITEMS_MAX: usize = 1024;

/// One `AppendEnvelope` call, driven by its reply stream: reading the
/// caller's envelopes, feeding each replication stream to its group's Raft
/// and collecting the answers all happen where the answers are sent, with
/// no task in between (each hand-over between tasks costs a wake-up).
struct Envelopes {
    api: RaftApi,
    principal: Principal,
    /// None once the caller ended the call.
    incoming: Option<Streaming<pb::RaftEnvelope>>,
    /// The replication streams open on this call.
    streams: HashMap<u64, OpenStream>,
    /// The answers of every replication stream, in order per stream.
    answers: futures::stream::SelectAll<futures::stream::BoxStream<'static, pb::RaftReplyItem>>,
    /// The single appends under way.
    singles: futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, pb::RaftReplyItem>>,
    /// Answers ready to send.
    ready: Vec<pb::RaftReplyItem>,
}

/// A replication stream of an `AppendEnvelope` call, fed to its group's Raft.
struct OpenStream {
    group_id: u64,
    from_node: u64,
    input: mpsc::UnboundedSender<AppendEntriesRequest<TypeConfig>>,
    /// When each append arrived, for the follower's stage figures.
    arrivals: Arc<std::sync::Mutex<std::collections::VecDeque<std::time::Instant>>>,
}

impl OpenStream {
    fn push(&self, append: AppendEntriesRequest<TypeConfig>) {
        self.arrivals.lock().expect("arrival queue lock").push_back(std::time::Instant::now());
        let _ = self.input.send(append);
    }
}

impl Envelopes {
    /// Hands each item of an envelope to its exchange.
    fn take(&mut self, envelope: pb::RaftEnvelope) {
        for item in envelope.items {
            let exchange = item.exchange;
            let failed = |status: Status| {
                let (code, message) = crate::error::status_code_and_text(&status);
                pb::RaftReplyItem { exchange, code, message, ..Default::default() }
            };
            match Kind::try_from(item.kind) {
                Ok(Kind::Append) => match self.api.open(&self.principal, item.request) {
                    Err(status) => self.ready.push(failed(status)),
                    Ok((group, request, append)) => {
                        let incarnation = self.api.incarnation();
                        self.singles.push(Box::pin(async move {
                            group.appended_by(request.from_node, request.from_incarnation);
                            let reply = Some(reply(incarnation, group.raft.append_entries(append).await));
                            pb::RaftReplyItem { exchange, reply, end: true, ..Default::default() }
                        }));
                    }
                },
                Ok(Kind::Open) if self.streams.len() >= EXCHANGES_OPEN_MAX => {
                    let why = format!("more than {EXCHANGES_OPEN_MAX} replication streams on one call");
                    self.ready.push(failed(Status::resource_exhausted(why)));
                }
                Ok(Kind::Open) => match self.api.open(&self.principal, item.request) {
                    Err(status) => self.ready.push(failed(status)),
                    Ok((group, request, append)) => {
                        group.appended_by(request.from_node, request.from_incarnation);
                        let stream = self.start(group, &request, exchange);
                        stream.push(append);
                        self.streams.insert(exchange, stream);
                    }
                },
                Ok(Kind::Stream) => {
                    let Some(stream) = self.streams.get(&exchange) else { continue };
                    // Later requests must stay on the same group and sender.
                    let next = item
                        .request
                        .filter(|next| next.group_id == stream.group_id && next.from_node == stream.from_node);
                    let Some(next) = next else {
                        self.streams.remove(&exchange);
                        let why = Status::invalid_argument("a replication stream changed its group or sender");
                        self.ready.push(failed(why));
                        continue;
                    };
                    match decode::<AppendEntriesRequest<TypeConfig>>(&next.payload) {
                        Ok(append) => stream.push(append),
                        Err(status) => {
                            tracing::warn!(%status, "ending a replication stream with an undecodable append");
                            self.streams.remove(&exchange);
                            self.ready.push(failed(status));
                        }
                    }
                }
                Ok(Kind::Close) => {
                    self.streams.remove(&exchange);
                }
                Err(_) => self.ready.push(failed(Status::invalid_argument("unknown envelope item kind"))),
            }
        }
    }

    /// Opens a replication stream into the group's Raft. Its answers join
    /// the others in order, and its exchange ends when its input does (the
    /// sender closed it, or the call ended) or the Raft stops answering.
    fn start(&mut self, group: Arc<Group>, first: &pb::RaftRequest, exchange: u64) -> OpenStream {
        let (input, appends) = mpsc::unbounded_channel();
        let arrivals = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        let (arrived, incarnation) = (arrivals.clone(), self.api.incarnation());
        let appends = tokio_stream::wrappers::UnboundedReceiverStream::new(appends);
        let answers = group
            .raft
            .stream_append(appends)
            .map(move |result| {
                if let Some(arrived) = arrived.lock().expect("arrival queue lock").pop_front() {
                    crate::stages::since(crate::stages::Stage::FollowerAppend, arrived);
                }
                pb::RaftReplyItem { exchange, reply: Some(reply(incarnation, result)), ..Default::default() }
            })
            .chain(futures::stream::once(
                async move { pb::RaftReplyItem { exchange, end: true, ..Default::default() } },
            ));
        self.answers.push(Box::pin(answers));
        OpenStream { group_id: first.group_id, from_node: first.from_node, input, arrivals }
    }
}

impl Stream for Envelopes {
    type Item = Result<pb::RaftReplyEnvelope, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        while let Some(incoming) = this.incoming.as_mut() {
            match Pin::new(incoming).poll_next(cx) {
                Poll::Ready(Some(Ok(envelope))) => this.take(envelope),
                // The caller ended the call (or it broke): every stream's
                // input ends, and their answers drain.
                Poll::Ready(Some(Err(_)) | None) => {
                    this.incoming = None;
                    this.streams.clear();
                }
                Poll::Pending => break,
            }
        }
        while this.ready.len() < REPLY_ITEMS_MAX {
            match this.singles.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => this.ready.push(item),
                _ => break,
            }
        }
        while this.ready.len() < REPLY_ITEMS_MAX {
            match this.answers.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => this.ready.push(item),
                _ => break,
            }
        }
        if !this.ready.is_empty() {
            return Poll::Ready(Some(Ok(pb::RaftReplyEnvelope { items: std::mem::take(&mut this.ready) })));
        }
        if this.incoming.is_none() && this.singles.is_empty() && this.answers.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// Refuses a Raft message whose claimed sender is not the node its
/// caller's certificate names.
fn check_claim(principal: &Principal, request: &pb::RaftRequest) -> Result<(), Status> {
    if let Principal::Node(certified) = principal {
        if *certified != request.from_node {
            tracing::warn!(
                certified,
                claimed = request.from_node,
                "refusing a raft message whose sender is not its certificate's"
            );
            let why = format!("node {certified}'s certificate cannot send for node {}", request.from_node);
            return Err(ApiError::new(ErrorKind::PermissionDenied, why).to_status());
        }
    }
    Ok(())
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<pb::RaftReply, Status>> + Send + 'static>>;
type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<pb::RaftReplyEnvelope, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftApi {
    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/Vote")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let vote: VoteRequest<TypeConfig> = decode(&request.payload)?;
        self.check_candidate(&group, &request)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.vote(vote).await)))
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/PreVote")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let vote: VoteRequest<TypeConfig> = decode(&request.payload)?;
        self.check_candidate(&group, &request)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.pre_vote(vote).await)))
    }

    async fn append(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/Append")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let append: AppendEntriesRequest<TypeConfig> = decode(&request.payload)?;
        group.appended_by(request.from_node, request.from_incarnation);
        Ok(Response::new(reply(self.incarnation(), group.raft.append_entries(append).await)))
    }

    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<pb::RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/AppendStream")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let mut incoming = request.into_inner();
        let Some(first) = incoming.message().await? else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let group = self.route(&principal, &metadata, &first).await?;
        let first_append: AppendEntriesRequest<TypeConfig> = decode(&first.payload)?;
        group.appended_by(first.from_node, first.from_incarnation);
        let (group_id, from_node) = (first.group_id, first.from_node);
        // Later messages must stay on the same group and sender; anything
        // else (or garbage) ends the stream.
        let rest = incoming.take_while(move |item| {
            let keep = matches!(item, Ok(next) if next.group_id == group_id && next.from_node == from_node);
            async move { keep }
        });
        // When each append arrived, for the follower's stage figures.
        let arrivals = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from([std::time::Instant::now()])));
        let arrived = arrivals.clone();
        let appends = futures::stream::once(async move { first_append }).chain(rest.filter_map(move |item| {
            let arrived = arrived.clone();
            async move {
                let next = item.ok()?;
                match postcard::from_bytes::<AppendEntriesRequest<TypeConfig>>(&next.payload) {
                    Ok(append) => {
                        arrived.lock().expect("arrival queue lock").push_back(std::time::Instant::now());
                        Some(append)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "dropping undecodable append on a replication stream");
                        None
                    }
                }
            }
        }));
        let results = group.raft.stream_append(appends);
        let incarnation = self.incarnation();
        let replies = results.map(move |result| {
            if let Some(arrived) = arrivals.lock().expect("arrival queue lock").pop_front() {
                crate::stages::since(crate::stages::Stage::FollowerAppend, arrived);
            }
            Ok(reply(incarnation, result))
        });
        Ok(Response::new(Box::pin(replies)))
    }

    type AppendEnvelopeStream = EnvelopeStream;

    async fn append_envelope(
        &self,
        request: Request<Streaming<pb::RaftEnvelope>>,
    ) -> Result<Response<Self::AppendEnvelopeStream>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/AppendEnvelope")?;
        let principal = principal_of(&request);
        self.host.admit_peer(request.metadata()).await.map_err(|error| error.to_status())?;
        let envelopes = Envelopes {
            api: RaftApi { host: self.host.clone() },
            principal,
            incoming: Some(request.into_inner()),
            streams: HashMap::new(),
            answers: futures::stream::SelectAll::new(),
            singles: futures::stream::FuturesUnordered::new(),
            ready: Vec::new(),
        };
        let replies = envelopes;
        Ok(Response::new(Box::pin(replies)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/InstallSnapshot")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let mut chunks = request.into_inner();
        let first = chunks.message().await?.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header =
            first.header.clone().ok_or_else(|| Status::invalid_argument("first snapshot chunk has no header"))?;
        let group = self.route(&principal, &metadata, &header).await?;
        let (vote, meta): (Vote, SnapshotMeta) = decode(&header.payload)?;
        group.appended_by(header.from_node, header.from_incarnation);
        tokio::fs::create_dir_all(&group.snapshot_dir).await.map_err(|e| Status::internal(e.to_string()))?;
        let path = group.snapshot_dir.join(format!("incoming-{}.recv", rand::random::<u64>()));
        let bytes_max = self.host.config.security.snapshot_bytes_max;
        let result = receive_file(&path, first.data, &mut chunks, bytes_max).await;
        if let Err(status) = result {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(status);
        }
        let verify_path = path.clone();
        let verified = crate::storage::blocking::run(move || crate::storage::snapshot_file::verify(&verify_path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        match verified {
            Ok((snapshot_group, snapshot_meta)) if snapshot_group == header.group_id && snapshot_meta == meta => {}
            Ok(_) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::invalid_argument("snapshot file does not match its header"));
            }
            Err(error) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(Status::invalid_argument(error.to_string()));
            }
        }
        let held = crate::raft::snapshot_already_held(&group.raft, meta.last_log_id).await;
        if let Ok(Some(current)) = held {
            let _ = tokio::fs::remove_file(&path).await;
            let answer: Result<_, openraft::errors::Fatal<TypeConfig>> =
                Ok(openraft::raft::SnapshotResponse::<TypeConfig>::new(current));
            return Ok(Response::new(reply(self.incarnation(), answer)));
        }
        let snapshot = Snapshot { meta, snapshot: SnapshotFile { path } };
        Ok(Response::new(reply(self.incarnation(), group.raft.install_full_snapshot(vote, snapshot).await)))
    }

    async fn transfer_leader(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        crate::api::admit(&request, "spaceraft.v1.Raft/TransferLeader")?;
        let (principal, metadata) = (principal_of(&request), request.metadata().clone());
        let request = request.into_inner();
        let group = self.route(&principal, &metadata, &request).await?;
        let transfer: TransferLeaderRequest<TypeConfig> = decode(&request.payload)?;
        Ok(Response::new(reply(self.incarnation(), group.raft.handle_transfer_leader(transfer).await)))
    }
}

/// Writes a received snapshot to `path`, refusing it once it grows past
/// `bytes_max` (before the excess is written).
async fn receive_file(
    path: &std::path::Path,
    first_data: Vec<u8>,
    chunks: &mut Streaming<pb::SnapshotChunk>,
    bytes_max: u64,
) -> Result<(), Status> {
    use tokio::io::AsyncWriteExt;
    let internal = |e: std::io::Error| Status::internal(format!("writing received snapshot: {e}"));
    let too_large = || {
        let why = format!("the snapshot is larger than security.snapshot_bytes_max ({bytes_max} bytes)");
        ApiError::new(ErrorKind::TooLarge { field: "snapshot".into() }, why).to_status()
    };
    let mut received = first_data.len() as u64;
    if received > bytes_max {
        return Err(too_large());
    }
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    file.write_all(&first_data).await.map_err(internal)?;
    while let Some(chunk) = chunks.message().await? {
        received += chunk.data.len() as u64;
        if received > bytes_max {
            return Err(too_large());
        }
        file.write_all(&chunk.data).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(())
}
