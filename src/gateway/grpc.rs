//! The gateway's gRPC side: `spaceraft.v1.Gateway/Session`, the twin of the
//! WebSocket protocol for native clients. Requests and events convert one to
//! one to the protocol types; a close becomes the stream's final status
//! (RESOURCE_EXHAUSTED "slow consumer", UNAVAILABLE "going away",
//! INVALID_ARGUMENT for a protocol error).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::gateway::fanout::{ClientEnds, Outbound};
use crate::gateway::protocol::{ClientRequest, CloseReason, MessageView, ServerEvent};
use crate::gateway::server::GatewayState;
use crate::gateway::session::Session;
use crate::pb;
use crate::pb::gateway_event::Event;
use crate::pb::gateway_request::Request as Req;

pub struct GatewayGrpc {
    pub state: Arc<GatewayState>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::GatewayEvent, Status>> + Send + 'static>>;

pub fn request_from_pb(request: pb::GatewayRequest) -> Result<ClientRequest, String> {
    Ok(match request.request.ok_or("empty request")? {
        Req::Hello(hello) => ClientRequest::Hello {
            user: hello.user,
            cursors: hello.cursors.into_iter().collect(),
            token: Some(hello.token).filter(|token| !token.is_empty()),
        },
        Req::Subscribe(subscribe) => ClientRequest::Subscribe { space: subscribe.space, after: subscribe.after },
        Req::Unsubscribe(unsubscribe) => ClientRequest::Unsubscribe { space: unsubscribe.space },
        Req::Post(post) => {
            ClientRequest::Post { reference: post.r#ref, space: post.space, body: post.body, key: post.key }
        }
        Req::History(history) => ClientRequest::History {
            reference: history.r#ref,
            space: history.space,
            from: history.from,
            limit: history.limit,
        },
        Req::Spaces(spaces) => ClientRequest::Spaces { reference: spaces.r#ref },
        Req::Ping(ping) => ClientRequest::Ping { reference: ping.r#ref },
    })
}

fn message_to_pb(view: MessageView) -> pb::Message {
    pb::Message {
        space: view.space,
        seq: view.seq,
        author: view.author,
        body: view.body,
        idempotency_key: view.key,
        log_index: 0,
    }
}

pub fn event_to_pb(event: ServerEvent) -> pb::GatewayEvent {
    let event = match event {
        ServerEvent::Welcome { user, region, spaces, gateways } => {
            Event::Welcome(pb::Welcome { user, region, spaces: spaces.into_iter().map(Into::into).collect(), gateways })
        }
        ServerEvent::Subscribed { space, resumed, next_seq, last_seq } => {
            Event::Subscribed(pb::Subscribed { space, resumed, next_seq, last_seq })
        }
        ServerEvent::CaughtUp { space, last_seq } => Event::CaughtUp(pb::SpaceCaughtUp { space, last_seq }),
        ServerEvent::Message(view) => Event::Message(message_to_pb(view)),
        ServerEvent::Unsubscribed { space } => Event::Unsubscribed(pb::Unsubscribed { space }),
        ServerEvent::Posted { reference, space, seq, duplicate } => {
            Event::Posted(pb::Posted { r#ref: reference, space, seq, duplicate })
        }
        ServerEvent::History { reference, space, messages, first_seq, last_seq } => Event::History(pb::HistoryPage {
            r#ref: reference,
            space,
            messages: messages.into_iter().map(message_to_pb).collect(),
            first_seq,
            last_seq,
        }),
        ServerEvent::Spaces { reference, spaces } => {
            Event::Spaces(pb::SpaceList { r#ref: reference, spaces: spaces.into_iter().map(Into::into).collect() })
        }
        ServerEvent::Pong { reference } => Event::Pong(pb::Pong { r#ref: reference }),
        ServerEvent::Error { reference, space, code, message } => Event::Error(pb::GatewayError {
            r#ref: reference.unwrap_or_default(),
            space: space.unwrap_or_default(),
            code: code.as_str().to_string(),
            message,
        }),
    };
    pb::GatewayEvent { event: Some(event) }
}

fn close_status(reason: &CloseReason) -> Status {
    match reason {
        CloseReason::Protocol(_) | CloseReason::TooBig => Status::invalid_argument(reason.text()),
        CloseReason::SlowConsumer => Status::resource_exhausted(reason.text()),
        CloseReason::GoingAway | CloseReason::Full => Status::unavailable(reason.text()),
        CloseReason::Unauthenticated(_) => Status::unauthenticated(reason.text()),
    }
}

/// Unregisters a gRPC client when tonic drops its event stream: only then
/// are its queue and connection released (a client that stops reading keeps
/// the call open), so it counts against `connections_max` until then.
struct Registered {
    state: Arc<GatewayState>,
    client: crate::gateway::fanout::ClientHandle,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.state.leave(&self.client);
    }
}

/// The events of one client as a stream that ends with the close status.
fn events(ends: ClientEnds, registered: Registered) -> EventStream {
    let stream = futures::stream::unfold(Some((ends, registered)), |state| async move {
        let (mut ends, registered) = state?;
        let closing = ends.close.borrow_and_update().clone();
        if let Some(reason) = closing {
            return Some((Err(close_status(&reason)), None));
        }
        let state = |ends| Some((ends, registered));
        tokio::select! {
            biased;
            changed = ends.close.changed() => {
                if changed.is_err() {
                    return None;
                }
                let reason = ends.close.borrow().clone()?;
                Some((Err(close_status(&reason)), None))
            }
            item = ends.queue.recv() => {
                let event = match item? {
                    Outbound::Deliver(delivery) => pb::GatewayEvent {
                        event: Some(Event::Message(pb::Message { log_index: 0, ..delivery.message.clone() })),
                    },
                    Outbound::Event(event) => event_to_pb(event),
                };
                Some((Ok(event), state(ends)))
            }
        }
    });
    Box::pin(stream)
}

#[tonic::async_trait]
impl pb::gateway_server::Gateway for GatewayGrpc {
    type SessionStream = EventStream;

    async fn session(&self, request: Request<Streaming<pb::GatewayRequest>>) -> Result<Response<EventStream>, Status> {
        let clients = &self.state.shared.config.clients;
        let bearer = crate::security::gate::bearer(request.metadata()).map(str::to_string);
        let mut incoming = request.into_inner();
        let first = tokio::time::timeout(Duration::from_millis(clients.hello_wait_ms_max), incoming.next())
            .await
            .map_err(|_| Status::invalid_argument("protocol error: no hello in time"))?
            .ok_or_else(|| Status::invalid_argument("protocol error: stream ended before hello"))??;
        let Ok(ClientRequest::Hello { user, cursors, token }) = request_from_pb(first) else {
            return Err(Status::invalid_argument("protocol error: the first request must be hello"));
        };
        let user = self
            .state
            .auth
            .user(&user, token.as_deref().or(bearer.as_deref()))
            .map_err(|refusal| close_status(&refusal))?;
        let (client, ends) = self.state.admit(user).ok_or_else(|| Status::unavailable("gateway is full"))?;
        let (requests, requests_receiver) = mpsc::channel(64);
        let state = self.state.clone();
        let session_client = client.clone();
        tokio::spawn(async move {
            let session = tokio::spawn(
                Session::new(state.shared.clone(), session_client.clone()).run(cursors, requests_receiver),
            );
            let mut close_requested = session_client.close_requested();
            loop {
                tokio::select! {
                    request = incoming.next() => match request {
                        Some(Ok(request)) => match request_from_pb(request) {
                            Ok(request) => {
                                if requests.send(request).await.is_err() {
                                    break;
                                }
                            }
                            Err(why) => {
                                session_client.close(CloseReason::Protocol(why));
                                break;
                            }
                        },
                        Some(Err(status)) => {
                            let why = format!("undecodable request ({:?})", status.code());
                            session_client.close(CloseReason::Protocol(why));
                            break;
                        }
                        None => break,
                    },
                    _ = crate::gateway::fanout::close_decided(&mut close_requested) => break,
                }
            }
            drop(requests);
            let reason = close_requested.borrow().clone();
            state.closing(reason.as_ref());
            if reason.is_none() {
                // The client hung up: end its event stream too.
                session_client.close(CloseReason::GoingAway);
            }
            let _ = session.await;
        });
        Ok(Response::new(events(ends, Registered { state: self.state.clone(), client })))
    }
}
