//! The real S3-compatible server the artifact-store suites run against: the one named by
//! `EDGEFN_TEST_S3_*` (`.ci/run` starts it), or else one this test process starts itself
//! with `scripts/s3-test-server.sh` (SeaweedFS from PyPI) and that stops when the process
//! ends. A suite that needs S3 never skips: when no server can be had it fails, saying why.

use std::collections::HashMap;
use std::process::Command;
use std::sync::OnceLock;

/// Where the test server is and how to sign requests to it.
#[derive(Debug, Clone)]
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// The test S3 server, started on first use when the environment names none.
///
/// # Panics
/// When no server is named and none can be started (the script's own message says why).
pub fn server() -> S3Server {
    static SERVER: OnceLock<Result<S3Server, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| match from_env(&|name| std::env::var(name).ok()) {
            Some(server) => Ok(server),
            None => start(),
        })
        .clone()
        .unwrap_or_else(|why| panic!("the S3 suites need a real S3-compatible server: {why}"))
}

fn from_env(var: &dyn Fn(&str) -> Option<String>) -> Option<S3Server> {
    Some(S3Server {
        endpoint: var("EDGEFN_TEST_S3_ENDPOINT")?,
        bucket: var("EDGEFN_TEST_S3_BUCKET").unwrap_or_else(|| "edgefn-test".into()),
        access_key_id: var("EDGEFN_TEST_S3_ACCESS_KEY").unwrap_or_else(|| "edgefn-test".into()),
        secret_access_key: var("EDGEFN_TEST_S3_SECRET_KEY")
            .unwrap_or_else(|| "edgefn-test-secret".into()),
    })
}

/// Runs the script, which prints `export NAME=value …` lines once the bucket exists; the
/// server it leaves running watches this process and stops with it.
fn start() -> Result<S3Server, String> {
    let script = crate::workspace_root().join("scripts/s3-test-server.sh");
    let output = Command::new("bash")
        .arg(&script)
        .env("EDGEFN_TEST_S3_OWNER_PID", std::process::id().to_string())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let exported: HashMap<String, String> = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    from_env(&|name| exported.get(name).cloned())
        .ok_or_else(|| format!("{} printed no endpoint", script.display()))
}
