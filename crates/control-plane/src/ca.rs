//! The node certificate authority and what hangs off it: node certificates from CSRs
//! (`spiffe://edgefn/node/{id}`, client auth only), the node listener's server
//! certificate and its mTLS configuration, and node tokens.
//!
//! The CA is the control plane's own — an ECDSA P-256 key and a self-signed certificate
//! made with `rcgen` on first start and kept in the database, so every replica signs and
//! trusts alike — or one the operator supplies (`--node-ca-cert`, `--node-ca-key`). A node
//! makes its key itself and sends only a CSR: its private key never leaves it.

use std::sync::Arc;
use std::time::Duration;

use edgefn_proto::identity::node_uri;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest as _, Sha256};

use crate::auth::tokens::{NodeClaims, Signer, TokenError};
use crate::store::Store;

/// Largest CSR accepted (a P-256 CSR is ~400 bytes, an RSA-4096 one ~1.7 KiB).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// A node certificate just issued.
#[derive(Clone, Debug)]
pub struct Issued {
    pub pem: String,
    /// Hex of the serial number's bytes, as the node listener reads it back.
    pub serial: String,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// Why a CSR got no certificate: the node's fault (its CSR; 400) or the CA's (500).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("the CSR is larger than {MAX_CSR_BYTES} bytes")]
    TooLarge,
    #[error("the CSR is not a valid, self-signed PKCS #10 request: {0}")]
    Invalid(String),
    /// The CA could not sign (no randomness, a signing failure): never the node's doing.
    #[error("cannot sign the certificate: {0}")]
    Signing(String),
}

/// Node tokens remembered once verified (bounded; emptied when full).
const MAX_VERIFIED_TOKENS: usize = 100_000;

pub struct NodeAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// Node tokens whose signature held, with their node id and expiry (Unix seconds): a
    /// node sends the same token with every heartbeat for weeks, and an ES256 check costs
    /// more than the rest of a heartbeat's CPU. A token cannot be revoked on its own (its
    /// node can, and that is checked on every request), so remembering it is safe until
    /// it expires.
    verified: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
    ca_pem: String,
    ca_der: Vec<u8>,
    signer: Arc<Signer>,
    /// Where nodes reach the node listener, e.g. `https://cp.example.com:8443`.
    pub node_url: String,
    /// Lifetime of node certificates.
    pub cert_ttl: Duration,
    /// Lifetime of node tokens.
    pub token_ttl: Duration,
}

fn offset(now_ms: i64, delta: Duration, forward: bool) -> time::OffsetDateTime {
    let now = time::OffsetDateTime::from_unix_timestamp(now_ms / 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let delta = time::Duration::try_from(delta).unwrap_or(time::Duration::days(36_500));
    if forward {
        now.saturating_add(delta)
    } else {
        now.saturating_sub(delta)
    }
}

/// 16 random bytes, the first in 0x01..=0x7f: a positive DER integer of exactly these bytes
/// (no leading zero added or dropped), so the serial reads back as written.
fn random_serial() -> Result<Vec<u8>, String> {
    let mut serial = vec![0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| format!("no randomness: {e}"))?;
    serial[0] = (serial[0] & 0x7f).max(1);
    Ok(serial)
}

/// A new CA: key and self-signed certificate, as PEM.
pub fn generate_ca() -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "edgefn node CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = crate::store::now_ms();
    params.not_before = offset(now, Duration::from_secs(3600), false);
    params.not_after = offset(now, Duration::from_secs(20 * 365 * 86_400), true);
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((key.serialize_pem(), cert.pem()))
}

