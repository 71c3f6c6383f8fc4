//! The sending side of the Raft transport: openraft's `RaftNetworkV2` over
//! tonic. Every group on a node shares one HTTP/2 connection per peer node
//! ([`PeerChannels`]), and one `AppendEnvelope` stream on it ([`Mux`]) for
//! every group's appends: replication streams and single appends
//! (heartbeats) to a peer travel together, so the leader never waits for a
//! reply before sending the next batch and many groups' appends share a
//! frame.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tokio::io::AsyncReadExt;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::config::{NetworkConfig, NodeId};
use crate::pb;
use crate::pb::raft_client::RaftClient;
use crate::pb::raft_envelope_item::Kind;
use crate::raft::mux::Mux;
use crate::raft::types::{NodeAddr, Snapshot, TypeConfig, Vote};
use crate::storage::SnapshotFile;
use crate::wire::{stamped, ClusterId, Stamped};

/// Snapshot bytes per gRPC message.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// One lazily connected channel per peer address, shared by every group and
/// by request forwarding.
#[derive(Clone)]
pub struct PeerChannels {
    channels: Arc<Mutex<HashMap<String, tonic::transport::Channel>>>,
    /// One append stream per peer address, shared by every group.
    muxes: Arc<Mutex<HashMap<String, Mux>>>,
    /// Per address: consecutive failed replication calls, and when the last
    /// one failed. Shared by every group, so a dead node is retried a few
    /// times a second in all, not by each of thousands of groups at once.
    failures: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
    config: NetworkConfig,
    /// Stamped on every request sent: peers refuse another cluster's.
    cluster: ClusterId,
    /// TLS to peers, presenting this node's certificate (None: plaintext).
    tls: Option<ClientTlsConfig>,
    /// This node's incarnation, sent with every Raft message.
    incarnation: u64,
    /// The incarnation each peer last answered with.
    seen: Arc<Mutex<HashMap<NodeId, u64>>>,
}

/// The first and the longest pause before a replication call to a peer
/// whose last calls failed.
const PEER_RETRY_PAUSE_MIN: Duration = Duration::from_millis(100);
const PEER_RETRY_PAUSE_MAX: Duration = Duration::from_secs(2);

