//! Applying the control plane's desired state to the node, with no transport in sight
//! (`sync` brings the states and sends the acks).
//!
//! A [`Reconciler`] takes a [`DesiredState`], turns it into the node's [`NodeSpec`]
//! ([`spec_of`]) and applies it through the node's one path of change (`Node::reconcile`),
//! in two steps:
//!
//! 1. [`Reconciler::start`]: the node takes the new versions while it keeps the version it
//!    already serves of each function whose new version is not ready yet (routes without a
//!    version serve the newest *ready* version, so traffic stays on the old one).
//! 2. [`Reconciler::finish`], once everything has settled: the versions that became ready
//!    replace the old ones; a version that failed (SHA-256 mismatch, invalid module,
//!    download given up) is reported with its error and the old one stays in service (a
//!    NACK, as in Envoy's xDS). The effective state — including kept versions — is written
//!    to `{state_dir}/desired.json`, and only then does it count as applied (and is acked).
//!    A state that cannot be written is not applied: the next attempt tries again.
//!
//! A version that requires a database schema (`requires = {"shop": 4}`) is not loaded
//! while the node's copy of `shop` is behind change 4: it counts as failed (`schema shop@4
//! not applied`) and the old version stays in service. The node tells the reconciler where
//! its databases stand ([`Reconciler::set_schemas`]); when one catches up the same desired
//! state is applied again ([`Reconciler::regate`]). A version never serves against a schema
//! older than it requires.
//!
//! Revisions only go up: a state at or below the applied one (or the one being applied)
//! changes nothing. A restarted runner serves `desired.json` at once ([`load_applied`]),
//! with or without a control plane.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edgefn_proto::router::{RouteSpec, RouteTable};
use edgefn_proto::sync::{DesiredFunction, DesiredState, ItemResult, ItemState};

pub use crate::databases::Schemas;
use crate::node::{Node, VersionState};
use crate::spec::{ArtifactSource, FunctionEntry, NodeSpec, RouteTarget, valid_function_id};

/// The file that holds the applied state in the state directory.
pub(crate) const APPLIED_FILE: &str = "desired.json";

/// Why a desired state could not be turned into something the node runs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(String);

/// Why `function` may not run on the node yet: a database schema it requires is behind.
pub fn unmet_requirement(function: &DesiredFunction, schemas: &Schemas) -> Option<String> {
    let project = &function.settings.tenant;
    function.settings.requires.iter().find_map(|(name, &seq)| {
        let at = schemas
            .get(&(project.clone(), name.clone()))
            .copied()
            .unwrap_or(0);
        (at < seq).then(|| format!("schema {name}@{seq} not applied (the node is at {at})"))
    })
}

/// The versions of `state` that wait for a schema on the node.
fn gated(state: &DesiredState, schemas: &Schemas) -> BTreeSet<(String, u64)> {
    state
        .functions
        .iter()
        .filter(|f| unmet_requirement(f, schemas).is_some())
        .map(|f| (f.function_id.clone(), f.version))
        .collect()
}

/// The node spec a desired state stands for: every function version but those whose
/// required schemas the node does not have yet.
pub fn spec_of(state: &DesiredState, schemas: &Schemas) -> Result<NodeSpec, ConvertError> {
    let mut functions = Vec::with_capacity(state.functions.len());
    for function in &state.functions {
        let entry = entry_of(function)?;
        if unmet_requirement(function, schemas).is_none() {
            functions.push(entry);
        }
    }
    let routes = state
        .routes
        .iter()
        .map(|route| RouteSpec {
            host: route.host.clone(),
            path: route.path.clone(),
            methods: route.methods.clone(),
            priority: route.priority,
            owner: route.project.clone(),
            target: RouteTarget {
                function_id: route.function_id.clone(),
                version: route.version,
            },
        })
        .collect::<Vec<_>>();
    RouteTable::new(routes.clone())
        .map_err(|(index, error)| ConvertError(format!("route {index}: {error}")))?;
    Ok(NodeSpec {
        functions,
        routes,
        quotas: state.quotas.clone(),
    })
}

