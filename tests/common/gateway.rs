//! Gateways for integration tests: real `spaceraft gateway` processes in
//! front of a [`TestCluster`], and WebSocket clients (tokio-tungstenite)
//! that record every message they receive and resume from their cursors.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::{free_ports, spaceraft_bin, TestCluster, REGIONS};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct TestGateway {
    pub region: String,
    pub http: String,
    pub grpc: String,
    pub config_path: std::path::PathBuf,
    pub log_path: std::path::PathBuf,
    pub process: Option<Child>,
}

impl TestGateway {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.http)
    }
}

/// Upstream timings short enough for tests.
pub const TEST_UPSTREAM: &str = "[upstream]\nsilence_ms_max = 1000\nprobe_interval_ms = 200\nlag_ms_max = 2000\n\
     home_healthy_ms_min = 2000\nfailed_cooldown_ms = 1000\nconnect_timeout_ms = 500\n";

impl TestCluster {
    /// Starts one gateway per region (each knowing every node) and waits
    /// until each follows a replica.
    pub async fn start_gateways(&mut self, extra_config: &str) {
        let ports_of_all = free_ports(2 * self.nodes.len());
        let ws_url = |index: usize| format!("ws://127.0.0.1:{}/v1/ws", ports_of_all[2 * index]);
        for index in 0..self.nodes.len() {
            let ports = &ports_of_all[2 * index..2 * index + 2];
            let region = REGIONS[index % 3].to_string();
            let config_path = self.dir.path().join(format!("gateway-{region}.toml"));
            let mut text = format!(
                "region = \"{region}\"\nhttp_addr = \"127.0.0.1:{}\"\ngrpc_addr = \"127.0.0.1:{}\"\n",
                ports[0], ports[1]
            );
            let peers: Vec<String> =
                (1..self.nodes.len()).map(|step| format!("{:?}", ws_url((index + step) % self.nodes.len()))).collect();
            text.push_str(&format!("peer_gateways = [{}]\n", peers.join(", ")));
            if let Some(tls) = &self.tls {
                // Pages may log in by name, as on `spaceraft dev`.
                let key = spaceraft::security::certs::signing_key(tls);
                text.push_str(&format!("dev_login_signing_key = {key:?}\n"));
            }
            for (node_index, node) in self.nodes.iter().enumerate() {
                text.push_str(&format!(
                    "[[nodes]]\nregion = \"{}\"\naddr = \"{}\"\n",
                    REGIONS[node_index % 3],
                    node.addr
                ));
            }
            // Plaintext unless the cluster is secured.
            match &self.tls {
                Some(tls) => {
                    text.push_str(&super::security_section(tls, &spaceraft::security::certs::gateway_stem(&region)))
                }
                None => text.push_str("[security]\ninsecure = true\n"),
            }
            text.push_str(extra_config);
            std::fs::write(&config_path, text).expect("write gateway config");
            self.gateways.push(TestGateway {
                region: region.clone(),
                http: format!("127.0.0.1:{}", ports[0]),
                grpc: format!("127.0.0.1:{}", ports[1]),
                log_path: self.dir.path().join(format!("gateway-{region}.log")),
                config_path,
                process: None,
            });
            self.start_gateway(index);
        }
        for index in 0..self.gateways.len() {
            self.wait_gateway_connected(index, Duration::from_secs(30)).await;
        }
    }

    pub fn start_gateway(&mut self, index: usize) {
        let gateway = &mut self.gateways[index];
        assert!(gateway.process.is_none(), "gateway {index} is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&gateway.log_path).expect("gateway log");
        let child = Command::new(spaceraft_bin())
            .arg("gateway")
            .arg("--config")
            .arg(&gateway.config_path)
            .env("SPACERAFT_LOG", "info,spaceraft::gateway::session=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start spaceraft gateway");
        gateway.process = Some(child);
    }

    pub fn kill_gateway(&mut self, index: usize) {
        if let Some(mut child) = self.gateways[index].process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn gateway_log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.gateways[index].log_path).unwrap_or_default()
    }

