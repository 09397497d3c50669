//! `edgefn-control-plane`: the REST API (`api::router`) over the metadata store (`store`:
//! SQLite or PostgreSQL) and the artifact store (`artifacts`: a directory or S3), plus the
//! sweeper that marks silent nodes offline. Node sync, auth and the CLI build on these.
//!
//! [`run`] checks the configuration, opens (and migrates) the database, opens the artifact
//! store — refusing to start when either is unreachable — binds the listener, logs its
//! address, and serves until the shutdown future resolves.

pub mod api;
pub mod artifacts;
pub mod config;
pub mod desired;
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
fn signing_key(data_dir: &std::path::Path) -> anyhow::Result<[u8; 32]> {
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

/// Opens the stores and serves the API until `shutdown` resolves.
pub async fn run(
    args: ControlPlaneArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let public_url = args
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{address}"));

    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!(
            "sqlite://{}?mode=rwc",
            args.data_dir.join("edgefn.db").display()
        ),
    };
    let store = Store::connect(&database_url).await?;
    let artifacts = match args.artifacts.as_deref() {
        None => Artifacts::local(
            &args.data_dir.join("artifacts"),
            signing_key(&args.data_dir)?,
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
    // Catch up with a change whose recomputation a crash interrupted (a route written, its
    // nodes' desired states not yet).
    {
        let url = |sha256: &str| artifacts.artifact_url(sha256);
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
    let feed = sync::RevisionFeed::new();
    feed.spawn_poller(
        store.clone(),
        Duration::from_millis(args.sync_poll_ms.max(10)),
    );
    let state = AppState {
        store,
        artifacts: Arc::new(artifacts),
        limits: validate::Limits {
            max_memory_pages: args.max_memory_pages,
            max_execution_ms: args.max_execution_ms,
        },
        upload_ttl: Duration::from_secs(args.upload_ttl_secs),
        max_artifact_bytes: args.max_artifact_bytes,
        feed: feed.clone(),
    };
    // The one fixed format tools and tests read the bound address from.
    println!(
        "{}",
        serde_json::json!({ "level": "INFO", "message": "listening", "listener": "api", "address": address.to_string() })
    );
    // Push streams never end by themselves: close them when shutdown starts, or draining
    // would wait for them forever.
    let shutdown = async move {
        shutdown.await;
        feed.close();
    };
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
