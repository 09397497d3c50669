//! `edgefn deploy` as a new user runs it: the first deploy of a name creates the function
//! with the settings flags; later deploys change only the settings they name.

use crate::{Backend, ControlPlane, guest};

#[test]
fn the_first_deploy_creates_the_function_and_later_flags_change_only_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, dir.path(), &[]);
    let hello = guest("hello");

    let first = cp.cli(&[
        "deploy",
        "fresh",
        "--wasm",
        &hello,
        "--memory-pages",
        "128",
        "--env",
        "GREETING=hi",
        "--allow-host",
        "api.example.com",
    ]);
    let first = first.ok();
    assert!(
        first.stdout.contains("Created function fresh"),
        "{}",
        first.stdout
    );
    let shown = cp
        .cli(&["functions", "show", "fresh", "--json"])
        .ok()
        .json();
    let settings = &shown["function"]["settings"];
    assert_eq!(settings["memory_pages"], 128, "{shown}");
    assert_eq!(settings["env"]["GREETING"], "hi");
    assert_eq!(shown["versions"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["versions"][0]["state"], "ready");

    cp.cli(&[
        "deploy",
        "fresh",
        "--wasm",
        &hello,
        "--max-execution-ms",
        "2000",
        "--env",
        "MODE=test",
    ])
    .ok();
    let shown = cp
        .cli(&["functions", "show", "fresh", "--json"])
        .ok()
        .json();
    let versions = shown["versions"].as_array().unwrap();
    let newest = versions
        .iter()
        .max_by_key(|v| v["version"].as_u64())
        .unwrap();
    assert_eq!(newest["version"], 2, "{shown}");
    let settings = &newest["settings"];
    assert_eq!(settings["max_execution_ms"], 2000, "{shown}");
    assert_eq!(settings["memory_pages"], 128, "kept from the function");
    assert_eq!(settings["env"]["GREETING"], "hi", "variables are added");
    assert_eq!(settings["env"]["MODE"], "test");
    assert_eq!(settings["allowed_outbound_hosts"][0], "api.example.com");
    assert_eq!(shown["function"]["settings"]["max_execution_ms"], 2000);

    // Without flags, a deploy keeps the function's settings as they are.
    cp.cli(&["deploy", "fresh", "--wasm", &hello]).ok();
    let shown = cp
        .cli(&["functions", "show", "fresh", "--json"])
        .ok()
        .json();
    let versions = shown["versions"].as_array().unwrap();
    let newest = versions
        .iter()
        .max_by_key(|v| v["version"].as_u64())
        .unwrap();
    assert_eq!(newest["version"], 3);
    assert_eq!(newest["settings"]["max_execution_ms"], 2000);

    // A bad setting is refused before anything is created.
    let refused = cp.cli(&["deploy", "other", "--wasm", &hello, "--memory-pages", "0"]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("memory_pages"),
        "{}",
        refused.stderr
    );
    let listed = cp.cli(&["functions", "list", "--json"]).ok().json();
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "other"),
        "{listed}"
    );
}

/// `edgefn nodes show` takes a node's name as well as its id.
#[test]
fn nodes_are_shown_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, &dir.path().join("cp"), &[]);
    let runner = crate::Runner::start(&cp, &dir.path().join("edge-1"), "edge-1", "region=x", 200);
    crate::eventually(
        "the runner registered",
        std::time::Duration::from_secs(30),
        || {
            let nodes = cp.cli(&["nodes", "list", "--json"]).ok().json();
            nodes
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["name"] == "edge-1")
        },
    );
    let by_name = cp.cli(&["nodes", "show", "edge-1", "--json"]).ok().json();
    let id = cp.node_id("edge-1");
    assert_eq!(by_name["id"], id.as_str());
    let by_id = cp.cli(&["nodes", "show", &id, "--json"]).ok().json();
    assert_eq!(by_id["name"], "edge-1");
    let missing = cp.cli(&["nodes", "show", "edge-9"]);
    assert!(!missing.success);
    assert!(missing.stderr.contains("edge-9"), "{}", missing.stderr);
    drop(runner);
}
