//! Deploy fan-out: how long from the deploy call until every node has acked, with 1,000 and
//! 10,000 simulated nodes connected to one control plane, on SQLite and on PostgreSQL
//! (goals: ≤ 1 s and ≤ 5 s). Also the control plane's memory per connected node.
//!
//! The control plane is the real `edgefn-control-plane` process on 127.0.0.1. Each simulated
//! node is a lightweight protocol client (no Wasm): it registers, keeps its own push stream
//! (`NodeSync.Watch`, one HTTP/2 connection per node), and on a notice newer than what it
//! applied takes the desired state it carries (or reads it, `GET /nodes/{id}/desired`) and
//! sends a heartbeat acking the new revision with every item `ready` — what a runner does,
//! minus the download.
//!
//! Peer, in the same run: the same nodes each make the same two round trips to the same
//! process (`GET /api/v1/nodes/{id}` twice), all released at once by an in-process signal —
//! the floor that HTTP and the scheduler set for "every node talks to the control plane
//! twice", without push, database writes or desired-state documents.
//!
//! `cargo bench -p edgefn-control-plane --bench fanout` (PostgreSQL from
//! `EDGEFN_TEST_POSTGRES_URL` or this machine's default; `FANOUT_NODES=1000,10000`).

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefn_proto::api::{
    Deployment, Heartbeat, HeartbeatReply, NodeRegistered, NodeStatus, RegisterNode, VersionCreated,
};
use edgefn_proto::grpc::WatchRequest;
use edgefn_proto::grpc::node_sync_client::NodeSyncClient;
use edgefn_proto::sync::{DesiredState, ItemResult, ItemState};
use tokio::sync::{Semaphore, mpsc};

/// Heartbeats in flight at once (the peer's requests too).
const IN_FLIGHT: usize = 256;