impl PeerChannels {
    pub fn new(
        config: NetworkConfig,
        cluster: ClusterId,
        tls: Option<ClientTlsConfig>,
        incarnation: u64,
    ) -> PeerChannels {
        PeerChannels {
            channels: Arc::new(Mutex::new(HashMap::new())),
            muxes: Arc::default(),
            failures: Arc::default(),
            config,
            cluster,
            tls,
            incarnation,
            seen: Arc::default(),
        }
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The incarnation `node` last answered a Raft message with.
    pub fn seen_incarnation(&self, node: NodeId) -> Option<u64> {
        self.seen.lock().expect("incarnation map lock").get(&node).copied()
    }

    /// Notes the incarnation `node` answered with (a Raft reply, a ping).
    pub fn saw(&self, node: NodeId, incarnation: u64) {
        if incarnation != 0 {
            self.seen.lock().expect("incarnation map lock").insert(node, incarnation);
        }
    }

    /// The TLS peers are dialed with (None: plaintext).
    pub fn tls(&self) -> Option<&ClientTlsConfig> {
        self.tls.as_ref()
    }

    /// Waits before calling a peer whose last calls failed: the pause doubles
    /// with each failure, up to [`PEER_RETRY_PAUSE_MAX`].
    async fn pace(&self, addr: &str) {
        let until = {
            let failures = self.failures.lock().expect("failure map lock");
            let Some((count, last)) = failures.get(addr) else { return };
            let pause = PEER_RETRY_PAUSE_MIN.saturating_mul(1 << (*count).min(5)).min(PEER_RETRY_PAUSE_MAX);
            *last + pause
        };
        tokio::time::sleep_until(until.into()).await;
    }

    fn outcome<T, E>(&self, addr: &str, result: &Result<T, E>) {
        let mut failures = self.failures.lock().expect("failure map lock");
        match result {
            Ok(_) => {
                failures.remove(addr);
            }
            Err(_) => {
                let entry = failures.entry(addr.to_string()).or_insert((0, Instant::now()));
                *entry = (entry.0.saturating_add(1), Instant::now());
            }
        }
    }

    /// The shared channel to `addr`, its requests stamped with the cluster id.
    pub fn channel(&self, addr: &str) -> Result<Stamped, tonic::transport::Error> {
        let mut channels = self.channels.lock().expect("channel map lock");
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = endpoint(addr, &self.config, self.tls.as_ref())?.connect_lazy();
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(stamped(channel, &self.cluster))
    }
}

impl PeerChannels {
    /// The append stream to `addr`; a new one when the last one ended.
    pub fn mux(&self, addr: &str) -> Result<Mux, tonic::transport::Error> {
        let mut muxes = self.muxes.lock().expect("mux map lock");
        if let Some(mux) = muxes.get(addr).filter(|mux| !mux.is_dead()) {
            return Ok(mux.clone());
        }
        let client = RaftClient::new(self.channel(addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let mux = Mux::start(client);
        muxes.insert(addr.to_string(), mux.clone());
        Ok(mux)
    }
}

/// An endpoint with the windows and timeouts suited to links across
/// regions; over TLS when `tls` is given.
pub fn endpoint(
    addr: &str,
    config: &NetworkConfig,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let bare = addr.strip_prefix("http://").or_else(|| addr.strip_prefix("https://")).unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{bare}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.clone())?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(config.http2_stream_window_bytes)
        .initial_connection_window_size(config.http2_connection_window_bytes)
        .local_address(config.source_ip))
}

/// Creates the per-target clients openraft asks for, for one group.
#[derive(Clone)]
pub struct RaftNetwork {
    pub group_id: u64,
    pub self_id: NodeId,
    pub self_addr: String,
    pub channels: PeerChannels,
    /// The group's committed membership's incarnations.
    pub admitted: Admitted,
}

impl RaftNetworkFactory<TypeConfig> for RaftNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> PeerClient {
        PeerClient {
            group_id: self.group_id,
            self_id: self.self_id,
            self_addr: self.self_addr.clone(),
            target,
            client: self
                .channels
                .channel(&node.addr)
                .map(|channel| {
                    RaftClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
                })
                .map_err(|error| format!("bad address {:?} for node {target}: {error}", node.addr)),
            pipeline_len_max: self.channels.config.append_pipeline_len_max,
            channels: self.channels.clone(),
            target_addr: node.addr.clone(),
            target_incarnation: node.incarnation,
            admitted: self.admitted.clone(),
        }
    }
}

pub struct PeerClient {
    group_id: u64,
    self_id: NodeId,
    self_addr: String,
    target: NodeId,
    /// Err holds why the peer's address is unusable.
    client: Result<RaftClient<Stamped>, String>,
    pipeline_len_max: usize,
    channels: PeerChannels,
    target_addr: String,
    /// The target's incarnation as the membership records it (0: unknown)
    /// when this client was made.
    target_incarnation: u64,
    admitted: Admitted,
}

fn unreachable(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(error.to_string()))
}

fn network_error(error: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::from_string(error.to_string()))
}

/// Unavailable statuses mean the peer could not be reached (back off);
/// anything else is a network-level failure (retry soon).
fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => unreachable(status),
        _ => network_error(status),
    }
}

/// Reads a peer's answer to a Raft request: its error, or its postcard
/// payload. Public for the fuzz targets (fuzz/).
pub fn decode_reply<T: serde::de::DeserializeOwned>(reply: pb::RaftReply) -> Result<T, RPCError<TypeConfig>> {
    if !reply.error.is_empty() {
        return Err(unreachable(format!("remote raft: {}", reply.error)));
    }
    postcard::from_bytes(&reply.payload).map_err(|e| network_error(format!("undecodable raft reply: {e}")))
}

