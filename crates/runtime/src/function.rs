//! A loaded function version and one invocation of it: take a hot instance (or create
//! one), run the request under its deadline, collect the response, and decide whether the
//! instance may serve again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use wasmtime::{Store, Trap};
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::RuntimeError;
use crate::artifact::{ArtifactKind, Toolchain};
use crate::config::{FunctionSettings, WASM_PAGE};
use crate::limits::{CpuTimed, GuestLimits, MemoryLimitExceeded};
use crate::logging::{GuestLogger, LogBudget};
use crate::outbound::OutboundPolicy;
use crate::pool::{HotInstance, VersionPool};
use crate::shared::RuntimeInner;
use crate::state::{CgiState, ComponentState};

/// Compiled, linked code of a version.
pub(crate) enum Code {
    Component(ProxyPre<ComponentState>),
    Module {
        pre: wasmtime::InstancePre<CgiState>,
        entrypoint: String,
    },
}

/// A function version ready to serve. Cheap to clone; the pool lives as long as a clone.
#[derive(Clone)]
pub struct Function {
    pub(crate) inner: Arc<FunctionInner>,
}

pub(crate) struct FunctionInner {
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) id: Arc<str>,
    pub(crate) version: u64,
    pub(crate) kind: ArtifactKind,
    pub(crate) toolchain: Toolchain,
    /// Requests one instance serves: the setting, or what the toolchain tolerates.
    pub(crate) instance_reuse: u32,
    pub(crate) sha256: String,
    pub(crate) settings: FunctionSettings,
    pub(crate) code: Code,
    pub(crate) pool: Arc<VersionPool>,
    pub(crate) outbound: Arc<OutboundPolicy>,
    pub(crate) log_budget: Arc<LogBudget>,
    /// Connection pools of the databases the settings grant.
    pub(crate) sql: Arc<crate::sql::SqlGrants>,
    /// A replacement for a retired instance is being made in the background.
    pub(crate) refilling: AtomicBool,
}

impl Drop for FunctionInner {
    fn drop(&mut self) {
        self.pool.clear();
    }
}

/// Per-request facts the caller provides.
#[derive(Clone, Debug, Default)]
pub struct InvokeContext {
    /// Attached to the guest's log records.
    pub request_id: Option<Arc<str>>,
    /// An earlier end than `max_execution_ms` (e.g. the client's own deadline).
    pub deadline: Option<Instant>,
}

/// The outcome of a successful invocation.
#[derive(Debug)]
pub struct Invocation {
    pub response: http::Response<Bytes>,
    /// From taking an instance to the last byte of the response.
    pub wall_time: Duration,
    /// Time spent running the guest and the host functions it called, excluding every wait
    /// (see `limits::CpuTimed`): the figure per-tenant CPU quotas use.
    pub cpu_time: Duration,
    /// Whether a new instance had to be created for this request.
    pub cold_start: bool,
}

/// Counters of one version's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub idle_instances: usize,
    /// Instances running a request right now.
    pub busy_instances: usize,
    pub idle_memory_bytes: u64,
    pub cold_starts: u64,
    pub evictions: u64,
    /// Requests that failed on an instance that had served before (it was dropped).
    pub reused_instance_failures: u64,
}

impl Function {
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub fn version(&self) -> u64 {
        self.inner.version
    }

    pub fn kind(&self) -> ArtifactKind {
        self.inner.kind
    }

    /// SHA-256 of the artifact, verified at load.
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    pub fn settings(&self) -> &FunctionSettings {
        &self.inner.settings
    }

    /// The toolchain that made the artifact, as far as its custom sections tell.
    pub fn toolchain(&self) -> Toolchain {
        self.inner.toolchain
    }

    /// Requests one instance serves before it is recycled (1: a fresh instance each).
    pub fn instance_reuse(&self) -> u32 {
        self.inner.instance_reuse
    }

    pub fn pool_stats(&self) -> PoolStats {
        let pool = &self.inner.pool;
        PoolStats {
            idle_instances: pool.idle_count(),
            busy_instances: self.inner.settings.max_hot_instances as usize
                - pool.permits.available_permits(),
            idle_memory_bytes: pool.idle_memory(),
            cold_starts: pool.cold_starts.load(Ordering::Relaxed),
            evictions: pool.evictions.load(Ordering::Relaxed),
            reused_instance_failures: pool.reused_instance_failures.load(Ordering::Relaxed),
        }
    }

