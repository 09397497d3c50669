//! The API answers as its OpenAPI document says: schemathesis (`scripts/schemathesis.sh`,
//! pinned, from PyPI) drives the real binary from `/api/v1/openapi.json` for a bounded time
//! with a fixed seed, as an administrator, and every one of its checks must hold — no
//! server error, every status and body documented, schema-valid requests accepted and
//! schema-invalid ones refused. `scripts/schemathesis_hooks.py` teaches it the grammar of
//! POP selectors and the one rule between two fields JSON Schema cannot state.

use std::process::Command;

use crate::startup::Binary;

#[test]
fn the_api_matches_its_openapi_document() {
    let dir = tempfile::tempdir().unwrap();
    let binary = Binary::start(dir.path());
    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    let root = edgefn_test_support::workspace_root();
    let seconds = std::env::var("EDGEFN_SCHEMATHESIS_SECONDS").unwrap_or_else(|_| "100".into());
    let output = Command::new("bash")
        .arg(root.join("scripts/schemathesis.sh"))
        .args([
            "run",
            &format!("http://{}/api/v1/openapi.json", binary.address),
        ])
        .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
        .args(["--seed", "1", "--max-time", &seconds, "--no-color"])
        .current_dir(dir.path())
        .env("PYTHONPATH", root.join("scripts"))
        .env("SCHEMATHESIS_HOOKS", "schemathesis_hooks")
        .output()
        .expect("run scripts/schemathesis.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the API and its document apart:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("passed"),
        "schemathesis ran nothing:\n{stdout}"
    );
}