impl PeerClient {
    fn request<T: serde::Serialize>(&self, payload: &T) -> pb::RaftRequest {
        request(self.group_id, (self.self_id, self.channels.incarnation), &self.self_addr, self.target, payload)
    }

    /// Reads a reply, noting the incarnation the target answered with. It
    /// counts only from the incarnation the committed membership records
    /// ([`Admitted`]).
    fn read<T: serde::de::DeserializeOwned>(&self, reply: pb::RaftReply) -> Result<T, RPCError<TypeConfig>> {
        self.channels.saw(self.target, reply.incarnation);
        if let Some(why) = self.admitted.refused(self.target, reply.incarnation) {
            return Err(unreachable(why));
        }
        decode_reply(reply)
    }

    /// A vote counts only from the incarnation the membership records: a
    /// member that lost its data may grant a vote it already gave, or for a
    /// log that lacks entries it had acknowledged.
    fn read_vote(&self, reply: pb::RaftReply) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        if let Some(why) = refused_incarnation(self.target, self.target_incarnation, reply.incarnation) {
            self.channels.saw(self.target, reply.incarnation);
            return Err(unreachable(why));
        }
        self.read(reply)
    }

    fn client(&self) -> Result<RaftClient<Stamped>, RPCError<TypeConfig>> {
        self.client.clone().map_err(unreachable)
    }
}

pub use crate::storage::types::{refused_incarnation, Admitted};

