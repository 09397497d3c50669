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
    CreateFunction, DeployRequest, Deployment, ErrorBody, Function, Heartbeat, HeartbeatReply,
    Node, NodeRegistered, NodeStatus, RegisterNode, RollbackRequest, Route, RouteInput, Version,
    VersionCreated, VersionState,
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
    /// Revision notices for nodes' push streams; poked after every desired-state change.
    pub feed: Arc<crate::sync::RevisionFeed>,
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
        .route(
            "/functions/{id}/versions/{version}/upload-url",
            post(renew_upload_url),
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
        .route("/nodes/{id}/desired", get(get_desired))
        .route("/openapi.json", get(openapi))
        .route("/functions/{id}/deploy", post(deploy))
        .route("/functions/{id}/rollback", post(rollback))
        .route("/functions/{id}/undeploy", post(undeploy))
        .route("/deployments/{id}", get(get_deployment))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(uploads);
    let node_sync = crate::sync::NodeSyncService {
        store: state.store.clone(),
        feed: state.feed.clone(),
        // A fleet of thousands needs seconds to ack a deploy: resending after 1 s would
        // only add work. A lost notice costs at most this, or one heartbeat interval.
        resend: edgefn_proto::backoff::Backoff {
            initial: std::time::Duration::from_secs(5),
            ..edgefn_proto::backoff::Backoff::default()
        },
    }
    .server();
    Router::new()
        .nest("/api/v1", api)
        // The nodes' push stream (gRPC over HTTP/2 on the same listener).
        .route_service("/edgefn.sync.v1.NodeSync/{*method}", node_sync)
        .fallback(|| async { ApiError::not_found("endpoint") })
        .with_state(state)
}

/// The OpenAPI document of this API, generated from the handlers' annotations and the
/// types' derived schemas.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "edgefn control plane API",
        description = "Functions, versions, artifacts, routes and nodes."
    ),
    paths(
        create_function,
        list_functions,
        get_function,
        delete_function,
        create_version,
        renew_upload_url,
        list_versions,
        get_version,
        upload,
        complete_version,
        download_artifact,
        create_route,
        list_routes,
        get_route,
        update_route,
        delete_route,
        register_node,
        list_nodes,
        get_node,
        heartbeat,
        get_desired,
        deploy,
        rollback,
        undeploy,
        get_deployment
    )
)]
pub struct ApiDoc;

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
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

#[utoipa::path(post, path = "/api/v1/functions", request_body = CreateFunction, responses((status = 201, body = VersionCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/functions", params(("project" = Option<String>, Query, description = "only this project")), responses((status = 200, body = Vec<Function>)))]
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

#[utoipa::path(get, path = "/api/v1/functions/{id}", params(("id" = String, Path)), responses((status = 200, body = Function), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(delete, path = "/api/v1/functions/{id}", params(("id" = String, Path), ("force" = Option<bool>, Query, description = "also delete its routes")), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
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
    refresh_desired(&state).await?;
    for sha256 in orphaned {
        // The metadata is gone; a leftover object costs space, never correctness.
        if let Err(error) = state.artifacts.delete(&artifact_path(&sha256)).await {
            tracing::warn!(%sha256, %error, "cannot delete an unreferenced artifact");
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/versions", params(("id" = String, Path)), responses((status = 201, body = VersionCreated), (status = 404, body = ErrorBody)))]
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

/// A fresh upload URL for a version still waiting for its artifact (the first URL expired,
/// or was never seen: `POST /functions` makes version 1 before anything is uploaded).
#[utoipa::path(post, path = "/api/v1/functions/{id}/versions/{version}/upload-url", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = VersionCreated), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn renew_upload_url(
    State(state): State<AppState>,
    Path((function_id, version)): Path<(String, u64)>,
) -> ApiResult<Json<VersionCreated>> {
    pending_version(&state, &function_id, version).await?;
    Ok(Json(version_created(&state, &function_id, version).await?))
}

/// The version, if it still waits for its artifact: 404 when there is no such version,
/// 409 once it was uploaded (versions are immutable from then on).
async fn pending_version(state: &AppState, function_id: &str, version: u64) -> ApiResult<Version> {
    let current = state
        .store
        .get_version(function_id, version)
        .await
        .map_err(not_found("version"))?;
    if current.state != VersionState::Pending {
        return Err(ApiError::Conflict(
            "versions are immutable once uploaded".into(),
        ));
    }
    Ok(current)
}

fn with_url(state: &AppState, mut version: Version) -> Version {
    version.artifact_url = version
        .sha256
        .as_deref()
        .map(|sha| state.artifacts.artifact_url(sha));
    version
}

#[utoipa::path(get, path = "/api/v1/functions/{id}/versions", params(("id" = String, Path)), responses((status = 200, body = Vec<Version>), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(get, path = "/api/v1/functions/{id}/versions/{version}", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Version), (status = 404, body = ErrorBody)))]
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
#[utoipa::path(put, path = "/api/v1/uploads/{function_id}/{version}", params(("function_id" = String, Path), ("version" = u64, Path), ("expires" = i64, Query), ("signature" = String, Query)), request_body(content = Vec<u8>, content_type = "application/wasm"), responses((status = 200), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
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
    pending_version(&state, &function_id, version).await?;
    state
        .artifacts
        .put_upload(&function_id, version, body)
        .await?;
    Ok(StatusCode::OK)
}

