//! The node's identity with its control plane: enrollment, its certificate and key, the
//! CA it trusts, and the mTLS clients made of them.
//!
//! Enrollment happens once: the node makes its own ECDSA P-256 key, sends a CSR for it with
//! a one-time bootstrap token (`--bootstrap-token`) to `POST /api/v1/nodes/register`, and
//! receives its node id, a certificate naming it (`spiffe://edgefn/node/{id}`), the CA
//! certificate and the node listener's URL. With `--ca-sha256` the CA must be the one the
//! operator expects, so an impostor of the control plane cannot enroll the node. The key
//! never leaves the node: it is written to `{state_dir}/node.key`, readable only by the
//! runner's user, beside `node.crt`, `ca.crt` and `node.json`.
//!
//! Afterwards every contact goes to the node listener over mTLS with that certificate; the
//! node renews it (a new key, a new CSR) once two thirds of its lifetime have passed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edgefn_proto::identity::{EnrollNode, NodeEnrolled, RenewCertificate};
use serde::{Deserialize, Serialize};

use crate::cp_http::{causes, now_ms, read_json};

/// What `node.json` keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    /// The control plane URL the node enrolled with (an identity from another one means
    /// nothing there).
    pub control_plane: String,
    /// Where the node listener is.
    pub node_url: String,
    /// Unix milliseconds.
    pub certificate_issued_at: i64,
    pub certificate_expires_at: i64,
}

/// The identity with its key and certificates.
#[derive(Clone)]
pub struct Credentials {
    pub identity: Identity,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Credentials")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A new key (PKCS #8 PEM) and a CSR for it (PEM).
fn key_and_csr(name: &str) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a key: {e}"))?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| format!("cannot make a CSR: {e}"))?;
    Ok((key.serialize_pem(), csr))
}

/// SHA-256 (hex) of the first certificate in `pem`, as `--ca-sha256` names it.
pub fn certificate_sha256(pem: &str) -> Result<String, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use sha2::Digest as _;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    Ok(hex::encode(sha2::Sha256::digest(&der)))
}

/// Creates `dir` (and its parents) readable only by this user: it holds the node's key.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` atomically, with `mode`, in a private directory.
pub(crate) fn write_private(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    create_private_dir(path.parent().unwrap_or(Path::new(".")))?;
    edgefn_runtime::fs::write_atomically(path, bytes, Some(mode))
}

/// The private key and the certificate chain of a `node.pem` bundle.
fn split_bundle(bundle: &str) -> Option<(String, String)> {
    let start = bundle.find("-----BEGIN CERTIFICATE-----")?;
    let (key, cert) = bundle.split_at(start);
    if !key.contains("PRIVATE KEY-----") {
        return None;
    }
    Some((key.trim_end().to_string() + "\n", cert.to_string()))
}

impl Credentials {
    /// The credentials in `state_dir` for `control_plane`, if the node enrolled there.
    pub fn load(state_dir: &Path, control_plane: &str) -> Option<Self> {
        let identity: Identity =
            serde_json::from_slice(&std::fs::read(state_dir.join("node.json")).ok()?).ok()?;
        if identity.control_plane != control_plane {
            return None;
        }
        // `node.pem` holds key and certificate together (written as one file, so they always
        // match); state directories from before it keep them apart.
        let (key_pem, cert_pem) = match std::fs::read_to_string(state_dir.join("node.pem")) {
            Ok(bundle) => split_bundle(&bundle)?,
            Err(_) => (
                std::fs::read_to_string(state_dir.join("node.key")).ok()?,
                std::fs::read_to_string(state_dir.join("node.crt")).ok()?,
            ),
        };
        Some(Self {
            identity,
            key_pem,
            cert_pem,
            ca_pem: std::fs::read_to_string(state_dir.join("ca.crt")).ok()?,
        })
    }

