//! How spacectl talks to a cluster: try the endpoints in turn, retry what is
//! safe to retry, and turn gRPC statuses into documented exit codes.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::Channel;

use super::dial;
use super::GlobalArgs;
use crate::config::NetworkConfig;
use crate::pb;

/// A failed command and its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    NoLeader(String),
    /// A monitoring check found a critical problem (Nagios code 2).
    #[error("{0}")]
    Critical(String),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Failed(_) => 1,
            CtlError::Usage(_) => 2,
            CtlError::Unreachable(_) => 3,
            CtlError::Denied(_) => 4,
            CtlError::NoLeader(_) => 5,
            CtlError::Critical(_) => 2,
        }
    }

    /// The exit an error's kind calls for: refused requests fail (1),
    /// missing rights are denied (4), no leader or no quorum is 5, and what
    /// another try may fix (unreachable, an unknown outcome, a move in
    /// progress) is unreachable (3).
    fn from_status(endpoint: &str, status: &tonic::Status) -> CtlError {
        use crate::error::ErrorKind;
        let error = crate::error::ApiError::from_status(status);
        let message = format!("{endpoint}: {error}");
        match error.kind {
            ErrorKind::PermissionDenied | ErrorKind::Unauthenticated | ErrorKind::NotMember => {
                CtlError::Denied(message)
            }
            ErrorKind::NoQuorum | ErrorKind::NotLeader { .. } => CtlError::NoLeader(message),
            ErrorKind::NotProposed
            | ErrorKind::OutcomeUnknown
            | ErrorKind::Unreachable
            | ErrorKind::Moved { .. }
            | ErrorKind::Moving
            | ErrorKind::ResourceExhausted => CtlError::Unreachable(message),
            ErrorKind::NotFound
            | ErrorKind::Deleted
            | ErrorKind::Exists
            | ErrorKind::Trimmed
            | ErrorKind::Invalid { .. }
            | ErrorKind::TooLarge { .. }
            | ErrorKind::Refused
            | ErrorKind::WrongCluster
            | ErrorKind::Internal => CtlError::Failed(message),
        }
    }

    /// Worth trying another endpoint (every request spacectl sends is safe
    /// to send again: posts carry an idempotency key).
    fn is_retryable(&self) -> bool {
        matches!(self, CtlError::Unreachable(_) | CtlError::NoLeader(_))
    }

    /// How much an error says about the cluster: a live node's "no leader"
    /// explains a failure better than a node that did not answer.
    fn weight(&self) -> u8 {
        match self {
            CtlError::NoLeader(_) => 2,
            CtlError::Unreachable(_) => 1,
            _ => 3,
        }
    }
}

pub struct Endpoints {
    addrs: Vec<String>,
    /// Stamped on every request when given: a node of another cluster refuses it.
    cluster: crate::wire::ClusterId,
    /// TLS to the nodes (with `--cacert`), presenting `--cert` when given.
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// `--token`: sent as `authorization: Bearer` on every request.
    token: Option<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
}

impl Endpoints {
    pub fn new(global: &GlobalArgs) -> Result<Endpoints, CtlError> {
        let addrs: Vec<String> =
            global.endpoints.iter().map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        if addrs.is_empty() {
            return Err(CtlError::Usage("no endpoints given (--endpoints or SPACERAFT_ENDPOINTS)".into()));
        }
        let cluster = match global.cluster_id.as_deref().map(str::trim).filter(|id| !id.is_empty()) {
            Some(id) if crate::wire::is_cluster_id(id) => crate::wire::ClusterId::known(id),
            Some(id) => {
                return Err(CtlError::Usage(format!("--cluster-id {id:?} is not a cluster id (16 hex digits)")))
            }
            None => crate::wire::ClusterId::unknown(),
        };
        let identity = match (&global.cert, &global.key) {
            (Some(cert), Some(key)) => Some((cert.as_path(), key.as_path())),
            (None, None) => None,
            _ => return Err(CtlError::Usage("--cert and --key go together".into())),
        };
        let tls = match &global.cacert {
            Some(ca) => Some(
                crate::security::tls::ClientTls::load(ca, identity)
                    .map_err(|error| CtlError::Usage(format!("{error:#}")))?
                    .config(),
            ),
            None if identity.is_some() => return Err(CtlError::Usage("--cert needs --cacert".into())),
            None => None,
        };
        let token = global.token.as_deref().map(str::trim).filter(|token| !token.is_empty()).map(str::to_string);
        Ok(Endpoints {
            addrs,
            cluster,
            tls,
            token,
            dial_timeout: global.dial_timeout,
            command_timeout: global.command_timeout,
        })
    }

