//! Routes: a route belongs to the project of the function it routes to, and editing one
//! takes the developer role there (and, to move it, in both projects).

use axum::Json;
use axum::extract::{Path, State};
use edgefn_proto::api::{ErrorBody, Route, RouteInput};
use edgefn_proto::identity::Role;
use http::StatusCode;

use super::{ApiError, ApiJson, ApiResult, AppState, not_found, refresh_desired};
use crate::auth::Principal;
use crate::store::StoreError;
use crate::validate;

/// A valid route to an existing function in a project where the caller is a developer, on
/// a host of that project: one of its verified domains or platform hosts (`*`, every host,
/// for fleet administrators only). Without a host: `*` for administrators, else the
/// project's platform host.
async fn valid_route(
    state: &AppState,
    principal: &Principal,
    input: &RouteInput,
) -> ApiResult<RouteInput> {
    let mut input = input.clone();
    let function = state.store.get_function(&input.function_id).await;
    if input.host.is_empty() {
        input.host = match &function {
            Ok(function) if !principal.admin => {
                crate::domains::platform_host(&function.project, &state.store.platform_domain())
            }
            _ => "*".into(),
        };
    }
    let input = validate::route(&input).map_err(ApiError::Validation)?;
    match function {
        Ok(function) => {
            principal.require(Role::Developer, &function.project)?;
            let verified = state.store.verified_domains().await?;
            crate::domains::may_route(
                &input.host,
                &function.project,
                principal.admin,
                &state.store.platform_domain(),
                &verified,
            )
            // A well-formed host the project may not route (another project's, or not
            // verified yet) is a matter of permission, not of the request's shape.
            .map_err(ApiError::Forbidden)?;
            Ok(input)
        }
        // 409, not 404: the path names the route (which may well exist); what is missing
        // is the function its body refers to.
        Err(StoreError::NotFound) => Err(ApiError::Conflict(format!(
            "no function {:?}",
            input.function_id
        ))),
        Err(other) => Err(other.into()),
    }
}

/// The route `id`, if the caller has at least `role` in its project.
async fn route_for(
    state: &AppState,
    principal: &Principal,
    id: &str,
    role: Role,
) -> ApiResult<Route> {
    let route = state
        .store
        .get_route(id)
        .await
        .map_err(not_found("route"))?;
    principal.require(role, &route.project)?;
    Ok(route)
}

#[utoipa::path(post, path = "/api/v1/routes", request_body = RouteInput, responses((status = 201, body = Route), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_route(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<(StatusCode, Json<Route>)> {
    let input = valid_route(&state, &principal, &input).await?;
    let route = state
        .store
        .put_route(&principal.actor(), None, &input)
        .await?;
    refresh_desired(&state).await?;
    Ok((StatusCode::CREATED, Json(route)))
}

/// The routes of the projects the caller can read.
#[utoipa::path(get, path = "/api/v1/routes", responses((status = 200, body = Vec<Route>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_routes(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<Route>>> {
    let visible = principal.visible();
    Ok(Json(
        state
            .store
            .list_routes()
            .await?
            .into_iter()
            .filter(|r| visible.includes(&r.project))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/routes/{id}", params(("id" = String, Path)), responses((status = 200, body = Route), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_route(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Route>> {
    Ok(Json(
        route_for(&state, &principal, &id, Role::Viewer).await?,
    ))
}

#[utoipa::path(put, path = "/api/v1/routes/{id}", params(("id" = String, Path)), request_body = RouteInput, responses((status = 200, body = Route), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn update_route(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RouteInput>,
) -> ApiResult<Json<Route>> {
    route_for(&state, &principal, &id, Role::Developer).await?;
    let input = valid_route(&state, &principal, &input).await?;
    let route = state
        .store
        .put_route(&principal.actor(), Some(&id), &input)
        .await
        .map_err(not_found("route"))?;
    refresh_desired(&state).await?;
    Ok(Json(route))
}

#[utoipa::path(delete, path = "/api/v1/routes/{id}", params(("id" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete_route(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    route_for(&state, &principal, &id, Role::Developer).await?;
    state
        .store
        .delete_route(&principal.actor(), &id)
        .await
        .map_err(not_found("route"))?;
    refresh_desired(&state).await?;
    Ok(StatusCode::NO_CONTENT)
}
