//! `edgefn-runner`: the edge node. It serves the functions and routes of an operator's
//! manifest or of the control plane's desired state through an HTTP(S) front, the
//! host/path/method/priority router of `edgefn_proto::router`, per-tenant quotas and the
//! `edgefn-runtime` instance pools, with a verified LRU artifact cache, Prometheus metrics
//! and JSON logs.
//!
//! Wiring: [`run`] validates the manifest (or reads the applied desired state), binds the
//! listeners, opens the cache (verifying every artifact), creates the runtime and the
//! `Node`, reconciles the node to its `NodeSpec`, starts the sync client when there is a
//! control plane, then serves until the shutdown future resolves and drains.
//!
//! Modules: `spec` (what a node serves), `manifest` (the operator's file → spec),
//! `reconcile` (the control plane's desired state → spec, applied and persisted), `sync`
//! and `push` (the transport to the control plane), `identity` (enrollment, certificate),
//! `cp_http` (replies and errors of control-plane calls), `node` (state and
//! `Node::reconcile`), `share`, `quotas`, `cache`, `fetch`, `server` (the front), `admin`,
//! `metrics`, `logs`, `usage`, `config`.

mod admin;
pub mod cache;
pub mod config;
mod cp_http;
mod databases;
mod fetch;
pub mod identity;
mod logs;
pub use logs::use_human_lines;
mod manifest;
mod metrics;
mod node;
mod precompiled;
mod push;
mod quotas;
mod reconcile;
mod server;
mod share;
mod spec;
mod sync;
mod usage;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use edgefn_runtime::{CompilerConfig, Runtime, RuntimeConfig};
use serde_json::json;

use crate::cache::{ArtifactCache, CacheLimits};
use crate::config::RunnerArgs;
use crate::fetch::{Backoff, Fetcher};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::quotas::{QuotaLimits, TenantQuotas};
use crate::server::FrontConfig;
use crate::spec::NodeSpec;

