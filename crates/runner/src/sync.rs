//! The sync client: how a runner attached to a control plane learns what to run.
//!
//! The node registers once (its id is kept in the state directory), then heartbeats. A
//! heartbeat carries the revision the node has applied and the item results (when they
//! changed); its reply carries the node's desired state whenever the node is behind. The
//! push stream (`push`) brings a newer desired state within milliseconds of a change and
//! wakes the loop, which applies it (or fetches it) and acks in the next heartbeat.
//!
//! Applying a desired state goes through [`Node::reconcile`], the one path that changes what
//! a node runs, in two steps. First the node takes the new versions while keeping the
//! version it already serves of each function whose new version is not ready yet (routes
//! without a version serve the newest *ready* version, so traffic stays on the old one).
//! Once everything has settled, the versions that became ready replace the old ones; a
//! version that failed (SHA-256 mismatch, invalid module, download given up) is reported
//! with its error and the old one stays in service (a NACK, as in Envoy's xDS).
//!
//! The applied state — the effective document, including kept versions — is written to
//! `{state_dir}/desired.json` before it is acked, and a restarted runner serves it at once,
//! with or without a control plane. Revisions only go up: a document with a revision at or
//! below the applied one changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefn_proto::api::{
    FunctionUsage, Heartbeat, HeartbeatReply, InventoryItem, NodeStatus, NodeUsage, TenantUsage,
};
use edgefn_proto::identity::{EnrollNode, NodeToken};
use edgefn_proto::sync::{DesiredFunction, DesiredState, ItemResult, ItemState};
use tokio::sync::Notify;

use crate::fetch::Backoff;
use crate::identity::Credentials;
use crate::manifest::{ArtifactSource, FunctionEntry, Manifest, RouteTarget};
use crate::node::{Node, VersionState};
use crate::router::RouteSpec;

/// How the sync client reaches its control plane and describes its node.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:8080`.
    pub control_plane: String,
    /// The name the node registers under.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Where the node serves, as the control plane should show it.
    pub address: String,
    pub state_dir: PathBuf,
    pub heartbeat_interval: Duration,
    /// Schedule of retries after a failed contact (1 s doubling to 60 s, forever).
    pub backoff: Backoff,
    /// The one-time token to enroll with, when the node has no identity yet.
    pub bootstrap_token: Option<String>,
    /// SHA-256 of the CA certificate the control plane must present at enrollment.
    pub ca_sha256: Option<String>,
    /// A certificate (PEM) to trust for the control plane's API, besides the system's.
    pub api_ca_cert: Option<String>,
}

/// The node's standing with the node listener: an mTLS client and a node token.
struct Session {
    http: reqwest::Client,
    token: String,
    token_issued_at: i64,
    token_expires_at: i64,
}

impl Session {
    /// Renewed once two thirds of the token's lifetime have passed.
    fn token_is_old(&self) -> bool {
        let (issued, expires) = (self.token_issued_at, self.token_expires_at);
        crate::identity::now_ms() >= issued + (expires - issued) * 2 / 3
    }
}

/// Why a desired state could not be turned into something the node runs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(String);

