//! `edgefn-runtime`: the only crate that uses the full Wasmtime API. It loads untrusted
//! WebAssembly — `wasi:http/proxy` components and WASI preview 1 CGI modules — and runs
//! HTTP handlers from hot instance pools under hard memory and time limits, with
//! deny-by-default capabilities. It knows nothing of routing or the control plane.
//!
//! ```no_run
//! # async fn example() -> Result<(), edgefn_runtime::RuntimeError> {
//! use std::sync::Arc;
//! use edgefn_runtime::{FunctionSettings, InvokeContext, LoadSpec, Runtime, RuntimeConfig};
//!
//! let runtime = Runtime::new(RuntimeConfig::new(Arc::new(edgefn_runtime::DiscardLogs)))?;
//! let hello = runtime
//!     .load(LoadSpec {
//!         function_id: "hello".into(),
//!         version: 1,
//!         artifact: "cache/hello/1.wasm".into(),
//!         sha256: None,
//!         settings: FunctionSettings::default(),
//!         share: Default::default(),
//!     })
//!     .await?;
//! let request = http::Request::get("http://example.com/").body(bytes::Bytes::new()).unwrap();
//! let invocation = hello.handle(request, InvokeContext::default()).await?;
//! assert_eq!(invocation.response.status(), 200);
//! # Ok(()) }
//! ```
//!
//! Modules: [`engine`](Runtime) (engine settings, loading, precompiled-code cache),
//! `function` (one invocation), `pool` (hot instances and the node memory budget), `limits`
//! (memory, tables, deadlines, CPU time), `state` (the WASI sandbox), `outbound` (allowlist
//! and SSRF checks), `logging` (guest logs), `compile` (bounded compilation), `cgi`.

mod artifact;
mod cgi;
mod compile;
mod config;
mod engine;
mod error;
pub mod fs;
mod function;
mod limits;
mod logging;
pub mod outbound;
mod pool;
mod shared;
mod sql;
mod state;
mod wasmtime_config;

pub use artifact::{ArtifactKind, Toolchain, sha256_hex};
pub use cgi::is_hop_by_hop;
pub use compile::compile_worker_main;
pub use config::{
    CompilerConfig, DEFAULT_INSTANCE_REUSE, FunctionSettings, RuntimeConfig, SqlGrant, WASM_PAGE,
};
pub use engine::{EngineIdentity, LoadSpec, Runtime};
pub use error::RuntimeError;
pub use function::{Function, Invocation, InvokeContext, PoolStats};
pub use limits::EPOCH_TICK;
pub use logging::{DiscardLogs, GuestLogRecord, LogLevel, LogSink, LogSource, MemoryLogs};
pub use pool::PoolShare;
