//! The gateway's HTTP listener, accepting by hand (not `axum::serve`) for
//! the bounds a public port needs: at most `connections_per_ip_max`
//! connections from one address, a TLS handshake that must finish within
//! `security.handshake_timeout_ms`, and request headers within
//! `clients.header_read_timeout_ms` (slowloris). Each connection is then
//! served by hyper (HTTP/1.1 with upgrades, for the WebSocket).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub connections_per_ip_max: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
}

/// Open connections per peer address.
#[derive(Clone, Default)]
struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; its count is given back on drop.
struct Slot {
    per_ip: PerIp,
    ip: IpAddr,
}

impl PerIp {
    fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
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

/// Serves `router` on `listener` until `shutdown`, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Bounds,
    mut shutdown: watch::Receiver<bool>,
) {
    let per_ip = PerIp::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, say: pause rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = per_ip.take(peer.ip(), bounds.connections_per_ip_max) else {
            tracing::debug!(peer = %peer, "refused: too many connections from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (router, tls) = (router.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_connection(stream, router, bounds).await,
                Some(acceptor) => match tokio::time::timeout(bounds.handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_connection(stream, router, bounds).await,
                    Ok(Err(error)) => tracing::debug!(peer = %peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake not done in time"),
                },
            }
        });
    }
}

async fn serve_connection<I>(io: I, router: axum::Router, bounds: Bounds)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(bounds.header_read_timeout);
    let service = TowerToHyperService::new(router);
    if let Err(error) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::debug!(%error, "http connection ended");
    }
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