/// Reads the uploaded bytes, hashes and validates them, and stores them by hash.
#[utoipa::path(post, path = "/api/v1/functions/{id}/versions/{version}/complete", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Version), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn complete_version(
    State(state): State<AppState>,
    Path((function_id, version)): Path<(String, u64)>,
) -> ApiResult<Json<Version>> {
    let current = pending_version(&state, &function_id, version).await?;
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

#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", params(("sha256" = String, Path)), responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(post, path = "/api/v1/routes", request_body = RouteInput, responses((status = 201, body = Route), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<(StatusCode, Json<Route>)> {
    let input = valid_route(&state, &input).await?;
    let route = state.store.put_route(None, &input).await?;
    refresh_desired(&state).await?;
    Ok((StatusCode::CREATED, Json(route)))
}

#[utoipa::path(get, path = "/api/v1/routes", responses((status = 200, body = Vec<Route>)))]
async fn list_routes(State(state): State<AppState>) -> ApiResult<Json<Vec<Route>>> {
    Ok(Json(state.store.list_routes().await?))
}

#[utoipa::path(get, path = "/api/v1/routes/{id}", params(("id" = String, Path)), responses((status = 200, body = Route), (status = 404, body = ErrorBody)))]
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

#[utoipa::path(put, path = "/api/v1/routes/{id}", params(("id" = String, Path)), request_body = RouteInput, responses((status = 200, body = Route), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<Json<Route>> {
    let input = valid_route(&state, &input).await?;
    let route = state
        .store
        .put_route(Some(&id), &input)
        .await
        .map_err(not_found("route"))?;
    refresh_desired(&state).await?;
    Ok(Json(route))
}