    /// The gateway's `/v1/status`, or None while it does not answer.
    pub async fn gateway_status(&self, index: usize) -> Option<Value> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/v1/status", self.gateways[index].http);
        let body = http_get_with(&url, self.tls.as_deref().map(spaceraft::security::certs::ca_pem).as_deref()).await?;
        serde_json::from_str(&body).ok()
    }

    pub async fn wait_gateway_connected(&self, index: usize, timeout: Duration) {
        let what = format!("gateway {index} to connect upstream");
        super::wait_until(timeout, &what, async || {
            let status = self.gateway_status(index).await;
            let upstreams = status.as_ref().map(|status| status["upstreams"].clone());
            let connected = upstreams.as_ref().and_then(Value::as_array).is_some_and(|slots| {
                !slots.is_empty() && slots.iter().all(|slot| slot["connected"].as_bool() == Some(true))
            });
            if connected {
                Ok(())
            } else {
                Err(upstreams)
            }
        })
        .await
    }
}

/// A minimal HTTP/1.1 GET returning the JSON body (keeps the test free of
/// an HTTP client dependency).
pub async fn http_get_json(url: &str) -> Option<Value> {
    let body = http_get(url).await?;
    serde_json::from_str(&body).ok()
}

pub async fn http_get(url: &str) -> Option<String> {
    http_get_with(url, None).await
}

/// A TLS client trusting only the CA in `ca` (PEM).
pub fn tls_connector(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(certificate.expect("CA certificate")).expect("CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// A TLS connection to `addr` (host:port) trusting `ca`.
pub async fn tls_connect(
    addr: &str,
    ca: &std::path::Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let host = addr.rsplit_once(':').map(|(host, _)| host).unwrap_or(addr).to_string();
    let name = rustls_pki_types::ServerName::try_from(host)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tls_connector(ca).connect(name, tcp).await
}

/// GET over HTTP/1.1 (`https://` when `ca` is given): the body of a 200.
pub async fn http_get_with(url: &str, ca: Option<&std::path::Path>) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match ca {
        None => {
            let mut stream =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(host)).await.ok()?.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.ok()?.ok()?;
        }
        Some(ca) => {
            let mut stream = tokio::time::timeout(Duration::from_secs(2), tls_connect(host, ca)).await.ok()?.ok()?;
            stream.write_all(request.as_bytes()).await.ok()?;
            // A server may end TLS without close_notify: what was read counts.
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await.ok()?;
        }
    }
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(body.to_string())
}

/// Opens a WebSocket and sends hello; returns the socket and the welcome.
pub async fn ws_hello(url: &str, user: &str, cursors: &BTreeMap<String, u64>) -> Result<(Ws, Value), String> {
    let (mut ws, _) = tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let hello = json!({"type": "hello", "user": user, "cursors": cursors});
    ws.send(Message::text(hello.to_string())).await.map_err(|e| e.to_string())?;
    let welcome = next_json(&mut ws, Duration::from_secs(15)).await.map_err(|e| format!("no welcome: {e}"))?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    Ok((ws, welcome))
}

/// The next JSON frame; Err with the close code/reason when closed.
pub async fn next_json(ws: &mut Ws, timeout: Duration) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next()).await.map_err(|_| "timed out".to_string())?;
        match frame {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).map_err(|e| e.to_string()),
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(frame) => format!("closed {} {}", u16::from(frame.code), frame.reason),
                    None => "closed".into(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("error {error}")),
            None => return Err("ended".into()),
        }
    }
}

/// What a recording client has seen.
#[derive(Default, Debug)]
pub struct Seen {
    /// Seqs received per space, in arrival order (duplicates kept).
    pub seqs: BTreeMap<String, Vec<u64>>,
    pub bodies: BTreeMap<(String, u64), String>,
    /// Error frames received.
    pub errors: Vec<Value>,
    pub connects: u64,
    /// Close codes/reasons seen.
    pub closes: Vec<String>,
    /// `subscribed` frames with resumed=false.
    pub discontinuities: u64,
}

