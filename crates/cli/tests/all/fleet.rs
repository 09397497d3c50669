//! A control plane and three runners (region tokyo, tokyo, osaka) as real processes: deploy
//! by selector, roll back, undeploy, crash the control plane, tamper with an artifact,
//! restart a runner without a control plane, and let a node fall silent. Every case runs on
//! SQLite and on PostgreSQL.

use std::path::Path;
use std::time::Duration;

use crate::{Backend, ControlPlane, ECHO_BODY, HELLO_BODY, Runner, eventually, guest};

/// Runs `$name(&backend)` once on SQLite and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name(&crate::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() {
                super::$name(&crate::Backend::postgres())
            })*
        }
    };
}

on_both_backends!(
    deploys_follow_the_selector_and_roll_back,
    a_control_plane_crash_mid_deploy_loses_nothing,
    runners_serve_without_the_control_plane,
    a_tampered_artifact_is_refused_and_the_old_version_kept,
    a_silent_node_goes_offline,
    deploys_are_pushed_without_waiting_for_heartbeats,
    a_change_through_another_replica_is_pushed_too,
);

/// Heartbeats every minute: only the push stream can make a deploy converge in seconds.
const SLOW_HEARTBEAT_MS: u64 = 60_000;

struct Fleet {
    cp: ControlPlane,
    tokyo: [Runner; 2],
    osaka: Runner,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// Runners heartbeat every 200 ms: these tests are about what converges, not how fast.
    fn start(backend: &Backend, cp_extra: &[&str]) -> Self {
        Self::start_with(backend, cp_extra, 200)
    }

    fn start_with(backend: &Backend, cp_extra: &[&str], heartbeat_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(backend, &dir.path().join("cp"), cp_extra);
        let runner = |name: &str, region: &str| {
            Runner::start(
                &cp,
                &dir.path().join(name),
                name,
                &format!("region={region},pop={name}"),
                heartbeat_ms,
            )
        };
        let tokyo = [runner("tokyo-1", "tokyo"), runner("tokyo-2", "tokyo")];
        let osaka = runner("osaka-1", "osaka");
        for name in ["tokyo-1", "tokyo-2", "osaka-1"] {
            eventually("every runner registered", Duration::from_secs(30), || {
                let nodes = cp.cli(&["nodes", "list", "--json"]).ok().json();
                nodes.as_array().unwrap().iter().any(|n| n["name"] == name)
            });
        }
        cp.cli(&["functions", "create", "hello"]).ok();
        cp.cli(&["routes", "add", "--path", "/", "--function", "hello"])
            .ok();
        Self {
            cp,
            tokyo,
            osaka,
            _dir: dir,
        }
    }

    fn deploy(&self, wasm: &str) -> serde_json::Value {
        let selector = "region == 'tokyo'";
        let output = self
            .cp
            .cli(&[
                "deploy",
                "hello",
                "--wasm",
                wasm,
                "--selector",
                selector,
                "--wait",
                "--json",
            ])
            .ok();
        output.json()
    }

    fn tokyo_serves(&self, body: &str) -> bool {
        self.tokyo.iter().all(|r| {
            let (status, text) = r.get("/");
            status == 200 && text.contains(body)
        })
    }
}

fn deploys_follow_the_selector_and_roll_back(backend: &Backend) {
    let fleet = Fleet::start(backend, &[]);
    let first = fleet.deploy(&guest("hello"));
    assert_eq!(first["version"], 1);
    let nodes = first["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{first}");
    assert!(nodes.iter().all(|n| n["state"] == "ready"), "{first}");
    assert!(fleet.tokyo_serves(HELLO_BODY));
    assert_eq!(fleet.osaka.get("/").0, 404, "osaka is not selected");

    let second = fleet.deploy(&guest("echo"));
    assert_eq!(second["version"], 2);
    assert!(fleet.tokyo_serves(ECHO_BODY));

    let rollback = fleet
        .cp
        .cli(&["rollback", "hello", "--wait", "--json"])
        .ok()
        .json();
    assert_eq!(rollback["version"], 1, "{rollback}");
    assert!(fleet.tokyo_serves(HELLO_BODY), "v1 serves everywhere again");
    assert_eq!(fleet.osaka.get("/").0, 404);

    // The CLI shows each node's state; a deployment keeps its own nodes.
    let shown = fleet
        .cp
        .cli(&["deployments", "show", rollback["id"].as_str().unwrap()])
        .ok();
    assert_eq!(shown.stdout.matches("ready").count(), 2, "{}", shown.stdout);

    fleet.cp.cli(&["undeploy", "hello"]).ok();
    eventually("undeployed everywhere", Duration::from_secs(20), || {
        fleet.tokyo.iter().all(|r| r.get("/").0 == 404)
    });
}

