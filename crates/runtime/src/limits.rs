//! Hard limits of one instance: linear memory and tables (a [`ResourceLimiter`]), the
//! per-request deadline (epoch interruption), and the CPU time a call really used.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, Store, UpdateDeadline};

/// Engine epoch tick. The deadline check runs at every tick of guest execution, so a guest
/// in a tight loop overshoots its limit by at most about one tick; at each tick it also
/// yields to the async executor so one busy guest cannot hold a worker thread. 5 ms keeps
/// the ticker's wake-ups cheap (200/s) and the overshoot far below the 100 ms goal.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest table (in elements) a guest may grow to; Rust and C guests use a few hundred.
const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Core instances, tables and memories one store may create; a component built from Rust
/// has fewer than ten instances and one memory.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 4;

/// Per-store limiter state, also the record of what the last call hit.
pub(crate) struct GuestLimits {
    max_memory_bytes: usize,
    /// Sum of the current sizes of the store's linear memories.
    pub(crate) memory_bytes: usize,
    /// Set when the guest asked for more memory than allowed.
    pub(crate) memory_limit_hit: bool,
    /// When the current call must end.
    pub(crate) deadline: Instant,
    /// Set by the epoch callback when it stopped the guest at its deadline.
    pub(crate) timed_out: bool,
}

impl GuestLimits {
    pub(crate) fn new(max_memory_bytes: usize) -> Self {
        Self {
            max_memory_bytes,
            memory_bytes: 0,
            memory_limit_hit: false,
            deadline: Instant::now() + Duration::from_secs(3600),
            timed_out: false,
        }
    }

    pub(crate) fn begin_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.timed_out = false;
        self.memory_limit_hit = false;
    }
}

/// Returned (as a trap) when a guest grows memory past its limit.
#[derive(Debug, thiserror::Error)]
#[error("memory limit exceeded")]
pub(crate) struct MemoryLimitExceeded;

impl ResourceLimiter for GuestLimits {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory_bytes {
            self.memory_limit_hit = true;
            // Trap instead of returning -1 from `memory.grow`: guests almost always abort on
            // allocation failure anyway, and a trap names the cause precisely.
            return Err(wasmtime::Error::new(MemoryLimitExceeded));
        }
        self.memory_bytes += desired.saturating_sub(current);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_limit_hit = true;
        Err(wasmtime::Error::new(MemoryLimitExceeded))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Gives a store's data access to its limits.
pub(crate) trait HasLimits: Send + 'static {
    fn limits(&mut self) -> &mut GuestLimits;
}

/// Installs the limiter and the deadline check on a new store.
pub(crate) fn install<T: HasLimits>(store: &mut Store<T>, fuel: Option<u64>) {
    store.limiter(|data| data.limits());
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut context| {
        let limits = context.data_mut().limits();
        if Instant::now() >= limits.deadline {
            limits.timed_out = true;
            Ok(UpdateDeadline::Interrupt)
        } else {
            Ok(UpdateDeadline::Yield(1))
        }
    });
    if let Some(fuel) = fuel {
        // Fuel is only on when the engine was built with it; ignore the error otherwise.
        let _ = store.set_fuel(fuel);
    }
}

pin_project_lite::pin_project! {
    /// A future that adds the time spent inside each of its polls to `spent`. A guest runs
    /// on a fiber inside `poll`, so this is the time the guest (and the host functions it
    /// called) ran, never the time it waited for I/O, a timer or a free instance.
    ///
    /// Why not the thread's CPU clock: `CLOCK_THREAD_CPUTIME_ID` is a real system call that
    /// takes the scheduler's run-queue lock; read around every poll it cost 7% of a node's
    /// CPU under load (bench/RESULTS.md). The monotonic clock is read in user space (vDSO).
    /// The difference is preemption in the middle of a poll, which counts here although the
    /// guest did not run — rare, and bounded by the scheduler's time slice.
    pub(crate) struct CpuTimed<F> {
        #[pin]
        inner: F,
        spent: Duration,
    }
}

impl<F> CpuTimed<F> {
    pub(crate) fn new(inner: F) -> Self {
        Self {
            inner,
            spent: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for CpuTimed<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let start = std::time::Instant::now();
        let poll = this.inner.poll(cx);
        *this.spent += start.elapsed();
        poll.map(|output| (output, *this.spent))
    }
}
