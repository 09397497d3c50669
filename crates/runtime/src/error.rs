//! The runtime's typed errors. Callers (the runner) branch on the kind, never on the text,
//! and map each kind to an HTTP status in one place.

use std::time::Duration;

/// Why a function could not be loaded, or why one invocation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The artifact is not something this runtime can run; `reason` says why (not
    /// WebAssembly, truncated, missing import, missing entrypoint, too large, ...).
    #[error("invalid artifact: {reason}")]
    InvalidArtifact { reason: String },
    /// The artifact file is not the one the caller asked for: its SHA-256 differs (a
    /// corrupt cache entry or a bad download, not a bad module — worth fetching again).
    #[error("sha256 mismatch: expected {expected}, artifact has {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    /// The version's settings are out of range (`memory_pages`, limits, allowlist syntax).
    #[error("invalid settings: {reason}")]
    InvalidSettings { reason: String },
    /// The guest ran past its `max_execution_ms`.
    #[error("function timed out after {limit:?}")]
    Timeout { limit: Duration },
    /// The guest tried to grow its linear memory past `memory_pages`.
    #[error("function exceeded its memory limit of {limit_bytes} bytes")]
    MemoryLimit { limit_bytes: u64 },
    /// The guest trapped (or failed to produce a response).
    #[error("function trapped: {message}")]
    Trap { message: String },
    /// The guest asked for something its capabilities do not allow.
    #[error("capability denied: {capability}")]
    CapabilityDenied { capability: String },
    /// Every hot instance of the version stayed busy until the request's deadline.
    #[error("function overloaded: no instance became free in time")]
    Overloaded,
    /// The request or the response body is larger than the configured limit.
    #[error("{what} body exceeds the limit of {limit_bytes} bytes")]
    BodyTooLarge {
        what: &'static str,
        limit_bytes: u64,
    },
    /// Something went wrong in the host, not in the guest (I/O on the cache, a broken
    /// compiler process). The message is for logs, not for clients.
    #[error("internal runtime error: {message}")]
    Internal { message: String },
}

impl RuntimeError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        Self::InvalidArtifact {
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal {
            message: message.to_string(),
        }
    }

    /// A short stable code for metrics labels and logs (`timeout`, `memory_limit`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArtifact { .. } => "invalid_artifact",
            Self::Sha256Mismatch { .. } => "sha256_mismatch",
            Self::InvalidSettings { .. } => "invalid_settings",
            Self::Timeout { .. } => "timeout",
            Self::MemoryLimit { .. } => "memory_limit",
            Self::Trap { .. } => "trap",
            Self::CapabilityDenied { .. } => "capability_denied",
            Self::Overloaded => "overloaded",
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::Internal { .. } => "internal",
        }
    }
}
