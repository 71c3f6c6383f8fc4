//! Making a cluster's certificates (`spaceraft certs`, and `spaceraft dev`
//! on its first run): a CA, one certificate per node, gateway and operator,
//! and a token signing key. Files that exist are kept, so the same command
//! adds a node's certificate later, signed by the same CA.
//!
//! Layout of the directory:
//!
//! ```text
//! cluster-id               the cluster's id, named by every certificate
//! ca.pem  ca.key           the CA (keep ca.key offline in production)
//! node-3.pem  node-3.key   spaceraft://CLUSTER/node/3, server and client
//! gateway-us-east.pem …    spaceraft://CLUSTER/gateway/us-east, server and client
//! operator-admin.pem …     spaceraft://CLUSTER/operator/admin, client
//! token-signing/k1.pem     the token issuer's Ed25519 private key
//! token-keys/k1.pem        its public key: a node's `token_keys_dir`
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::config::NodeId;
use crate::security::identity::{CertIdentity, CertRole};

/// What to make.
#[derive(Debug, Clone, Default)]
pub struct CertsPlan {
    pub dir: PathBuf,
    /// The cluster's id; made (and kept in the directory) when None and the
    /// directory has none.
    pub cluster: Option<String>,
    pub nodes: Vec<NodeId>,
    pub gateways: Vec<String>,
    pub operators: Vec<String>,
    /// Names and addresses the nodes and gateways are reached at.
    pub hosts: Vec<String>,
    /// How long the certificates are valid, in days.
    pub days: u32,
}

/// What was made or found.
#[derive(Debug, Clone)]
pub struct CertsMade {
    pub cluster: String,
    /// Files written by this run (the others existed).
    pub written: Vec<PathBuf>,
}

/// The id of the token key `spaceraft certs` makes.
pub const TOKEN_KID: &str = "k1";

/// Paths of one holder's certificate and key.
pub fn pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}

pub fn ca_pem(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

pub fn node_stem(id: NodeId) -> String {
    format!("node-{id}")
}

pub fn gateway_stem(name: &str) -> String {
    format!("gateway-{name}")
}

pub fn operator_stem(name: &str) -> String {
    format!("operator-{name}")
}

/// The token issuer's private key.
pub fn signing_key(dir: &Path) -> PathBuf {
    dir.join("token-signing").join(format!("{TOKEN_KID}.pem"))
}

/// Makes what `plan` asks for that does not exist yet.
pub fn make(plan: &CertsPlan) -> anyhow::Result<CertsMade> {
    std::fs::create_dir_all(&plan.dir).with_context(|| format!("cannot create {}", plan.dir.display()))?;
    let cluster = cluster_id(plan)?;
    let mut written = Vec::new();
    let (ca_cert_path, ca_key_path) = (ca_pem(&plan.dir), plan.dir.join("ca.key"));
    if !ca_cert_path.exists() {
        let key = KeyPair::generate().context("generate the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(&format!("spaceraft CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        validity(&mut params, plan.days.max(1) * 2);
        let certificate = params.self_signed(&key)?;
        write(&ca_key_path, key.serialize_pem().as_bytes(), true, &mut written)?;
        write(&ca_cert_path, certificate.pem().as_bytes(), false, &mut written)?;
    }
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path).context("read ca.key")?)
        .context("ca.key is not a private key")?;
    let issuer = Issuer::from_ca_cert_pem(&std::fs::read_to_string(&ca_cert_path)?, ca_key)
        .context("ca.pem is not a CA certificate")?;

    let holders = plan
        .nodes
        .iter()
        .map(|id| (node_stem(*id), CertRole::Node(*id), true))
        .chain(plan.gateways.iter().map(|name| (gateway_stem(name), CertRole::Gateway(name.clone()), true)))
        .chain(plan.operators.iter().map(|name| (operator_stem(name), CertRole::Operator(name.clone()), false)));
    for (stem, role, serves) in holders {
        let (cert_path, key_path) = pair(&plan.dir, &stem);
        if cert_path.exists() && key_path.exists() {
            continue;
        }
        let identity = CertIdentity { cluster: cluster.clone(), role };
        let key = KeyPair::generate()?;
        let certificate = leaf(&identity, serves, &plan.hosts, plan.days.max(1)).signed_by(&key, &issuer)?;
        write(&key_path, key.serialize_pem().as_bytes(), true, &mut written)?;
        write(&cert_path, certificate.pem().as_bytes(), false, &mut written)?;
    }

    let signing = signing_key(&plan.dir);
    if !signing.exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let public = plan.dir.join("token-keys").join(format!("{TOKEN_KID}.pem"));
        write(&signing, key.serialize_pem().as_bytes(), true, &mut written)?;
        write(&public, key.public_key_pem().as_bytes(), false, &mut written)?;
    }
    Ok(CertsMade { cluster, written })
}

/// The directory's cluster id, or the plan's, or a new one; a plan that
/// names another id than the directory holds is refused.
fn cluster_id(plan: &CertsPlan) -> anyhow::Result<String> {
    let kept = crate::wire::read_cluster_id(&plan.dir)?;
    match (kept, &plan.cluster) {
        (Some(kept), Some(wanted)) if kept != *wanted => {
            anyhow::bail!("{} holds certificates for cluster {kept}, not {wanted}", plan.dir.display())
        }
        (Some(kept), _) => Ok(kept),
        (None, wanted) => {
            let id = wanted.clone().unwrap_or_else(crate::wire::new_cluster_id);
            anyhow::ensure!(crate::wire::is_cluster_id(&id), "{id:?} is not a cluster id (16 hex digits)");
            crate::wire::write_cluster_id(&plan.dir, &id)?;
            Ok(id)
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days as i64);
}

fn leaf(identity: &CertIdentity, serves: bool, hosts: &[String], days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&identity.uri());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if serves {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.subject_alt_names.push(SanType::URI(identity.uri().try_into().expect("an identity URI is ASCII")));
    if serves {
        for host in hosts {
            match host.parse::<IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => {
                    if let Ok(dns) = host.clone().try_into() {
                        params.subject_alt_names.push(SanType::DnsName(dns));
                    }
                }
            }
        }
    }
    validity(&mut params, days);
    params
}

/// Writes a new file (private keys readable by their owner only).
fn write(path: &Path, bytes: &[u8], private: bool, written: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    written.push(path.to_path_buf());
    Ok(())
}
