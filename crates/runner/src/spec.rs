//! What a node serves, whoever says so: the operator's manifest (`manifest::load`) and
//! the control plane's desired state (`reconcile::spec_of`) both become a [`NodeSpec`],
//! the one input of `Node::reconcile`.

use std::path::PathBuf;

use edgefn_proto::router::RouteSpec;
use edgefn_runtime::FunctionSettings;

/// Where a function's artifact comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A file on this machine (relative paths are relative to the manifest).
    Path(PathBuf),
    /// Downloaded over HTTP(S).
    Url(String),
}

/// One function version to serve.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionEntry {
    pub id: String,
    pub version: u64,
    pub source: ArtifactSource,
    pub sha256: Option<String>,
    pub tenant: String,
    pub settings: FunctionSettings,
    /// The control plane's retry count: a new one is a new entry, loaded afresh even if the
    /// version failed before.
    pub retry: u64,
}

/// Which function version a route sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTarget {
    pub function_id: String,
    /// `None`: the newest version the node has.
    pub version: Option<u64>,
}

/// Everything a node serves: validated function versions, routes and tenant quotas.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec {
    pub functions: Vec<FunctionEntry>,
    pub routes: Vec<RouteSpec<RouteTarget>>,
    /// Per-tenant quotas that differ from the node's defaults (from the control plane;
    /// a manifest has none).
    pub quotas: std::collections::BTreeMap<String, edgefn_proto::sync::ProjectQuota>,
}

/// Function ids become directory names in the cache: keep them to a safe alphabet.
pub fn valid_function_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !id.starts_with('.')
}