/// Ends a replication stream's exchange when openraft drops its answers,
/// and stops its forwarder.
struct StreamClose {
    mux: Mux,
    exchange: u64,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Drop for StreamClose {
    fn drop(&mut self) {
        self.permits.close();
        self.mux.close(self.exchange, true);
    }
}

fn request<T: serde::Serialize>(
    group_id: u64,
    (from, incarnation): (NodeId, u64),
    from_addr: &str,
    to: NodeId,
    payload: &T,
) -> pb::RaftRequest {
    pb::RaftRequest {
        group_id,
        from_node: from,
        from_addr: from_addr.to_string(),
        to_node: to,
        payload: postcard::to_stdvec(payload).expect("raft messages serialize"),
        from_incarnation: incarnation,
    }
}

async fn with_deadline<T>(
    ttl: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, RPCError<TypeConfig>> {
    match tokio::time::timeout(ttl, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status_error(status)),
        Err(_) => Err(unreachable(format!("no reply within {ttl:?}"))),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc);
        self.channels.pace(&self.target_addr).await;
        let mux = self.channels.mux(&self.target_addr).map_err(unreachable)?;
        let (exchange, mut answers) = mux.open();
        let ttl = option.hard_ttl();
        let result = if !mux.send(exchange, Kind::Append, request) {
            Err(unreachable("the append stream to the peer ended"))
        } else {
            match tokio::time::timeout(ttl, answers.recv()).await {
                Ok(Some(Ok(reply))) => Ok(reply),
                Ok(Some(Err(status))) => Err(status_error(status)),
                Ok(None) => Err(unreachable("the append stream to the peer ended")),
                Err(_) => {
                    mux.close(exchange, false);
                    Err(unreachable(format!("no reply within {ttl:?}")))
                }
            }
        };
        self.channels.outcome(&self.target_addr, &result);
        self.read(result?)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            openraft::base::BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
            RPCError<TypeConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let (group_id, from, from_addr, to) =
            (self.group_id, (self.self_id, self.channels.incarnation), self.self_addr.clone(), self.target);
        let pipeline_len_max = self.pipeline_len_max;
        let (channels, target_addr, admitted) =
            (self.channels.clone(), self.target_addr.clone(), self.admitted.clone());
        Box::pin(async move {
            channels.pace(&target_addr).await;
            let mux = channels.mux(&target_addr).map_err(unreachable)?;
            let (exchange, answers) = mux.open();
            // Permits bound the requests in flight on this stream: one is
            // taken per request sent and given back per answer.
            let permits = Arc::new(tokio::sync::Semaphore::new(pipeline_len_max.max(1)));
            // When each request was sent, for the replication stage figures.
            let sent = Arc::new(Mutex::new(std::collections::VecDeque::new()));
            let (sending, forwarding, taking) = (sent.clone(), mux.clone(), permits.clone());
            tokio::spawn(async move {
                let mut input = input;
                let mut kind = Kind::Open;
                while let Some(rpc) = input.next().await {
                    let Ok(permit) = taking.acquire().await else { return };
                    permit.forget();
                    let message = request(group_id, from, &from_addr, to, &rpc);
                    sending.lock().expect("send queue lock").push_back(Instant::now());
                    if !forwarding.send(exchange, kind, message) {
                        return;
                    }
                    kind = Kind::Stream;
                }
                // openraft ended the stream: the peer answers what it has, then ends it.
                forwarding.finish(exchange);
            });
            let closing = StreamClose { mux, exchange, permits: permits.clone() };
            let answers = tokio_stream::wrappers::UnboundedReceiverStream::new(answers);
            let results = answers.map(move |answer| {
                let _open = &closing;
                channels.outcome(&target_addr, &answer);
                let reply = answer.map_err(status_error)?;
                permits.add_permits(1);
                if let Some(sent) = sent.lock().expect("send queue lock").pop_front() {
                    crate::stages::since(crate::stages::Stage::Replicate, sent);
                }
                channels.saw(to, reply.incarnation);
                match admitted.refused(to, reply.incarnation) {
                    Some(why) => Err(unreachable(why)),
                    None => decode_reply::<StreamAppendResult<TypeConfig>>(reply),
                }
            });
            Ok(Box::pin(results) as openraft::base::BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc);
        let mut client = self.client()?;
        self.read_vote(with_deadline(option.hard_ttl(), client.vote(request)).await?)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc);
        let mut client = self.client()?;
        self.read_vote(with_deadline(option.hard_ttl(), client.pre_vote(request)).await?)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = self.request(&(vote, snapshot.meta.clone()));
        let mut client = self.client()?;
        let path = snapshot.snapshot.path.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut header = Some(header);
            loop {
                let mut data = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let read = file.read(&mut data).await?;
                data.truncate(read);
                let last = read == 0;
                if sender.send(pb::SnapshotChunk { header: header.take(), data }).await.is_err() || last {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let outbound = tokio_stream::wrappers::ReceiverStream::new(receiver);
        let send = with_deadline(option.hard_ttl(), client.install_snapshot(outbound));
        tokio::pin!(cancel);
        let reply = tokio::select! {
            closed = &mut cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            reply = send => reply?,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(StreamingError::from(network_error(format!("reading snapshot: {error}")))),
            Err(error) => return Err(StreamingError::from(network_error(error))),
        }
        Ok(self.read(reply)?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&req);
        let mut client = self.client()?;
        self.read(with_deadline(option.hard_ttl(), client.transfer_leader(request)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_committed_incarnation_of_a_member_counts() {
        let admitted = Admitted::default();
        assert_eq!(admitted.refused(3, 9), None, "nothing applied yet: nothing to refuse");
        admitted.set([(1, 5), (2, 0), (3, 7)]);
        assert_eq!(admitted.refused(1, 5), None);
        assert!(admitted.refused(1, 6).is_some_and(|why| why.contains("node 1")), "a renewed member");
        assert_eq!(admitted.refused(2, 8), None, "not learned yet");
        assert_eq!(admitted.refused(4, 8), None, "not a member");
        admitted.set([(1, 6), (2, 8), (3, 7)]);
        assert_eq!(admitted.refused(1, 6), None, "re-admitted once the change is applied");
        assert!(admitted.refused(1, 5).is_some());
    }
}
