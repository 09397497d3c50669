//! JSON lines on stdout: one per request, one per guest log record, and the runner's own
//! events (through `tracing`), all with `timestamp`, `level`, `message` and `node_id`.
//! `edgefn dev` switches to short lines for people ([`use_human_lines`]).

use std::io::Write as _;
use std::time::SystemTime;

use edgefn_runtime::{GuestLogRecord, LogSink, LogSource};
use serde_json::{Value, json};

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_micros(time).to_string()
}

/// Bytes of log lines waiting for the writer thread. The thread drains them every
/// [`DRAIN_INTERVAL`] instead of being woken for every line: at tens of thousands of
/// requests per second, a wake-up per line costs more than the line itself.
static PENDING: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
/// Serialises writes to stdout, so lines from the drain and from a full buffer never mix.
static STDOUT: std::sync::Mutex<()> = std::sync::Mutex::new(());
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// Above this, new lines are dropped (and counted) until the writer catches up: a slow
/// stdout (a stalled pipe, a full disk behind it) never blocks request or guest threads.
const MAX_PENDING_BYTES: usize = 4 << 20;
/// Lines dropped because stdout was too slow, reported in a line of their own.
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn write_out(bytes: &[u8]) {
    let _serial = STDOUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(bytes);
    let _ = stdout.flush();
}

/// Moves pending lines to stdout.
pub fn flush() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    if !pending.is_empty() {
        write_out(&pending);
    }
}

fn start_drain() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("edgefn-log".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(DRAIN_INTERVAL);
                    flush();
                    let dropped = DROPPED.swap(0, std::sync::atomic::Ordering::Relaxed);
                    if dropped > 0 {
                        let line = json!({
                            "timestamp": rfc3339(SystemTime::now()),
                            "level": "WARN",
                            "message": "log lines dropped: stdout is too slow",
                            "dropped": dropped,
                        });
                        write_out(format!("{line}\n").as_bytes());
                    }
                }
            });
        if let Err(error) = spawned {
            eprintln!("edgefn-runner: cannot start the log writer: {error}");
        }
    });
}

/// Queues `line` (one JSON object and its newline) for stdout.
fn write_raw(line: &[u8]) {
    start_drain();
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    if pending.len() + line.len() > MAX_PENDING_BYTES {
        DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    pending.extend_from_slice(line);
}

/// Writes one JSON object as a line on stdout (within [`DRAIN_INTERVAL`]).
/// Whether lines are for people (`edgefn dev`) rather than log collectors.
static HUMAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, this process writes short lines for a terminal instead of JSON: the time,
/// node, level and message, then the other fields as `key=value`; listener announcements
/// are left out (`edgefn dev` prints its own summary).
pub fn use_human_lines() {
    HUMAN.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn write_line(value: &Value) {
    let mut line = if HUMAN.load(std::sync::atomic::Ordering::Relaxed) {
        match human(value) {
            Some(line) => line,
            None => return,
        }
    } else {
        value.to_string()
    }
    .into_bytes();
    line.push(b'\n');
    write_raw(&line);
}

/// `01:11:03.526 dev-1 INFO  request function_id=fn_… status=200 duration_us=1358 …`.
fn human(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    if text("message") == "listening" {
        return None;
    }
    // RFC 3339 `2026-12-07T01:11:03.526343Z`: the time of day to the millisecond.
    let time = text("timestamp").get(11..23).unwrap_or_default();
    let mut line = format!(
        "{time} {} {:<5} {}",
        text("node_id"),
        text("level"),
        text("message")
    );
    for (key, field) in object {
        if matches!(
            key.as_str(),
            "timestamp" | "node_id" | "level" | "message" | "start_timestamp" | "end_timestamp"
        ) {
            continue;
        }
        match field {
            Value::String(s) => line.push_str(&format!(" {key}={s}")),
            other => line.push_str(&format!(" {key}={other}")),
        }
    }
    Some(line)
}

/// The outcome of one request, logged when its response is ready.
#[derive(serde::Serialize)]
pub struct RequestLog<'a> {
    pub node_id: &'a str,
    pub request_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_id: Option<&'a str>,
    #[serde(rename = "start_timestamp", serialize_with = "serialize_time")]
    pub start: SystemTime,
    #[serde(rename = "end_timestamp", serialize_with = "serialize_time")]
    pub end: SystemTime,
    /// `ok`, or the error code (`timeout`, `no_route`, `quota_exceeded`, ...).
    pub execution_status: &'a str,
    pub status: u16,
    pub duration_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<&'a str>,
}

fn serialize_time<S: serde::Serializer>(
    time: &SystemTime,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// The fixed head of a request line: the fields every JSON line starts with.
#[derive(serde::Serialize)]
struct RequestLine<'a> {
    #[serde(serialize_with = "serialize_time")]
    timestamp: SystemTime,
    level: &'static str,
    message: &'static str,
    #[serde(flatten)]
    request: &'a RequestLog<'a>,
}

impl RequestLog<'_> {
    pub fn write(&self) {
        let line = RequestLine {
            timestamp: self.end,
            level: if self.status >= 500 { "ERROR" } else { "INFO" },
            message: "request",
            request: self,
        };
        if HUMAN.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(value) = serde_json::to_value(&line) {
                write_line(&value);
            }
            return;
        }
        let mut bytes = Vec::with_capacity(384);
        if serde_json::to_writer(&mut bytes, &line).is_ok() {
            bytes.push(b'\n');
            write_raw(&bytes);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines_keep_every_field_but_the_timestamps() {
        let line = json!({
            "timestamp": "2026-12-07T01:11:03.526343Z",
            "level": "INFO",
            "message": "request",
            "node_id": "dev-1",
            "function_id": "fn_1",
            "status": 200,
            "start_timestamp": "2026-12-07T01:11:03.525066Z",
        });
        assert_eq!(
            human(&line).unwrap(),
            "01:11:03.526 dev-1 INFO  request function_id=fn_1 status=200"
        );
        let listening = json!({ "message": "listening", "listener": "http" });
        assert_eq!(human(&listening), None);
    }
}