/// Logs a bound address in the one fixed format tests and tools read:
/// `{"message":"listening","listener":NAME,"address":"IP:PORT",...}`.
fn log_listening(node_id: &str, listener: &str, address: std::net::SocketAddr) {
    logs::write_line(&json!({
        "timestamp": logs::rfc3339(std::time::SystemTime::now()),
        "level": "INFO",
        "message": "listening",
        "node_id": node_id,
        "listener": listener,
        "address": address.to_string(),
    }));
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Re-reads the manifest on SIGHUP and reconciles to it; a manifest that does not validate
/// is logged and the node keeps serving what it has.
fn spawn_reload_on_hangup(
    node: Arc<Node>,
    manifest: std::path::PathBuf,
    db_dir: std::path::PathBuf,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP; manifest reloads are off");
        return;
    };
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match manifest::load_checked(&manifest, &db_dir) {
                Ok(manifest) => {
                    node.reconcile(&manifest);
                    tracing::info!(
                        functions = manifest.functions.len(),
                        routes = manifest.routes.len(),
                        "manifest reloaded"
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "manifest reload refused; keeping the current state")
                }
            }
        }
    });
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs a runner until `shutdown` resolves, then drains in-flight requests.
pub async fn run(
    args: RunnerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Both ring and aws-lc-rs are in the tree: name rustls's provider once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Everything that can be checked is checked before a socket is bound. With a control
    // plane, the node starts from the desired state it applied last (if any).
    let (manifest, applied, schemas) = match (&args.manifest, &args.control_plane) {
        (Some(path), _) => (
            manifest::load_checked(path, &args.state_dir.join("db"))?,
            None,
            databases::Schemas::new(),
        ),
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("--control-plane must be an http:// or https:// URL, got {url:?}");
            }
            // The state directory holds the node's key: only this user may enter it.
            {
                use std::os::unix::fs::PermissionsExt as _;
                identity::create_private_dir(&args.state_dir)
                    .and_then(|()| {
                        std::fs::set_permissions(
                            &args.state_dir,
                            std::fs::Permissions::from_mode(0o700),
                        )
                    })
                    .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
            }
            let applied = reconcile::load_applied(&args.state_dir);
            // Where the persisted state's databases stand on disk: a version is not served
            // against an older schema than it requires, not even right after a restart.
            let schemas = applied
                .as_ref()
                .map(|state| {
                    databases::EdgeDatabases::new(&args.state_dir).schemas_on_disk(&state.databases)
                })
                .unwrap_or_default();
            let manifest = match &applied {
                Some(state) => reconcile::spec_of(state, &schemas).with_context(|| {
                    format!("{}: persisted desired state", args.state_dir.display())
                })?,
                None => NodeSpec::default(),
            };
            (manifest, applied, schemas)
        }
        (None, None) => anyhow::bail!("one of --manifest and --control-plane is required"),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let api_ca_cert = match &args.api_ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-ca-cert {}", path.display()))?,
        ),
        None => None,
    };
    let per_minute = NonZeroU32::new(args.tenant_invocations_per_minute)
        .context("--tenant-invocations-per-minute must be positive")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let public_address = listener.local_addr()?;
    log_listening(&args.node_id, scheme, public_address);
    log_listening(&args.node_id, "admin", admin_listener.local_addr()?);

    let metrics = Arc::new(Metrics::new());
    let cache_limits = CacheLimits {
        max_bytes: args.cache_max_bytes,
        max_files: args.cache_max_files,
    };
    let (cache, corrupt) = ArtifactCache::open(&args.cache_dir, cache_limits)
        .with_context(|| format!("cannot open the cache at {}", args.cache_dir.display()))?;
    for artifact in corrupt {
        metrics.corrupt_artifacts.inc();
        logs::write_line(&json!({
            "timestamp": logs::rfc3339(std::time::SystemTime::now()),
            "level": "ERROR",
            "message": "deleted a corrupt cached artifact",
            "node_id": args.node_id,
            "path": artifact.path.display().to_string(),
            "reason": artifact.reason,
        }));
    }

    let mut runtime_config = RuntimeConfig::new(Arc::new(logs::JsonLogSink {
        node_id: args.node_id.clone(),
    }));
    runtime_config.max_memory_pages = args.max_memory_pages;
    runtime_config.database_dir = Some(args.state_dir.join("db"));
    runtime_config.memory_budget_bytes = args.memory_budget_bytes;
    runtime_config.pool_instances = args.pool_instances;
    runtime_config.max_request_body_bytes = args.max_request_body_bytes;
    runtime_config.outbound_allowed_networks = args.outbound_allow_networks.clone();
    runtime_config.outbound_connections_per_function = args.outbound_connections_per_function;
    runtime_config.outbound_connections_per_instance = args.outbound_connections_per_instance;
    // Untrusted artifacts are compiled by this same binary in a child process with rlimits.
    let defaults = CompilerConfig::default();
    runtime_config.compiler = CompilerConfig {
        worker_program: Some(std::env::current_exe().context("cannot find this executable")?),
        max_concurrent: args
            .compile_workers
            .unwrap_or(defaults.max_concurrent)
            .max(1),
        incremental_cache: (args.compile_cache_bytes > 0)
            .then(|| args.state_dir.join("compile-cache")),
        incremental_cache_bytes: args.compile_cache_bytes,
        ..defaults
    };
    let baseline = if args.winch_first {
        let mut config = runtime_config.clone();
        config.winch = true;
        // Winch code serves a version only until its Cranelift code is ready: a quarter of
        // the slots and of the memory budget, so the node's total stays near its limit.
        config.pool_instances = (args.pool_instances / 4).max(16);
        config.memory_budget_bytes = args.memory_budget_bytes / 4;
        Some(Runtime::new(config)?)
    } else {
        None
    };
    let runtime = Runtime::new(runtime_config)?;
    let backoff = Backoff {
        initial: Duration::from_millis(args.fetch_backoff_ms),
        attempts: args.fetch_attempts.max(1),
        ..Backoff::default()
    };
    let node = Node::new(
        args.node_id.clone(),
        runtime,
        cache,
        TenantQuotas::new(QuotaLimits {
            max_concurrent: args.tenant_max_concurrent,
            per_minute,
        }),
        metrics,
        Fetcher::new(backoff, 50 << 20),
        share::ShareLimits {
            slots: args.pool_instances,
            default_share_percent: args.pool_share_percent,
            prewarm_percent: args.prewarm_percent,
        },
    );
    if let Some(baseline) = baseline {
        node.use_baseline(baseline);
    }
    node.reconcile(&manifest);
    let labels: serde_json::Map<String, serde_json::Value> = args
        .labels
        .0
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    logs::write_line(&json!({
        "timestamp": logs::rfc3339(std::time::SystemTime::now()),
        "level": "INFO",
        "message": "node started",
        "node_id": args.node_id,
        "labels": labels,
        "functions": manifest.functions.len(),
        "routes": manifest.routes.len(),
        "applied_revision": applied.as_ref().map(|s| s.revision),
    }));
    let mut sync_task = None;
    match (&args.manifest, &args.control_plane) {
        (Some(path), _) => {
            spawn_reload_on_hangup(node.clone(), path.clone(), args.state_dir.join("db"))
        }
        (None, Some(url)) => {
            let config = sync::SyncConfig {
                control_plane: url.trim_end_matches('/').to_string(),
                name: args.node_id.clone(),
                labels: args.labels.0.iter().cloned().collect(),
                address: args
                    .advertise_address
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{public_address}")),
                state_dir: args.state_dir.clone(),
                heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(10)),
                backoff: Backoff {
                    initial: Duration::from_secs(1),
                    max: Duration::from_secs(60),
                    attempts: u32::MAX,
                },
                bootstrap_token: args.bootstrap_token.clone(),
                ca_sha256: args.ca_sha256.clone(),
                api_ca_cert,
            };
            sync_task = Some(tokio::spawn(
                sync::SyncClient::new(node.clone(), config, applied, schemas).run(),
            ));
        }
        (None, None) => {}
    }

    let listen = edgefn_listen::Limits {
        header_read_timeout: Duration::from_millis(args.header_read_timeout_ms),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connections: args.max_connections,
        max_connections_per_ip: args.max_connections_per_ip,
        h2_max_concurrent_streams: args.h2_max_streams,
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        node.clone(),
        // The admin listener is scraped by a few collectors: a small share of the front's.
        edgefn_listen::Limits {
            max_connections: 256,
            max_connections_per_ip: 64,
            ..listen
        },
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let front = FrontConfig {
        max_request_body_bytes: args.max_request_body_bytes,
        max_header_bytes: args.max_header_bytes,
        body_read_timeout: Duration::from_millis(args.body_read_timeout_ms),
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        listen,
    };
    server::serve(listener, tls, node.clone(), front, shutdown).await;
    if let Some(task) = sync_task {
        task.abort();
    }
    let _ = stop_admin.send(());
    let _ = admin.await;
    node.cache.persist();
    logs::flush();
    Ok(())
}