#[utoipa::path(delete, path = "/api/v1/routes/{id}", params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    state
        .store
        .delete_route(&id)
        .await
        .map_err(not_found("route"))?;
    refresh_desired(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Route, node and function changes change what nodes must run: recompute every node's
/// desired state (a node whose document changed gets a new revision).
async fn refresh_desired(state: &AppState) -> ApiResult<()> {
    let urls = artifact_urls(state);
    state.store.refresh_desired(&urls, None).await?;
    state.feed.poke();
    Ok(())
}

// ---- nodes ----------------------------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/nodes/register", request_body = RegisterNode, responses((status = 201, body = NodeRegistered), (status = 400, body = ErrorBody)))]
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
    // A node that registers later receives everything its labels match.
    let urls = artifact_urls(&state);
    state.store.refresh_desired(&urls, Some(&node_id)).await?;
    state.feed.poke();
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
#[utoipa::path(get, path = "/api/v1/nodes", params(("healthy" = Option<bool>, Query, description = "only online nodes"), ("pop" = Option<String>, Query), ("region" = Option<String>, Query)), responses((status = 200, body = Vec<Node>)))]
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

#[utoipa::path(get, path = "/api/v1/nodes/{id}", params(("id" = String, Path)), responses((status = 200, body = Node), (status = 404, body = ErrorBody)))]
async fn get_node(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Node>> {
    Ok(Json(
        state.store.get_node(&id).await.map_err(not_found("node"))?,
    ))
}

#[utoipa::path(post, path = "/api/v1/nodes/{id}/heartbeat", params(("id" = String, Path)), request_body = Heartbeat, responses((status = 200, body = HeartbeatReply), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<Heartbeat>,
) -> ApiResult<Json<HeartbeatReply>> {
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
    let (desired_revision, desired_state) = state
        .store
        .heartbeat(&id, &input)
        .await
        .map_err(not_found("node"))?;
    if let Some(applied) = input.applied_revision {
        state.feed.record_ack(&id, applied);
    }
    Ok(Json(HeartbeatReply {
        desired_revision,
        desired_state,
    }))
}

/// The node's desired state, read only: what a node fetches when its push stream announces
/// a new revision (its ack follows in a heartbeat), so that a deploy to many nodes costs one
/// write per node, not two.
#[utoipa::path(get, path = "/api/v1/nodes/{id}/desired", params(("id" = String, Path)), responses((status = 200, body = edgefn_proto::sync::DesiredState), (status = 404, body = ErrorBody)))]
async fn get_desired(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<edgefn_proto::sync::DesiredState>> {
    Ok(Json(
        state
            .store
            .desired_state(&id)
            .await
            .map_err(not_found("node"))?,
    ))
}

// ---- deployments ----------------------------------------------------------------------

fn artifact_urls(state: &AppState) -> impl Fn(&str) -> String + Send + Sync + '_ {
    |sha256| state.artifacts.artifact_url(sha256)
}

async fn deploy_version(
    state: &AppState,
    id: &str,
    version: i64,
    selector: &str,
    strategy: &str,
) -> ApiResult<Deployment> {
    let mut problems = validate::Problems::default();
    if version <= 0 {
        problems.add("version", "must be positive");
    }
    if let Err(error) = edgefn_proto::Selector::parse(selector) {
        problems.add("pop_selector", error.to_string());
    }
    if strategy != "all" {
        problems.add("strategy", "only `all` is supported so far");
    }
    problems.into_result(()).map_err(ApiError::Validation)?;
    state
        .store
        .get_function(id)
        .await
        .map_err(not_found("function"))?;
    let urls = artifact_urls(state);
    let deployment = state
        .store
        .deploy(id, version as u64, selector, strategy, &urls)
        .await
        .map_err(not_found("version"))?;
    state.feed.poke();
    Ok(deployment)
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/deploy", params(("id" = String, Path)), request_body = DeployRequest, responses((status = 201, body = Deployment), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn deploy(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<DeployRequest>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    let deployment = deploy_version(
        &state,
        &id,
        input.version,
        &input.pop_selector,
        &input.strategy,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/rollback", params(("id" = String, Path)), request_body = RollbackRequest, responses((status = 201, body = Deployment), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn rollback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    if input.to_version.is_some_and(|v| v <= 0) {
        return Err(ApiError::Validation(vec![edgefn_proto::api::FieldError {
            field: "to_version".into(),
            message: "must be positive".into(),
        }]));
    }
    let (version, selector, strategy) = state
        .store
        .rollback_target(&id, input.to_version.map(|v| v as u64))
        .await
        .map_err(not_found("function"))?;
    let deployment = deploy_version(&state, &id, version as i64, &selector, &strategy).await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/undeploy", params(("id" = String, Path)), responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn undeploy(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    state
        .store
        .get_function(&id)
        .await
        .map_err(not_found("function"))?;
    let urls = artifact_urls(&state);
    state.store.undeploy(&id, &urls).await?;
    state.feed.poke();
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", params(("id" = String, Path)), responses((status = 200, body = Deployment), (status = 404, body = ErrorBody)))]
async fn get_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(
        state
            .store
            .get_deployment(&id)
            .await
            .map_err(not_found("deployment"))?,
    ))
}
