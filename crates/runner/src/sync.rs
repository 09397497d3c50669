//! The sync client: how a runner attached to a control plane learns what to run — the
//! transport only. What a desired state does to the node is `reconcile`'s business.
//!
//! The node enrolls once (its identity is kept in the state directory), then keeps a
//! session: an mTLS client and a node token, renewed after two thirds of its life, with
//! the certificate. It heartbeats: a heartbeat carries the revision the node has applied
//! (its ack) and the item results when they changed; the reply carries the node's desired
//! state whenever the node is behind. The push stream (`push`) announces a newer revision
//! within milliseconds of a change through one `watch` channel, with the state itself when
//! it fits; the loop applies it (or fetches it) and acks in the next heartbeat.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefn_proto::identity::EnrollNode;
use edgefn_proto::sync::{DatabaseReport, DesiredState, ItemResult};
use edgefn_proto::sync::{Heartbeat, HeartbeatReply, NodeStatus};
use tokio::sync::watch;

use crate::cp_http::{causes, read_json};
use crate::fetch::Backoff;
use crate::identity::{Credentials, Session};
use crate::node::Node;
use crate::push::Notice;
use crate::reconcile::Reconciler;
use crate::usage::UsageTotals;

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

/// The sync client of one node.
pub struct SyncClient {
    node: Arc<Node>,
    config: SyncConfig,
    http: reqwest::Client,
    /// The node's identity, once enrolled.
    credentials: Option<Credentials>,
    session: Option<Session>,
    /// The applied desired state and the one being applied.
    reconciler: Reconciler<Arc<Node>>,
    /// The newest revision the push stream announced (and its state, when it came along).
    notices: watch::Receiver<Notice>,
    /// Cloned into each push stream; kept here so the channel outlives a replaced stream.
    notices_sender: watch::Sender<Notice>,
    usage: crate::usage::UsageSampler,
    /// The push stream of the current node id and token.
    push: Option<((String, String), tokio::task::JoinHandle<()>)>,
    /// Cumulative counters as of the last heartbeat the control plane took, so the next
    /// one reports what happened since.
    reported: UsageTotals,
    /// The item results the control plane last took (with their revision): unchanged
    /// results are not sent again, which keeps a steady heartbeat cheap for the CP.
    results_reported: Option<(u64, Vec<ItemResult>)>,
    /// The node's edge databases, applied before the functions of each desired state.
    databases: Arc<crate::databases::EdgeDatabases>,
    /// The database reports the control plane last took (without their attempts).
    databases_reported: Option<Vec<DatabaseReport>>,
}

impl SyncClient {
    /// A client for `node`, starting from the persisted applied state (already reconciled by
    /// the caller) and identity.
    /// `schemas`: where the databases of `applied` stand on disk (`schemas_on_disk`).
    pub fn new(
        node: Arc<Node>,
        config: SyncConfig,
        applied: Option<DesiredState>,
        schemas: crate::databases::Schemas,
    ) -> Self {
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
        let (notices_sender, notices) = watch::channel(Notice::default());
        Self {
            databases: Arc::new(crate::databases::EdgeDatabases::new(&config.state_dir)),
            databases_reported: None,
            reconciler: Reconciler::new(node.clone(), &config.state_dir, applied, schemas),
            node,
            http,
            credentials,
            session: None,
            notices,
            notices_sender,
            usage: crate::usage::UsageSampler::new(),
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

    /// The revision applied (and persisted) under the current node id.
    pub fn applied_revision(&self) -> Option<u64> {
        self.reconciler.applied_revision(self.node_id())
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
            self.session = Some(Session::open(&credentials, http).await?);
        }
        let (http, token, signing_key) = match &self.session {
            Some(session) => (
                session.http.clone(),
                session.token.clone(),
                session.signing_key.clone(),
            ),
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
            node_url: node_url.clone(),
            signing_key,
        });
        Ok((node_url, credentials.identity.node_id, http, token))
    }

