//! The simulated network: openraft's `RaftNetworkV2` between in-process
//! nodes, with a one-way latency per message, message loss, links cut in
//! either direction, and crashed processes.
//!
//! A unary call (vote, heartbeat, snapshot, leadership transfer) crosses the
//! link twice; a lost or cut message shows as no reply before the call's
//! deadline, a crashed target as a refused connection. Replication streams
//! are pipelined like the gRPC streams of the real transport: messages keep
//! their order, each arrives after its own delay, and the stream breaks when
//! its link is cut or either end's process dies. A snapshot travels the same
//! way: never lost, but failed as soon as its link breaks.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft_rt::watch::{WatchReceiver, WatchSender};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{SimConfig, SimRaft, Snapshot, Vote};
use crate::raft::network::Admitted;
use crate::raft::types::NodeAddr;

/// One end of a link: a node and its process incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub node: u64,
    pub incarnation: u64,
}

struct Peer {
    incarnation: u64,
    /// Its data directory's incarnation.
    data: u64,
    /// What its applied membership records.
    admitted: Admitted,
    raft: SimRaft,
}

struct NetState {
    peers: BTreeMap<u64, Peer>,
    /// Directed links that lose everything.
    cut: BTreeSet<(u64, u64)>,
    /// One-way base latency of each directed link.
    latency: BTreeMap<(u64, u64), Duration>,
    /// Latency multiplier of a slowed node's links.
    slow: BTreeMap<u64, u32>,
    /// Messages of unary calls lost, per thousand.
    loss_per_mille: u32,
    rng: StdRng,
    next_incarnation: u64,
    messages: u64,
}

/// The network all nodes of a run share.
pub struct SimNet {
    transport: Transport,
    state: Mutex<NetState>,
    /// Bumped on every change of who is up and which links are cut.
    topology: super::runtime::SimWatchSender<u64>,
}

fn unreachable(why: impl std::fmt::Display) -> RPCError<SimConfig> {
    RPCError::Unreachable(Unreachable::from_string(why.to_string()))
}

