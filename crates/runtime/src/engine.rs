//! The one engine of the process, its settings (each with its reason), the epoch ticker, and
//! loading an artifact into a runnable [`Function`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{Engine, Linker, Module};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::artifact::{ArtifactKind, Toolchain, precompiled_path, sha256_hex};
use crate::config::{DEFAULT_INSTANCE_REUSE, FunctionSettings, RuntimeConfig, WASM_PAGE};
use crate::fs::write_atomically;
use crate::function::{Code, Function, FunctionInner};
use crate::limits::EPOCH_TICK;
use crate::outbound::OutboundPolicy;
use crate::pool::{MemoryBudget, PoolRegistry, PoolShare, VersionPool};
use crate::shared::RuntimeInner;
use crate::state::{CgiState, ComponentState};
use crate::wasmtime_config::{EngineSettings, engine_hash, wasmtime_config};
use crate::{RuntimeError, compile};

/// The Wasmtime runtime of a node: one engine, linkers for both guest kinds, the node-wide
/// memory budget, and the epoch ticker. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

/// What to load: an artifact file and the settings of its version.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub function_id: String,
    pub version: u64,
    /// The artifact on local disk (the runner's cache).
    pub artifact: PathBuf,
    /// Expected lower-case hex SHA-256; loading fails on a mismatch.
    pub sha256: Option<String>,
    pub settings: FunctionSettings,
    /// The tenant whose instances these are, and its share of the instance slots.
    pub share: PoolShare,
}

/// What a compiler must match to make native code this runtime maps: the engine hash and
/// the settings that went into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineIdentity {
    /// See `wasmtime_config::engine_hash`.
    pub hash: String,
    pub max_memory_pages: u64,
    pub fuel: bool,
}