    /// Writes the credentials (readable only by this user). Key and certificate go into
    /// one file in one atomic step: a crash during a renewal leaves the old pair or the new
    /// one, never a new key beside an old certificate. `node.json` last, so a crash midway
    /// through an enrollment leaves the old identity or a complete new one.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let bundle = format!("{}\n{}", self.key_pem.trim_end(), self.cert_pem);
        write_private(&state_dir.join("node.pem"), bundle.as_bytes(), 0o600)?;
        for old in ["node.key", "node.crt"] {
            let _ = std::fs::remove_file(state_dir.join(old));
        }
        write_private(&state_dir.join("ca.crt"), self.ca_pem.as_bytes(), 0o644)?;
        let json = serde_json::to_vec_pretty(&self.identity).map_err(std::io::Error::other)?;
        write_private(&state_dir.join("node.json"), &json, 0o644)
    }

    fn from_reply(
        reply: NodeEnrolled,
        key_pem: String,
        control_plane: &str,
        ca_sha256: Option<&str>,
    ) -> Result<Self, String> {
        if let Some(pin) = ca_sha256 {
            let got = certificate_sha256(&reply.ca_certificate)?;
            if !got.eq_ignore_ascii_case(pin.trim()) {
                return Err(format!(
                    "the control plane's CA has SHA-256 {got}, not the {pin} given by --ca-sha256: refusing it"
                ));
            }
        }
        Ok(Self {
            identity: Identity {
                node_id: reply.node_id,
                control_plane: control_plane.to_string(),
                node_url: reply.node_url.trim_end_matches('/').to_string(),
                certificate_issued_at: now_ms(),
                certificate_expires_at: reply.certificate_expires_at,
            },
            key_pem,
            cert_pem: reply.certificate,
            ca_pem: reply.ca_certificate,
        })
    }

    /// Enrolls with the control plane at `control_plane` using a bootstrap token.
    pub async fn enroll(
        http: &reqwest::Client,
        control_plane: &str,
        bootstrap_token: &str,
        ca_sha256: Option<&str>,
        body: EnrollNode,
    ) -> Result<Self, String> {
        let (key_pem, csr) = key_and_csr(&body.name)?;
        let url = format!("{control_plane}/api/v1/nodes/register");
        let reply = http
            .post(&url)
            .bearer_auth(bootstrap_token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&EnrollNode { csr, ..body }).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", causes(&e)))?;
        let enrolled: NodeEnrolled = read_json(reply, &url).await?;
        Self::from_reply(enrolled, key_pem, control_plane, ca_sha256)
    }

    /// Whether two thirds of the certificate's lifetime have passed.
    pub fn needs_renewal(&self) -> bool {
        let Identity {
            certificate_issued_at: issued,
            certificate_expires_at: expires,
            ..
        } = self.identity;
        now_ms() >= issued + (expires - issued) * 2 / 3
    }

    /// A new key and certificate, through the node listener (`http` is this identity's
    /// mTLS client, `token` its node token).
    pub async fn renew(&self, http: &reqwest::Client, token: &str) -> Result<Self, String> {
        let (key_pem, csr) = key_and_csr(&self.identity.node_id)?;
        let url = format!(
            "{}/api/v1/nodes/{}/certificate",
            self.identity.node_url, self.identity.node_id
        );
        let reply = http
            .post(&url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&RenewCertificate { csr }).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", causes(&e)))?;
        let renewed: NodeEnrolled = read_json(reply, &url).await?;
        let mut next = Self::from_reply(renewed, key_pem, &self.identity.control_plane, None)?;
        next.identity.node_url = self.identity.node_url.clone();
        Ok(next)
    }

    /// The rustls client configuration: only the node CA is trusted, and this node's
    /// certificate is presented.
    fn rustls_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| format!("ca.crt: {e}"))?)
                .map_err(|e| format!("ca.crt: {e}"))?;
        }
        let chain = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("node.crt: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| format!("node.key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("node.crt and node.key do not form a pair: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// An HTTP client for the node listener, over mTLS.
    pub fn http_client(&self) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .use_preconfigured_tls(self.rustls_config()?)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| format!("cannot build the mTLS client: {e}"))
    }

    /// The push stream's TLS: the same CA and certificate.
    pub fn grpc_tls(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ));
        if let Some(host) = url_host(&self.identity.node_url) {
            tls = tls.domain_name(host);
        }
        tls
    }
}

