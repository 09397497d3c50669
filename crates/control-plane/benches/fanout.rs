//! Deploy fan-out: how long from the deploy call until every node has acked, with 1,000 and
//! 10,000 simulated nodes connected to one control plane, on SQLite and on PostgreSQL
//! (goals: ≤ 1 s and ≤ 5 s). Also the control plane's memory per connected node.
//!
//! The control plane is the real `edgefn-control-plane` process on 127.0.0.1, security on.
//! Each simulated node is a lightweight protocol client (no Wasm): it enrolls with a
//! bootstrap token and a CSR of its own key, opens one mTLS HTTP/2 connection to the node
//! listener with its certificate, gets its node token, keeps its push stream
//! (`NodeSync.Watch`) on that connection, and on a notice newer than what it applied takes
//! the desired state it carries (or reads it, `GET /nodes/{id}/desired`) and sends a
//! heartbeat on the same connection acking the new revision with every item `ready` —
//! what a runner does, minus the download.
//!
//! Peer, in the same run: the same nodes each make two round trips on their own
//! connection (`GET /api/v1/nodes/{id}/desired` twice: token check, one read), all
//! released at once by an in-process signal — the floor that HTTP, TLS and the scheduler
//! set for "every node talks to the control plane twice", without push or database writes.
//!
//! Schema fan-out, in the same run and with the same nodes (goals: ≤ 1.5 s for 1,000, ≤ 10 s
//! for 10,000; the deploy fan-out above is its peer): a database every node holds, then
//! one schema change — from the change call until every node has applied it to a real
//! SQLite file of its own (`edgefn_edgedb::apply_changes`, as a runner does: WAL, one
//! `BEGIN IMMEDIATE` per change, fsync) and acked it in a heartbeat.
//!
//! `cargo bench -p edgefn-control-plane --bench fanout` (PostgreSQL from
//! `EDGEFN_TEST_POSTGRES_URL` or this machine's default; `FANOUT_NODES=1000,10000`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefn_edgedb::LedgerChange;
use edgefn_proto::api::{CreateChange, CreateDatabase, Deployment, VersionCreated};
use edgefn_proto::grpc::WatchRequest;
use edgefn_proto::grpc::node_sync_client::NodeSyncClient;
use edgefn_proto::identity::{BootstrapTokenCreated, EnrollNode, NodeEnrolled, NodeToken};
use edgefn_proto::sync::{
    ApplyAttempt, DatabaseReport, DatabaseSyncState, DesiredState, ItemResult, ItemState,
};
use edgefn_proto::sync::{Heartbeat, HeartbeatReply, NodeStatus};
use http_body_util::BodyExt as _;
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt as _;

/// Heartbeats in flight at once (the peer's requests too).
const IN_FLIGHT: usize = 256;

struct ControlPlane {
    child: Child,
    url: String,
    admin: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    fn start(data_dir: &std::path::Path, database_url: Option<&str>) -> Self {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (api, nodes) = (port(), port());
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgefn-control-plane"));
        command
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--node-listen", &format!("127.0.0.1:{nodes}"), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let child = command.spawn().expect("start edgefn-control-plane");
        let token_file = data_dir.join("admin-token");
        let started = Instant::now();
        let admin = loop {
            if let Ok(token) = std::fs::read_to_string(&token_file)
                && !token.trim().is_empty()
            {
                break token.trim().to_string();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no admin token"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            url: format!("http://127.0.0.1:{api}"),
            admin,
        }
    }

    /// Resident memory of the process, in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        kib * 1024
    }
}

async fn post<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: &impl serde::Serialize,
) -> T {
    let reply = http
        .post(&url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success(), "{url}: {}", reply.status());
    reply.json().await.unwrap()
}

/// One request on a node's own connection (the channel its push stream uses).
async fn call<T: serde::de::DeserializeOwned>(
    channel: &tonic::transport::Channel,
    method: http::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&impl serde::Serialize>,
) -> T {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            bytes::Bytes::from(bytes),
        )))
        .unwrap();
    let reply = channel.clone().oneshot(request).await.unwrap();
    let status = reply.status();
    let body = reply.into_body().collect().await.unwrap().to_bytes();
    assert!(status.is_success(), "{path}: {status}");
    serde_json::from_slice(&body).unwrap()
}

/// A node's identity: its id, and its connection's TLS (CA and certificate).
struct Enrolled {
    node_id: String,
    node_url: String,
    tls: tonic::transport::ClientTlsConfig,
}

