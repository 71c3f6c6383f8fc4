//! The chaos workload, all through the gateways' WebSocket protocol:
//! publishers posting with idempotency keys and retrying on error or timeout
//! (each attempt recorded with its outcome), subscribers recording every
//! message they receive and resuming from their cursors on any gateway, and
//! readers making History reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::chaos::history::{Event, FinalMessage, Outcome};

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where events go, stamped with milliseconds since the run started.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder { start: Instant::now(), events: Arc::default() }
    }

    pub fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub fn push(&self, event: Event) {
        self.events.lock().expect("events lock").push(event);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("events lock").clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// How long a request waits for its answer before it counts as unknown.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// Attempts at one logical post before giving it up.
const POST_ATTEMPTS_MAX: u32 = 30;

/// Connects to the first gateway of `urls` (from `first`) that answers
/// hello; returns the socket and the index used.
async fn connect(urls: &[String], first: usize, user: &str, cursors: &BTreeMap<String, u64>) -> Option<(Ws, usize)> {
    for step in 0..urls.len() {
        let index = (first + step) % urls.len();
        let Ok(Ok((mut ws, _))) =
            tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(urls[index].as_str())).await
        else {
            continue;
        };
        let hello = json!({"type": "hello", "user": user, "cursors": cursors});
        if ws.send(Message::text(hello.to_string())).await.is_err() {
            continue;
        }
        match next_json(&mut ws, REPLY_WAIT).await {
            Some(welcome) if welcome["type"] == "welcome" => return Some((ws, index)),
            _ => continue,
        }
    }
    None
}

async fn next_json(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Sends `request` and waits for the frame answering `reference`.
async fn request(ws: &mut Ws, request: Value, reference: &str) -> Option<Value> {
    ws.send(Message::text(request.to_string())).await.ok()?;
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = next_json(ws, left).await?;
        if frame["ref"] == reference {
            return Some(frame);
        }
    }
}

pub struct Publisher {
    pub name: String,
    pub user: String,
    pub spaces: Vec<String>,
    /// Gateways, its own region's first.
    pub urls: Vec<String>,
    pub seed: u64,
    pub pause: Duration,
}

