//! What a request between Spaceraft processes carries beside its message:
//! the id of the cluster it is meant for, and (between nodes) the kind of
//! hop it is on.
//!
//! A cluster's id is made once, when the cluster is bootstrapped, and kept in
//! every node's data directory. Every request a node sends (forwarded
//! requests, Raft messages) and every request of a client that knows the id
//! (spacectl with `--cluster-id`, a gateway, `spaceraft dev`) carries it in
//! the `spaceraft-cluster` metadata; a node refuses one meant for another
//! cluster with `wrong_cluster`, so two clusters that can reach each other's
//! addresses never mix their logs or answer each other's clients.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::error::ApiError;

/// Metadata key carrying the cluster id a request is meant for.
pub const CLUSTER_METADATA: &str = "spaceraft-cluster";
/// Metadata key carrying a forwarded request's hop ([`Hop`]).
pub const HOP_METADATA: &str = "spaceraft-hop";
/// The file in a data directory holding the cluster's id.
pub const CLUSTER_ID_FILE: &str = "cluster-id";
/// A cluster id's length: 16 lowercase hex digits (64 random bits).
pub const CLUSTER_ID_LEN: usize = 16;

/// The cluster id this process speaks for: known from the start (a node's
/// data directory, a client's flag) or learned once (a node that joins, a
/// gateway that asks its first node). Cheap to clone; clones share it.
#[derive(Clone, Default, Debug)]
pub struct ClusterId {
    id: Arc<OnceLock<String>>,
}

impl ClusterId {
    pub fn unknown() -> ClusterId {
        ClusterId::default()
    }

    pub fn known(id: &str) -> ClusterId {
        let cluster = ClusterId::default();
        let _ = cluster.id.set(id.to_string());
        cluster
    }

    pub fn get(&self) -> Option<&str> {
        self.id.get().map(String::as_str)
    }

    /// Learns `id` unless an id is known already; answers the id in force.
    pub fn learn(&self, id: &str) -> &str {
        self.id.get_or_init(|| id.to_string())
    }

    /// Refuses a request that names another cluster. A request that names
    /// none is a client's that does not know the id yet; one to a process
    /// that knows none cannot be checked.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        let (Some(ours), Some(theirs)) = (self.get(), cluster_of(metadata)) else { return Ok(()) };
        if ours == theirs {
            return Ok(());
        }
        Err(ApiError::wrong_cluster(ours, theirs))
    }

    /// Like [`ClusterId::check`], for peers: a node's request must name a
    /// cluster once this node knows its own.
    pub fn check_peer(&self, metadata: &MetadataMap) -> Result<(), ApiError> {
        match (self.get(), cluster_of(metadata)) {
            (Some(ours), None) => Err(ApiError::wrong_cluster(ours, "(none named)")),
            _ => self.check(metadata),
        }
    }

    /// An interceptor that stamps outgoing requests with this id.
    pub fn stamp(&self) -> ClusterStamp {
        ClusterStamp { cluster: self.clone(), bearer: None }
    }
}

/// The cluster id a request names, if it is a well-formed one.
pub fn cluster_of(metadata: &MetadataMap) -> Option<&str> {
    metadata.get(CLUSTER_METADATA).and_then(|value| value.to_str().ok())
}

/// A fresh cluster id.
pub fn new_cluster_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Whether `id` is shaped like a cluster id.
pub fn is_cluster_id(id: &str) -> bool {
    id.len() == CLUSTER_ID_LEN && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Reads the cluster id kept in data directory `root` (None when the node
/// has not learned it yet); a malformed file is an error, never ignored.
pub fn read_cluster_id(root: &Path) -> std::io::Result<Option<String>> {
    let path = root.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if !is_cluster_id(id) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} does not hold a cluster id: {id:?}", path.display()),
                ));
            }
            Ok(Some(id.to_string()))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Keeps `id` in data directory `root`, durably (written aside, fsynced,
/// renamed, directory fsynced).
pub fn write_cluster_id(root: &Path, id: &str) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let path = root.join(CLUSTER_ID_FILE);
    let part = root.join(format!("{CLUSTER_ID_FILE}.part"));
    let mut file = std::fs::File::create(&part)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&part, &path)?;
    std::fs::File::open(root)?.sync_all()?;
    Ok(path)
}

