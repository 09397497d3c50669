//! The REST API under `/api/v1`: `router(state)` builds it; handlers validate, call the
//! store and the artifact store, and answer JSON or an [`ApiError`].

mod error;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use edgefn_proto::api::{
    CreateFunction, Function, Heartbeat, Node, NodeRegistered, NodeStatus, RegisterNode, Route,
    RouteInput, Version, VersionCreated, VersionState,
};
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

pub use self::error::{ApiError, ApiJson};
use crate::artifacts::{Artifacts, artifact_path, upload_path};
use crate::store::{Completion, Store, StoreError};
use crate::validate::{self, Limits};

/// Everything the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub artifacts: Arc<Artifacts>,
    pub limits: Limits,
    /// How long a presigned upload URL stays valid.
    pub upload_ttl: Duration,
    /// Largest artifact accepted.
    pub max_artifact_bytes: usize,
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON request bodies above this are refused with 413 (artifacts have their own limit).
const MAX_JSON_BODY: usize = 1 << 20;

pub fn router(state: AppState) -> Router {
    let uploads = Router::new()
        .route("/uploads/{function_id}/{version}", put(upload))
        .layer(DefaultBodyLimit::max(state.max_artifact_bytes));
    let api = Router::new()
        .route("/functions", post(create_function).get(list_functions))
        .route("/functions/{id}", get(get_function).delete(delete_function))
        .route(
            "/functions/{id}/versions",
            post(create_version).get(list_versions),
        )
        .route("/functions/{id}/versions/{version}", get(get_version))
        .route(
            "/functions/{id}/versions/{version}/complete",
            post(complete_version),
        )
        .route("/artifacts/{sha256}", get(download_artifact))
        .route("/routes", post(create_route).get(list_routes))
        .route(
            "/routes/{id}",
            get(get_route).put(update_route).delete(delete_route),
        )
        .route("/nodes/register", post(register_node))
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(get_node))
        .route("/nodes/{id}/heartbeat", post(heartbeat))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(uploads);
    Router::new()
        .nest("/api/v1", api)
        .fallback(|| async { ApiError::not_found("endpoint") })
        .with_state(state)
}

fn not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

// ---- functions and versions ---------------------------------------------------------

async fn version_created(
    state: &AppState,
    function_id: &str,
    version: u64,
) -> ApiResult<VersionCreated> {
    let (upload_url, upload_expires_at) = state
        .artifacts
        .upload_url(function_id, version, state.upload_ttl)
        .await?;
    Ok(VersionCreated {
        function_id: function_id.to_string(),
        version,
        upload_url,
        upload_expires_at,
    })
}

async fn create_function(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<CreateFunction>,
) -> ApiResult<(StatusCode, Json<VersionCreated>)> {
    let (project, settings) =
        validate::create_function(&input, state.limits).map_err(ApiError::Validation)?;
    let (function, version) = state
        .store
        .create_function(&project, &input.name, &settings)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(version_created(&state, &function.id, version).await?),
    ))
}

#[derive(Deserialize)]
struct ProjectFilter {
    project: Option<String>,
}

async fn list_functions(
    State(state): State<AppState>,
    Query(filter): Query<ProjectFilter>,
) -> ApiResult<Json<Vec<Function>>> {
    Ok(Json(
        state
            .store
            .list_functions(filter.project.as_deref())
            .await?,
    ))
}