impl SimNet {
    /// `latency[(a, b)]` is the one-way base latency from a to b.
    pub fn new(seed: u64, latency: BTreeMap<(u64, u64), Duration>, transport: Transport) -> Arc<SimNet> {
        Arc::new(SimNet {
            transport,
            state: Mutex::new(NetState {
                peers: BTreeMap::new(),
                cut: BTreeSet::new(),
                latency,
                slow: BTreeMap::new(),
                loss_per_mille: 0,
                rng: StdRng::seed_from_u64(seed),
                next_incarnation: 1,
                messages: 0,
            }),
            topology: super::runtime::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("net lock")
    }

    fn changed(&self) {
        self.topology.send_if_modified(|version| {
            *version += 1;
            true
        });
    }

    /// The incarnation the next process of `node` will have.
    pub fn next_incarnation(&self) -> u64 {
        let mut state = self.lock();
        state.next_incarnation += 1;
        state.next_incarnation
    }

    /// A process of `node` is up and reachable.
    pub fn up(&self, node: u64, incarnation: u64, data: u64, admitted: Admitted, raft: SimRaft) {
        self.lock().peers.insert(node, Peer { incarnation, data, admitted, raft });
        self.changed();
    }

    /// What the applied membership of `node`'s live process records.
    pub fn admitted_of(&self, node: u64) -> Option<Admitted> {
        self.lock().peers.get(&node).map(|peer| peer.admitted.clone())
    }

    /// `node`'s process is gone; its connections break.
    pub fn down(&self, node: u64) -> Option<SimRaft> {
        let peer = self.lock().peers.remove(&node);
        self.changed();
        peer.map(|peer| peer.raft)
    }

    /// The live process of `node`.
    pub fn raft(&self, node: u64) -> Option<SimRaft> {
        self.lock().peers.get(&node).map(|peer| peer.raft.clone())
    }

    /// The data incarnation of `node`'s live process.
    pub fn data_of(&self, node: u64) -> Option<u64> {
        self.lock().peers.get(&node).map(|peer| peer.data)
    }

    /// The incarnation of `node`'s live process.
    pub fn incarnation(&self, node: u64) -> Option<u64> {
        self.lock().peers.get(&node).map(|peer| peer.incarnation)
    }

    pub fn live_nodes(&self) -> Vec<u64> {
        self.lock().peers.keys().copied().collect()
    }

    pub fn cut(&self, from: u64, to: u64) {
        self.lock().cut.insert((from, to));
        self.changed();
    }

    pub fn set_loss(&self, per_mille: u32) {
        self.lock().loss_per_mille = per_mille;
    }

    pub fn set_slow(&self, node: u64, factor: u32) {
        self.lock().slow.insert(node, factor);
    }

    /// Reconnects every link, ends loss and slowness.
    pub fn heal(&self) {
        {
            let mut state = self.lock();
            state.cut.clear();
            state.slow.clear();
            state.loss_per_mille = 0;
        }
        self.changed();
    }

    /// Messages sent so far.
    pub fn messages(&self) -> u64 {
        self.lock().messages
    }

    fn end(&self, node: u64) -> Option<End> {
        self.lock().peers.get(&node).map(|peer| End { node, incarnation: peer.incarnation })
    }

    fn alive(state: &NetState, end: End) -> bool {
        state.peers.get(&end.node).is_some_and(|peer| peer.incarnation == end.incarnation)
    }

    /// Whether a message from `from` can reach `to` now.
    fn link_up(&self, from: End, to: End) -> bool {
        let state = self.lock();
        Self::alive(&state, from) && Self::alive(&state, to) && !state.cut.contains(&(from.node, to.node))
    }

    /// Sends one message: its delay, or None when it is lost.
    fn send(&self, from: u64, to: u64, lossy: bool) -> Option<Duration> {
        let mut state = self.lock();
        state.messages += 1;
        let loss = state.loss_per_mille;
        if lossy && loss > 0 && state.rng.random_range(0..1000) < loss {
            return None;
        }
        let base = state.latency.get(&(from, to)).copied().unwrap_or(Duration::from_millis(1));
        let factor = state.slow.get(&from).copied().unwrap_or(1) * state.slow.get(&to).copied().unwrap_or(1);
        let jitter = state.rng.random_range(0..=base.as_micros() as u64 / 2);
        Some((base + Duration::from_micros(jitter)) * factor)
    }

    /// One message over `from → to` and back: `deliver` runs at the target
    /// when the request arrives. Lost messages and cut links show as no
    /// reply before `ttl`.
    async fn call<T, E, Fut>(
        self: &Arc<SimNet>,
        from: End,
        to: u64,
        ttl: Duration,
        deliver: impl FnOnce(SimRaft) -> Fut,
    ) -> Result<T, RPCError<SimConfig>>
    where
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let exchange = async {
            let Some(target) = self.end(to) else {
                // Nothing listens: the connection is refused at once.
                tokio::time::sleep(self.send(from.node, to, false).unwrap_or_default()).await;
                return Err(unreachable(format!("node {to} refused the connection")));
            };
            let request_delay = self.send(from.node, to, true);
            if !self.link_up(from, target) || request_delay.is_none() {
                return std::future::pending().await;
            }
            tokio::time::sleep(request_delay.unwrap_or_default()).await;
            let raft = self
                .lock()
                .peers
                .get(&to)
                .filter(|peer| peer.incarnation == target.incarnation)
                .map(|peer| peer.raft.clone());
            let Some(raft) = raft else { return std::future::pending().await };
            if !self.link_up(from, target) {
                return std::future::pending().await;
            }
            let reply = deliver(raft).await.map_err(unreachable)?;
            let reply_delay = self.send(to, from.node, true);
            if !self.link_up(target, from) || reply_delay.is_none() {
                return std::future::pending().await;
            }
            tokio::time::sleep(reply_delay.unwrap_or_default()).await;
            if !self.link_up(target, from) {
                return std::future::pending().await;
            }
            Ok(reply)
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(result) => result,
            Err(_) => Err(unreachable(format!("no reply from node {to} within {ttl:?}"))),
        }
    }

    /// One message of a stream over `from → to`: it arrives after its
    /// delay, or the stream breaks when the link does, as a connection
    /// whose keepalive fails.
    async fn transit(&self, from: End, to: End) -> Result<(), String> {
        let broke = || format!("link {} -> {} broke", from.node, to.node);
        let mut topology = self.topology.subscribe();
        if !self.link_up(from, to) {
            return Err(broke());
        }
        let arrival = tokio::time::sleep(self.send(from.node, to.node, false).unwrap_or_default());
        tokio::pin!(arrival);
        loop {
            tokio::select! {
                biased;
                changed = topology.changed() => {
                    if changed.is_err() || !self.link_up(from, to) {
                        return Err(broke());
                    }
                }
                _ = &mut arrival => break,
            }
        }
        if self.link_up(from, to) {
            Ok(())
        } else {
            Err(broke())
        }
    }

    /// A snapshot sent over a stream of its own: no loss (the transport
    /// retransmits), but it fails as soon as its link breaks.
    async fn stream_call<T, E, Fut>(
        self: &Arc<SimNet>,
        from: End,
        to: u64,
        deliver: impl FnOnce(SimRaft) -> Fut,
    ) -> Result<T, RPCError<SimConfig>>
    where
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        let Some(target) = self.end(to) else {
            tokio::time::sleep(self.send(from.node, to, false).unwrap_or_default()).await;
            return Err(unreachable(format!("node {to} refused the connection")));
        };
        self.transit(from, target).await.map_err(unreachable)?;
        let raft = self
            .lock()
            .peers
            .get(&to)
            .filter(|peer| peer.incarnation == target.incarnation)
            .map(|peer| peer.raft.clone());
        let Some(raft) = raft else { return Err(unreachable(format!("node {to} went away"))) };
        let reply = deliver(raft).await.map_err(unreachable)?;
        self.transit(target, from).await.map_err(unreachable)?;
        Ok(reply)
    }

