//! The client protocol of a gateway, as Rust types: what a client asks
//! ([`ClientRequest`]) and what the gateway sends ([`ServerEvent`]). The
//! WebSocket transport speaks them as JSON (one object per text frame, field
//! `type` names the variant; docs/protocol.md); the gRPC transport converts
//! them to and from `spaceraft.v1.GatewayRequest`/`GatewayEvent`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pb;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientRequest {
    Hello {
        /// The user; with security on, the token's subject (and may be left
        /// out).
        #[serde(default)]
        user: String,
        /// Last seq seen per space; each is subscribed to resume after it.
        #[serde(default)]
        cursors: BTreeMap<String, u64>,
        /// The user's token (security on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    Subscribe {
        space: String,
        /// Resume after this seq; absent means only new messages.
        #[serde(default)]
        after: Option<u64>,
    },
    Unsubscribe {
        space: String,
    },
    Post {
        #[serde(default, rename = "ref")]
        reference: String,
        space: String,
        body: String,
        #[serde(default)]
        key: String,
    },
    History {
        #[serde(default, rename = "ref")]
        reference: String,
        space: String,
        /// First seq; 0 (the default) means the first retained one.
        #[serde(default)]
        from: u64,
        #[serde(default)]
        limit: u32,
    },
    Spaces {
        #[serde(default, rename = "ref")]
        reference: String,
    },
    Ping {
        #[serde(default, rename = "ref")]
        reference: String,
    },
}

/// A space as a client sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpaceView {
    pub name: String,
    pub members: Vec<String>,
    pub attrs: BTreeMap<String, String>,
    pub first_seq: u64,
    pub last_seq: u64,
}

impl From<pb::SpaceInfo> for SpaceView {
    fn from(info: pb::SpaceInfo) -> Self {
        SpaceView {
            name: info.name,
            members: info.members,
            attrs: info.attrs.into_iter().collect(),
            first_seq: info.first_seq,
            last_seq: info.last_seq,
        }
    }
}

impl From<SpaceView> for pb::SpaceInfo {
    fn from(view: SpaceView) -> Self {
        pb::SpaceInfo {
            name: view.name,
            members: view.members,
            attrs: view.attrs.into_iter().collect(),
            cluster_id: 0,
            first_seq: view.first_seq,
            last_seq: view.last_seq,
        }
    }
}

/// A message as a client sees it (also the body of a `message` frame).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageView {
    pub space: String,
    pub seq: u64,
    pub author: String,
    pub body: String,
    pub key: String,
}

