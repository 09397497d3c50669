//! The state of an edge node — its runtime, cache, quotas, metrics, loaded functions and
//! route table — and `reconcile`, the one path that changes what the node runs. Start-up
//! is a reconcile from empty; a control plane (later) only feeds new desired states here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use edgefn_runtime::{Function, LoadSpec, Runtime, RuntimeError};
use tokio::sync::watch;

use crate::cache::{ArtifactCache, CacheError};
use crate::fetch::Fetcher;
use crate::metrics::{FunctionLabels, Metrics};
use crate::quotas::TenantQuotas;
use crate::spec::{FunctionEntry, NodeSpec, RouteTarget};
use edgefn_proto::router::RouteTable;

/// Where a function version stands on this node.
#[derive(Clone)]
pub enum VersionState {
    /// Being fetched, verified, compiled or pre-warmed.
    Loading,
    Ready(Function),
    /// Could not be loaded; the message says why.
    Failed(String),
}

/// One desired function version and its state.
pub struct VersionSlot {
    pub entry: FunctionEntry,
    /// What the request path needs per request, resolved once when the slot is created.
    pub hot: SlotHandles,
    state: watch::Sender<VersionState>,
    /// When the last load attempt started, so that requests retry a failed load at most
    /// once per [`RETRY_FAILED_AFTER`].
    last_attempt: std::sync::Mutex<Instant>,
    /// The last load failed in compilation or validation (not in fetching): the same bytes
    /// would fail again, so requests and heartbeats never retry it; a new desired state or
    /// manifest does, at most once per [`RETRY_COMPILE_AFTER`].
    compile_failed: std::sync::atomic::AtomicBool,
}

/// Per-version handles to the tenant's quota and the function's metrics.
pub struct SlotHandles {
    pub quota: Arc<crate::quotas::TenantQuota>,
    pub invocations: prometheus_client::metrics::counter::Counter,
    pub latency: prometheus_client::metrics::histogram::Histogram,
    pub cold_starts: prometheus_client::metrics::counter::Counter,
    /// Invocations that failed (any error code), for heartbeats.
    pub failures: prometheus_client::metrics::counter::Counter,
    /// Unix milliseconds of the last cache touch; the cache learns of use at most once a
    /// second per version, not on every request.
    last_touch_ms: std::sync::atomic::AtomicU64,
}

