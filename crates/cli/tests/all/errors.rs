//! The CLI's failures: the API's own message, a non-zero exit, and no partial work.

use crate::{Backend, ControlPlane, cli, guest};

#[test]
fn failures_carry_the_api_message_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&Backend::Sqlite, dir.path(), &[]);

    let missing = cp.cli(&["functions", "show", "nope"]);
    assert!(!missing.success);
    assert!(
        missing
            .stderr
            .contains("no function with id or name \"nope\""),
        "{}",
        missing.stderr
    );

    cp.cli(&["functions", "create", "hello"]).ok();
    let duplicate = cp.cli(&["functions", "create", "hello"]);
    assert!(!duplicate.success);
    assert!(duplicate.stderr.contains("exists"), "{}", duplicate.stderr);
    assert!(
        duplicate.stderr.contains("HTTP 409"),
        "{}",
        duplicate.stderr
    );

    let invalid = cp.cli(&["functions", "create", "Bad Name", "--memory-pages", "0"]);
    assert!(!invalid.success);
    assert!(
        invalid.stderr.contains("memory_pages"),
        "field errors are listed: {}",
        invalid.stderr
    );

    // Not WebAssembly: refused at completion (422), nothing deployed.
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let refused = cp.cli(&["deploy", "hello", "--wasm", junk.to_str().unwrap()]);
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("refused the artifact"),
        "{}",
        refused.stderr
    );
    let shown = cp
        .cli(&["functions", "show", "hello", "--json"])
        .ok()
        .json();
    assert!(
        shown["function"]["latest_ready_version"].is_null(),
        "{shown}"
    );

    let selector = cp.cli(&[
        "deploy",
        "hello",
        "--wasm",
        &guest("hello"),
        "--selector",
        "region == ",
    ]);
    assert!(!selector.success);
    assert!(
        selector.stderr.contains("--selector"),
        "{}",
        selector.stderr
    );
    assert!(selector.stderr.contains("position"), "{}", selector.stderr);

    let unreachable = cli("http://127.0.0.1:9", &["functions", "list"]);
    assert!(!unreachable.success);
    assert!(
        unreachable
            .stderr
            .contains("cannot reach the control plane"),
        "{}",
        unreachable.stderr
    );

    // Tables by default, JSON on request.
    let table = cp.cli(&["functions", "list"]).ok().stdout;
    assert!(table.starts_with("ID"), "{table}");
    let json = cp.cli(&["functions", "list", "--json"]).ok().json();
    assert_eq!(json[0]["name"], "hello");
}
