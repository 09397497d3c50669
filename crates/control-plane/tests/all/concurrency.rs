//! Concurrent changes of desired states on PostgreSQL (READ COMMITTED, several replicas):
//! none may be lost, revisions only rise, and a function has one active deployment.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

use crate::fixture::{App, app, hello, postgres};

const FUNCTIONS: usize = 50;

/// 50 deploys of 50 functions, route edits and a second deploy of the same function, all at
/// once through two replicas of the control plane on one PostgreSQL database. Before desired
/// states were serialized, nodes ended with a fraction of the functions and two documents
/// shared a revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deploys_and_route_edits_through_two_replicas_lose_nothing() {
    let backend = postgres().await;
    let first = Arc::new(app(&backend).await);
    let second = Arc::new(first.replica().await);
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(first.enroll(name, json!({ "region": "tokyo" })).await.id);
    }
    let wasm = hello();
    let mut functions = Vec::new();
    for i in 0..FUNCTIONS {
        let (completed, id) = first.deploy_bytes(&format!("f{i}"), &wasm).await;
        assert_eq!(completed.status, 200, "{:?}", completed.json());
        functions.push(id);
    }

    // Watch every node's document while the changes run: a revision never goes down, and
    // one revision never names two different documents.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (app, nodes, stop) = (first.clone(), nodes.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<(String, u64), String> = HashMap::new();
            let mut last: HashMap<String, u64> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                for node in &nodes {
                    let Ok(state) = app.store.desired_state(node).await else {
                        continue;
                    };
                    let previous = last.insert(node.clone(), state.revision).unwrap_or(0);
                    assert!(
                        state.revision >= previous,
                        "{node}: revision went from {previous} to {}",
                        state.revision
                    );
                    let document = serde_json::to_string(&state).unwrap();
                    if let Some(other) =
                        seen.insert((node.clone(), state.revision), document.clone())
                    {
                        assert_eq!(
                            other, document,
                            "{node}: two documents with revision {}",
                            state.revision
                        );
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };

    let replica = |i: usize| {
        if i.is_multiple_of(2) {
            first.clone()
        } else {
            second.clone()
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in functions.iter().enumerate() {
        let (app, function) = (replica(i), id.clone());
        tasks.spawn(async move {
            let deployed = deploy(&app, &function).await;
            assert_eq!(deployed.0, 201, "deploy of {function}: {}", deployed.1);
        });
        // Route edits of other functions in between.
        if i.is_multiple_of(5) {
            let (app, id) = (replica(i + 1), id.clone());
            tasks.spawn(async move {
                let created = app
                    .json(
                        "POST",
                        "/api/v1/routes",
                        json!({ "path": format!("/r/{i}/*"), "function_id": id }),
                    )
                    .await;
                assert_eq!(created.status, 201, "{:?}", created.json());
            });
        }
    }
    // The same function deployed twice at once, once through each replica.
    for app in [first.clone(), second.clone()] {
        let id = functions[0].clone();
        tasks.spawn(async move {
            let deployed = deploy(&app, &id).await;
            assert!(
                deployed.0 == 201 || deployed.0 == 409,
                "second deploy of {id}: {} {}",
                deployed.0,
                deployed.1
            );
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();

    let expected: BTreeSet<&str> = functions.iter().map(String::as_str).collect();
    for node in &nodes {
        let state = first.store.desired_state(node).await.unwrap();
        let held: BTreeSet<&str> = state
            .functions
            .iter()
            .map(|f| f.function_id.as_str())
            .collect();
        assert_eq!(held, expected, "{node} holds {} of {FUNCTIONS}", held.len());
        let explicit = state
            .routes
            .iter()
            .filter(|r| !r.id.starts_with("platform:"))
            .count();
        assert_eq!(explicit, FUNCTIONS / 5, "{node}: every route arrived");
    }
    sqlx::any::install_default_drivers();
    let database = sqlx::AnyPool::connect(first.database_url()).await.unwrap();
    for id in &functions {
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM deployments WHERE function_id = $1 AND state = 'active'",
        )
        .bind(id)
        .fetch_one(&database)
        .await
        .unwrap();
        assert_eq!(active, 1, "{id} has {active} active deployments");
    }
}

async fn deploy(app: &App, id: &str) -> (u16, String) {
    let deployed = app
        .json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    (
        deployed.status,
        String::from_utf8_lossy(&deployed.body).into_owned(),
    )
}