/// The manifest a desired state stands for.
pub fn manifest_of(state: &DesiredState) -> Result<Manifest, ConvertError> {
    let mut functions = Vec::with_capacity(state.functions.len());
    for function in &state.functions {
        functions.push(entry_of(function)?);
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
    crate::router::RouteTable::new(routes.clone())
        .map_err(|(index, error)| ConvertError(format!("route {index}: {error}")))?;
    Ok(Manifest {
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
    if !crate::manifest::valid_function_id(&function.function_id) {
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
        instance_reuse: given.instance_reuse.max(1),
        ..edgefn_runtime::FunctionSettings::default()
    };
    Ok(FunctionEntry {
        id: function.function_id.clone(),
        version: function.version,
        source: ArtifactSource::Url(url.clone()),
        sha256: Some(function.sha256.to_ascii_lowercase()),
        tenant: given.tenant.clone(),
        settings,
    })
}

/// The desired state last applied, as persisted in the state directory.
pub fn load_applied(state_dir: &Path) -> Option<DesiredState> {
    let path = state_dir.join("desired.json");
    let bytes = std::fs::read(&path).ok()?;
    match DesiredState::decode(&bytes) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::error!(path = %path.display(), %error, "ignoring the persisted desired state");
            None
        }
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    crate::identity::create_private_dir(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The result of each desired item on this node right now.
pub fn item_results(node: &Node, state: &DesiredState) -> Vec<ItemResult> {
    state
        .functions
        .iter()
        .map(|function| {
            let slot = node.version_slot(&function.function_id, function.version);
            let (state, error) = match slot.map(|s| s.state()) {
                None => (ItemState::Pending, None),
                Some(VersionState::Loading) => (ItemState::InProgress, None),
                Some(VersionState::Ready(_)) => (ItemState::Ready, None),
                Some(VersionState::Failed(message)) => (ItemState::Failed, Some(message)),
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

/// The sync client of one node.
pub struct SyncClient {
    node: Arc<Node>,
    config: SyncConfig,
    http: reqwest::Client,
    /// Set by the push stream (or anything else) to heartbeat at once.
    pub wake: Arc<Notify>,
    /// Set by the push stream with `wake`: a newer revision exists.
    pushed: Arc<std::sync::atomic::AtomicBool>,
    /// The desired state the push stream brought along, if it did.
    delivered: crate::push::Delivered,
    /// The node's identity, once enrolled.
    credentials: Option<Credentials>,
    session: Option<Session>,
    /// The effective state the node runs and has persisted.
    applied: Option<DesiredState>,
    /// A newer desired state being applied.
    target: Option<DesiredState>,
    usage: crate::usage::UsageSampler,
    /// The applied revision, shared with the push stream (which wakes only for newer ones).
    applied_shared: Arc<std::sync::atomic::AtomicU64>,
    /// The push stream of the current node id and token.
    push: Option<((String, String), tokio::task::JoinHandle<()>)>,
    /// Cumulative counters as of the last heartbeat the control plane took, so the next
    /// one reports what happened since.
    reported: UsageTotals,
    /// The item results the control plane last took (with their revision): unchanged
    /// results are not sent again, which keeps a steady heartbeat cheap for the CP.
    results_reported: Option<(u64, Vec<ItemResult>)>,
}

/// Cumulative per-function (invocations, errors) and per-tenant guest microseconds.
#[derive(Clone, Default)]
struct UsageTotals {
    functions: BTreeMap<String, (u64, u64)>,
    tenants: BTreeMap<String, u64>,
}

impl UsageTotals {
    fn now(node: &Node) -> Self {
        let functions = node
            .functions()
            .iter()
            .filter_map(|(id, versions)| {
                // Every version of a function shares its counters (labelled by function id).
                let slot = versions.values().next()?;
                Some((
                    id.clone(),
                    (slot.hot.invocations.get(), slot.hot.failures.get()),
                ))
            })
            .collect();
        Self {
            functions,
            tenants: node.quotas.cpu_micros().into_iter().collect(),
        }
    }

    /// What happened between `before` and `self`; only what changed.
    fn since(&self, before: &Self) -> NodeUsage {
        let functions = self
            .functions
            .iter()
            .filter_map(|(id, (invocations, errors))| {
                let (was_invocations, was_errors) =
                    before.functions.get(id).copied().unwrap_or_default();
                let usage = FunctionUsage {
                    function_id: id.clone(),
                    invocations: invocations.saturating_sub(was_invocations),
                    errors: errors.saturating_sub(was_errors),
                };
                (usage.invocations > 0 || usage.errors > 0).then_some(usage)
            })
            .collect();
        let tenants = self
            .tenants
            .iter()
            .filter_map(|(tenant, micros)| {
                let spent = micros.saturating_sub(before.tenants.get(tenant).copied().unwrap_or(0));
                (spent >= 1000).then(|| TenantUsage {
                    tenant: tenant.clone(),
                    cpu_ms: spent / 1000,
                })
            })
            .collect();
        NodeUsage { functions, tenants }
    }
}

impl SyncClient {
    /// A client for `node`, starting from the persisted applied state (already reconciled by
    /// the caller) and identity.
    pub fn new(node: Arc<Node>, config: SyncConfig, applied: Option<DesiredState>) -> Self {
        // An identity from another control plane means nothing here.
        let credentials = Credentials::load(&config.state_dir, &config.control_plane);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = &config.api_ca_cert {
            match reqwest::Certificate::from_pem(pem.as_bytes()) {
                Ok(cert) => builder = builder.add_root_certificate(cert),
                Err(error) => {
                    tracing::error!(%error, "ignoring --api-ca-cert: not a PEM certificate")
                }
            }
        }
        let http = builder.build().unwrap_or_default();
        Self {
            node,
            http,
            wake: Arc::new(Notify::new()),
            pushed: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            delivered: Default::default(),
            credentials,
            session: None,
            applied,
            target: None,
            usage: crate::usage::UsageSampler::new(),
            applied_shared: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            push: None,
            reported: UsageTotals::default(),
            results_reported: None,
            config,
        }
    }

    /// The node id the control plane gave this node, once enrolled.
    pub fn node_id(&self) -> Option<&str> {
        self.credentials
            .as_ref()
            .map(|c| c.identity.node_id.as_str())
    }

    /// The revision applied under the current node id. Revisions count per node id, so a
    /// node enrolled anew starts again from 0.
    pub fn applied_revision(&self) -> Option<u64> {
        self.applied
            .as_ref()
            .filter(|s| Some(s.node_id.as_str()) == self.node_id())
            .map(|s| s.revision)
    }

    /// Enrolls when the node has no identity yet, and keeps its certificate and token
    /// fresh. Returns the node listener's URL, the node id, its client and token.
    async fn session(&mut self) -> Result<(String, String, reqwest::Client, String), String> {
        if self.credentials.is_none() {
            let Some(bootstrap) = self.config.bootstrap_token.clone() else {
                return Err(
                    "this node is not enrolled: start it with --bootstrap-token (from `edgefn nodes token create`)"
                        .into(),
                );
            };
            let body = EnrollNode {
                name: self.config.name.clone(),
                labels: self.config.labels.clone(),
                address: self.config.address.clone(),
                csr: String::new(),
            };
            let credentials = Credentials::enroll(
                &self.http,
                &self.config.control_plane,
                &bootstrap,
                self.config.ca_sha256.as_deref(),
                body,
            )
            .await?;
            credentials
                .save(&self.config.state_dir)
                .map_err(|e| format!("cannot persist the node's identity: {e}"))?;
            tracing::info!(node_id = %credentials.identity.node_id, name = %self.config.name, "enrolled with the control plane");
            self.credentials = Some(credentials);
            self.session = None;
        }
        let Some(credentials) = self.credentials.clone() else {
            return Err("not enrolled".into());
        };
        let stale = self.session.as_ref().is_none_or(Session::token_is_old);
        if stale {
            let http = match self.session.take() {
                Some(session) => session.http,
                None => credentials.http_client()?,
            };
            let token = self.node_token(&credentials, &http).await?;
            self.session = Some(Session {
                http,
                token: token.token,
                token_issued_at: crate::identity::now_ms(),
                token_expires_at: token.expires_at,
            });
        }
        let (http, token) = match &self.session {
            Some(session) => (session.http.clone(), session.token.clone()),
            None => return Err("no session".into()),
        };
        if credentials.needs_renewal() {
            match credentials.renew(&http, &token).await {
                Ok(renewed) => {
                    renewed
                        .save(&self.config.state_dir)
                        .map_err(|e| format!("cannot persist the renewed certificate: {e}"))?;
                    tracing::info!(
                        expires_at = renewed.identity.certificate_expires_at,
                        "node certificate renewed"
                    );
                    self.credentials = Some(renewed);
                    // The next contact connects with the new certificate.
                    self.session = None;
                    return Box::pin(self.session()).await;
                }
                // The current certificate still works: try again at the next contact.
                Err(error) => tracing::warn!(%error, "cannot renew the node certificate"),
            }
        }
        let node_url = credentials.identity.node_url.clone();
        self.node.fetcher.authorize(crate::fetch::Authorized {
            client: http.clone(),
            token: token.clone(),
        });
        Ok((node_url, credentials.identity.node_id, http, token))
    }

    async fn node_token(
        &self,
        credentials: &Credentials,
        http: &reqwest::Client,
    ) -> Result<NodeToken, String> {
        let url = format!(
            "{}/api/v1/nodes/{}/token",
            credentials.identity.node_url, credentials.identity.node_id
        );
        let reply = http
            .post(&url)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", crate::identity::causes(&e)))?;
        read_json(reply, &url).await
    }

    /// Runs forever: register, heartbeat, apply, ack. Failures back off and try again.
    pub async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            // After a push notice the node applies the state the stream brought along, or
            // fetches it (a read on the control plane); the ack follows in the heartbeat once
            // it is applied.
            let pushed = self
                .pushed
                .swap(false, std::sync::atomic::Ordering::Relaxed);
            let delivered = self
                .delivered
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            let exchanged = match delivered {
                Some(state) if pushed && self.target.is_none() => {
                    self.start_apply(state);
                    Ok(())
                }
                _ if pushed && self.target.is_none() && self.credentials.is_some() => {
                    self.fetch_desired().await
                }
                _ => self.contact().await,
            };
            match exchanged {
                Ok(()) => {
                    failures = 0;
                    self.keep_push_stream();
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = self.config.backoff.delay(failures);
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "control plane contact failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.wake.notified() => {}
                    }
                    continue;
                }
            }
            if self.target.is_some() {
                // Ack as soon as the new state has settled; report progress meanwhile.
                let deadline = Instant::now() + self.config.heartbeat_interval;
                if self.node.wait_settled(deadline).await {
                    self.finish_apply();
                }
                continue;
            }
            self.retry_failed_items();
            tokio::select! {
                _ = tokio::time::sleep(self.config.heartbeat_interval) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// Loads again, once per heartbeat, the applied items that failed (an artifact store
    /// that was down, a download given up): the node converges when the cause goes away.
    /// Their result reaches the control plane with the next heartbeat.
    fn retry_failed_items(&self) {
        let Some(applied) = &self.applied else {
            return;
        };
        for function in &applied.functions {
            if let Some(slot) = self
                .node
                .version_slot(&function.function_id, function.version)
                .filter(|slot| matches!(slot.state(), VersionState::Failed(_)))
            {
                tracing::info!(function_id = %function.function_id, version = function.version, "retrying a failed item");
                self.node.retry_failed(&slot);
            }
        }
    }

    /// Keeps one push stream open for the current node id (a new id replaces it).
    fn keep_push_stream(&mut self) {
        let (Some(credentials), Some(session)) = (&self.credentials, &self.session) else {
            return;
        };
        let key = (credentials.identity.node_id.clone(), session.token.clone());
        self.applied_shared.store(
            self.applied_revision().unwrap_or(0),
            std::sync::atomic::Ordering::Relaxed,
        );
        if self
            .push
            .as_ref()
            .is_some_and(|(current, _)| *current == key)
        {
            return;
        }
        if let Some((_, task)) = self.push.take() {
            task.abort();
        }
        let stream = crate::push::PushStream {
            url: credentials.identity.node_url.clone(),
            tls: credentials.grpc_tls(),
            token: session.token.clone(),
            node_id: key.0.clone(),
            applied: self.applied_shared.clone(),
            pushed: self.pushed.clone(),
            delivered: self.delivered.clone(),
            wake: self.wake.clone(),
        };
        let task = tokio::spawn(stream.follow());
        self.push = Some((key, task));
    }

    /// Reads the desired state and starts applying it if it is newer.
    async fn fetch_desired(&mut self) -> Result<(), String> {
        let (node_url, node_id, http, token) = self.session().await?;
        let url = format!("{node_url}/api/v1/nodes/{node_id}/desired");
        let reply = http
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::identity::causes(&e)))?;
        self.check_refusal(&reply);
        let state: DesiredState = read_json(reply, &url).await?;
        self.start_apply(state);
        Ok(())
    }

    /// A 401 means the token no longer holds (expired, or the node was revoked): fetch a
    /// new one at the next contact, which says why if that fails too.
    fn check_refusal(&mut self, reply: &reqwest::Response) {
        if reply.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.session = None;
        }
    }

    /// One exchange: enroll when needed, then heartbeat and take any newer desired state.
    pub async fn contact(&mut self) -> Result<(), String> {
        let (node_url, node_id, http, token) = self.session().await?;
        let report = self.target.as_ref().or(self.applied.as_ref());
        let results = report
            .map(|state| item_results(&self.node, state))
            .unwrap_or_default();
        let applied_revision = self.applied_revision().unwrap_or(0);
        let unchanged = self
            .results_reported
            .as_ref()
            .is_some_and(|(revision, sent)| *revision == applied_revision && *sent == results);
        let (cpu_percent, mem_bytes) = self.usage.sample();
        let totals = UsageTotals::now(&self.node);
        let heartbeat = Heartbeat {
            node_id: node_id.clone(),
            status: if self.target.is_some() {
                NodeStatus::Syncing
            } else {
                NodeStatus::Online
            },
            cpu_percent,
            mem_bytes,
            inventory: self.inventory(),
            applied_revision: Some(applied_revision),
            results: if unchanged {
                Vec::new()
            } else {
                results.clone()
            },
            usage: totals.since(&self.reported),
        };
        let url = format!("{node_url}/api/v1/nodes/{node_id}/heartbeat");
        let reply = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&heartbeat).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", crate::identity::causes(&e)))?;
        self.check_refusal(&reply);
        let reply: HeartbeatReply = read_json(reply, &url).await?;
        self.reported = totals;
        self.results_reported = Some((applied_revision, results));
        if let Some(state) = reply.desired_state {
            self.start_apply(state);
        }
        Ok(())
    }

    fn inventory(&self) -> Vec<InventoryItem> {
        let functions = self.node.functions();
        let mut items = Vec::new();
        for (id, versions) in functions.iter() {
            for (version, slot) in versions {
                let (state, error) = match slot.state() {
                    VersionState::Loading => ("in_progress", None),
                    VersionState::Ready(_) => ("ready", None),
                    VersionState::Failed(message) => ("failed", Some(message)),
                };
                items.push(InventoryItem {
                    function_id: id.clone(),
                    version: *version,
                    state: state.into(),
                    error,
                });
            }
        }
        items.sort_by(|a, b| (&a.function_id, a.version).cmp(&(&b.function_id, b.version)));
        items
    }

    /// Starts applying `state` unless it is not newer than what the node has or is applying.
    fn start_apply(&mut self, state: DesiredState) {
        let newest = self
            .target
            .as_ref()
            .filter(|s| s.node_id == state.node_id)
            .map(|s| s.revision)
            .max(self.applied_revision());
        if newest.is_some_and(|n| state.revision <= n)
            || Some(state.node_id.as_str()) != self.node_id()
        {
            return;
        }
        let effective = self.with_kept_versions(&state, false);
        match manifest_of(&effective) {
            Ok(manifest) => {
                tracing::info!(
                    revision = state.revision,
                    functions = state.functions.len(),
                    routes = state.routes.len(),
                    "applying a desired state"
                );
                self.node.reconcile(&manifest);
                self.target = Some(state);
            }
            Err(error) => {
                // Nothing in it can run; keep serving and say why at every contact.
                tracing::error!(revision = state.revision, %error, "refusing a desired state");
            }
        }
    }

    /// `state` plus, for each function whose desired version is not ready on the node, the
    /// version of it the node last applied (if that one is ready), so it keeps serving.
    /// With `settled`, only versions whose replacement failed are kept.
    fn with_kept_versions(&self, state: &DesiredState, settled: bool) -> DesiredState {
        let mut effective = state.clone();
        let Some(applied) = &self.applied else {
            return effective;
        };
        for wanted in &state.functions {
            let replacement = self
                .node
                .version_slot(&wanted.function_id, wanted.version)
                .map(|s| s.state());
            let keep_old = match replacement {
                Some(VersionState::Ready(_)) => false,
                Some(VersionState::Failed(_)) => true,
                Some(VersionState::Loading) | None => !settled,
            };
            if !keep_old {
                continue;
            }
            let old = applied.functions.iter().filter(|f| {
                f.function_id == wanted.function_id
                    && f.version != wanted.version
                    && self
                        .node
                        .version_slot(&f.function_id, f.version)
                        .is_some_and(|s| s.is_ready())
            });
            if let Some(old) = old.max_by_key(|f| f.version) {
                effective.functions.push(old.clone());
            }
        }
        effective
    }

    /// Everything of the target has settled: drop the versions that were replaced, persist
    /// the effective state, and ack at the next contact (the run loop makes it at once).
    fn finish_apply(&mut self) {
        let Some(target) = self.target.take() else {
            return;
        };
        let effective = self.with_kept_versions(&target, true);
        if let Ok(manifest) = manifest_of(&effective) {
            self.node.reconcile(&manifest);
        }
        if let Err(error) = write_atomically(
            &self.config.state_dir.join("desired.json"),
            &effective.encode(),
        ) {
            // Still acked: the node runs it; only a restart without a CP would lose it.
            tracing::error!(%error, "cannot persist the applied desired state");
        }
        let failed = item_results(&self.node, &target)
            .iter()
            .filter(|r| r.state == ItemState::Failed)
            .count();
        tracing::info!(revision = target.revision, failed, "desired state applied");
        self.applied = Some(effective);
    }
}

impl Drop for SyncClient {
    /// The push stream ends with its client (a runner shutting down must not keep a
    /// connection to the control plane open).
    fn drop(&mut self) {
        if let Some((_, task)) = self.push.take() {
            task.abort();
        }
    }
}

/// The JSON body of a successful reply, or the API's error message with the status.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    reply: reqwest::Response,
    url: &str,
) -> Result<T, String> {
    let status = reply.status();
    let body = reply
        .bytes()
        .await
        .map_err(|e| format!("reading the reply of {url}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<edgefn_proto::api::ErrorBody>(&body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("{url}: {status}: {message}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: invalid reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(sha256: &str, url: &str) -> DesiredState {
        DesiredState {
            format: edgefn_proto::sync::DESIRED_STATE_FORMAT,
            node_id: "node-1".into(),
            revision: 3,
            functions: vec![DesiredFunction {
                function_id: "fn_1".into(),
                version: 2,
                kind: edgefn_proto::GuestKind::Component,
                artifact_url: url.into(),
                sha256: sha256.into(),
                settings: edgefn_proto::api::FunctionSettings {
                    entrypoint: None,
                    memory_pages: 16,
                    max_execution_ms: 500,
                    allowed_outbound_hosts: vec!["api.example.com".into()],
                    min_hot_instances: 1,
                    max_hot_instances: 4,
                    instance_reuse: 10,
                    env: [("K".to_string(), "V".to_string())].into(),
                    tenant: "acme".into(),
                },
            }],
            routes: vec![edgefn_proto::sync::DesiredRoute {
                id: "rt_1".into(),
                host: "*".into(),
                path: "/".into(),
                methods: vec![],
                priority: 0,
                function_id: "fn_1".into(),
                version: None,
                project: None,
            }],
            quotas: Default::default(),
        }
    }

    #[test]
    fn a_desired_state_becomes_the_manifest_it_stands_for() {
        let sha = "AB".repeat(32);
        let manifest = manifest_of(&desired(&sha, "http://cp/api/v1/artifacts/x")).unwrap();
        let entry = &manifest.functions[0];
        assert_eq!((entry.id.as_str(), entry.version), ("fn_1", 2));
        assert_eq!(entry.sha256.as_deref(), Some("ab".repeat(32).as_str()));
        assert_eq!(entry.tenant, "acme");
        assert_eq!(entry.settings.memory_pages, 16);
        assert_eq!(entry.settings.env, vec![("K".into(), "V".into())]);
        assert_eq!(manifest.routes[0].target.function_id, "fn_1");
    }

    #[test]
    fn unusable_items_are_refused_with_the_reason() {
        let sha = "ab".repeat(32);
        let bad_url = manifest_of(&desired(&sha, "file:///etc/passwd")).unwrap_err();
        assert!(bad_url.to_string().contains("artifact_url"), "{bad_url}");
        let bad_sha = manifest_of(&desired("zz", "http://cp/a")).unwrap_err();
        assert!(bad_sha.to_string().contains("sha256"), "{bad_sha}");
        let mut bad_id = desired(&sha, "http://cp/a");
        bad_id.functions[0].function_id = "../escape".into();
        assert!(manifest_of(&bad_id).is_err());
    }

    #[test]
    fn node_tokens_are_renewed_after_two_thirds_of_their_life() {
        let now = crate::identity::now_ms();
        let session = |issued: i64, expires: i64| Session {
            http: reqwest::Client::new(),
            token: String::new(),
            token_issued_at: issued,
            token_expires_at: expires,
        };
        assert!(!session(now - 100, now + 900).token_is_old());
        assert!(session(now - 700, now + 300).token_is_old());
        assert!(session(now - 2000, now - 1000).token_is_old(), "expired");
    }

    #[test]
    fn usage_reports_only_what_changed_since_the_last_heartbeat() {
        let before = UsageTotals {
            functions: [("a".to_string(), (10, 1)), ("b".to_string(), (5, 0))].into(),
            tenants: [("t".to_string(), 1_000_000)].into(),
        };
        let now = UsageTotals {
            functions: [
                ("a".to_string(), (15, 3)),
                ("b".to_string(), (5, 0)),
                ("c".to_string(), (2, 0)),
            ]
            .into(),
            tenants: [("t".to_string(), 1_250_000), ("u".to_string(), 10)].into(),
        };
        let usage = now.since(&before);
        assert_eq!(
            usage.functions,
            vec![
                FunctionUsage {
                    function_id: "a".into(),
                    invocations: 5,
                    errors: 2
                },
                FunctionUsage {
                    function_id: "c".into(),
                    invocations: 2,
                    errors: 0
                },
            ]
        );
        assert_eq!(
            usage.tenants,
            vec![TenantUsage {
                tenant: "t".into(),
                cpu_ms: 250
            }]
        );
    }
}