async fn get_function(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Function>> {
    Ok(Json(
        state
            .store
            .get_function(&id)
            .await
            .map_err(not_found("function"))?,
    ))
}

#[derive(Deserialize)]
struct DeleteOptions {
    #[serde(default)]
    force: bool,
}

async fn delete_function(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(options): Query<DeleteOptions>,
) -> ApiResult<StatusCode> {
    let orphaned = state
        .store
        .delete_function(&id, options.force)
        .await
        .map_err(not_found("function"))?;
    for sha256 in orphaned {
        // The metadata is gone; a leftover object costs space, never correctness.
        if let Err(error) = state.artifacts.delete(&artifact_path(&sha256)).await {
            tracing::warn!(%sha256, %error, "cannot delete an unreferenced artifact");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn create_version(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<VersionCreated>)> {
    let version = state
        .store
        .create_version(&id)
        .await
        .map_err(not_found("function"))?;
    Ok((
        StatusCode::CREATED,
        Json(version_created(&state, &id, version).await?),
    ))
}

fn with_url(state: &AppState, mut version: Version) -> Version {
    version.artifact_url = version
        .sha256
        .as_deref()
        .map(|sha| state.artifacts.artifact_url(sha));
    version
}

async fn list_versions(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    let versions = state
        .store
        .list_versions(&id)
        .await
        .map_err(not_found("function"))?;
    Ok(Json(
        versions.into_iter().map(|v| with_url(&state, v)).collect(),
    ))
}

async fn get_version(
    State(state): State<AppState>,
    Path((id, version)): Path<(String, u64)>,
) -> ApiResult<Json<Version>> {
    let version = state
        .store
        .get_version(&id, version)
        .await
        .map_err(not_found("version"))?;
    Ok(Json(with_url(&state, version)))
}

#[derive(Deserialize)]
struct UploadSignature {
    expires: i64,
    signature: String,
}

/// The local store's presigned upload endpoint.
async fn upload(
    State(state): State<AppState>,
    Path((function_id, version)): Path<(String, u64)>,
    Query(signature): Query<UploadSignature>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    if !state.artifacts.verify_upload(
        &function_id,
        version,
        signature.expires,
        &signature.signature,
    ) {
        return Err(ApiError::Forbidden(
            "the upload URL is invalid or expired".into(),
        ));
    }
    let current = state
        .store
        .get_version(&function_id, version)
        .await
        .map_err(not_found("version"))?;
    if current.state != VersionState::Pending {
        return Err(ApiError::Conflict(
            "versions are immutable once uploaded".into(),
        ));
    }
    state
        .artifacts
        .put_upload(&function_id, version, body)
        .await?;
    Ok(StatusCode::OK)
}

/// Reads the uploaded bytes, hashes and validates them, and stores them by hash.
async fn complete_version(
    State(state): State<AppState>,
    Path((function_id, version)): Path<(String, u64)>,
) -> ApiResult<Json<Version>> {
    let current = state
        .store
        .get_version(&function_id, version)
        .await
        .map_err(not_found("version"))?;
    if current.state != VersionState::Pending {
        return Err(ApiError::Conflict(
            "versions are immutable once uploaded".into(),
        ));
    }
    let upload = upload_path(&function_id, version);
    let bytes = match state.artifacts.read(&upload).await {
        Ok(bytes) => bytes,
        Err(crate::artifacts::ArtifactError::NotFound) => {
            return Err(ApiError::BadRequest(
                "nothing was uploaded for this version yet".into(),
            ));
        }
        Err(error) => return Err(error.into()),
    };
    if bytes.len() > state.max_artifact_bytes {
        state.artifacts.delete(&upload).await?;
        let error = format!(
            "artifact is {} bytes, over the limit of {}",
            bytes.len(),
            state.max_artifact_bytes
        );
        state
            .store
            .complete_version(
                &function_id,
                version,
                Completion::Invalid {
                    error: error.clone(),
                },
            )
            .await?;
        return Err(ApiError::InvalidArtifact(error));
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let checked = edgefn_proto::inspect(&bytes, current.settings.entrypoint.as_deref());
    let kind = match checked {
        Ok(kind) => kind,
        Err(reason) => {
            state.artifacts.delete(&upload).await?;
            state
                .store
                .complete_version(
                    &function_id,
                    version,
                    Completion::Invalid {
                        error: reason.clone(),
                    },
                )
                .await?;
            return Err(ApiError::InvalidArtifact(reason));
        }
    };
    let size = bytes.len() as u64;
    state.artifacts.store_artifact(&sha256, bytes).await?;
    state.artifacts.delete(&upload).await?;
    state
        .store
        .complete_version(
            &function_id,
            version,
            Completion::Ready { sha256, size, kind },
        )
        .await?;
    let version = state.store.get_version(&function_id, version).await?;
    Ok(Json(with_url(&state, version)))
}

async fn download_artifact(
    State(state): State<AppState>,
    Path(sha256): Path<String>,
) -> ApiResult<impl IntoResponse> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(ApiError::not_found("artifact"));
    }
    if !state.store.artifact_referenced(&sha256).await? {
        return Err(ApiError::not_found("artifact"));
    }
    let bytes = state
        .artifacts
        .read(&artifact_path(&sha256))
        .await
        .map_err(|e| match e {
            crate::artifacts::ArtifactError::NotFound => ApiError::not_found("artifact"),
            other => other.into(),
        })?;
    Ok(([(http::header::CONTENT_TYPE, "application/wasm")], bytes))
}

// ---- routes ---------------------------------------------------------------------------

/// A route must name an existing function: a field error otherwise.
async fn valid_route(state: &AppState, input: &RouteInput) -> ApiResult<RouteInput> {
    let input = validate::route(input).map_err(ApiError::Validation)?;
    match state.store.get_function(&input.function_id).await {
        Ok(_) => Ok(input),
        Err(StoreError::NotFound) => {
            Err(ApiError::Validation(vec![edgefn_proto::api::FieldError {
                field: "function_id".into(),
                message: format!("no function {:?}", input.function_id),
            }]))
        }
        Err(other) => Err(other.into()),
    }
}

async fn create_route(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<(StatusCode, Json<Route>)> {
    let input = valid_route(&state, &input).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.put_route(None, &input).await?),
    ))
}

async fn list_routes(State(state): State<AppState>) -> ApiResult<Json<Vec<Route>>> {
    Ok(Json(state.store.list_routes().await?))
}

async fn get_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Route>> {
    Ok(Json(
        state
            .store
            .get_route(&id)
            .await
            .map_err(not_found("route"))?,
    ))
}

async fn update_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<Json<Route>> {
    let input = valid_route(&state, &input).await?;
    Ok(Json(
        state
            .store
            .put_route(Some(&id), &input)
            .await
            .map_err(not_found("route"))?,
    ))
}

async fn delete_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_route(&id)
        .await
        .map_err(not_found("route"))?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- nodes ----------------------------------------------------------------------------

async fn register_node(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RegisterNode>,
) -> ApiResult<(StatusCode, Json<NodeRegistered>)> {
    let mut problems = validate::Problems::default();
    if input.name.is_empty() || input.name.len() > 253 {
        problems.add("name", "must be 1-253 characters");
    }
    for (key, value) in &input.labels {
        if key.is_empty()
            || key.len() > 63
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            problems.add("labels", format!("invalid label key {key:?}"));
        }
        if value.len() > 253 {
            problems.add(
                "labels",
                format!("label {key:?} is longer than 253 characters"),
            );
        }
    }
    problems.into_result(()).map_err(ApiError::Validation)?;
    let node_id = state
        .store
        .register_node(&input.name, &input.labels, &input.address)
        .await?;
    Ok((StatusCode::CREATED, Json(NodeRegistered { node_id })))
}

