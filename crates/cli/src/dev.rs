//! `edgefn dev`: a whole edgefn on this machine in one command. It starts a control plane
//! (SQLite and local artifacts under `--dir`) and `--runners` runners attached to it, all in
//! this process on 127.0.0.1, builds `examples/hello` (or takes `--wasm`), deploys it with a
//! route for `/`, waits until every runner answers it, and prints the URLs. Ctrl-C or
//! SIGTERM drains and stops everything.
//!
//! Security is on, as everywhere: `edgefn dev` reads the administrator token the control
//! plane writes on first start (`{dir}/control-plane/admin-token`), enrolls each new runner
//! with a bootstrap token of its own (pinned to the node CA), and prints how other shells
//! get the token.
//!
//! Running again reuses the directory: the function keeps its id, and an unchanged artifact
//! is deployed again rather than uploaded as a new version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser as _};
use edgefn_proto::api::{CreateFunction, DeployRequest, Deployment, Route, RouteInput, Version};
use tokio::sync::watch;

use crate::GlobalArgs;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Directory for the control plane's database and artifacts and the runners' caches.
    #[arg(long, default_value = ".edgefn")]
    pub dir: PathBuf,
    /// Runners to start; runner i is labelled `region=local,pop=dev-i`.
    #[arg(long, default_value_t = 1)]
    pub runners: u16,
    /// Address of the control plane's API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// HTTP port of the first runner (runner i listens on this + i - 1).
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// Admin (metrics) port of the first runner.
    #[arg(long, default_value_t = 9090)]
    pub admin_port: u16,
    /// Deploy this .wasm instead of building examples/hello.
    #[arg(long)]
    pub wasm: Option<PathBuf>,
    /// Milliseconds between the runners' heartbeats.
    #[arg(long, default_value_t = 1000)]
    pub heartbeat_ms: u64,
    /// Serve the control plane's API over TLS with a self-signed certificate (made in
    /// `{dir}/control-plane/api-tls.crt`, which other commands then trust with
    /// `--ca-cert`).
    #[arg(long)]
    pub tls: bool,
}

/// The function `edgefn dev` deploys.
const FUNCTION: &str = "hello";

