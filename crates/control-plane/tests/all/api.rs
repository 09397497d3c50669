//! Every endpoint and error code, on every backend.

use bytes::Bytes;
use edgefn_control_plane::store::now_ms;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::fixture::{Backend, app, app_with, hello};
use crate::on_every_backend;

async fn upload_complete_and_download_round_trip(backend: Backend) {
    let app = app(&backend).await;
    let wasm = hello();
    let (completed, id) = app.deploy_bytes("hello", &wasm).await;
    assert_eq!(completed.status, 200, "{:?}", completed.json());
    let version = completed.json();
    let sha = hex::encode(Sha256::digest(&wasm));
    assert_eq!(version["state"], "ready");
    assert_eq!(version["kind"], "component");
    assert_eq!(version["sha256"], sha);
    assert_eq!(version["size"], wasm.len());
    let url = version["artifact_url"].as_str().unwrap();
    assert_eq!(url, format!("http://cp.test/api/v1/artifacts/{sha}"));
    let downloaded = app.get(url.strip_prefix("http://cp.test").unwrap()).await;
    assert_eq!(downloaded.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&downloaded.body)), sha);
    let function = app.get(&format!("/api/v1/functions/{id}")).await.json();
    assert_eq!(function["latest_ready_version"], 1);
    // Versions are immutable once uploaded.
    let again = app
        .send(
            "POST",
            &format!("/api/v1/functions/{id}/versions/1/complete"),
            Bytes::new(),
            "application/json",
        )
        .await;
    assert_eq!(again.status, 409);
}

async fn invalid_bytes_are_refused_with_422_and_the_version_marked_invalid(backend: Backend) {
    let app = app(&backend).await;
    let wasm = hello();
    for (name, bytes) in [
        ("text", b"#!/bin/sh\necho hi\n".to_vec()),
        ("truncated", wasm[..wasm.len() / 2].to_vec()),
    ] {
        let (completed, id) = app.deploy_bytes(name, &bytes).await;
        assert_eq!(completed.status, 422, "{name}");
        let body = completed.json();
        assert_eq!(body["error"]["code"], "invalid_artifact");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        let version = app
            .get(&format!("/api/v1/functions/{id}/versions/1"))
            .await
            .json();
        assert_eq!(version["state"], "invalid");
        assert!(version["artifact_url"].is_null());
        // The uploaded object is gone: completing again finds nothing to accept.
        let again = app
            .send(
                "POST",
                &format!("/api/v1/functions/{id}/versions/1/complete"),
                Bytes::new(),
                "",
            )
            .await;
        assert_eq!(again.status, 409);
    }
}

async fn upload_urls_are_signed_and_expire(backend: Backend) {
    let app = app(&backend).await;
    let created = app
        .json("POST", "/api/v1/functions", json!({ "name": "f" }))
        .await
        .json();
    let url = created["upload_url"].as_str().unwrap();
    let tampered = url
        .replace("/f", "/g")
        .replace("signature=", "signature=00");
    assert_eq!(app.upload(&tampered, b"x").await.status, 403);
    let other_version = url.replace("/1?", "/2?");
    assert_eq!(app.upload(&other_version, b"x").await.status, 403);
    let expired_app = app_with(&backend, std::time::Duration::ZERO).await;
    // Same database on PostgreSQL (one schema per test): another name.
    let created = expired_app
        .json("POST", "/api/v1/functions", json!({ "name": "expired" }))
        .await
        .json();
    assert_eq!(
        expired_app
            .upload(created["upload_url"].as_str().unwrap(), b"x")
            .await
            .status,
        403
    );
}

