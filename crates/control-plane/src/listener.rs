//! Serving a router on a listener: plain HTTP, TLS, or — for the node listener — mTLS with
//! a node gate. h1 and h2 (gRPC) on every connection; each request carries its peer
//! address (`ConnectInfo`) and, on the node listener, the node its certificate names
//! ([`NodePeer`]).
//!
//! The node gate admits a connection only after the TLS handshake verified the client
//! certificate against the node CA, and the node it names is enrolled, not revoked, and
//! holds that very certificate (a renewed node's old certificate no longer gets in). Every
//! refusal — no certificate, an unknown CA, an expired certificate, a revoked or unknown
//! node — is written to the audit log with the peer address and the reason. A node revoked
//! while connected is disconnected at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::audit::Entry;
use crate::revocations::Revocations;
use crate::store::Store;

/// The node a request's client certificate names (set by the node listener only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePeer {
    pub node_id: String,
    pub addr: SocketAddr,
}

/// What the node listener checks after the handshake, and where it reports refusals.
#[derive(Clone)]
pub struct NodeGate {
    pub store: Store,
    pub revocations: Arc<Revocations>,
}

impl NodeGate {
    /// Writes a refused node connection to the audit log.
    pub async fn refuse(&self, actor: &str, addr: SocketAddr, reason: &str) {
        tracing::warn!(peer = %addr, reason, "node connection refused");
        let entry = Entry::new(actor, "node.refused", "node listener")
            .details(json!({ "peer": addr.to_string(), "reason": reason }));
        if let Err(error) = self.store.record_refusal(&entry).await {
            tracing::error!(%error, "cannot audit a refused node connection");
        }
    }

    /// The node a verified certificate names, if it may connect.
    async fn admit(&self, der: &[u8], addr: SocketAddr) -> Result<NodePeer, (String, String)> {
        let (node_id, serial) =
            crate::ca::client_identity(der).map_err(|reason| ("anonymous".to_string(), reason))?;
        let actor = format!("node:{node_id}");
        let refused = |reason: &str| (actor.clone(), reason.to_string());
        match self.store.node_credentials(&node_id).await {
            Ok(Some(node)) if node.revoked_at.is_some() => Err(refused("the node is revoked")),
            Ok(Some(node)) if node.cert_serial.as_deref() == Some(serial.as_str()) => {
                if node.previous_serial.is_some()
                    && let Err(error) = self.store.forget_previous_certificate(&node_id).await
                {
                    tracing::warn!(%error, node_id, "cannot retire a renewed node's old certificate");
                }
                Ok(NodePeer { node_id, addr })
            }
            // Renewed, but the node has not used its new certificate yet: the old one
            // still gets in for a while, so a lost renewal answer cannot lock it out.
            Ok(Some(node))
                if node.previous_serial.as_deref() == Some(serial.as_str())
                    && node
                        .previous_until
                        .is_some_and(|until| until > crate::store::now_ms()) =>
            {
                Ok(NodePeer { node_id, addr })
            }
            Ok(Some(_)) => Err(refused(
                "the certificate was superseded by a newer one for this node",
            )),
            Ok(None) => Err(refused("the certificate names a node that is not enrolled")),
            Err(error) => Err(refused(&format!("cannot check the node: {error}"))),
        }
    }
}

