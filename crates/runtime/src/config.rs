//! What the operator configures once per node ([`RuntimeConfig`]) and what each function
//! version declares ([`FunctionSettings`]). Defaults are chosen here, each with its reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::logging::LogSink;
use crate::outbound::Network;

/// Size of one WebAssembly page.
pub const WASM_PAGE: u64 = 64 * 1024;

/// Node-wide settings of the runtime.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Compile with Winch, Wasmtime's baseline compiler, instead of Cranelift (default
    /// off): about 4× faster to compile, slower to run. A runner with `--winch-first`
    /// keeps a second runtime like this to answer with a new version within about a second
    /// while its Cranelift code is made.
    pub winch: bool,
    /// The largest `memory_pages` any function may ask for (default 4,096 pages = 256 MiB).
    /// This also sizes the pooling allocator's memory slots.
    pub max_memory_pages: u64,
    /// Node-wide budget for the linear memory held by hot instances (default 4 GiB).
    pub memory_budget_bytes: u64,
    /// Fraction of the budget above which idle instances are destroyed, least recently
    /// used first (default 0.8).
    pub memory_high_watermark: f64,
    /// Concurrent instances the pooling allocator reserves slots for (default 1,000). Each
    /// slot is virtual address space only until it is used.
    pub pool_instances: u32,
    /// Largest artifact accepted (default 50 MiB).
    pub max_artifact_bytes: u64,
    /// How compilation of untrusted code is bounded (default: in this process, time only).
    pub compiler: CompilerConfig,
    /// Count instructions with fuel as well as wall-clock epochs (default off: epochs
    /// already stop runaway guests and cost far less).
    pub fuel: Option<u64>,
    /// Bytes at the start of each linear-memory slot that stay resident between instances
    /// and are zeroed with memset on reuse, instead of being handed back to the kernel
    /// (memset costs time for every instance; giving pages back costs a page fault on each
    /// first touch of the next one). Measured per value in `bench/RESULTS.md`.
    pub pool_memory_keep_resident_bytes: usize,
    /// Largest request body passed to a guest (default 16 MiB).
    pub max_request_body_bytes: u64,
    /// Largest response body accepted from a guest (default 16 MiB).
    pub max_response_body_bytes: u64,
    /// Guest log records accepted per second per function; the excess is dropped and
    /// counted (default 1,000).
    pub log_records_per_second: u32,
    /// Where guest logs go.
    pub log_sink: Arc<dyn LogSink>,
    /// Networks outbound HTTP may reach besides public addresses; empty by default.
    /// Operators (and tests, for loopback) list internal services here.
    pub outbound_allowed_networks: Vec<Network>,
    /// Open outbound connections of all instances of one function version on the node
    /// (default 256): one function cannot use up the node's sockets.
    pub outbound_connections_per_function: usize,
    /// Open outbound connections of one instance (default 16).
    pub outbound_connections_per_instance: usize,
    /// How often the idle sweeper looks for expired instances (default 1 s).
    pub sweep_interval: Duration,
    /// Where the node's edge databases are (`{state_dir}/db`); grants name files in it.
    /// `None`: no function can open a database.
    pub database_dir: Option<PathBuf>,
}

impl RuntimeConfig {
    /// Defaults that suit a small node, writing guest logs to `log_sink`.
    pub fn new(log_sink: Arc<dyn LogSink>) -> Self {
        Self {
            winch: false,
            max_memory_pages: 4096,
            memory_budget_bytes: 4 << 30,
            memory_high_watermark: 0.8,
            pool_instances: 1000,
            max_artifact_bytes: 50 << 20,
            compiler: CompilerConfig::default(),
            fuel: None,
            // 64 KiB: instantiate + destroy 7.3 µs, against 11.3 µs with nothing kept (page
            // faults) and 15 µs with 1 MiB (memset of pages never touched); hello component.
            pool_memory_keep_resident_bytes: 64 << 10,
            max_request_body_bytes: 16 << 20,
            max_response_body_bytes: 16 << 20,
            log_records_per_second: 1000,
            log_sink,
            outbound_allowed_networks: Vec::new(),
            outbound_connections_per_function: crate::outbound::MAX_CONNECTIONS_PER_FUNCTION,
            outbound_connections_per_instance: crate::outbound::MAX_CONNECTIONS_PER_INSTANCE,
            sweep_interval: Duration::from_secs(1),
            database_dir: None,
        }
    }
}

