//! Nodes as developers and operators see them, enrollment with a one-time bootstrap token,
//! and revocation.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use edgefn_proto::api::{ErrorBody, Node};
use edgefn_proto::identity::{
    BootstrapTokenCreated, CreateBootstrapToken, EnrollNode, NodeEnrolled,
};
use edgefn_proto::sync::NodeStatus;
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiResult, AppState, artifact_urls, not_found};
use crate::audit::Entry;
use crate::auth::Principal;
use crate::auth::tokens::{bearer, random_hex, secret_hash};
use crate::store::{Enrollment, StoreError, new_id, now_ms};
use crate::validate;

/// Longest lifetime of a bootstrap token.
pub(super) const MAX_BOOTSTRAP_DAYS: u64 = 30;

/// Bootstrap tokens start with this, so they are told apart from JWTs at a glance.
const BOOTSTRAP_PREFIX: &str = "edgefn-bootstrap-";

/// A node enrolls: with a one-time bootstrap token as its bearer token and a CSR for the
/// key it made, it gets its node id and a certificate naming it.
#[utoipa::path(post, path = "/api/v1/nodes/register", security(()), request_body = EnrollNode, responses((status = 201, body = NodeEnrolled), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn enroll(
    State(state): State<AppState>,
    request: Request,
) -> ApiResult<(StatusCode, Json<NodeEnrolled>)> {
    let peer = super::guard::peer(&request).map(|p| p.to_string());
    let token = match bearer(request.headers()) {
        Ok(token) => token.to_string(),
        Err(reason) => {
            let entry = Entry::new("anonymous", "auth.refused", "POST /api/v1/nodes/register")
                .details(json!({ "reason": reason.to_string(), "peer": peer }));
            state.store.record_refusal(&entry).await?;
            return Err(ApiError::Unauthenticated(format!(
                "enrollment needs a bootstrap token: {reason}"
            )));
        }
    };
    let body = axum::body::to_bytes(request.into_body(), super::MAX_JSON_BODY)
        .await
        .map_err(|_| ApiError::PayloadTooLarge("request body too large".into()))?;
    let input: EnrollNode = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid enrollment: {e}")))?;
    validate::node(&input.name, &input.labels).map_err(ApiError::Validation)?;
    // Nothing is signed for a caller without a usable token (the enrollment's transaction
    // checks it again, and uses it up).
    if !state
        .store
        .bootstrap_token_usable(&secret_hash(&token))
        .await?
    {
        let reason = "the bootstrap token is unknown, used or expired";
        let entry = Entry::new("anonymous", "auth.refused", "POST /api/v1/nodes/register")
            .details(json!({ "reason": reason, "peer": peer, "node": input.name }));
        state.store.record_refusal(&entry).await?;
        return Err(ApiError::Unauthenticated(reason.into()));
    }
    let node_id = new_id("node");
    let issued = state.ca.sign_node_csr(&input.csr, &node_id)?;
    let enrollment = Enrollment {
        node_id: &node_id,
        name: &input.name,
        labels: &input.labels,
        address: &input.address,
        cert_serial: &issued.serial,
        cert_expires_at: issued.expires_at,
        peer: peer.clone(),
    };
    match state
        .store
        .enroll_node(&secret_hash(&token), &enrollment)
        .await
    {
        Ok(()) => {}
        Err(StoreError::Refused(reason)) => {
            let entry = Entry::new("anonymous", "auth.refused", "POST /api/v1/nodes/register")
                .details(json!({ "reason": reason, "peer": peer, "node": input.name }));
            state.store.record_refusal(&entry).await?;
            return Err(ApiError::Unauthenticated(reason));
        }
        Err(other) => return Err(other.into()),
    }
    // A node that enrolls later receives everything its labels match.
    let urls = artifact_urls(&state);
    state.store.refresh_desired(&urls, Some(&node_id)).await?;
    state.feed.poke();
    tracing::info!(node_id, name = %input.name, "node enrolled");
    Ok((
        StatusCode::CREATED,
        Json(NodeEnrolled {
            node_id,
            certificate: issued.pem,
            ca_certificate: state.ca.ca_pem().to_string(),
            certificate_expires_at: issued.expires_at,
            node_url: state.ca.node_url.clone(),
        }),
    ))
}