    /// Carries `input` over `from → to` in order, each item after its own
    /// delay. Ends with `Err` when the link breaks, with the input otherwise.
    fn pipe<T: Send + 'static>(
        self: &Arc<SimNet>,
        from: End,
        to: End,
        input: impl Stream<Item = T> + Send + Unpin + 'static,
    ) -> mpsc::UnboundedReceiver<Result<T, String>> {
        let (stamped_tx, mut stamped_rx) = mpsc::unbounded_channel::<(Instant, T)>();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let net = self.clone();
        super::spawn(async move {
            let mut input = input;
            let mut last = Instant::now();
            while let Some(item) = input.next().await {
                let delay = net.send(from.node, to.node, false).unwrap_or_default();
                last = last.max(Instant::now() + delay);
                if stamped_tx.send((last, item)).is_err() {
                    return;
                }
            }
        });
        let net = self.clone();
        super::spawn(async move {
            let mut topology = net.topology.subscribe();
            let broken = |net: &SimNet| !net.link_up(from, to);
            loop {
                let next = tokio::select! {
                    biased;
                    changed = topology.changed() => {
                        if changed.is_err() || broken(&net) {
                            let _ = out_tx.send(Err(format!("link {} -> {} broke", from.node, to.node)));
                            return;
                        }
                        continue;
                    }
                    next = stamped_rx.recv() => next,
                };
                let Some((at, item)) = next else { return };
                let arrival = tokio::time::sleep_until(at);
                tokio::pin!(arrival);
                loop {
                    tokio::select! {
                        biased;
                        changed = topology.changed() => {
                            if changed.is_err() || broken(&net) {
                                let _ = out_tx.send(Err(format!("link {} -> {} broke", from.node, to.node)));
                                return;
                            }
                        }
                        _ = &mut arrival => break,
                    }
                }
                if broken(&net) || out_tx.send(Ok(item)).is_err() {
                    let _ = out_tx.send(Err(format!("link {} -> {} broke", from.node, to.node)));
                    return;
                }
            }
        });
        out_rx
    }
}

/// How replication streams cross the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Requests pipelined on one stream per follower, as the node's gRPC
    /// transport does.
    Pipelined,
    /// One AppendEntries call at a time, each waiting for its reply.
    Sequential,
}

type AppendStream<'s> = openraft::base::BoxStream<'s, Result<StreamAppendResult<SimConfig>, RPCError<SimConfig>>>;