impl From<&pb::Message> for MessageView {
    fn from(message: &pb::Message) -> Self {
        MessageView {
            space: message.space.clone(),
            seq: message.seq,
            author: message.author.clone(),
            body: message.body.clone(),
            key: message.idempotency_key.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    TooLarge,
    UnknownSpace,
    /// The space was deleted: its subscriptions end.
    Deleted,
    NotMember,
    NotSubscribed,
    Trimmed,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnknownSpace => "unknown_space",
            ErrorCode::Deleted => "deleted",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::Trimmed => "trimmed",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code a node's gRPC status maps to, by its error kind.
    pub fn from_status(status: &tonic::Status) -> ErrorCode {
        use crate::error::ErrorKind;
        match crate::error::ApiError::from_status(status).kind {
            ErrorKind::TooLarge { .. } => ErrorCode::TooLarge,
            ErrorKind::Invalid { .. } => ErrorCode::BadRequest,
            ErrorKind::NotFound => ErrorCode::UnknownSpace,
            ErrorKind::Deleted => ErrorCode::Deleted,
            ErrorKind::NotMember | ErrorKind::PermissionDenied | ErrorKind::Unauthenticated => ErrorCode::NotMember,
            ErrorKind::Trimmed => ErrorCode::Trimmed,
            ErrorKind::NotLeader { .. }
            | ErrorKind::NoQuorum
            | ErrorKind::NotProposed
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Unreachable
            | ErrorKind::Moved { .. }
            | ErrorKind::Moving
            | ErrorKind::ResourceExhausted => ErrorCode::Unavailable,
            ErrorKind::Exists | ErrorKind::Refused | ErrorKind::WrongCluster | ErrorKind::Internal => {
                ErrorCode::Internal
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    Welcome {
        user: String,
        region: String,
        spaces: Vec<SpaceView>,
        /// Other gateways to reconnect to when this one is gone.
        gateways: Vec<String>,
    },
    Subscribed {
        space: String,
        /// False: the cursor was trimmed by retention; delivery restarts at
        /// `next_seq`, a discontinuity.
        resumed: bool,
        next_seq: u64,
        last_seq: u64,
    },
    CaughtUp {
        space: String,
        last_seq: u64,
    },
    Message(MessageView),
    Unsubscribed {
        space: String,
    },
    Posted {
        #[serde(rename = "ref")]
        reference: String,
        space: String,
        seq: u64,
        duplicate: bool,
    },
    History {
        #[serde(rename = "ref")]
        reference: String,
        space: String,
        messages: Vec<MessageView>,
        first_seq: u64,
        last_seq: u64,
    },
    Spaces {
        #[serde(rename = "ref")]
        reference: String,
        spaces: Vec<SpaceView>,
    },
    Pong {
        #[serde(rename = "ref")]
        reference: String,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        space: Option<String>,
        code: ErrorCode,
        message: String,
    },
}

impl ServerEvent {
    pub fn error(reference: Option<&str>, space: Option<&str>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerEvent::Error {
            reference: reference.filter(|r| !r.is_empty()).map(str::to_string),
            space: space.map(str::to_string),
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server events always serialize")
    }
}

/// Why a gateway ends a client connection. Each has a WebSocket close code
/// (docs/protocol.md); all but `Protocol` invite a reconnect that resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client broke the protocol; reconnecting unchanged will not help.
    Protocol(String),
    /// The client's send queue overflowed: it reads slower than its spaces
    /// are written. Reconnect and resume from the cursors.
    SlowConsumer,
    /// The gateway is shutting down.
    GoingAway,
    /// The gateway has `connections_max` clients: try another.
    Full,
    /// A frame over the size limit.
    TooBig,
    /// No valid token (security on): get one and reconnect.
    Unauthenticated(String),
}

pub const CLOSE_PROTOCOL: u16 = 4000;
pub const CLOSE_UNAUTHENTICATED: u16 = 4001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
pub const CLOSE_GOING_AWAY: u16 = 1001;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

impl CloseReason {
    pub fn code(&self) -> u16 {
        match self {
            CloseReason::Protocol(_) => CLOSE_PROTOCOL,
            CloseReason::Unauthenticated(_) => CLOSE_UNAUTHENTICATED,
            CloseReason::SlowConsumer => CLOSE_SLOW_CONSUMER,
            CloseReason::GoingAway => CLOSE_GOING_AWAY,
            CloseReason::TooBig => CLOSE_TOO_BIG,
            CloseReason::Full => CLOSE_TRY_AGAIN_LATER,
        }
    }

    /// The close reason text; at most 123 bytes, as WebSocket requires.
    pub fn text(&self) -> String {
        let text = match self {
            CloseReason::Protocol(why) => format!("protocol error: {why}"),
            CloseReason::SlowConsumer => "slow consumer: send queue full; reconnect and resume".to_string(),
            CloseReason::GoingAway => "gateway shutting down; reconnect and resume".to_string(),
            CloseReason::TooBig => "frame too big".to_string(),
            CloseReason::Full => "gateway is full; try another".to_string(),
            CloseReason::Unauthenticated(why) => format!("unauthenticated: {why}"),
        };
        truncate_utf8(text, 123)
    }
}

fn truncate_utf8(mut text: String, len_max: usize) -> String {
    if text.len() <= len_max {
        return text;
    }
    let mut cut = len_max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// Parses one JSON text frame from a client.
pub fn parse_request(text: &str) -> Result<ClientRequest, String> {
    serde_json::from_str(text).map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_the_documented_json() {
        let hello = parse_request(r#"{"type":"hello","user":"alice","cursors":{"general":41}}"#).unwrap();
        assert_eq!(
            hello,
            ClientRequest::Hello {
                user: "alice".into(),
                cursors: BTreeMap::from([("general".into(), 41)]),
                token: None
            }
        );
        let post = parse_request(r#"{"type":"post","ref":"p1","space":"general","body":"hi","key":"k"}"#).unwrap();
        assert_eq!(
            post,
            ClientRequest::Post { reference: "p1".into(), space: "general".into(), body: "hi".into(), key: "k".into() }
        );
        let subscribe = parse_request(r#"{"type":"subscribe","space":"general"}"#).unwrap();
        assert_eq!(subscribe, ClientRequest::Subscribe { space: "general".into(), after: None });
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(parse_request("not json").is_err());
        assert!(parse_request(r#"{"type":"launch"}"#).unwrap_err().contains("unknown variant"));
        assert!(parse_request(r#"{"type":"post","space":"general"}"#).unwrap_err().contains("body"));
        assert!(parse_request(r#"{"type":"subscribe","space":"general","after":-1}"#).is_err());
    }

    #[test]
    fn events_serialize_as_documented() {
        let error = ServerEvent::error(Some("p1"), Some("general"), ErrorCode::NotMember, "no");
        assert_eq!(
            error.to_json(),
            r#"{"type":"error","ref":"p1","space":"general","code":"not_member","message":"no"}"#
        );
        let message = ServerEvent::Message(MessageView {
            space: "general".into(),
            seq: 3,
            author: "bob".into(),
            body: "hi".into(),
            key: "".into(),
        });
        assert_eq!(
            message.to_json(),
            r#"{"type":"message","space":"general","seq":3,"author":"bob","body":"hi","key":""}"#
        );
    }

    #[test]
    fn close_reasons_fit_a_close_frame() {
        let long = CloseReason::Protocol("é".repeat(200));
        assert!(long.text().len() <= 123);
        assert_eq!(CloseReason::SlowConsumer.code(), 4008);
    }
}
