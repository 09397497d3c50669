//! WASI preview 1 modules in the CGI convention (RFC 3875): the request in environment
//! variables and on stdin, the response on stdout as `Status:`, headers, a blank line and
//! the body. A command module runs once, so every request gets a fresh instance (the
//! pooling allocator keeps that cheap).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::{InstancePre, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::RuntimeError;
use crate::limits::{CpuTimed, GuestLimits};
use crate::logging::GuestLogger;
use crate::state::CgiState;

/// What a CGI run needs of the function it runs (implemented by `Function`).
pub(crate) trait CgiHost {
    /// The function's configured environment variables.
    fn env(&self) -> &[(String, String)];
    fn logger(&self) -> GuestLogger;
    fn new_limits(&self, deadline: Instant) -> GuestLimits;
    fn new_store(&self, state: CgiState) -> Store<CgiState>;
    /// What a Wasmtime error out of the guest means.
    fn classify(&self, error: wasmtime::Error, limits: &GuestLimits) -> RuntimeError;
    fn max_response_bytes(&self) -> usize;
    /// The function's `max_execution_ms`.
    fn time_limit(&self) -> Duration;
    fn count_cold_start(&self);
}

/// Runs `request` through a fresh instance of the module; answers the response, the CPU
/// time and that the instance was cold (always).
pub(crate) async fn handle(
    function: &impl CgiHost,
    pre: &InstancePre<CgiState>,
    entrypoint: &str,
    request: http::Request<Bytes>,
    request_id: Option<Arc<str>>,
    deadline: Instant,
) -> Result<(http::Response<Bytes>, Duration, bool), RuntimeError> {
    let max_response = function.max_response_bytes();
    let (parts, body) = request.into_parts();
    let mut env = function.env().to_vec();
    env.extend(cgi_environment(&parts, body.len()));
    let stdout = MemoryOutputPipe::new(max_response);
    let logger = function.logger();
    logger.set_request_id(request_id);
    let state = CgiState::new(
        &env,
        body,
        stdout.clone(),
        &logger,
        function.new_limits(deadline),
    );
    let mut store = function.new_store(state);

    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, entrypoint)?;
        start.call_async(&mut store, ()).await
    };
    let limit = function.time_limit();
    let (result, cpu_time) =
        match tokio::time::timeout_at(deadline.into(), CpuTimed::new(run)).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(RuntimeError::Timeout { limit }),
        };
    function.count_cold_start();
    if let Err(error) = result {
        match error.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => {}
            Some(I32Exit(code)) => {
                return Err(RuntimeError::Trap {
                    message: format!("module exited with status {code}"),
                });
            }
            None => return Err(function.classify(error, &store.data().limits)),
        }
    }
    let output = stdout.contents();
    if output.len() >= max_response {
        return Err(RuntimeError::BodyTooLarge {
            what: "response",
            limit_bytes: max_response as u64,
        });
    }
    let response = parse_cgi_response(&output)?;
    Ok((response, cpu_time, true))
}

/// The CGI/1.1 meta-variables for a request, plus `HTTP_*` for each header.
pub(crate) fn cgi_environment(
    parts: &http::request::Parts,
    body_len: usize,
) -> Vec<(String, String)> {
    let uri = &parts.uri;
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.host().map(str::to_string))
        .unwrap_or_default();
    let mut env = vec![
        ("GATEWAY_INTERFACE".to_string(), "CGI/1.1".to_string()),
        (
            "SERVER_PROTOCOL".to_string(),
            format!("{:?}", parts.version),
        ),
        ("SERVER_SOFTWARE".to_string(), "edgefn".to_string()),
        ("REQUEST_METHOD".to_string(), parts.method.to_string()),
        ("SCRIPT_NAME".to_string(), String::new()),
        ("PATH_INFO".to_string(), uri.path().to_string()),
        (
            "QUERY_STRING".to_string(),
            uri.query().unwrap_or_default().to_string(),
        ),
        (
            "SERVER_NAME".to_string(),
            host.split(':').next().unwrap_or_default().to_string(),
        ),
        ("CONTENT_LENGTH".to_string(), body_len.to_string()),
    ];
    if let Some(content_type) = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        env.push(("CONTENT_TYPE".to_string(), content_type.to_string()));
    }
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            let name = format!(
                "HTTP_{}",
                name.as_str().to_ascii_uppercase().replace('-', "_")
            );
            env.push((name, value.to_string()));
        }
    }
    env
}

