//! `edgefn-control-plane`: the developer API (`api::router`, behind `auth`) and the node
//! listener (`api::node_router`, mTLS through `listener` and the node CA in `ca`) over the
//! metadata store (`store`: SQLite or PostgreSQL) and the artifact store (`artifacts`: a
//! directory or S3); node sync (`sync`, `desired`); the audit log (`audit`) with its
//! checkpoints; and the sweeper that marks silent nodes offline.
//!
//! [`run`] checks the configuration, binds both listeners, opens (and migrates) the
//! database, loads or makes the keys (token signing, node CA) and the bootstrap
//! administrator, opens the artifact store — refusing to start when anything is missing or
//! unreachable — logs both addresses, and serves until the shutdown future resolves, then
//! writes a last audit checkpoint.

pub mod api;
pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod ca;
pub mod checkpoints;
pub mod clock;
pub mod config;
pub mod desired;
pub mod domains;
pub mod listener;
pub mod precompile;
pub mod revocations;
pub mod store;
pub mod sync;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::api::AppState;
use crate::artifacts::{Artifacts, S3Settings};
use crate::config::ControlPlaneArgs;
use crate::store::{Store, now_ms};

/// The key that signs local upload URLs: created once, kept in the data directory so that
/// URLs survive restarts, readable only by the owner.
fn upload_signing_key(data_dir: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("upload-signing.key");
    if let Ok(existing) = std::fs::read(&path) {
        return existing
            .try_into()
            .map_err(|_| anyhow::anyhow!("{} is not a 32-byte key", path.display()));
    }
    // Two random (v4) UUIDs: 244 bits from the operating system's generator.
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&key)?;
    Ok(key)
}

/// Marks nodes offline after `after` of silence, checking every `every`.
pub fn spawn_offline_sweeper(store: Store, after: Duration, every: Duration) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match store
                .mark_silent_nodes_offline(now_ms() - after.as_millis() as i64)
                .await
            {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "nodes marked offline after silence"),
                Err(error) => tracing::warn!(%error, "offline sweep failed"),
            }
        }
    });
}

/// Installs the crypto providers once per process: ring for rustls (both ring and
/// aws-lc-rs are in the tree, so rustls cannot pick one itself) and aws-lc-rs for
/// `jsonwebtoken`.
pub fn install_crypto_providers() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}

/// What the security half of the control plane is made of.
pub struct SecurityConfig {
    /// The `iss` of our tokens.
    pub issuer: String,
    /// Where nodes reach the node listener.
    pub node_url: String,
    /// An operator's node CA (certificate PEM, key PEM) instead of our own.
    pub operator_ca: Option<(String, String)>,
    pub node_cert_ttl: Duration,
    pub node_token_ttl: Duration,
    pub external: Option<Arc<auth::oidc::ExternalIssuer>>,
}

impl SecurityConfig {
    /// The defaults, for a node listener at `node_url`.
    pub fn new(node_url: &str) -> Self {
        Self {
            issuer: "edgefn".into(),
            node_url: node_url.to_string(),
            operator_ca: None,
            node_cert_ttl: Duration::from_secs(365 * 86_400),
            node_token_ttl: Duration::from_secs(30 * 86_400),
            external: None,
        }
    }
}

/// The signing key and the node CA, from the database (made there on first start, so that
/// every replica shares them), or the operator's CA.
pub async fn security(
    store: &Store,
    config: SecurityConfig,
) -> anyhow::Result<(Arc<auth::Auth>, Arc<ca::NodeAuthority>)> {
    let (signing_key, _) = store
        .key_or_create("signing", || {
            auth::tokens::generate_key().map(|key| (key, None))
        })
        .await?;
    let signer = Arc::new(
        auth::tokens::Signer::from_pem(&signing_key, &config.issuer).map_err(anyhow::Error::msg)?,
    );
    let nodes = ca::NodeAuthority::open(
        store,
        config.operator_ca,
        signer.clone(),
        config.node_url,
        config.node_cert_ttl,
        config.node_token_ttl,
    )
    .await?;
    let auth = auth::Auth {
        signer,
        external: config.external,
    };
    Ok((Arc::new(auth), Arc::new(nodes)))
}

/// How long the bootstrap administrator's token lasts (`edgefn tokens create` makes more).
const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);

/// The names in the node listener's certificate: what nodes may connect to.
fn node_listener_names(
    args: &ControlPlaneArgs,
    node_url: &str,
    address: std::net::SocketAddr,
) -> Vec<String> {
    let mut names: Vec<String> = vec!["localhost".into(), address.ip().to_string()];
    if address.ip().is_unspecified() {
        names.push("127.0.0.1".into());
    }
    if let Some(host) = url::Url::parse(node_url)
        .ok()
        .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()))
    {
        names.push(host);
    }
    names.extend(args.node_names.iter().filter(|n| !n.is_empty()).cloned());
    names.sort();
    names.dedup();
    names
}

