//! The API subcommands: functions, deploy/rollback/undeploy, routes, nodes, deployments.
//! A function is named by its id or, when that finds nothing, by its name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use edgefn_proto::api::{
    CreateFunction, DeployRequest, Deployment, Function, Node, RollbackRequest, Route, RouteInput,
    SettingsInput, Version, VersionCreated, VersionState,
};
use edgefn_proto::sync::ItemState;

use crate::client::{ApiFailure, Client};
use crate::output::{Output, or_dash, table, time};

#[derive(Debug, Args)]
pub struct FunctionRef {
    /// Function id or name.
    pub function: String,
}

#[derive(Debug, Subcommand)]
pub enum FunctionsCommand {
    /// Register a function (its first version waits for `edgefn deploy --wasm`).
    Create(Box<CreateArgs>),
    List,
    Show(FunctionRef),
    /// Delete a function, its versions and artifacts (refused while deployed or routed).
    Delete {
        /// Function id or name.
        function: String,
        /// Also delete its routes and deployments.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub project: Option<String>,
    #[command(flatten)]
    pub settings: SettingsFlags,
}

/// A function's settings as flags (`functions create`, `deploy`).
#[derive(Debug, Default, Args)]
pub struct SettingsFlags {
    /// Export to call (default: the wasi:http handler, or `_start` for preview 1 modules).
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Linear memory limit in 64 KiB pages.
    #[arg(long)]
    pub memory_pages: Option<i64>,
    /// Wall-clock limit of one invocation, in milliseconds.
    #[arg(long)]
    pub max_execution_ms: Option<i64>,
    /// A host outbound HTTP may reach (repeat for more).
    #[arg(long = "allow-host")]
    pub allowed_outbound_hosts: Vec<String>,
    /// An environment variable for the guest, KEY=VALUE (repeat for more).
    #[arg(long = "env", value_parser = key_value)]
    pub env: Vec<(String, String)>,
    #[arg(long)]
    pub min_hot_instances: Option<i64>,
    #[arg(long)]
    pub max_hot_instances: Option<i64>,
    /// Requests one instance serves before it is recycled (1 = fresh per request;
    /// default: as many as the guest's toolchain tolerates).
    #[arg(long)]
    pub instance_reuse: Option<i64>,
    /// A database of the project the function may open: `shop` (read and write) or
    /// `shop:ro` (read only). Repeat for more.
    #[arg(long = "database")]
    pub databases: Vec<String>,
    /// A schema the version needs, DATABASE=SEQUENCE: nodes keep the previous version until
    /// that change is applied there (repeat for more).
    #[arg(long = "requires", value_parser = key_value)]
    pub requires: Vec<(String, String)>,
}

impl SettingsFlags {
    fn any(&self) -> bool {
        self.entrypoint.is_some()
            || self.memory_pages.is_some()
            || self.max_execution_ms.is_some()
            || !self.allowed_outbound_hosts.is_empty()
            || !self.env.is_empty()
            || self.min_hot_instances.is_some()
            || self.max_hot_instances.is_some()
            || self.instance_reuse.is_some()
            || !self.databases.is_empty()
            || !self.requires.is_empty()
    }

    /// `--requires` as sequences (a sequence that is not a number is sent as 0, which the
    /// control plane refuses with the field's name).
    fn requires(&self) -> BTreeMap<String, i64> {
        self.requires
            .iter()
            .map(|(name, seq)| (name.clone(), seq.parse().unwrap_or(0)))
            .collect()
    }

    /// The flags as settings; what they leave out takes its default.
    fn input(self) -> SettingsInput {
        let requires = self.requires();
        SettingsInput {
            entrypoint: self.entrypoint,
            memory_pages: self.memory_pages,
            max_execution_ms: self.max_execution_ms,
            allowed_outbound_hosts: self.allowed_outbound_hosts,
            min_hot_instances: self.min_hot_instances,
            max_hot_instances: self.max_hot_instances,
            instance_reuse: self.instance_reuse,
            requires,
            databases: self.databases,
            env: self.env.into_iter().collect(),
        }
    }