async fn validation_reports_every_field_and_persists_nothing(backend: Backend) {
    let app = app(&backend).await;
    let reply = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "Bad Name!", "memory_pages": 0, "max_execution_ms": -5, "entrypoint": "", "allowed_outbound_hosts": ["http://x/"] }),
        )
        .await;
    assert_eq!(reply.status, 400);
    let body = reply.json();
    assert_eq!(body["error"]["code"], "validation_failed");
    let fields: Vec<&str> = body["error"]["details"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    for field in [
        "name",
        "memory_pages",
        "max_execution_ms",
        "entrypoint",
        "allowed_outbound_hosts[0]",
    ] {
        assert!(fields.contains(&field), "{field} missing from {fields:?}");
    }
    let too_much = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "a", "memory_pages": 100000 }),
        )
        .await;
    assert_eq!(too_much.status, 400);
    assert_eq!(app.get("/api/v1/functions").await.json(), json!([]));
}

async fn duplicate_names_conflict_per_project(backend: Backend) {
    let app = app(&backend).await;
    assert_eq!(
        app.json("POST", "/api/v1/functions", json!({ "name": "api" }))
            .await
            .status,
        201
    );
    let duplicate = app
        .json("POST", "/api/v1/functions", json!({ "name": "api" }))
        .await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.json()["error"]["code"], "conflict");
    let nowhere = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "api", "project": "shop" }),
        )
        .await;
    assert_eq!(
        nowhere.status, 404,
        "projects are made by administrators first"
    );
    assert_eq!(
        app.json("POST", "/api/v1/projects", json!({ "name": "shop" }))
            .await
            .status,
        201
    );
    let elsewhere = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "api", "project": "shop" }),
        )
        .await;
    assert_eq!(elsewhere.status, 201);
    let shop = app.get("/api/v1/functions?project=shop").await.json();
    assert_eq!(shop.as_array().unwrap().len(), 1);
}

async fn versions_number_up_and_list(backend: Backend) {
    let app = app(&backend).await;
    let created = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "f", "memory_pages": 64 }),
        )
        .await
        .json();
    let id = created["function_id"].as_str().unwrap();
    assert_eq!(created["version"], 1);
    let second = app
        .send(
            "POST",
            &format!("/api/v1/functions/{id}/versions"),
            Bytes::new(),
            "",
        )
        .await;
    assert_eq!(second.status, 201);
    assert_eq!(second.json()["version"], 2);
    let versions = app
        .get(&format!("/api/v1/functions/{id}/versions"))
        .await
        .json();
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(versions[1]["settings"]["memory_pages"], 64);
    assert_eq!(
        app.get("/api/v1/functions/fn_nope/versions").await.status,
        404
    );
    assert_eq!(
        app.get(&format!("/api/v1/functions/{id}/versions/9"))
            .await
            .status,
        404
    );
}