#[derive(Deserialize)]
struct NodeFilter {
    #[serde(default)]
    healthy: bool,
    pop: Option<String>,
    region: Option<String>,
}

/// All nodes, or with `healthy=true` the set a load balancer should route to: online
/// nodes only, optionally of one `pop` or `region`.
async fn list_nodes(
    State(state): State<AppState>,
    Query(filter): Query<NodeFilter>,
) -> ApiResult<Json<Vec<Node>>> {
    let nodes = state.store.list_nodes().await?;
    let selected = nodes
        .into_iter()
        .filter(|n| !filter.healthy || n.status == NodeStatus::Online)
        .filter(|n| {
            filter
                .pop
                .as_ref()
                .is_none_or(|p| n.labels.get("pop") == Some(p))
        })
        .filter(|n| {
            filter
                .region
                .as_ref()
                .is_none_or(|r| n.labels.get("region") == Some(r))
        })
        .collect();
    Ok(Json(selected))
}

async fn get_node(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Node>> {
    Ok(Json(
        state.store.get_node(&id).await.map_err(not_found("node"))?,
    ))
}

async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<Heartbeat>,
) -> ApiResult<Json<serde_json::Value>> {
    if input.node_id != id {
        return Err(ApiError::BadRequest(
            "node_id in the body differs from the path".into(),
        ));
    }
    if !(0.0..=100_000.0).contains(&input.cpu_percent) {
        return Err(ApiError::Validation(vec![edgefn_proto::api::FieldError {
            field: "cpu_percent".into(),
            message: "must be a non-negative percentage".into(),
        }]));
    }
    state
        .store
        .heartbeat(&id, &input)
        .await
        .map_err(not_found("node"))?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