async fn enroll(http: &reqwest::Client, api: &str, admin: &str, name: String) -> Enrolled {
    let bootstrap: BootstrapTokenCreated = post(
        http,
        format!("{api}/nodes/tokens"),
        admin,
        &serde_json::json!({}),
    )
    .await;
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enrolled: NodeEnrolled = post(
        http,
        format!("{api}/nodes/register"),
        &bootstrap.token,
        &EnrollNode {
            name,
            labels: BTreeMap::from([("region".to_string(), "tokyo".to_string())]),
            address: String::new(),
            csr,
        },
    )
    .await;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            &enrolled.ca_certificate,
        ))
        .identity(tonic::transport::Identity::from_pem(
            &enrolled.certificate,
            key.serialize_pem(),
        ))
        .domain_name("127.0.0.1");
    Enrolled {
        node_id: enrolled.node_id,
        node_url: enrolled.node_url,
        tls,
    }
}

/// Brings a simulated node's database files to the desired state (blocking), and what
/// the node reports about them.
fn apply_databases(dir: &std::path::Path, state: &DesiredState) -> Vec<DatabaseReport> {
    state
        .databases
        .iter()
        .map(|database| {
            let conn =
                edgefn_edgedb::open_node_database(&dir.join(format!("{}.sqlite", database.id)))
                    .expect("open the node's database file");
            let changes: Vec<LedgerChange> = database
                .changes
                .iter()
                .map(|c| LedgerChange {
                    seq: c.seq,
                    sql: c.sql.clone(),
                    sha256: c.sha256.clone(),
                    fingerprint: c.fingerprint.clone(),
                    chain: c.chain.clone(),
                })
                .collect();
            let started = Instant::now();
            let applied = edgefn_edgedb::apply_changes(&conn, &changes).expect("apply");
            assert_eq!(applied.error, None);
            DatabaseReport {
                database_id: database.id.clone(),
                seq: applied.status.seq,
                fingerprint: applied.status.fingerprint,
                state: DatabaseSyncState::InSync,
                error: None,
                attempts: (applied.from != applied.status.seq)
                    .then(|| ApplyAttempt {
                        from_seq: applied.from,
                        to_seq: applied.status.seq,
                        target_seq: database.target_seq,
                        duration_ms: started.elapsed().as_millis() as u64,
                        at_ms: 0,
                        error: None,
                    })
                    .into_iter()
                    .collect(),
                repair: None,
            }
        })
        .collect()
}

/// A simulated node's number and the directory of its database files.
struct NodeFiles {
    index: usize,
    dir: std::path::PathBuf,
}

/// What a simulated node reports to the measurement.
enum Acked {
    /// It applied a revision that holds the function.
    Deploy(Instant),
    /// Node `.0` applied a database at sequence `.1` and acked it.
    Schema(usize, u64, Instant),
    /// Node `.0` received a desired state whose database is at sequence `.1` (before
    /// applying it).
    Seen(usize, u64, Instant),
}

/// One simulated node: follows its push stream, syncs and acks every newer revision
/// (applying its databases to real SQLite files under `db_dir`), and reports each applied
/// revision that holds `function_id` and each database sequence it acked.
async fn node(
    enrolled: Enrolled,
    files: NodeFiles,
    function_id: String,
    connecting: tokio::sync::OwnedSemaphorePermit,
    in_flight: Arc<Semaphore>,
    connected: mpsc::Sender<(String, tonic::transport::Channel, String)>,
    acked: mpsc::UnboundedSender<Acked>,
) {
    let Enrolled {
        node_id,
        node_url,
        tls,
    } = enrolled;
    let channel = tonic::transport::Endpoint::from_shared(node_url)
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to the node listener");
    let token: NodeToken = call(
        &channel,
        http::Method::POST,
        &format!("/api/v1/nodes/{node_id}/token"),
        None,
        Some(&serde_json::json!({})),
    )
    .await;
    let token = token.token;
    let mut watch = tonic::Request::new(WatchRequest {
        node_id: node_id.clone(),
        applied_revision: 0,
    });
    watch
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = NodeSyncClient::new(channel.clone())
        .watch(watch)
        .await
        .unwrap()
        .into_inner();
    drop(connecting);
    let _ = connected
        .send((node_id.clone(), channel.clone(), token.clone()))
        .await;
    let heartbeat_path = format!("/api/v1/nodes/{node_id}/heartbeat");
    let desired_path = format!("/api/v1/nodes/{node_id}/desired");
    let mut applied = 0;
    while let Ok(Some(notice)) = stream.message().await {
        if notice.revision <= applied {
            continue;
        }
        let state = if notice.desired_state.is_empty() {
            let _permit = in_flight.acquire().await.unwrap();
            call::<DesiredState>(
                &channel,
                http::Method::GET,
                &desired_path,
                Some(&token),
                None::<&()>,
            )
            .await
        } else {
            DesiredState::decode(&notice.desired_state).unwrap()
        };
        if state.revision <= applied {
            continue;
        }
        applied = state.revision;
        for database in &state.databases {
            let _ = acked.send(Acked::Seen(
                files.index,
                database.target_seq,
                Instant::now(),
            ));
        }
        let dir = files.dir.clone();
        let desired = state.clone();
        let databases = tokio::task::spawn_blocking(move || apply_databases(&dir, &desired))
            .await
            .unwrap();
        let schema_seqs: Vec<u64> = databases.iter().map(|d| d.seq).collect();
        let mut beat = Heartbeat {
            node_id: node_id.clone(),
            status: NodeStatus::Online,
            cpu_percent: 1.0,
            mem_bytes: 1 << 20,
            inventory: Vec::new(),
            applied_revision: Some(applied),
            results: Vec::new(),
            usage: Default::default(),
            databases,
        };
        beat.results = state
            .functions
            .iter()
            .map(|f| ItemResult {
                function_id: f.function_id.clone(),
                version: f.version,
                state: ItemState::Ready,
                error: None,
            })
            .collect();
        let permit = in_flight.acquire().await.unwrap();
        let _: HeartbeatReply = call(
            &channel,
            http::Method::POST,
            &heartbeat_path,
            Some(&token),
            Some(&beat),
        )
        .await;
        drop(permit);
        if state.functions.iter().any(|f| f.function_id == function_id) {
            let _ = acked.send(Acked::Deploy(Instant::now()));
        }
        for seq in schema_seqs {
            let _ = acked.send(Acked::Schema(files.index, seq, Instant::now()));
        }
    }
}