struct ControlPlane {
    child: Child,
    url: String,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ControlPlane {
    fn start(data_dir: &std::path::Path, database_url: Option<&str>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_edgefn-control-plane"));
        command
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let child = command.spawn().expect("start edgefn-control-plane");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
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
    body: &impl serde::Serialize,
) -> T {
    let reply = http.post(&url).json(body).send().await.unwrap();
    assert!(reply.status().is_success(), "{url}: {}", reply.status());
    reply.json().await.unwrap()
}

/// One simulated node: follows its push stream, syncs and acks every newer revision, and
/// reports each applied revision that holds `function_id`.
#[expect(
    clippy::too_many_arguments,
    reason = "a benchmark's plumbing, spelled out"
)]
async fn node(
    url: String,
    http: reqwest::Client,
    node_id: String,
    function_id: String,
    connecting: tokio::sync::OwnedSemaphorePermit,
    in_flight: Arc<Semaphore>,
    connected: mpsc::Sender<()>,
    acked: mpsc::UnboundedSender<Instant>,
) {
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect the push stream");
    let mut stream = NodeSyncClient::new(channel)
        .watch(WatchRequest {
            node_id: node_id.clone(),
            applied_revision: 0,
        })
        .await
        .unwrap()
        .into_inner();
    drop(connecting);
    let _ = connected.send(()).await;
    let heartbeat_url = format!("{url}/api/v1/nodes/{node_id}/heartbeat");
    let desired_url = format!("{url}/api/v1/nodes/{node_id}/desired");
    let mut applied = 0;
    while let Ok(Some(notice)) = stream.message().await {
        if notice.revision <= applied {
            continue;
        }
        let state = if notice.desired_state.is_empty() {
            let _permit = in_flight.acquire().await.unwrap();
            let reply = http.get(&desired_url).send().await.unwrap();
            assert!(reply.status().is_success());
            reply.json::<DesiredState>().await.unwrap()
        } else {
            DesiredState::decode(&notice.desired_state).unwrap()
        };
        if state.revision <= applied {
            continue;
        }
        applied = state.revision;
        let mut beat = Heartbeat {
            node_id: node_id.clone(),
            status: NodeStatus::Online,
            cpu_percent: 1.0,
            mem_bytes: 1 << 20,
            inventory: Vec::new(),
            applied_revision: Some(applied),
            results: Vec::new(),
            usage: Default::default(),
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
        let _: HeartbeatReply = post(&http, heartbeat_url.clone(), &beat).await;
        drop(permit);
        if state.functions.iter().any(|f| f.function_id == function_id) {
            let _ = acked.send(Instant::now());
        }
    }
}

struct Figures {
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
    let started = Instant::now();
    while http.get(api("/nodes")).send().await.is_err() {
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
        &serde_json::json!({}),
    )
    .await;

    // Register the nodes, 64 at a time.
    let gate = Arc::new(Semaphore::new(64));
    let mut registrations = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let (http, url, gate) = (http.clone(), api("/nodes/register"), gate.clone());
        registrations.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            let body = RegisterNode {
                name: format!("sim-{i}"),
                labels: BTreeMap::from([("region".to_string(), "tokyo".to_string())]),
                address: String::new(),
            };
            let registered: NodeRegistered = post(&http, url, &body).await;
            registered.node_id
        }));
    }
    let mut ids = Vec::with_capacity(nodes);
    for registration in registrations {
        ids.push(registration.await.unwrap());
    }

    let before_streams = cp.rss();
    let (connected_tx, mut connected_rx) = mpsc::channel(nodes);
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let connecting = Arc::new(Semaphore::new(128));
    // Every node's stream is a connection of its own; heartbeats share a pool of at most
    // IN_FLIGHT connections, or 10,000 nodes would need 20,000 descriptors on one machine.
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    for id in &ids {
        let (url, http, id, function) = (
            cp.url.clone(),
            http.clone(),
            id.clone(),
            created.function_id.clone(),
        );
        let (connected, acked, connecting, in_flight) = (
            connected_tx.clone(),
            acked_tx.clone(),
            connecting.clone(),
            in_flight.clone(),
        );
        tokio::spawn(async move {
            let permit = connecting.acquire_owned().await.unwrap();
            node(url, http, id, function, permit, in_flight, connected, acked).await
        });
    }
    for _ in 0..nodes {
        connected_rx.recv().await.unwrap();
    }
    // Let the first notices (the registration revision) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bytes_per_node = (cp.rss().saturating_sub(before_streams)) as f64 / nodes as f64;

    let deploy_started = Instant::now();
    let deployment: Deployment = post(
        &http,
        api(&format!("/functions/{}/deploy", created.function_id)),
        &serde_json::json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
    )
    .await;
    let deploy_call = deploy_started.elapsed();
    assert_eq!(deployment.nodes.len(), nodes);
    let mut times = Vec::with_capacity(nodes);
    while times.len() < nodes {
        let at = tokio::time::timeout(Duration::from_secs(120), acked_rx.recv())
            .await
            .expect("every node acks within 120 s")
            .unwrap();
        times.push(at.duration_since(deploy_started));
    }
    times.sort();

    // The peer: the same nodes, two plain round trips each, released at once.
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(nodes);
    for id in &ids {
        let (http, url, release, done, in_flight) = (
            http.clone(),
            api(&format!("/nodes/{id}")),
            release.clone(),
            done.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut release = release;
            let _ = release.wait_for(|go| *go).await;
            for _ in 0..2 {
                let _permit = in_flight.acquire().await.unwrap();
                let reply = http.get(&url).send().await.unwrap();
                assert!(reply.status().is_success());
                let _ = reply.bytes().await;
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

    Figures {
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "{:<10} {:>6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12}",
        "backend", "nodes", "deploy", "all acked", "p50", "p99", "peer", "CP B/node"
    );
    for &nodes in &counts {
        for name in ["sqlite", "postgres"] {
            // A schema of its own per run, dropped after it.
            let schema = match name {
                "postgres" => {
                    let schema_name =
                        edgefn_test_support::postgres::unique_schema_name("edgefn_bench_fanout");
                    match runtime.block_on(edgefn_test_support::postgres::test_schema(&schema_name))
                    {
                        Some(schema) => Some(schema),
                        None => continue,
                    }
                }
                _ => None,
            };
            let url = schema.as_ref().map(|s| s.url.clone());
            let f = runtime.block_on(measure(url.as_deref(), nodes));
            let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
            println!(
                "{:<10} {:>6} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12.0}",
                name,
                nodes,
                ms(f.deploy_call),
                ms(f.all_acked),
                ms(f.p50),
                ms(f.p99),
                ms(f.peer),
                f.bytes_per_node
            );
        }
    }
}
