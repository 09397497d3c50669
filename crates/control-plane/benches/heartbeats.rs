//! Heartbeats processed per second with 1,000 and 10,000 registered nodes, on SQLite and on
//! PostgreSQL (goal: ≥ 5,000/s each — 150,000 nodes at one heartbeat per 30 s).
//!
//! Each heartbeat goes through the whole node API (`node_router`: the node token's
//! signature check, JSON parsing, validation, the store's UPDATE), 32 at a time, for 5 s;
//! each request carries the node identity the mTLS listener would have set (the TLS
//! handshake happens once per connection, not per heartbeat). Peer, in the same run: the
//! bare UPDATE through the same driver, 32 at a time — the floor the database sets.
//!
//! `cargo bench -p edgefn-control-plane --bench heartbeats`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefn_control_plane::api::{AppState, node_router};
use edgefn_control_plane::artifacts::Artifacts;
use edgefn_control_plane::store::{Store, now_ms};
use edgefn_control_plane::validate::Limits;
use tower::ServiceExt as _;

const CONCURRENCY: usize = 32;
const DURATION: Duration = Duration::from_secs(5);

mod support;
use support::enroll;

async fn run_for(
    ids: Arc<Vec<(String, String)>>,
    work: impl Fn((String, String)) -> futures_util::future::BoxFuture<'static, bool>
    + Send
    + Sync
    + 'static,
) -> f64 {
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..CONCURRENCY {
        let (ids, work, done) = (ids.clone(), work.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = worker * 7919;
            while started.elapsed() < DURATION {
                let id = ids[i % ids.len()].clone();
                i += CONCURRENCY;
                assert!(work(id).await, "heartbeat failed");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn measure(label: &str, url: &str, nodes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(url).await.unwrap();
    let (auth, authority) = edgefn_control_plane::security(
        &store,
        edgefn_control_plane::SecurityConfig::new("https://cp.bench:8443"),
    )
    .await
    .unwrap();
    let ids = Arc::new(enroll(&store, &authority, nodes).await);
    if nodes == 1_000 && label == "sqlite" {
        // What the node-token check costs: the ES256 verification, and a remembered token.
        let token = &ids[0].1;
        let time = |check: &dyn Fn() -> bool| {
            let started = Instant::now();
            for _ in 0..2_000 {
                assert!(check());
            }
            started.elapsed().as_secs_f64() * 1e6 / 2_000.0
        };
        let signature = time(&|| auth.signer.verify_node(token).is_ok());
        let remembered = time(&|| authority.node_of_token(token).is_ok());
        println!(
            "node token check: {signature:.1} µs verifying the signature, {remembered:.2} µs remembered"
        );
    }
    let state = AppState {
        store: store.clone(),
        artifacts: Arc::new(
            Artifacts::local(dir.path(), [1; 32], "http://cp.bench".into()).unwrap(),
        ),
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
    let app = node_router(state);
    let api = run_for(ids.clone(), move |(id, token)| {
        let app = app.clone();
        Box::pin(async move {
            let body = serde_json::json!({ "node_id": id, "status": "online", "cpu_percent": 42.5, "mem_bytes": 123456789,
                "inventory": [{ "function_id": "fn_a", "version": 3, "state": "ready" }, { "function_id": "fn_b", "version": 1, "state": "cached" }] });
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
            app.oneshot(request).await.map(|r| r.status() == 200).unwrap_or(false)
        })
    })
    .await;
    let bare_store = store.clone();
    let bare = run_for(ids, move |(id, _)| {
        let store = bare_store.clone();
        Box::pin(async move { store.bare_update_for_benchmark(&id, now_ms()).await })
    })
    .await;
    println!(
        "{label:<10} {nodes:>6} nodes   API heartbeats {api:>9.0}/s   peer: bare UPDATE {bare:>9.0}/s"
    );
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
        for nodes in [1_000, 10_000] {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            );
            measure("sqlite", &url, nodes).await;
            let base = std::env::var("EDGEFN_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let Ok(pool) = sqlx::AnyPool::connect(&base).await else {
                println!("postgres   skipped: {base} unavailable");
                continue;
            };
            let schema = format!("edgefn_bench_{}", std::process::id());
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE"
            )))
            .execute(&pool)
            .await;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&pool)
                .await
                .unwrap();
            measure(
                "postgres",
                &format!("{base}?options=-c%20search_path%3D{schema}"),
                nodes,
            )
            .await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&pool)
                .await
                .unwrap();
        }
    });
}
