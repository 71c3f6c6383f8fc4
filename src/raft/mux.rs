//! Every group's appends to one peer on one stream.
//!
//! A node leading many groups used to open a gRPC stream per (group,
//! follower) and send each AppendEntries as its own HTTP/2 frame, and each
//! heartbeat as its own call: a hundred groups with a post each paid a
//! hundred frames, writes and wake-ups of the connection per round. A [`Mux`]
//! holds one `AppendEnvelope` call per peer: each envelope it sends packs
//! whatever the groups queued since the last one, and a receiver task hands
//! each answer in the reply envelopes to its exchange.
//!
//! An exchange is one single append (one answer) or one replication stream
//! (answers in order until either side ends it). When the call fails, every
//! open exchange hears the error and the next exchange starts a new call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

use crate::pb;
use crate::pb::raft_client::RaftClient;
use crate::wire::Stamped;

/// Requests per envelope, and the encoded bytes after which an envelope is
/// sent without taking more.
const ENVELOPE_ITEMS_MAX: usize = 1024;
const ENVELOPE_BYTES_MAX: usize = 4 * 1024 * 1024;

pub type Answers = mpsc::UnboundedReceiver<Result<pb::RaftReply, Status>>;

/// One `AppendEnvelope` call to a peer, shared by all groups.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::UnboundedSender<pb::RaftEnvelopeItem>,
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<Result<pb::RaftReply, Status>>>>,
    next_exchange: AtomicU64,
    /// The call ended: open exchanges heard why; new ones need a new call.
    dead: AtomicBool,
}

impl Mux {
    /// Starts the call (lazily: the first envelope opens it).
    pub fn start(mut client: RaftClient<Stamped>) -> Mux {
        let (queue, queued) = mpsc::unbounded_channel::<pb::RaftEnvelopeItem>();
        let inner = Arc::new(Inner {
            queue,
            routes: Mutex::default(),
            next_exchange: AtomicU64::new(1),
            dead: AtomicBool::new(false),
        });
        // The call's request stream packs whatever queued since it was last
        // polled: while the connection is busy, the next envelope grows.
        let outbound = futures::stream::unfold(queued, |mut queued| async move {
            let first = queued.recv().await?;
            let mut bytes = first.encoded_len();
            let mut items = vec![first];
            while items.len() < ENVELOPE_ITEMS_MAX && bytes < ENVELOPE_BYTES_MAX {
                match queued.try_recv() {
                    Ok(item) => {
                        bytes += item.encoded_len();
                        items.push(item);
                    }
                    Err(_) => break,
                }
            }
            Some((pb::RaftEnvelope { items }, queued))
        });
        // The receiver holds the mux weakly: once no group holds it, its
        // queue closes, which ends the call.
        let receiving = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let why = match client.append_envelope(outbound).await {
                Err(status) => status,
                Ok(response) => {
                    let mut replies = response.into_inner();
                    loop {
                        match replies.message().await {
                            Ok(Some(envelope)) => match receiving.upgrade() {
                                Some(inner) => inner.deliver(envelope),
                                None => return,
                            },
                            Ok(None) => break Status::unavailable("the peer ended the append stream"),
                            Err(status) => break status,
                        }
                    }
                }
            };
            if let Some(inner) = receiving.upgrade() {
                inner.fail(why);
            }
        });
        Mux { inner }
    }

    /// Whether the call has ended (a new exchange needs a new Mux).
    pub fn is_dead(&self) -> bool {
        self.inner.dead.load(Ordering::Acquire)
    }

    /// Opens an exchange: its number and where its answers arrive.
    pub fn open(&self) -> (u64, Answers) {
        let exchange = self.inner.next_exchange.fetch_add(1, Ordering::Relaxed);
        let (answer, answers) = mpsc::unbounded_channel();
        self.inner.routes.lock().expect("mux routes lock").insert(exchange, answer);
        // A call that ended before the route was in place fails it now.
        if self.is_dead() {
            self.inner.fail_route(exchange, Status::unavailable("the append stream to the peer ended"));
        }
        (exchange, answers)
    }

    /// Queues a request of `exchange`; false when the call has ended.
    pub fn send(&self, exchange: u64, kind: pb::raft_envelope_item::Kind, request: pb::RaftRequest) -> bool {
        let item = pb::RaftEnvelopeItem { exchange, kind: kind as i32, request: Some(request) };
        !self.is_dead() && self.inner.queue.send(item).is_ok()
    }

    /// Ends `exchange` here, dropping answers still to come; a replication
    /// stream is closed on the peer too.
    pub fn close(&self, exchange: u64, stream: bool) {
        let open = self.inner.routes.lock().expect("mux routes lock").remove(&exchange).is_some();
        if open && stream {
            self.finish(exchange);
        }
    }

    /// Asks the peer to end replication stream `exchange` once it has
    /// answered what it received (its answers still arrive).
    pub fn finish(&self, exchange: u64) {
        if !self.is_dead() {
            let close = pb::raft_envelope_item::Kind::Close as i32;
            let _ = self.inner.queue.send(pb::RaftEnvelopeItem { exchange, kind: close, request: None });
        }
    }
}

impl Inner {
    fn deliver(&self, envelope: pb::RaftReplyEnvelope) {
        let mut routes = self.routes.lock().expect("mux routes lock");
        for item in envelope.items {
            let exchange = item.exchange;
            if item.code != 0 {
                if let Some(route) = routes.remove(&exchange) {
                    let _ = route.send(Err(Status::new(tonic::Code::from(item.code), item.message)));
                }
                continue;
            }
            // An answer to an exchange that ended here (timed out, closed) is dropped.
            if let Some(route) = routes.get(&exchange) {
                if let Some(reply) = item.reply {
                    let _ = route.send(Ok(reply));
                }
            }
            if item.end {
                routes.remove(&exchange);
            }
        }
    }

    fn fail(&self, why: Status) {
        self.dead.store(true, Ordering::Release);
        let routes = std::mem::take(&mut *self.routes.lock().expect("mux routes lock"));
        for (_, route) in routes {
            let _ = route.send(Err(why.clone()));
        }
    }

    fn fail_route(&self, exchange: u64, why: Status) {
        if let Some(route) = self.routes.lock().expect("mux routes lock").remove(&exchange) {
            let _ = route.send(Err(why));
        }
    }
}
