//! Recognising an artifact: its kind from the bytes, its SHA-256, and where its
//! precompiled native code lives.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::RuntimeError;

/// What an artifact contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactKind {
    /// A WASI 0.2 component exporting `wasi:http/incoming-handler`.
    Component,
    /// A WASI preview 1 core module run in the CGI convention.
    Module,
}

impl ArtifactKind {
    /// Detects the kind from the header, refusing anything that is not WebAssembly.
    pub fn detect(bytes: &[u8]) -> Result<Self, RuntimeError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(RuntimeError::invalid(
                "not a WebAssembly binary (bad magic number)",
            ));
        }
        if wasmparser::Parser::is_component(bytes) {
            Ok(Self::Component)
        } else if wasmparser::Parser::is_core_wasm(bytes) {
            Ok(Self::Module)
        } else {
            Err(RuntimeError::invalid(
                "unsupported WebAssembly binary version",
            ))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Component => "component",
            Self::Module => "module",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "component" => Some(Self::Component),
            "module" => Some(Self::Module),
            _ => None,
        }
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Where the native code compiled from an artifact with hash `sha256` is cached: beside the
/// artifact, keyed by the artifact's hash and the engine's compatibility hash, so a new
/// Wasmtime or different engine settings never load stale code.
pub(crate) fn precompiled_path(artifact: &Path, sha256: &str, engine_hash: &str) -> PathBuf {
    artifact.with_file_name(format!("{sha256}.{engine_hash}.cwasm"))
}
