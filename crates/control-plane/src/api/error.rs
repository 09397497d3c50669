//! `ApiError`: every failure of the API, mapped to a status and the error body in one place.
//! Internal detail is logged once here and never sent to clients.

use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use edgefn_proto::api::{ErrorBody, ErrorDetail, FieldError};
use http::StatusCode;
use serde_json::json;

use crate::artifacts::ArtifactError;
use crate::store::StoreError;

#[derive(Debug)]
pub enum ApiError {
    /// 400 with every failing field.
    Validation(Vec<FieldError>),
    /// 400 for a body that is not the expected JSON.
    BadRequest(String),
    /// 401: no credentials, or credentials that do not hold.
    Unauthenticated(String),
    /// 403: the caller may not do this (or a presigned URL does not hold).
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    PayloadTooLarge(String),
    /// 422: the uploaded bytes are not a runnable artifact.
    InvalidArtifact(String),
    /// 429: try again after this many seconds (sent as `Retry-After`).
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// 503: a backing service is down.
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// A 400 naming one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError {
            field: field.to_string(),
            message: message.into(),
        }])
    }

    fn parts(&self) -> (StatusCode, &'static str, String, serde_json::Value) {
        match self {
            Self::Validation(fields) => (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                format!("{} field(s) failed validation", fields.len()),
                json!({ "fields": fields }),
            ),
            Self::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                "bad_request",
                m.clone(),
                json!(null),
            ),
            Self::Unauthenticated(m) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                m.clone(),
                json!(null),
            ),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone(), json!(null)),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), json!(null)),
            Self::Conflict(m) => (StatusCode::CONFLICT, "conflict", m.clone(), json!(null)),
            Self::PayloadTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                m.clone(),
                json!(null),
            ),
            Self::InvalidArtifact(m) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_artifact",
                m.clone(),
                json!(null),
            ),
            Self::TooManyRequests { message, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                message.clone(),
                json!(null),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "a backing service is unavailable".into(),
                json!(null),
            ),
            Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".into(),
                json!(null),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) | Self::Unavailable(detail) = &self {
            tracing::error!(error = %detail, "request failed");
        }
        let (status, code, message, details) = self.parts();
        let denied = matches!(self, Self::Forbidden(_)).then(|| message.clone());
        let retry_after = match &self {
            Self::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message,
                details,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        if let Some(reason) = denied {
            response
                .extensions_mut()
                .insert(super::guard::DeniedReason(reason));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::NotFound("not found".into()),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Refused(m) => Self::Unauthenticated(m),
            StoreError::Invalid(m) => Self::field("sql", m),
            StoreError::Database(m) | StoreError::Startup(m) => Self::Unavailable(m),
        }
    }
}

impl From<crate::auth::Denied> for ApiError {
    fn from(denied: crate::auth::Denied) -> Self {
        Self::Forbidden(denied.0)
    }
}

impl From<crate::ca::CsrError> for ApiError {
    fn from(error: crate::ca::CsrError) -> Self {
        use crate::ca::CsrError;
        match error {
            CsrError::TooLarge | CsrError::Invalid(_) => Self::field("csr", error.to_string()),
            CsrError::Signing(_) => Self::Internal(error.to_string()),
        }
    }
}

impl From<Vec<FieldError>> for ApiError {
    fn from(fields: Vec<FieldError>) -> Self {
        Self::Validation(fields)
    }
}

impl From<ArtifactError> for ApiError {
    fn from(error: ArtifactError) -> Self {
        match error {
            ArtifactError::NotFound => Self::NotFound("object not found".into()),
            ArtifactError::Store(m) => Self::Unavailable(m),
            too_large @ ArtifactError::TooLarge { .. } => {
                Self::PayloadTooLarge(too_large.to_string())
            }
            incomplete @ ArtifactError::Incomplete(_) => Self::BadRequest(incomplete.to_string()),
        }
    }
}

impl ApiError {
    /// A request body axum could not take: too large (413) or unreadable (400).
    fn body_rejection(status: StatusCode, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::PayloadTooLarge("request body too large".into())
        } else {
            Self::BadRequest(text)
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        Self::body_rejection(rejection.status(), rejection.body_text())
    }
}

/// `axum::Json`, with rejections answered in the API's error shape, that takes only a JSON
/// object: serde would also read a struct from an array (`[null, null]`), which no client
/// means and the API's document does not allow.
pub struct ApiJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let json = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|media| {
                media.eq_ignore_ascii_case("application/json")
                    || (media.starts_with("application/") && media.ends_with("+json"))
            });
        if !json {
            return Err(Self::Rejection::BadRequest(
                "expected a request with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                ApiError::body_rejection(rejection.status(), rejection.body_text())
            })?;
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::BadRequest(
                "the body must be a JSON object".into(),
            ));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Self(value))
    }
}

/// Gives every error answer the API's JSON error body. Axum's own rejections (a path or
/// query parameter that does not parse, a method not allowed, a body of the wrong type)
/// answer in plain text; clients and generated SDKs expect one error shape from every
/// endpoint, so the text becomes the `message` and the status stays.
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
        _ if status.is_server_error() => "internal",
        _ => "error",
    };
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message,
            details: serde_json::Value::Null,
        },
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(json))
}
