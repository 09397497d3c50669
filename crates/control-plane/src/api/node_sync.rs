//! The node listener's API (mTLS; see `listener`): heartbeats, desired states, artifacts,
//! node tokens, certificate renewal, and the push stream (gRPC `NodeSync.Watch`).
//!
//! Every request comes from a node whose certificate the listener verified ([`NodePeer`]).
//! All but the token exchange also carry that node's JWT (`Authorization: Bearer`, or the
//! `authorization` metadata of the gRPC call): a token for another node, an expired or a
//! forged one is refused and audited. A node acts only for itself: a path naming another
//! node is refused.

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use edgefn_proto::api::ErrorBody;
use edgefn_proto::identity::{NodeEnrolled, NodeToken, RenewCertificate};
use edgefn_proto::sync::{Heartbeat, HeartbeatReply};

use super::{ApiError, ApiJson, ApiResult, AppState, MAX_JSON_BODY, not_found};
use crate::auth::tokens::bearer;
use crate::listener::{NodeGate, NodePeer};

/// The node listener's router.
pub fn node_router(state: AppState) -> Router {
    let node_sync = crate::sync::NodeSyncService {
        store: state.store.clone(),
        feed: state.feed.clone(),
        revocations: state.revocations.clone(),
        // A fleet of thousands needs seconds to ack a deploy: resending after 1 s would
        // only add work. A lost notice costs at most this, or one heartbeat interval.
        resend: edgefn_proto::backoff::Backoff {
            initial: std::time::Duration::from_secs(5),
            ..edgefn_proto::backoff::Backoff::default()
        },
    }
    .server();
    let api = Router::new()
        .route("/nodes/{id}/heartbeat", post(heartbeat))
        .route("/nodes/{id}/desired", get(get_desired))
        .route("/nodes/{id}/token", post(node_token))
        .route("/nodes/{id}/certificate", post(renew_certificate))
        .route("/artifacts/{sha256}", get(download_artifact))
        .route(
            "/precompiled/{sha256}/{engine_hash}",
            get(download_precompiled),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .nest("/api/v1", api)
        // The nodes' push stream (gRPC over HTTP/2 on the same listener).
        .route_service("/edgefn.sync.v1.NodeSync/{*method}", node_sync)
        .fallback(|| async { ApiError::not_found("endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            node_guard,
        ))
        .with_state(state)
}

/// Checks the node token of every request but the token exchange.
async fn node_guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(peer) = request.extensions().get::<NodePeer>().cloned() else {
        return ApiError::Unauthenticated("the node listener needs a node certificate".into())
            .into_response();
    };
    let gate = NodeGate {
        store: state.store.clone(),
        revocations: state.revocations.clone(),
    };
    let actor = format!("node:{}", peer.node_id);
    if state.revocations.is_revoked(&peer.node_id) {
        gate.refuse(&actor, peer.addr, "the node is revoked").await;
        return ApiError::Unauthenticated("the node is revoked".into()).into_response();
    }
    let exchange = request.method() == http::Method::POST
        && request.uri().path() == format!("/api/v1/nodes/{}/token", peer.node_id);
    if !exchange {
        let checked = bearer(request.headers())
            .and_then(|token| state.ca.node_of_token(token))
            .map_err(|e| e.to_string())
            .and_then(|node_id| {
                if node_id == peer.node_id {
                    Ok(())
                } else {
                    Err(format!(
                        "the node token is for node {node_id}, the certificate names {}",
                        peer.node_id
                    ))
                }
            });
        if let Err(reason) = checked {
            gate.refuse(&actor, peer.addr, &format!("node token refused: {reason}"))
                .await;
            return ApiError::Unauthenticated(reason).into_response();
        }
    }
    request.extensions_mut().insert(peer);
    next.run(request).await
}

/// A node acts only for itself.
fn itself(peer: &NodePeer, id: &str) -> ApiResult<()> {
    if peer.node_id == id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "node {} cannot act for node {id}",
            peer.node_id
        )))
    }
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/heartbeat", security(("node_token" = [])), params(("id" = String, Path)), request_body = Heartbeat, responses((status = 200, body = HeartbeatReply), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
    itself(&peer, &id)?;
    if input.node_id != id {
        return Err(ApiError::BadRequest(
            "node_id in the body differs from the path".into(),
        ));
    }
    if !(0.0..=100_000.0).contains(&input.cpu_percent) {
        return Err(ApiError::field(
            "cpu_percent",
            "must be a non-negative percentage",
        ));
    }
    let (desired_revision, desired_state) = state
        .store
        .heartbeat(&id, &input)
        .await
        .map_err(not_found("node"))?;
    if let Some(applied) = input.applied_revision {
        state.feed.record_ack(&id, applied);
    }
    if !input.databases.is_empty() {
        state
            .store
            .record_database_reports(&id, &input.databases)
            .await?;
    }
    Ok(Json(HeartbeatReply {
        desired_revision,
        desired_state,
    }))
}

/// The node's desired state, read only: what a node fetches when its push stream announces
/// a new revision (its ack follows in a heartbeat), so that a deploy to many nodes costs one
/// write per node, not two.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/desired", security(("node_token" = [])), params(("id" = String, Path)), responses((status = 200, body = edgefn_proto::sync::DesiredState), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_desired(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path(id): Path<String>,
) -> ApiResult<Json<edgefn_proto::sync::DesiredState>> {
    itself(&peer, &id)?;
    Ok(Json(
        state
            .store
            .desired_state(&id)
            .await
            .map_err(not_found("node"))?,
    ))
}

