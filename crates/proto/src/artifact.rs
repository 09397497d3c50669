//! What the control plane checks of an uploaded artifact before any node sees it: that it
//! is valid WebAssembly of a supported guest kind and exports its entrypoint. (Whether the
//! host provides every import is decided by the runtime on the node.)

use serde::{Deserialize, Serialize};

/// The guest kinds edgefn runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GuestKind {
    /// A `wasi:http/proxy` component.
    Component,
    /// A WASI preview 1 module in the CGI convention.
    Module,
}

impl GuestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Component => "component",
            Self::Module => "module",
        }
    }

    /// The entrypoint used when a function names none.
    pub fn default_entrypoint(self) -> &'static str {
        match self {
            Self::Component => HTTP_HANDLER,
            Self::Module => "_start",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "component" => Some(Self::Component),
            "module" => Some(Self::Module),
            _ => None,
        }
    }
}

/// The export every component must have (any 0.2.x version).
pub const HTTP_HANDLER: &str = "wasi:http/incoming-handler";

/// Checks `bytes`; returns the guest kind or the reason it is refused.
pub fn inspect(bytes: &[u8], entrypoint: Option<&str>) -> Result<GuestKind, String> {
    let kind = if wasmparser::Parser::is_component(bytes) {
        GuestKind::Component
    } else if wasmparser::Parser::is_core_wasm(bytes) {
        GuestKind::Module
    } else {
        return Err("not a WebAssembly binary (bad magic number or version)".into());
    };
    wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| format!("invalid WebAssembly: {e}"))?;
    let exports = top_level_exports(bytes)?;
    match kind {
        GuestKind::Module => {
            let name = entrypoint.unwrap_or("_start");
            if !exports
                .iter()
                .any(|(export, is_func)| export == name && *is_func)
            {
                return Err(format!("module has no exported function {name:?}"));
            }
        }
        GuestKind::Component => {
            if let Some(name) = entrypoint
                && !name.starts_with(HTTP_HANDLER)
            {
                return Err(format!(
                    "entrypoint {name:?} is not supported for components (they export {HTTP_HANDLER})"
                ));
            }
            let handler = format!("{HTTP_HANDLER}@0.2.");
            if !exports
                .iter()
                .any(|(export, _)| export.starts_with(&handler))
            {
                return Err(format!("component does not export {HTTP_HANDLER}@0.2.x"));
            }
        }
    }
    Ok(kind)
}

/// Names of the top-level exports, and whether each is a function (modules only).
fn top_level_exports(bytes: &[u8]) -> Result<Vec<(String, bool)>, String> {
    let mut exports = Vec::new();
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("invalid WebAssembly: {e}"))?;
        match payload {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| format!("invalid WebAssembly: {e}"))?;
                    exports.push((
                        export.name.to_string(),
                        export.kind == wasmparser::ExternalKind::Func,
                    ));
                }
            }
            wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| format!("invalid WebAssembly: {e}"))?;
                    let name = export.name;
                    exports.push((
                        format!("{}{}", name.name, name.version_suffix.unwrap_or_default()),
                        false,
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(exports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_webassembly_or_truncated() {
        assert!(
            inspect(b"hello", None)
                .unwrap_err()
                .contains("not a WebAssembly binary")
        );
        // A module header followed by a section that claims more bytes than there are.
        let truncated = b"\0asm\x01\0\0\0\x01\x10\x01";
        assert!(
            inspect(truncated, None)
                .unwrap_err()
                .contains("invalid WebAssembly")
        );
    }

    #[test]
    fn accepts_the_example_guests_of_both_kinds() {
        let hello = std::fs::read(edgefn_test_support::guest_wasm("hello")).unwrap();
        assert_eq!(inspect(&hello, None), Ok(GuestKind::Component));
        let cgi = std::fs::read(edgefn_test_support::guest_wasm("cgi")).unwrap();
        assert_eq!(inspect(&cgi, None), Ok(GuestKind::Module));
        assert!(inspect(&hello[..hello.len() - 10], None).is_err());
    }

    #[test]
    fn checks_a_module_entrypoint() {
        // (module (func (export "main")))
        let module = b"\0asm\x01\0\0\0\x01\x04\x01\x60\0\0\x03\x02\x01\0\x07\x08\x01\x04main\0\0\x0a\x04\x01\x02\0\x0b";
        assert!(inspect(module, None).unwrap_err().contains("\"_start\""));
        assert_eq!(inspect(module, Some("main")), Ok(GuestKind::Module));
    }
}
