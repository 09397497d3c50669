//! What the control plane tells a node to run (its desired state, with a per-node revision)
//! and what the node answers (an ack with one result per item). Versioned: a document
//! carries its `format`, and a node refuses a format newer than it understands instead of
//! misreading it. Within a format, unknown fields are ignored, so fields can be added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::GuestKind;

/// The newest desired-state format this build reads and writes. Format 2 added the
/// project that owns each route's host (a node must match a request's host to its project
/// before priorities apply) and per-project quotas: an older runner would serve such a
/// document without isolating projects, so it refuses it and keeps its last state.
/// Format 3 added edge databases and their schema changes, and function versions that
/// require a schema: an older runner would serve such versions against a database it never
/// created, so it refuses the document instead of ignoring the databases.
pub const DESIRED_STATE_FORMAT: u32 = 3;

/// The full configuration a node must converge to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredState {
    pub format: u32,
    pub node_id: String,
    /// Increases with every change for this node; a node never applies a revision lower
    /// than one it has applied.
    pub revision: u64,
    pub functions: Vec<DesiredFunction>,
    pub routes: Vec<DesiredRoute>,
    /// Quotas of the projects whose functions the node runs; a project without an entry
    /// (or a field left out) gets the node's defaults.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quotas: BTreeMap<String, ProjectQuota>,
    /// Edge databases the node holds, applied before the functions (format 3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DesiredDatabase>,
}

/// An edge database a node must hold at the ledger's sequence `target_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredDatabase {
    pub id: String,
    pub project: String,
    pub name: String,
    /// The ledger's last sequence.
    pub target_seq: u64,
    /// The ledger's chain hash at `target_seq` (`""` at 0): a node at the target with
    /// another chain has a history the ledger does not.
    pub chain: String,
    /// The changes after the sequence the node last reported, in order (the whole ledger
    /// while a `recreate` repair is pending).
    #[serde(default)]
    pub changes: Vec<DesiredChange>,
    /// A repair an operator asked for (`edgefn db repair`), done once: the node records
    /// its id in the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<DesiredRepair>,
}

/// What an operator does about a node's copy that left the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRepairAction {
    /// Build the node's file again from the ledger; the old file is kept beside it.
    Recreate,
    /// Take the file's schema as it is; later changes apply on top of it.
    Accept,
}

impl DatabaseRepairAction {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recreate => "recreate",
            Self::Accept => "accept",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "recreate" => Some(Self::Recreate),
            "accept" => Some(Self::Accept),
            _ => None,
        }
    }
}

/// A repair of a node's copy of a database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredRepair {
    pub id: String,
    pub action: DatabaseRepairAction,
}

/// One change of a database's ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredChange {
    pub seq: u64,
    pub sql: String,
    /// SHA-256 of `sql`.
    pub sha256: String,
    /// The schema fingerprint after the change (SHA-256 of the normalized `sqlite_schema`).
    pub fingerprint: String,
    /// The ledger's chain hash after the change: SHA-256 of `{previous}:{seq}:{sha256}`.
    pub chain: String,
}

/// A database a function may open, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseGrant {
    /// The database's name in the function's project.
    pub name: String,
    #[serde(default)]
    pub read_only: bool,
}

/// Where one of a node's databases stands, as the node reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseSyncState {
    /// At the ledger's target.
    InSync,
    /// Applying changes.
    Applying,
    /// A change failed; the file stays at the last good sequence.
    Failed,
    /// The file's schema was altered outside the ledger; nothing more is applied.
    Drift,
}

impl DatabaseSyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InSync => "in_sync",
            Self::Applying => "applying",
            Self::Failed => "failed",
            Self::Drift => "drift",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "in_sync" => Self::InSync,
            "applying" => Self::Applying,
            "failed" => Self::Failed,
            "drift" => Self::Drift,
            _ => return None,
        })
    }
}

/// One database in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatabaseReport {
    pub database_id: String,
    /// The last change applied to the node's file.
    pub seq: u64,
    /// The fingerprint of the file's schema now.
    pub fingerprint: String,
    pub state: DatabaseSyncState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Apply attempts since the previous heartbeat the control plane took.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<ApplyAttempt>,
    /// The id of the last repair the file carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

/// One attempt of a node to bring a database forward.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyAttempt {
    pub from_seq: u64,
    /// Where the file ended.
    pub to_seq: u64,
    /// The sequence the attempt aimed at.
    pub target_seq: u64,
    pub duration_ms: u64,
    /// Unix milliseconds.
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A project's share of each node, set by fleet administrators.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectQuota {
    /// Concurrent executions of the project's functions on one node.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub max_concurrent: Option<u32>,
    /// Invocations per minute of the project's functions on one node.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub per_minute: Option<u32>,
    /// Percent of a node's instance slots the project's hot instances may hold.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::integer::option"
    )]
    pub pool_share_percent: Option<u8>,
}

/// One function version a node must hold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredFunction {
    pub function_id: String,
    pub version: u64,
    pub kind: GuestKind,
    /// Where to download the artifact.
    pub artifact_url: String,
    /// The artifact's SHA-256; a download that does not match is discarded.
    pub sha256: String,
    pub settings: FunctionSettings,
    /// Operator retries of the deployment (`edgefn deployments retry`): when it changes, a
    /// node whose load of this version failed loads it again at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retry: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One route a node must serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DesiredRoute {
    pub id: String,
    pub host: String,
    pub path: String,
    pub methods: Vec<String>,
    pub priority: i32,
    pub function_id: String,
    /// `None`: the newest version the node holds.
    pub version: Option<u64>,
    /// The project that owns `host` (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Where one item stands on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    Pending,
    InProgress,
    Cached,
    Ready,
    Failed,
}

