//! Backends and requests for the API suite.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use edgefn_control_plane::api::{AppState, node_router, router};
use edgefn_control_plane::artifacts::Artifacts;
use edgefn_control_plane::store::Store;
use edgefn_control_plane::sync::RevisionFeed;
use edgefn_control_plane::validate::Limits;
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

/// Which metadata backend a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// A fresh schema in the PostgreSQL test database, dropped with the last clone.
    Postgres {
        url: String,
        _schema: Arc<edgefn_test_support::postgres::TestSchema>,
    },
}

/// A fresh schema in the PostgreSQL test database.
pub async fn postgres() -> Backend {
    let name = edgefn_test_support::postgres::unique_schema_name("edgefn_test");
    postgres_schema(&name).await
}

/// Like [`postgres`], in a schema of a given name, emptied first (for fixtures that live as
/// long as the test process and so are never dropped).
pub async fn postgres_schema(schema: &str) -> Backend {
    let schema = edgefn_test_support::postgres::test_schema(schema).await;
    Backend::Postgres {
        url: schema.url.clone(),
        _schema: Arc::new(schema),
    }
}

pub struct App {
    /// The developer API.
    pub router: Router,
    /// The node listener's API (requests carry the `NodePeer` the listener would set).
    pub nodes: Router,
    pub store: Store,
    pub state: AppState,
    /// The revision feed of this app's push streams (not polling unless a test starts it).
    pub feed: Arc<RevisionFeed>,
    /// The bootstrap administrator's token, sent by `send` and the helpers built on it.
    pub admin: String,
    url: String,
    _dir: tempfile::TempDir,
}

/// The node listener's URL in these tests' desired states.
pub const NODE_URL: &str = "https://cp-nodes.test";

/// A node enrolled through the API, with its node token.
#[derive(Clone, Debug)]
pub struct EnrolledNode {
    pub id: String,
    pub token: String,
}

pub async fn app(backend: &Backend) -> App {
    app_with(backend, Duration::from_secs(600)).await
}

/// An app on a SQLite database of its own whose artifacts live in the S3 bucket `settings`.
pub async fn app_on_s3(settings: &edgefn_control_plane::artifacts::S3Settings) -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    let artifacts = Artifacts::s3(settings, "http://cp.test".into())
        .await
        .unwrap();
    assemble(url, artifacts, Duration::from_secs(600), dir, None).await
}

pub async fn app_with(backend: &Backend, upload_ttl: Duration) -> App {
    let dir = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display()),
        Backend::Postgres { url, .. } => url.clone(),
    };
    let artifacts = local_artifacts(dir.path());
    assemble(url, artifacts, upload_ttl, dir, None).await
}

fn local_artifacts(dir: &std::path::Path) -> Artifacts {
    Artifacts::local(&dir.join("artifacts"), [7; 32], "http://cp.test".into()).unwrap()
}

async fn assemble(
    url: String,
    artifacts: Artifacts,
    upload_ttl: Duration,
    dir: tempfile::TempDir,
    admin: Option<String>,
) -> App {
    edgefn_control_plane::install_crypto_providers();
    let store = Store::connect(&url).await.unwrap();
    // Tests count records exactly; the limiter has its own test.
    store.set_refusal_limit(1_000_000);
    let (auth, nodes) =
        edgefn_control_plane::security(&store, edgefn_control_plane::SecurityConfig::new(NODE_URL))
            .await
            .unwrap();
    let admin = match admin {
        Some(token) => token,
        None => {
            let made = edgefn_control_plane::auth::bootstrap_admin(
                &store,
                &auth.signer,
                dir.path(),
                Duration::from_secs(86_400),
            )
            .await
            .unwrap();
            match made {
                Some(path) => std::fs::read_to_string(path).unwrap().trim().to_string(),
                // A second app on a database that has its administrator already.
                None => {
                    let admin = store.user_by_name("admin").await.unwrap().unwrap();
                    let (claims, token) = auth
                        .signer
                        .issue_api(&admin.id, "admin", None, None, Duration::from_secs(86_400))
                        .unwrap();
                    let hash = edgefn_control_plane::auth::tokens::secret_hash(&token);
                    store
                        .insert_token("system", &claims, &hash, "test")
                        .await
                        .unwrap();
                    token
                }
            }
        }
    };
    let feed = RevisionFeed::new();
    let state = AppState {
        store: store.clone(),
        artifacts: Arc::new(artifacts),
        limits: Limits::default(),
        upload_ttl,
        max_artifact_bytes: 4 << 20,
        feed: feed.clone(),
        revocations: edgefn_control_plane::revocations::Revocations::new(),
        auth,
        ca: nodes,
        checkpoints: None,
        logins: Default::default(),
        dns: None,
        precompiler: None,
        database_warn_after: std::time::Duration::from_secs(300),
    };
    App {
        router: router(state.clone()),
        nodes: node_router(state.clone()),
        store,
        state,
        feed,
        admin,
        url,
        _dir: dir,
    }
}

impl App {
    /// A second control plane on the same database (a replica), with artifacts of its own.
    pub async fn replica(&self) -> App {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = local_artifacts(dir.path());
        assemble(
            self.url.clone(),
            artifacts,
            Duration::from_secs(600),
            dir,
            Some(self.admin.clone()),
        )
        .await
    }
}

pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

