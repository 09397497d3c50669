//! The authentication middleware of the developer API, and the caller as handlers see it.
//!
//! Every protected request gets its [`Principal`] here or is answered 401; a 401 and a 403
//! are both written to the audit log (who tried, what, from where, why), so that probing
//! leaves a trace. Handlers decide authorization with the principal (`policy`).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};
use crate::audit::Entry;
use crate::auth::{AuthFailure, Principal};

/// Set on a 403 response by `ApiError::Forbidden`: the reason, for the audit record.
#[derive(Clone, Debug)]
pub struct DeniedReason(pub String);

/// The peer address of a request, when the listener recorded it.
pub fn peer(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
}

/// Authenticates the request, runs it, and audits a refusal or a denial.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    // The full path: inside `nest` the request's own URI has lost its prefix.
    let path = request
        .extensions()
        .get::<axum::extract::OriginalUri>()
        .map_or_else(
            || request.uri().path().to_string(),
            |u| u.path().to_string(),
        );
    let target = format!("{} {path}", request.method());
    let peer = peer(&request).map(|p| p.to_string());
    let principal = match state.auth.principal(&state.store, request.headers()).await {
        Ok(principal) => principal,
        Err(AuthFailure::Refused { reason, claimed }) => {
            let entry = Entry::new(
                claimed.as_deref().unwrap_or("anonymous"),
                "auth.refused",
                &target,
            )
            .details(json!({ "reason": reason.to_string(), "peer": peer }));
            if let Err(error) = state.store.record_refusal(&entry).await {
                tracing::error!(%error, "cannot audit a refused authentication");
            }
            return ApiError::Unauthenticated(reason.to_string()).into_response();
        }
        Err(AuthFailure::Unavailable(error)) => return ApiError::from(error).into_response(),
    };
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if let Some(DeniedReason(reason)) = response.extensions().get::<DeniedReason>() {
        let entry = Entry::new(&principal.actor(), "auth.denied", &target)
            .details(json!({ "reason": reason, "peer": peer, "token": principal.token_id }));
        if let Err(error) = state.store.record_refusal(&entry).await {
            tracing::error!(%error, "cannot audit a denied call");
        }
    }
    response
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("no bearer token".into()))
    }
}
