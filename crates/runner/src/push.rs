//! The push stream client: keeps a gRPC `NodeSync.Watch` stream open to the control plane
//! and wakes the sync client as soon as a revision newer than the applied one is announced.
//! The stream carries revision numbers only; the sync client then fetches the desired state
//! itself. A broken stream is opened again after a backoff (1 s doubling
//! to 60 s, with jitter); meanwhile heartbeats keep the node converging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgefn_proto::backoff::Backoff;
use edgefn_proto::grpc::WatchRequest;
use edgefn_proto::grpc::node_sync_client::NodeSyncClient;
use tokio::sync::Notify;

/// Follows `node_id`'s revisions on the control plane at `url` until the task is aborted.
pub async fn follow(
    url: String,
    node_id: String,
    applied: Arc<AtomicU64>,
    pushed: Arc<AtomicBool>,
    wake: Arc<Notify>,
) {
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        attempts: u32::MAX,
    };
    let mut failures = 0u32;
    loop {
        match watch_once(&url, &node_id, &applied, &pushed, &wake, &mut failures).await {
            Ok(()) => tracing::info!("push stream ended; reconnecting"),
            Err(error) => tracing::warn!(%error, "push stream failed"),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

async fn watch_once(
    url: &str,
    node_id: &str,
    applied: &AtomicU64,
    pushed: &AtomicBool,
    wake: &Notify,
    failures: &mut u32,
) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("invalid control plane URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connecting to {url}: {e}"))?;
    let request = WatchRequest {
        node_id: node_id.to_string(),
        applied_revision: applied.load(Ordering::Relaxed),
    };
    let mut stream = NodeSyncClient::new(channel)
        .watch(request)
        .await
        .map_err(|status| format!("watch: {}", status.message()))?
        .into_inner();
    tracing::info!(node_id, "push stream open");
    while let Some(notice) = stream
        .message()
        .await
        .map_err(|status| format!("stream: {}", status.message()))?
    {
        *failures = 0;
        if notice.revision > applied.load(Ordering::Relaxed) {
            pushed.store(true, Ordering::Relaxed);
            wake.notify_one();
        }
    }
    Ok(())
}
