//! The gateway's HTTP side (axum): the chat page, the WebSocket endpoint
//! `/v1/ws` speaking the JSON protocol of docs/protocol.md (browsers only
//! from allowed origins), `/v1/status`, `/healthz`, and on a development
//! cluster `/v1/login`.
//!
//! Each connection has a reader (this task: frames in, requests to the
//! session), a session task, and a writer task that drains the client's
//! bounded queue into the socket, several frames per flush. When the gateway
//! decides to close a client (protocol error, slow consumer, shutdown) the
//! writer sends the close frame after what is already written; a writer
//! stuck on a client that reads nothing is dropped after `close_wait_ms_max`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::gateway::fanout::{ClientEnds, Outbound};
use crate::gateway::protocol::{parse_request, ClientRequest, CloseReason};
use crate::gateway::server::GatewayState;
use crate::gateway::session::Session;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// Frames written per flush at most: a fan-out burst goes out in few
/// syscalls, and a flush still happens often enough to bound latency.
const FRAMES_PER_FLUSH_MAX: usize = 64;
/// Requests parsed ahead of the session.
const REQUESTS_AHEAD_LEN_MAX: usize = 64;

pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }))
        .route("/app.js", get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }))
        .route("/style.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/v1/ws", get(upgrade))
        .route("/v1/login", axum::routing::post(dev_login))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct LoginRequest {
    user: String,
}

/// `POST /v1/login {"user": NAME}`: a token for NAME, on a development
/// cluster only (`dev_login_signing_key`); 404 elsewhere.
async fn dev_login(State(state): State<Arc<GatewayState>>, Json(login): Json<LoginRequest>) -> Response {
    match state.auth.dev_login(&login.user) {
        None => (StatusCode::NOT_FOUND, "no login here: present a token from your identity provider\n").into_response(),
        Some(Ok(token)) => Json(serde_json::json!({ "user": login.user, "token": token })).into_response(),
        Some(Err(why)) => (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    }
}

/// Whether a browser page of `origin` may open the WebSocket: the
/// gateway's own page (same host), or one of `allowed_origins`. A request
/// without an Origin is not a browser's and is not checked.
fn origin_allowed(headers: &axum::http::HeaderMap, allowed_origins: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed_origins.iter().any(|allowed| allowed == origin) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok()).unwrap_or_default();
    let own = origin.strip_prefix("https://").or_else(|| origin.strip_prefix("http://"));
    !host.is_empty() && own == Some(host)
}

async fn status(State(state): State<Arc<GatewayState>>) -> impl IntoResponse {
    Json(state.status())
}

/// Each connection's read buffer, allocated when it opens (128 KiB by
/// default, 1.3 GB at 10,000 clients): clients send small frames, and a
/// larger one is read in several chunks.
const READ_BUFFER_BYTES: usize = 8 * 1024;

async fn upgrade(
    State(state): State<Arc<GatewayState>>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // With security off names are believed anyway: no origin to protect.
    if !state.auth.is_insecure() && !origin_allowed(&headers, &state.shared.config.clients.allowed_origins) {
        return (StatusCode::FORBIDDEN, "this page's origin may not open the WebSocket (clients.allowed_origins)\n")
            .into_response();
    }
    if state.is_full() {
        return (StatusCode::SERVICE_UNAVAILABLE, "gateway is full; try another\n").into_response();
    }
    let frame_bytes_max = state.shared.config.clients.frame_bytes_max;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(frame_bytes_max)
        .max_frame_size(frame_bytes_max)
        .on_upgrade(move |socket| serve_socket(state, socket))
}

fn close_message(reason: &CloseReason) -> Message {
    Message::Close(Some(CloseFrame { code: reason.code(), reason: Utf8Bytes::from(reason.text()) }))
}

/// Waits for the `hello` frame.
async fn read_hello(socket: &mut WebSocket, wait: Duration) -> Result<ClientRequest, CloseReason> {
    let frame = match tokio::time::timeout(wait, socket.next()).await {
        Err(_) => return Err(CloseReason::Protocol("no hello in time".into())),
        Ok(None) | Ok(Some(Err(_))) => return Err(CloseReason::Protocol("connection ended before hello".into())),
        Ok(Some(Ok(frame))) => frame,
    };
    let Message::Text(text) = frame else {
        return Err(CloseReason::Protocol("the first frame must be a hello text frame".into()));
    };
    match parse_request(&text) {
        Ok(hello @ ClientRequest::Hello { .. }) => Ok(hello),
        Ok(_) => Err(CloseReason::Protocol("the first frame must be hello".into())),
        Err(why) => Err(CloseReason::Protocol(why)),
    }
}

