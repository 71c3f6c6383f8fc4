//! Telling why an endpoint is not a Spaceraft node. spacectl makes the TCP
//! connection itself, hands it to tonic, and remembers the first bytes the
//! peer sends: when the health check that follows fails, those bytes say
//! what answered (a TLS server, an HTTP/1 server, nothing at all), which
//! the error tonic reports ("transport error") does not.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// The service a node reports as serving through `grpc.health.v1`.
pub const NODE_SERVICE: &str = crate::pb::client_server::SERVICE_NAME;

/// How many of the peer's first bytes are kept: enough for a TLS record
/// header or `HTTP/1.1`.
const FIRST_BYTES_LEN: usize = 8;

/// The first bytes a peer sent on a connection, shared with the stream that
/// records them.
#[derive(Clone, Default)]
pub struct FirstBytes(Arc<Mutex<Vec<u8>>>);

impl FirstBytes {
    pub fn get(&self) -> Vec<u8> {
        self.0.lock().expect("first bytes lock").clone()
    }

    fn record(&self, bytes: &[u8]) {
        let mut kept = self.0.lock().expect("first bytes lock");
        let room = FIRST_BYTES_LEN.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// A TCP stream that records the first bytes read from it.
pub struct RecordingStream {
    inner: TcpStream,
    received: FirstBytes,
}

impl AsyncRead for RecordingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let filled_before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.received.record(&buf.filled()[filled_before..]);
        }
        polled
    }
}

impl AsyncWrite for RecordingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connector for tonic that hands over `stream` (already connected), and
/// connects anew should the channel ever reconnect.
pub fn connector(
    stream: TcpStream,
    received: FirstBytes,
) -> impl tower::Service<Uri, Response = TokioIo<RecordingStream>, Error = std::io::Error, Future = impl Send> + Send + 'static
{
    let _ = stream.set_nodelay(true);
    let connected = Arc::new(Mutex::new(Some(stream)));
    tower::service_fn(move |uri: Uri| {
        let connected = connected.clone();
        let received = received.clone();
        async move {
            let ready = connected.lock().expect("connected stream lock").take();
            let inner = match ready {
                Some(stream) => stream,
                None => {
                    let authority = uri.authority().map(|authority| authority.to_string()).unwrap_or_default();
                    let stream = TcpStream::connect(authority).await?;
                    let _ = stream.set_nodelay(true);
                    stream
                }
            };
            Ok(TokioIo::new(RecordingStream { inner, received }))
        }
    })
}

/// Why the TCP connection failed, from the kind of error.
pub fn tcp_failure(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused: nothing listens there (is the node running?)".into(),
        ErrorKind::TimedOut => "no TCP connection: timed out (host down, or packets dropped)".into(),
        ErrorKind::HostUnreachable => "no TCP connection: host unreachable".into(),
        ErrorKind::NetworkUnreachable => "no TCP connection: network unreachable".into(),
        _ => format!("cannot connect: {error}"),
    }
}

/// What a peer is, from the first bytes it sent, when it is not an HTTP/2
/// server; `None` when the bytes say nothing about it.
pub fn what_answered(first_bytes: &[u8]) -> Option<&'static str> {
    // A TLS record: content type 20..=23 (an alert, most likely), version 3.x.
    let tls = matches!(first_bytes, [20..=23, 3, ..]);
    if tls {
        return Some("a TLS server answered: spacectl speaks plain gRPC (nodes serve no TLS in this release)");
    }
    if first_bytes.starts_with(b"HTTP/") {
        return Some("an HTTP/1 server answered: not a gRPC service");
    }
    None
}

/// Why the HTTP/2 connection could not be made.
pub fn http2_failure(first_bytes: &[u8], error: &tonic::transport::Error) -> String {
    if let Some(what) = what_answered(first_bytes) {
        return what.into();
    }
    format!("no HTTP/2 connection: {}", error_chain(error))
}

/// Why the health check failed: a gRPC server without a node's services,
/// or a peer that does not speak gRPC.
pub fn probe_failure(first_bytes: &[u8], status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::NotFound | tonic::Code::Unimplemented => {
            return format!("a gRPC service, but not a Spaceraft node (it does not serve {NODE_SERVICE})");
        }
        _ => {}
    }
    if let Some(what) = what_answered(first_bytes) {
        return what.into();
    }
    if first_bytes.is_empty() {
        return "closed the connection without answering: not a gRPC service".into();
    }
    format!("not a gRPC service: {}", crate::error::ApiError::from_status(status))
}

/// An error and its sources, `outer: inner: innermost`.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_bytes_tell_tls_and_http_apart() {
        let tls_alert = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32];
        let tls_handshake = [0x16, 0x03, 0x01, 0x00, 0x05];
        assert!(what_answered(&tls_alert).unwrap().contains("TLS"));
        assert!(what_answered(&tls_handshake).unwrap().contains("TLS"));
        assert!(what_answered(b"HTTP/1.1 400").unwrap().contains("HTTP/1"));
        assert!(what_answered(b"HTTP/1.0 505").unwrap().contains("HTTP/1"));
        let settings_frame = [0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00];
        assert_eq!(what_answered(&settings_frame), None);
        assert_eq!(what_answered(&[]), None);
    }

    #[test]
    fn a_failed_health_check_says_what_answered() {
        let not_found = tonic::Status::not_found("unknown service");
        assert!(probe_failure(&[], &not_found).contains("not a Spaceraft node"));
        let unimplemented = tonic::Status::unimplemented("");
        assert!(probe_failure(&[0, 0, 0, 4], &unimplemented).contains("not a Spaceraft node"));
        let broken = tonic::Status::unavailable("connection reset");
        assert!(probe_failure(b"HTTP/1.1", &broken).contains("HTTP/1 server"));
        assert!(probe_failure(&[], &broken).contains("without answering"));
        assert!(probe_failure(&[0, 1, 2], &broken).contains("not a gRPC service: connection reset"));
    }

    #[test]
    fn only_the_first_bytes_are_kept() {
        let received = FirstBytes::default();
        received.record(b"HTTP/");
        received.record(b"1.1 400 Bad Request");
        assert_eq!(received.get(), b"HTTP/1.1");
    }

    #[test]
    fn a_refused_connection_says_nothing_listens() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(tcp_failure(&refused).contains("connection refused"));
    }
}