    /// `current` with the flags given applied over it (hosts and variables are added).
    fn over(self, current: &edgefn_proto::sync::FunctionSettings) -> SettingsInput {
        let given_requires = self.requires();
        let mut env = current.env.clone();
        env.extend(self.env);
        let mut hosts = current.allowed_outbound_hosts.clone();
        for host in self.allowed_outbound_hosts {
            if !hosts.contains(&host) {
                hosts.push(host);
            }
        }
        // Grants given replace the one of the same database; requirements add up.
        let mut databases: Vec<String> = current
            .databases
            .iter()
            .filter(|d| {
                !self
                    .databases
                    .iter()
                    .any(|given| given.split(':').next() == Some(d.name.as_str()))
            })
            .map(|d| {
                if d.read_only {
                    format!("{}:ro", d.name)
                } else {
                    d.name.clone()
                }
            })
            .collect();
        databases.extend(self.databases.iter().cloned());
        let mut requires: BTreeMap<String, i64> = current
            .requires
            .iter()
            .map(|(name, seq)| (name.clone(), *seq as i64))
            .collect();
        requires.extend(given_requires);
        SettingsInput {
            databases,
            requires,
            entrypoint: self.entrypoint.or_else(|| current.entrypoint.clone()),
            memory_pages: self.memory_pages.or(Some(current.memory_pages as i64)),
            max_execution_ms: self
                .max_execution_ms
                .or(Some(current.max_execution_ms as i64)),
            allowed_outbound_hosts: hosts,
            min_hot_instances: self
                .min_hot_instances
                .or(Some(i64::from(current.min_hot_instances))),
            max_hot_instances: self
                .max_hot_instances
                .or(Some(i64::from(current.max_hot_instances))),
            instance_reuse: self
                .instance_reuse
                .or(current.instance_reuse.map(i64::from)),
            env,
        }
    }
}

fn key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Function id or name; a name that does not exist yet is created (with the settings
    /// flags).
    pub function: String,
    /// Project of a function created by this deploy (default `default`).
    #[arg(long)]
    pub project: Option<String>,
    /// The WebAssembly component or module to upload.
    #[arg(long)]
    pub wasm: PathBuf,
    /// Which nodes run it, e.g. `region == 'tokyo'` (default: every node).
    #[arg(long, default_value = "")]
    pub selector: String,
    /// Settings of the new version (and the function's from now on); what is left out
    /// stays as the function has it (hosts and variables given are added).
    #[command(flatten)]
    pub settings: SettingsFlags,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Show per-node progress until every node is ready or failed.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, in seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Function id or name.
    pub function: String,
    /// Version to go back to (default: the one deployed before the current one).
    #[arg(long = "to")]
    pub to_version: Option<i64>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Subcommand)]
