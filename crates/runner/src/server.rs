//! The HTTP(S) front: accept, parse, route, apply quotas, invoke, answer, log, count.
//! HTTP/1.1 and HTTP/2 (negotiated by ALPN under TLS), request-size limits, and a graceful
//! drain of in-flight requests on shutdown.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use edgefn_listen::RefusalId;
use edgefn_runtime::{InvokeContext, RuntimeError};
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use crate::logs::RequestLog;
use crate::metrics::{ErrorLabels, QuotaLabels};
use crate::node::{Node, VersionState};

/// Limits of the front.
#[derive(Clone, Copy, Debug)]
pub struct FrontConfig {
    pub max_request_body_bytes: u64,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: usize,
    /// How long a request's body may take to arrive once its head has (then 408).
    pub body_read_timeout: Duration,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub drain_timeout: Duration,
    /// Connection limits and timeouts against slow and malicious clients.
    pub listen: edgefn_listen::Limits,
}

impl Default for FrontConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            body_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            listen: edgefn_listen::Limits::default(),
        }
    }
}

pub const REQUEST_ID: &str = edgefn_listen::REQUEST_ID;

/// Serves until `shutdown` resolves, then stops accepting and drains open connections.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    node: Arc<Node>,
    config: FrontConfig,
    shutdown: impl Future<Output = ()>,
) {
    let gate = edgefn_listen::Gate::new(config.listen);
    let mut builder = gate.builder();
    // hyper refuses buffers under 8 KiB.
    // No per-request header timer: hyper allocates and registers one for every request head
    // it reads, which cost 3-4 % of the front's throughput (bench/RESULTS.md). The
    // connection's activity timer does the job instead: a connection with no request in
    // flight — idle, or part-way through a head — is closed after the header read timeout.
    builder
        .http1()
        .max_buf_size(config.max_header_bytes.max(8192))
        .header_read_timeout(None);
    builder
        .http2()
        .max_header_list_size(config.max_header_bytes.min(u32::MAX as usize) as u32);
    let builder = Arc::new(builder);
    let on_refusal = log_refusal(node.node_id.clone());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = gate.accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let node = node.clone();
        let activity = edgefn_listen::Activity::new();
        let tracker = activity.clone();
        let refusals = activity.clone();
        let on_refusal = on_refusal.clone();
        let service = hyper::service::service_fn(move |request| {
            let node = node.clone();
            let guard = tracker.begin();
            let tracker = tracker.clone();
            async move {
                let response = handle(&node, config, request).await;
                Ok::<_, Infallible>(tracker.track(guard, response))
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let limits = edgefn_listen::Limits {
                idle_timeout: config
                    .listen
                    .idle_timeout
                    .min(config.listen.header_read_timeout),
                ..config.listen
            };
            let edgefn_listen::Accepted {
                stream,
                permit,
                peer,
            } = accepted;
            let serve = async {
                match tls {
                    None => {
                        let stream = RefusalId::new(stream, refusals, peer, on_refusal);
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        let _ = watcher.watch(connection).await;
                    }
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let stream = RefusalId::new(stream, refusals, peer, on_refusal);
                        let connection = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        let _ = watcher.watch(connection).await;
                    }
                }
            };
            // The idle check covers the TLS handshake too (no request before it).
            tokio::select! {
                () = serve => {}
                () = activity.expired(&limits) => {}
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with requests still running");
    }
}

/// A request id from the client is kept when it is short and plain; otherwise a new one.
fn request_id(headers: &http::HeaderMap) -> String {
    let given = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        });
    match given {
        Some(id) => id.to_string(),
        None => new_request_id(),
    }
}

/// Logs a request head hyper refused by itself (400: malformed, 431: over
/// `--max-header-bytes`) like any request, and answers its id for the response.
fn log_refusal(node_id: String) -> edgefn_listen::OnRefusal {
    Arc::new(move |status, peer| {
        let request_id = new_request_id();
        let now = SystemTime::now();
        let (execution_status, message) = match status {
            431 => (
                "headers_too_large",
                "the request head is over the size limit",
            ),
            _ => ("bad_request", "the request head is not valid HTTP"),
        };
        let message = format!("{message} (from {peer})");
        RequestLog {
            node_id: &node_id,
            request_id: &request_id,
            function_id: None,
            start: now,
            end: now,
            execution_status,
            status,
            duration_us: 0,
            error_message: Some(&message),
        }
        .write();
        request_id
    })
}