fn entry_of(function: &DesiredFunction) -> Result<FunctionEntry, ConvertError> {
    let fail = |reason: &str| {
        ConvertError(format!(
            "function {} version {}: {reason}",
            function.function_id, function.version
        ))
    };
    if !valid_function_id(&function.function_id) {
        return Err(fail("invalid function id"));
    }
    let url = &function.artifact_url;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(fail("artifact_url must be http(s)"));
    }
    if function.sha256.len() != 64 || !function.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(fail("sha256 must be 64 hex digits"));
    }
    let given = &function.settings;
    let settings = edgefn_runtime::FunctionSettings {
        entrypoint: given.entrypoint.clone(),
        memory_pages: given.memory_pages,
        max_execution_ms: given.max_execution_ms,
        allowed_outbound_hosts: given.allowed_outbound_hosts.clone(),
        env: given
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        min_hot_instances: given.min_hot_instances,
        max_hot_instances: given.max_hot_instances.max(1),
        instance_reuse: given.instance_reuse.map(|reuse| reuse.max(1)),
        // `{state_dir}/db/{project}/{name}.sqlite`: the project is the function's own, so
        // a grant never reaches another project's file.
        databases: given
            .databases
            .iter()
            .filter(|grant| {
                crate::databases::safe_name(&grant.name)
                    && crate::databases::safe_name(&given.tenant)
            })
            .map(|grant| edgefn_runtime::SqlGrant {
                name: grant.name.clone(),
                file: PathBuf::from(&given.tenant).join(format!("{}.sqlite", grant.name)),
                read_only: grant.read_only,
                required_seq: given.requires.get(&grant.name).copied().unwrap_or(0),
            })
            .collect(),
        ..edgefn_runtime::FunctionSettings::default()
    };
    Ok(FunctionEntry {
        id: function.function_id.clone(),
        version: function.version,
        source: ArtifactSource::Url(url.clone()),
        sha256: Some(function.sha256.to_ascii_lowercase()),
        tenant: given.tenant.clone(),
        settings,
        retry: function.retry,
    })
}

/// The desired state last applied, as persisted in the state directory.
pub fn load_applied(state_dir: &Path) -> Option<DesiredState> {
    let path = state_dir.join(APPLIED_FILE);
    let bytes = std::fs::read(&path).ok()?;
    match DesiredState::decode(&bytes) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "ignoring the persisted desired state");
            None
        }
    }
}

/// Where a function version stands on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    Loading,
    Ready,
    Failed(String),
}

/// What a reconciler needs of the node it drives (a seam for tests: the real one is
/// [`Node`]).
pub(crate) trait Serving {
    /// Makes the node serve `spec` (see `Node::reconcile`).
    fn reconcile(&self, spec: &NodeSpec);
    /// `None` when the node does not have the version at all.
    fn readiness(&self, function_id: &str, version: u64) -> Option<Readiness>;
    /// Loads a failed version again (see `Node::retry_failed`).
    fn retry_failed(&self, function_id: &str, version: u64);
}

impl Serving for Arc<Node> {
    fn reconcile(&self, spec: &NodeSpec) {
        Node::reconcile(self, spec);
    }

    fn readiness(&self, function_id: &str, version: u64) -> Option<Readiness> {
        Some(match self.version_slot(function_id, version)?.state() {
            VersionState::Loading => Readiness::Loading,
            VersionState::Ready(_) => Readiness::Ready,
            VersionState::Failed(message) => Readiness::Failed(message),
        })
    }

    fn retry_failed(&self, function_id: &str, version: u64) {
        if let Some(slot) = self.version_slot(function_id, version) {
            Node::retry_failed(self, &slot);
        }
    }
}

/// The result of each desired item on the node right now.
pub(crate) fn item_results(
    node: &impl Serving,
    state: &DesiredState,
    schemas: &Schemas,
) -> Vec<ItemResult> {
    state
        .functions
        .iter()
        .map(|function| {
            let unmet = unmet_requirement(function, schemas);
            let readiness = match unmet {
                Some(reason) => Some(Readiness::Failed(reason)),
                None => node.readiness(&function.function_id, function.version),
            };
            let (state, error) = match readiness {
                None => (ItemState::Pending, None),
                Some(Readiness::Loading) => (ItemState::InProgress, None),
                Some(Readiness::Ready) => (ItemState::Ready, None),
                Some(Readiness::Failed(message)) => (ItemState::Failed, Some(message)),
            };
            ItemResult {
                function_id: function.function_id.clone(),
                version: function.version,
                state,
                error,
            }
        })
        .collect()
}