impl ItemState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Cached => "cached",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "in_progress" => Self::InProgress,
            "cached" => Self::Cached,
            "ready" => Self::Ready,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A node's answer to a desired state: the revision it applied and each item's result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Ack {
    pub node_id: String,
    pub revision: u64,
    pub items: Vec<ItemResult>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemResult {
    pub function_id: String,
    pub version: u64,
    pub state: ItemState,
    /// Why the item failed (a SHA-256 mismatch, an invalid module, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why a desired-state document was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "desired state format {found} is newer than this node understands ({supported}); upgrade the runner"
    )]
    NewerFormat { found: u32, supported: u32 },
    #[error("invalid desired state: {0}")]
    Invalid(String),
}

impl DesiredState {
    /// Reads a desired state, refusing formats newer than [`DESIRED_STATE_FORMAT`] before
    /// looking at anything else in the document.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        if header.format > DESIRED_STATE_FORMAT {
            return Err(DecodeError::NewerFormat {
                found: header.format,
                supported: DESIRED_STATE_FORMAT,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Invalid(e.to_string()))
    }

    /// The canonical encoding (pretty JSON, fields in declaration order).
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Validated settings, as stored and as sent to nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionSettings {
    pub entrypoint: Option<String>,
    pub memory_pages: u64,
    pub max_execution_ms: u64,
    pub allowed_outbound_hosts: Vec<String>,
    pub min_hot_instances: u32,
    pub max_hot_instances: u32,
    /// Absent: as many as the guest's toolchain tolerates (a fresh instance per request
    /// for toolchains not known to tolerate reuse); a number is the developer's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<u32>,
    pub env: BTreeMap<String, String>,
    /// The quota tenant: always the function's project.
    pub tenant: String,
    /// The project's databases the function may open (none by default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseGrant>,
    /// Schema sequences the version needs (`{"shop": 4}`): a node serves it only once its
    /// databases are that far, and keeps the previous version until then.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requires: BTreeMap<String, u64>,
}

/// A node's health as the control plane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Online,
    Degraded,
    Offline,
    Syncing,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Degraded => "degraded",
            Self::Offline => "offline",
            Self::Syncing => "syncing",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "online" => Some(Self::Online),
            "degraded" => Some(Self::Degraded),
            "offline" => Some(Self::Offline),
            "syncing" => Some(Self::Syncing),
            _ => None,
        }
    }
}

/// One function version a node holds, and its state there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct InventoryItem {
    pub function_id: String,
    pub version: u64,
    pub state: ItemState,
    /// Why the item failed on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /nodes/{id}/heartbeat`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    pub node_id: String,
    pub status: NodeStatus,
    pub cpu_percent: f64,
    pub mem_bytes: u64,
    #[serde(default)]
    pub inventory: Vec<InventoryItem>,
    /// The desired-state revision the node has applied (its ack).
    #[serde(default)]
    pub applied_revision: Option<u64>,
    /// The result of each item of that revision.
    #[serde(default)]
    pub results: Vec<ItemResult>,
    /// What the node did since its previous heartbeat.
    #[serde(default)]
    pub usage: NodeUsage,
    /// Where each of its databases stands.
    #[serde(default)]
    pub databases: Vec<DatabaseReport>,
}

/// A node's work between two heartbeats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeUsage {
    /// Functions that were invoked, with their invocation and error counts.
    #[serde(default)]
    pub functions: Vec<FunctionUsage>,
    /// Tenants that spent guest time, in milliseconds.
    #[serde(default)]
    pub tenants: Vec<TenantUsage>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionUsage {
    pub function_id: String,
    pub invocations: u64,
    pub errors: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantUsage {
    pub tenant: String,
    pub cpu_ms: u64,
}

/// The answer to a heartbeat: the node's desired state when it is behind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub desired_revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<DesiredState>,
}

/// The audience of a precompiled-code attestation: a token of another kind signed by the
/// same key never passes for one.
pub const PRECOMPILED_AUDIENCE: &str = "edgefn-precompiled";

/// Header of `GET /precompiled/{sha256}/{engine_hash}` that carries the attestation (an
/// ES256 JWT of [`PrecompiledClaims`], signed with the control plane's key).
pub const ATTESTATION_HEADER: &str = "x-edgefn-attestation";

/// What the control plane vouches for when it hands a node native code: these bytes
/// (`native_sha256`) are what its compiler made of this artifact (`wasm_sha256`) for this
/// engine (`engine_hash`). A node maps native code only after the signature and all three
/// hashes check out; anything else it compiles itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecompiledClaims {
    pub iss: String,
    pub aud: String,
    pub wasm_sha256: String,
    pub engine_hash: String,
    pub native_sha256: String,
    /// Unix seconds.
    pub iat: i64,
}

/// The engine a node compiles for, named in its requests for precompiled code.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, utoipa::IntoParams,
)]
pub struct EngineQuery {
    /// The node's largest linear memory in pages (part of the generated code).
    pub max_memory_pages: u64,
    /// Whether the node meters fuel (part of the generated code).
    #[serde(default)]
    pub fuel: bool,
}
