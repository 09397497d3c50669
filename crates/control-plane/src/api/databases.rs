//! Edge databases of a project and their schema ledgers (the developer role there to
//! change them, viewer to read): databases, changes (dry-run before they are accepted),
//! where each node stands, and the sync log of every apply attempt.

use axum::Json;
use axum::extract::{Path, Query, State};
use edgefn_proto::api::{
    CreateChange, CreateDatabase, Database, DatabaseChange, ErrorBody, NodeDatabase,
    RepairDatabase, SyncLogEntry,
};
use edgefn_proto::identity::Role;
use http::StatusCode;
use serde::Deserialize;

use super::domains::project_for;
use super::{ApiError, ApiJson, ApiResult, AppState, artifact_urls, not_found};
use crate::auth::Principal;

/// How long a node may be behind before it is a warning, in ms.
fn warn_after_ms(state: &AppState) -> i64 {
    state.database_warn_after.as_millis().min(i64::MAX as u128) as i64
}

/// Bytes of SQL one change may hold.
pub(super) const MAX_CHANGE_BYTES: usize = 64 * 1024;

async fn database_for(
    state: &AppState,
    principal: &Principal,
    project: &str,
    name: &str,
    role: Role,
) -> ApiResult<Database> {
    project_for(state, principal, project, role).await?;
    state
        .store
        .get_database(project, name)
        .await
        .map_err(not_found("database"))
}