    /// Runs forever: enroll, heartbeat, apply, ack. Failures back off and try again.
    pub async fn run(mut self) {
        // Where the databases of the persisted state stand (and the rest of a change a
        // crash interrupted), before the first heartbeat reports them.
        if let Some(applied) = self.reconciler.applied_state() {
            self.apply_databases(&applied.databases.clone()).await;
            self.reconciler.regate();
        }
        let mut failures = 0u32;
        loop {
            // After a push notice the node applies the state the stream brought along, or
            // fetches it (a read on the control plane); the ack follows in the heartbeat once
            // it is applied and persisted.
            let pushed = self.notices.has_changed().unwrap_or(false) && !self.reconciler.applying();
            let exchanged = if pushed {
                let notice = self.notices.borrow_and_update().clone();
                match notice.state {
                    Some(state) => {
                        self.apply(state).await;
                        Ok(())
                    }
                    None if self.credentials.is_some() => self.fetch_desired().await,
                    None => self.contact().await,
                }
            } else {
                self.contact().await
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
                    self.pause(delay).await;
                    continue;
                }
            }
            if self.reconciler.applying() {
                // Ack as soon as the new state has settled and is persisted; report progress
                // meanwhile. A state that cannot be persisted is tried again a heartbeat later.
                let deadline = Instant::now() + self.config.heartbeat_interval;
                if self.node.wait_settled(deadline).await && self.reconciler.finish().is_err() {
                    self.pause(self.config.heartbeat_interval).await;
                }
                continue;
            }
            self.reconciler.retry_failed();
            let databases = self.databases.clone();
            let _ = tokio::task::spawn_blocking(move || databases.check()).await;
            // A database that caught up lets the versions waiting for it start.
            self.reconciler.set_schemas(self.databases.schemas());
            if self.reconciler.regate() {
                continue;
            }
            self.pause(self.config.heartbeat_interval).await;
        }
    }

    /// Waits `delay`, or until the push stream announces a newer revision. While a state is
    /// being applied a notice waits its turn, so it does not cut the wait short: an unseen
    /// notice would otherwise end every wait at once and turn retries into a storm.
    async fn pause(&mut self, delay: Duration) {
        if self.reconciler.applying() {
            tokio::time::sleep(delay).await;
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = self.notices.changed() => {}
        }
    }

    /// Brings the node's databases to `wanted` (SQLite work: off the async workers).
    async fn apply_databases(&mut self, wanted: &[edgefn_proto::sync::DesiredDatabase]) {
        let databases = self.databases.clone();
        let wanted = wanted.to_vec();
        if let Err(error) = tokio::task::spawn_blocking(move || databases.apply(&wanted)).await {
            tracing::error!(%error, "applying the edge databases failed");
        }
        self.reconciler.set_schemas(self.databases.schemas());
    }

    /// Applies a desired state: its databases first, so a function version never starts
    /// against an older schema than the document's, then its functions and routes.
    async fn apply(&mut self, state: DesiredState) {
        if Some(state.node_id.as_str()) == self.node_id() {
            self.apply_databases(&state.databases).await;
        }
        let node_id = self
            .credentials
            .as_ref()
            .map(|c| c.identity.node_id.clone());
        self.reconciler.start(state, node_id.as_deref());
    }

    /// Keeps one push stream open for the current node id and token (a new one replaces it).
    fn keep_push_stream(&mut self) {
        let (Some(credentials), Some(session)) = (&self.credentials, &self.session) else {
            return;
        };
        let key = (credentials.identity.node_id.clone(), session.token.clone());
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
            applied: self.applied_revision().unwrap_or(0),
            notices: self.notices_sender.clone(),
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
            .map_err(|e| format!("GET {url}: {}", causes(&e)))?;
        self.check_refusal(&reply);
        let state: DesiredState = read_json(reply, &url).await?;
        self.apply(state).await;
        Ok(())
    }

    /// A 401 means the token no longer holds (expired, or the node was revoked): fetch a
    /// new one at the next contact, which says why if that fails too.
    fn check_refusal(&mut self, reply: &reqwest::Response) {
        if reply.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.session = None;
        }
    }

    /// One exchange: enroll when needed, then heartbeat (with the ack) and take any newer
    /// desired state.
    pub async fn contact(&mut self) -> Result<(), String> {
        let (node_url, node_id, http, token) = self.session().await?;
        let results = self.reconciler.results();
        let applied_revision = self.applied_revision().unwrap_or(0);
        let unchanged = self
            .results_reported
            .as_ref()
            .is_some_and(|(revision, sent)| *revision == applied_revision && *sent == results);
        let (cpu_percent, mem_bytes) = self.usage.sample();
        let totals = UsageTotals::now(&self.node);
        let heartbeat = Heartbeat {
            node_id: node_id.clone(),
            status: if self.reconciler.applying() {
                NodeStatus::Syncing
            } else {
                NodeStatus::Online
            },
            cpu_percent,
            mem_bytes,
            inventory: self.node.inventory(),
            applied_revision: Some(applied_revision),
            results: if unchanged {
                Vec::new()
            } else {
                results.clone()
            },
            usage: totals.since(&self.reported),
            databases: self.database_reports(),
        };
        let url = format!("{node_url}/api/v1/nodes/{node_id}/heartbeat");
        let reply = http
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&heartbeat).map_err(|e| e.to_string())?)
            .send()
            .await
            .map_err(|e| format!("POST {url}: {}", causes(&e)))?;
        self.check_refusal(&reply);
        let reply: HeartbeatReply = read_json(reply, &url).await?;
        self.reported = totals;
        self.results_reported = Some((applied_revision, results));
        self.databases.reported(&heartbeat.databases);
        if !heartbeat.databases.is_empty() {
            self.databases_reported = Some(without_attempts(&heartbeat.databases));
        }
        if let Some(state) = reply.desired_state {
            self.apply(state).await;
        }
        Ok(())
    }
}

impl SyncClient {
    /// The database reports to send: all of them when anything changed since the control
    /// plane last took them (or attempts wait), else none.
    fn database_reports(&self) -> Vec<DatabaseReport> {
        let reports = self.databases.reports();
        let changed = reports.iter().any(|r| !r.attempts.is_empty())
            || self.databases_reported.as_deref() != Some(&without_attempts(&reports)[..]);
        if changed { reports } else { Vec::new() }
    }
}

fn without_attempts(reports: &[DatabaseReport]) -> Vec<DatabaseReport> {
    reports
        .iter()
        .map(|r| DatabaseReport {
            attempts: Vec::new(),
            ..r.clone()
        })
        .collect()
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
