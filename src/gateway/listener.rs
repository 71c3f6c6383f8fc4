//! The gateway's HTTP listener, accepting by hand (not `axum::serve`) for
//! the bounds a public port needs: at most `connections_per_ip_max`
//! connections from one address, a TLS handshake that must finish within
//! `security.handshake_timeout_ms`, and request headers within
//! `clients.header_read_timeout_ms` (slowloris). Each connection is then
//! served by hyper (HTTP/1.1 with upgrades, for the WebSocket).

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::security::conns::PerIp;

/// The bounds of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub connections_per_ip_max: usize,
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
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
