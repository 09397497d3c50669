//! Domains of a project (the developer role there; `verified: true` and quotas are for
//! fleet administrators) and the project's quotas on each node.

use axum::Json;
use axum::extract::{Path, State};
use edgefn_proto::api::{CreateDomain, Domain, ErrorBody};
use edgefn_proto::identity::Role;
use edgefn_proto::sync::ProjectQuota;
use http::StatusCode;

use super::{ApiError, ApiJson, ApiResult, AppState, artifact_urls, not_found};
use crate::auth::Principal;
use crate::domains::{DomainName, is_reserved};

/// The project must exist and the caller have `role` in it.
pub(super) async fn project_for(
    state: &AppState,
    principal: &Principal,
    project: &str,
    role: Role,
) -> ApiResult<()> {
    principal.require(role, project)?;
    if !state.store.project_exists(project).await? {
        return Err(ApiError::not_found("project"));
    }
    Ok(())
}

fn parse_name(name: &str) -> ApiResult<DomainName> {
    DomainName::parse(name).map_err(|e| ApiError::field("name", e))
}

/// Claim a domain: it is routable once verified (its DNS TXT record, or an administrator).
#[utoipa::path(post, path = "/api/v1/projects/{project}/domains", params(("project" = String, Path)), request_body = CreateDomain, responses((status = 201, body = Domain), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    ApiJson(input): ApiJson<CreateDomain>,
) -> ApiResult<(StatusCode, Json<Domain>)> {
    project_for(&state, &principal, &project, Role::Developer).await?;
    if input.verified {
        principal.require_admin()?;
    }
    let name = parse_name(&input.name)?;
    if is_reserved(&name, &state.store.platform_domain()) {
        return Err(ApiError::Conflict(format!(
            "{name} is under the platform domain: every project has {project}.{} already",
            state.store.platform_domain()
        )));
    }
    let mut token = [0u8; 16];
    getrandom::fill(&mut token).map_err(|e| ApiError::Internal(e.to_string()))?;
    let domain = state
        .store
        .claim_domain(
            &principal.actor(),
            &project,
            &name,
            input.verified,
            &hex::encode(token),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(domain)))
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/domains", params(("project" = String, Path)), responses((status = 200, body = Vec<Domain>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn list_domains(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Domain>>> {
    project_for(&state, &principal, &project, Role::Viewer).await?;
    Ok(Json(state.store.list_domains(&project).await?))
}

/// Check the claim's DNS TXT record and mark it verified.
#[utoipa::path(post, path = "/api/v1/projects/{project}/domains/{name}/verify", params(("project" = String, Path), ("name" = String, Path)), responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn verify_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<Json<Domain>> {
    project_for(&state, &principal, &project, Role::Developer).await?;
    let name = parse_name(&name)?;
    let domain = state
        .store
        .get_domain(&project, &name.to_string())
        .await
        .map_err(not_found("domain"))?;
    if !domain.verified {
        check_proof(&state, &project, &name, &domain).await?;
    }
    let domain = state
        .store
        .verify_domain(&principal.actor(), &project, &name)
        .await?;
    Ok(Json(domain))
}

/// The claim's TXT record must hold its token.
async fn check_proof(
    state: &AppState,
    project: &str,
    name: &DomainName,
    domain: &Domain,
) -> ApiResult<()> {
    let Some(dns) = &state.dns else {
        // Not a passing outage but how this control plane is set up: said as it is.
        return Err(ApiError::Conflict(
            "this control plane has no DNS resolver to check the TXT record; a fleet administrator can add the domain with \"verified\": true".into(),
        ));
    };
    if let Err(wait) = dns.admit(project) {
        return Err(ApiError::TooManyRequests {
            message: format!(
                "project {project} had a DNS check a moment ago; try again in {} ms",
                wait.as_millis()
            ),
            retry_after_secs: wait.as_secs().max(1),
        });
    }
    // DNS names end at 253 characters: a long claim's challenge name cannot exist.
    if domain.txt_record_name.trim_end_matches('.').len() > 253 {
        return Err(ApiError::Conflict(format!(
            "{} is too long for DNS to hold its TXT record ({} characters, at most 253); a fleet administrator can add the domain with \"verified\": true",
            domain.txt_record_name,
            domain.txt_record_name.len()
        )));
    }
    let token = domain
        .txt_record_value
        .strip_prefix("edgefn-verification=")
        .unwrap_or_default();
    match dns.holds(&name.base, token).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::Conflict(format!(
                "the TXT record {} does not hold {:?} yet",
                domain.txt_record_name, domain.txt_record_value
            )));
        }
        Err(error) => return Err(ApiError::Unavailable(error)),
    }
    Ok(())
}

#[utoipa::path(delete, path = "/api/v1/projects/{project}/domains/{name}", params(("project" = String, Path), ("name" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete_domain(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    project_for(&state, &principal, &project, Role::Developer).await?;
    let name = parse_name(&name)?;
    state
        .store
        .delete_domain(&principal.actor(), &project, &name)
        .await
        .map_err(not_found("domain"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/projects/{project}/quota", params(("project" = String, Path)), responses((status = 200, body = ProjectQuota), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_quota(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> ApiResult<Json<ProjectQuota>> {
    principal.require(Role::Viewer, &project)?;
    Ok(Json(
        state
            .store
            .project_quota(&project)
            .await
            .map_err(not_found("project"))?,
    ))
}

/// Set a project's quotas on each node (fleet administrators); fields left out take the
/// nodes' defaults.
#[utoipa::path(put, path = "/api/v1/projects/{project}/quota", params(("project" = String, Path)), request_body = ProjectQuota, responses((status = 200, body = ProjectQuota), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_quota(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
    ApiJson(quota): ApiJson<ProjectQuota>,
) -> ApiResult<Json<ProjectQuota>> {
    principal.require_admin()?;
    let mut problems = crate::validate::Problems::default();
    if quota.max_concurrent == Some(0) {
        problems.add("max_concurrent", "must be positive");
    }
    if quota.per_minute == Some(0) {
        problems.add("per_minute", "must be positive");
    }
    if quota.pool_share_percent.is_some_and(|p| p == 0 || p > 100) {
        problems.add("pool_share_percent", "must be between 1 and 100");
    }
    problems.into_result(()).map_err(ApiError::Validation)?;
    let urls = artifact_urls(&state);
    state
        .store
        .set_project_quota(&principal.actor(), &project, &quota, &urls)
        .await
        .map_err(not_found("project"))?;
    state.feed.poke();
    Ok(Json(quota))
}