impl Runtime {
    /// Creates the engine and starts the epoch ticker and the idle sweeper. Must be called
    /// inside a Tokio runtime.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let settings = EngineSettings {
            max_memory_pages: config.max_memory_pages,
            fuel: config.fuel.is_some(),
            winch: config.winch,
        };
        let pool = (
            config.pool_instances,
            config.pool_memory_keep_resident_bytes,
        );
        let engine = Engine::new(&wasmtime_config(settings, Some(pool)))
            .map_err(|e| RuntimeError::internal(format!("failed to create engine: {e:#}")))?;
        let engine_hash = engine_hash(&engine);

        let mut component_linker = ComponentLinker::<ComponentState>::new(&engine);
        let mut module_linker = Linker::<CgiState>::new(&engine);
        let mut link = || -> wasmtime::Result<()> {
            // All of WASI 0.2, so that components built from ordinary std (which import
            // wasi:cli, wasi:filesystem, wasi:sockets) load; the context denies what matters.
            wasmtime_wasi::p2::add_to_linker_async(&mut component_linker)?;
            wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut component_linker)?;
            crate::logging::add_to_linker(&mut component_linker, |s| &mut s.logger)?;
            crate::sql::add_to_linker(&mut component_linker, |s| s.sql_view())?;
            wasmtime_wasi::p1::add_to_linker_async(&mut module_linker, |s| &mut s.wasi)?;
            Ok(())
        };
        link().map_err(|e| {
            RuntimeError::internal(format!("failed to link host interfaces: {e:#}"))
        })?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), stop_ticker.clone());
        let compilations = config.compiler.max_concurrent.max(1);
        let inner = Arc::new(RuntimeInner {
            budget: Arc::new(MemoryBudget::new(
                config.memory_budget_bytes,
                config.memory_high_watermark,
            )),
            engine,
            config,
            settings,
            engine_hash,
            component_linker,
            module_linker,
            pools: PoolRegistry::default(),
            per_function: Mutex::new(HashMap::new()),
            stop_ticker,
            compilations: tokio::sync::Semaphore::new(compilations),
        });
        spawn_idle_sweeper(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// The engine, for embedders that need to share it (benchmarks).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The name of the native code this engine accepts (see [`EngineIdentity`]).
    pub fn engine_identity(&self) -> EngineIdentity {
        EngineIdentity {
            hash: self.inner.engine_hash.clone(),
            max_memory_pages: self.inner.settings.max_memory_pages,
            fuel: self.inner.settings.fuel,
        }
    }

    /// The wall-clock limit for compiling an artifact of `artifact_bytes` here: how long
    /// waiting for someone else's compilation of it is worth.
    pub fn compile_time_limit(&self, artifact_bytes: u64) -> std::time::Duration {
        self.inner.config.compiler.limits_for(artifact_bytes).0
    }

    /// Whether intact-looking native code for this artifact is in the precompiled cache
    /// (its hash is checked again when it is loaded).
    pub fn has_precompiled(&self, artifact: &Path, sha256: &str) -> bool {
        let native = precompiled_path(artifact, sha256, &self.inner.engine_hash);
        native.is_file() && sidecar_path(&native).is_file()
    }

    /// Puts native code made elsewhere (a control plane's compiler, whose signature the
    /// caller has checked) into the precompiled cache, after checking that it is the code
    /// the signature names. [`Runtime::load`] then maps it instead of compiling; if Wasmtime
    /// refuses it there, it is deleted and the artifact compiled here.
    pub fn install_precompiled(
        &self,
        artifact: &Path,
        sha256: &str,
        native: &[u8],
        native_sha256: &str,
    ) -> Result<(), RuntimeError> {
        let actual = sha256_hex(native);
        if !actual.eq_ignore_ascii_case(native_sha256) {
            return Err(RuntimeError::Sha256Mismatch {
                expected: native_sha256.to_string(),
                actual,
            });
        }
        let path = precompiled_path(artifact, sha256, &self.inner.engine_hash);
        write_atomically(&path, native, None)
            .and_then(|()| write_atomically(&sidecar_path(&path), actual.as_bytes(), None))
            .map_err(|e| RuntimeError::internal(format!("cannot write {}: {e}", path.display())))
    }

    /// Linear memory held by hot instances across the node, in bytes.
    pub fn memory_in_use(&self) -> u64 {
        self.inner.budget.used()
    }

    /// The node-wide memory budget for hot instances, in bytes.
    pub fn memory_budget_bytes(&self) -> u64 {
        self.inner.budget.limit
    }

    /// Guest log records of `function_id` dropped by the rate limit so far.
    pub fn dropped_logs(&self, function_id: &str) -> u64 {
        self.inner
            .per_function
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(function_id)
            .map_or(0, |shared| shared.log_budget.dropped())
    }

    /// Verifies, compiles (or loads the cached native code of) and pre-instantiates an
    /// artifact. The returned [`Function`] owns the version's instance pool; dropping every
    /// clone of it destroys the pool.
    pub async fn load(&self, spec: LoadSpec) -> Result<Function, RuntimeError> {
        let settings = &spec.settings;
        self.validate_settings(settings)?;
        let shared = self.inner.per_function(&spec.function_id);
        let outbound = OutboundPolicy::new(
            &settings.allowed_outbound_hosts,
            &self.inner.config.outbound_allowed_networks,
        )
        .map_err(|reason| RuntimeError::InvalidSettings { reason })?
        .with_connection_limits(
            shared.connections.clone(),
            self.inner.config.outbound_connections_per_instance,
        );

        let bytes = self.read_artifact(&spec.artifact).await?;
        let sha256 = sha256_hex(&bytes);
        if let Some(expected) = &spec.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            return Err(RuntimeError::Sha256Mismatch {
                expected: expected.clone(),
                actual: sha256,
            });
        }
        let kind = ArtifactKind::detect(&bytes)?;
        let toolchain = match kind {
            ArtifactKind::Component => Toolchain::detect(&bytes),
            ArtifactKind::Module => Toolchain::Other,
        };
        let instance_reuse = settings
            .instance_reuse
            .unwrap_or(if toolchain.tolerates_reuse() {
                DEFAULT_INSTANCE_REUSE
            } else {
                1
            });
        let code = self
            .compile_cached(&spec.artifact, &sha256, kind, bytes)
            .await?;
        let code = self.prepare(code, settings)?;

        let pool = Arc::new(VersionPool::new(
            settings.max_hot_instances,
            settings.min_hot_instances,
            settings.idle_timeout,
            spec.share.clone(),
        ));
        self.inner.pools.register(&pool);
        let function = Function {
            inner: Arc::new(FunctionInner {
                runtime: self.inner.clone(),
                id: spec.function_id.as_str().into(),
                version: spec.version,
                kind,
                toolchain,
                instance_reuse,
                sha256,
                settings: spec.settings.clone(),
                code,
                pool,
                outbound: Arc::new(outbound),
                log_budget: shared.log_budget,
                sql: Arc::new(crate::sql::SqlGrants::new(
                    &spec.settings.databases,
                    self.inner.config.database_dir.as_deref(),
                )),
                refilling: AtomicBool::new(false),
            }),
        };
        function.prewarm().await?;
        Ok(function)
    }

    fn validate_settings(&self, settings: &FunctionSettings) -> Result<(), RuntimeError> {
        let max_pages = self.inner.config.max_memory_pages;
        let mut problems = Vec::new();
        if settings.memory_pages == 0 || settings.memory_pages > max_pages {
            problems.push(format!(
                "memory_pages must be 1..={max_pages}, got {}",
                settings.memory_pages
            ));
        }
        if settings.max_execution_ms == 0 {
            problems.push("max_execution_ms must be positive".to_string());
        }
        if settings.max_hot_instances == 0 {
            problems.push("max_hot_instances must be positive".to_string());
        }
        if settings.min_hot_instances > settings.max_hot_instances {
            problems.push("min_hot_instances must not exceed max_hot_instances".to_string());
        }
        if settings.instance_reuse == Some(0) {
            problems.push(
                "instance_reuse must be positive (1 = fresh instance per request)".to_string(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RuntimeError::InvalidSettings {
                reason: problems.join("; "),
            })
        }
    }

    async fn read_artifact(&self, path: &Path) -> Result<Vec<u8>, RuntimeError> {
        let limit = self.inner.config.max_artifact_bytes;
        let metadata = tokio::fs::metadata(path).await.map_err(|e| {
            RuntimeError::internal(format!("cannot read artifact {}: {e}", path.display()))
        })?;
        if metadata.len() > limit {
            return Err(RuntimeError::invalid(format!(
                "artifact is {} bytes, over the limit of {limit}",
                metadata.len()
            )));
        }
        tokio::fs::read(path).await.map_err(|e| {
            RuntimeError::internal(format!("cannot read artifact {}: {e}", path.display()))
        })
    }

    /// Loads the native code for an artifact: from the precompiled file beside it when that
    /// exists and is intact, else by compiling (bounded) and caching the result.
    async fn compile_cached(
        &self,
        artifact: &Path,
        sha256: &str,
        kind: ArtifactKind,
        bytes: Vec<u8>,
    ) -> Result<LoadedCode, RuntimeError> {
        let native_path = precompiled_path(artifact, sha256, &self.inner.engine_hash);
        if let Some(code) = self.load_precompiled(&native_path, kind) {
            return Ok(code);
        }
        let _turn = self
            .inner
            .compilations
            .acquire()
            .await
            .map_err(|_| RuntimeError::internal("the compiler queue is closed"))?;
        let native = compile::precompile(
            &self.inner.config.compiler,
            &self.inner.engine,
            self.inner.settings,
            kind,
            bytes,
        )
        .await?;
        let digest = sha256_hex(&native);
        let sidecar = sidecar_path(&native_path);
        let written = write_atomically(&native_path, &native, None)
            .and_then(|()| write_atomically(&sidecar, digest.as_bytes(), None));
        if let Err(error) = written {
            // A read-only or full cache costs a recompile next time, nothing more.
            tracing::warn!(path = %native_path.display(), %error, "cannot cache precompiled code");
            return self.deserialize_bytes(&native, kind);
        }
        self.load_precompiled(&native_path, kind).ok_or_else(|| {
            RuntimeError::internal("precompiled code written to the cache cannot be loaded")
        })
    }

    /// The cached native code, if it is there, matches its recorded hash, and this engine
    /// accepts it. Anything else is deleted so that it is rebuilt.
    fn load_precompiled(&self, path: &Path, kind: ArtifactKind) -> Option<LoadedCode> {
        let sidecar = sidecar_path(path);
        let expected = std::fs::read_to_string(&sidecar).ok()?;
        let actual = std::fs::read(path).ok().map(|b| sha256_hex(&b));
        if actual.as_deref() != Some(expected.trim()) {
            tracing::warn!(path = %path.display(), "precompiled code does not match its hash; recompiling");
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(&sidecar);
            return None;
        }
        match self.deserialize_file(path, kind) {
            Ok(code) => Some(code),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot load precompiled code; recompiling");
                let _ = std::fs::remove_file(path);
                let _ = std::fs::remove_file(&sidecar);
                None
            }
        }
    }

    fn deserialize_file(
        &self,
        path: &Path,
        kind: ArtifactKind,
    ) -> Result<LoadedCode, RuntimeError> {
        self.deserialize(Precompiled::File(path), kind)
    }

    fn deserialize_bytes(
        &self,
        native: &[u8],
        kind: ArtifactKind,
    ) -> Result<LoadedCode, RuntimeError> {
        self.deserialize(Precompiled::Bytes(native), kind)
    }

    #[expect(
        unsafe_code,
        reason = "Wasmtime's deserialization trusts its input; see SAFETY"
    )]
    fn deserialize(
        &self,
        native: Precompiled<'_>,
        kind: ArtifactKind,
    ) -> Result<LoadedCode, RuntimeError> {
        let engine = &self.inner.engine;
        // SAFETY: `native` is the output of `precompile` for this engine's settings: either
        // still in memory since it was produced, or a cache file whose name carries the
        // engine's compatibility hash and whose SHA-256 was just checked against the digest
        // recorded when it was written. Files are memory-mapped, so a cold start reads only
        // the pages it touches.
        let loaded = unsafe {
            match (native, kind) {
                (Precompiled::File(path), ArtifactKind::Component) => {
                    Component::deserialize_file(engine, path).map(LoadedCode::Component)
                }
                (Precompiled::File(path), ArtifactKind::Module) => {
                    Module::deserialize_file(engine, path).map(LoadedCode::Module)
                }
                (Precompiled::Bytes(bytes), ArtifactKind::Component) => {
                    Component::deserialize(engine, bytes).map(LoadedCode::Component)
                }
                (Precompiled::Bytes(bytes), ArtifactKind::Module) => {
                    Module::deserialize(engine, bytes).map(LoadedCode::Module)
                }
            }
        };
        loaded.map_err(|e| RuntimeError::internal(format!("{e:#}")))
    }

    /// Links the code against the host and checks its entrypoint and memory needs.
    fn prepare(&self, code: LoadedCode, settings: &FunctionSettings) -> Result<Code, RuntimeError> {
        let limit = settings.memory_pages * WASM_PAGE;
        let check_initial_memory = |initial: Option<u64>| match initial {
            Some(initial) if initial > limit => Err(RuntimeError::invalid(format!(
                "the artifact needs {} pages of memory at start, memory_pages is {}",
                initial / WASM_PAGE,
                settings.memory_pages
            ))),
            _ => Ok(()),
        };
        match code {
            LoadedCode::Component(component) => {
                if let Some(entrypoint) = &settings.entrypoint
                    && !entrypoint.starts_with("wasi:http/incoming-handler")
                {
                    return Err(RuntimeError::invalid(format!(
                        "entrypoint {entrypoint:?} is not supported for components: they are called through wasi:http/incoming-handler"
                    )));
                }
                check_initial_memory(
                    component
                        .resources_required()
                        .and_then(|r| r.max_initial_memory_size),
                )?;
                let pre = self
                    .inner
                    .component_linker
                    .instantiate_pre(&component)
                    .map_err(|e| RuntimeError::invalid(format!("{e:#}")))?;
                let pre = ProxyPre::new(pre).map_err(|e| {
                    RuntimeError::invalid(format!(
                        "component does not export wasi:http/incoming-handler: {e:#}"
                    ))
                })?;
                Ok(Code::Component(pre))
            }
            LoadedCode::Module(module) => {
                let entrypoint = settings
                    .entrypoint
                    .clone()
                    .unwrap_or_else(|| "_start".to_string());
                match module.get_export(&entrypoint) {
                    Some(wasmtime::ExternType::Func(_)) => {}
                    _ => {
                        return Err(RuntimeError::invalid(format!(
                            "module has no exported function {entrypoint:?}"
                        )));
                    }
                }
                check_initial_memory(module.resources_required().max_initial_memory_size)?;
                let pre = self
                    .inner
                    .module_linker
                    .instantiate_pre(&module)
                    .map_err(|e| RuntimeError::invalid(format!("{e:#}")))?;
                Ok(Code::Module { pre, entrypoint })
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Precompiled<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

pub(crate) enum LoadedCode {
    Component(Component),
    Module(Module),
}

fn sidecar_path(native: &Path) -> PathBuf {
    let mut name = native.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] on a plain thread, so deadlines hold
/// even when every async worker thread is busy running guests.
fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("edgefn-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "cannot start the epoch ticker; guests will not be interrupted");
    }
}

/// Expires idle instances; ends when the runtime is dropped.
fn spawn_idle_sweeper(runtime: std::sync::Weak<RuntimeInner>) {
    tokio::spawn(async move {
        loop {
            let interval = match runtime.upgrade() {
                Some(inner) => {
                    inner.pools.expire_idle(Instant::now());
                    inner.config.sweep_interval
                }
                None => return,
            };
            tokio::time::sleep(interval).await;
        }
    });
}