/// Why a TLS handshake failed, in words for the audit log.
fn handshake_failure(error: &std::io::Error) -> String {
    use rustls::{CertificateError, Error};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return format!("TLS handshake failed: {error}");
    };
    match tls {
        Error::NoCertificatesPresented => "no client certificate".into(),
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the client certificate is not from the node CA".into()
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the client certificate has expired".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the client certificate is not valid yet".into(),
        other => format!("TLS handshake failed: {other}"),
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// (at most 10 s). With `tls`, connections are TLS; with `gate` too, node mTLS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gate: Option<NodeGate>,
    limits: edgefn_listen::Limits,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let connections = edgefn_listen::Gate::new(limits);
    let builder = Arc::new(connections.builder());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = connections.accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let edgefn_listen::Accepted {
            stream: tcp,
            peer: addr,
            permit,
        } = accepted;
        let (acceptor, gate, app) = (acceptor.clone(), gate.clone(), app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let activity = edgefn_listen::Activity::new();
        tokio::spawn(async move {
            // Closed when idle (the handshake included); the permit goes with the connection.
            let _permit = permit;
            let expired = activity.clone();
            tokio::select! {
                () = serve_connection(tcp, addr, acceptor, gate, app, builder, watcher, activity) => {}
                () = expired.expired(&limits) => {}
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 10 s after shutdown; closing them");
    }
    Ok(())
}

/// One accepted connection: TLS (and the node gate), then HTTP until it closes or, for a
/// node, until the node is revoked.
#[expect(
    clippy::too_many_arguments,
    reason = "the connection's parts, passed once"
)]
async fn serve_connection(
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gate: Option<NodeGate>,
    app: Router,
    builder: Arc<auto::Builder<hyper_util::rt::TokioExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    activity: edgefn_listen::Activity,
) {
    let (io, peer): (Box<dyn Io>, Option<NodePeer>) = match acceptor {
        None => (Box::new(tcp), None),
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    if let Some(gate) = &gate {
                        gate.refuse("anonymous", addr, &handshake_failure(&error))
                            .await;
                    }
                    return;
                }
                Err(_) => {
                    if let Some(gate) = &gate {
                        gate.refuse("anonymous", addr, "the TLS handshake timed out")
                            .await;
                    }
                    return;
                }
            };
            let peer = match &gate {
                None => None,
                Some(gate) => {
                    let leaf = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|certs| certs.first())
                        .map(|cert| cert.to_vec());
                    let Some(leaf) = leaf else {
                        gate.refuse("anonymous", addr, "no client certificate")
                            .await;
                        return;
                    };
                    match gate.admit(&leaf, addr).await {
                        Ok(peer) => Some(peer),
                        Err((actor, reason)) => {
                            gate.refuse(&actor, addr, &reason).await;
                            return;
                        }
                    }
                }
            };
            (Box::new(stream), peer)
        }
    };
    let node = peer.clone();
    let service = tower::service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(ConnectInfo(addr));
        if let Some(peer) = &peer {
            request.extensions_mut().insert(peer.clone());
        }
        let guard = activity.begin();
        let activity = activity.clone();
        let response = app.clone().oneshot(request);
        async move {
            let response = response.await?;
            Ok::<_, std::convert::Infallible>(activity.track(guard, response))
        }
    });
    let connection =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    let connection = watcher.watch(connection.into_owned());
    match (node, gate) {
        (Some(node), Some(gate)) => {
            let revoked = async move { gate.revocations.revoked(&node.node_id).await };
            tokio::select! {
                _ = connection => {}
                () = revoked => tracing::info!(peer = %addr, "closed the connection of a revoked node"),
            }
        }
        _ => {
            let _ = connection.await;
        }
    }
}

/// A TLS server configuration (h2 and http/1.1) from a certificate chain and key in PEM.
pub fn server_tls(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("the TLS certificate is not PEM: {e}"))?;
    if certs.is_empty() {
        anyhow::bail!("the TLS certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| anyhow::anyhow!("the TLS key is not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The self-signed certificate of `edgefn-control-plane --tls-self-signed`, made once in
/// `dir` (`api-tls.crt`, `api-tls.key`, the key readable only by its owner) for `names`.
pub fn self_signed_tls(
    dir: &std::path::Path,
    names: &[String],
) -> anyhow::Result<rustls::ServerConfig> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let (cert_path, key_path) = (dir.join("api-tls.crt"), dir.join("api-tls.key"));
    if !cert_path.exists() || !key_path.exists() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "edgefn control plane (self-signed)",
        );
        let cert = params.self_signed(&key)?;
        let _ = std::fs::remove_file(&key_path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)?
            .write_all(key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem())?;
    }
    server_tls(&std::fs::read(&cert_path)?, &std::fs::read(&key_path)?)
}