async fn call(router: &Router, request: http::Request<axum::body::Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply { status, body }
}

fn request(
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Bytes,
    content_type: &str,
) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(axum::body::Body::from(body)).unwrap()
}

/// A key and a CSR for it, as a node makes them.
pub fn csr() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap()
}

impl App {
    /// The same app, also accepting tokens of `external`.
    pub fn with_external(
        mut self,
        external: edgefn_control_plane::auth::oidc::ExternalIssuer,
    ) -> Self {
        let auth = edgefn_control_plane::auth::Auth {
            signer: self.state.auth.signer.clone(),
            external: Some(Arc::new(external)),
        };
        self.state.auth = Arc::new(auth);
        self.router = router(self.state.clone());
        self.nodes = node_router(self.state.clone());
        self
    }

    /// The database this app runs on.
    pub fn database_url(&self) -> &str {
        &self.url
    }

    /// A request as the administrator.
    pub async fn send(
        &self,
        method: &str,
        uri: &str,
        body: impl Into<Bytes>,
        content_type: &str,
    ) -> Reply {
        self.send_as(Some(&self.admin), method, uri, body, content_type)
            .await
    }

    /// A request with `token` (or none).
    pub async fn send_as(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: impl Into<Bytes>,
        content_type: &str,
    ) -> Reply {
        call(
            &self.router,
            request(method, uri, token, body.into(), content_type),
        )
        .await
    }

    pub async fn json_as(
        &self,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> Reply {
        self.send_as(token, method, uri, body.to_string(), "application/json")
            .await
    }

    /// A request to the node listener from `node_id`'s certificate, with `token`.
    pub async fn node_as(
        &self,
        node_id: &str,
        token: Option<&str>,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> Reply {
        let mut request = request(
            method,
            uri,
            token,
            Bytes::from(body.to_string()),
            "application/json",
        );
        request
            .extensions_mut()
            .insert(edgefn_control_plane::listener::NodePeer {
                node_id: node_id.to_string(),
                addr: "127.0.0.1:1".parse().unwrap(),
            });
        call(&self.nodes, request).await
    }

    /// A request of `node` to the node listener, with its own certificate and token.
    pub async fn node(
        &self,
        node: &EnrolledNode,
        method: &str,
        uri: &str,
        body: serde_json::Value,
    ) -> Reply {
        self.node_as(&node.id, Some(&node.token), method, uri, body)
            .await
    }

    /// A one-time bootstrap token.
    pub async fn bootstrap_token(&self) -> String {
        let created = self
            .json("POST", "/api/v1/nodes/tokens", serde_json::json!({}))
            .await;
        assert_eq!(created.status, 201, "{:?}", created.json());
        created.json()["token"].as_str().unwrap().to_string()
    }

    /// Enrolls a node named `name` with `labels`, and gets its node token.
    pub async fn enroll(&self, name: &str, labels: serde_json::Value) -> EnrolledNode {
        let token = self.bootstrap_token().await;
        let enrolled = self
            .json_as(
                Some(&token),
                "POST",
                "/api/v1/nodes/register",
                serde_json::json!({ "name": name, "labels": labels, "address": "127.0.0.1:8000", "csr": csr() }),
            )
            .await;
        assert_eq!(enrolled.status, 201, "{:?}", enrolled.json());
        let id = enrolled.json()["node_id"].as_str().unwrap().to_string();
        let token = self
            .node_as(
                &id,
                None,
                "POST",
                &format!("/api/v1/nodes/{id}/token"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(token.status, 200, "{:?}", token.json());
        EnrolledNode {
            id,
            token: token.json()["token"].as_str().unwrap().to_string(),
        }
    }

    pub async fn json(&self, method: &str, uri: &str, body: serde_json::Value) -> Reply {
        self.send(method, uri, body.to_string(), "application/json")
            .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send("GET", uri, Bytes::new(), "application/json")
            .await
    }

    /// Uploads `bytes` through an `upload_url` (its path and query).
    pub async fn upload(&self, upload_url: &str, bytes: &[u8]) -> Reply {
        let path = upload_url
            .strip_prefix("http://cp.test")
            .expect("local upload URL");
        self.send(
            "PUT",
            path,
            Bytes::copy_from_slice(bytes),
            "application/wasm",
        )
        .await
    }

    /// Creates a function, uploads `wasm` and completes version 1; returns the reply to
    /// `complete` and the function id.
    pub async fn deploy_bytes(&self, name: &str, wasm: &[u8]) -> (Reply, String) {
        let created = self
            .json(
                "POST",
                "/api/v1/functions",
                serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.json());
        let created = created.json();
        let id = created["function_id"].as_str().unwrap().to_string();
        let uploaded = self
            .upload(created["upload_url"].as_str().unwrap(), wasm)
            .await;
        assert_eq!(
            uploaded.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&uploaded.body)
        );
        let completed = self
            .send(
                "POST",
                &format!("/api/v1/functions/{id}/versions/1/complete"),
                Bytes::new(),
                "application/json",
            )
            .await;
        (completed, id)
    }
}

pub fn hello() -> Vec<u8> {
    std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap()
}

/// Runs a test body for SQLite and PostgreSQL.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { super::$name($crate::fixture::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() {
                super::$name($crate::fixture::postgres().await).await
            })*
        }
    };
}
