//! JSON lines on stdout: one per request, one per guest log record, and the runner's own
//! events (through `tracing`), all with `timestamp`, `level`, `message` and `node_id`.

use std::io::Write as _;
use std::time::SystemTime;

use edgefn_runtime::{GuestLogRecord, LogSink, LogSource};
use serde_json::{Map, Value, json};

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Lines waiting for the writer thread; bounded, so a stdout that stops draining slows
/// the writers down instead of growing memory without limit.
const PENDING_LINES: usize = 16 * 1024;

enum LogMessage {
    Line(String),
    Flush(std::sync::mpsc::SyncSender<()>),
}

fn writer() -> &'static std::sync::mpsc::SyncSender<LogMessage> {
    static WRITER: std::sync::OnceLock<std::sync::mpsc::SyncSender<LogMessage>> =
        std::sync::OnceLock::new();
    WRITER.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<LogMessage>(PENDING_LINES);
        let spawned = std::thread::Builder::new()
            .name("edgefn-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
                // Write what is queued, flush when the queue is empty: one syscall per batch.
                while let Ok(message) = receiver.recv() {
                    let mut next = Some(message);
                    while let Some(message) = next.take() {
                        match message {
                            LogMessage::Line(line) => {
                                let _ = out.write_all(line.as_bytes());
                            }
                            LogMessage::Flush(done) => {
                                let _ = out.flush();
                                let _ = done.send(());
                            }
                        }
                        next = receiver.try_recv().ok();
                    }
                    let _ = out.flush();
                }
            });
        if let Err(error) = spawned {
            eprintln!("edgefn-runner: cannot start the log writer: {error}");
        }
        sender
    })
}

/// Writes one JSON object as a line on stdout (through the writer thread).
pub fn write_line(value: &Value) {
    let mut line = value.to_string();
    line.push('\n');
    if let Err(std::sync::mpsc::SendError(LogMessage::Line(line))) =
        writer().send(LogMessage::Line(line))
    {
        // No writer thread: write directly.
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(line.as_bytes());
        let _ = stdout.flush();
    }
}

/// Waits until every line written so far is on stdout (at shutdown).
pub fn flush() {
    let (done, flushed) = std::sync::mpsc::sync_channel(1);
    if writer().send(LogMessage::Flush(done)).is_ok() {
        let _ = flushed.recv_timeout(std::time::Duration::from_secs(5));
    }
}

/// The outcome of one request, logged when its response is ready.
pub struct RequestLog<'a> {
    pub node_id: &'a str,
    pub request_id: &'a str,
    pub function_id: Option<&'a str>,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `ok`, or the error code (`timeout`, `no_route`, `quota`, ...).
    pub execution_status: &'a str,
    pub status: u16,
    pub duration_us: u64,
    pub error_message: Option<&'a str>,
}

impl RequestLog<'_> {
    pub fn write(&self) {
        let mut line = Map::new();
        line.insert("timestamp".into(), json!(rfc3339(self.end)));
        line.insert(
            "level".into(),
            json!(if self.status >= 500 { "ERROR" } else { "INFO" }),
        );
        line.insert("message".into(), json!("request"));
        line.insert("node_id".into(), json!(self.node_id));
        line.insert("request_id".into(), json!(self.request_id));
        if let Some(function_id) = self.function_id {
            line.insert("function_id".into(), json!(function_id));
        }
        line.insert("start_timestamp".into(), json!(rfc3339(self.start)));
        line.insert("end_timestamp".into(), json!(rfc3339(self.end)));
        line.insert("execution_status".into(), json!(self.execution_status));
        line.insert("status".into(), json!(self.status));
        line.insert("duration_us".into(), json!(self.duration_us));
        if let Some(message) = self.error_message {
            line.insert("error_message".into(), json!(message));
        }
        write_line(&Value::Object(line));
    }
}

/// Guest log records as JSON lines.
pub struct JsonLogSink {
    pub node_id: String,
}

impl LogSink for JsonLogSink {
    fn record(&self, record: GuestLogRecord) {
        let source = match record.source {
            LogSource::Logging => "wasi-logging",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
        };
        let mut line = json!({
            "timestamp": rfc3339(record.timestamp),
            "level": record.level.as_str(),
            "message": record.message,
            "node_id": self.node_id,
            "function_id": &*record.function_id,
            "version": record.version,
            "source": source,
        });
        if let Some(request_id) = &record.request_id {
            line["request_id"] = json!(&**request_id);
        }
        if !record.context.is_empty() {
            line["context"] = json!(record.context);
        }
        write_line(&line);
    }
}
