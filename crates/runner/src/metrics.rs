//! Every metric of the runner, with Prometheus names and help texts. Labels are function
//! ids, error codes and tenants, never raw URIs.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    pub function_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub function_id: String,
    pub error_code: String,
}

/// What became of a request for the control plane's precompiled code: `downloaded`
/// (verified and installed), `refused` (signature or hashes did not hold: never mapped),
/// `unavailable` (the control plane had none; compiled here).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrecompiledLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub tenant: String,
    pub reason: String,
}

/// Latency buckets from 10 µs to 10 s: a hot call takes microseconds, a slow guest seconds.
const LATENCY_BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    pub invocations: Family<FunctionLabels, Counter>,
    pub latency: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<ErrorLabels, Counter>,
    /// Failed invocations per function whatever the code (not exported: the sum of
    /// `errors`; heartbeats report it).
    pub failures: Family<FunctionLabels, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_evictions: Counter,
    pub corrupt_artifacts: Counter,
    pub cold_starts: Family<FunctionLabels, Counter>,
    pub hot_instances: Family<FunctionLabels, Gauge>,
    pub idle_instances: Family<FunctionLabels, Gauge>,
    pub instance_evictions: Family<FunctionLabels, Counter>,
    pub reused_instance_failures: Family<FunctionLabels, Counter>,
    pub precompiled: Family<PrecompiledLabels, Counter>,
    /// Versions served first from Winch code (`--winch-first`).
    pub baseline_loads: Counter,
    pub guest_logs_dropped: Family<FunctionLabels, Counter>,
    pub quota_rejections: Family<QuotaLabels, Counter>,
    pub functions_ready: Gauge,
    /// Last cumulative values read from the runtime, to turn them into counter increments.
    last_seen: Mutex<HashMap<(&'static str, String), u64>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let metrics = Self {
            invocations: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            errors: Family::default(),
            failures: Family::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            corrupt_artifacts: Counter::default(),
            cold_starts: Family::default(),
            hot_instances: Family::default(),
            idle_instances: Family::default(),
            instance_evictions: Family::default(),
            reused_instance_failures: Family::default(),
            precompiled: Family::default(),
            baseline_loads: Counter::default(),
            guest_logs_dropped: Family::default(),
            quota_rejections: Family::default(),
            functions_ready: Gauge::default(),
            last_seen: Mutex::new(HashMap::new()),
            registry: Registry::default(),
        };
        // `prometheus-client` appends `_total` to counters.
        registry.register(
            "wasm_invoke_count",
            "Invocations of a function",
            metrics.invocations.clone(),
        );
        registry.register(
            "wasm_invoke_latency_seconds",
            "Time from routing a request to its complete response",
            metrics.latency.clone(),
        );
        registry.register(
            "wasm_invoke_errors",
            "Failed invocations by error code",
            metrics.errors.clone(),
        );
        registry.register(
            "wasm_cache_hits",
            "Requests whose artifact was ready",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "wasm_cache_misses",
            "Requests that had to wait for an artifact",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "wasm_cache_evictions",
            "Artifacts evicted from the cache",
            metrics.cache_evictions.clone(),
        );
        registry.register(
            "wasm_cache_corrupt_artifacts",
            "Cached artifacts deleted because their SHA-256 did not match",
            metrics.corrupt_artifacts.clone(),
        );
        registry.register(
            "wasm_cold_starts",
            "Requests that needed a new instance",
            metrics.cold_starts.clone(),
        );
        registry.register(
            "wasm_hot_instances",
            "Instances running a request",
            metrics.hot_instances.clone(),
        );
        registry.register(
            "wasm_idle_instances",
            "Instances waiting for a request",
            metrics.idle_instances.clone(),
        );
        registry.register(
            "wasm_instance_evictions",
            "Idle instances destroyed by idle expiry, memory pressure or another tenant's need for a slot",
            metrics.instance_evictions.clone(),
        );
        registry.register(
            "wasm_reused_instance_failures",
            "Requests that failed on a reused instance (the instance was dropped; a guest that fails this way should not be reused)",
            metrics.reused_instance_failures.clone(),
        );
        registry.register(
            "wasm_precompiled_code",
            "Requests for the control plane's precompiled code, by outcome",
            metrics.precompiled.clone(),
        );
        registry.register(
            "wasm_baseline_loads",
            "Versions served first from Winch code while their Cranelift code was made",
            metrics.baseline_loads.clone(),
        );
        registry.register(
            "wasm_guest_logs_dropped",
            "Guest log records dropped by the per-function rate limit",
            metrics.guest_logs_dropped.clone(),
        );
        registry.register(
            "wasm_quota_rejections",
            "Requests refused by a tenant quota",
            metrics.quota_rejections.clone(),
        );
        registry.register(
            "wasm_functions_ready",
            "Function versions loaded and serving",
            metrics.functions_ready.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Adds to a counter the growth of a cumulative value read from elsewhere.
    pub fn advance(&self, counter: &Counter, name: &'static str, key: &str, cumulative: u64) {
        let mut last_seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        let last = last_seen.entry((name, key.to_string())).or_insert(0);
        if cumulative > *last {
            counter.inc_by(cumulative - *last);
        }
        *last = cumulative;
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(%error, "cannot encode metrics");
        }
        text
    }
}
