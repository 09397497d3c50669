//! Functions, their versions, presigned uploads and artifacts.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::IntoResponse;
use edgefn_proto::api::{
    CreateFunction, ErrorBody, Function, Version, VersionCreated, VersionState,
};
use edgefn_proto::identity::Role;
use http::StatusCode;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{ApiError, ApiJson, ApiResult, AppState, function_for, not_found, refresh_desired};
use crate::artifacts::{artifact_path, upload_path};
use crate::auth::{Principal, Visible};
use crate::store::Completion;
use crate::validate;

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

#[utoipa::path(post, path = "/api/v1/functions", request_body = CreateFunction, responses((status = 201, body = VersionCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn create_function(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateFunction>,
) -> ApiResult<(StatusCode, Json<VersionCreated>)> {
    let (project, settings) =
        validate::create_function(&input, state.limits).map_err(ApiError::Validation)?;
    principal.require(Role::Developer, &project)?;
    if !state.store.project_exists(&project).await? {
        return Err(ApiError::NotFound(format!("no project {project:?}")));
    }
    let (function, version) = state
        .store
        .create_function(&principal.actor(), &project, &input.name, &settings)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(version_created(&state, &function.id, version).await?),
    ))
}

#[derive(Deserialize)]
pub(super) struct ProjectFilter {
    project: Option<String>,
}

/// The functions of the projects the caller can read (or of one of them).
#[utoipa::path(get, path = "/api/v1/functions", params(("project" = Option<String>, Query, description = "only this project")), responses((status = 200, body = Vec<Function>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_functions(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<ProjectFilter>,
) -> ApiResult<Json<Vec<Function>>> {
    if let Some(project) = &filter.project {
        principal.require(Role::Viewer, project)?;
    }
    let visible = principal.visible();
    let functions = state
        .store
        .list_functions(filter.project.as_deref())
        .await?
        .into_iter()
        .filter(|f| visible.includes(&f.project))
        .collect();
    Ok(Json(functions))
}

#[utoipa::path(get, path = "/api/v1/functions/{id}", params(("id" = String, Path)), responses((status = 200, body = Function), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_function(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Function>> {
    Ok(Json(
        function_for(&state, &principal, &id, Role::Viewer).await?,
    ))
}

#[derive(Deserialize)]
pub(super) struct DeleteOptions {
    #[serde(default)]
    force: bool,
}

/// Deleting a function takes the owner role.
#[utoipa::path(delete, path = "/api/v1/functions/{id}", params(("id" = String, Path), ("force" = Option<bool>, Query, description = "also delete its routes")), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_function(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    Query(options): Query<DeleteOptions>,
) -> ApiResult<StatusCode> {
    function_for(&state, &principal, &id, Role::Owner).await?;
    let orphaned = state
        .store
        .delete_function(&principal.actor(), &id, options.force)
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

#[utoipa::path(post, path = "/api/v1/functions/{id}/versions", params(("id" = String, Path)), responses((status = 201, body = VersionCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn create_version(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<(StatusCode, Json<VersionCreated>)> {
    function_for(&state, &principal, &id, Role::Developer).await?;
    let version = state
        .store
        .create_version(&principal.actor(), &id)
        .await
        .map_err(not_found("function"))?;
    Ok((
        StatusCode::CREATED,
        Json(version_created(&state, &id, version).await?),
    ))
}

/// Replaces the function's settings: versions created from now on get them (the versions
/// that exist keep theirs, as they are immutable). `edgefn deploy` with settings flags.
#[utoipa::path(put, path = "/api/v1/functions/{id}/settings", params(("id" = String, Path)), request_body = edgefn_proto::api::SettingsInput, responses((status = 200, body = edgefn_proto::api::Function), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn update_settings(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<edgefn_proto::api::SettingsInput>,
) -> ApiResult<Json<edgefn_proto::api::Function>> {
    let function = function_for(&state, &principal, &id, Role::Developer).await?;
    let mut problems = validate::Problems::default();
    let settings = validate::settings(&input, &function.project, state.limits, &mut problems);
    problems.into_result(()).map_err(ApiError::Validation)?;
    state
        .store
        .update_function_settings(&principal.actor(), &id, &settings)
        .await
        .map_err(not_found("function"))?;
    Ok(Json(
        state
            .store
            .get_function(&id)
            .await
            .map_err(not_found("function"))?,
    ))
}

