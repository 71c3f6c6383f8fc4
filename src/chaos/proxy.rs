//! The fault proxy: every connection to a node goes through it, so the
//! harness controls the network between regions without tc or root.
//!
//! Each region lives on its own loopback network, 127.0.R.0/24, and every
//! process of region R connects from an address there, so the proxy knows
//! both ends' regions: it delays each chunk by the pair's one-way latency
//! (emulating a WAN) and cuts pairs for partitions. A cut closes the pair's
//! connections at once and holds new ones silent (accepted, not forwarded)
//! until healed. Connections from outside every region (the harness's own
//! omniscient reads, from 127.0.0.1) pass untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// A region's number (1-based) from an address in 127.0.R.0/24; None for
/// 127.0.0.x and anything else.
pub fn region_of(ip: IpAddr) -> Option<u8> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, region, _] = v4.octets();
            (a == 127 && b == 0 && region > 0).then_some(region)
        }
        IpAddr::V6(_) => None,
    }
}

fn pair(a: u8, b: u8) -> (u8, u8) {
    (a.min(b), a.max(b))
}

/// Bytes read per chunk.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight per direction of a connection (the emulated link's
/// buffer): a full buffer pushes back on the sender, as a real link would.
const CHUNKS_IN_FLIGHT_MAX: usize = 256;

#[derive(Default)]
struct Network {
    /// One-way latency per unordered region pair.
    latency_ms: BTreeMap<(u8, u8), u64>,
    cut: BTreeSet<(u8, u8)>,
}

/// The proxy's shared state; cheap to clone.
#[derive(Clone)]
pub struct FaultProxy {
    network: Arc<Mutex<Network>>,
    /// Bumped whenever the cuts change; connections look again.
    changed: watch::Sender<u64>,
}

impl Default for FaultProxy {
    fn default() -> Self {
        FaultProxy { network: Arc::default(), changed: watch::channel(0).0 }
    }
}

impl FaultProxy {
    pub fn set_latency(&self, a: u8, b: u8, one_way_ms: u64) {
        self.network.lock().expect("network lock").latency_ms.insert(pair(a, b), one_way_ms);
    }

    /// Cuts every link between `region` and the other regions of `all`.
    pub fn partition(&self, region: u8, all: &[u8]) {
        {
            let mut network = self.network.lock().expect("network lock");
            for other in all.iter().filter(|other| **other != region) {
                network.cut.insert(pair(region, *other));
            }
        }
        self.changed.send_modify(|version| *version += 1);
    }

    pub fn heal_all(&self) {
        self.network.lock().expect("network lock").cut.clear();
        self.changed.send_modify(|version| *version += 1);
    }

    fn is_cut(&self, a: Option<u8>, b: Option<u8>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) if a != b => self.network.lock().expect("network lock").cut.contains(&pair(a, b)),
            _ => false,
        }
    }

    fn latency(&self, a: Option<u8>, b: Option<u8>) -> Duration {
        match (a, b) {
            (Some(a), Some(b)) if a != b => {
                let network = self.network.lock().expect("network lock");
                Duration::from_millis(network.latency_ms.get(&pair(a, b)).copied().unwrap_or(0))
            }
            _ => Duration::ZERO,
        }
    }

    /// Listens on `public` and forwards every connection to `target`, a
    /// process of region `target_region`.
    pub async fn listen(&self, public: SocketAddr, target: SocketAddr, target_region: u8) -> std::io::Result<()> {
        let listener = TcpListener::bind(public).await?;
        let proxy = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, peer)) = listener.accept().await else { continue };
                let proxy = proxy.clone();
                tokio::spawn(async move {
                    proxy.serve(inbound, region_of(peer.ip()), target, Some(target_region)).await;
                });
            }
        });
        Ok(())
    }

    async fn serve(&self, inbound: TcpStream, from: Option<u8>, target: SocketAddr, to: Option<u8>) {
        let mut changed = self.changed.subscribe();
        // A connection made during a cut hangs silently until the heal (the
        // client sees a dead link, not a refusal), then carries on: what it
        // sent meanwhile was only delayed.
        while self.is_cut(from, to) {
            if changed.changed().await.is_err() {
                return;
            }
        }
        let Ok(outbound) = TcpStream::connect(target).await else { return };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let delay = self.latency(from, to);
        let (inbound_read, inbound_write) = inbound.into_split();
        let (outbound_read, outbound_write) = outbound.into_split();
        let forward = pump(inbound_read, outbound_write, delay);
        let backward = pump(outbound_read, inbound_write, delay);
        tokio::select! {
            _ = forward => {}
            _ = backward => {}
            _ = async {
                loop {
                    if changed.changed().await.is_err() || self.is_cut(from, to) {
                        return;
                    }
                }
            } => {}
        }
    }
}

/// Copies one direction, delivering each chunk `delay` after it was read.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    if delay.is_zero() {
        let _ = tokio::io::copy(&mut from, &mut to).await;
        return;
    }
    let (chunks, mut due) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        loop {
            let Ok(read) = from.read(&mut buffer).await else { return };
            if read == 0 {
                return;
            }
            let at = tokio::time::Instant::now() + delay;
            if chunks.send((at, buffer[..read].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = due.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_come_from_the_third_octet() {
        assert_eq!(region_of("127.0.2.11".parse().unwrap()), Some(2));
        assert_eq!(region_of("127.0.0.1".parse().unwrap()), None);
        assert_eq!(region_of("10.0.2.1".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn a_cut_pair_is_closed_and_a_healed_one_passes_with_its_latency() {
        let echo = TcpListener::bind("127.0.1.50:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 16];
                    while let Ok(read) = socket.read(&mut buffer).await {
                        if read == 0 || socket.write_all(&buffer[..read]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let proxy = FaultProxy::default();
        proxy.set_latency(1, 2, 30);
        let public: SocketAddr = "127.0.1.51:0".parse().unwrap();
        let listener = TcpListener::bind(public).await.unwrap();
        let public = listener.local_addr().unwrap();
        drop(listener);
        proxy.listen(public, echo_addr, 1).await.unwrap();

        let connect_from = |ip: &str| {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(public)
        };
        // Region 2 → region 1: 30 ms each way.
        let mut client = connect_from("127.0.2.60").await.unwrap();
        let started = tokio::time::Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut answer = [0u8; 4];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(60), "{:?}", started.elapsed());

        // Cut: the open connection is closed.
        proxy.partition(2, &[1, 2, 3]);
        let mut buffer = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buffer)).await.unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "closed by the cut");
        // Region 1 → region 1 is not affected.
        let mut local = connect_from("127.0.1.61").await.unwrap();
        local.write_all(b"same").await.unwrap();
        local.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"same");
        proxy.heal_all();
        let mut again = connect_from("127.0.2.62").await.unwrap();
        again.write_all(b"back").await.unwrap();
        again.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"back");
    }
}