pub async fn run(args: DevArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    if args.runners == 0 {
        anyhow::bail!("--runners must be at least 1");
    }
    if !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "edgefn dev serves on loopback addresses only; got {}",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    // People get short lines (requests, guest logs); `--json` keeps the servers' JSON lines
    // for machines.
    if !global.json {
        edgefn_runner::use_human_lines();
    }
    let wasm = match &args.wasm {
        Some(path) => path.clone(),
        None => build_hello(&args.dir)?,
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;

    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();

    let scheme = if args.tls { "https" } else { "http" };
    let cp_url = format!("{scheme}://{}", args.listen);
    let api_cert = args.dir.join("control-plane").join("api-tls.crt");
    let api_ca = args.tls.then_some(api_cert.as_path());
    let mut cp_args = edgefn_control_plane::config::ControlPlaneArgs::try_parse_from(
        [
            "edgefn-control-plane".to_string(),
            "--listen".into(),
            args.listen.to_string(),
            "--data-dir".into(),
            args.dir.join("control-plane").display().to_string(),
            "--node-offline-after-secs".into(),
            "30".into(),
            "--node-listen".into(),
            format!("{}:0", args.listen.ip()),
        ]
        .into_iter()
        .chain(args.tls.then(|| "--tls-self-signed".to_string())),
    )?;
    // The runners' compile worker (this binary) compiles once for all of them.
    cp_args.compile_worker = std::env::current_exe().ok();
    cp_args.quiet_listeners = !global.json;
    tasks.spawn(named(
        "control plane",
        edgefn_control_plane::run(cp_args, until_stopped(stopped.clone())),
    ));
    wait_for_control_plane(&cp_url, api_ca, &mut tasks).await?;
    // The control plane wrote its administrator token on first start: the quickstart
    // needs no login.
    let token_file = args.dir.join("control-plane").join("admin-token");
    let token = match &global.token {
        Some(token) => token.clone(),
        None => std::fs::read_to_string(&token_file)
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "cannot read the administrator token {}: pass --token, or start over with a fresh --dir",
                    token_file.display()
                )
            })?,
    };
    let client = Client::new(&cp_url, Some(token), api_ca)?;

    let mut runners = Vec::new();
    for i in 1..=args.runners {
        let http = SocketAddr::new(args.listen.ip(), args.http_port + i - 1);
        let admin = SocketAddr::new(args.listen.ip(), args.admin_port + i - 1);
        let home = args.dir.join(format!("runner-{i}"));
        // A runner enrolled on an earlier run has its identity in its state directory.
        let mut enroll = Vec::new();
        if args.tls {
            enroll.extend(["--api-ca-cert".to_string(), api_cert.display().to_string()]);
        }
        if edgefn_runner::identity::Credentials::load(&home.join("state"), &cp_url).is_none() {
            let created: edgefn_proto::identity::BootstrapTokenCreated = client
                .post(
                    "/nodes/tokens",
                    &edgefn_proto::identity::CreateBootstrapToken {
                        ttl: Some("10m".into()),
                    },
                )
                .await?;
            enroll.extend([
                "--bootstrap-token".to_string(),
                created.token,
                "--ca-sha256".into(),
                created.ca_sha256,
            ]);
        }
        let runner_args = edgefn_runner::config::RunnerArgs::try_parse_from(
            [
                "edgefn-runner".to_string(),
                "--control-plane".into(),
                cp_url.clone(),
                "--listen".into(),
                http.to_string(),
                "--admin-listen".into(),
                admin.to_string(),
                "--cache-dir".into(),
                home.join("cache").display().to_string(),
                "--state-dir".into(),
                home.join("state").display().to_string(),
                "--node-id".into(),
                format!("dev-{i}"),
                "--labels".into(),
                format!("region=local,pop=dev-{i}"),
                "--heartbeat-ms".into(),
                args.heartbeat_ms.to_string(),
                "--memory-budget-bytes".into(),
                (512u64 << 20).to_string(),
                "--pool-instances".into(),
                "100".into(),
            ]
            .into_iter()
            .chain(enroll),
        )?;
        tasks.spawn(named(
            "runner",
            edgefn_runner::run(runner_args, until_stopped(stopped.clone())),
        ));
        runners.push((format!("dev-{i}"), http, admin));
    }

    let started = Instant::now();
    let deployed = deploy_hello(&client, bytes).await?;
    wait_until_ready(&client, &deployed.id, args.runners.into(), &mut tasks).await?;
    for (_, http, _) in &runners {
        let url = format!("http://{http}/");
        let reply = reqwest::get(&url)
            .await
            .with_context(|| format!("GET {url}"))?;
        if !reply.status().is_success() {
            anyhow::bail!(
                "{url} answered {} after the deployment was ready",
                reply.status()
            );
        }
    }
    if global.json {
        let summary = serde_json::json!({
            "timestamp": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            "level": "INFO",
            "message": "edgefn dev is running",
            "function": FUNCTION,
            "version": deployed.version,
            "ready_ms": started.elapsed().as_millis() as u64,
            "control_plane": cp_url,
            "token_file": token_file,
            "runners": runners.iter().map(|(name, http, admin)| serde_json::json!({
                "name": name,
                "url": format!("http://{http}/"),
                "metrics": format!("http://{admin}/metrics"),
            })).collect::<Vec<_>>(),
        });
        println!("{summary}");
    } else {
        print_summary(
            &args,
            &cp_url,
            &token_file,
            &api_cert,
            &runners,
            &deployed,
            started,
        );
    }

    let outcome = tokio::select! {
        _ = edgefn_runner::shutdown_signal() => Ok(()),
        Some(ended) = tasks.join_next() => match ended {
            Ok(Err(error)) => Err(error),
            _ => Err(anyhow::anyhow!("a component stopped unexpectedly")),
        },
    };
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    outcome
}

async fn named(
    what: &'static str,
    task: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    task.await.with_context(|| format!("the {what} failed"))
}

/// Builds `examples/hello` for wasm32-wasip2 into `{dir}/guests` with cargo.
fn build_hello(dir: &Path) -> anyhow::Result<PathBuf> {
    let here = Path::new("examples/Cargo.toml");
    let from_source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/Cargo.toml");
    let manifest = [here.to_path_buf(), from_source]
        .into_iter()
        .find(|p| p.exists())
        .context("cannot find examples/Cargo.toml: run edgefn dev from the edgefn repository, or pass --wasm PATH")?;
    let target_dir = std::path::absolute(dir.join("guests"))?;
    eprintln!("building examples/hello (wasm32-wasip2) ...");
    let examples = manifest.parent().unwrap_or(Path::new("."));
    // A toolchain installed before rust-toolchain.toml named the wasm targets lacks them;
    // rustup adds them (a no-op when present). Without rustup, cargo's error says what to do.
    let _ = std::process::Command::new("rustup")
        .current_dir(examples)
        .args(["--quiet", "target", "add", "wasm32-wasip2"])
        .status();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .current_dir(examples)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "hello",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("cannot run cargo to build examples/hello")?;
    if !status.success() {
        anyhow::bail!("building examples/hello failed ({status})");
    }
    Ok(target_dir.join("wasm32-wasip2/release/hello.wasm"))
}

