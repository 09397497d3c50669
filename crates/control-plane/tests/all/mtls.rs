//! The node listener over real TLS on 127.0.0.1, as an attacker would try it: no client
//! certificate, a certificate from another CA, an expired one, a revoked node, a valid
//! certificate with another node's token — each refused and audited with the peer address
//! and the reason — and the valid case, served. A revoked node's open push stream closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

/// An operator's CA, given to the control plane with `--node-ca-cert`/`--node-ca-key`: the
/// test can then sign certificates the control plane must judge.
struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> (Ca, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    let key_pem = key.serialize_pem();
    let issuer = Issuer::new(params, key);
    (
        Ca {
            cert_pem: cert.pem(),
            issuer,
        },
        key_pem,
    )
}

impl Ca {
    /// A client certificate naming `node_id`, valid from `not_before` to `not_after`
    /// (days from now), for a new key.
    fn node_certificate(&self, node_id: &str, not_before: i64, not_after: i64) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, node_id);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://edgefn/node/{node_id}")
                .try_into()
                .unwrap(),
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(not_before);
        params.not_after = now + time::Duration::days(not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

struct ControlPlane {
    _binary: crate::startup::Binary,
    api: String,
    nodes: String,
    admin: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    fn start(ca: &Ca, ca_key: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (cert_file, key_file) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&cert_file, &ca.cert_pem).unwrap();
        std::fs::write(&key_file, ca_key).unwrap();
        let binary = crate::startup::Binary::start_with(
            &dir.path().join("data"),
            &[
                "--node-ca-cert".as_ref(),
                cert_file.as_os_str(),
                "--node-ca-key".as_ref(),
                key_file.as_os_str(),
            ],
        );
        let api = format!("http://{}", binary.address);
        let nodes = format!("https://{}", binary.nodes);
        let admin = std::fs::read_to_string(dir.path().join("data/admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            _binary: binary,
            api,
            nodes,
            admin,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (u16, Value) {
        let reply = self
            .http
            .request(method, format!("{}/api/v1{path}", self.api))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// Enrolls a node: its id, certificate and key.
    async fn enroll(&self, name: &str) -> (String, String, String) {
        let (status, bootstrap) = self
            .api(
                reqwest::Method::POST,
                "/nodes/tokens",
                &self.admin,
                json!({}),
            )
            .await;
        assert_eq!(status, 201, "{bootstrap}");
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let (status, enrolled) = self
            .api(
                reqwest::Method::POST,
                "/nodes/register",
                bootstrap["token"].as_str().unwrap(),
                json!({ "name": name, "csr": csr }),
            )
            .await;
        assert_eq!(status, 201, "{enrolled}");
        assert_eq!(
            enrolled["node_url"].as_str().unwrap(),
            self.nodes,
            "enrollment names the node listener"
        );
        // The bootstrap token was for one node only.
        let (again, _) = self
            .api(
                reqwest::Method::POST,
                "/nodes/register",
                bootstrap["token"].as_str().unwrap(),
                json!({ "name": "second", "csr": csr }),
            )
            .await;
        assert_eq!(again, 401, "a used bootstrap token is refused");
        (
            enrolled["node_id"].as_str().unwrap().to_string(),
            enrolled["certificate"].as_str().unwrap().to_string(),
            key.serialize_pem(),
        )
    }

    /// A client of the node listener trusting `ca`, presenting `identity` (if any).
    fn node_client(&self, ca: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// The node listener's answer to `client`: the status, or `None` when the connection
    /// was refused.
    async fn node_call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Option<(u16, Value)> {
        let mut request = client
            .request(method, format!("{}/api/v1{path}", self.nodes))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = request.send().await.ok()?;
        let status = reply.status().as_u16();
        Some((status, reply.json().await.unwrap_or(Value::Null)))
    }

    /// A heartbeat of `node_id` with `token`.
    async fn beat(
        &self,
        client: &reqwest::Client,
        node_id: &str,
        token: &str,
    ) -> Option<(u16, Value)> {
        let path = format!("/nodes/{node_id}/heartbeat");
        self.node_call(
            client,
            reqwest::Method::POST,
            &path,
            Some(token),
            heartbeat(node_id),
        )
        .await
    }

    async fn node_token(&self, client: &reqwest::Client, node_id: &str) -> String {
        let (status, token) = self
            .node_call(
                client,
                reqwest::Method::POST,
                &format!("/nodes/{node_id}/token"),
                None,
                json!({}),
            )
            .await
            .expect("the node's own certificate is let in");
        assert_eq!(status, 200, "{token}");
        token["token"].as_str().unwrap().to_string()
    }

    /// Waits for a `node.refused` record whose reason contains `reason`.
    async fn refusal(&self, reason: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, records) = self
                .api(
                    reqwest::Method::GET,
                    "/audit?action=node.refused&limit=1000",
                    &self.admin,
                    Value::Null,
                )
                .await;
            if let Some(found) = records.as_array().unwrap().iter().find(|r| {
                r["details"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains(reason))
            }) {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no refusal audited for {reason:?}: {records}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn heartbeat(node_id: &str) -> Value {
    json!({ "node_id": node_id, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1 })
}

#[tokio::test]
async fn only_a_valid_node_certificate_with_its_own_token_gets_in() {
    edgefn_control_plane::install_crypto_providers();
    let (ca, ca_key) = new_ca("operator CA");
    let cp = ControlPlane::start(&ca, &ca_key);
    let (node, cert, key) = cp.enroll("edge-1").await;
    let (other, other_cert, other_key) = cp.enroll("edge-2").await;

    // The valid case: its certificate, its token.
    let client = cp.node_client(&ca, Some((&cert, &key)));
    let token = cp.node_token(&client, &node).await;
    let path = format!("/nodes/{node}/heartbeat");
    let (status, _) = cp.beat(&client, &node, &token).await.unwrap();
    assert_eq!(status, 200);

    // No client certificate.
    let anonymous = cp.node_client(&ca, None);
    assert_eq!(
        cp.beat(&anonymous, &node, &token).await.map(|(s, _)| s),
        None
    );
    let record = cp.refusal("no client certificate").await;
    assert!(
        record["details"]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    // A certificate for this node, from another CA.
    let (rogue, _) = new_ca("rogue CA");
    let (rogue_cert, rogue_key) = rogue.node_certificate(&node, -1, 30);
    let impostor = cp.node_client(&ca, Some((&rogue_cert, &rogue_key)));
    assert!(cp.beat(&impostor, &node, &token).await.is_none());
    cp.refusal("not from the node CA").await;

    // The right CA, but expired.
    let (old_cert, old_key) = ca.node_certificate(&node, -60, -1);
    let expired = cp.node_client(&ca, Some((&old_cert, &old_key)));
    assert!(cp.beat(&expired, &node, &token).await.is_none());
    cp.refusal("expired").await;

    // The right CA and not expired, but not the certificate the node was issued.
    let (copy_cert, copy_key) = ca.node_certificate(&node, -1, 30);
    let forged = cp.node_client(&ca, Some((&copy_cert, &copy_key)));
    assert!(cp.beat(&forged, &node, &token).await.is_none());
    cp.refusal("superseded").await;

    // A valid certificate with another node's token; and with no token.
    let other_client = cp.node_client(&ca, Some((&other_cert, &other_key)));
    let other_path = format!("/nodes/{other}/heartbeat");
    let (status, body) = cp
        .node_call(
            &other_client,
            reqwest::Method::POST,
            &other_path,
            Some(&token),
            heartbeat(&other),
        )
        .await
        .unwrap();
    assert_eq!(status, 401, "{body}");
    cp.refusal("the node token is for node").await;
    let (status, _) = cp
        .node_call(
            &other_client,
            reqwest::Method::POST,
            &other_path,
            None,
            heartbeat(&other),
        )
        .await
        .unwrap();
    assert_eq!(status, 401);
    // Its own token, but another node's path.
    let other_token = cp.node_token(&other_client, &other).await;
    let (status, _) = cp
        .node_call(
            &other_client,
            reqwest::Method::POST,
            &path,
            Some(&other_token),
            heartbeat(&node),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);

    // Revoked: refused at once, and from then on.
    let (status, _) = cp
        .api(
            reqwest::Method::POST,
            &format!("/nodes/{node}/revoke"),
            &cp.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let after = cp.beat(&client, &node, &token).await;
    assert!(
        after.is_none() || after.as_ref().is_some_and(|(s, _)| *s == 401),
        "a revoked node is refused: {after:?}"
    );
    let fresh = cp.node_client(&ca, Some((&cert, &key)));
    assert!(cp.beat(&fresh, &node, &token).await.is_none());
    cp.refusal("revoked").await;
    // The other node still gets in.
    let (status, _) = cp
        .node_call(
            &other_client,
            reqwest::Method::POST,
            &other_path,
            Some(&other_token),
            heartbeat(&other),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_renewed_certificate_replaces_the_old_one() {
    edgefn_control_plane::install_crypto_providers();
    let (ca, ca_key) = new_ca("operator CA");
    let cp = ControlPlane::start(&ca, &ca_key);
    let (node, cert, key) = cp.enroll("edge-1").await;
    let client = cp.node_client(&ca, Some((&cert, &key)));
    let token = cp.node_token(&client, &node).await;
    let fresh_key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&fresh_key)
        .unwrap()
        .pem()
        .unwrap();
    let (status, renewed) = cp
        .node_call(
            &client,
            reqwest::Method::POST,
            &format!("/nodes/{node}/certificate"),
            Some(&token),
            json!({ "csr": csr }),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{renewed}");
    let new_cert = renewed["certificate"].as_str().unwrap();
    // Until the node uses its new certificate, the old one still gets in: a renewal whose
    // answer was lost (or a node that crashed before saving it) is not locked out.
    let before = cp.node_client(&ca, Some((&cert, &key)));
    let (status, _) = cp.beat(&before, &node, &token).await.unwrap();
    assert_eq!(status, 200, "the old certificate until the new one is used");
    let renewed_client = cp.node_client(&ca, Some((new_cert, &fresh_key.serialize_pem())));
    let (status, _) = cp.beat(&renewed_client, &node, &token).await.unwrap();
    assert_eq!(status, 200, "the new certificate gets in");
    let stale = cp.node_client(&ca, Some((&cert, &key)));
    assert!(
        cp.beat(&stale, &node, &token).await.is_none(),
        "once the new one was used, the old certificate no longer gets in"
    );
    cp.refusal("superseded").await;
}

#[tokio::test]
async fn revoking_a_node_closes_its_open_push_stream() {
    edgefn_control_plane::install_crypto_providers();
    let (ca, ca_key) = new_ca("operator CA");
    let cp = ControlPlane::start(&ca, &ca_key);
    let (node, cert, key) = cp.enroll("edge-1").await;
    let client = cp.node_client(&ca, Some((&cert, &key)));
    let token = cp.node_token(&client, &node).await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca.cert_pem))
        .identity(tonic::transport::Identity::from_pem(&cert, &key))
        .domain_name("127.0.0.1");
    let channel = tonic::transport::Endpoint::from_shared(cp.nodes.clone())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(edgefn_proto::grpc::WatchRequest {
        node_id: node.clone(),
        applied_revision: 0,
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = edgefn_proto::grpc::node_sync_client::NodeSyncClient::new(channel)
        .watch(request)
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.revision >= 1, "the enrollment's revision");
    let (status, _) = cp
        .api(
            reqwest::Method::POST,
            &format!("/nodes/{node}/revoke"),
            &cp.admin,
            json!({}),
        )
        .await;
    assert_eq!(status, 204);
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a revoked node ends");
}
