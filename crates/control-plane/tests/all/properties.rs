//! Property tests (≥ 100 cases each), on SQLite and PostgreSQL: registrations read back
//! identical, invalid parameters persist nothing, and the stored SHA-256 is the SHA-256 of
//! the bytes downloaded back.

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::fixture::{App, Backend, app, hello, postgres_schema};

/// One runtime and one app per backend for all property cases of this process: SQLite
/// always, PostgreSQL when available (opening pools per case would exhaust its connections).
fn shared() -> &'static (tokio::runtime::Runtime, Vec<App>) {
    static SHARED: std::sync::OnceLock<(tokio::runtime::Runtime, Vec<App>)> =
        std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let apps = rt.block_on(async {
            let mut apps = vec![app(&Backend::Sqlite).await];
            let pg = postgres_schema("edgefn_test_properties").await;
            apps.push(app(&pg).await);
            // The schema must outlive every case: never drop its guard (the next run
            // empties the schema before using it).
            std::mem::forget(pg);
            apps
        });
        (rt, apps)
    })
}

static NAMES: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", NAMES.fetch_add(1, Ordering::Relaxed))
}

fn valid_settings() -> impl Strategy<Value = serde_json::Value> {
    (
        1i64..=4096,
        1i64..=60_000,
        prop::sample::subsequence(vec!["api.example.com", "*.cdn.example.net", "db.internal:5432"], 0..=3),
        prop::collection::btree_map("[A-Z][A-Z0-9_]{0,8}", "[ -~]{0,12}", 0..3),
        (0i64..=4, 4i64..=64, 1i64..=100_000),
        prop::option::of("[a-z][a-z0-9]{0,6}"),
    )
        .prop_map(|(pages, ms, hosts, env, (min_hot, max_hot, reuse), entrypoint)| {
            let mut settings = json!({
                "memory_pages": pages, "max_execution_ms": ms, "allowed_outbound_hosts": hosts, "env": env,
                "min_hot_instances": min_hot, "max_hot_instances": max_hot, "instance_reuse": reuse,
            });
            if let Some(entrypoint) = entrypoint {
                settings["entrypoint"] = json!(entrypoint);
            }
            settings
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn any_valid_registration_reads_back_identical(settings in valid_settings()) {
        let (rt, apps) = shared();
        for app in apps {
            let name = unique("fn");
            let mut request = settings.clone();
            request["name"] = json!(name);
            let (created, read) = rt.block_on(async {
                let created = app.json("POST", "/api/v1/functions", request.clone()).await;
                let id = created.json()["function_id"].as_str().unwrap_or_default().to_string();
                (created, app.get(&format!("/api/v1/functions/{id}")).await)
            });
            prop_assert_eq!(created.status, 201);
            let function = read.json();
            prop_assert_eq!(&function["name"], &json!(name));
            for field in ["memory_pages", "max_execution_ms", "allowed_outbound_hosts", "min_hot_instances", "max_hot_instances", "instance_reuse"] {
                prop_assert_eq!(&function["settings"][field], &settings[field], "{}", field);
            }
            prop_assert_eq!(&function["settings"]["env"], &settings["env"]);
            prop_assert_eq!(&function["settings"]["entrypoint"], settings.get("entrypoint").unwrap_or(&json!(null)));
        }
    }

    #[test]
    fn any_invalid_parameter_set_is_refused_and_nothing_persisted(
        pages in prop_oneof![-5i64..=0, 4097i64..100_000],
        ms in prop_oneof![Just(None), Just(Some(0i64)), (60_001i64..1_000_000).prop_map(Some)],
        name in prop_oneof![Just("Upper".to_string()), Just(String::new()), Just("-lead".to_string()), "[a-z]{64,70}"],
        bad_name in any::<bool>(),
    ) {
        let (rt, apps) = shared();
        for app in apps {
            let mut request = json!({ "name": if bad_name { name.clone() } else { unique("ok") }, "memory_pages": pages });
            if let Some(ms) = ms {
                request["max_execution_ms"] = json!(ms);
            }
            let (reply, listed) = rt.block_on(async {
                let reply = app.json("POST", "/api/v1/functions", request.clone()).await;
                (reply, app.get("/api/v1/functions").await.json())
            });
            prop_assert_eq!(reply.status, 400);
            let fields: Vec<String> = reply.json()["error"]["details"]["fields"].as_array().unwrap()
                .iter().map(|f| f["field"].as_str().unwrap().to_string()).collect();
            prop_assert!(fields.contains(&"memory_pages".to_string()));
            prop_assert_eq!(fields.contains(&"max_execution_ms".to_string()), ms.is_some());
            prop_assert_eq!(fields.contains(&"name".to_string()), bad_name);
            // Other property tests create functions on the same app at the same time: look
            // for this request's function only.
            let persisted = listed.as_array().unwrap().iter().any(|f| f["name"] == request["name"]);
            prop_assert!(!persisted, "nothing persisted");
        }
    }

    #[test]
    fn the_stored_sha256_is_that_of_the_bytes_downloaded_back(payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        // A custom section keeps the component valid and gives every case its own hash.
        let mut wasm = hello();
        let mut section = vec![4u8];
        section.extend_from_slice(b"test");
        section.extend_from_slice(&payload);
        wasm.push(0);
        let mut len = section.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 { wasm.push(byte); break; }
            wasm.push(byte | 0x80);
        }
        wasm.extend_from_slice(&section);
        let (rt, apps) = shared();
        for app in apps {
            let (completed, downloaded) = rt.block_on(async {
                let (completed, _) = app.deploy_bytes(&unique("sha"), &wasm).await;
                let url = completed.json()["artifact_url"].as_str().unwrap_or_default().replace("http://cp.test", "");
                (completed, app.get(&url).await)
            });
            prop_assert_eq!(completed.status, 200);
            let stored = completed.json()["sha256"].as_str().unwrap().to_string();
            prop_assert_eq!(&stored, &hex::encode(Sha256::digest(&wasm)));
            prop_assert_eq!(stored, hex::encode(Sha256::digest(&downloaded.body)));
        }
    }
}