fn a_control_plane_crash_mid_deploy_loses_nothing(backend: &Backend) {
    let mut fleet = Fleet::start(backend, &[]);
    fleet.deploy(&guest("hello"));
    // The deploy call returns once the desired states are committed; the nodes are still
    // converging when the control plane dies.
    let deployment = fleet
        .cp
        .cli(&[
            "deploy",
            "hello",
            "--wasm",
            &guest("echo"),
            "--selector",
            "region == 'tokyo'",
            "--json",
        ])
        .ok()
        .json();
    fleet.cp.crash();
    fleet.cp.restart();
    let id = deployment["id"].as_str().unwrap();
    eventually("every tokyo node acks v2", Duration::from_secs(30), || {
        let nodes = fleet.cp.deployment_nodes(id);
        nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "ready")
    });
    assert!(fleet.tokyo_serves(ECHO_BODY));
    assert_eq!(fleet.osaka.get("/").0, 404);
    let function = fleet
        .cp
        .cli(&["functions", "show", "hello", "--json"])
        .ok()
        .json();
    let versions = function["versions"].as_array().unwrap();
    assert_eq!(
        versions.len(),
        2,
        "no version lost or duplicated: {function}"
    );
}

fn runners_serve_without_the_control_plane(backend: &Backend) {
    let mut fleet = Fleet::start(backend, &[]);
    fleet.deploy(&guest("hello"));
    fleet.cp.crash();
    assert!(
        fleet.tokyo_serves(HELLO_BODY),
        "serving goes on without the CP"
    );
    // A restart with the control plane down starts from the persisted desired state.
    fleet.tokyo[0].restart();
    eventually(
        "the restarted runner serves",
        Duration::from_secs(30),
        || {
            let (status, body) = fleet.tokyo[0].get("/");
            status == 200 && body.contains(HELLO_BODY)
        },
    );
    assert_eq!(fleet.osaka.get("/").0, 404);
    // When the control plane is back, the runner reports in again.
    fleet.cp.restart();
    let node = fleet.cp.node_id("tokyo-1");
    eventually("the node is online again", Duration::from_secs(30), || {
        let shown = fleet
            .cp
            .cli(&["nodes", "show", &node, "--json"])
            .ok()
            .json();
        shown["status"] == "online"
    });
}