/// A fresh upload URL for a version still waiting for its artifact (the first URL expired,
/// or was never seen: `POST /functions` makes version 1 before anything is uploaded).
#[utoipa::path(post, path = "/api/v1/functions/{id}/versions/{version}/upload-url", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = VersionCreated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn renew_upload_url(
    State(state): State<AppState>,
    principal: Principal,
    Path((function_id, version)): Path<(String, u64)>,
) -> ApiResult<Json<VersionCreated>> {
    let function = function_for(&state, &principal, &function_id, Role::Developer).await?;
    pending_version(&state, &function_id, version).await?;
    let created = version_created(&state, &function_id, version).await?;
    let entry = crate::audit::Entry::new(
        &principal.actor(),
        "version.upload_url",
        format!("{function_id}/{version}"),
    )
    .project(&function.project)
    .details(serde_json::json!({ "expires_at": created.upload_expires_at }));
    state.store.record_audit(&entry).await?;
    Ok(Json(created))
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

#[utoipa::path(get, path = "/api/v1/functions/{id}/versions", params(("id" = String, Path)), responses((status = 200, body = Vec<Version>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_versions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Version>>> {
    function_for(&state, &principal, &id, Role::Viewer).await?;
    let versions = state
        .store
        .list_versions(&id)
        .await
        .map_err(not_found("function"))?;
    Ok(Json(
        versions.into_iter().map(|v| with_url(&state, v)).collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/functions/{id}/versions/{version}", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Version), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_version(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, version)): Path<(String, u64)>,
) -> ApiResult<Json<Version>> {
    function_for(&state, &principal, &id, Role::Viewer).await?;
    let version = state
        .store
        .get_version(&id, version)
        .await
        .map_err(not_found("version"))?;
    Ok(Json(with_url(&state, version)))
}

#[derive(Deserialize)]
pub(super) struct UploadSignature {
    expires: i64,
    signature: String,
}

/// The local store's presigned upload endpoint: the signature is the credential.
#[utoipa::path(put, path = "/api/v1/uploads/{function_id}/{version}", security(()), params(("function_id" = String, Path), ("version" = u64, Path), ("expires" = i64, Query), ("signature" = String, Query)), request_body(content = Vec<u8>, content_type = "application/wasm"), responses((status = 200), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn upload(
    State(state): State<AppState>,
    Path((function_id, version)): Path<(String, u64)>,
    Query(signature): Query<UploadSignature>,
    request: axum::extract::Request,
) -> ApiResult<StatusCode> {
    // The signature, then the declared size, before a byte of the body is read.
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
    let limit = state.max_artifact_bytes;
    let too_large = || ApiError::PayloadTooLarge(format!("artifacts are limited to {limit} bytes"));
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|size| size > limit as u64) {
        return Err(too_large());
    }
    pending_version(&state, &function_id, version).await?;
    let body = request.into_body().into_data_stream();
    let size = state
        .artifacts
        .put_upload_stream(&function_id, version, body, limit)
        .await?;
    // The holder of the URL is not known by name; the URL's signature is the credential.
    let function = state
        .store
        .get_function(&function_id)
        .await
        .map_err(not_found("function"))?;
    let entry = crate::audit::Entry::new(
        "upload-url",
        "version.upload",
        format!("{function_id}/{version}"),
    )
    .project(&function.project)
    .details(serde_json::json!({ "bytes": size, "expires": signature.expires }));
    state.store.record_audit(&entry).await?;
    Ok(StatusCode::OK)
}

