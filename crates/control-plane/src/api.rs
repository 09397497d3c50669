//! The REST API under `/api/v1`: `router(state)` builds the developer API, `node_router`
//! the node listener's. Handlers authorize the caller (`guard` authenticates), validate,
//! call the store and the artifact store, and answer JSON or an [`ApiError`].
//!
//! | module | endpoints |
//! |---|---|
//! | `functions` | functions, versions, presigned uploads, artifacts |
//! | `routes` | routes |
//! | `deployments` | deploy, rollback, undeploy, deployments |
//! | `nodes` | nodes as developers and operators see them; enrollment; revocation |
//! | `identity` | login, whoami, users, projects and members, API tokens |
//! | `audit` | the audit log and its verification |
//! | `databases` | edge databases, their schema ledgers, per-node sync state and sync log |
//! | `node_sync` | the node listener: heartbeats, desired states, artifacts, node tokens, the push stream |
//! | `openapi` | the OpenAPI documents, with the validators' rules |

mod audit;
mod databases;
mod deployments;
mod domains;
mod error;
mod functions;
pub mod guard;
mod identity;
pub mod node_sync;
mod nodes;
pub mod openapi;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use edgefn_proto::identity::Role;

pub use self::error::{ApiError, ApiJson};
pub use self::openapi::{ApiDoc, NodeApiDoc};
use crate::artifacts::Artifacts;
use crate::auth::{Auth, Principal};
use crate::ca::NodeAuthority;
use crate::checkpoints::CheckpointStore;
use crate::store::{Store, StoreError};
use crate::validate::Limits;

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
    /// Revoked nodes, whose connections close at once.
    pub revocations: Arc<crate::revocations::Revocations>,
    /// Token checks and issuance.
    pub auth: Arc<Auth>,
    /// The node CA, enrollment and node tokens.
    pub ca: Arc<NodeAuthority>,
    /// Where audit checkpoints are kept (for `GET /audit/verify`).
    pub checkpoints: Option<CheckpointStore>,
    /// Failed-login lockouts and the Argon2 concurrency cap of `POST /login`.
    pub logins: Arc<crate::auth::throttle::LoginThrottle>,
    /// Checks the DNS proof of domain claims (`None`: no resolver; administrators can
    /// still mark domains verified).
    pub dns: Option<Arc<crate::domains::dns::DnsVerifier>>,
    /// Compiles artifacts once for the fleet (`None`: no compile worker configured; nodes
    /// compile for themselves).
    pub precompiler: Option<Arc<crate::precompile::Precompiler>>,
    /// How long a node may be behind a database's ledger before it is a warning.
    pub database_warn_after: Duration,
}

type ApiResult<T> = Result<T, ApiError>;

/// JSON request bodies above this are refused with 413 (artifacts have their own limit).
const MAX_JSON_BODY: usize = 1 << 20;

