//! Requests and responses of the control plane's REST API (`/api/v1`), shared with the CLI.
//! Numbers that users type are signed in requests, so that `-1` reaches validation and is
//! answered with a field error instead of a parse error; they are read by
//! [`crate::integer`], which takes `3.0` for 3 as JSON Schema does.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::GuestKind;
use crate::sync::{FunctionSettings, InventoryItem, NodeStatus, NodeUsage};

/// `POST /functions`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateFunction {
    pub name: String,
    /// Project the function belongs to (default `default`).
    #[serde(default)]
    pub project: Option<String>,
    #[serde(flatten)]
    pub settings: SettingsInput,
}

/// Per-version settings as submitted; absent fields take their defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettingsInput {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub memory_pages: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub max_execution_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_outbound_hosts: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub min_hot_instances: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub max_hot_instances: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub instance_reuse: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The project's databases the function may open: `"shop"` (read and write) or
    /// `"shop:ro"` (read only). None by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<String>,
    /// Schema changes the version needs, by database: `{"shop": 4}`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::integer::map"
    )]
    pub requires: BTreeMap<String, i64>,
}

/// `201` to `POST /functions` and `POST /functions/{id}/versions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionCreated {
    pub function_id: String,
    pub version: u64,
    /// Where to `PUT` the artifact's bytes (presigned, expires).
    pub upload_url: String,
    /// Unix milliseconds after which `upload_url` is refused.
    pub upload_expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Function {
    pub id: String,
    pub project: String,
    pub name: String,
    pub settings: FunctionSettings,
    pub created_at: i64,
    /// Newest version whose artifact was accepted.
    pub latest_ready_version: Option<u64>,
}

/// Where a version stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Waiting for its artifact.
    Pending,
    /// Artifact stored and validated; immutable from now on.
    Ready,
    /// The uploaded bytes were refused (see `error`).
    Invalid,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Invalid => "invalid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "ready" => Some(Self::Ready),
            "invalid" => Some(Self::Invalid),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Version {
    pub function_id: String,
    pub version: u64,
    pub state: VersionState,
    pub settings: FunctionSettings,
    pub sha256: Option<String>,
    pub size: Option<u64>,
    pub kind: Option<GuestKind>,
    /// Where nodes download the artifact.
    pub artifact_url: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub completed_at: Option<i64>,
}

/// `POST /routes` and `PUT /routes/{id}`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteInput {
    /// `example.com`, `*.example.com` or `*`; a verified domain or platform host of the
    /// function's project. Empty or left out: the project's platform host (`*` for fleet
    /// administrators).
    #[serde(default)]
    pub host: String,
    pub path: String,
    pub function_id: String,
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub version: Option<i64>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default, deserialize_with = "crate::integer::exact")]
    pub priority: i64,
    #[serde(default)]
    pub pop_selector: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Route {
    pub id: String,
    pub project: String,
    pub host: String,
    pub path: String,
    pub function_id: String,
    pub version: Option<u64>,
    pub methods: Vec<String>,
    pub priority: i32,
    pub pop_selector: String,
    pub created_at: i64,
}

/// `POST /functions/{id}/deploy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(deserialize_with = "crate::integer::exact")]
    pub version: i64,
    #[serde(default)]
    pub pop_selector: String,
    /// `all` (every matching node at once).
    #[serde(default = "all_strategy")]
    pub strategy: String,
}

fn all_strategy() -> String {
    "all".to_string()
}

/// `POST /functions/{id}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// Default: the version deployed before the current one.
    #[serde(default, deserialize_with = "crate::integer::option")]
    pub to_version: Option<i64>,
}

/// A deployment and where it stands on each node it targets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deployment {
    pub id: String,
    pub function_id: String,
    pub version: u64,
    pub pop_selector: String,
    pub strategy: String,
    /// `active`, `superseded` or `undeployed`.
    pub state: String,
    pub created_at: i64,
    pub nodes: Vec<DeploymentNode>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentNode {
    pub node_id: String,
    pub state: crate::sync::ItemState,
    pub error: Option<String>,
    pub updated_at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub address: String,
    pub status: NodeStatus,
    pub registered_at: i64,
    pub last_heartbeat: Option<i64>,
    pub cpu_percent: Option<f64>,
    pub mem_bytes: Option<u64>,
    pub inventory: Vec<InventoryItem>,
    /// What the node reported doing between its last two heartbeats.
    pub usage: NodeUsage,
    /// When the node's certificate expires (Unix ms).
    #[serde(default)]
    pub certificate_expires_at: Option<i64>,
    /// When the node was revoked (Unix ms): it may no longer connect.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    /// The edge databases the node holds and their schema versions (only in
    /// `GET /nodes/{id}`; empty in lists).
    #[serde(default)]
    pub databases: Vec<NodeSchema>,
}