fn a_tampered_artifact_is_refused_and_the_old_version_kept(backend: &Backend) {
    let fleet = Fleet::start(backend, &[]);
    fleet.deploy(&guest("hello"));
    // Upload v2 through the API, then alter the stored object before deploying it.
    let api = |path: &str| format!("{}/api/v1{path}", fleet.cp.url);
    let (client, auth) = fleet.cp.http();
    let function = fleet
        .cp
        .cli(&["functions", "show", "hello", "--json"])
        .ok()
        .json();
    let id = function["function"]["id"].as_str().unwrap().to_string();
    let created: serde_json::Value = client
        .post(api(&format!("/functions/{id}/versions")))
        .header("authorization", &auth)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let wasm = std::fs::read(guest("echo")).unwrap();
    let uploaded = client
        .put(created["upload_url"].as_str().unwrap())
        .body(wasm)
        .send()
        .unwrap();
    assert!(uploaded.status().is_success());
    let version: serde_json::Value = client
        .post(api(&format!("/functions/{id}/versions/2/complete")))
        .header("authorization", &auth)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let sha256 = version["sha256"].as_str().unwrap();
    let stored = fleet
        .cp
        .data_dir
        .join("artifacts/artifacts/sha256")
        .join(sha256);
    tamper(&stored);
    let deployment: serde_json::Value = client
        .post(api(&format!("/functions/{id}/deploy")))
        .header("authorization", &auth)
        .json(&serde_json::json!({ "version": 2, "pop_selector": "region == 'tokyo'" }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let deployment_id = deployment["id"].as_str().unwrap();
    eventually(
        "both tokyo nodes report the mismatch",
        Duration::from_secs(30),
        || {
            let nodes = fleet.cp.deployment_nodes(deployment_id);
            nodes.iter().all(|n| {
                n["state"] == "failed"
                    && n["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("sha256 mismatch"))
            })
        },
    );
    assert!(
        fleet.tokyo_serves(HELLO_BODY),
        "the last good version keeps serving"
    );
    // The CLI says which nodes failed and why.
    let text = fleet
        .cp
        .cli(&["deployments", "show", deployment_id])
        .ok()
        .stdout;
    assert!(text.contains("sha256 mismatch"), "{text}");
    // Each node shows the error in its own inventory too.
    let node = fleet.cp.node_id("tokyo-1");
    eventually(
        "the node's inventory names the error",
        Duration::from_secs(10),
        || {
            let text = fleet.cp.cli(&["nodes", "show", &node]).ok().stdout;
            text.contains("failed") && text.contains("sha256 mismatch")
        },
    );
    // Once the store holds the right bytes again, the nodes retry and converge.
    tamper(&stored);
    eventually(
        "the nodes load v2 after the store is repaired",
        Duration::from_secs(30),
        || {
            let nodes = fleet.cp.deployment_nodes(deployment_id);
            nodes.iter().all(|n| n["state"] == "ready")
        },
    );
    assert!(fleet.tokyo_serves(ECHO_BODY));
}

/// The control plane compiles a version once for every node of the same engine; each node
/// maps that code only after its signature and hashes hold, and code altered in the store
/// is refused (and compiled on the node instead), never run.
#[test]
fn code_is_compiled_once_for_the_fleet_and_altered_code_never_runs() {
    const DOWNLOADED: &str = r#"wasm_precompiled_code_total{outcome="downloaded"}"#;
    const REFUSED: &str = r#"wasm_precompiled_code_total{outcome="refused"}"#;
    let fleet = Fleet::start(&Backend::Sqlite, &[]);
    fleet.deploy(&guest("hello"));
    assert!(fleet.tokyo_serves(HELLO_BODY));
    for runner in &fleet.tokyo {
        assert_eq!(
            runner.metric(DOWNLOADED),
            1.0,
            "{} compiled for itself",
            runner.name
        );
        assert_eq!(runner.metric(REFUSED), 0.0);
    }
    // One compilation for both nodes: one native object in the store.
    let engines = fleet.cp.data_dir.join("artifacts/precompiled");
    let stored: Vec<_> = std::fs::read_dir(&engines)
        .unwrap()
        .flat_map(|engine| std::fs::read_dir(engine.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");

    // Alter the stored native code, then deploy the same bytes to osaka too.
    tamper(&stored[0]);
    fleet
        .cp
        .cli(&[
            "deploy",
            "hello",
            "--wasm",
            &guest("hello"),
            "--selector",
            "region == 'tokyo' || region == 'osaka'",
            "--wait",
            "--json",
        ])
        .ok();
    assert_eq!(
        fleet.osaka.metric(REFUSED),
        1.0,
        "the altered code was refused"
    );
    assert_eq!(fleet.osaka.metric(DOWNLOADED), 0.0);
    let (status, body) = fleet.osaka.get("/");
    assert_eq!(status, 200);
    assert!(body.contains(HELLO_BODY), "{body}");
    assert!(fleet.tokyo_serves(HELLO_BODY));
}

fn tamper(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

fn a_silent_node_goes_offline(backend: &Backend) {
    let mut fleet = Fleet::start(backend, &["--node-offline-after-secs", "1"]);
    let osaka = fleet.cp.node_id("osaka-1");
    let healthy = |fleet: &Fleet| -> Vec<String> {
        let nodes = fleet
            .cp
            .cli(&["nodes", "list", "--healthy", "--json"])
            .ok()
            .json();
        nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(healthy(&fleet).contains(&osaka));
    fleet.osaka.process.kill();
    eventually(
        "osaka leaves the healthy set",
        Duration::from_secs(20),
        || !healthy(&fleet).contains(&osaka),
    );
    let shown = fleet
        .cp
        .cli(&["nodes", "show", &osaka, "--json"])
        .ok()
        .json();
    assert_eq!(shown["status"], "offline");
    assert_eq!(healthy(&fleet).len(), 2, "the tokyo nodes stay healthy");
}

fn deploys_are_pushed_without_waiting_for_heartbeats(backend: &Backend) {
    let fleet = Fleet::start_with(backend, &[], SLOW_HEARTBEAT_MS);
    let started = std::time::Instant::now();
    fleet.deploy(&guest("hello"));
    assert!(fleet.tokyo_serves(HELLO_BODY));
    let second = std::time::Instant::now();
    fleet.deploy(&guest("echo"));
    assert!(fleet.tokyo_serves(ECHO_BODY));
    // Far below the minute between heartbeats (the first deploy also compiles, in a debug
    // build; figures for release builds are in bench/RESULTS.md).
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        second.elapsed() < Duration::from_secs(15),
        "{:?}",
        second.elapsed()
    );
}

fn a_change_through_another_replica_is_pushed_too(backend: &Backend) {
    if matches!(backend, Backend::Sqlite) {
        // Replicas share a PostgreSQL database; a SQLite file belongs to one process.
        return;
    }
    let fleet = Fleet::start_with(backend, &[], SLOW_HEARTBEAT_MS);
    // A second replica on the same database; its artifacts live in its own directory and
    // nodes download them from it.
    let other_dir = tempfile::tempdir().unwrap();
    let other =
        ControlPlane::start_with_token(backend, other_dir.path(), &[], Some(&fleet.cp.token));
    let deployment = other
        .cli(&[
            "deploy",
            "hello",
            "--wasm",
            &guest("hello"),
            "--selector",
            "region == 'tokyo'",
            "--json",
        ])
        .ok()
        .json();
    let id = deployment["id"].as_str().unwrap().to_string();
    eventually(
        "nodes of the first replica apply a deploy made through the second",
        Duration::from_secs(20),
        || {
            let nodes = fleet.cp.deployment_nodes(&id);
            nodes.len() == 2 && nodes.iter().all(|n| n["state"] == "ready")
        },
    );
    assert!(fleet.tokyo_serves(HELLO_BODY));
}