/// Headers that describe one connection or the message's framing, not the response: the
/// front decides those. Passing a guest's `Content-Length` or `Transfer-Encoding` through
/// would let it frame its own output as two responses on a keep-alive connection, the
/// second one answering the next client (response smuggling).
const HOP_BY_HOP: [&str; 10] = [
    "connection",
    "content-length",
    "http2-settings",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Whether a CGI header would set the framing or the connection's behaviour (see
/// [`HOP_BY_HOP`]); `upgrade` too, which only the front may negotiate.
pub fn is_hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("upgrade") || HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Parses a CGI response: header lines up to the first blank line (`\r\n` or `\n`), an
/// optional `Status: 404 Not Found`, then the body. Framing and hop-by-hop headers are
/// dropped (the body's real length frames the response); an invalid header name or value
/// makes the whole response invalid.
pub(crate) fn parse_cgi_response(output: &[u8]) -> Result<http::Response<Bytes>, RuntimeError> {
    let malformed = |why: &str| RuntimeError::Trap {
        message: format!("malformed CGI response: {why}"),
    };
    let (head, body) =
        find_header_end(output).ok_or_else(|| malformed("no blank line after the headers"))?;
    let head = std::str::from_utf8(head).map_err(|_| malformed("headers are not UTF-8"))?;
    let mut response = http::Response::builder();
    let mut status = None;
    let mut has_location = false;
    for line in head
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
    {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed("header line without ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or_default();
            status = Some(
                code.parse::<http::StatusCode>()
                    .map_err(|_| malformed("invalid Status"))?,
            );
            continue;
        }
        if is_hop_by_hop(name) {
            continue;
        }
        has_location |= name.eq_ignore_ascii_case("location");
        let name = http::HeaderName::try_from(name)
            .map_err(|_| malformed(&format!("invalid header name {:?}", truncated(name))))?;
        let value = http::HeaderValue::try_from(value)
            .map_err(|_| malformed(&format!("invalid value of header {:?}", name.as_str())))?;
        response = response.header(name, value);
    }
    let status = status.unwrap_or(if has_location {
        http::StatusCode::FOUND
    } else {
        http::StatusCode::OK
    });
    response
        .status(status)
        .body(Bytes::copy_from_slice(body))
        .map_err(|e| malformed(&e.to_string()))
}

/// At most 64 characters of guest text for an error message.
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

fn find_header_end(output: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut line_start = 0;
    for (i, &byte) in output.iter().enumerate() {
        if byte == b'\n' {
            let line = &output[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some((&output[..line_start], &output[i + 1..]));
            }
            line_start = i + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let response =
            parse_cgi_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope")
                .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["content-type"], "text/plain");
        assert_eq!(response.body().as_ref(), b"nope");
    }

    #[test]
    fn defaults_to_200_and_accepts_bare_newlines() {
        let response = parse_cgi_response(b"X-A: 1\n\nbody\n").unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"body\n");
    }

    #[test]
    fn location_without_status_is_a_redirect() {
        let response = parse_cgi_response(b"Location: /elsewhere\n\n").unwrap();
        assert_eq!(response.status(), 302);
    }

    #[test]
    fn framing_and_hop_by_hop_headers_are_dropped() {
        let response = parse_cgi_response(
            b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x\r\n\
              Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nTE: trailers\r\nTrailer: x\r\n\
              X-Kept: 1\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nPWNED!",
        )
        .unwrap();
        let names: Vec<&str> = response.headers().keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
        assert_eq!(response.body().as_ref(), b"okHTTP/1.1 200 OK\r\n\r\nPWNED!");
    }

    #[test]
    fn an_invalid_header_name_or_value_fails_the_response_with_its_name() {
        let error = parse_cgi_response(b"Bad Name: 1\r\n\r\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid header name \"Bad Name\""),
            "{error}"
        );
        let error = parse_cgi_response(b"X-Bell: \x07\r\n\r\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("invalid value of header \"x-bell\""),
            "{error}"
        );
    }

    #[test]
    fn refuses_output_without_header_end() {
        let error = parse_cgi_response(b"just some text").unwrap_err();
        assert!(matches!(error, RuntimeError::Trap { .. }), "{error}");
    }
}
