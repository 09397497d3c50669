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
use edgefn_proto::sync::DesiredState;
use tokio::sync::Notify;

/// Follows `node_id`'s revisions on the control plane at `url` until the task is aborted.
pub async fn follow(
    url: String,
    node_id: String,
    applied: Arc<AtomicU64>,
    pushed: Arc<AtomicBool>,
    delivered: Delivered,
    wake: Arc<Notify>,
) {
    let backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
        attempts: u32::MAX,
    };
    let mut failures = 0u32;
    loop {
        let stream = Stream {
            url: &url,
            node_id: &node_id,
            applied: &applied,
            pushed: &pushed,
            delivered: &delivered,
            wake: &wake,
        };
        match stream.watch_once(&mut failures).await {
            Ok(()) => tracing::info!("push stream ended; reconnecting"),
            Err(error) => tracing::warn!(%error, "push stream failed"),
        }
        failures = failures.saturating_add(1);
        tokio::time::sleep(backoff.delay(failures)).await;
    }
}

/// A pushed desired state, for the sync client to take.
pub type Delivered = Arc<std::sync::Mutex<Option<DesiredState>>>;

struct Stream<'a> {
    url: &'a str,
    node_id: &'a str,
    applied: &'a AtomicU64,
    pushed: &'a AtomicBool,
    delivered: &'a Delivered,
    wake: &'a Notify,
}

impl Stream<'_> {
    async fn watch_once(&self, failures: &mut u32) -> Result<(), String> {
        let Self {
            url,
            node_id,
            applied,
            pushed,
            delivered,
            wake,
        } = *self;
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
                if !notice.desired_state.is_empty() {
                    match DesiredState::decode(&notice.desired_state) {
                        Ok(state) => {
                            *delivered.lock().unwrap_or_else(|e| e.into_inner()) = Some(state)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "ignoring a pushed desired state; fetching it")
                        }
                    }
                }
                pushed.store(true, Ordering::Relaxed);
                wake.notify_one();
            }
        }
        Ok(())
    }
}
