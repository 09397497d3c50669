//! Guest logs: `wasi:logging/logging` records and captured stdout/stderr lines become
//! [`GuestLogRecord`]s handed to the node's [`LogSink`], at most N per second per function.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "edgefn:host/logging-host",
});

use self::wasi::logging::logging::{Host, Level};

/// Severity of a guest log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// Where a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogSource {
    /// `wasi:logging/logging.log`.
    Logging,
    Stdout,
    Stderr,
}

/// One structured log record of a guest.
#[derive(Clone, Debug)]
pub struct GuestLogRecord {
    pub timestamp: SystemTime,
    pub level: LogLevel,
    pub source: LogSource,
    /// The `context` argument of `wasi:logging`, empty for stdout/stderr.
    pub context: String,
    pub message: String,
    pub function_id: Arc<str>,
    pub version: u64,
    pub request_id: Option<Arc<str>>,
}

/// Receives guest log records; the runner writes them as JSON lines.
pub trait LogSink: Send + Sync + 'static {
    fn record(&self, record: GuestLogRecord);
}

/// A sink that drops everything (for tools and benchmarks).
pub struct DiscardLogs;

impl LogSink for DiscardLogs {
    fn record(&self, _record: GuestLogRecord) {}
}

/// A sink that keeps records in memory (for tests and embedders that batch).
#[derive(Default)]
pub struct MemoryLogs(Mutex<Vec<GuestLogRecord>>);

impl MemoryLogs {
    pub fn take(&self) -> Vec<GuestLogRecord> {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl LogSink for MemoryLogs {
    fn record(&self, record: GuestLogRecord) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

/// Per-function rate limit, shared by all versions and instances of the function on this
/// node: a fixed one-second window, counting records and bytes (so a few huge records cost
/// as much as many small ones).
pub struct LogBudget {
    per_second: u32,
    bytes_per_second: u64,
    /// Window start, records and bytes in it.
    window: Mutex<(Instant, u32, u64)>,
    dropped: AtomicU64,
}

/// Bytes of records a function may log per second on a node (with the record limit).
pub const LOG_BYTES_PER_SECOND: u64 = 1 << 20;

impl LogBudget {
    pub fn new(per_second: u32) -> Self {
        Self::with_bytes(per_second, LOG_BYTES_PER_SECOND)
    }

    pub fn with_bytes(per_second: u32, bytes_per_second: u64) -> Self {
        Self {
            per_second,
            bytes_per_second,
            window: Mutex::new((Instant::now(), 0, 0)),
            dropped: AtomicU64::new(0),
        }
    }

    fn admit(&self, bytes: usize) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.0).as_secs() >= 1 {
            *window = (now, 0, 0);
        }
        if window.1 < self.per_second && window.2 + bytes as u64 <= self.bytes_per_second {
            window.1 += 1;
            window.2 += bytes as u64;
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Records dropped so far because the function logged too much.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The logging state of one instance. The request id changes with every request a reused
/// instance serves, so it is shared with the stdout/stderr streams.
#[derive(Clone)]
pub struct GuestLogger {
    function_id: Arc<str>,
    version: u64,
    request_id: Arc<Mutex<Option<Arc<str>>>>,
    budget: Arc<LogBudget>,
    sink: Arc<dyn LogSink>,
}

impl GuestLogger {
    pub(crate) fn new(
        function_id: Arc<str>,
        version: u64,
        budget: Arc<LogBudget>,
        sink: Arc<dyn LogSink>,
    ) -> Self {
        Self {
            function_id,
            version,
            request_id: Arc::default(),
            budget,
            sink,
        }
    }

    pub(crate) fn set_request_id(&self, request_id: Option<Arc<str>>) {
        *self.request_id.lock().unwrap_or_else(|e| e.into_inner()) = request_id;
    }

    fn emit(&self, level: LogLevel, source: LogSource, mut context: String, mut message: String) {
        // Bounded like stdout lines, whatever the guest passed.
        truncate_at(&mut context, MAX_LINE);
        truncate_at(&mut message, MAX_LINE);
        if !self.budget.admit(context.len() + message.len()) {
            return;
        }
        let request_id = self
            .request_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.sink.record(GuestLogRecord {
            timestamp: SystemTime::now(),
            level,
            source,
            context,
            message,
            function_id: self.function_id.clone(),
            version: self.version,
            request_id,
        });
    }

    /// A stdout (INFO) or stderr (WARN) stream whose lines become records.
    pub(crate) fn stream(&self, source: LogSource) -> LogStream {
        LogStream {
            logger: self.clone(),
            source,
        }
    }
}

impl Host for GuestLogger {
    fn log(&mut self, level: Level, context: String, message: String) {
        let level = match level {
            Level::Trace | Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error | Level::Critical => LogLevel::Error,
        };
        self.emit(level, LogSource::Logging, context, message);
    }
}

/// Adds `wasi:logging/logging` to a component linker.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> &mut GuestLogger,
) -> wasmtime::Result<()> {
    wasi::logging::logging::add_to_linker::<T, wasmtime::component::HasSelf<GuestLogger>>(
        linker, get,
    )
}

/// Longest line kept from stdout/stderr, and longest message or context of a
/// `wasi:logging` record; the rest is cut.
const MAX_LINE: usize = 16 * 1024;

/// Cuts `text` to at most `max` bytes, at a character boundary.
fn truncate_at(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// Captured stdout or stderr of an instance.
pub(crate) struct LogStream {
    logger: GuestLogger,
    source: LogSource,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            logger: self.logger.clone(),
            source: self.source,
            line: Vec::new(),
        })
    }
}

/// Splits written bytes into lines and emits each as one record.
struct LineWriter {
    logger: GuestLogger,
    source: LogSource,
    line: Vec<u8>,
}

impl LineWriter {
    fn flush_line(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line)
            .trim_end_matches('\r')
            .to_string();
        self.line.clear();
        let level = match self.source {
            LogSource::Stderr => LogLevel::Warn,
            _ => LogLevel::Info,
        };
        self.logger.emit(level, self.source, String::new(), text);
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' {
                self.flush_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_line();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger(budget: LogBudget) -> (GuestLogger, Arc<MemoryLogs>) {
        let logs = Arc::new(MemoryLogs::default());
        let logger = GuestLogger::new("f".into(), 1, Arc::new(budget), logs.clone());
        (logger, logs)
    }

    #[test]
    fn records_are_bounded_in_bytes_and_counted_against_a_byte_budget() {
        let (mut logger, logs) = logger(LogBudget::with_bytes(1_000, 40 * 1024));
        let huge = "é".repeat(100_000);
        logger.log(Level::Info, huge.clone(), huge.clone());
        let records = logs.take();
        assert_eq!(records.len(), 1);
        assert!(records[0].message.len() <= MAX_LINE && records[0].context.len() <= MAX_LINE);
        assert!(records[0].message.len() > MAX_LINE - 2);
        // 32 KiB of the 40 KiB budget is spent: the next huge record is dropped, a small
        // one still fits.
        logger.log(Level::Info, String::new(), huge);
        logger.log(Level::Info, String::new(), "small".into());
        let records = logs.take();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].message, "small");
        assert_eq!(logger.budget.dropped(), 1);
    }
}