/// `desired` plus, for each function whose desired version is not ready on the node, the
/// newest version of it in `serving` (what the node was last told to run) that is ready,
/// so it keeps serving. With `settled`, only versions whose replacement failed (or waits
/// for a schema) are kept (a loading one cannot be left behind).
pub(crate) fn effective_state(
    desired: &DesiredState,
    serving: Option<&DesiredState>,
    node: &impl Serving,
    settled: bool,
    schemas: &Schemas,
) -> DesiredState {
    let mut effective = desired.clone();
    let Some(serving) = serving else {
        return effective;
    };
    for wanted in &desired.functions {
        let keep_old = unmet_requirement(wanted, schemas).is_some()
            || match node.readiness(&wanted.function_id, wanted.version) {
                Some(Readiness::Ready) => false,
                Some(Readiness::Failed(_)) => true,
                Some(Readiness::Loading) | None => !settled,
            };
        if !keep_old {
            continue;
        }
        let old = serving.functions.iter().filter(|f| {
            f.function_id == wanted.function_id
                && f.version != wanted.version
                && unmet_requirement(f, schemas).is_none()
                && node.readiness(&f.function_id, f.version) == Some(Readiness::Ready)
        });
        if let Some(old) = old.max_by_key(|f| f.version) {
            effective.functions.push(old.clone());
        }
    }
    effective
}

/// What [`Reconciler::start`] did with a desired state.
#[derive(Debug)]
pub(crate) enum Started {
    /// The node is applying it.
    Applying,
    /// Not newer than what the node has or is applying, or for another node id.
    Stale,
    /// Nothing in it can run (logged with the reason); the node keeps serving what it has.
    Refused,
}

/// The node's applied desired state and the newer one it is applying.
pub(crate) struct Reconciler<N: Serving> {
    node: N,
    state_file: PathBuf,
    /// The effective state the node runs and has persisted: what it acks.
    applied: Option<DesiredState>,
    /// A newer desired state being applied.
    target: Option<DesiredState>,
    /// The effective state last handed to the node (the applied one, or one on the way to
    /// the target): old versions are kept from it, so a ready version is never dropped
    /// before its replacement is ready, even when a state was not persisted.
    serving: Option<DesiredState>,
    /// The desired state last started, as the control plane sent it: applied again when a
    /// schema it waits for arrives.
    desired: Option<DesiredState>,
    /// Where the node's databases stand.
    schemas: Schemas,
    /// Where they stood when `desired` was last started: the target is finished, and its
    /// results told, with these (a schema arriving halfway waits for [`Self::regate`], so
    /// a kept version is never dropped for one that has not loaded).
    started_with: Schemas,
}

impl<N: Serving> Reconciler<N> {
    /// A reconciler starting from `applied` (the persisted state, already applied to the
    /// node by the caller).
    pub(crate) fn new(
        node: N,
        state_dir: &Path,
        applied: Option<DesiredState>,
        schemas: Schemas,
    ) -> Self {
        Self {
            node,
            state_file: state_dir.join(APPLIED_FILE),
            serving: applied.clone(),
            // After a restart the persisted state stands in for what the control plane sent
            // (it may hold kept versions too, which the next desired state drops).
            desired: applied.clone(),
            applied,
            target: None,
            started_with: schemas.clone(),
            schemas,
        }
    }

    /// Where the node's databases stand now (after an apply or a retry).
    pub(crate) fn set_schemas(&mut self, schemas: Schemas) {
        self.schemas = schemas;
    }

    /// When a schema that versions of the desired state wait for has arrived (or a version
    /// that ran no longer may), applies that state again; `true` when it did.
    pub(crate) fn regate(&mut self) -> bool {
        if self.target.is_some() {
            return false;
        }
        let Some(desired) = &self.desired else {
            return false;
        };
        if gated(desired, &self.schemas) == gated(desired, &self.started_with) {
            return false;
        }
        let desired = desired.clone();
        tracing::info!(
            revision = desired.revision,
            "a required schema changed; applying the desired state again"
        );
        self.begin(desired).is_ok()
    }

    #[cfg(test)]
    pub(crate) fn applied(&self) -> Option<&DesiredState> {
        self.applied.as_ref()
    }