/// Create a database; nodes hold it once a function that uses it is deployed there (or
/// its `pop_selector` selects them).
#[utoipa::path(post, path = "/api/v1/projects/{project}/databases", params(("project" = String, Path)), request_body = CreateDatabase, responses((status = 201, body = Database), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_database(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    ApiJson(input): ApiJson<CreateDatabase>,
) -> ApiResult<(StatusCode, Json<Database>)> {
    project_for(&state, &principal, &project, Role::Developer).await?;
    if !crate::validate::valid_name(&input.name) {
        return Err(ApiError::field(
            "name",
            "must be 1-63 lower-case letters, digits and '-', not starting with '-'",
        ));
    }
    if let Err(error) = edgefn_proto::Selector::parse(&input.pop_selector) {
        return Err(ApiError::field("pop_selector", error.to_string()));
    }
    let database = state
        .store
        .create_database(
            &principal.actor(),
            &project,
            &input.name,
            &input.pop_selector,
            &artifact_urls(&state),
        )
        .await?;
    state.feed.poke();
    Ok((StatusCode::CREATED, Json(database)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/databases", params(("project" = String, Path)), responses((status = 200, body = Vec<Database>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_databases(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Database>>> {
    project_for(&state, &principal, &project, Role::Viewer).await?;
    Ok(Json(state.store.list_databases(&project).await?))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/databases/{name}", params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Database), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_database(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Database>> {
    Ok(Json(
        database_for(&state, &principal, &project, &name, Role::Viewer).await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub(super) struct DeleteQuery {
    /// Delete even while a deployed function uses the database.
    #[serde(default)]
    force: bool,
}

/// Delete a database: refused (409) while a deployed function uses it, unless `force`.
#[utoipa::path(delete, path = "/api/v1/projects/{project}/databases/{name}", params(("project" = String, Path), ("name" = String, Path), DeleteQuery), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_database(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    database_for(&state, &principal, &project, &name, Role::Developer).await?;
    state
        .store
        .delete_database(
            &principal.actor(),
            &project,
            &name,
            query.force,
            &artifact_urls(&state),
        )
        .await
        .map_err(not_found("database"))?;
    state.feed.poke();
    Ok(StatusCode::NO_CONTENT)
}

/// Register a schema change: dry-run on top of the ledger (400 with SQLite's message and
/// the statement's position when it fails, holds statements a transaction cannot, or drops
/// a table or column without `destructive`), then sent to every node that holds the
/// database.
#[utoipa::path(post, path = "/api/v1/projects/{project}/databases/{name}/changes", params(("project" = String, Path), ("name" = String, Path)), request_body = CreateChange, responses((status = 201, body = DatabaseChange), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub(super) async fn create_change(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    ApiJson(input): ApiJson<CreateChange>,
) -> ApiResult<(StatusCode, Json<DatabaseChange>)> {
    database_for(&state, &principal, &project, &name, Role::Developer).await?;
    if input.sql.trim().is_empty() {
        return Err(ApiError::field("sql", "must hold at least one statement"));
    }
    if input.sql.len() > MAX_CHANGE_BYTES {
        return Err(ApiError::field(
            "sql",
            format!("a change holds at most {MAX_CHANGE_BYTES} bytes of SQL"),
        ));
    }
    if input.description.chars().count() > 1000 {
        return Err(ApiError::field(
            "description",
            "must be at most 1000 characters",
        ));
    }
    let change = state
        .store
        .add_database_change(
            &principal.actor(),
            &project,
            &name,
            &input.sql,
            &input.description,
            input.destructive,
            &artifact_urls(&state),
        )
        .await
        .map_err(not_found("database"))?;
    state.feed.poke();
    Ok((StatusCode::CREATED, Json(change)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/databases/{name}/changes", params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Vec<DatabaseChange>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_changes(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<DatabaseChange>>> {
    let database = database_for(&state, &principal, &project, &name, Role::Viewer).await?;
    Ok(Json(state.store.database_changes(&database.id).await?))
}

/// Where each node that holds the database stands: applied and target sequence,
/// fingerprint, state, lag, failures, and a warning when it has been behind too long.
#[utoipa::path(get, path = "/api/v1/projects/{project}/databases/{name}/nodes", params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Vec<NodeDatabase>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn database_nodes(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Vec<NodeDatabase>>> {
    let database = database_for(&state, &principal, &project, &name, Role::Viewer).await?;
    let warn_after = warn_after_ms(&state);
    Ok(Json(
        state.store.database_nodes(&database, warn_after).await?,
    ))
}

/// Repair one node's copy that left the ledger: `recreate` builds it again from the
/// ledger (the node keeps the old file beside it), `accept` takes its schema as it is (409
/// unless it is in drift). The node does it at its next desired state, once.
#[utoipa::path(post, path = "/api/v1/projects/{project}/databases/{name}/nodes/{node}/repair", params(("project" = String, Path), ("name" = String, Path), ("node" = String, Path, description = "The node's id")), request_body = RepairDatabase, responses((status = 202, body = NodeDatabase), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn repair_node_database(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name, node)): Path<(String, String, String)>,
    ApiJson(input): ApiJson<RepairDatabase>,
) -> ApiResult<(StatusCode, Json<NodeDatabase>)> {
    let database = database_for(&state, &principal, &project, &name, Role::Developer).await?;
    let warn_after = warn_after_ms(&state);
    let repaired = state
        .store
        .request_database_repair(
            &principal.actor(),
            &database,
            &node,
            input.action,
            warn_after,
            &artifact_urls(&state),
        )
        .await
        .map_err(not_found("the node's copy of the database"))?;
    state.feed.poke();
    Ok((StatusCode::ACCEPTED, Json(repaired)))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
pub(super) struct SyncLogQuery {
    /// Only this node's attempts.
    node: Option<String>,
    /// Only attempts at or after this time (Unix ms).
    since: Option<i64>,
    /// At most this many rows (default 100, at most 1000).
    limit: Option<i64>,
}

/// Every apply attempt nodes reported for the database, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{project}/databases/{name}/sync-log", params(("project" = String, Path), ("name" = String, Path), SyncLogQuery), responses((status = 200, body = Vec<SyncLogEntry>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn sync_log(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
    Query(query): Query<SyncLogQuery>,
) -> ApiResult<Json<Vec<SyncLogEntry>>> {
    let database = database_for(&state, &principal, &project, &name, Role::Viewer).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        state
            .store
            .database_sync_log(&database.id, query.node.as_deref(), query.since, limit)
            .await?,
    ))
}