    /// Creates `min_hot_instances` instances ahead of the first request — at least one, even
    /// when none is to be kept, so that a component that cannot start (its initial memory
    /// exceeds `memory_pages`, its start function traps) is refused at load, not on a request.
    pub(crate) async fn prewarm(&self) -> Result<(), RuntimeError> {
        if !matches!(self.inner.code, Code::Component(_)) {
            return Ok(());
        }
        let keep = self.inner.settings.min_hot_instances;
        for made in 0..keep.max(1) {
            let deadline = Instant::now() + self.limit();
            // The first instance is the check that the component starts, worth an idle
            // instance of another; pre-warming beyond it never evicts, and stops quietly
            // when the node has no slot left (requests instantiate on demand).
            let instance = match self.instantiate(deadline, made == 0).await {
                Err(RuntimeError::Overloaded) if made > 0 => break,
                other => other,
            };
            let instance = instance.map_err(|error| match error {
                RuntimeError::MemoryLimit { .. } => RuntimeError::invalid(format!(
                    "the artifact needs more memory at start than memory_pages ({}) allows",
                    self.inner.settings.memory_pages
                )),
                RuntimeError::InvalidArtifact { .. }
                | RuntimeError::Internal { .. }
                | RuntimeError::Overloaded => error,
                other => RuntimeError::invalid(format!("instantiation failed: {other}")),
            })?;
            if self.inner.pool.idle_count() < keep as usize {
                self.inner.pool.put_idle(instance);
            }
        }
        self.inner.runtime.pools.enforce(&self.inner.runtime.budget);
        Ok(())
    }

    /// Creates one instance and destroys it: the cost of a fresh instance, for benchmarks.
    #[doc(hidden)]
    pub async fn instantiate_once(&self) -> Result<(), RuntimeError> {
        let instance = self
            .instantiate(Instant::now() + self.limit(), true)
            .await?;
        drop(instance);
        Ok(())
    }

    fn limit(&self) -> Duration {
        Duration::from_millis(self.inner.settings.max_execution_ms)
    }

    fn memory_limit_bytes(&self) -> u64 {
        self.inner.settings.memory_pages * WASM_PAGE
    }

    pub(crate) fn logger(&self) -> GuestLogger {
        GuestLogger::new(
            self.inner.id.clone(),
            self.inner.version,
            self.inner.log_budget.clone(),
            self.inner.runtime.config.log_sink.clone(),
        )
    }

    pub(crate) fn new_limits(&self, deadline: Instant) -> GuestLimits {
        let mut limits = GuestLimits::new(self.memory_limit_bytes() as usize);
        limits.begin_call(deadline);
        limits
    }

    pub(crate) fn new_store<T: crate::limits::HasLimits>(&self, data: T) -> Store<T> {
        let mut store = Store::new(&self.inner.runtime.engine, data);
        crate::limits::install(&mut store, self.inner.runtime.config.fuel);
        store
    }

    /// A new instance. When every instance slot of the node is taken, `may_evict` lets it
    /// destroy an idle instance (another tenant's over its share first) and try again;
    /// without a slot it is [`RuntimeError::Overloaded`].
    async fn instantiate(
        &self,
        deadline: Instant,
        may_evict: bool,
    ) -> Result<HotInstance, RuntimeError> {
        let Code::Component(pre) = &self.inner.code else {
            return Err(RuntimeError::internal("instantiate called for a module"));
        };
        let mut evicted = false;
        loop {
            let state = ComponentState::new(
                &self.inner.settings.env,
                self.logger(),
                self.inner.outbound.clone(),
                self.new_limits(deadline),
                self.inner.sql.clone(),
            );
            let mut store = self.new_store(state);
            match pre.instantiate_async(&mut store).await {
                Ok(proxy) => {
                    self.inner.pool.cold_starts.fetch_add(1, Ordering::Relaxed);
                    return Ok(HotInstance::new(
                        store,
                        proxy,
                        self.inner.runtime.budget.clone(),
                        &self.inner.pool,
                    ));
                }
                Err(error)
                    if error
                        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                        .is_some() =>
                {
                    let tenant = self.inner.pool.tenant();
                    if evicted || !may_evict || !self.inner.runtime.pools.evict_for(tenant) {
                        return Err(RuntimeError::Overloaded);
                    }
                    evicted = true;
                }
                Err(error) => return Err(self.classify(error, &store.data().limits)),
            }
        }
    }

