//! Heartbeats processed per second with 1,000 and 10,000 registered nodes, on SQLite and on
//! PostgreSQL (goal: ≥ 5,000/s each — 150,000 nodes at one heartbeat per 30 s).
//!
//! Each heartbeat goes through the whole API (`router`: JSON parsing, validation, the
//! store's UPDATE), 32 at a time, for 5 s. Peer, in the same run: the bare UPDATE through
//! the same driver, 32 at a time — the floor the database sets.
//!
//! `cargo bench -p edgefn-control-plane --bench heartbeats`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgefn_control_plane::api::{AppState, router};
use edgefn_control_plane::artifacts::Artifacts;
use edgefn_control_plane::store::{Store, now_ms};
use edgefn_control_plane::validate::Limits;
use tower::ServiceExt as _;

const CONCURRENCY: usize = 32;
const DURATION: Duration = Duration::from_secs(5);

async fn register(store: &Store, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let labels = BTreeMap::from([
            ("region".to_string(), format!("r{}", i % 10)),
            ("pop".to_string(), format!("p{}", i % 100)),
        ]);
        ids.push(
            store
                .register_node(&format!("node-{i}"), &labels, "127.0.0.1:8000")
                .await
                .unwrap(),
        );
    }
    ids
}

async fn run_for(
    ids: Arc<Vec<String>>,
    work: impl Fn(String) -> futures_util::future::BoxFuture<'static, bool> + Send + Sync + 'static,
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
    let ids = Arc::new(register(&store, nodes).await);
    let state = AppState {
        store: store.clone(),
        artifacts: Arc::new(
            Artifacts::local(dir.path(), [1; 32], "http://cp.bench".into()).unwrap(),
        ),
        limits: Limits::default(),
        upload_ttl: Duration::from_secs(60),
        max_artifact_bytes: 1 << 20,
        feed: edgefn_control_plane::sync::RevisionFeed::new(),
    };
    let app = router(state);
    let api = run_for(ids.clone(), move |id| {
        let app = app.clone();
        Box::pin(async move {
            let body = serde_json::json!({ "node_id": id, "status": "online", "cpu_percent": 42.5, "mem_bytes": 123456789,
                "inventory": [{ "function_id": "fn_a", "version": 3, "state": "ready" }, { "function_id": "fn_b", "version": 1, "state": "cached" }] });
            let request = http::Request::post(format!("/api/v1/nodes/{id}/heartbeat"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            app.oneshot(request).await.map(|r| r.status() == 200).unwrap_or(false)
        })
    })
    .await;
    let bare_store = store.clone();
    let bare = run_for(ids, move |id| {
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
