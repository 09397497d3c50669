//! JSON lines on stdout: one per request, one per guest log record, and the runner's own
//! events (through `tracing`), all with `timestamp`, `level`, `message` and `node_id`.

use std::io::Write as _;
use std::time::SystemTime;

use edgefn_runtime::{GuestLogRecord, LogSink, LogSource};
use serde_json::{Map, Value, json};

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Writes one JSON object as a line on stdout.
pub fn write_line(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut stdout, value);
    let _ = stdout.write_all(b"\n");
    let _ = stdout.flush();
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
