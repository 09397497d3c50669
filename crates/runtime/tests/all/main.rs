//! Integration tests of the runtime with real guests built from `examples/`.

mod capabilities;
mod guests;
mod limits;
mod loading;
mod pools;
mod toolchains;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use edgefn_runtime::{
    CompilerConfig, Function, FunctionSettings, Invocation, InvokeContext, LoadSpec, MemoryLogs,
    Runtime, RuntimeConfig, RuntimeError,
};

/// A directory shared by the tests of this process, so each guest is compiled once and
/// later loads come from the precompiled cache.
pub fn cache_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temporary directory"))
        .path()
        .to_path_buf()
}

/// The artifact path of guest `name` in the shared cache.
pub fn artifact(name: &str) -> PathBuf {
    static COPIED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut copied = COPIED.lock().unwrap();
    let path = cache_dir().join(format!("{name}.wasm"));
    if !copied.iter().any(|c| c == name) {
        edgefn_test_support::guest_in(&cache_dir(), name);
        copied.push(name.to_string());
    }
    path
}

pub fn config(logs: Arc<MemoryLogs>) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(logs);
    config.pool_instances = 200;
    config.compiler = CompilerConfig {
        worker_program: Some(env!("CARGO_BIN_EXE_edgefn-compile-worker").into()),
        ..CompilerConfig::default()
    };
    config
}

pub struct Fixture {
    pub runtime: Runtime,
    pub logs: Arc<MemoryLogs>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::with(|_| {})
    }
}

impl Fixture {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(adjust: impl FnOnce(&mut RuntimeConfig)) -> Self {
        let logs = Arc::new(MemoryLogs::default());
        let mut config = config(logs.clone());
        adjust(&mut config);
        Self {
            runtime: Runtime::new(config).expect("runtime"),
            logs,
        }
    }

    pub async fn load(
        &self,
        guest: &str,
        settings: FunctionSettings,
    ) -> Result<Function, RuntimeError> {
        self.load_as(guest, guest, 1, settings).await
    }

    pub async fn load_as(
        &self,
        guest: &str,
        function_id: &str,
        version: u64,
        settings: FunctionSettings,
    ) -> Result<Function, RuntimeError> {
        self.runtime
            .load(LoadSpec {
                function_id: function_id.into(),
                version,
                artifact: artifact(guest),
                sha256: None,
                settings,
                share: Default::default(),
            })
            .await
    }
}

pub fn get(path: &str) -> http::Request<Bytes> {
    http::Request::get(format!("http://example.com{path}"))
        .body(Bytes::new())
        .unwrap()
}

pub async fn call(function: &Function, path: &str) -> Result<Invocation, RuntimeError> {
    function.handle(get(path), InvokeContext::default()).await
}

pub fn body_text(invocation: &Invocation) -> String {
    String::from_utf8_lossy(invocation.response.body()).into_owned()
}
