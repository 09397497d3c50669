//! The control plane's wall clock and ids: milliseconds since the Unix epoch (every
//! timestamp in the API and the database), and prefixed random ids (`fn_…`, `dep_…`).
//! Beneath everything else, so any module may use them.

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
