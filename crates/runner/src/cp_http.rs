//! Calling the control plane over HTTP: the JSON of a reply or the API's error message,
//! an error with all its causes, and the wall clock in the API's unit (ms since the epoch).

/// An error with its causes, `a: b: c` (reqwest's own message stops at "error sending
/// request", which tells an operator nothing about a refused certificate).
pub(crate) fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Milliseconds since the Unix epoch, as the API's timestamps count.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The JSON body of a successful reply, or the API's error message with the status.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    reply: reqwest::Response,
    url: &str,
) -> Result<T, String> {
    let status = reply.status();
    let body = reply
        .bytes()
        .await
        .map_err(|e| format!("reading the reply of {url}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<edgefn_proto::api::ErrorBody>(&body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{url}: {status}: {message}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: invalid reply: {e}"))
}
