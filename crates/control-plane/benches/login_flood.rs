//! Heartbeat latency while unauthenticated clients flood `POST /login` with wrong passwords
//! (goal: heartbeats still answered within 50 ms p99), and how many login attempts per
//! second the control plane absorbs meanwhile (answered 401, or 429 once throttled).
//!
//! In process, on SQLite: the developer API (`router`) takes the flood from 64 tasks, each
//! trying a new user name every time (so no per-user lockout helps; the Argon2 work of each
//! attempt is real), while 4 tasks send heartbeats through the node API (`node_router`),
//! each pacing itself to one every 5 ms. Peer, in the same run: the same heartbeats with no
//! flood.
//!
//! `cargo bench -p edgefn-control-plane --bench login_flood`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefn_control_plane::api::{AppState, node_router, router};
use edgefn_control_plane::artifacts::Artifacts;
use edgefn_control_plane::store::Store;
use edgefn_control_plane::validate::Limits;
use tower::ServiceExt as _;

const DURATION: Duration = Duration::from_secs(10);
const FLOODERS: usize = 64;
const BEATERS: usize = 4;

mod support;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Heartbeat latencies (ms) for `DURATION`, with or without the login flood; and the
/// number of login attempts answered.
async fn run(state: &AppState, nodes: &[(String, String)], flood: bool) -> (Vec<f64>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let logins = Arc::new(AtomicU64::new(0));
    let mut flooders = Vec::new();
    if flood {
        for worker in 0..FLOODERS {
            let (app, stop, logins) = (router(state.clone()), stop.clone(), logins.clone());
            flooders.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let body = serde_json::json!({ "user": format!("guess-{worker}-{i}"), "password": "hunter2hunter2" });
                    let request = http::Request::post("/api/v1/login")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(body.to_string()))
                        .unwrap();
                    let status = app.clone().oneshot(request).await.map(|r| r.status().as_u16());
                    if matches!(status, Ok(401 | 429)) {
                        logins.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    let started = Instant::now();
    let mut beaters = Vec::new();
    for worker in 0..BEATERS {
        let app = node_router(state.clone());
        let nodes: Vec<(String, String)> = nodes
            .iter()
            .skip(worker)
            .step_by(BEATERS)
            .cloned()
            .collect();
        beaters.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            let mut next = Instant::now();
            while started.elapsed() < DURATION {
                let (id, token) = nodes[i % nodes.len()].clone();
                i += 1;
                let body = serde_json::json!({ "node_id": id, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1 });
                let mut request = http::Request::post(format!("/api/v1/nodes/{id}/heartbeat"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {token}"))
                    .body(axum::body::Body::from(body.to_string()))
                    .unwrap();
                request
                    .extensions_mut()
                    .insert(edgefn_control_plane::listener::NodePeer {
                        node_id: id,
                        addr: "127.0.0.1:1".parse().unwrap(),
                    });
                let sent = Instant::now();
                let ok = app.clone().oneshot(request).await.map(|r| r.status() == 200).unwrap_or(false);
                assert!(ok, "heartbeat failed");
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                next += Duration::from_millis(5);
                tokio::time::sleep_until(next.into()).await;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for beater in beaters {
        latencies.extend(beater.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        let _ = flooder.await;
    }
    latencies.sort_by(f64::total_cmp);
    (latencies, logins.load(Ordering::Relaxed))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        edgefn_control_plane::install_crypto_providers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
        let store = Store::connect(&url).await.unwrap();
        store.set_refusal_limit(100);
        let (auth, authority) = edgefn_control_plane::security(
            &store,
            edgefn_control_plane::SecurityConfig::new("https://cp.bench:8443"),
        )
        .await
        .unwrap();
        let nodes = support::enroll(&store, &authority, 100).await;
        let state = AppState {
            store: store.clone(),
            artifacts: Arc::new(Artifacts::local(dir.path(), [1; 32], "http://cp.bench".into()).unwrap()),
            limits: Limits::default(),
            upload_ttl: Duration::from_secs(60),
            max_artifact_bytes: 1 << 20,
            feed: edgefn_control_plane::sync::RevisionFeed::new(),
            revocations: edgefn_control_plane::revocations::Revocations::new(),
            auth,
            ca: authority,
            checkpoints: None,
            logins: Default::default(),
            dns: None,
            precompiler: None,
            database_warn_after: std::time::Duration::from_secs(300),
        };
        let (quiet, _) = run(&state, &nodes, false).await;
        let (flooded, logins) = run(&state, &nodes, true).await;
        let audit = store.audit_records(0, usize::MAX >> 1).await.unwrap();
        let audit_bytes: usize = audit
            .iter()
            .map(|r| r.actor.len() + r.target.len() + r.details.len() + r.action.len() + 2 * 64 + 16)
            .sum();
        println!(
            "heartbeats alone (peer):   p50 {:6.2} ms   p99 {:6.2} ms   ({} heartbeats)",
            percentile(&quiet, 0.5),
            percentile(&quiet, 0.99),
            quiet.len()
        );
        println!(
            "heartbeats during a flood: p50 {:6.2} ms   p99 {:6.2} ms   ({} heartbeats)",
            percentile(&flooded, 0.5),
            percentile(&flooded, 0.99),
            flooded.len()
        );
        println!(
            "login attempts absorbed: {:.0}/s from {FLOODERS} clients; audit log grew by {} records, ~{:.0} bytes/s",
            logins as f64 / DURATION.as_secs_f64(),
            audit.len(),
            audit_bytes as f64 / DURATION.as_secs_f64()
        );
    });
}