async fn routes_are_validated_unique_and_editable(backend: Backend) {
    let app = app(&backend).await;
    let id = app
        .json("POST", "/api/v1/functions", json!({ "name": "f" }))
        .await
        .json()["function_id"]
        .as_str()
        .unwrap()
        .to_string();
    let route = json!({ "host": "*.example.com", "path": "/api/*", "function_id": id, "methods": ["get"], "pop_selector": "region == 'tokyo'" });
    let unowned = app.json("POST", "/api/v1/routes", route.clone()).await;
    assert_eq!(unowned.status, 403, "not a domain of the project yet");
    let claimed = app
        .json(
            "POST",
            "/api/v1/projects/default/domains",
            json!({ "name": "*.example.com", "verified": true }),
        )
        .await;
    assert_eq!(claimed.status, 201, "{:?}", claimed.json());
    let created = app.json("POST", "/api/v1/routes", route.clone()).await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let route_id = created.json()["id"].as_str().unwrap().to_string();
    assert_eq!(created.json()["methods"], json!(["GET"]));
    assert_eq!(
        app.json("POST", "/api/v1/routes", route.clone())
            .await
            .status,
        409,
        "same host, path and methods"
    );

    let bad_path = app
        .json(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/a/*/b", "function_id": id }),
        )
        .await;
    assert_eq!(bad_path.status, 400);
    assert!(
        bad_path.json()["error"]["details"]["fields"][0]["message"]
            .as_str()
            .unwrap()
            .contains("position 3")
    );
    let bad_selector = app
        .json(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/x", "function_id": id, "pop_selector": "region == " }),
        )
        .await;
    assert_eq!(bad_selector.status, 400);
    assert!(bad_selector.body.windows(8).any(|w| w == b"position"));
    let no_function = app
        .json(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/x", "function_id": "fn_missing" }),
        )
        .await;
    assert_eq!(
        no_function.status, 409,
        "a route names a function that is not there"
    );

    let updated = app
        .json(
            "PUT",
            &format!("/api/v1/routes/{route_id}"),
            json!({ "path": "/v2/*", "function_id": id, "priority": 5 }),
        )
        .await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.json()["priority"], 5);
    assert_eq!(
        app.get(&format!("/api/v1/routes/{route_id}")).await.json()["path"],
        "/v2/*"
    );
    assert_eq!(
        app.get("/api/v1/routes")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        app.send(
            "DELETE",
            &format!("/api/v1/routes/{route_id}"),
            Bytes::new(),
            ""
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.get(&format!("/api/v1/routes/{route_id}")).await.status,
        404
    );
    assert_eq!(
        app.json(
            "PUT",
            "/api/v1/routes/rt_missing",
            json!({ "path": "/", "function_id": id })
        )
        .await
        .status,
        404
    );
}

async fn deleting_a_function_in_use_needs_force_and_removes_its_artifacts(backend: Backend) {
    let app = app(&backend).await;
    let (completed, id) = app.deploy_bytes("hello", &hello()).await;
    let url = completed.json()["artifact_url"]
        .as_str()
        .unwrap()
        .strip_prefix("http://cp.test")
        .unwrap()
        .to_string();
    app.json(
        "POST",
        "/api/v1/routes",
        json!({ "path": "/", "function_id": id }),
    )
    .await;
    let refused = app
        .send(
            "DELETE",
            &format!("/api/v1/functions/{id}"),
            Bytes::new(),
            "",
        )
        .await;
    assert_eq!(refused.status, 409);
    assert_eq!(app.get(&url).await.status, 200);
    let forced = app
        .send(
            "DELETE",
            &format!("/api/v1/functions/{id}?force=true"),
            Bytes::new(),
            "",
        )
        .await;
    assert_eq!(forced.status, 204);
    assert_eq!(
        app.get(&format!("/api/v1/functions/{id}")).await.status,
        404
    );
    assert_eq!(app.get(&url).await.status, 404);
    assert_eq!(app.get("/api/v1/routes").await.json(), json!([]));
}

async fn nodes_register_heartbeat_and_go_offline(backend: Backend) {
    let app = app(&backend).await;
    let node = app
        .enroll("edge-1", json!({ "region": "tokyo", "pop": "tokyo-1" }))
        .await;
    let node_id = node.id.clone();
    let other = app.enroll("edge-2", json!({ "pop": "osaka-1" })).await;
    assert_ne!(other.id, node_id);
    assert_eq!(
        app.get(&format!("/api/v1/nodes/{node_id}")).await.json()["status"],
        "syncing"
    );

    let beat = json!({ "node_id": node_id, "status": "online", "cpu_percent": 12.5, "mem_bytes": 1048576,
        "inventory": [{ "function_id": "fn_x", "version": 3, "state": "ready" }] });
    assert_eq!(
        app.node(
            &node,
            "POST",
            &format!("/api/v1/nodes/{node_id}/heartbeat"),
            beat.clone()
        )
        .await
        .status,
        200
    );
    let shown = app.get(&format!("/api/v1/nodes/{node_id}")).await.json();
    assert_eq!(shown["status"], "online");
    assert_eq!(shown["cpu_percent"], 12.5);
    assert_eq!(shown["inventory"][0]["version"], 3);
    assert!(shown["last_heartbeat"].as_i64().unwrap() >= now_ms() - 60_000);
    let healthy = app
        .get("/api/v1/nodes?healthy=true&pop=tokyo-1")
        .await
        .json();
    assert_eq!(healthy.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/v1/nodes?healthy=true&pop=osaka-1")
            .await
            .json(),
        json!([]),
        "never heard from: not healthy"
    );

    // A node that is not enrolled (the listener refuses its connection; here its token
    // gets this far) is not found; a node acts only for itself.
    let (_, stranger) = app.state.ca.issue_node_token("node_missing").unwrap();
    assert_eq!(app.node_as("node_missing", Some(&stranger), "POST", "/api/v1/nodes/node_missing/heartbeat", json!({ "node_id": "node_missing", "status": "online", "cpu_percent": 1.0, "mem_bytes": 1 })).await.status, 404);
    assert_eq!(
        app.node(
            &node,
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", other.id),
            json!({ "node_id": other.id, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1 })
        )
        .await
        .status,
        403
    );
    assert_eq!(
        app.node(
            &node,
            "POST",
            &format!("/api/v1/nodes/{node_id}/heartbeat"),
            json!({ "node_id": "x", "status": "online", "cpu_percent": 1.0, "mem_bytes": 1 })
        )
        .await
        .status,
        400
    );

    // The sweeper's query: everything silent since "now" goes offline and leaves the set.
    let marked = app
        .store
        .mark_silent_nodes_offline(now_ms() + 1)
        .await
        .unwrap();
    assert_eq!(marked, 2);
    assert_eq!(
        app.get(&format!("/api/v1/nodes/{node_id}")).await.json()["status"],
        "offline"
    );
    assert_eq!(
        app.get("/api/v1/nodes?healthy=true").await.json(),
        json!([])
    );
    assert_eq!(
        app.get("/api/v1/nodes")
            .await
            .json()
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

async fn bad_requests_get_the_error_body(backend: Backend) {
    let app = app(&backend).await;
    let malformed = app
        .send("POST", "/api/v1/functions", "{not json", "application/json")
        .await;
    assert_eq!(malformed.status, 400);
    assert_eq!(malformed.json()["error"]["code"], "bad_request");
    let unknown_field = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": "a", "colour": "red" }),
        )
        .await;
    assert_eq!(unknown_field.status, 400);
    let huge = app
        .send(
            "POST",
            "/api/v1/functions",
            vec![b' '; 2 << 20],
            "application/json",
        )
        .await;
    assert_eq!(huge.status, 413);
    assert_eq!(huge.json()["error"]["code"], "payload_too_large");
    let nowhere = app.get("/api/v2/anything").await;
    assert_eq!(nowhere.status, 404);
    assert_eq!(nowhere.json()["error"]["code"], "not_found");
    assert_eq!(app.get("/api/v1/artifacts/not-a-hash").await.status, 404);
}

on_every_backend!(
    upload_complete_and_download_round_trip,
    invalid_bytes_are_refused_with_422_and_the_version_marked_invalid,
    upload_urls_are_signed_and_expire,
    validation_reports_every_field_and_persists_nothing,
    duplicate_names_conflict_per_project,
    versions_number_up_and_list,
    routes_are_validated_unique_and_editable,
    deleting_a_function_in_use_needs_force_and_removes_its_artifacts,
    nodes_register_heartbeat_and_go_offline,
    bad_requests_get_the_error_body,
    deploys_become_desired_states_that_nodes_pull_and_ack,
);

/// The whole upload flow with artifacts in S3: the client PUTs to a real presigned URL.
#[tokio::test]
async fn uploads_go_straight_to_s3_through_presigned_urls() {
    let settings = crate::artifacts::s3_settings();
    let app = crate::fixture::app_on_s3(&settings).await;
    let wasm = hello();
    let created = app
        .json(
            "POST",
            "/api/v1/functions",
            json!({ "name": format!("s3-{}", std::process::id()) }),
        )
        .await
        .json();
    let id = created["function_id"].as_str().unwrap();
    let upload_url = created["upload_url"].as_str().unwrap();
    assert!(
        upload_url.starts_with(settings.endpoint.as_deref().unwrap()),
        "{upload_url}"
    );
    let put = reqwest::Client::new()
        .put(upload_url)
        .body(wasm.clone())
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let completed = app
        .send(
            "POST",
            &format!("/api/v1/functions/{id}/versions/1/complete"),
            Bytes::new(),
            "",
        )
        .await;
    assert_eq!(completed.status, 200, "{:?}", completed.json());
    let sha = hex::encode(Sha256::digest(&wasm));
    assert_eq!(completed.json()["sha256"], sha);
    let downloaded = app.get(&format!("/api/v1/artifacts/{sha}")).await;
    assert_eq!(hex::encode(Sha256::digest(&downloaded.body)), sha);
}

/// The served OpenAPI document describes every route, and the copy checked into the
/// repository (`crates/control-plane/openapi.json`) is current. Regenerate it with
/// `UPDATE_OPENAPI=1 cargo test -p edgefn-control-plane openapi`.
#[tokio::test]
async fn the_openapi_document_is_served_and_current() {
    let app = app(&Backend::Sqlite).await;
    let served = app.get("/api/v1/openapi.json").await;
    assert_eq!(served.status, 200);
    let document = served.json();
    for path in [
        "/api/v1/functions",
        "/api/v1/functions/{id}/versions/{version}/complete",
        "/api/v1/routes/{id}",
        "/api/v1/tokens",
        "/api/v1/audit",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} missing");
    }
    // The node listener's operations are in a document of their own: this listener
    // answers them 404.
    assert!(
        document["paths"]
            .get("/api/v1/nodes/{id}/heartbeat")
            .is_none()
    );
    let nodes =
        serde_json::to_value(<edgefn_control_plane::api::NodeApiDoc as utoipa::OpenApi>::openapi())
            .unwrap();
    assert!(nodes["paths"].get("/api/v1/nodes/{id}/heartbeat").is_some());
    assert!(
        document["components"]["schemas"]
            .get("CreateFunction")
            .is_some()
    );
    let pretty = serde_json::to_string_pretty(&document).unwrap() + "\n";
    let checked_in = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&checked_in, &pretty).unwrap();
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == pretty,
        "openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p edgefn-control-plane openapi"
    );
    let pretty = serde_json::to_string_pretty(&nodes).unwrap() + "\n";
    let checked_in = checked_in.with_file_name("node-openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&checked_in, &pretty).unwrap();
    }
    let current = std::fs::read_to_string(&checked_in).unwrap_or_default();
    assert!(
        current == pretty,
        "node-openapi.json is stale: run UPDATE_OPENAPI=1 cargo test -p edgefn-control-plane openapi"
    );
}

async fn deploys_become_desired_states_that_nodes_pull_and_ack(backend: Backend) {
    let app = app(&backend).await;
    let (completed, id) = app.deploy_bytes("hello", &hello()).await;
    assert_eq!(completed.status, 200);
    let mut enrolled = Vec::new();
    for region in ["tokyo", "tokyo", "osaka"] {
        enrolled.push(
            app.enroll(&format!("edge-{region}"), json!({ "region": region }))
                .await,
        );
    }
    let nodes: Vec<String> = enrolled.iter().map(|n| n.id.clone()).collect();
    app.json(
        "POST",
        "/api/v1/routes",
        json!({ "path": "/hello", "function_id": id }),
    )
    .await;
    let deployed = app
        .json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    assert_eq!(deployed.status, 201, "{:?}", deployed.json());
    let deployment = deployed.json();
    let targeted: Vec<&str> = deployment["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(targeted.len(), 2);
    assert!(targeted.contains(&nodes[0].as_str()) && targeted.contains(&nodes[1].as_str()));

    let beat = |node: &str, applied: Option<u64>, results: serde_json::Value| json!({ "node_id": node, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1, "applied_revision": applied, "results": results });
    let reply = app
        .node(
            &enrolled[0],
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", nodes[0]),
            beat(&nodes[0], None, json!([])),
        )
        .await
        .json();
    let desired = &reply["desired_state"];
    assert_eq!(desired["functions"][0]["function_id"], id.as_str());
    assert_eq!(desired["routes"][0]["path"], "/hello");
    assert!(
        desired["functions"][0]["artifact_url"]
            .as_str()
            .unwrap()
            .starts_with("https://cp-nodes.test/api/v1/artifacts/")
    );
    let revision = reply["desired_revision"].as_u64().unwrap();
    // The ack: applied, ready. Nothing more to send, and the deployment shows it.
    let acked = beat(
        &nodes[0],
        Some(revision),
        json!([{ "function_id": id, "version": 1, "state": "ready" }]),
    );
    let reply = app
        .node(
            &enrolled[0],
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", nodes[0]),
            acked,
        )
        .await
        .json();
    assert!(reply.get("desired_state").is_none(), "{reply}");
    let deployment = app
        .get(&format!(
            "/api/v1/deployments/{}",
            deployment["id"].as_str().unwrap()
        ))
        .await
        .json();
    let first = deployment["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == nodes[0].as_str())
        .unwrap()
        .clone();
    assert_eq!(first["state"], "ready");

    // Osaka holds nothing of it, and gets no route to it.
    let osaka = app
        .node(
            &enrolled[2],
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", nodes[2]),
            beat(&nodes[2], None, json!([])),
        )
        .await
        .json();
    assert_eq!(osaka["desired_state"]["functions"], json!([]));
    assert_eq!(osaka["desired_state"]["routes"], json!([]));

    // A second version, then a rollback to the first: a new revision each time.
    let v2 = app
        .send(
            "POST",
            &format!("/api/v1/functions/{id}/versions"),
            Bytes::new(),
            "",
        )
        .await
        .json();
    app.upload(v2["upload_url"].as_str().unwrap(), &hello())
        .await;
    app.send(
        "POST",
        &format!("/api/v1/functions/{id}/versions/2/complete"),
        Bytes::new(),
        "",
    )
    .await;
    let deployed = app
        .json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 2, "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    assert_eq!(deployed.json()["version"], 2);
    let rolled = app
        .json(
            "POST",
            &format!("/api/v1/functions/{id}/rollback"),
            json!({}),
        )
        .await;
    assert_eq!(rolled.status, 201);
    assert_eq!(rolled.json()["version"], 1);
    let reply = app
        .node(
            &enrolled[1],
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", nodes[1]),
            beat(&nodes[1], Some(revision), json!([])),
        )
        .await
        .json();
    assert_eq!(reply["desired_state"]["functions"][0]["version"], 1);
    assert!(reply["desired_revision"].as_u64().unwrap() > revision);

    // Deleting a deployed function needs force; undeploy empties the nodes' desired states.
    assert_eq!(
        app.send(
            "DELETE",
            &format!("/api/v1/functions/{id}"),
            Bytes::new(),
            ""
        )
        .await
        .status,
        409
    );
    assert_eq!(
        app.send(
            "POST",
            &format!("/api/v1/functions/{id}/undeploy"),
            Bytes::new(),
            ""
        )
        .await
        .status,
        204
    );
    let reply = app
        .node(
            &enrolled[1],
            "POST",
            &format!("/api/v1/nodes/{}/heartbeat", nodes[1]),
            beat(&nodes[1], Some(revision), json!([])),
        )
        .await
        .json();
    assert_eq!(reply["desired_state"]["functions"], json!([]));
    // Bad deploys: no such version, an invalid selector.
    assert_eq!(
        app.json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 9 })
        )
        .await
        .status,
        409,
        "the function has no version 9"
    );
    assert_eq!(
        app.json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 1, "pop_selector": "region ==" })
        )
        .await
        .status,
        400
    );
}

/// Every error answer is the API's JSON error, whoever made it (a handler, or axum for a
/// path or body it cannot read), and a body must be a JSON object: serde alone would read
/// a struct from an array.
#[tokio::test]
async fn malformed_requests_get_the_json_error_shape() {
    let app = app(&Backend::Sqlite).await;
    let cases = [
        ("POST", "/api/v1/tokens", "[null, null]", "application/json"),
        ("POST", "/api/v1/nodes/tokens", "[null]", "application/json"),
        ("POST", "/api/v1/projects", r#"{"name": "x"}"#, "text/plain"),
        ("POST", "/api/v1/projects", "{", "application/json"),
        (
            "GET",
            "/api/v1/audit?after=not-a-number",
            "",
            "application/json",
        ),
        (
            "GET",
            "/api/v1/functions/fn_x/versions/not-a-number",
            "",
            "application/json",
        ),
    ];
    for (method, uri, body, content_type) in cases {
        let reply = app.send(method, uri, body, content_type).await;
        assert_eq!(reply.status, 400, "{method} {uri} {body}");
        let error = reply.json();
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{method} {uri}: {error}"
        );
        assert!(error["error"].get("details").is_none(), "{error}");
    }
    let missing = app.get("/api/v1/no-such-endpoint").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "not_found");
}

/// `POST /deployments/{id}/retry`: the failed nodes go back to pending and every targeted
/// node gets a new desired state whose `retry` count makes it load the version again; a
/// deployment that is no longer active cannot be retried.
#[tokio::test]
async fn a_retry_sends_the_failed_version_again() {
    let app = app(&Backend::Sqlite).await;
    let node = app.enroll("n1", json!({ "region": "tokyo" })).await;
    let (completed, id) = app.deploy_bytes("retried", &hello()).await;
    assert_eq!(completed.status, 200);
    let deployed = app
        .json(
            "POST",
            &format!("/api/v1/functions/{id}/deploy"),
            json!({ "version": 1, "pop_selector": "" }),
        )
        .await
        .json();
    let deployment_id = deployed["id"].as_str().unwrap().to_string();
    let beat = |applied: Option<u64>, results: serde_json::Value| json!({ "node_id": node.id, "status": "online", "cpu_percent": 1.0, "mem_bytes": 1, "applied_revision": applied, "results": results });
    let path = format!("/api/v1/nodes/{}/heartbeat", node.id);
    let heartbeat = |body: serde_json::Value| app.node(&node, "POST", &path, body);
    let reply = heartbeat(beat(None, json!([]))).await.json();
    let revision = reply["desired_revision"].as_u64().unwrap();
    assert!(
        reply["desired_state"]["functions"][0]
            .get("retry")
            .is_none()
    );
    let failed = json!([{ "function_id": id, "version": 1, "state": "failed", "error": "compilation took longer than the limit" }]);
    heartbeat(beat(Some(revision), failed)).await;
    let shown = app
        .get(&format!("/api/v1/deployments/{deployment_id}"))
        .await
        .json();
    assert_eq!(shown["nodes"][0]["state"], "failed", "{shown}");

    let retried = app
        .json(
            "POST",
            &format!("/api/v1/deployments/{deployment_id}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(retried.status, 200, "{:?}", retried.json());
    assert_eq!(retried.json()["nodes"][0]["state"], "pending");
    let reply = heartbeat(beat(Some(revision), json!([]))).await.json();
    assert!(
        reply["desired_revision"].as_u64().unwrap() > revision,
        "{reply}"
    );
    assert_eq!(
        reply["desired_state"]["functions"][0]["retry"], 1,
        "{reply}"
    );
    let audited = app
        .get("/api/v1/audit?action=deployment.retry")
        .await
        .json();
    assert_eq!(audited.as_array().unwrap().len(), 1, "{audited}");

    // Undeployed: nothing to retry.
    app.json(
        "POST",
        &format!("/api/v1/functions/{id}/undeploy"),
        json!({}),
    )
    .await;
    let refused = app
        .json(
            "POST",
            &format!("/api/v1/deployments/{deployment_id}/retry"),
            json!({}),
        )
        .await;
    assert_eq!(refused.status, 409, "{:?}", refused.json());
    let missing = app
        .json("POST", "/api/v1/deployments/dep_nope/retry", json!({}))
        .await;
    assert_eq!(missing.status, 404);
}