/// The host of an `https://host:port/…` URL, without IPv6 brackets.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// The node's standing with the node listener: an mTLS client and a node token.
pub(crate) struct Session {
    pub(crate) http: reqwest::Client,
    pub(crate) token: String,
    /// The control plane's public key for precompiled code (SPKI PEM).
    pub(crate) signing_key: String,
    token_issued_at: i64,
    token_expires_at: i64,
}

impl Session {
    /// A session with a new node token, got over `http` (the node's mTLS client).
    pub(crate) async fn open(
        credentials: &Credentials,
        http: reqwest::Client,
    ) -> Result<Self, String> {
        let url = format!(
            "{}/api/v1/nodes/{}/token",
            credentials.identity.node_url, credentials.identity.node_id
        );
        let reply = http
            .post(&url)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", causes(&e)))?;
        let token: edgefn_proto::identity::NodeToken = read_json(reply, &url).await?;
        Ok(Self {
            http,
            token: token.token,
            signing_key: token.signing_key,
            token_issued_at: now_ms(),
            token_expires_at: token.expires_at,
        })
    }

    /// Renewed once two thirds of the token's lifetime have passed.
    pub(crate) fn token_is_old(&self) -> bool {
        let (issued, expires) = (self.token_issued_at, self.token_expires_at);
        now_ms() >= issued + (expires - issued) * 2 / 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_tokens_are_renewed_after_two_thirds_of_their_life() {
        let now = now_ms();
        let session = |issued: i64, expires: i64| Session {
            http: reqwest::Client::new(),
            token: String::new(),
            signing_key: String::new(),
            token_issued_at: issued,
            token_expires_at: expires,
        };
        assert!(!session(now - 100, now + 900).token_is_old());
        assert!(session(now - 700, now + 300).token_is_old());
        assert!(session(now - 2000, now - 1000).token_is_old(), "expired");
    }

    #[test]
    fn hosts_come_out_of_urls() {
        assert_eq!(
            url_host("https://127.0.0.1:8443").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(url_host("https://[::1]:8443/x").as_deref(), Some("::1"));
        assert_eq!(
            url_host("https://cp.example.com").as_deref(),
            Some("cp.example.com")
        );
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn a_csr_is_made_for_a_fresh_key() {
        let (key, csr) = key_and_csr("tokyo-1").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.contains("CERTIFICATE REQUEST"));
        let (other, _) = key_and_csr("tokyo-1").unwrap();
        assert_ne!(key, other);
    }

    #[test]
    fn credentials_round_trip_through_the_state_dir_with_a_private_key() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (key_pem, _) = key_and_csr("n").unwrap();
        let credentials = Credentials {
            identity: Identity {
                node_id: "node_1".into(),
                control_plane: "http://cp".into(),
                node_url: "https://cp:8443".into(),
                certificate_issued_at: 0,
                certificate_expires_at: 3,
            },
            key_pem: key_pem.clone(),
            cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ca_pem: "ca".into(),
        };
        credentials.save(dir.path()).unwrap();
        let mode = |name: &str| {
            std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("node.pem"), 0o600, "key and certificate, one file");
        let loaded = Credentials::load(dir.path(), "http://cp").unwrap();
        assert_eq!(loaded.identity, credentials.identity);
        assert_eq!(loaded.key_pem.trim_end(), key_pem.trim_end());
        assert_eq!(loaded.cert_pem, credentials.cert_pem);
        // A state directory from before the bundle still loads.
        std::fs::remove_file(dir.path().join("node.pem")).unwrap();
        std::fs::write(dir.path().join("node.key"), &key_pem).unwrap();
        std::fs::write(dir.path().join("node.crt"), &credentials.cert_pem).unwrap();
        let old = Credentials::load(dir.path(), "http://cp").unwrap();
        assert_eq!(old.cert_pem, credentials.cert_pem);
        assert!(Credentials::load(dir.path(), "http://other").is_none());
        assert!(loaded.needs_renewal(), "the lifetime is long over");
    }
}
