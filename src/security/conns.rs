//! Connections per peer address: a listener admits at most N open
//! connections from one IP address and closes the rest at once, so one
//! host cannot hold every slot (gateways: `clients.connections_per_ip_max`;
//! nodes: `security.connections_per_ip_max`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Open connections per peer address. Cheap to clone; clones share counts.
#[derive(Clone, Default)]
pub struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; its count is given back on drop.
pub struct Slot {
    per_ip: PerIp,
    ip: IpAddr,
}

impl PerIp {
    /// A slot for a connection from `ip`, unless it has `max` open already.
    pub fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut open = self.open.lock().expect("per-ip lock");
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Slot { per_ip: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().expect("per-ip lock");
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A TCP connection holding its slot until it is closed; tonic sees it as
/// the TCP stream it wraps (its connect info included, which TLS peer
/// certificates are read through).
pub struct Counted {
    stream: TcpStream,
    _slot: Slot,
}

impl Counted {
    pub fn new(stream: TcpStream, slot: Slot) -> Counted {
        Counted { stream, _slot: slot }
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The connections of `listener`, at most `max` open per address, with
/// Nagle off: what a tonic server serves.
pub fn incoming(
    listener: tokio::net::TcpListener,
    max: usize,
) -> impl futures::Stream<Item = std::io::Result<Counted>> + Send + 'static {
    let per_ip = PerIp::default();
    futures::stream::unfold((listener, per_ip), move |(listener, per_ip)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(slot) = per_ip.take(peer.ip(), max) else {
                        tracing::debug!(peer = %peer, "refused: too many connections from this address");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    return Some((Ok(Counted::new(stream, slot)), (listener, per_ip)));
                }
                Err(error) => {
                    // Out of descriptors, say: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_slots_back() {
        let per_ip = PerIp::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let first = per_ip.take(ip, 2).unwrap();
        let _second = per_ip.take(ip, 2).unwrap();
        assert!(per_ip.take(ip, 2).is_none());
        assert!(per_ip.take("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(first);
        assert!(per_ip.take(ip, 2).is_some());
    }
}