/// A new request id: 128 random bits in hex.
fn new_request_id() -> String {
    format!(
        "{:016x}{:016x}",
        crate::fetch::random_u64(),
        crate::fetch::random_u64()
    )
}

/// One table from runtime errors to HTTP statuses.
pub fn status_for(error: &RuntimeError) -> StatusCode {
    match error {
        RuntimeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        RuntimeError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        RuntimeError::BodyTooLarge {
            what: "request", ..
        } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// What a client may read about an error: the kind, never host internals.
fn public_message(error: &RuntimeError) -> String {
    match error {
        RuntimeError::Timeout { limit } => {
            format!("function timed out after {} ms", limit.as_millis())
        }
        RuntimeError::MemoryLimit { .. } => "function exceeded its memory limit".into(),
        RuntimeError::Trap { .. } => "function failed".into(),
        RuntimeError::Overloaded => "function overloaded, try again".into(),
        RuntimeError::BodyTooLarge { what, limit_bytes } => {
            format!("{what} body over {limit_bytes} bytes")
        }
        RuntimeError::CapabilityDenied { .. } => "function used a denied capability".into(),
        _ => "internal error".into(),
    }
}

fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({ "error": { "code": code, "message": message } }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// What happened to a request, for the log line and metrics.
struct Outcome {
    response: Response<Full<Bytes>>,
    function_id: Option<String>,
    execution_status: String,
    error_message: Option<String>,
}

impl Outcome {
    fn refused(status: StatusCode, code: &str, message: &str, function_id: Option<String>) -> Self {
        Self {
            response: error_response(status, code, message),
            function_id,
            execution_status: code.to_string(),
            error_message: Some(message.to_string()),
        }
    }
}

/// Reads a request's body within the size limit and the body deadline; the refusal when
/// it cannot (413 too large, 408 too slow, 400 broken).
async fn read_body(
    config: &FrontConfig,
    body: Incoming,
    function_id: &str,
    version: http::Version,
) -> Result<Bytes, Outcome> {
    let collect = Limited::new(body, config.max_request_body_bytes as usize).collect();
    match tokio::time::timeout(config.body_read_timeout, collect).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error))
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            let message = format!("request body over {} bytes", config.max_request_body_bytes);
            Err(Outcome::refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &message,
                Some(function_id.to_string()),
            ))
        }
        Ok(Err(_)) => Err(Outcome::refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "could not read the request body",
            Some(function_id.to_string()),
        )),
        Err(_) => {
            let mut outcome = Outcome::refused(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "request body not received within {} ms",
                    config.body_read_timeout.as_millis()
                ),
                Some(function_id.to_string()),
            );
            // HTTP/1: the rest of the body may still come, so the connection cannot carry
            // another request (HTTP/2 resets just the stream).
            if version < http::Version::HTTP_2 {
                outcome
                    .response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Err(outcome)
        }
    }
}

async fn handle(
    node: &Arc<Node>,
    config: FrontConfig,
    request: http::Request<Incoming>,
) -> Response<Full<Bytes>> {
    let start = SystemTime::now();
    let started = Instant::now();
    let request_id = request_id(request.headers());
    let outcome = route_and_invoke(node, config, request, &request_id, started).await;
    let mut response = outcome.response;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let elapsed = started.elapsed();
    RequestLog {
        node_id: &node.node_id,
        request_id: &request_id,
        function_id: outcome.function_id.as_deref(),
        start,
        end: start + elapsed,
        execution_status: &outcome.execution_status,
        status: response.status().as_u16(),
        duration_us: elapsed.as_micros() as u64,
        error_message: outcome.error_message.as_deref(),
    }
    .write();
    response
}