/// Stamps outgoing requests with the cluster id, once known, and a
/// client's bearer token, if it has one.
#[derive(Clone, Debug)]
pub struct ClusterStamp {
    cluster: ClusterId,
    /// `Bearer TOKEN`, sent as `authorization`.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl ClusterStamp {
    /// Also sends `token` as the request's bearer token.
    pub fn with_token(mut self, token: &str) -> Result<ClusterStamp, ApiError> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            ApiError::new(
                crate::error::ErrorKind::Invalid { field: "token".into() },
                "the token is not printable ASCII",
            )
        })?;
        self.bearer = Some(value);
        Ok(self)
    }
}

impl tonic::service::Interceptor for ClusterStamp {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(id) = self.cluster.get() {
            if let Ok(value) = id.parse() {
                request.metadata_mut().insert(CLUSTER_METADATA, value);
            }
        }
        if let Some(bearer) = &self.bearer {
            request.metadata_mut().insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// A channel whose requests carry the cluster id.
pub type Stamped = InterceptedService<Channel, ClusterStamp>;

/// Wraps `channel` so its requests carry `cluster`'s id.
pub fn stamped(channel: Channel, cluster: &ClusterId) -> Stamped {
    InterceptedService::new(channel, cluster.stamp())
}

/// How a request reached a node. A node only ever passes a request on to a
/// later kind of hop (client → meta leader → cluster voter → cluster
/// leader), so a request cannot loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hop {
    /// From a client.
    Client,
    /// To the meta leader, to place a new space.
    Meta,
    /// To a voter of the space's cluster, from a node that does not host it.
    Member,
    /// To the leader of the space's cluster.
    Leader,
}

impl Hop {
    pub const ALL: [Hop; 4] = [Hop::Client, Hop::Meta, Hop::Member, Hop::Leader];

    /// The hop a request is on; an unknown marker counts as the last hop,
    /// so it is never passed on.
    pub fn of(metadata: &MetadataMap) -> Hop {
        match metadata.get(HOP_METADATA).and_then(|value| value.to_str().ok()) {
            None => Hop::Client,
            Some("meta") => Hop::Meta,
            Some("member") => Hop::Member,
            Some(_) => Hop::Leader,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Hop::Client => "client",
            Hop::Meta => "meta",
            Hop::Member => "member",
            Hop::Leader => "leader",
        }
    }

    /// Marks `request` as being on this hop.
    pub fn mark<T>(self, request: &mut tonic::Request<T>) {
        if self != Hop::Client {
            request.metadata_mut().insert(HOP_METADATA, tonic::metadata::MetadataValue::from_static(self.name()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_for_another_cluster_is_refused_and_one_naming_none_is_not() {
        let ours = ClusterId::known("00000000000000aa");
        let mut metadata = MetadataMap::new();
        assert!(ours.check(&metadata).is_ok());
        assert!(ours.check_peer(&metadata).is_err());
        metadata.insert(CLUSTER_METADATA, "00000000000000bb".parse().unwrap());
        let refused = ours.check(&metadata).unwrap_err();
        assert_eq!(refused.kind, crate::error::ErrorKind::WrongCluster);
        metadata.insert(CLUSTER_METADATA, "00000000000000aa".parse().unwrap());
        assert!(ours.check(&metadata).is_ok());
        assert!(ClusterId::unknown().check(&metadata).is_ok());
    }

    #[test]
    fn hops_round_trip_and_unknown_markers_are_final() {
        for hop in Hop::ALL {
            let mut request = tonic::Request::new(());
            hop.mark(&mut request);
            assert_eq!(Hop::of(request.metadata()), hop);
        }
        let mut metadata = MetadataMap::new();
        metadata.insert(HOP_METADATA, "sideways".parse().unwrap());
        assert_eq!(Hop::of(&metadata), Hop::Leader);
    }

    #[test]
    fn cluster_ids_are_kept_durably_and_malformed_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_cluster_id(dir.path()).unwrap(), None);
        let id = new_cluster_id();
        assert!(is_cluster_id(&id));
        write_cluster_id(dir.path(), &id).unwrap();
        assert_eq!(read_cluster_id(dir.path()).unwrap().as_deref(), Some(id.as_str()));
        std::fs::write(dir.path().join(CLUSTER_ID_FILE), "garbage").unwrap();
        assert!(read_cluster_id(dir.path()).is_err());
    }
}