    /// `channel` with this command's cluster id and token on every request.
    fn stamped(&self, channel: Channel) -> Result<crate::wire::Stamped, CtlError> {
        let mut stamp = self.cluster.stamp();
        if let Some(token) = &self.token {
            stamp = stamp.with_token(token).map_err(|error| CtlError::Usage(error.message))?;
        }
        Ok(tonic::service::interceptor::InterceptedService::new(channel, stamp))
    }

    /// Connects to `addr` and checks, all within the dial timeout, that a
    /// Spaceraft node answers there (its `grpc.health.v1` status of the
    /// Client service). When not, the error says why: nothing listens, no
    /// TCP connection, a TLS or HTTP/1 server, a gRPC service that is not a
    /// node, or a peer that accepts and then says nothing.
    async fn connect(&self, addr: &str) -> Result<Channel, CtlError> {
        let config = NetworkConfig { connect_timeout_ms: self.dial_timeout.as_millis() as u64, ..Default::default() };
        let endpoint = crate::raft::network::endpoint(addr, &config, self.tls.as_ref())
            .map_err(|e| CtlError::Usage(format!("bad endpoint {addr:?}: {e}")))?
            .timeout(self.command_timeout);
        let Some(authority) = endpoint.uri().authority().map(|authority| authority.to_string()) else {
            return Err(CtlError::Usage(format!("bad endpoint {addr:?}: no host:port")));
        };
        let deadline = tokio::time::Instant::now() + self.dial_timeout;
        let within = humantime::format_duration(self.dial_timeout);
        let unreachable = |why: String| CtlError::Unreachable(format!("{addr}: {why}"));
        let stream = match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(&authority)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(unreachable(dial::tcp_failure(&error))),
            Err(_) => {
                return Err(unreachable(format!("no TCP connection within {within} (host down, or packets dropped)")))
            }
        };
        let received = dial::FirstBytes::default();
        let connector = dial::connector(stream, received.clone());
        let channel = match tokio::time::timeout_at(deadline, endpoint.connect_with_connector(connector)).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => return Err(unreachable(dial::http2_failure(&received.get(), &error))),
            Err(_) => return Err(unreachable(format!("no HTTP/2 connection within {within}"))),
        };
        let request = tonic_health::pb::HealthCheckRequest { service: dial::NODE_SERVICE.into() };
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let answer = tokio::time::timeout_at(deadline, health.check(request)).await;
        // The channel's own request timeout may fire at the same moment as
        // the deadline: both mean no answer in time.
        let in_time =
            |status: &tonic::Status| !matches!(status.code(), tonic::Code::Cancelled | tonic::Code::DeadlineExceeded);
        match answer {
            Ok(Ok(_)) => Ok(channel),
            Ok(Err(status)) if in_time(&status) => Err(unreachable(dial::probe_failure(&received.get(), &status))),
            _ if received.get().is_empty() => Err(unreachable(format!(
                "accepted the connection but sent nothing within {within}: not a gRPC service, or not answering"
            ))),
            _ => Err(unreachable(format!("no answer to a health check within {within}"))),
        }
    }

    /// Runs `call` on each endpoint in turn (and again, until the command
    /// timeout) while the failure is one another endpoint may not have.
    async fn each<T, F, Fut>(&self, mut call: F) -> Result<T, CtlError>
    where
        F: FnMut(crate::wire::Stamped) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let mut last_error = CtlError::Unreachable("no endpoint answered".into());
        let mut round = 0u32;
        while tokio::time::Instant::now() < deadline {
            for addr in &self.addrs {
                let channel = match self.connect(addr).await {
                    Ok(channel) => channel,
                    Err(error) => {
                        if error.weight() >= last_error.weight() {
                            last_error = error;
                        }
                        continue;
                    }
                };
                match tokio::time::timeout_at(deadline, call(self.stamped(channel)?)).await {
                    Ok(Ok(value)) => return Ok(value),
                    Ok(Err(status)) => {
                        let error = CtlError::from_status(addr, &status);
                        if !error.is_retryable() {
                            return Err(error);
                        }
                        if error.weight() >= last_error.weight() {
                            last_error = error;
                        }
                    }
                    Err(_) => {
                        // Out of time: a known "no leader" explains it best.
                        if matches!(last_error, CtlError::NoLeader(_)) {
                            return Err(last_error);
                        }
                        return Err(CtlError::Unreachable(format!(
                            "{addr}: no answer within {:?}",
                            self.command_timeout
                        )));
                    }
                }
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis((100 * round as u64).min(1_000))).await;
        }
        Err(last_error)
    }

    pub async fn create_space(
        &self,
        name: String,
        members: Vec<String>,
        attrs: HashMap<String, String>,
    ) -> Result<pb::CreateSpaceResponse, CtlError> {
        let request = pb::CreateSpaceRequest { name, members, attrs };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).create_space(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn get_space(&self, name: String) -> Result<pb::SpaceInfo, CtlError> {
        let request = pb::GetSpaceRequest { name };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).get_space(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn update_members(
        &self,
        space: String,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<pb::SpaceInfo, CtlError> {
        let request = pb::UpdateMembersRequest { space, add, remove };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).update_members(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn delete_space(&self, space: String) -> Result<pb::DeleteSpaceResponse, CtlError> {
        let request = pb::DeleteSpaceRequest { space };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).delete_space(request).await?.into_inner()) }
        })
        .await
    }

    /// Opens the stream of a fresh snapshot file of `cluster`.
    pub async fn save_snapshot(&self, cluster: u64) -> Result<tonic::Streaming<pb::SnapshotFileChunk>, CtlError> {
        self.each(|channel| async move {
            let request = pb::SaveSnapshotRequest { cluster_id: cluster };
            Ok(pb::admin_client::AdminClient::new(channel).save_snapshot(request).await?.into_inner())
        })
        .await
    }

    pub async fn gateways(&self) -> Result<pb::GatewaysResponse, CtlError> {
        self.each(|channel| async move {
            let request = pb::GatewaysRequest { local_only: false };
            Ok(pb::admin_client::AdminClient::new(channel).gateways(request).await?.into_inner())
        })
        .await
    }

    pub async fn list_spaces(&self, user: String) -> Result<pb::ListSpacesResponse, CtlError> {
        let request = pb::ListSpacesRequest { user };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).list_spaces(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn post(
        &self,
        space: String,
        author: String,
        body: String,
        key: String,
    ) -> Result<pb::PostResponse, CtlError> {
        let request = pb::PostRequest { space, author, body, idempotency_key: key };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).post(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn history(
        &self,
        space: String,
        user: String,
        from_seq: u64,
        limit: u32,
        linearizable: bool,
    ) -> Result<pb::HistoryResponse, CtlError> {
        let request = pb::HistoryRequest { space, user, from_seq, limit, linearizable };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::client_client::ClientClient::new(channel).history(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn move_space(&self, space: String, to: u64) -> Result<pb::MoveSpaceResponse, CtlError> {
        let request = pb::MoveSpaceRequest { space, to_cluster: to };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::admin_client::AdminClient::new(channel).move_space(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn change_members(
        &self,
        cluster: u64,
        node: u64,
        change: &str,
        force: bool,
    ) -> Result<pb::ChangeMembersResponse, CtlError> {
        let request = pb::ChangeMembersRequest { cluster_id: cluster, node_id: node, change: change.into(), force };
        self.each(|channel| {
            let request = request.clone();
            async move { Ok(pb::admin_client::AdminClient::new(channel).change_members(request).await?.into_inner()) }
        })
        .await
    }

    pub async fn transfer_leader(&self, cluster: u64, to: u64) -> Result<(), CtlError> {
        let request = pb::TransferLeaderRequest { cluster_id: cluster, to_node: to };
        self.each(|channel| async move {
            pb::admin_client::AdminClient::new(channel).transfer_leader(request).await?;
            Ok(())
        })
        .await
    }

    /// Mints a one-time join token valid for `ttl`.
    pub async fn join_token(&self, ttl: Duration) -> Result<pb::JoinTokenReply, CtlError> {
        let request = pb::JoinTokenRequest { ttl_secs: ttl.as_secs().max(1) };
        self.each(|channel| async move {
            Ok(pb::admin_client::AdminClient::new(channel).join_token(request).await?.into_inner())
        })
        .await
    }

    pub async fn set_drained(&self, node: u64, drained: bool) -> Result<(), CtlError> {
        let request = pb::SetDrainedRequest { node_id: node, drained };
        self.each(|channel| async move {
            pb::admin_client::AdminClient::new(channel).set_drained(request).await?;
            Ok(())
        })
        .await
    }

    /// Polls until none of `nodes` leads a group, up to the command timeout.
    pub async fn wait_leading_nothing(&self, nodes: &[u64]) -> Result<(), CtlError> {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        loop {
            if let Ok(status) = self.cluster_status().await {
                let leading =
                    status.replicas.iter().filter(|r| nodes.contains(&r.node_id) && r.role == "leader").count();
                if leading == 0 {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CtlError::Failed(format!(
                    "node(s) {nodes:?} still lead groups after {:?}",
                    self.command_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Polls until node `to` leads `cluster`, up to the command timeout.
    pub async fn wait_for_leader(&self, cluster: u64, to: u64) -> Result<(), CtlError> {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        loop {
            if let Ok(status) = self.cluster_status().await {
                let leads =
                    status.replicas.iter().any(|r| r.cluster_id == cluster && r.node_id == to && r.role == "leader");
                if leads {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CtlError::Failed(format!(
                    "node {to} did not become the leader of space cluster {cluster} within {:?}",
                    self.command_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn directory(&self) -> Result<pb::DirectoryResponse, CtlError> {
        self.each(|channel| async move {
            Ok(pb::admin_client::AdminClient::new(channel).directory(pb::DirectoryRequest {}).await?.into_inner())
        })
        .await
    }

    pub async fn set_preferred_region(&self, cluster: u64, region: String) -> Result<(), CtlError> {
        let request = pb::SetPreferredRegionRequest { cluster_id: cluster, region };
        self.each(|channel| {
            let request = request.clone();
            async move {
                pb::admin_client::AdminClient::new(channel).set_preferred_region(request).await?;
                Ok(())
            }
        })
        .await
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, CtlError> {
        self.each(|channel| async move {
            Ok(pb::admin_client::AdminClient::new(channel)
                .cluster_status(pb::ClusterStatusRequest {})
                .await?
                .into_inner())
        })
        .await
    }

    /// Follows a space until interrupted; when a node fails, resumes on
    /// another endpoint from the next seq, so nothing is skipped or repeated.
    pub async fn tail(
        &self,
        space: String,
        user: String,
        from_seq: u64,
        mut on_message: impl FnMut(&pb::Message),
    ) -> Result<(), CtlError> {
        let mut next_seq = from_seq;
        let mut failures = 0u32;
        loop {
            for addr in &self.addrs {
                let channel = match self.connect(addr).await {
                    Ok(channel) => channel,
                    Err(error) => {
                        eprintln!("tail: {error}");
                        continue;
                    }
                };
                let mut client = pb::client_client::ClientClient::new(self.stamped(channel)?);
                let request = pb::SubscribeRequest { space: space.clone(), user: user.clone(), from_seq: next_seq };
                // A stream has no overall deadline.
                let mut stream = match client.subscribe(tonic::Request::new(request)).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => {
                        let error = CtlError::from_status(addr, &status);
                        if !error.is_retryable() {
                            return Err(error);
                        }
                        eprintln!("tail: {error}");
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            failures = 0;
                            if let Some(pb::subscribe_event::Event::Message(message)) = event.event {
                                next_seq = message.seq + 1;
                                on_message(&message);
                            } else if let Some(pb::subscribe_event::Event::CaughtUp(caught_up)) = event.event {
                                if next_seq == 0 {
                                    next_seq = caught_up.last_seq + 1;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            let error = CtlError::from_status(addr, &status);
                            if !error.is_retryable() {
                                return Err(error);
                            }
                            eprintln!("tail: {error}; resuming from seq {next_seq}");
                            break;
                        }
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(Duration::from_millis((200 * failures as u64).min(2_000))).await;
        }
    }
}
