//! TLS for every port (rustls). A process loads the cluster CA, its own
//! certificate and key; listeners ask callers for a certificate but let a
//! token-bearing user in without one, and dialers present theirs, so nodes
//! and gateways authenticate each other in both directions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::config::SecurityConfig;
use crate::security::identity::CertIdentity;

/// A process's TLS material, loaded and checked.
#[derive(Clone)]
pub struct TlsIdentity {
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// What the certificate names this process as.
    pub identity: CertIdentity,
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

/// The certificates in a PEM file's bytes.
fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{} is not a PEM certificate file", path.display()))?;
    anyhow::ensure!(!certificates.is_empty(), "{} holds no certificate", path.display());
    Ok(certificates)
}

impl TlsIdentity {
    /// Loads the files a secure process is configured with.
    pub fn from_config(security: &SecurityConfig) -> anyhow::Result<TlsIdentity> {
        let file =
            |value: &Option<PathBuf>, key: &str| value.clone().with_context(|| format!("security.{key} is not set"));
        TlsIdentity::load(
            &file(&security.ca_file, "ca_file")?,
            &file(&security.cert_file, "cert_file")?,
            &file(&security.key_file, "key_file")?,
        )
    }

    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<TlsIdentity> {
        let ca_pem = read(ca, "CA certificate")?;
        let cert_pem = read(cert, "certificate")?;
        let key_pem = read(key, "private key")?;
        certificates(&ca_pem, ca)?;
        let own = certificates(&cert_pem, cert)?;
        PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key.display()))?;
        let identity = CertIdentity::of_der(&own[0]).map_err(|why| anyhow::anyhow!("{}: {why}", cert.display()))?;
        Ok(TlsIdentity { ca_pem, cert_pem, key_pem, identity })
    }

    /// For a tonic listener: callers may present a certificate signed by
    /// the CA (processes) or none (users with tokens); a handshake not done
    /// within `handshake_timeout` is dropped.
    pub fn server(&self, handshake_timeout: Duration) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
            .timeout(handshake_timeout)
    }

    /// For dialing other processes of the cluster, presenting this one's
    /// certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTls { ca_pem: self.ca_pem.clone(), identity: Some((self.cert_pem.clone(), self.key_pem.clone())) }
            .config()
    }

    /// For the gateway's HTTP listener (browsers present no certificate;
    /// HTTP/1.1 only, so the WebSocket upgrade works in every browser).
    pub fn rustls_server(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let chain = certificates(&self.cert_pem, Path::new("certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).context("private key")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .context("the certificate and key do not match")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// What a client (spacectl, a test) trusts and presents.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    /// A certificate and key to present, if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    pub fn load(ca: &Path, cert_and_key: Option<(&Path, &Path)>) -> anyhow::Result<ClientTls> {
        let ca_pem = read(ca, "CA certificate")?;
        certificates(&ca_pem, ca)?;
        let identity = match cert_and_key {
            Some((cert, key)) => Some((read(cert, "certificate")?, read(key, "private key")?)),
            None => None,
        };
        Ok(ClientTls { ca_pem, identity })
    }

    pub fn config(&self) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// The identity a request's caller proved with its certificate, if any.
pub fn peer_identity(certificates: Option<Arc<Vec<CertificateDer<'static>>>>) -> Option<CertIdentity> {
    let certificates = certificates?;
    CertIdentity::of_der(certificates.first()?).ok()
}