async fn route_and_invoke(
    node: &Arc<Node>,
    config: FrontConfig,
    request: http::Request<Incoming>,
    request_id: &str,
    started: Instant,
) -> Outcome {
    let host = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let target = {
        let routes = node.routes();
        match routes.lookup(&host, request.method().as_str(), request.uri().path()) {
            Some(found) => found.spec.target.clone(),
            None => {
                return Outcome::refused(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no route matches this request",
                    None,
                );
            }
        }
    };
    let function_id = target.function_id.clone();
    // The whole body (bounded in size and time) before anything of the tenant's is taken:
    // a client that announces a body and never sends it holds no concurrency slot.
    let (parts, body) = request.into_parts();
    let body = match read_body(&config, body, &function_id, parts.version).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let unavailable = |message: &str| {
        Outcome::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "function_unavailable",
            message,
            Some(function_id.clone()),
        )
    };
    // The reason stays in the node's log line and inventory (`edgefn deployments show`
    // names it); the caller learns that the function failed, not how.
    let failed = |reason: String| {
        let mut outcome = Outcome::refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "function_failed",
            "function failed to load on this node",
            Some(function_id.clone()),
        );
        outcome.error_message = Some(reason);
        outcome
    };
    let Some(slot) = node.slot(&target) else {
        return unavailable("function is not deployed on this node");
    };
    let deadline = Instant::now() + Duration::from_millis(slot.entry.settings.max_execution_ms);
    let function = match slot.state() {
        VersionState::Ready(function) => {
            node.metrics.cache_hits.inc();
            function
        }
        state => {
            // A miss: wait for the load in progress, or start one again if the last failed
            // (e.g. the artifact source was down), at most until this request's deadline.
            node.metrics.cache_misses.inc();
            if let VersionState::Failed(reason) = &state
                && !node.retry_failed(&slot)
            {
                return failed(reason.clone());
            }
            match slot.settled(deadline).await {
                Some(VersionState::Ready(function)) => function,
                Some(VersionState::Failed(reason)) => return failed(reason),
                _ => {
                    let mut outcome = Outcome::refused(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "function_loading",
                        "function is still loading on this node; try again",
                        Some(function_id),
                    );
                    outcome
                        .response
                        .headers_mut()
                        .insert(http::header::RETRY_AFTER, HeaderValue::from(1));
                    return outcome;
                }
            }
        }
    };
    if slot.hot.touch_due() {
        node.cache.touch(&slot.entry.id, slot.entry.version);
    }

    let _quota = match slot.hot.quota.admit() {
        Ok(guard) => guard,
        Err(exceeded) => {
            let labels = QuotaLabels {
                tenant: slot.entry.tenant.clone(),
                reason: exceeded.reason().into(),
            };
            node.metrics.quota_rejections.get_or_create(&labels).inc();
            let mut outcome = Outcome::refused(
                StatusCode::TOO_MANY_REQUESTS,
                "quota_exceeded",
                &format!("tenant {} quota exceeded", exceeded.reason()),
                Some(function_id),
            );
            outcome.response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(exceeded.retry_after_seconds()),
            );
            return outcome;
        }
    };

    let context = InvokeContext {
        request_id: Some(request_id.into()),
        deadline: None,
    };
    let invoked = function
        .handle(http::Request::from_parts(parts, body), context)
        .await;
    slot.hot.invocations.inc();
    slot.hot.latency.observe(started.elapsed().as_secs_f64());
    match invoked {
        Ok(invocation) => {
            if invocation.cold_start {
                slot.hot.cold_starts.inc();
            }
            slot.hot.quota.add_cpu(invocation.cpu_time);
            Outcome {
                response: invocation.response.map(Full::new),
                function_id: Some(function_id),
                execution_status: "ok".into(),
                error_message: None,
            }
        }
        Err(error) => {
            let code = error.code();
            slot.hot.failures.inc();
            node.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    function_id: function_id.clone(),
                    error_code: code.into(),
                })
                .inc();
            let mut outcome = Outcome::refused(
                status_for(&error),
                code,
                &public_message(&error),
                Some(function_id),
            );
            // The log keeps the full reason; the client got the short one.
            outcome.error_message = Some(error.to_string());
            outcome
        }
    }
}
