//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers) and
//! `/readyz` (every desired function version has settled).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::node::Node;

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

fn answer(node: &Node, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            node.refresh_metrics();
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                node.metrics.encode(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if node.settled() => text(StatusCode::OK, "text/plain", "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "loading\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves the admin endpoints until `shutdown` resolves, within `limits`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: edgefn_listen::Limits,
    shutdown: impl Future<Output = ()>,
) {
    let gate = edgefn_listen::Gate::new(limits);
    let builder = Arc::new(gate.builder());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = gate.accept(&listener) => accepted,
            () = &mut shutdown => return,
        };
        let (node, builder) = (node.clone(), builder.clone());
        tokio::spawn(async move {
            let activity = edgefn_listen::Activity::new();
            let tracker = activity.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let guard = tracker.begin();
                    let response = tracker.track(guard, answer(&node, request.uri().path()));
                    async move { Ok::<_, Infallible>(response) }
                });
            let connection = builder.serve_connection(TokioIo::new(accepted.stream), service);
            tokio::select! {
                _ = connection => {}
                () = activity.expired(&limits) => {}
            }
            drop(accepted.permit);
        });
    }
}