pub enum RoutesCommand {
    /// Route requests matching host, path and methods to a function.
    Add {
        /// Path pattern: `/exact`, `/users/:id`, `/static/*`.
        #[arg(long)]
        path: String,
        /// Function id or name.
        #[arg(long)]
        function: String,
        /// Host pattern: `example.com` or `*.example.com` (a verified domain of the
        /// function's project), or `*` (administrators). Default: the project's platform
        /// host (`*` for administrators).
        #[arg(long, default_value = "")]
        host: String,
        /// Pin a version (default: the deployed one).
        #[arg(long)]
        version: Option<i64>,
        /// An HTTP method (repeat for more; default any).
        #[arg(long = "method")]
        methods: Vec<String>,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        /// Which nodes serve the route (default: every node).
        #[arg(long, default_value = "")]
        selector: String,
    },
    List,
    Rm {
        /// Route id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    List {
        /// Only online nodes.
        #[arg(long)]
        healthy: bool,
    },
    Show {
        /// Node id or name.
        id: String,
    },
    /// One-time tokens that enroll new nodes (administrators).
    #[command(subcommand)]
    Token(NodeTokenCommand),
    /// Revoke a node: its connections close, and it can no longer connect or receive
    /// anything (administrators).
    Revoke {
        /// Node id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeTokenCommand {
    /// A bootstrap token for one node: `edgefn runner --bootstrap-token TOKEN …`.
    Create {
        /// How long it may be used, e.g. `15m`, `1h`, `24h`.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    Show {
        /// Deployment id.
        id: String,
    },
    /// Load the active deployment's version again where it failed (a version that failed
    /// to compile is otherwise retried only when a node's desired state changes).
    Retry {
        /// Deployment id.
        id: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

/// The node `reference` names: by id, else by name.
async fn resolve_node(client: &Client, reference: &str) -> anyhow::Result<Node> {
    let node = by_id_or_name(client, "/nodes", reference, |n: &Node| &n.name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no node with id or name {reference:?}"))?;
    if node.id == reference {
        return Ok(node);
    }
    // Found in the list, which leaves out what only `GET /nodes/{id}` carries (databases).
    client.get(&format!("/nodes/{}", node.id)).await
}

/// The function `reference` names: by id, else by name.
pub async fn resolve(client: &Client, reference: &str) -> anyhow::Result<Function> {
    find(client, reference).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "no function with id or name {reference:?}; create it with `edgefn functions create {reference}` (or `edgefn deploy {reference} --wasm PATH`)"
        )
    })
}

/// Like [`resolve`], `None` when nothing has that id or name.
async fn find(client: &Client, reference: &str) -> anyhow::Result<Option<Function>> {
    by_id_or_name(client, "/functions", reference, |f: &Function| &f.name).await
}

/// The item of `collection` whose id is `reference` or, when none is, the one item named so.
async fn by_id_or_name<T: serde::de::DeserializeOwned>(
    client: &Client,
    collection: &str,
    reference: &str,
    name: impl Fn(&T) -> &str,
) -> anyhow::Result<Option<T>> {
    match client.get::<T>(&format!("{collection}/{reference}")).await {
        Ok(item) => return Ok(Some(item)),
        Err(error)
            if error
                .downcast_ref::<ApiFailure>()
                .is_some_and(|f| f.status == 404) => {}
        Err(error) => return Err(error),
    }
    let items: Vec<T> = client.get(collection).await?;
    let mut named = items.into_iter().filter(|item| name(item) == reference);
    match (named.next(), named.next()) {
        (Some(item), None) => Ok(Some(item)),
        (Some(_), Some(_)) => anyhow::bail!(
            "several {} are named {reference:?}; use the id",
            collection.trim_start_matches('/')
        ),
        (None, _) => Ok(None),
    }
}

pub async fn functions(
    client: &Client,
    out: &Output,
    command: FunctionsCommand,
) -> anyhow::Result<()> {
    match command {
        FunctionsCommand::Create(args) => {
            let body = CreateFunction {
                name: args.name.clone(),
                project: args.project,
                settings: args.settings.input(),
            };
            let created: VersionCreated = client.post("/functions", &body).await?;
            out.item(&created, || {
                format!(
                    "Created function {} ({}).\nDeploy it: edgefn deploy {} --wasm PATH",
                    args.name, created.function_id, args.name
                )
            });
        }
        FunctionsCommand::List => {
            let functions: Vec<Function> = client.get("/functions").await?;
            let rows = functions.iter().map(|f| {
                vec![
                    f.id.clone(),
                    f.name.clone(),
                    f.project.clone(),
                    or_dash(f.latest_ready_version),
                    time(f.created_at),
                ]
            });
            out.list(
                &functions,
                &["id", "name", "project", "latest", "created"],
                rows,
            );
        }
        FunctionsCommand::Show(reference) => {
            let function = resolve(client, &reference.function).await?;
            let versions: Vec<Version> = client
                .get(&format!("/functions/{}/versions", function.id))
                .await?;
            let document = serde_json::json!({ "function": function, "versions": versions });
            out.item(&document, || {
                let s = &function.settings;
                let head = format!(
                    "{} ({})\nproject       {}\nmemory        {} pages\ntime limit    {} ms\nhot instances {}..{}\ntenant        {}\n",
                    function.name,
                    function.id,
                    function.project,
                    s.memory_pages,
                    s.max_execution_ms,
                    s.min_hot_instances,
                    s.max_hot_instances,
                    s.tenant
                );
                let rows = versions.iter().map(|v| {
                    vec![
                        v.version.to_string(),
                        v.state.as_str().to_string(),
                        or_dash(v.sha256.as_deref().map(|s| &s[..12.min(s.len())])),
                        or_dash(v.size),
                        or_dash(v.error.as_deref()),
                    ]
                });
                format!(
                    "{head}\n{}",
                    table(&["version", "state", "sha256", "bytes", "error"], rows)
                )
            });
        }
        FunctionsCommand::Delete { function, force } => {
            let function = resolve(client, &function).await?;
            let path = format!("/functions/{}?force={force}", function.id);
            client.send_empty(reqwest::Method::DELETE, &path).await?;
            out.item(&serde_json::json!({ "deleted": function.id }), || {
                format!("Deleted function {} ({}).", function.name, function.id)
            });
        }
    }
    Ok(())
}

/// The version to upload into: with `settings`, the function's settings become them and a
/// new version (which has them) is made; else the newest version still waiting for its
/// artifact (so a failed upload can be retried), or a new one.
async fn version_to_upload(
    client: &Client,
    function: &Function,
    settings: Option<SettingsInput>,
) -> anyhow::Result<VersionCreated> {
    if let Some(settings) = settings {
        let _: Function = client
            .put(&format!("/functions/{}/settings", function.id), &settings)
            .await?;
        return client
            .post(
                &format!("/functions/{}/versions", function.id),
                &serde_json::json!({}),
            )
            .await;
    }
    let versions: Vec<Version> = client
        .get(&format!("/functions/{}/versions", function.id))
        .await?;
    let newest = versions.iter().max_by_key(|v| v.version);
    if let Some(pending) = newest.filter(|v| v.state == VersionState::Pending) {
        return client
            .post(
                &format!(
                    "/functions/{}/versions/{}/upload-url",
                    function.id, pending.version
                ),
                &serde_json::json!({}),
            )
            .await;
    }
    client
        .post(
            &format!("/functions/{}/versions", function.id),
            &serde_json::json!({}),
        )
        .await
}

/// Uploads `bytes` as the next version of `function` and completes it: the control plane
/// hashes and validates it. Shows a progress bar on a terminal unless `quiet`.
pub async fn upload_version(
    client: &Client,
    function: &Function,
    bytes: Vec<u8>,
    settings: Option<SettingsInput>,
    quiet: bool,
) -> anyhow::Result<Version> {
    let created = version_to_upload(client, function, settings).await?;
    let bar = if quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(bytes.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    client
        .upload(&created.upload_url, bytes.into(), move |sent| {
            progress.set_position(sent)
        })
        .await
        .context("upload failed")?;
    bar.finish_and_clear();
    client
        .post(
            &format!(
                "/functions/{}/versions/{}/complete",
                function.id, created.version
            ),
            &serde_json::json!({}),
        )
        .await
        .context("the control plane refused the artifact")
}

pub async fn deploy(client: &Client, out: &Output, args: DeployArgs) -> anyhow::Result<()> {
    // Checked here too, so that a typo fails before anything is uploaded.
    edgefn_proto::Selector::parse(&args.selector)
        .map_err(|e| anyhow::anyhow!("--selector {:?}: {e}", args.selector))?;
    let bytes = std::fs::read(&args.wasm)
        .with_context(|| format!("cannot read {}", args.wasm.display()))?;
    let (function, settings) = match find(client, &args.function).await? {
        Some(function) => {
            let settings = args
                .settings
                .any()
                .then(|| args.settings.over(&function.settings));
            (function, settings)
        }
        // First deploy of a name: create the function, as `wrangler deploy` and `spin
        // deploy` do; its version 1 carries the settings flags.
        None => {
            let created: VersionCreated = client
                .post(
                    "/functions",
                    &CreateFunction {
                        name: args.function.clone(),
                        project: args.project.clone(),
                        settings: args.settings.input(),
                    },
                )
                .await?;
            if !out.json {
                println!(
                    "Created function {} ({}).",
                    args.function, created.function_id
                );
            }
            let function: Function = client
                .get(&format!("/functions/{}", created.function_id))
                .await?;
            (function, None)
        }
    };
    let version = upload_version(client, &function, bytes, settings, out.json).await?;
    let deployment: Deployment = client
        .post(
            &format!("/functions/{}/deploy", function.id),
            &DeployRequest {
                version: version.version as i64,
                pop_selector: args.selector.clone(),
                strategy: "all".into(),
            },
        )
        .await?;
    if !out.json {
        println!(
            "Uploaded {} as version {} of {} (sha256 {}).",
            args.wasm.display(),
            version.version,
            function.name,
            or_dash(version.sha256.as_deref())
        );
    }
    finish_deployment(client, out, deployment, &args.wait).await
}

pub async fn rollback(client: &Client, out: &Output, args: RollbackArgs) -> anyhow::Result<()> {
    let function = resolve(client, &args.function).await?;
    let deployment: Deployment = client
        .post(
            &format!("/functions/{}/rollback", function.id),
            &RollbackRequest {
                to_version: args.to_version,
            },
        )
        .await?;
    finish_deployment(client, out, deployment, &args.wait).await
}

pub async fn undeploy(client: &Client, out: &Output, function: FunctionRef) -> anyhow::Result<()> {
    let function = resolve(client, &function.function).await?;
    client
        .send_empty(
            reqwest::Method::POST,
            &format!("/functions/{}/undeploy", function.id),
        )
        .await?;
    out.item(&serde_json::json!({ "undeployed": function.id }), || {
        format!("Undeployed {} from every node.", function.name)
    });
    Ok(())
}

/// Prints the deployment, and with `--wait` follows it until every node is ready or failed.
/// A node that failed, or a wait that timed out, is an error (non-zero exit).
async fn finish_deployment(
    client: &Client,
    out: &Output,
    mut deployment: Deployment,
    wait: &WaitArgs,
) -> anyhow::Result<()> {
    if !out.json {
        println!(
            "Deployment {}: version {} to {} node(s){}.",
            deployment.id,
            deployment.version,
            deployment.nodes.len(),
            if deployment.pop_selector.is_empty() {
                String::new()
            } else {
                format!(" matching {}", deployment.pop_selector)
            }
        );
    }
    if wait.wait {
        let deadline = Instant::now() + Duration::from_secs(wait.timeout);
        let mut shown: BTreeMap<String, ItemState> = BTreeMap::new();
        loop {
            for node in &deployment.nodes {
                if !out.json && shown.get(&node.node_id) != Some(&node.state) {
                    shown.insert(node.node_id.clone(), node.state);
                    let error = node
                        .error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default();
                    println!("  {:<28} {}{error}", node.node_id, node.state.as_str());
                }
            }
            let done = deployment
                .nodes
                .iter()
                .all(|n| matches!(n.state, ItemState::Ready | ItemState::Failed));
            if done {
                break;
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {} s waiting for deployment {}; follow it with `edgefn deployments show {}`",
                    wait.timeout,
                    deployment.id,
                    deployment.id
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            deployment = client
                .get(&format!("/deployments/{}", deployment.id))
                .await?;
        }
    }
    if out.json {
        out.print_json(&deployment);
    }
    let failed = deployment
        .nodes
        .iter()
        .filter(|n| n.state == ItemState::Failed)
        .count();
    if wait.wait && failed > 0 {
        anyhow::bail!(
            "{failed} of {} node(s) failed to apply version {}",
            deployment.nodes.len(),
            deployment.version
        );
    }
    if wait.wait && !out.json {
        println!("Ready on {} node(s).", deployment.nodes.len());
    }
    Ok(())
}

pub async fn routes(client: &Client, out: &Output, command: RoutesCommand) -> anyhow::Result<()> {
    match command {
        RoutesCommand::Add {
            path,
            function,
            host,
            version,
            methods,
            priority,
            selector,
        } => {
            let function = resolve(client, &function).await?;
            let route: Route = client
                .post(
                    "/routes",
                    &RouteInput {
                        host,
                        path,
                        function_id: function.id.clone(),
                        version,
                        methods,
                        priority,
                        pop_selector: selector,
                    },
                )
                .await?;
            out.item(&route, || {
                format!(
                    "Added route {}: {}{} -> {}.",
                    route.id, route.host, route.path, function.name
                )
            });
        }
        RoutesCommand::List => {
            let routes: Vec<Route> = client.get("/routes").await?;
            let rows = routes.iter().map(|r| {
                vec![
                    r.id.clone(),
                    r.host.clone(),
                    r.path.clone(),
                    if r.methods.is_empty() {
                        "*".into()
                    } else {
                        r.methods.join(",")
                    },
                    r.function_id.clone(),
                    or_dash(r.version),
                    r.priority.to_string(),
                    r.pop_selector.clone(),
                ]
            });
            out.list(
                &routes,
                &[
                    "id", "host", "path", "methods", "function", "version", "priority", "selector",
                ],
                rows,
            );
        }
        RoutesCommand::Rm { id } => {
            client
                .send_empty(reqwest::Method::DELETE, &format!("/routes/{id}"))
                .await?;
            out.item(&serde_json::json!({ "deleted": id }), || {
                format!("Removed route {id}.")
            });
        }
    }
    Ok(())
}

pub async fn nodes(client: &Client, out: &Output, command: NodesCommand) -> anyhow::Result<()> {
    match command {
        NodesCommand::List { healthy } => {
            let nodes: Vec<Node> = client.get(&format!("/nodes?healthy={healthy}")).await?;
            let rows = nodes.iter().map(|n| {
                vec![
                    n.id.clone(),
                    n.name.clone(),
                    n.status.as_str().to_string(),
                    labels(&n.labels),
                    n.address.clone(),
                    or_dash(n.last_heartbeat.map(time)),
                ]
            });
            out.list(
                &nodes,
                &[
                    "id",
                    "name",
                    "status",
                    "labels",
                    "address",
                    "last heartbeat",
                ],
                rows,
            );
        }
        NodesCommand::Show { id } => {
            let node = resolve_node(client, &id).await?;
            let names = function_names(client, out).await;
            out.item(&node, || {
                let head = format!(
                    "{} ({})\nstatus          {}{}\nlabels          {}\naddress         {}\nlast heartbeat  {}\ncpu             {}\nmemory          {}\n",
                    node.name,
                    node.id,
                    node.status.as_str(),
                    node.revoked_at
                        .map(|at| format!(" (revoked {})", time(at)))
                        .unwrap_or_default(),
                    labels(&node.labels),
                    node.address,
                    or_dash(node.last_heartbeat.map(time)),
                    or_dash(node.cpu_percent.map(|c| format!("{c:.1} %"))),
                    or_dash(node.mem_bytes.map(|m| format!("{} MiB", m >> 20))),
                );
                let rows = node.inventory.iter().map(|i| {
                    vec![
                        named(&names, &i.function_id),
                        i.version.to_string(),
                        i.state.as_str().to_string(),
                        or_dash(i.error.as_deref()),
                    ]
                });
                let usage = node.usage.functions.iter().map(|u| {
                    vec![
                        named(&names, &u.function_id),
                        u.invocations.to_string(),
                        u.errors.to_string(),
                    ]
                });
                let databases = node.databases.iter().map(|d| {
                    vec![
                        format!("{}/{}", d.project, d.database),
                        format!("{}/{}", d.applied_seq, d.target_seq),
                        d.state.as_str().to_string(),
                    ]
                });
                format!(
                    "{head}\n{}\n\n{}\n\nsince the previous heartbeat:\n{}",
                    table(&["function", "version", "state", "error"], rows),
                    table(&["database", "schema", "state"], databases),
                    table(&["function", "invocations", "errors"], usage)
                )
            });
        }
        NodesCommand::Token(NodeTokenCommand::Create { ttl }) => {
            let created: edgefn_proto::identity::BootstrapTokenCreated = client
                .post(
                    "/nodes/tokens",
                    &edgefn_proto::identity::CreateBootstrapToken { ttl: Some(ttl) },
                )
                .await?;
            out.item(&created, || {
                format!(
                    "{}\n(one node, until {}; shown only now)\nOn the node: edgefn runner --control-plane {} --bootstrap-token TOKEN --ca-sha256 {} …",
                    created.token,
                    time(created.expires_at),
                    client.base(),
                    created.ca_sha256
                )
            });
        }
        NodesCommand::Revoke { id } => {
            client
                .send_empty(reqwest::Method::POST, &format!("/nodes/{id}/revoke"))
                .await?;
            out.item(&serde_json::json!({ "revoked": id }), || {
                format!(
                    "Revoked node {id}: its connections are closed and it can no longer connect."
                )
            });
        }
    }
    Ok(())
}

pub async fn deployments(
    client: &Client,
    out: &Output,
    command: DeploymentsCommand,
) -> anyhow::Result<()> {
    let id = match command {
        DeploymentsCommand::Show { id } => id,
        DeploymentsCommand::Retry { id, wait } => {
            let deployment: Deployment = client
                .post(&format!("/deployments/{id}/retry"), &serde_json::json!({}))
                .await?;
            return finish_deployment(client, out, deployment, &wait).await;
        }
    };
    let deployment: Deployment = client.get(&format!("/deployments/{id}")).await?;
    let names = function_names(client, out).await;
    out.item(&deployment, || {
        let head = format!(
            "deployment {}\nfunction  {} version {}\nselector  {}\nstate     {}\ncreated   {}\n",
            deployment.id,
            named(&names, &deployment.function_id),
            deployment.version,
            if deployment.pop_selector.is_empty() {
                "(every node)"
            } else {
                &deployment.pop_selector
            },
            deployment.state,
            time(deployment.created_at)
        );
        let rows = deployment.nodes.iter().map(|n| {
            vec![
                n.node_id.clone(),
                n.state.as_str().to_string(),
                time(n.updated_at),
                or_dash(n.error.as_deref()),
            ]
        });
        format!(
            "{head}\n{}",
            table(&["node", "state", "updated", "error"], rows)
        )
    });
    Ok(())
}

/// Names of the functions the caller can read, by id, for tables (empty for `--json`, or
/// if they cannot be listed).
async fn function_names(client: &Client, out: &Output) -> BTreeMap<String, String> {
    if out.json {
        return BTreeMap::new();
    }
    let functions: Vec<Function> = client.get("/functions").await.unwrap_or_default();
    functions.into_iter().map(|f| (f.id, f.name)).collect()
}

/// `name (fn_…)` where the name is known, else the id.
fn named(names: &BTreeMap<String, String>, id: &str) -> String {
    match names.get(id) {
        Some(name) => format!("{name} ({id})"),
        None => id.to_string(),
    }
}

fn labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