impl SlotHandles {
    fn new(node: &Node, entry: &FunctionEntry) -> Self {
        let labels = FunctionLabels {
            function_id: entry.id.clone(),
        };
        Self {
            quota: node.quotas.tenant(&entry.tenant),
            invocations: node.metrics.invocations.get_or_create(&labels).clone(),
            latency: node.metrics.latency.get_or_create(&labels).clone(),
            cold_starts: node.metrics.cold_starts.get_or_create(&labels).clone(),
            failures: node.metrics.failures.get_or_create(&labels).clone(),
            last_touch_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Whether the cache should be told of a use now.
    pub fn touch_due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.last_touch_ms.load(Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .last_touch_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Why a version failed to load, and whether in compiling (or validating) its bytes.
struct LoadFailure {
    message: String,
    compile: bool,
}

/// How soon a request may trigger another load of a version that failed.
pub const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How soon a version that failed to compile may be compiled again (a compilation can take
/// a core for tens of seconds; a failed one wastes it).
pub const RETRY_COMPILE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

impl VersionSlot {
    pub fn state(&self) -> VersionState {
        self.state.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        matches!(*self.state.borrow(), VersionState::Ready(_))
    }

    /// Waits until the version is no longer loading, at most until `deadline`.
    pub async fn settled(&self, deadline: Instant) -> Option<VersionState> {
        let mut receiver = self.state.subscribe();
        let waited = tokio::time::timeout_at(
            deadline.into(),
            receiver.wait_for(|s| !matches!(s, VersionState::Loading)),
        );
        match waited.await {
            Ok(Ok(state)) => Some(state.clone()),
            _ => None,
        }
    }
}

/// Function versions by id, newest last.
pub type Functions = HashMap<String, BTreeMap<u64, Arc<VersionSlot>>>;

pub struct Node {
    pub node_id: String,
    pub runtime: Runtime,
    pub cache: Arc<ArtifactCache>,
    pub quotas: Arc<TenantQuotas>,
    pub metrics: Arc<Metrics>,
    pub fetcher: Arc<Fetcher>,
    /// How the instance slots are shared among tenants.
    pub share: crate::share::ShareLimits,
    routes: ArcSwap<RouteTable<RouteTarget>>,
    functions: ArcSwap<Functions>,
    /// With `--winch-first`: a runtime that compiles with Winch, whose code serves a new
    /// version until its Cranelift code is ready.
    baseline: std::sync::OnceLock<Runtime>,
}

impl Node {
    pub fn new(
        node_id: String,
        runtime: Runtime,
        cache: ArtifactCache,
        quotas: Arc<TenantQuotas>,
        metrics: Arc<Metrics>,
        fetcher: Fetcher,
        share: crate::share::ShareLimits,
    ) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            runtime,
            cache: Arc::new(cache),
            quotas,
            metrics,
            share,
            fetcher: Arc::new(fetcher),
            routes: ArcSwap::from_pointee(RouteTable::default()),
            functions: ArcSwap::from_pointee(Functions::new()),
            baseline: std::sync::OnceLock::new(),
        })
    }

    /// From now on, versions without Cranelift code at hand are served first from Winch
    /// code compiled by `baseline` (see `--winch-first`).
    pub fn use_baseline(&self, baseline: Runtime) {
        let _ = self.baseline.set(baseline);
    }

    pub fn routes(&self) -> arc_swap::Guard<Arc<RouteTable<RouteTarget>>> {
        self.routes.load()
    }

    pub fn functions(&self) -> arc_swap::Guard<Arc<Functions>> {
        self.functions.load()
    }

    /// The slot a route target names: its version, or else the newest ready one (the newest
    /// of all while none is ready). So a node holding v1 while v2 loads keeps serving v1
    /// until v2 is ready: the switch is atomic.
    pub fn slot(&self, target: &RouteTarget) -> Option<Arc<VersionSlot>> {
        let functions = self.functions.load();
        let versions = functions.get(&target.function_id)?;
        match target.version {
            Some(version) => versions.get(&version).cloned(),
            None => versions
                .values()
                .rev()
                .find(|slot| slot.is_ready())
                .or_else(|| versions.values().next_back())
                .cloned(),
        }
    }

    /// The slot of one exact version, if the node holds it.
    pub fn version_slot(&self, function_id: &str, version: u64) -> Option<Arc<VersionSlot>> {
        self.functions
            .load()
            .get(function_id)?
            .get(&version)
            .cloned()
    }

    /// Every version the node has, with its state, for heartbeats.
    pub fn inventory(&self) -> Vec<edgefn_proto::sync::InventoryItem> {
        let functions = self.functions();
        let mut items = Vec::new();
        for (id, versions) in functions.iter() {
            for (version, slot) in versions {
                use edgefn_proto::sync::ItemState;
                let (state, error) = match slot.state() {
                    VersionState::Loading => (ItemState::InProgress, None),
                    VersionState::Ready(_) => (ItemState::Ready, None),
                    VersionState::Failed(message) => (ItemState::Failed, Some(message)),
                };
                items.push(edgefn_proto::sync::InventoryItem {
                    function_id: id.clone(),
                    version: *version,
                    state,
                    error,
                });
            }
        }
        items.sort_by(|a, b| (&a.function_id, a.version).cmp(&(&b.function_id, b.version)));
        items
    }

    /// Waits until every version the node holds has settled, at most until `deadline`.
    /// Returns whether all settled.
    pub async fn wait_settled(&self, deadline: Instant) -> bool {
        let functions = self.functions.load_full();
        for slot in functions.values().flat_map(BTreeMap::values) {
            if slot.settled(deadline).await.is_none() {
                return false;
            }
        }
        true
    }

    /// Whether every desired version has settled (ready or failed).
    pub fn settled(&self) -> bool {
        self.functions
            .load()
            .values()
            .flat_map(BTreeMap::values)
            .all(|s| !matches!(s.state(), VersionState::Loading))
    }

    /// Makes the node serve `manifest`: versions no longer wanted are dropped (their pools
    /// destroyed), new ones are loaded in the background, and the route table is swapped in
    /// one step. Versions already present with the same entry are kept as they are.
    pub fn reconcile(self: &Arc<Self>, manifest: &NodeSpec) {
        self.quotas.apply(&manifest.quotas);
        let entries = crate::share::apply(&manifest.functions, self.share, |tenant| {
            self.quotas.pool_share(tenant)
        });
        let current = self.functions.load_full();
        let mut next = Functions::new();
        for entry in &entries {
            let existing = current
                .get(&entry.id)
                .and_then(|v| v.get(&entry.version))
                .filter(|s| s.entry == *entry);
            let slot = match existing {
                Some(slot) => {
                    // A new desired state (or manifest) is the explicit retry of a version
                    // that failed to compile, at most once a minute.
                    if slot
                        .compile_failed
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        self.start_retry(slot, RETRY_COMPILE_AFTER);
                    }
                    slot.clone()
                }
                None => {
                    let slot = Arc::new(VersionSlot {
                        hot: SlotHandles::new(self, entry),
                        entry: entry.clone(),
                        state: watch::Sender::new(VersionState::Loading),
                        last_attempt: std::sync::Mutex::new(Instant::now()),
                        compile_failed: std::sync::atomic::AtomicBool::new(false),
                    });
                    let node = self.clone();
                    let loading = slot.clone();
                    tokio::spawn(async move { node.load_version(&loading).await });
                    slot
                }
            };
            next.entry(entry.id.clone())
                .or_default()
                .insert(entry.version, slot);
        }
        match RouteTable::new(manifest.routes.clone()) {
            Ok(table) => {
                self.functions.store(Arc::new(next));
                self.routes.store(Arc::new(table));
            }
            // Manifests are validated on load; a table that still fails keeps the old state.
            Err((index, error)) => tracing::error!(route = index, %error, "refusing a route table"),
        }
    }

    /// A request found `slot` failed (its artifact missing, its source down): try loading it
    /// again unless an attempt started less than [`RETRY_FAILED_AFTER`] ago. Returns whether
    /// a new attempt started; the caller then waits for it within its own deadline.
    pub fn retry_failed(self: &Arc<Self>, slot: &Arc<VersionSlot>) -> bool {
        if slot
            .compile_failed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        self.start_retry(slot, RETRY_FAILED_AFTER)
    }

    /// Loads a failed `slot` again unless an attempt started less than `after` ago.
    fn start_retry(self: &Arc<Self>, slot: &Arc<VersionSlot>, after: std::time::Duration) -> bool {
        {
            let mut last = slot.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < after || !matches!(slot.state(), VersionState::Failed(_)) {
                return false;
            }
            *last = Instant::now();
            slot.state.send_replace(VersionState::Loading);
        }
        let node = self.clone();
        let slot = slot.clone();
        tokio::spawn(async move { node.load_version(&slot).await });
        true
    }

    async fn load_version(&self, slot: &VersionSlot) {
        let entry = &slot.entry;
        let state = match self.load_function(entry, slot).await {
            Ok(function) => {
                tracing::info!(function_id = %entry.id, version = entry.version, "function ready");
                VersionState::Ready(function)
            }
            Err(LoadFailure { message, compile }) => {
                tracing::error!(function_id = %entry.id, version = entry.version, error = %message, "function failed to load");
                slot.compile_failed
                    .store(compile, std::sync::atomic::Ordering::Relaxed);
                VersionState::Failed(message)
            }
        };
        slot.state.send_replace(state);
    }

    /// Cached artifact, or fetched into the cache; then loaded. A cached file that fails its
    /// hash check at load is deleted and fetched once more. With a baseline runtime and no
    /// Cranelift code at hand, Winch code serves `slot` while the Cranelift code is made;
    /// if that then fails, the Winch code keeps serving.
    async fn load_function(
        &self,
        entry: &FunctionEntry,
        slot: &VersionSlot,
    ) -> Result<Function, LoadFailure> {
        let mut baseline_function: Option<Function> = None;
        for attempt in 0..2 {
            let (path, sha256) = match self.cache.get(&entry.id, entry.version) {
                Some(cached) if entry.sha256.as_ref().is_none_or(|s| *s == cached.1) => cached,
                _ => self
                    .fetch_into_cache(entry)
                    .await
                    .map_err(|message| LoadFailure {
                        message,
                        compile: false,
                    })?,
            };
            self.cache.touch(&entry.id, entry.version);
            let has_code = self.runtime.has_precompiled(&path, &sha256);
            let spec = LoadSpec {
                function_id: entry.id.clone(),
                version: entry.version,
                artifact: path,
                sha256: Some(sha256),
                settings: entry.settings.clone(),
                share: edgefn_runtime::PoolShare {
                    tenant: entry.tenant.as_str().into(),
                    slots: crate::share::tenant_slots(
                        self.share,
                        self.quotas.pool_share(&entry.tenant),
                    ),
                },
            };
            if let Some(baseline) = self.baseline.get()
                && !has_code
                && baseline_function.is_none()
            {
                let started = Instant::now();
                match baseline.load(spec.clone()).await {
                    Ok(function) => {
                        tracing::info!(function_id = %entry.id, version = entry.version, load_ms = started.elapsed().as_millis() as u64, "serving Winch code while the Cranelift code is made");
                        self.metrics.baseline_loads.inc();
                        slot.state
                            .send_replace(VersionState::Ready(function.clone()));
                        baseline_function = Some(function);
                    }
                    Err(error) => {
                        tracing::warn!(function_id = %entry.id, version = entry.version, %error, "Winch could not load it; waiting for Cranelift")
                    }
                }
            }
            if matches!(entry.source, crate::spec::ArtifactSource::Url(_)) && !has_code {
                let wasm_sha256 = spec.sha256.as_deref().unwrap_or_default();
                self.precompiled_from_control_plane(entry, &spec.artifact, wasm_sha256)
                    .await;
            }
            match self.runtime.load(spec).await {
                Ok(function) => return Ok(function),
                Err(error) if baseline_function.is_some() => {
                    tracing::error!(function_id = %entry.id, version = entry.version, %error, "no Cranelift code; the Winch code keeps serving");
                    if let Some(function) = baseline_function.take() {
                        return Ok(function);
                    }
                }
                Err(error @ RuntimeError::Sha256Mismatch { .. }) if attempt == 0 => {
                    tracing::error!(function_id = %entry.id, version = entry.version, %error, "cached artifact is corrupt; fetching again");
                    self.metrics.corrupt_artifacts.inc();
                    self.cache.remove(&entry.id, entry.version);
                }
                Err(error) => {
                    // Invalid bytes and compile limits fail the same way every time; an
                    // internal error (a full disk, say) may not.
                    // (A hash mismatch is the store's fault: retried like a failed fetch.)
                    let compile = matches!(
                        error,
                        RuntimeError::InvalidArtifact { .. } | RuntimeError::InvalidSettings { .. }
                    );
                    return Err(LoadFailure {
                        message: error.to_string(),
                        compile,
                    });
                }
            }
        }
        Err(LoadFailure {
            message: "artifact stayed corrupt after a fresh fetch".into(),
            compile: false,
        })
    }

    /// Gets the control plane's native code for the artifact, if it has (or is making)
    /// some for this node's engine, and installs it once its attestation holds. Whatever
    /// goes wrong, the load compiles here instead.
    async fn precompiled_from_control_plane(
        &self,
        entry: &FunctionEntry,
        path: &std::path::Path,
        sha256: &str,
    ) {
        use crate::fetch::PrecompiledReply;
        use crate::metrics::PrecompiledLabels;
        let engine = self.runtime.engine_identity();
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let deadline = Instant::now() + self.runtime.compile_time_limit(size);
        let started = Instant::now();
        let outcome = match self
            .fetcher
            .fetch_precompiled(sha256, &engine, deadline)
            .await
        {
            PrecompiledReply::Unavailable(reason) => {
                tracing::info!(function_id = %entry.id, version = entry.version, %reason, "no precompiled code from the control plane; compiling here");
                "unavailable"
            }
            PrecompiledReply::Code {
                native,
                attestation,
                signing_key,
            } => {
                let bytes = native.len();
                // Hashing and writing tens of MB: off the async workers.
                let (runtime, path, sha256, engine_hash) = (
                    self.runtime.clone(),
                    path.to_path_buf(),
                    sha256.to_string(),
                    engine.hash.clone(),
                );
                let checked = tokio::task::spawn_blocking(move || {
                    crate::precompiled::verify(
                        &attestation,
                        &signing_key,
                        &sha256,
                        &engine_hash,
                        &native,
                    )
                    .and_then(|native_sha| {
                        runtime
                            .install_precompiled(&path, &sha256, &native, &native_sha)
                            .map_err(|e| e.to_string())
                    })
                })
                .await
                .unwrap_or_else(|e| Err(format!("the check was cut short: {e}")));
                match checked {
                    Ok(()) => {
                        tracing::info!(function_id = %entry.id, version = entry.version, bytes, wait_ms = started.elapsed().as_millis() as u64, "precompiled code from the control plane verified");
                        "downloaded"
                    }
                    Err(reason) => {
                        tracing::error!(function_id = %entry.id, version = entry.version, %reason, "precompiled code from the control plane refused; compiling here");
                        "refused"
                    }
                }
            }
        };
        self.metrics
            .precompiled
            .get_or_create(&PrecompiledLabels { outcome })
            .inc();
    }

    async fn fetch_into_cache(
        &self,
        entry: &FunctionEntry,
    ) -> Result<(std::path::PathBuf, String), String> {
        let bytes = self
            .fetcher
            .fetch(&entry.source, None)
            .await
            .map_err(|e| e.to_string())?;
        let cache = self.cache.clone();
        let (id, version, expected) = (entry.id.clone(), entry.version, entry.sha256.clone());
        let (before, _) = cache.usage();
        let inserted = tokio::task::spawn_blocking(move || {
            cache.insert(&id, version, &bytes, expected.as_deref())
        })
        .await
        .map_err(|e| e.to_string())?;
        match inserted {
            Ok(inserted) => {
                let (after, _) = self.cache.usage();
                if after < before {
                    self.metrics.cache_evictions.inc();
                }
                Ok(inserted)
            }
            Err(CacheError::Sha256Mismatch { expected, actual }) => Err(format!(
                "sha256 mismatch: expected {expected}, downloaded {actual}"
            )),
            Err(error) => Err(error.to_string()),
        }
    }

    /// Brings gauges and runtime-derived counters up to date before a scrape.
    pub fn refresh_metrics(&self) {
        let metrics = &self.metrics;
        let mut ready = 0;
        let mut dropped_logs: HashMap<&str, u64> = HashMap::new();
        let mut per_function: HashMap<String, (i64, i64, u64, u64)> = HashMap::new();
        let functions = self.functions.load();
        for (id, versions) in functions.iter() {
            for slot in versions.values() {
                if let VersionState::Ready(function) = slot.state() {
                    ready += 1;
                    let stats = function.pool_stats();
                    let totals = per_function.entry(id.clone()).or_default();
                    totals.0 += stats.busy_instances as i64;
                    totals.1 += stats.idle_instances as i64;
                    totals.2 += stats.evictions;
                    totals.3 += stats.reused_instance_failures;
                    dropped_logs.insert(id, self.runtime.dropped_logs(id));
                }
            }
        }
        metrics.functions_ready.set(ready);
        for (id, (busy, idle, evictions, reused_failures)) in per_function {
            let labels = FunctionLabels {
                function_id: id.clone(),
            };
            metrics.hot_instances.get_or_create(&labels).set(busy);
            metrics.idle_instances.get_or_create(&labels).set(idle);
            metrics.advance(
                &metrics.instance_evictions.get_or_create(&labels),
                "instance_evictions",
                &id,
                evictions,
            );
            metrics.advance(
                &metrics.reused_instance_failures.get_or_create(&labels),
                "reused_instance_failures",
                &id,
                reused_failures,
            );
        }
        for (id, dropped) in dropped_logs {
            let labels = FunctionLabels {
                function_id: id.to_string(),
            };
            metrics.advance(
                &metrics.guest_logs_dropped.get_or_create(&labels),
                "guest_logs_dropped",
                id,
                dropped,
            );
        }
    }
}