/// Where and under which limits untrusted artifacts are compiled. Wasmtime treats denial
/// of service during compilation as out of scope, so a huge or deeply nested module must
/// be stopped by us.
#[derive(Clone, Debug)]
pub struct CompilerConfig {
    /// `None`: compile on a blocking thread of this process (bounded in time only: a
    /// compilation past the limit is abandoned and its result discarded).
    /// `Some(program)`: run `program compile-worker ...` (see [`crate::compile_worker`])
    /// under rlimits on address space and CPU time, killed at the wall-clock limit.
    pub worker_program: Option<PathBuf>,
    /// Arguments placed before the worker's own (e.g. a hidden subcommand).
    pub worker_args: Vec<String>,
    /// Wall-clock limit for compiling a small artifact (default 30 s); larger ones get
    /// [`CompilerConfig::TIME_PER_MIB`] more per MiB (see [`CompilerConfig::limits_for`]).
    pub timeout: Duration,
    /// Address-space limit of the worker process for a small artifact (default 4 GiB),
    /// plus [`CompilerConfig::MEMORY_PER_MIB`] per MiB.
    pub max_memory_bytes: u64,
    /// Compilations at once (default half the cores, at least one): compiling a large
    /// component takes a core for seconds, and requests of the functions already loaded
    /// need the rest. Others wait their turn (their wait counts in the wall-clock limit).
    pub max_concurrent: usize,
    /// Directory of Cranelift's incremental compilation cache, shared by the workers
    /// (`None`: off). Functions that embed the same engine (every JavaScript or Python
    /// function of a toolchain) then compile mostly from it.
    pub incremental_cache: Option<PathBuf>,
    /// The cache's size limit in bytes (trimmed, oldest use first, when a worker starts).
    pub incremental_cache_bytes: u64,
}

impl CompilerConfig {
    /// Extra wall-clock time per MiB of artifact. Measured (bench/RESULTS.md): Cranelift
    /// needs about 1.2 s of CPU (0.6 s of wall clock on 2 cores) per MiB of a
    /// componentize-js component; 3 s leaves room for a busy node.
    pub const TIME_PER_MIB: Duration = Duration::from_secs(3);
    /// Extra address space per MiB of artifact (Cranelift's peak grows with function count).
    pub const MEMORY_PER_MIB: u64 = 128 << 20;

    /// The limits for compiling an artifact of `artifact_bytes`: the configured ones for
    /// artifacts up to 1 MiB, growing with size, so that a 20 MiB Python component gets
    /// 90 s and 6.5 GiB by default while a tiny hostile module still gets only 30 s.
    pub fn limits_for(&self, artifact_bytes: u64) -> (Duration, u64) {
        let extra_mib = u32::try_from((artifact_bytes >> 20).saturating_sub(1)).unwrap_or(u32::MAX);
        (
            self.timeout
                .saturating_add(Self::TIME_PER_MIB.saturating_mul(extra_mib)),
            self.max_memory_bytes
                .saturating_add(Self::MEMORY_PER_MIB.saturating_mul(u64::from(extra_mib))),
        )
    }
}

impl Default for CompilerConfig {
    fn default() -> Self {
        Self {
            worker_program: None,
            worker_args: Vec::new(),
            timeout: Duration::from_secs(30),
            max_memory_bytes: 4 << 30,
            max_concurrent: (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2)
                .max(1),
            incremental_cache: None,
            incremental_cache_bytes: 1 << 30,
        }
    }
}

/// Requests a reused instance serves before it is recycled, when the function does not say:
/// a reused instance answers in ~1/10 of the time of a fresh one (see bench/RESULTS.md);
/// state may carry over between requests of the *same* version only, as with Workers
/// isolates. Functions that must not share state set 1.
pub const DEFAULT_INSTANCE_REUSE: u32 = 1000;

/// Per-version settings, with the names of the control plane's API.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSettings {
    /// Export to call: `None` means the `wasi:http` handler for components and `_start`
    /// for preview 1 modules.
    pub entrypoint: Option<String>,
    /// Linear memory limit in 64 KiB pages.
    pub memory_pages: u64,
    /// Wall-clock limit of one invocation.
    pub max_execution_ms: u64,
    /// Hosts outbound HTTP may reach: exact names (`api.example.com`, optionally with
    /// `:port`) or wildcards (`*.example.com`).
    pub allowed_outbound_hosts: Vec<String>,
    /// Environment variables the guest sees (nothing of the host's).
    pub env: Vec<(String, String)>,
    /// Instances kept warm even when idle.
    pub min_hot_instances: u32,
    /// Instances of this version that may run at once; more requests wait.
    pub max_hot_instances: u32,
    /// Requests one instance may serve before it is recycled (1 = fresh per request).
    /// `None`: [`DEFAULT_INSTANCE_REUSE`] for components of a toolchain known to tolerate
    /// reuse ([`crate::Toolchain::tolerates_reuse`]), a fresh instance per request for the
    /// rest. A number is the developer's explicit choice and is used as given.
    pub instance_reuse: Option<u32>,
    /// Idle instances above `min_hot_instances` are destroyed after this long.
    pub idle_timeout: Duration,
    /// The edge databases the function may open (none by default).
    pub databases: Vec<SqlGrant>,
}

/// A database a function may open through `edgefn:sql`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlGrant {
    /// The name the guest opens it by.
    pub name: String,
    /// The file, relative to [`RuntimeConfig::database_dir`].
    pub file: PathBuf,
    pub read_only: bool,
    /// The schema sequence the function needs (`schema-behind` below it).
    pub required_seq: u64,
}

impl Default for FunctionSettings {
    fn default() -> Self {
        Self {
            entrypoint: None,
            memory_pages: 256,
            max_execution_ms: 10_000,
            allowed_outbound_hosts: Vec::new(),
            env: Vec::new(),
            min_hot_instances: 1,
            max_hot_instances: 16,
            instance_reuse: None,
            idle_timeout: Duration::from_secs(300),
            databases: Vec::new(),
        }
    }
}