/// The node's JWT, for its certificate alone (the listener verified it).
#[utoipa::path(post, path = "/api/v1/nodes/{id}/token", security(()), params(("id" = String, Path)), responses((status = 200, body = NodeToken), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn node_token(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeToken>> {
    itself(&peer, &id)?;
    let (claims, token) = state.ca.issue_node_token(&id).map_err(ApiError::Internal)?;
    let expires_at = claims.exp.saturating_mul(1000);
    state
        .store
        .record_node_token(&id, &claims.jti, expires_at)
        .await?;
    Ok(Json(NodeToken {
        token,
        expires_at,
        signing_key: state.ca.signing_key_pem().to_string(),
    }))
}

/// A new certificate for a new key of the node (before the old one expires).
#[utoipa::path(post, path = "/api/v1/nodes/{id}/certificate", security(("node_token" = [])), params(("id" = String, Path)), request_body = RenewCertificate, responses((status = 200, body = NodeEnrolled), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn renew_certificate(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RenewCertificate>,
) -> ApiResult<Json<NodeEnrolled>> {
    itself(&peer, &id)?;
    let issued = state.ca.sign_node_csr(&input.csr, &id)?;
    state
        .store
        .renew_node_certificate(&id, &issued.serial, issued.expires_at)
        .await
        .map_err(not_found("node"))?;
    Ok(Json(NodeEnrolled {
        node_id: id,
        certificate: issued.pem,
        ca_certificate: state.ca.ca_pem().to_string(),
        certificate_expires_at: issued.expires_at,
        node_url: state.ca.node_url.clone(),
    }))
}

/// An artifact, for a node whose desired state holds it.
async fn download_artifact(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path(sha256): Path<String>,
) -> ApiResult<Response> {
    if !super::functions::valid_sha256(&sha256) {
        return Err(ApiError::not_found("artifact"));
    }
    let desired = state
        .store
        .desired_state(&peer.node_id)
        .await
        .map_err(not_found("artifact"))?;
    if !desired.functions.iter().any(|f| f.sha256 == sha256) {
        return Err(ApiError::Forbidden(
            "the artifact is not in this node's desired state".into(),
        ));
    }
    super::functions::artifact_bytes(&state, &sha256).await
}

/// The native code of an artifact in this node's desired state, compiled by the control
/// plane for the node's engine: 200 with the code and its signed attestation (header
/// `x-edgefn-attestation`), 202 while it is being compiled (ask again after `Retry-After`),
/// 404 when the control plane has none to give (no compiler, another engine, or a failed
/// compilation, named in the message): the node then compiles it itself.
#[utoipa::path(get, path = "/api/v1/precompiled/{sha256}/{engine_hash}", security(("node_token" = [])), params(("sha256" = String, Path), ("engine_hash" = String, Path), edgefn_proto::sync::EngineQuery), responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, headers(("x-edgefn-attestation" = String, description = "ES256 JWT of {wasm_sha256, engine_hash, native_sha256}"))), (status = 202, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn download_precompiled(
    State(state): State<AppState>,
    Extension(peer): Extension<NodePeer>,
    Path((sha256, engine_hash)): Path<(String, String)>,
    axum::extract::Query(engine): axum::extract::Query<edgefn_proto::sync::EngineQuery>,
) -> ApiResult<Response> {
    use crate::store::{EngineProfile, Precompiled};
    if !super::functions::valid_sha256(&sha256)
        || !crate::precompile::valid_engine_hash(&engine_hash)
    {
        return Err(ApiError::not_found("precompiled code"));
    }
    let desired = state
        .store
        .desired_state(&peer.node_id)
        .await
        .map_err(not_found("precompiled code"))?;
    let Some(function) = desired.functions.iter().find(|f| f.sha256 == sha256) else {
        return Err(ApiError::Forbidden(
            "the artifact is not in this node's desired state".into(),
        ));
    };
    let Some(precompiler) = &state.precompiler else {
        return Err(ApiError::NotFound(
            "this control plane does not compile for nodes".into(),
        ));
    };
    let compiling = || {
        let body = ErrorBody {
            error: edgefn_proto::api::ErrorDetail {
                code: "compiling".into(),
                message: "the control plane is compiling this artifact; ask again".into(),
                details: serde_json::Value::Null,
            },
        };
        (
            http::StatusCode::ACCEPTED,
            [(http::header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response()
    };
    match state.store.precompiled(&sha256, &engine_hash).await? {
        Some(Precompiled::Ready { attestation, .. }) => {
            let bytes = state
                .artifacts
                .read(&crate::precompile::native_path(&engine_hash, &sha256))
                .await?;
            Ok((
                [
                    (
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    ),
                    (
                        http::HeaderName::from_static(edgefn_proto::sync::ATTESTATION_HEADER),
                        http::HeaderValue::from_str(&attestation)
                            .map_err(|e| ApiError::Internal(e.to_string()))?,
                    ),
                ],
                bytes,
            )
                .into_response())
        }
        Some(Precompiled::Failed { error }) => Err(ApiError::NotFound(format!(
            "the control plane could not compile this artifact: {error}"
        ))),
        Some(Precompiled::Compiling { updated_at }) if !precompiler.is_stale(updated_at) => {
            Ok(compiling())
        }
        // Nothing yet, or a claim whose replica died: compile it (here, unless another
        // node's request just claimed it).
        Some(Precompiled::Compiling { .. }) | None => {
            let profile = EngineProfile {
                engine_hash,
                max_memory_pages: engine.max_memory_pages,
                fuel: engine.fuel,
            };
            precompiler
                .serves(&profile)
                .await
                .map_err(ApiError::NotFound)?;
            precompiler.request(&sha256, function.kind, profile);
            Ok(compiling())
        }
    }
}