/// A one-time token one node enrolls with (fleet administrators).
#[utoipa::path(post, path = "/api/v1/nodes/tokens", request_body = CreateBootstrapToken, responses((status = 201, body = BootstrapTokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(super) async fn create_bootstrap_token(
    State(state): State<AppState>,
    principal: Principal,
    super::ApiJson(input): super::ApiJson<CreateBootstrapToken>,
) -> ApiResult<(StatusCode, Json<BootstrapTokenCreated>)> {
    principal.require_admin()?;
    let ttl = validate::ttl(
        "ttl",
        input.ttl.as_deref(),
        "1h",
        MAX_BOOTSTRAP_DAYS * 86_400,
    )?;
    let id = new_id("bt");
    let token = format!(
        "{BOOTSTRAP_PREFIX}{}",
        random_hex(32).map_err(ApiError::Internal)?
    );
    let expires_at = now_ms().saturating_add(ttl.as_millis() as i64);
    state
        .store
        .create_bootstrap_token(&principal.actor(), &id, &secret_hash(&token), expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(BootstrapTokenCreated {
            id,
            token,
            expires_at,
            ca_sha256: state.ca.ca_sha256(),
        }),
    ))
}

/// Revokes a node (fleet administrators): its connections close at once, new ones are
/// refused, and its certificate and tokens stop working.
#[utoipa::path(post, path = "/api/v1/nodes/{id}/revoke", params(("id" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn revoke_node(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    principal.require_admin()?;
    state
        .store
        .revoke_node(&principal.actor(), &id)
        .await
        .map_err(not_found("node"))?;
    state.revocations.revoke(&id);
    tracing::info!(node_id = %id, "node revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct NodeFilter {
    #[serde(default)]
    healthy: bool,
    pop: Option<String>,
    region: Option<String>,
}

/// All nodes, or with `healthy=true` the set a load balancer should route to: online
/// nodes only, optionally of one `pop` or `region`. Any member of a project.
#[utoipa::path(get, path = "/api/v1/nodes", params(("healthy" = Option<bool>, Query, description = "only online nodes"), ("pop" = Option<String>, Query), ("region" = Option<String>, Query)), responses((status = 200, body = Vec<Node>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_nodes(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<NodeFilter>,
) -> ApiResult<Json<Vec<Node>>> {
    principal.require_any_role()?;
    let nodes = state.store.list_nodes().await?;
    let selected = nodes
        .into_iter()
        .filter(|n| !filter.healthy || (n.status == NodeStatus::Online && n.revoked_at.is_none()))
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
    Ok(Json(redacted(&state, &principal, selected).await?))
}

/// What a node runs is the business of the projects it runs it for: besides fleet
/// administrators, a caller sees only the inventory items, errors and usage of functions
/// (and tenants) of projects it can read.
async fn redacted(
    state: &AppState,
    principal: &Principal,
    mut nodes: Vec<Node>,
) -> ApiResult<Vec<Node>> {
    let visible = principal.visible();
    if matches!(visible, crate::auth::Visible::All) {
        return Ok(nodes);
    }
    let readable: std::collections::HashSet<String> = state
        .store
        .list_functions(None)
        .await?
        .into_iter()
        .filter(|f| visible.includes(&f.project))
        .map(|f| f.id)
        .collect();
    for node in &mut nodes {
        node.inventory
            .retain(|item| readable.contains(&item.function_id));
        node.databases
            .retain(|database| visible.includes(&database.project));
        node.usage
            .functions
            .retain(|usage| readable.contains(&usage.function_id));
        node.usage
            .tenants
            .retain(|usage| visible.includes(&usage.tenant));
    }
    Ok(nodes)
}

#[utoipa::path(get, path = "/api/v1/nodes/{id}", params(("id" = String, Path)), responses((status = 200, body = Node), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn get_node(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
) -> ApiResult<Json<Node>> {
    principal.require_any_role()?;
    let node = state.store.get_node(&id).await.map_err(not_found("node"))?;
    let mut nodes = redacted(&state, &principal, vec![node]).await?;
    Ok(Json(
        nodes.pop().ok_or_else(|| ApiError::not_found("node"))?,
    ))
}