/// Opens the stores and serves the developer API and the node listener until `shutdown`
/// resolves.
/// Creates a SQLite database file readable only by this user before SQLite does (with the
/// umask's 0644): it holds the token-signing and CA keys. SQLite gives its `-wal` and `-shm`
/// files the database file's permissions.
fn private_sqlite_file(url: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    let path = std::path::Path::new(path);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(())
}

pub async fn run(
    args: ControlPlaneArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    install_crypto_providers();
    // The data directory holds the database (and so the signing and CA keys) and the
    // administrator's token: only this user may enter it.
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.data_dir)
            .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    }
    let api_tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(listener::server_tls(
            &std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?,
            &std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?,
        )?),
        _ if args.tls_self_signed => {
            let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
            names.push(args.listen.ip().to_string());
            names.dedup();
            Some(listener::self_signed_tls(&args.data_dir, &names)?)
        }
        _ => None,
    };
    let operator_ca = match (&args.node_ca_cert, &args.node_ca_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read {}", cert.display()))?,
            std::fs::read_to_string(key)
                .with_context(|| format!("cannot read {}", key.display()))?,
        )),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let node_listener = tokio::net::TcpListener::bind(args.node_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.node_listen))?;
    let node_address = node_listener.local_addr()?;
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{address}"));
    let node_url = args
        .node_public_url
        .clone()
        .unwrap_or_else(|| format!("https://{node_address}"));

    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("edgefn.db").display()
        ),
    };
    private_sqlite_file(&database_url)?;
    let store = Store::connect_as(&database_url, args.database_owner_url.as_deref()).await?;
    store.set_refusal_limit(args.audit_refusals_per_second);
    let external = match (&args.oidc_issuer, &args.oidc_jwks_url) {
        (Some(issuer), Some(jwks)) => {
            let external = auth::oidc::ExternalIssuer::new(
                issuer,
                &args.oidc_audience,
                jwks,
                &args.oidc_user_claim,
            );
            match external.refresh().await {
                Ok(keys) => tracing::info!(issuer, keys, "accepting tokens of an external issuer"),
                // Not fatal: the issuer may come up later; tokens are refused until then.
                Err(error) => {
                    tracing::warn!(issuer, %error, "cannot fetch the external issuer's keys yet")
                }
            }
            Some(Arc::new(external))
        }
        _ => None,
    };
    let (auth, nodes) = security(
        &store,
        SecurityConfig {
            issuer: args.token_issuer.clone(),
            node_url: node_url.clone(),
            operator_ca,
            node_cert_ttl: Duration::from_secs(args.node_cert_ttl_secs.max(60)),
            node_token_ttl: Duration::from_secs(args.node_token_ttl_secs.max(60)),
            external,
        },
    )
    .await?;
    let signer = auth.signer.clone();
    if let Some(path) =
        auth::bootstrap_admin(&store, &signer, &args.data_dir, ADMIN_TOKEN_TTL).await?
    {
        // Never the token itself: it is in the file, readable only by its owner.
        tracing::info!(path = %path.display(), "created the administrator and its token; export EDGEFN_TOKEN=$(cat {})", path.display());
    }
    let node_tls = nodes.node_listener_tls(&node_listener_names(&args, &node_url, node_address))?;
    let artifacts = match args.artifacts.as_deref() {
        None => Artifacts::local(
            &args.data_dir.join("artifacts"),
            upload_signing_key(&args.data_dir)?,
            public_url.clone(),
        )?,
        Some(spec) => {
            let bucket = spec
                .strip_prefix("s3://")
                .filter(|b| !b.is_empty() && !b.contains('/'))
                .ok_or_else(|| anyhow::anyhow!("--artifacts must be s3://BUCKET, got {spec:?}"))?;
            let settings = S3Settings {
                bucket: bucket.to_string(),
                endpoint: args.s3_endpoint.clone(),
                ..S3Settings::default()
            };
            Artifacts::s3(&settings, public_url.clone()).await?
        }
    };
    let checkpoints = checkpoints::CheckpointStore::open(
        &args.audit_checkpoints.clone().unwrap_or_else(|| {
            args.data_dir
                .join("audit-checkpoints")
                .display()
                .to_string()
        }),
        args.s3_endpoint.as_deref(),
    )?;
    let platform = crate::domains::DomainName::parse(&args.platform_domain)
        .map_err(|e| anyhow::anyhow!("--platform-domain {:?}: {e}", args.platform_domain))?;
    store.set_platform_domain(&platform.base);
    let dns = match args.dns_server {
        Some(server) => Some(domains::dns::DnsVerifier::with_server(server)),
        None => Some(domains::dns::DnsVerifier::system()),
    }
    .and_then(|verifier| match verifier {
        Ok(verifier) => Some(Arc::new(verifier)),
        Err(error) => {
            tracing::warn!(%error, "domains cannot be verified by DNS (administrators can still mark them verified)");
            None
        }
    });
    // Catch up with a change whose recomputation a crash interrupted (a route written, its
    // nodes' desired states not yet).
    {
        let url = |sha256: &str| nodes.artifact_url(sha256);
        store
            .refresh_desired(&url, None)
            .await
            .context("cannot bring the nodes' desired states up to date")?;
    }
    spawn_offline_sweeper(
        store.clone(),
        Duration::from_secs(args.node_offline_after_secs),
        Duration::from_secs(args.node_offline_after_secs.clamp(1, 10)),
    );
    checkpoints::spawn_checkpointer(
        store.clone(),
        signer.clone(),
        checkpoints.clone(),
        Duration::from_secs(args.audit_checkpoint_secs.max(1)),
    );
    let feed = sync::RevisionFeed::new();
    feed.spawn_poller(
        store.clone(),
        Duration::from_millis(args.sync_poll_ms.max(10)),
    );
    let revoked_nodes = revocations::Revocations::new();
    revoked_nodes.spawn_poller(
        store.clone(),
        Duration::from_millis(args.sync_poll_ms.max(10)),
    );
    let artifacts = Arc::new(artifacts);
    let precompiler = args.compile_worker.as_ref().map(|program| {
        precompile::Precompiler::new(
            precompile::PrecompileConfig {
                program: program.clone(),
                timeout: Duration::from_secs(args.compile_timeout_secs.max(1)),
                max_memory_bytes: args.compile_max_memory_bytes,
                max_concurrent: args.max_concurrent_compiles,
                incremental_cache: (args.compile_cache_bytes > 0).then(|| {
                    (
                        args.data_dir.join("compile-cache"),
                        args.compile_cache_bytes,
                    )
                }),
            },
            store.clone(),
            artifacts.clone(),
            nodes.clone(),
        )
    });
    let state = AppState {
        store: store.clone(),
        artifacts,
        limits: validate::Limits {
            max_memory_pages: args.max_memory_pages,
            max_execution_ms: args.max_execution_ms,
        },
        upload_ttl: Duration::from_secs(args.upload_ttl_secs),
        max_artifact_bytes: args.max_artifact_bytes,
        feed: feed.clone(),
        revocations: revoked_nodes.clone(),
        auth,
        ca: nodes,
        checkpoints: Some(checkpoints.clone()),
        logins: Default::default(),
        dns,
        precompiler,
        database_warn_after: Duration::from_secs(args.database_warn_after_secs),
    };
    // The one fixed format tools and tests read the bound addresses from.
    for (name, bound) in [("api", address), ("nodes", node_address)] {
        use std::io::Write as _;
        if args.quiet_listeners {
            break;
        }
        let timestamp = clock::rfc3339_now();
        let line = serde_json::json!({ "timestamp": timestamp, "level": "INFO", "message": "listening", "listener": name, "address": bound.to_string() });
        // A closed stdout (a supervisor that stopped reading) is no reason to stop serving.
        let _ = writeln!(std::io::stdout(), "{line}");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        }
    };
    tokio::spawn(async move {
        shutdown.await;
        // Push streams never end by themselves: close them when shutdown starts, or
        // draining would wait for them forever.
        feed.close();
        let _ = stop.send(true);
    });
    let gate = listener::NodeGate {
        store: store.clone(),
        revocations: state.revocations.clone(),
    };
    let (api_limits, node_limits) = args.listen_limits();
    let (api, nodes) = tokio::join!(
        listener::serve(
            listener,
            api_tls.map(Arc::new),
            None,
            api_limits,
            api::router(state.clone()),
            until_stopped()
        ),
        listener::serve(
            node_listener,
            Some(Arc::new(node_tls)),
            Some(gate),
            node_limits,
            api::node_router(state),
            until_stopped()
        ),
    );
    api?;
    nodes?;
    // The records of the last moments, vouched for before the process goes.
    if let Err(error) = checkpoints::write_checkpoint(&store, &signer, &checkpoints).await {
        tracing::error!(%error, "audit checkpoint at shutdown failed");
    }
    Ok(())
}