    /// Runs one request. The request body must already be read (the runner enforces its
    /// size limit while reading; this checks it again).
    pub async fn handle(
        &self,
        request: http::Request<Bytes>,
        context: InvokeContext,
    ) -> Result<Invocation, RuntimeError> {
        let started = Instant::now();
        let limit = self.limit();
        let deadline = context
            .deadline
            .map_or(started + limit, |d| d.min(started + limit));
        let max_body = self.inner.runtime.config.max_request_body_bytes;
        if request.body().len() as u64 > max_body {
            return Err(RuntimeError::BodyTooLarge {
                what: "request",
                limit_bytes: max_body,
            });
        }
        // Waiting for a free instance counts against the request's own deadline.
        let permit =
            match tokio::time::timeout_at(deadline.into(), self.inner.pool.permits.acquire()).await
            {
                Ok(Ok(permit)) => permit,
                _ => return Err(RuntimeError::Overloaded),
            };
        let result = match &self.inner.code {
            Code::Component(_) => self.handle_component(request, &context, deadline).await,
            Code::Module { pre, entrypoint } => {
                crate::cgi::handle(
                    self,
                    pre,
                    entrypoint,
                    request,
                    context.request_id.clone(),
                    deadline,
                )
                .await
            }
        };
        drop(permit);
        result.map(|(response, cpu_time, cold_start)| Invocation {
            response,
            wall_time: started.elapsed(),
            cpu_time,
            cold_start,
        })
    }

    async fn handle_component(
        &self,
        request: http::Request<Bytes>,
        context: &InvokeContext,
        deadline: Instant,
    ) -> Result<(http::Response<Bytes>, Duration, bool), RuntimeError> {
        let (mut instance, cold_start) = match self.inner.pool.take_idle() {
            Some(instance) => (instance, false),
            None => (self.instantiate(deadline, true).await?, true),
        };
        instance.store.data_mut().limits.begin_call(deadline);
        instance
            .store
            .data()
            .logger
            .set_request_id(context.request_id.clone());
        if let Some(fuel) = self.inner.runtime.config.fuel {
            let _ = instance.store.set_fuel(fuel);
        }
        let max_response = self.inner.runtime.config.max_response_body_bytes;
        let call = CpuTimed::new(call_handler(&mut instance, request, max_response));
        let outcome = tokio::time::timeout_at(deadline.into(), call).await;
        let (result, cpu_time) = match outcome {
            Ok((result, cpu)) => (result, cpu),
            // The guest was waiting (on I/O or for its response to be read) past its deadline.
            Err(_) => {
                let error = RuntimeError::Timeout {
                    limit: self.limit(),
                };
                self.retired(instance.uses, Some(&error));
                return Err(error);
            }
        };
        instance.store.data().logger.set_request_id(None);
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let error = match error {
                    CallError::Guest(error) => self.classify(error, &instance.store.data().limits),
                    CallError::Runtime(error) => error,
                };
                self.retired(instance.uses, Some(&error));
                return Err(error);
            }
        };
        instance.uses += 1;
        instance.account_memory();
        if instance.uses < self.inner.instance_reuse {
            self.inner.pool.put_idle(instance);
            self.inner.runtime.pools.enforce(&self.inner.runtime.budget);
        } else {
            drop(instance);
            self.retired(self.inner.instance_reuse, None);
        }
        Ok((response, cpu_time, cold_start))
    }

    /// An instance left the pool after serving `uses` requests (`failure`: the last one
    /// failed). A failure after earlier successes is what instance reuse can cause and a
    /// fresh instance would not: it is counted and logged so that an operator can see it.
    /// Then a fresh instance is made in the background, so that the next request does not
    /// pay for instantiation — a pool of fresh instances costs what reuse saves only when
    /// the node is busy.
    fn retired(&self, uses: u32, failure: Option<&RuntimeError>) {
        if let Some(error) = failure
            && uses > 0
        {
            self.inner
                .pool
                .reused_instance_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                function = %self.inner.id,
                version = self.inner.version,
                toolchain = self.inner.toolchain.as_str(),
                served_before = uses,
                %error,
                "a reused instance failed; it was dropped (set instance_reuse to 1 if this function keeps per-request state in its instance)"
            );
        }
        self.refill();
    }

    /// Makes one idle instance in the background when fewer than `min_hot_instances` are
    /// idle and no refill is under way; never evicts (a busy node serves on demand instead).
    fn refill(&self) {
        let keep = self.inner.settings.min_hot_instances as usize;
        if self.inner.pool.idle_count() >= keep || self.inner.refilling.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let function = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + function.limit();
            if let Ok(instance) = function.instantiate(deadline, false).await
                && function.inner.pool.idle_count() < keep
            {
                function.inner.pool.put_idle(instance);
                let runtime = &function.inner.runtime;
                runtime.pools.enforce(&runtime.budget);
            }
            function.inner.refilling.store(false, Ordering::Release);
        });
    }

    /// Maps an error out of Wasmtime to what happened, using what the limiter and the epoch
    /// callback recorded in the store.
    pub(crate) fn classify(&self, error: wasmtime::Error, limits: &GuestLimits) -> RuntimeError {
        if limits.memory_limit_hit || error.downcast_ref::<MemoryLimitExceeded>().is_some() {
            return RuntimeError::MemoryLimit {
                limit_bytes: self.memory_limit_bytes(),
            };
        }
        if limits.timed_out {
            return RuntimeError::Timeout {
                limit: self.limit(),
            };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt | Trap::OutOfFuel) => RuntimeError::Timeout {
                limit: self.limit(),
            },
            Some(trap) => RuntimeError::Trap {
                message: trap.to_string(),
            },
            None => RuntimeError::Trap {
                message: format!("{error:#}"),
            },
        }
    }
}

