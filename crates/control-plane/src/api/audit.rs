//! The audit log: records filtered by project, actor, action and time (fleet
//! administrators, or a project's owners for that project), and the chain's verification
//! against the signed checkpoints (fleet administrators).

use axum::Json;
use axum::extract::{Query, State};
use edgefn_proto::api::ErrorBody;
use edgefn_proto::audit::{AuditRecord, AuditVerification};
use edgefn_proto::identity::Role;
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState};
use crate::auth::Principal;
use crate::store::AuditFilter;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct AuditQuery {
    /// Only records of this project (required unless you are a fleet administrator).
    project: Option<String>,
    /// `user:NAME`, `node:ID`, `anonymous`, `system`.
    actor: Option<String>,
    /// e.g. `deploy`, `route.update`, `auth.refused`.
    action: Option<String>,
    /// Unix milliseconds, inclusive.
    since: Option<i64>,
    until: Option<i64>,
    /// Records after this sequence number (the last `seq` of the previous page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// At most this many (default 100, at most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery), responses((status = 200, body = Vec<AuditRecord>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_audit(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<AuditQuery>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    match &query.project {
        Some(project) if !principal.is_fleet_admin() => principal.require(Role::Owner, project)?,
        None => principal.require_admin()?,
        Some(_) => {}
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "must be between 1 and 1000"));
    }
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::field("after", "must not be negative"));
    }
    let filter = AuditFilter {
        project: query.project,
        actor: query.actor,
        action: query.action,
        since: query.since,
        until: query.until,
        after_seq: after as u64,
        limit,
    };
    let records = state.store.list_audit(&filter).await?;
    Ok(Json(records.iter().map(|r| r.to_api()).collect()))
}

/// Walks the whole chain against the signed checkpoints.
#[utoipa::path(get, path = "/api/v1/audit/verify", responses((status = 200, body = AuditVerification), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn verify_audit(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<AuditVerification>> {
    principal.require_admin()?;
    let vouched = match &state.checkpoints {
        Some(location) => location
            .vouched(&state.auth.signer)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?,
        None => Default::default(),
    };
    Ok(Json(state.store.verify_audit_chain(&vouched).await?))
}