/// One edge database a node holds: where its copy of the schema stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeSchema {
    pub project: String,
    pub database: String,
    pub state: NodeDatabaseState,
    pub applied_seq: u64,
    pub target_seq: u64,
    pub fingerprint: Option<String>,
}

/// Every error: `{"error": {"code", "message", "details"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// More about the error where there is more (`fields` of a failed validation, …);
    /// absent otherwise.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Option<Object>)]
    pub details: serde_json::Value,
}

/// One failing field of a request (in `details` of a 400).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// `POST /projects/{project}/domains`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDomain {
    /// `shop.example.com`, or `*.shop.example.com` for every name under it.
    pub name: String,
    /// Mark it verified without a DNS proof (fleet administrators only).
    #[serde(default)]
    pub verified: bool,
}

/// A domain a project claimed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Domain {
    pub id: String,
    pub project: String,
    pub name: String,
    /// Only verified domains may be routed, and reach nodes.
    pub verified: bool,
    /// The DNS TXT record that proves the claim (`POST …/verify` checks it).
    pub txt_record_name: String,
    pub txt_record_value: String,
    pub created_at: i64,
    pub verified_at: Option<i64>,
}

/// `POST /projects/{p}/databases`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateDatabase {
    pub name: String,
    /// Nodes that hold the database. Empty: every node that runs a function of the
    /// project which uses it.
    #[serde(default)]
    pub pop_selector: String,
}

/// An edge database of a project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Database {
    pub id: String,
    pub project: String,
    pub name: String,
    pub pop_selector: String,
    /// The ledger's last sequence (0: no change yet).
    pub target_seq: u64,
    /// The schema fingerprint at `target_seq`.
    pub fingerprint: String,
    pub created_at: i64,
    pub created_by: String,
}

/// `POST /projects/{p}/databases/{db}/changes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateChange {
    pub sql: String,
    #[serde(default)]
    pub description: String,
    /// Allow a change that drops or renames a table or column.
    #[serde(default)]
    pub destructive: bool,
}

pub use crate::sync::DatabaseRepairAction;

/// `POST /projects/{p}/databases/{db}/nodes/{node}/repair`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RepairDatabase {
    pub action: DatabaseRepairAction,
}

/// One change of a database's ledger.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseChange {
    pub seq: u64,
    pub sql: String,
    pub sha256: String,
    /// The schema fingerprint after the change.
    pub fingerprint: String,
    pub chain: String,
    pub description: String,
    pub destructive: bool,
    pub created_at: i64,
    pub created_by: String,
}

/// Where a node's copy of a database stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeDatabaseState {
    /// At the ledger's last change.
    InSync,
    /// Applying changes now.
    Applying,
    /// Behind the ledger (not reported yet, or waiting for its desired state).
    Behind,
    /// A change failed there; the file stays at `applied_seq`.
    Failed,
    /// The file was altered outside the ledger: nothing more is applied until
    /// `edgefn db repair`.
    Drift,
    /// The node is offline.
    Offline,
}

impl NodeDatabaseState {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Applying => "applying",
            Self::Behind => "behind",
            Self::Failed => "failed",
            Self::Drift => "drift",
            Self::Offline => "offline",
        }
    }
}

/// `GET /projects/{p}/databases/{db}/nodes`: one row per node that holds the database.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeDatabase {
    pub node_id: String,
    pub node_name: String,
    pub state: NodeDatabaseState,
    pub applied_seq: u64,
    pub target_seq: u64,
    pub fingerprint: Option<String>,
    /// Behind the ledger for longer than the warning threshold.
    pub warning: bool,
    /// Since when the node has been behind (Unix ms; `None` when in sync).
    pub behind_since: Option<i64>,
    /// Milliseconds behind (0 when in sync).
    pub lag_ms: u64,
    pub last_sync_at: Option<i64>,
    pub consecutive_failures: u64,
    pub last_error: Option<String>,
    /// When the node last reported on the database (Unix ms).
    pub reported_at: i64,
    /// A repair asked for and not yet done by the node.
    pub pending_repair: Option<DatabaseRepairAction>,
}

/// One apply attempt a node reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncLogEntry {
    pub node_id: String,
    pub from_seq: u64,
    pub to_seq: u64,
    pub target_seq: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub at: i64,
}