/// A client that subscribes to `spaces` through the first reachable gateway
/// of `urls` (trying the next on any failure, after a short backoff) and
/// records everything, resuming from its cursors on every reconnect.
pub struct Recorder {
    pub user: String,
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub fn start(user: &str, spaces: &[&str], urls: Vec<String>) -> Recorder {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let user_name = user.to_string();
        let spaces: Vec<String> = spaces.iter().map(|s| s.to_string()).collect();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut attempt = 0usize;
            loop {
                let url = &urls[attempt % urls.len()];
                attempt += 1;
                let cursors: BTreeMap<String, u64> = {
                    let seen = record.lock().unwrap();
                    spaces
                        .iter()
                        .map(|space| (space.clone(), seen.seqs.get(space).and_then(|s| s.last().copied()).unwrap_or(0)))
                        .collect()
                };
                let Ok((mut ws, _)) = ws_hello(url, &user_name, &cursors).await else {
                    tokio::time::sleep(Duration::from_millis(100 + (attempt as u64 * 37) % 200)).await;
                    continue;
                };
                record.lock().unwrap().connects += 1;
                loop {
                    match next_json(&mut ws, Duration::from_secs(3600)).await {
                        Ok(event) => {
                            let mut seen = record.lock().unwrap();
                            match event["type"].as_str() {
                                Some("message") => {
                                    let space = event["space"].as_str().unwrap().to_string();
                                    let seq = event["seq"].as_u64().unwrap();
                                    seen.bodies.insert((space.clone(), seq), event["body"].as_str().unwrap().into());
                                    seen.seqs.entry(space).or_default().push(seq);
                                }
                                Some("error") => seen.errors.push(event),
                                Some("subscribed") if event["resumed"] == false => seen.discontinuities += 1,
                                _ => {}
                            }
                        }
                        Err(why) => {
                            record.lock().unwrap().closes.push(why);
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100 + (attempt as u64 * 37) % 200)).await;
            }
        });
        Recorder { user: user.to_string(), seen, task }
    }

    pub fn seqs(&self, space: &str) -> Vec<u64> {
        self.seen.lock().unwrap().seqs.get(space).cloned().unwrap_or_default()
    }

    /// Waits until this client has received `1..=last_seq` of `space`.
    pub async fn wait_for(&self, space: &str, last_seq: u64, timeout: Duration) {
        let what = format!("{} to receive {space} up to seq {last_seq}", self.user);
        super::wait_until(timeout, &what, async || {
            let seqs = self.seqs(space);
            if seqs.last().copied().unwrap_or(0) >= last_seq {
                return Ok(());
            }
            let closes = self.seen.lock().unwrap().closes.clone();
            Err(format!("{} messages (last {:?}); closes: {closes:?}", seqs.len(), seqs.last()))
        })
        .await
    }

    /// Asserts that `space` was received as exactly 1..=last_seq, in order,
    /// once each.
    pub fn assert_exactly(&self, space: &str, last_seq: u64) {
        let seqs = self.seqs(space);
        let expected: Vec<u64> = (1..=last_seq).collect();
        if seqs != expected {
            let duplicates = seqs.len() as i64 - seqs.iter().collect::<std::collections::BTreeSet<_>>().len() as i64;
            let missing: Vec<u64> = expected.iter().filter(|seq| !seqs.contains(seq)).copied().take(10).collect();
            panic!(
                "{} on {space}: {} messages received, expected {last_seq}; duplicates {duplicates}, first missing {missing:?}, out of order {}",
                self.user,
                seqs.len(),
                seqs.windows(2).any(|pair| pair[1] <= pair[0])
            );
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Posts through a gateway's WebSocket as `user`; returns the seq.
pub async fn ws_post(ws: &mut Ws, space: &str, body: &str, key: &str) -> Result<u64, Value> {
    let reference = format!("r-{key}");
    let post = json!({"type": "post", "ref": reference, "space": space, "body": body, "key": key});
    ws.send(Message::text(post.to_string())).await.map_err(|e| json!(e.to_string()))?;
    loop {
        let event = next_json(ws, Duration::from_secs(30)).await.map_err(|e| json!(e))?;
        if event["ref"] == reference.as_str() {
            return match event["type"].as_str() {
                Some("posted") => Ok(event["seq"].as_u64().unwrap()),
                _ => Err(event),
            };
        }
    }
}