async fn serve_socket(state: Arc<GatewayState>, mut socket: WebSocket) {
    let clients = &state.shared.config.clients;
    let hello = match read_hello(&mut socket, Duration::from_millis(clients.hello_wait_ms_max)).await {
        Ok(hello) => hello,
        Err(reason) => {
            let _ = socket.send(close_message(&reason)).await;
            return;
        }
    };
    let ClientRequest::Hello { user, cursors, token } = hello else { unreachable!("read_hello returns a hello") };
    let user = match state.auth.user(&user, token.as_deref()) {
        Ok(user) => user,
        Err(refusal) => {
            let _ = socket.send(close_message(&refusal)).await;
            return;
        }
    };
    let Some((client, ends)) = state.admit(user) else {
        let _ = socket.send(close_message(&CloseReason::Full)).await;
        return;
    };
    let (sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(write_frames(sink, ends));
    let (requests, requests_receiver) = mpsc::channel(REQUESTS_AHEAD_LEN_MAX);
    let session = tokio::spawn(Session::new(state.shared.clone(), client.clone()).run(cursors, requests_receiver));
    let mut close_requested = client.close_requested();
    let client_left = loop {
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(text))) => match parse_request(&text) {
                    Ok(request) => {
                        if requests.send(request).await.is_err() {
                            break true;
                        }
                    }
                    Err(why) => {
                        client.close(CloseReason::Protocol(why));
                        break false;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    client.close(CloseReason::Protocol("binary frames are not part of the protocol".into()));
                    break false;
                }
                Some(Ok(Message::Close(_))) | None => break true,
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    if is_over_capacity(error) {
                        client.close(CloseReason::TooBig);
                        break false;
                    }
                    break true;
                }
            },
            _ = crate::gateway::fanout::close_decided(&mut close_requested) => break false,
        }
    };
    drop(requests);
    let reason = close_requested.borrow().clone();
    state.closing(reason.as_ref());
    if client_left {
        writer.abort();
    } else {
        // Let the writer get the close frame out after what it already
        // wrote, but not wait forever on a client that reads nothing.
        let wait = Duration::from_millis(clients.close_wait_ms_max);
        if tokio::time::timeout(wait, &mut writer).await.is_err() {
            writer.abort();
        }
    }
    state.leave(&client);
    let _ = session.await;
}

/// Drains a client's queue into its socket; on a close request, sends the
/// close frame and ends.
async fn write_frames(mut sink: futures::stream::SplitSink<WebSocket, Message>, ends: ClientEnds) {
    let ClientEnds { mut queue, mut close } = ends;
    loop {
        let closing = close.borrow_and_update().clone();
        if let Some(reason) = closing {
            let _ = sink.send(close_message(&reason)).await;
            return;
        }
        tokio::select! {
            biased;
            changed = close.changed() => if changed.is_err() { return },
            item = queue.recv() => {
                let Some(item) = item else { return };
                if sink.feed(frame(item)).await.is_err() {
                    return;
                }
                let mut written = 1;
                while written < FRAMES_PER_FLUSH_MAX {
                    let Ok(item) = queue.try_recv() else { break };
                    if sink.feed(frame(item)).await.is_err() {
                        return;
                    }
                    written += 1;
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        }
    }
}

fn frame(item: Outbound) -> Message {
    match item {
        Outbound::Deliver(delivery) => Message::Text(delivery.json.clone()),
        Outbound::Event(event) => Message::Text(Utf8Bytes::from(event.to_json())),
    }
}

/// Whether a WebSocket read failed because a frame or message was over
/// the configured size (tungstenite's capacity error).
fn is_over_capacity(error: axum::Error) -> bool {
    let inner = error.into_inner();
    matches!(
        inner.downcast_ref::<tokio_tungstenite::tungstenite::Error>(),
        Some(tokio_tungstenite::tungstenite::Error::Capacity(_))
    )
}
