//! Recognising an artifact: its kind from the bytes, the toolchain that made it, its
//! SHA-256, and where its precompiled native code lives.

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

/// The toolchain that made a component, read from its `producers` and `component-name`
/// sections (what compilers and `wit-component` record; a guest may strip them, and is then
/// [`Toolchain::Other`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toolchain {
    /// Rust (`wit-bindgen`, `wasip2`, the Spin SDK): no module names a language other than
    /// Rust, and rustc or wit-bindgen-rust is named (a stripped release build keeps only the
    /// latter).
    Rust,
    /// JavaScript through `componentize-js` (StarlingMonkey).
    ComponentizeJs,
    /// Python through `componentize-py` (CPython linked as `libpython*.so`).
    ComponentizePy,
    /// Anything else, or nothing recorded.
    Other,
}

impl Toolchain {
    /// Reads the toolchain from a component's custom sections (modules are [`Self::Other`]).
    pub fn detect(bytes: &[u8]) -> Self {
        use wasmparser::{ComponentName, KnownCustom, Payload};
        // Flags, not lists: what a hostile artifact records costs no memory here.
        let (mut by_componentize_js, mut by_component_init, mut by_rust) = (false, false, false);
        let mut languages_other_than_rust = false;
        let mut modules_with_language = 0usize;
        let mut links_libpython = false;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            let Ok(Payload::CustomSection(section)) = payload else {
                continue;
            };
            match section.as_known() {
                KnownCustom::Producers(producers) => {
                    for field in producers.into_iter().flatten() {
                        let mut values = field.values.into_iter().flatten().map(|v| v.name);
                        match field.name {
                            "processed-by" => {
                                for tool in values {
                                    by_componentize_js |= tool == "ComponentizeJS";
                                    by_component_init |= tool == "componentize-py"
                                        || tool == "component-init-transform";
                                    by_rust |= tool == "wit-bindgen-rust" || tool == "rustc";
                                }
                            }
                            "language" => {
                                modules_with_language += 1;
                                languages_other_than_rust |= values.any(|l| l != "Rust");
                            }
                            _ => {}
                        }
                    }
                }
                KnownCustom::ComponentName(names) => {
                    for name in names.into_iter().flatten() {
                        if let ComponentName::CoreModules(map) | ComponentName::CoreInstances(map) =
                            name
                        {
                            links_libpython |= map
                                .into_iter()
                                .flatten()
                                .any(|naming| naming.name.starts_with("libpython"));
                        }
                    }
                }
                _ => {}
            }
        }
        if by_componentize_js {
            Self::ComponentizeJs
        } else if links_libpython && by_component_init {
            Self::ComponentizePy
        } else if (modules_with_language > 0 || by_rust) && !languages_other_than_rust {
            Self::Rust
        } else {
            Self::Other
        }
    }

    /// Whether an instance of this toolchain's components answers correctly after its first
    /// request. Each entry is tested with its toolchain's example guest
    /// (`tests/all/toolchains.rs`); componentize-js keeps per-request state in the instance
    /// (a second request hangs: "FetchEvent#respondWith can't be called twice"), and what we
    /// have not tested gets a fresh instance per request, as `wasmtime serve` and Spin give.
    pub fn tolerates_reuse(self) -> bool {
        matches!(self, Self::Rust | Self::ComponentizePy)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rust => "rust",
            Self::ComponentizeJs => "componentize-js",
            Self::ComponentizePy => "componentize-py",
            Self::Other => "other",
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
