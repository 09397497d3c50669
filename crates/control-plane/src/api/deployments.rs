//! Deploy, roll back and undeploy a function (the developer role in its project), and
//! deployments with their per-node state.

use axum::Json;
use axum::extract::{Path, State};
use edgefn_proto::api::{DeployRequest, Deployment, ErrorBody, RollbackRequest};
use edgefn_proto::identity::Role;
use http::StatusCode;

use super::{ApiError, ApiJson, ApiResult, AppState, artifact_urls, function_for, not_found};
use crate::auth::Principal;
use crate::store::DeploySpec;
use crate::validate;

async fn deploy_version(
    state: &AppState,
    principal: &Principal,
    action: &'static str,
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
    let urls = artifact_urls(state);
    let deployment = state
        .store
        .deploy(
            &principal.actor(),
            action,
            &DeploySpec {
                function_id: id,
                version: version as u64,
                selector,
                strategy,
            },
            &urls,
        )
        .await
        .map_err(not_found("version"))?;
    state.feed.poke();
    precompile_ahead(state, id, version as u64).await;
    Ok(deployment)
}

/// Starts compiling a deployed version for every engine the fleet has asked code for, so
/// that it is ready (or under way) when the nodes ask. Best effort: a node that asks
/// first starts the compilation itself.
async fn precompile_ahead(state: &AppState, function_id: &str, version: u64) {
    let Some(precompiler) = &state.precompiler else {
        return;
    };
    let found = state.store.get_version(function_id, version).await;
    let (
        Ok(edgefn_proto::api::Version {
            sha256: Some(sha256),
            kind: Some(kind),
            ..
        }),
        Ok(profiles),
    ) = (found, state.store.precompile_profiles().await)
    else {
        return;
    };
    for profile in profiles {
        precompiler.request(&sha256, kind, profile);
    }
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/deploy", params(("id" = String, Path)), request_body = DeployRequest, responses((status = 201, body = Deployment), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn deploy(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<DeployRequest>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    function_for(&state, &principal, &id, Role::Developer).await?;
    let deployment = deploy_version(
        &state,
        &principal,
        "deploy",
        &id,
        input.version,
        &input.pop_selector,
        &input.strategy,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/rollback", params(("id" = String, Path)), request_body = RollbackRequest, responses((status = 201, body = Deployment), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn rollback(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RollbackRequest>,
) -> ApiResult<(StatusCode, Json<Deployment>)> {
    function_for(&state, &principal, &id, Role::Developer).await?;
    if input.to_version.is_some_and(|v| v <= 0) {
        return Err(ApiError::field("to_version", "must be positive"));
    }
    let (version, selector, strategy) = state
        .store
        .rollback_target(&id, input.to_version.map(|v| v as u64))
        .await
        .map_err(not_found("function"))?;
    let deployment = deploy_version(
        &state,
        &principal,
        "rollback",
        &id,
        version as i64,
        &selector,
        &strategy,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(deployment)))
}

#[utoipa::path(post, path = "/api/v1/functions/{id}/undeploy", params(("id" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn undeploy(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    function_for(&state, &principal, &id, Role::Developer).await?;
    let urls = artifact_urls(&state);
    state.store.undeploy(&principal.actor(), &id, &urls).await?;
    state.feed.poke();
    Ok(StatusCode::NO_CONTENT)
}

/// Loads the active deployment's version again on every node where it failed (after the
/// cause was fixed: a node's memory, a control-plane limit); nodes otherwise retry a
/// version that failed to compile only when their desired state changes.
#[utoipa::path(post, path = "/api/v1/deployments/{id}/retry", params(("id" = String, Path)), responses((status = 200, body = Deployment), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn retry_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    let deployment = deployment_for(&state, &principal, &id, Role::Developer).await?;
    let urls = artifact_urls(&state);
    state
        .store
        .retry_deployment(&principal.actor(), &id, &urls)
        .await
        .map_err(not_found("deployment"))?;
    state.feed.poke();
    precompile_ahead(&state, &deployment.function_id, deployment.version).await;
    Ok(Json(
        deployment_for(&state, &principal, &id, Role::Developer).await?,
    ))
}

/// The deployment `id`, if the caller has at least `role` in its function's project.
async fn deployment_for(
    state: &AppState,
    principal: &Principal,
    id: &str,
    role: Role,
) -> ApiResult<Deployment> {
    let deployment = state
        .store
        .get_deployment(id)
        .await
        .map_err(not_found("deployment"))?;
    function_for(state, principal, &deployment.function_id, role).await?;
    Ok(deployment)
}

#[utoipa::path(get, path = "/api/v1/deployments/{id}", params(("id" = String, Path)), responses((status = 200, body = Deployment), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_deployment(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Deployment>> {
    Ok(Json(
        deployment_for(&state, &principal, &id, Role::Viewer).await?,
    ))
}