/// Waits until the control plane answers (with TLS, once its certificate exists, so
/// that the client can trust it).
async fn wait_for_control_plane(
    url: &str,
    ca_cert: Option<&Path>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ca_cert.is_none_or(Path::exists)
            && Client::new(url, None, ca_cert)?
                .get::<serde_json::Value>("/openapi.json")
                .await
                .is_ok()
        {
            return Ok(());
        }
        check_alive(tasks).await?;
        if Instant::now() > deadline {
            anyhow::bail!("the control plane did not come up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Fails with a component's own error if one has stopped.
async fn check_alive(tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    match tasks.try_join_next() {
        Some(Ok(Err(error))) => Err(error),
        Some(_) => Err(anyhow::anyhow!("a component stopped unexpectedly")),
        None => Ok(()),
    }
}

/// Makes sure `hello` exists, holds `bytes` as a ready version, is deployed everywhere and
/// routed at `/`.
async fn deploy_hello(client: &Client, bytes: Vec<u8>) -> anyhow::Result<Deployment> {
    let function = match crate::commands::resolve(client, FUNCTION).await {
        Ok(function) => function,
        Err(_) => {
            let body = CreateFunction {
                name: FUNCTION.into(),
                ..CreateFunction::default()
            };
            let created: edgefn_proto::api::VersionCreated =
                client.post("/functions", &body).await?;
            client
                .get(&format!("/functions/{}", created.function_id))
                .await?
        }
    };
    let sha256 = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let versions: Vec<Version> = client
        .get(&format!("/functions/{}/versions", function.id))
        .await?;
    let existing = versions
        .iter()
        .filter(|v| v.sha256.as_deref() == Some(sha256.as_str()))
        .max_by_key(|v| v.version);
    let version = match existing {
        Some(version) => version.version,
        None => {
            crate::commands::upload_version(client, &function, bytes, None, true)
                .await?
                .version
        }
    };
    let routes: Vec<Route> = client.get("/routes").await?;
    if !routes
        .iter()
        .any(|r| r.function_id == function.id && r.path == "/")
    {
        let _: Route = client
            .post(
                "/routes",
                &RouteInput {
                    host: "*".into(),
                    path: "/".into(),
                    function_id: function.id.clone(),
                    version: None,
                    methods: Vec::new(),
                    priority: 0,
                    pop_selector: String::new(),
                },
            )
            .await?;
    }
    client
        .post(
            &format!("/functions/{}/deploy", function.id),
            &DeployRequest {
                version: version as i64,
                pop_selector: String::new(),
                strategy: "all".into(),
            },
        )
        .await
}

/// Waits until `runners` nodes hold the deployment ready (nodes join it as they register);
/// a node that fails it ends the wait with the node's error.
async fn wait_until_ready(
    client: &Client,
    deployment_id: &str,
    runners: usize,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    use edgefn_proto::sync::ItemState;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let deployment: Deployment = client.get(&format!("/deployments/{deployment_id}")).await?;
        if let Some(failed) = deployment
            .nodes
            .iter()
            .find(|n| n.state == ItemState::Failed)
        {
            anyhow::bail!(
                "node {} could not load {FUNCTION}: {}",
                failed.node_id,
                failed.error.as_deref().unwrap_or("no reason given")
            );
        }
        let ready = deployment
            .nodes
            .iter()
            .filter(|n| n.state == ItemState::Ready)
            .count();
        if ready >= runners {
            return Ok(());
        }
        check_alive(tasks).await?;
        if Instant::now() > deadline {
            anyhow::bail!("{ready} of {runners} runners were ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What `edgefn dev` tells a person once everything answers.
fn print_summary(
    args: &DevArgs,
    cp_url: &str,
    token_file: &std::path::Path,
    api_cert: &std::path::Path,
    runners: &[(String, SocketAddr, SocketAddr)],
    deployed: &Deployment,
    started: Instant,
) {
    println!();
    println!(
        "edgefn dev is running ({FUNCTION} version {} deployed and answering in {} ms)",
        deployed.version,
        started.elapsed().as_millis()
    );
    println!("  control plane  {cp_url}");
    println!(
        "  other shells:  export EDGEFN_URL={cp_url} EDGEFN_TOKEN=$(cat {}){}",
        token_file.display(),
        if args.tls {
            format!(" EDGEFN_CA_CERT={}", api_cert.display())
        } else {
            String::new()
        }
    );
    for (name, http, admin) in runners {
        println!("  runner {name:<7} http://{http}/   metrics http://{admin}/metrics");
    }
    println!("  try:           curl http://{}/", runners[0].1);
    println!("  deploy yours:  edgefn deploy {FUNCTION} --wasm PATH --wait");
    println!("Ctrl-C stops everything; requests and guest logs follow (--json for JSON lines).");
}
