//! Login, whoami, users (administrators), projects and members (owners), and API tokens.

use axum::Json;
use axum::extract::{Path, Request, State};
use edgefn_proto::api::ErrorBody;
use edgefn_proto::identity::{
    CreateProject, CreateToken, CreateUser, LoginRequest, Member, Project, Role, SetMember,
    TokenCreated, TokenInfo, User, WhoAmI,
};
use http::StatusCode;
use serde_json::json;

use super::{ApiError, ApiJson, ApiResult, AppState, not_found};
use std::time::Instant;

use crate::audit::{self, Entry};
use crate::auth::tokens::secret_hash;
use crate::auth::{Principal, password};
use crate::validate;

/// Longest lifetime of a token, whoever asks.
pub(super) const MAX_TOKEN_DAYS: u64 = 366;

/// Issues a token for a user (`(id, name)`), limited to `(project, role)`, and records it
/// (hashed).
async fn issue(
    state: &AppState,
    actor: &str,
    (user_id, user): (&str, &str),
    (project, role): (Option<String>, Option<Role>),
    ttl: std::time::Duration,
    description: &str,
) -> ApiResult<TokenCreated> {
    let (claims, token) = state
        .auth
        .signer
        .issue_api(user_id, user, project, role, ttl)
        .map_err(ApiError::Internal)?;
    state
        .store
        .insert_token(actor, &claims, &secret_hash(&token), description)
        .await?;
    Ok(TokenCreated {
        id: claims.jti,
        token,
        expires_at: claims.exp.saturating_mul(1000),
    })
}

/// A login is a user name, a password and a lifetime: a few hundred bytes.
const MAX_LOGIN_BODY: usize = 4 << 10;
/// Bytes of an offered user name kept in the audit record of a refused login.
const MAX_AUDITED_USER_NAME: usize = 64;