impl Publisher {
    pub async fn run(self, recorder: Recorder, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut connection: Option<(Ws, usize)> = None;
        let mut n = 0u64;
        while !*stop.borrow() {
            n += 1;
            let space = self.spaces[rng.random_range(0..self.spaces.len())].clone();
            let key = format!("{}-{n}", self.name);
            let body = format!("{} post {n}", self.name);
            let (name, urls) = (&self.name, &self.urls);
            post_until_settled(&recorder, name, &self.user, urls, &mut connection, &space, (&key, &body), None).await;
            tokio::select! {
                _ = tokio::time::sleep(self.pause) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Posts one logical message, retrying with the same key, until it is
/// acknowledged or refused (or the attempts run out, or `until` has passed
/// when an attempt ends: every attempt started is recorded). Returns the seq.
#[allow(clippy::too_many_arguments)]
pub async fn post_until_settled(
    recorder: &Recorder,
    process: &str,
    user: &str,
    urls: &[String],
    connection: &mut Option<(Ws, usize)>,
    space: &str,
    (key, body): (&str, &str),
    until: Option<Instant>,
) -> Option<u64> {
    for attempt in 0..POST_ATTEMPTS_MAX {
        if attempt > 0 && until.is_some_and(|until| Instant::now() >= until) {
            return None;
        }
        if connection.is_none() {
            let first = if attempt == 0 { 0 } else { attempt as usize };
            *connection = connect(urls, first, user, &BTreeMap::new()).await;
        }
        let start_ms = recorder.now_ms();
        let reference = format!("{key}#{attempt}");
        let answer = match connection.as_mut() {
            Some((ws, _)) => {
                let post = json!({"type": "post", "ref": reference, "space": space, "body": body, "key": key});
                request(ws, post, &reference).await
            }
            None => None,
        };
        let end_ms = recorder.now_ms();
        let (outcome, seq, error) = match &answer {
            Some(frame) if frame["type"] == "posted" => (Outcome::Ok, frame["seq"].as_u64(), None),
            Some(frame) if frame["code"] == "unavailable" || frame["code"] == "internal" => {
                (Outcome::Unknown, None, Some(frame["message"].as_str().unwrap_or("").to_string()))
            }
            Some(frame) => (Outcome::Failed, None, Some(format!("{}: {}", frame["code"], frame["message"]))),
            None => {
                *connection = None;
                (Outcome::Unknown, None, Some("no answer".to_string()))
            }
        };
        let settled = outcome != Outcome::Unknown;
        recorder.push(Event::Post {
            process: process.to_string(),
            space: space.to_string(),
            key: key.to_string(),
            body: body.to_string(),
            start_ms,
            end_ms,
            outcome,
            seq,
            error,
        });
        if settled {
            return seq;
        }
        tokio::time::sleep(Duration::from_millis(100 + 50 * attempt as u64)).await;
    }
    None
}

pub struct Subscriber {
    pub name: String,
    pub user: String,
    pub spaces: Vec<String>,
    pub urls: Vec<String>,
}

/// The last seq a subscriber has of each space, for the end of the run.
pub type Cursors = Arc<Mutex<BTreeMap<String, u64>>>;

impl Subscriber {
    pub async fn run(self, recorder: Recorder, cursors: Cursors, mut stop: watch::Receiver<bool>) {
        let mut attempt = 0usize;
        while !*stop.borrow() {
            let wanted: BTreeMap<String, u64> = {
                let cursors = cursors.lock().expect("cursors lock");
                self.spaces.iter().map(|space| (space.clone(), cursors.get(space).copied().unwrap_or(0))).collect()
            };
            let Some((mut ws, _)) = connect(&self.urls, attempt, &self.user, &wanted).await else {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            attempt = 0;
            loop {
                let frame = tokio::select! {
                    frame = ws.next() => frame,
                    _ = stop.changed() => return,
                };
                let Some(Ok(Message::Text(text))) = frame else {
                    if matches!(frame, Some(Ok(_))) {
                        continue;
                    }
                    break;
                };
                let Ok(event) = serde_json::from_str::<Value>(&text) else { continue };
                let space = event["space"].as_str().unwrap_or("").to_string();
                match event["type"].as_str() {
                    Some("message") => {
                        let seq = event["seq"].as_u64().unwrap_or(0);
                        cursors.lock().expect("cursors lock").insert(space.clone(), seq);
                        recorder.push(Event::Delivery {
                            subscriber: self.name.clone(),
                            user: self.user.clone(),
                            space,
                            seq,
                            body: event["body"].as_str().unwrap_or("").to_string(),
                            at_ms: recorder.now_ms(),
                        });
                    }
                    // A subscription the gateway could not start or keep
                    // (no leader for a while): subscribe again from the
                    // cursor, as the web page does.
                    Some("error") if !space.is_empty() && event["code"] != "not_member" => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let after = cursors.lock().expect("cursors lock").get(&space).copied().unwrap_or(0);
                        let subscribe = json!({"type": "subscribe", "space": space, "after": after});
                        if ws.send(Message::text(subscribe.to_string())).await.is_err() {
                            break;
                        }
                    }
                    Some("subscribed") if event["resumed"] == false => {
                        let next_seq = event["next_seq"].as_u64().unwrap_or(1);
                        cursors.lock().expect("cursors lock").insert(space.clone(), next_seq.saturating_sub(1));
                        recorder.push(Event::Discontinuity {
                            subscriber: self.name.clone(),
                            space,
                            next_seq,
                            at_ms: recorder.now_ms(),
                        });
                    }
                    _ => {}
                }
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

pub struct Reader {
    pub name: String,
    pub user: String,
    pub spaces: Vec<String>,
    pub urls: Vec<String>,
    pub seed: u64,
    pub interval: Duration,
}

impl Reader {
    pub async fn run(self, recorder: Recorder, mut stop: watch::Receiver<bool>) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut connection: Option<(Ws, usize)> = None;
        let mut n = 0u64;
        while !*stop.borrow() {
            n += 1;
            if connection.is_none() {
                connection = connect(&self.urls, n as usize, &self.user, &BTreeMap::new()).await;
            }
            let space = self.spaces[rng.random_range(0..self.spaces.len())].clone();
            let reference = format!("{}-read-{n}", self.name);
            let start_ms = recorder.now_ms();
            let answer = match connection.as_mut() {
                Some((ws, _)) => {
                    let read = json!({"type": "history", "ref": reference, "space": space, "from": 0, "limit": 20});
                    request(ws, read, &reference).await
                }
                None => None,
            };
            let end_ms = recorder.now_ms();
            let (last_seq, messages, error) = match answer {
                Some(frame) if frame["type"] == "history" => {
                    let messages = frame["messages"]
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .map(|m| FinalMessage {
                                    seq: m["seq"].as_u64().unwrap_or(0),
                                    key: m["key"].as_str().unwrap_or("").to_string(),
                                    body: m["body"].as_str().unwrap_or("").to_string(),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (frame["last_seq"].as_u64(), messages, None)
                }
                Some(frame) => (None, Vec::new(), Some(format!("{}: {}", frame["code"], frame["message"]))),
                None => {
                    connection = None;
                    (None, Vec::new(), Some("no answer".to_string()))
                }
            };
            recorder.push(Event::Read {
                reader: self.name.clone(),
                user: self.user.clone(),
                space,
                start_ms,
                end_ms,
                last_seq,
                messages,
                error,
            });
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.changed() => {}
            }
        }
    }
}