struct Figures {
    /// From the schema change call until every node acked it.
    schema_all: Duration,
    /// … until every node had received it.
    schema_seen: Duration,
    schema_p50: Duration,
    deploy_call: Duration,
    all_acked: Duration,
    p50: Duration,
    p99: Duration,
    peer: Duration,
    bytes_per_node: f64,
}

async fn measure(database_url: Option<&str>, nodes: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), database_url);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let api = |path: &str| format!("{}/api/v1{path}", cp.url);
    let admin = cp.admin.clone();
    let started = Instant::now();
    while http.get(api("/openapi.json")).send().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A function with a ready version.
    let created: VersionCreated = post(
        &http,
        api("/functions"),
        &admin,
        &serde_json::json!({ "name": "hello" }),
    )
    .await;
    let wasm = std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap();
    let uploaded = http
        .put(&created.upload_url)
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert!(uploaded.status().is_success());
    let _: serde_json::Value = post(
        &http,
        api(&format!(
            "/functions/{}/versions/1/complete",
            created.function_id
        )),
        &admin,
        &serde_json::json!({}),
    )
    .await;

    // Enroll the nodes, 64 at a time.
    let gate = Arc::new(Semaphore::new(64));
    let mut enrollments = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let (http, api, admin, gate) = (http.clone(), api(""), admin.clone(), gate.clone());
        enrollments.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            enroll(&http, &api, &admin, format!("sim-{i}")).await
        }));
    }
    let mut identities = Vec::with_capacity(nodes);
    for enrollment in enrollments {
        identities.push(enrollment.await.unwrap());
    }

    let before_streams = cp.rss();
    let (connected_tx, mut connected_rx) = mpsc::channel(nodes);
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let connecting = Arc::new(Semaphore::new(128));
    // Every node has one mTLS connection (its certificate is who it is): the push stream
    // and its heartbeats share it, IN_FLIGHT requests at a time across all nodes.
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let db_dirs = dir.path().join("nodes");
    for (i, identity) in identities.into_iter().enumerate() {
        let function = created.function_id.clone();
        let db_dir = db_dirs.join(i.to_string());
        std::fs::create_dir_all(&db_dir).unwrap();
        let (connected, acked, connecting, in_flight) = (
            connected_tx.clone(),
            acked_tx.clone(),
            connecting.clone(),
            in_flight.clone(),
        );
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            node(
                identity,
                NodeFiles {
                    index: i,
                    dir: db_dir,
                },
                function,
                permit,
                in_flight,
                connected,
                acked,
            )
            .await
        });
    }
    let mut channels = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        channels.push(connected_rx.recv().await.unwrap());
    }
    // Let the first notices (the registration revision) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes_per_node = (cp.rss().saturating_sub(before_streams)) as f64 / nodes as f64;

    let deploy_started = Instant::now();
    let deployment: Deployment = post(
        &http,
        api(&format!("/functions/{}/deploy", created.function_id)),
        &admin,
        &serde_json::json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
    )
    .await;
    let deploy_call = deploy_started.elapsed();
    assert_eq!(deployment.nodes.len(), nodes);
    let mut times = Vec::with_capacity(nodes);
    while times.len() < nodes {
        let acked = tokio::time::timeout(Duration::from_secs(120), acked_rx.recv())
            .await
            .expect("every node acks within 120 s")
            .unwrap();
        if let Acked::Deploy(at) = acked {
            times.push(at.duration_since(deploy_started));
        }
    }
    times.sort();

    // The peer: the same nodes, two plain round trips each on their own connection,
    // released at once.
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(nodes);
    for (id, channel, token) in channels {
        let (release, done, in_flight) = (release.clone(), done.clone(), in_flight.clone());
        tasks.push(tokio::spawn(async move {
            let mut release = release;
            let _ = release.wait_for(|go| *go).await;
            let path = format!("/api/v1/nodes/{id}/desired");
            for _ in 0..2 {
                let _permit = in_flight.acquire().await.unwrap();
                let _: DesiredState = call(
                    &channel,
                    http::Method::GET,
                    &path,
                    Some(&token),
                    None::<&()>,
                )
                .await;
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peer_started = Instant::now();
    release_tx.send_replace(true);
    for task in tasks {
        task.await.unwrap();
    }
    let peer = peer_started.elapsed();

    // Schema fan-out: a database on every node, then one change to it.
    let _: serde_json::Value = post(
        &http,
        api("/projects/default/databases"),
        &admin,
        &CreateDatabase {
            name: "bench".into(),
            pop_selector: "region == 'tokyo'".into(),
        },
    )
    .await;
    let mut holding = std::collections::HashSet::new();
    while holding.len() < nodes {
        let acked = tokio::time::timeout(Duration::from_secs(120), acked_rx.recv())
            .await
            .expect("every node holds the database within 120 s")
            .unwrap();
        if let Acked::Schema(node, 0, _) = acked {
            holding.insert(node);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while acked_rx.try_recv().is_ok() {}
    let change_started = Instant::now();
    let _: serde_json::Value = post(
        &http,
        api("/projects/default/databases/bench/changes"),
        &admin,
        &CreateChange {
            sql: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);\n\
                  CREATE INDEX items_by_name ON items (name);"
                .into(),
            description: "bench".into(),
            destructive: false,
        },
    )
    .await;
    let mut schema_times = Vec::with_capacity(nodes);
    let mut applied = std::collections::HashSet::new();
    let mut seen = std::collections::HashSet::new();
    let mut last_seen = Duration::ZERO;
    while schema_times.len() < nodes {
        let acked = tokio::time::timeout(Duration::from_secs(120), acked_rx.recv())
            .await
            .expect("every node applies the change within 120 s")
            .unwrap();
        match acked {
            Acked::Schema(node, 1, at) if applied.insert(node) => {
                schema_times.push(at.duration_since(change_started));
            }
            Acked::Seen(node, 1, at) if seen.insert(node) => {
                last_seen = last_seen.max(at.duration_since(change_started));
            }
            _ => {}
        }
    }
    schema_times.sort();

    Figures {
        schema_all: schema_times[nodes - 1],
        schema_seen: last_seen,
        schema_p50: schema_times[nodes / 2],
        deploy_call,
        all_acked: times[nodes - 1],
        p50: times[nodes / 2],
        p99: times[nodes * 99 / 100],
        peer,
        bytes_per_node,
    }
}

fn main() {
    let counts: Vec<usize> = std::env::var("FANOUT_NODES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("FANOUT_NODES: numbers"))
        .collect();
    edgefn_control_plane::install_crypto_providers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<10} {:>6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12} {:>12} {:>10} {:>12}",
        "backend",
        "nodes",
        "deploy",
        "all acked",
        "p50",
        "p99",
        "peer",
        "CP B/node",
        "schema all",
        "schema p50",
        "schema seen"
    );
    for &nodes in &counts {
        for name in ["sqlite", "postgres"] {
            // A schema of its own per run, dropped after it.
            let schema = match name {
                "postgres" => {
                    let schema_name =
                        edgefn_test_support::postgres::unique_schema_name("edgefn_bench_fanout");
                    Some(runtime.block_on(edgefn_test_support::postgres::test_schema(&schema_name)))
                }
                _ => None,
            };
            let url = schema.as_ref().map(|s| s.url.clone());
            let f = runtime.block_on(measure(url.as_deref(), nodes));
            let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
            println!(
                "{:<10} {:>6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12.0} {:>12} {:>10} {:>12}",
                name,
                nodes,
                ms(f.deploy_call),
                ms(f.all_acked),
                ms(f.p50),
                ms(f.p99),
                ms(f.peer),
                f.bytes_per_node,
                ms(f.schema_all),
                ms(f.schema_p50),
                ms(f.schema_seen)
            );
        }
    }
}