/// Replication as request and reply: the next request goes once the last
/// one is answered; a conflict or a partial success ends the stream.
fn sequential_append<'s, S>(
    client: &'s mut SimClient,
    input: S,
    option: RPCOption,
) -> openraft::base::BoxFuture<'s, Result<AppendStream<'s>, RPCError<SimConfig>>>
where
    S: Stream<Item = AppendEntriesRequest<SimConfig>> + Send + Unpin + 'static,
{
    Box::pin(async move {
        let replies = futures::stream::unfold(Some((client, input)), move |state| {
            let option = option.clone();
            async move {
                let (client, mut input) = state?;
                let request = input.next().await?;
                let prev = request.prev_log_id;
                let last = request.entries.last().map(|entry| entry.log_id).or(prev);
                match RaftNetworkV2::append_entries(client, request, option).await {
                    Ok(response) => {
                        let partial =
                            matches!(&response, AppendEntriesResponse::PartialSuccess(matched) if *matched != last);
                        let result = response.into_stream_result(prev, last);
                        let next = if result.is_err() || partial { None } else { Some((client, input)) };
                        Some((Ok(result), next))
                    }
                    Err(error) => Some((Err(error), None)),
                }
            }
        });
        Ok(Box::pin(replies) as AppendStream<'s>)
    })
}

/// Builds the clients of one process of one node.
pub struct SimNetwork {
    pub net: Arc<SimNet>,
    pub me: End,
    /// The data incarnation of this node's disk.
    pub data: u64,
    /// What this process's applied membership records.
    pub admitted: Admitted,
}

impl RaftNetworkFactory<SimConfig> for SimNetwork {
    type Network = SimClient;

    async fn new_client(&mut self, target: u64, node: &NodeAddr) -> SimClient {
        SimClient {
            net: self.net.clone(),
            me: self.me,
            data: self.data,
            target,
            target_data: node.incarnation,
            admitted: self.admitted.clone(),
        }
    }
}

pub struct SimClient {
    net: Arc<SimNet>,
    me: End,
    data: u64,
    target: u64,
    /// The target's data incarnation as the membership records it.
    target_data: u64,
    admitted: Admitted,
}

impl SimClient {
    /// A reply of the target counts only from the data incarnation this
    /// node's committed membership records (as the node's network).
    fn counted<T>(&self, reply: Result<T, RPCError<SimConfig>>) -> Result<T, RPCError<SimConfig>> {
        let reply = reply?;
        let found = self.net.data_of(self.target).unwrap_or(0);
        match self.admitted.refused(self.target, found) {
            Some(why) => Err(unreachable(why)),
            None => Ok(reply),
        }
    }
}

impl SimClient {
    /// A vote or pre-vote: refused by the target when this node's data
    /// incarnation is not the one its membership records, and not counted
    /// when the target's is not the one this node's membership records (as
    /// the node's network and Raft service do).
    async fn ballot<F, Fut>(&self, ttl: Duration, ask: F) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>>
    where
        F: FnOnce(SimRaft) -> Fut,
        Fut: Future<Output = Result<VoteResponse<SimConfig>, String>>,
    {
        let (from, data) = (self.me.node, self.data);
        let voter = self.net.admitted_of(self.target).unwrap_or_default();
        let reply = self
            .net
            .call(self.me, self.target, ttl, |raft| async move {
                match voter.refused(from, data) {
                    Some(why) => Err(why),
                    None => ask(raft).await,
                }
            })
            .await?;
        let found = self.net.data_of(self.target).unwrap_or(0);
        match crate::raft::network::refused_incarnation(self.target, self.target_data, found) {
            Some(why) => Err(unreachable(why)),
            None => self.counted(Ok(reply)),
        }
    }
}

impl RaftNetworkV2<SimConfig> for SimClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<SimConfig>, RPCError<SimConfig>> {
        let reply = self
            .net
            .call(self.me, self.target, option.hard_ttl(), |raft| async move { raft.append_entries(rpc).await })
            .await;
        self.counted(reply)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> openraft::base::BoxFuture<
        's,
        Result<
            openraft::base::BoxStream<'s, Result<StreamAppendResult<SimConfig>, RPCError<SimConfig>>>,
            RPCError<SimConfig>,
        >,
    >
    where
        S: Stream<Item = AppendEntriesRequest<SimConfig>> + Send + Unpin + 'static,
    {
        if self.net.transport == Transport::Sequential {
            return sequential_append(self, input, option);
        }
        let (net, me, target, admitted) = (self.net.clone(), self.me, self.target, self.admitted.clone());
        Box::pin(async move {
            let Some(to) = net.end(target) else {
                tokio::time::sleep(net.send(me.node, target, false).unwrap_or_default()).await;
                return Err(unreachable(format!("node {target} refused the connection")));
            };
            if !net.link_up(me, to) {
                tokio::time::sleep(option.hard_ttl()).await;
                return Err(unreachable(format!("no connection to node {target} within {:?}", option.hard_ttl())));
            }
            let Some(raft) = net.raft(target) else {
                return Err(unreachable(format!("node {target} refused the connection")));
            };
            let (results_tx, results_rx) = mpsc::unbounded_channel();
            // Requests that arrive go into the target's stream; a broken link
            // ends it and fails the caller's.
            let mut arrived = net.pipe(me, to, input);
            let (requests_tx, requests_rx) = mpsc::unbounded_channel();
            let (broken_tx, mut broken_rx) = tokio::sync::oneshot::channel::<String>();
            super::spawn(async move {
                while let Some(request) = arrived.recv().await {
                    match request {
                        Ok(request) => {
                            if requests_tx.send(request).is_err() {
                                return;
                            }
                        }
                        Err(why) => {
                            let _ = broken_tx.send(why);
                            return;
                        }
                    }
                }
            });
            let results = Box::pin(raft.stream_append(UnboundedReceiverStream::new(requests_rx)));
            let mut replies = net.pipe(to, me, results);
            // The caller's stream ends when the target's does, or fails
            // when either direction of the link breaks.
            super::spawn(async move {
                let mut request_link_open = true;
                loop {
                    let reply = tokio::select! {
                        biased;
                        broken = &mut broken_rx, if request_link_open => match broken {
                            Ok(why) => Err(unreachable(why)),
                            Err(_) => {
                                request_link_open = false;
                                continue;
                            }
                        },
                        reply = replies.recv() => match reply {
                            None => return,
                            Some(Ok(Ok(result))) => {
                                let found = net.data_of(target).unwrap_or(0);
                                match admitted.refused(target, found) {
                                    Some(why) => Err(unreachable(why)),
                                    None => Ok(result),
                                }
                            }
                            Some(Ok(Err(fatal))) => Err(unreachable(fatal)),
                            Some(Err(why)) => Err(unreachable(why)),
                        },
                    };
                    let last = reply.is_err();
                    if results_tx.send(reply).is_err() || last {
                        return;
                    }
                }
            });
            Ok(Box::pin(UnboundedReceiverStream::new(results_rx)) as openraft::base::BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>> {
        self.ballot(option.hard_ttl(), |raft| async move { raft.vote(rpc).await.map_err(|e| e.to_string()) }).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<SimConfig>, RPCError<SimConfig>> {
        self.ballot(option.hard_ttl(), |raft| async move { raft.pre_vote(rpc).await.map_err(|e| e.to_string()) }).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<SimConfig>, StreamingError<SimConfig>> {
        let send = self.net.stream_call(self.me, self.target, |raft| async move {
            match crate::raft::snapshot_already_held(&raft, snapshot.meta.last_log_id).await? {
                Some(current) => Ok(SnapshotResponse::new(current)),
                None => raft.install_full_snapshot(vote, snapshot).await,
            }
        });
        let ttl = option.hard_ttl();
        tokio::select! {
            biased;
            closed = cancel => Err(StreamingError::Closed(closed)),
            reply = tokio::time::timeout(ttl, send) => match reply {
                Ok(reply) => Ok(self.counted(reply)?),
                Err(_) => Err(StreamingError::from(unreachable(format!("snapshot not installed within {ttl:?}")))),
            },
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<SimConfig>, RPCError<SimConfig>> {
        self.net
            .call(self.me, self.target, option.hard_ttl(), |raft| async move { raft.handle_transfer_leader(req).await })
            .await
    }
}