/// Reads the uploaded bytes, hashes and validates them, and stores them by hash.
#[utoipa::path(post, path = "/api/v1/functions/{id}/versions/{version}/complete", params(("id" = String, Path), ("version" = u64, Path)), responses((status = 200, body = Version), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn complete_version(
    State(state): State<AppState>,
    principal: Principal,
    Path((function_id, version)): Path<(String, u64)>,
) -> ApiResult<Json<Version>> {
    function_for(&state, &principal, &function_id, Role::Developer).await?;
    let actor = principal.actor();
    let current = pending_version(&state, &function_id, version).await?;
    let upload = upload_path(&function_id, version);
    let bytes = match state
        .artifacts
        .read_limited(&upload, state.max_artifact_bytes)
        .await
    {
        Ok(bytes) => bytes,
        // The request is well formed; the version is not in a state to complete.
        Err(crate::artifacts::ArtifactError::NotFound) => {
            return Err(ApiError::Conflict(
                "nothing was uploaded for this version yet: PUT the artifact to its upload_url first".into(),
            ));
        }
        Err(too_large @ crate::artifacts::ArtifactError::TooLarge { .. }) => {
            let error = too_large.to_string();
            return Err(refuse_artifact(&state, &actor, &function_id, version, error).await);
        }
        Err(error) => return Err(error.into()),
    };
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let kind = match edgefn_proto::inspect(&bytes, current.settings.entrypoint.as_deref()) {
        Ok(kind) => kind,
        Err(reason) => {
            return Err(refuse_artifact(&state, &actor, &function_id, version, reason).await);
        }
    };
    let size = bytes.len() as u64;
    state.artifacts.store_artifact(&sha256, bytes).await?;
    state.artifacts.delete(&upload).await?;
    state
        .store
        .complete_version(
            &actor,
            &function_id,
            version,
            Completion::Ready { sha256, size, kind },
        )
        .await?;
    let version = state.store.get_version(&function_id, version).await?;
    Ok(Json(with_url(&state, version)))
}

/// Ends a version whose upload is not a runnable artifact: the upload is deleted, the
/// version marked invalid with the reason, and the reason answered as a 422.
async fn refuse_artifact(
    state: &AppState,
    actor: &str,
    function_id: &str,
    version: u64,
    error: String,
) -> ApiError {
    let ended = async {
        state
            .artifacts
            .delete(&upload_path(function_id, version))
            .await?;
        state
            .store
            .complete_version(
                actor,
                function_id,
                version,
                Completion::Invalid {
                    error: error.clone(),
                },
            )
            .await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match ended {
        Ok(()) => ApiError::InvalidArtifact(error),
        Err(other) => other,
    }
}

/// Whether `sha256` is a well-formed lowercase SHA-256.
pub(super) fn valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The bytes of an artifact, for whoever has already been allowed to read it.
pub(super) async fn artifact_bytes(
    state: &AppState,
    sha256: &str,
) -> ApiResult<axum::response::Response> {
    let bytes = state
        .artifacts
        .read(&artifact_path(sha256))
        .await
        .map_err(|e| match e {
            crate::artifacts::ArtifactError::NotFound => ApiError::not_found("artifact"),
            other => other.into(),
        })?;
    Ok(([(http::header::CONTENT_TYPE, "application/wasm")], bytes).into_response())
}

/// An artifact, for a viewer of a project with a version made of it.
#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", params(("sha256" = String, Path)), responses((status = 200, content_type = "application/wasm", body = Vec<u8>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn download_artifact(
    State(state): State<AppState>,
    principal: Principal,
    Path(sha256): Path<String>,
) -> ApiResult<axum::response::Response> {
    if !valid_sha256(&sha256) {
        return Err(ApiError::not_found("artifact"));
    }
    let projects = state.store.artifact_projects(&sha256).await?;
    if projects.is_empty() {
        return Err(ApiError::not_found("artifact"));
    }
    let visible: Visible = principal.visible();
    if !projects.iter().any(|p| visible.includes(p)) {
        return Err(ApiError::Forbidden(
            "the artifact belongs to a project you cannot read".into(),
        ));
    }
    artifact_bytes(&state, &sha256).await
}