/// A user's name and password for a token with the user's own roles.
#[utoipa::path(post, path = "/api/v1/login", security(()), request_body = LoginRequest, responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 413, body = ErrorBody), (status = 429, body = ErrorBody, description = "locked out after failed logins, or too many logins at once; see Retry-After")))]
pub(super) async fn login(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let peer = super::guard::peer(&request);
    let body = axum::body::to_bytes(request.into_body(), MAX_LOGIN_BODY)
        .await
        .map_err(|_| ApiError::PayloadTooLarge("login body over 4 KiB".into()))?;
    let input: LoginRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid login: {e}")))?;
    let ttl = validate::ttl("ttl", input.ttl.as_deref(), "12h", MAX_TOKEN_DAYS * 86_400)?;
    // What the audit log keeps of an offered name: no one grows it with long ones.
    let offered = audit::truncate(&input.user, MAX_AUDITED_USER_NAME);
    let refuse = async |reason: &str| -> ApiResult<()> {
        let entry = Entry::new(
            &format!("user:{offered}"),
            "auth.refused",
            "POST /api/v1/login",
        )
        .details(json!({ "reason": reason, "peer": peer.map(|p| p.to_string()) }));
        state.store.record_refusal(&entry).await?;
        Ok(())
    };
    let address = peer.map(|p| p.ip());
    let name = audit::truncate(&input.user, validate::MAX_USER_NAME);
    if let Err(throttled) = state.logins.check(name, address, Instant::now()) {
        refuse("too many failed logins: locked out").await?;
        return Err(ApiError::TooManyRequests {
            message: "too many failed logins; try again later".into(),
            retry_after_secs: throttled.retry_after_secs(),
        });
    }
    // No user has a name this long: refused without hashing, counted like a wrong guess.
    let user = if input.user.len() > validate::MAX_USER_NAME {
        None
    } else {
        state.store.user_by_name(&input.user).await?
    };
    let stored = user.as_ref().and_then(|u| u.password_hash.clone());
    let password = input.password;
    let matches = state
        .logins
        .hash(move || password::verify(&password, stored.as_deref()))
        .await
        .map_err(|throttled| ApiError::TooManyRequests {
            message: "too many logins at once; try again".into(),
            retry_after_secs: throttled.retry_after_secs(),
        })?;
    let user = match user {
        Some(user) if matches => user,
        _ => {
            state.logins.failed(name, address, Instant::now());
            refuse("wrong user name or password").await?;
            return Err(ApiError::Unauthenticated(
                "wrong user name or password".into(),
            ));
        }
    };
    state.logins.succeeded(&user.name);
    let actor = format!("user:{}", user.name);
    let created = issue(
        &state,
        &actor,
        (&user.id, &user.name),
        (None, None),
        ttl,
        "login",
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/whoami", responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub(super) async fn whoami(principal: Principal) -> Json<WhoAmI> {
    Json(WhoAmI {
        projects: principal.effective_roles(),
        user: principal.user,
        admin: principal.admin,
        token_project: principal.token_project,
        token_role: principal.token_role,
        issuer: principal.issuer,
    })
}

/// A user (fleet administrators).
#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser, responses((status = 201, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateUser>,
) -> ApiResult<(StatusCode, Json<User>)> {
    principal.require_admin()?;
    validate::user(&input).map_err(ApiError::Validation)?;
    let hash = match &input.password {
        Some(password) => Some(password::hash(password).map_err(ApiError::Internal)?),
        None => None,
    };
    let user = state
        .store
        .create_user(
            &principal.actor(),
            &input.name,
            hash.as_deref(),
            input.admin,
            input.issuer.as_deref(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(get, path = "/api/v1/users", responses((status = 200, body = Vec<User>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<User>>> {
    principal.require_admin()?;
    Ok(Json(state.store.list_users().await?))
}

/// A project (fleet administrators).
#[utoipa::path(post, path = "/api/v1/projects", request_body = CreateProject, responses((status = 201, body = Project), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn create_project(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateProject>,
) -> ApiResult<(StatusCode, Json<Project>)> {
    principal.require_admin()?;
    if !validate::valid_name(&input.name) {
        return Err(ApiError::field(
            "name",
            "lower-case letters, digits and '-', at most 63",
        ));
    }
    let project = state
        .store
        .create_project(&principal.actor(), &input.name)
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// The projects the caller can read.
#[utoipa::path(get, path = "/api/v1/projects", responses((status = 200, body = Vec<Project>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_projects(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<Project>>> {
    let visible = principal.visible();
    Ok(Json(
        state
            .store
            .list_projects()
            .await?
            .into_iter()
            .filter(|p| visible.includes(&p.id))
            .collect(),
    ))
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/members", params(("id" = String, Path)), responses((status = 200, body = Vec<Member>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
    Path(project): Path<String>,
) -> ApiResult<Json<Vec<Member>>> {
    principal.require(Role::Viewer, &project)?;
    Ok(Json(state.store.list_members(&project).await?))
}

/// Adds a member or changes their role (the project's owners).
#[utoipa::path(put, path = "/api/v1/projects/{id}/members/{user}", params(("id" = String, Path), ("user" = String, Path)), request_body = SetMember, responses((status = 200, body = Member), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn set_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, user)): Path<(String, String)>,
    ApiJson(input): ApiJson<SetMember>,
) -> ApiResult<Json<Member>> {
    principal.require(Role::Owner, &project)?;
    let member = state
        .store
        .set_member(&principal.actor(), &project, &user, input.role)
        .await
        .map_err(not_found("project or user"))?;
    Ok(Json(member))
}

#[utoipa::path(delete, path = "/api/v1/projects/{id}/members/{user}", params(("id" = String, Path), ("user" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn remove_member(
    State(state): State<AppState>,
    principal: Principal,
    Path((project, user)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    principal.require(Role::Owner, &project)?;
    state
        .store
        .remove_member(&principal.actor(), &project, &user)
        .await
        .map_err(not_found("member"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A token for the caller, limited to one project and a role no higher than theirs there
/// (fleet administrators may leave both out for a fleet-wide token).
#[utoipa::path(post, path = "/api/v1/tokens", request_body = CreateToken, responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn create_token(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(input): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<TokenCreated>)> {
    let mut ttl = validate::ttl("ttl", input.ttl.as_deref(), "30d", MAX_TOKEN_DAYS * 86_400)?;
    if input.description.chars().count() > 200 {
        return Err(ApiError::field("description", "at most 200 characters"));
    }
    let role = match (&input.project, input.role) {
        (Some(project), role) => {
            let have = principal.role_in(project).ok_or_else(|| {
                ApiError::from(crate::auth::Denied(format!(
                    "you have no role in project {project:?}"
                )))
            })?;
            let wanted = role.unwrap_or(have);
            if wanted > have {
                return Err(crate::auth::Denied(format!(
                    "you are {have} in project {project:?} and cannot issue a {wanted} token"
                ))
                .into());
            }
            Some(wanted)
        }
        (None, Some(_)) => return Err(ApiError::field("role", "a role needs a project")),
        (None, None) => {
            principal.require_admin()?;
            None
        }
    };
    if principal.user_id.is_empty() {
        return Err(crate::auth::Denied(
            "users of the external issuer are not known here; an administrator must add them first"
                .into(),
        )
        .into());
    }
    // A token never outlives the token that made it (nor, through its limits, exceeds it):
    // the default lifetime shrinks to what is left; a longer one asked for is refused.
    if let Some(expires) = principal.token_expires_at {
        let left = expires - crate::store::now_ms() / 1000;
        if input.ttl.is_none() && left > 0 {
            ttl = ttl.min(std::time::Duration::from_secs(left as u64));
        }
        if ttl.as_secs() as i64 > left {
            return Err(crate::auth::Denied(format!(
                "a token cannot outlive the token that creates it ({}s left): ask for a shorter --ttl",
                left.max(0)
            ))
            .into());
        }
    }
    let created = issue(
        &state,
        &principal.actor(),
        (&principal.user_id, &principal.user),
        (input.project.clone(), role),
        ttl,
        &input.description,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The caller's tokens (every token for a fleet administrator); never their secrets.
#[utoipa::path(get, path = "/api/v1/tokens", responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_tokens(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<Json<Vec<TokenInfo>>> {
    let user = (!principal.is_fleet_admin()).then_some(principal.user_id.as_str());
    let tokens = state.store.list_tokens(user).await?;
    Ok(Json(
        tokens
            .into_iter()
            .filter(|t| {
                principal.is_fleet_admin()
                    || principal.may_manage_token(t.project.as_deref(), t.role)
            })
            .collect(),
    ))
}

/// Revokes a token: the caller's own, or any for a fleet administrator.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", params(("id" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let (owner, token) = state
        .store
        .get_token(&id)
        .await
        .map_err(not_found("token"))?;
    if owner != principal.user_id && !principal.is_fleet_admin() {
        return Err(crate::auth::Denied("you can revoke only your own tokens".into()).into());
    }
    if !principal.is_fleet_admin()
        && !principal.may_manage_token(token.project.as_deref(), token.role)
    {
        return Err(crate::auth::Denied(
            "a token limited to a project manages only tokens with the same limit or narrower"
                .into(),
        )
        .into());
    }
    state.store.revoke_token(&principal.actor(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