impl crate::cgi::CgiHost for Function {
    fn env(&self) -> &[(String, String)] {
        &self.inner.settings.env
    }

    fn logger(&self) -> GuestLogger {
        Function::logger(self)
    }

    fn new_limits(&self, deadline: Instant) -> GuestLimits {
        Function::new_limits(self, deadline)
    }

    fn new_store(&self, state: CgiState) -> Store<CgiState> {
        Function::new_store(self, state)
    }

    fn classify(&self, error: wasmtime::Error, limits: &GuestLimits) -> RuntimeError {
        Function::classify(self, error, limits)
    }

    fn max_response_bytes(&self) -> usize {
        self.inner.runtime.config.max_response_body_bytes as usize
    }

    fn time_limit(&self) -> Duration {
        self.limit()
    }

    fn count_cold_start(&self) {
        self.inner.pool.cold_starts.fetch_add(1, Ordering::Relaxed);
    }
}

enum CallError {
    /// The guest trapped or misbehaved; classify with the store's records.
    Guest(wasmtime::Error),
    /// Already classified.
    Runtime(RuntimeError),
}

/// Calls `wasi:http/incoming-handler.handle` and reads the whole response while the guest
/// runs, so that a guest streaming a large body never waits on a reader that is not there.
async fn call_handler(
    instance: &mut HotInstance,
    request: http::Request<Bytes>,
    max_response: u64,
) -> Result<http::Response<Bytes>, CallError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let HotInstance { store, proxy, .. } = instance;
    let request = request.map(|body| {
        Full::new(body).map_err(
            |never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} },
        )
    });
    let mut http = store.data_mut().http();
    let incoming = http
        .new_incoming_request(Scheme::Http, request)
        .map_err(CallError::Guest)?;
    let outparam = http
        .new_response_outparam(sender)
        .map_err(CallError::Guest)?;

    let call = proxy
        .wasi_http_incoming_handler()
        .call_handle(&mut *store, incoming, outparam);
    let receive = async move {
        let response = match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                return Err(CallError::Runtime(RuntimeError::Trap {
                    message: format!("guest answered with error {code:?}"),
                }));
            }
            Err(_) => {
                return Err(CallError::Runtime(RuntimeError::Trap {
                    message: "guest returned without setting a response".into(),
                }));
            }
        };
        let (mut parts, mut body) = response.into_parts();
        // The body is buffered: its real length frames the response, never the guest's
        // word for it (wasmtime-wasi-http already refuses the hop-by-hop headers).
        parts.headers.remove(http::header::CONTENT_LENGTH);
        let mut collected = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|code| {
                CallError::Runtime(RuntimeError::Trap {
                    message: format!("response body failed: {code:?}"),
                })
            })?;
            if let Ok(data) = frame.into_data() {
                if (collected.len() + data.len()) as u64 > max_response {
                    return Err(CallError::Runtime(RuntimeError::BodyTooLarge {
                        what: "response",
                        limit_bytes: max_response,
                    }));
                }
                collected.extend_from_slice(&data);
            }
        }
        Ok(http::Response::from_parts(parts, Bytes::from(collected)))
    };
    tokio::pin!(call, receive);
    tokio::select! {
        biased;
        finished = &mut call => {
            finished.map_err(CallError::Guest)?;
            receive.await
        }
        response = &mut receive => {
            let response = response?;
            // Let the guest finish its post-response work so the instance is clean to reuse.
            call.await.map_err(CallError::Guest)?;
            Ok(response)
        }
    }
}