impl NodeAuthority {
    /// The CA from `operator` (certificate PEM, key PEM), or the database's (made on first
    /// start).
    pub async fn open(
        store: &Store,
        operator: Option<(String, String)>,
        signer: Arc<Signer>,
        node_url: String,
        cert_ttl: Duration,
        token_ttl: Duration,
    ) -> anyhow::Result<Self> {
        let (cert_pem, key_pem) = match operator {
            Some(pair) => pair,
            None => {
                let (key, cert) = store
                    .key_or_create("node-ca", || {
                        generate_ca().map(|(key, cert)| (key, Some(cert)))
                    })
                    .await?;
                let cert =
                    cert.ok_or_else(|| anyhow::anyhow!("the stored node CA has no certificate"))?;
                (cert, key)
            }
        };
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| anyhow::anyhow!("the node CA key is unusable: {e}"))?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
            .map_err(|e| anyhow::anyhow!("the node CA certificate is unusable: {e}"))?;
        let ca_der = rustls_pki_der(&cert_pem)?;
        Ok(Self {
            issuer,
            verified: Default::default(),
            ca_pem: cert_pem,
            ca_der,
            signer,
            node_url: node_url.trim_end_matches('/').to_string(),
            cert_ttl,
            token_ttl,
        })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate (DER), which a node may pin (`--ca-sha256`).
    pub fn ca_sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.ca_der))
    }

    /// Where nodes download an artifact (the node listener, with their certificate).
    pub fn artifact_url(&self, sha256: &str) -> String {
        format!("{}/api/v1/artifacts/{sha256}", self.node_url)
    }

    /// A certificate for `node_id` over the key of `csr_pem` (whose signature proves the
    /// node holds it). Everything else the CSR asks for is ignored: the CA decides.
    pub fn sign_node_csr(&self, csr_pem: &str, node_id: &str) -> Result<Issued, CsrError> {
        if csr_pem.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge);
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, node_id);
        params.distinguished_name = name;
        let uri = node_uri(node_id)
            .try_into()
            .map_err(|e| CsrError::Signing(format!("invalid node id: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = crate::store::now_ms();
        // A little backdating absorbs clock skew between this machine and the node.
        params.not_before = offset(now, Duration::from_secs(300), false);
        params.not_after = offset(now, self.cert_ttl, true);
        let serial = random_serial().map_err(CsrError::Signing)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| CsrError::Signing(e.to_string()))?;
        Ok(Issued {
            pem: cert.pem(),
            serial: hex::encode(serial),
            expires_at: now.saturating_add(self.cert_ttl.as_millis().min(i64::MAX as u128) as i64),
        })
    }

    /// The node listener's TLS configuration: a server certificate for `names` (host
    /// names and IP addresses nodes connect to), and client certificates required and
    /// checked against the CA.
    pub fn node_listener_tls(&self, names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(names.to_vec())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "edgefn node listener");
        params.distinguished_name = name;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = crate::store::now_ms();
        params.not_before = offset(now, Duration::from_secs(300), false);
        params.not_after = offset(now, Duration::from_secs(365 * 86_400), true);
        params.serial_number = Some(SerialNumber::from_slice(
            &random_serial().map_err(anyhow::Error::msg)?,
        ));
        let cert = params.signed_by(&key, &self.issuer)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![
                    cert.der().clone(),
                    rustls::pki_types::CertificateDer::from(self.ca_der.clone()),
                ],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The public key nodes check precompiled code's attestations with (SPKI PEM).
    pub fn signing_key_pem(&self) -> &str {
        self.signer.public_pem()
    }

    /// Signs that `native_sha256` is this control plane's compilation of `wasm_sha256` for
    /// `engine_hash` ([`edgefn_proto::sync::PrecompiledClaims`]).
    pub fn attest_precompiled(
        &self,
        wasm_sha256: &str,
        engine_hash: &str,
        native_sha256: &str,
    ) -> Result<String, String> {
        self.signer.sign(&edgefn_proto::sync::PrecompiledClaims {
            iss: self.signer.issuer().to_string(),
            aud: edgefn_proto::sync::PRECOMPILED_AUDIENCE.to_string(),
            wasm_sha256: wasm_sha256.to_string(),
            engine_hash: engine_hash.to_string(),
            native_sha256: native_sha256.to_string(),
            iat: crate::clock::now_ms() / 1000,
        })
    }

    /// A node token for `node_id`.
    pub fn issue_node_token(&self, node_id: &str) -> Result<(NodeClaims, String), String> {
        self.signer.issue_node(node_id, self.token_ttl)
    }

    /// The node a node token is for, if it holds (remembered once checked).
    pub fn node_of_token(&self, token: &str) -> Result<String, TokenError> {
        let now = crate::store::now_ms() / 1000;
        {
            let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((node_id, exp)) = verified.get(token)
                && *exp > now
            {
                return Ok(node_id.clone());
            }
        }
        let claims = self.signer.verify_node(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= MAX_VERIFIED_TOKENS {
            verified.clear();
        }
        verified.insert(token.to_string(), (claims.node_id.clone(), claims.exp));
        Ok(claims.node_id)
    }
}

/// The DER of the first certificate in `pem`.
fn rustls_pki_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    use rustls::pki_types::pem::PemObject as _;
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("the node CA certificate is not PEM: {e}"))?;
    Ok(cert.to_vec())
}

/// What a verified client certificate says: the node id of its URI and its serial (hex).
pub fn client_identity(der: &[u8]) -> Result<(String, String), String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("the client certificate cannot be parsed: {e}"))?;
    let serial = hex::encode(cert.raw_serial());
    let names = cert
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's names cannot be parsed: {e}"))?
        .ok_or("the client certificate names no node")?;
    let node_id = names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::URI(uri) => edgefn_proto::identity::node_id_of_uri(uri),
            _ => None,
        })
        .ok_or("the client certificate names no node")?;
    Ok((node_id.to_string(), serial))
}