/// The developer API: everything but the public routes needs a bearer token.
pub fn router(state: AppState) -> Router {
    let uploads = Router::new()
        .route("/uploads/{function_id}/{version}", put(functions::upload))
        .layer(DefaultBodyLimit::max(state.max_artifact_bytes));
    // Made once: the document holds this control plane's limits.
    let document = bytes::Bytes::from(
        serde_json::to_vec(&openapi::document(state.limits)).unwrap_or_default(),
    );
    let public =
        Router::new()
            .route(
                "/openapi.json",
                get(move || async move {
                    ([(http::header::CONTENT_TYPE, "application/json")], document)
                }),
            )
            .route("/login", post(identity::login))
            // Enrollment is authorized by its one-time bootstrap token, not a user's.
            .route("/nodes/register", post(nodes::enroll))
            .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
            .merge(uploads);
    let protected = Router::new()
        .route(
            "/functions",
            post(functions::create_function).get(functions::list_functions),
        )
        .route(
            "/functions/{id}",
            get(functions::get_function).delete(functions::delete_function),
        )
        .route(
            "/functions/{id}/versions",
            post(functions::create_version).get(functions::list_versions),
        )
        .route("/functions/{id}/settings", put(functions::update_settings))
        .route(
            "/functions/{id}/versions/{version}",
            get(functions::get_version),
        )
        .route(
            "/functions/{id}/versions/{version}/complete",
            post(functions::complete_version),
        )
        .route(
            "/functions/{id}/versions/{version}/upload-url",
            post(functions::renew_upload_url),
        )
        .route("/artifacts/{sha256}", get(functions::download_artifact))
        .route(
            "/routes",
            post(routes::create_route).get(routes::list_routes),
        )
        .route(
            "/routes/{id}",
            get(routes::get_route)
                .put(routes::update_route)
                .delete(routes::delete_route),
        )
        .route("/nodes", get(nodes::list_nodes))
        .route("/nodes/tokens", post(nodes::create_bootstrap_token))
        .route("/nodes/{id}", get(nodes::get_node))
        .route("/nodes/{id}/revoke", post(nodes::revoke_node))
        .route("/functions/{id}/deploy", post(deployments::deploy))
        .route("/functions/{id}/rollback", post(deployments::rollback))
        .route("/functions/{id}/undeploy", post(deployments::undeploy))
        .route("/deployments/{id}", get(deployments::get_deployment))
        .route(
            "/deployments/{id}/retry",
            post(deployments::retry_deployment),
        )
        .route("/whoami", get(identity::whoami))
        .route(
            "/users",
            post(identity::create_user).get(identity::list_users),
        )
        .route(
            "/projects",
            post(identity::create_project).get(identity::list_projects),
        )
        .route("/projects/{id}/members", get(identity::list_members))
        .route(
            "/projects/{id}/members/{user}",
            put(identity::set_member).delete(identity::remove_member),
        )
        .route(
            "/projects/{project}/domains",
            post(domains::create_domain).get(domains::list_domains),
        )
        .route(
            "/projects/{project}/domains/{name}",
            delete(domains::delete_domain),
        )
        .route(
            "/projects/{project}/domains/{name}/verify",
            post(domains::verify_domain),
        )
        .route(
            "/projects/{project}/databases",
            post(databases::create_database).get(databases::list_databases),
        )
        .route(
            "/projects/{project}/databases/{name}",
            get(databases::get_database).delete(databases::delete_database),
        )
        .route(
            "/projects/{project}/databases/{name}/changes",
            post(databases::create_change).get(databases::list_changes),
        )
        .route(
            "/projects/{project}/databases/{name}/nodes",
            get(databases::database_nodes),
        )
        .route(
            "/projects/{project}/databases/{name}/nodes/{node}/repair",
            post(databases::repair_node_database),
        )
        .route(
            "/projects/{project}/databases/{name}/sync-log",
            get(databases::sync_log),
        )
        .route(
            "/projects/{project}/quota",
            get(domains::get_quota).put(domains::set_quota),
        )
        .route(
            "/tokens",
            post(identity::create_token).get(identity::list_tokens),
        )
        .route("/tokens/{id}", delete(identity::revoke_token))
        .route("/audit", get(audit::list_audit))
        .route("/audit/verify", get(audit::verify_audit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::authenticate,
        ))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY));
    Router::new()
        .nest("/api/v1", public.merge(protected))
        .fallback(|| async { ApiError::not_found("endpoint") })
        .layer(axum::middleware::map_response(error::json_errors))
        .with_state(state)
}

pub use self::node_sync::node_router;

fn not_found(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(what),
        other => other.into(),
    }
}

/// The function `id`, if the caller has at least `role` in its project: 404 when there is
/// no such function, 403 when it belongs to a project the caller cannot act in that way.
async fn function_for(
    state: &AppState,
    principal: &Principal,
    id: &str,
    role: Role,
) -> ApiResult<edgefn_proto::api::Function> {
    let function = state
        .store
        .get_function(id)
        .await
        .map_err(not_found("function"))?;
    principal.require(role, &function.project)?;
    Ok(function)
}

/// Route, node and function changes change what nodes must run: recompute every node's
/// desired state (a node whose document changed gets a new revision).
async fn refresh_desired(state: &AppState) -> ApiResult<()> {
    let urls = artifact_urls(state);
    state.store.refresh_desired(&urls, None).await?;
    state.feed.poke();
    Ok(())
}

fn artifact_urls(state: &AppState) -> impl Fn(&str) -> String + Send + Sync + '_ {
    |sha256| state.ca.artifact_url(sha256)
}