    /// The state the node runs and has persisted.
    pub(crate) fn applied_state(&self) -> Option<&DesiredState> {
        self.applied.as_ref()
    }

    /// Whether a newer state is being applied.
    pub(crate) fn applying(&self) -> bool {
        self.target.is_some()
    }

    /// The revision applied under `node_id`. Revisions count per node id, so a node
    /// enrolled anew starts again from 0.
    pub(crate) fn applied_revision(&self, node_id: Option<&str>) -> Option<u64> {
        self.applied
            .as_ref()
            .filter(|s| Some(s.node_id.as_str()) == node_id)
            .map(|s| s.revision)
    }

    /// The item results of the state being applied, else of the applied one.
    pub(crate) fn results(&self) -> Vec<ItemResult> {
        self.target
            .as_ref()
            .or(self.applied.as_ref())
            .map(|state| item_results(&self.node, state, &self.started_with))
            .unwrap_or_default()
    }

    /// Starts applying `state` unless it is not newer than what the node has or is
    /// applying, or is meant for another node id than `node_id`.
    pub(crate) fn start(&mut self, state: DesiredState, node_id: Option<&str>) -> Started {
        let newest = self
            .target
            .as_ref()
            .filter(|s| s.node_id == state.node_id)
            .map(|s| s.revision)
            .max(self.applied_revision(node_id));
        if newest.is_some_and(|n| state.revision <= n) || Some(state.node_id.as_str()) != node_id {
            return Started::Stale;
        }
        let revision = state.revision;
        match self.begin(state) {
            Ok(()) => Started::Applying,
            Err(error) => {
                tracing::error!(revision, %error, "refusing a desired state");
                Started::Refused
            }
        }
    }

    /// Hands `state` (with the versions it keeps) to the node and makes it the target.
    fn begin(&mut self, state: DesiredState) -> Result<(), ConvertError> {
        let effective = effective_state(
            &state,
            self.serving.as_ref(),
            &self.node,
            false,
            &self.schemas,
        );
        let spec = spec_of(&effective, &self.schemas)?;
        self.started_with = self.schemas.clone();
        self.serving = Some(effective);
        tracing::info!(
            revision = state.revision,
            functions = state.functions.len(),
            routes = state.routes.len(),
            "applying a desired state"
        );
        self.node.reconcile(&spec);
        self.desired = Some(state.clone());
        self.target = Some(state);
        Ok(())
    }

    /// Everything of the target has settled: drops the versions that were replaced and
    /// persists the effective state, which then counts as applied. When it cannot be
    /// written the node keeps running it, but it is not applied (so not acked) and the
    /// target stays for the next attempt.
    pub(crate) fn finish(&mut self) -> std::io::Result<()> {
        let Some(target) = self.target.take() else {
            return Ok(());
        };
        let effective = effective_state(
            &target,
            self.serving.as_ref(),
            &self.node,
            true,
            &self.started_with,
        );
        if let Ok(spec) = spec_of(&effective, &self.started_with) {
            self.node.reconcile(&spec);
            self.serving = Some(effective.clone());
        }
        if let Err(error) = self.persist(&effective) {
            tracing::error!(%error, path = %self.state_file.display(), revision = target.revision, "cannot persist the applied desired state; not acking it");
            self.target = Some(target);
            return Err(error);
        }
        let failed = item_results(&self.node, &target, &self.started_with)
            .iter()
            .filter(|r| r.state == ItemState::Failed)
            .count();
        tracing::info!(revision = target.revision, failed, "desired state applied");
        self.applied = Some(effective);
        Ok(())
    }

    fn persist(&self, state: &DesiredState) -> std::io::Result<()> {
        crate::identity::write_private(&self.state_file, &state.encode(), 0o600)
    }

    /// Loads again the applied items that failed (an artifact store that was down, a
    /// download given up), so the node converges when the cause goes away.
    pub(crate) fn retry_failed(&self) {
        let Some(applied) = &self.applied else {
            return;
        };
        for function in &applied.functions {
            if let Some(Readiness::Failed(_)) =
                self.node.readiness(&function.function_id, function.version)
            {
                tracing::info!(function_id = %function.function_id, version = function.version, "retrying a failed item");
                self.node
                    .retry_failed(&function.function_id, function.version);
            }
        }
    }
}

#[cfg(test)]
mod tests;
