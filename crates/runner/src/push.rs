//! The push stream client: keeps a gRPC `NodeSync.Watch` stream open to the control plane's
//! node listener (mTLS with the node's certificate, its node token in the metadata).
//! A notice of a revision newer than any before is handed to the sync client through one
//! `tokio::sync::watch` ([`Notice`]: the revision, and its desired state when the notice
//! carries it); the sync client applies it, or fetches the state itself, and acks in a
//! heartbeat. A broken stream is opened again after
//! a backoff (1 s doubling to 60 s, with jitter); meanwhile heartbeats keep the node
//! converging.

use std::time::Duration;

use edgefn_proto::backoff::Backoff;
use edgefn_proto::grpc::WatchRequest;
use edgefn_proto::grpc::node_sync_client::NodeSyncClient;
use edgefn_proto::sync::DesiredState;
use tokio::sync::watch;

/// The newest revision the control plane announced, with its desired state when the
/// notice carried one (`None`: the sync client fetches it).
#[derive(Clone, Debug, Default)]
pub struct Notice {
    pub revision: u64,
    pub state: Option<DesiredState>,
}

/// One node's push stream.
pub struct PushStream {
    /// The node listener's URL (`https://…`).
    pub url: String,
    /// mTLS with the node's certificate.
    pub tls: tonic::transport::ClientTlsConfig,
    /// The node token, sent as the call's `authorization` metadata.
    pub token: String,
    pub node_id: String,
    /// The revision the node had applied when the stream started.
    pub applied: u64,
    /// Where newer revisions go; notices not newer than its value are ignored.
    pub notices: watch::Sender<Notice>,
}

impl PushStream {
    /// Follows the node's revisions until the task is aborted.
    pub async fn follow(self) {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            attempts: u32::MAX,
        };
        let mut failures = 0u32;
        loop {
            match self.watch_once(&mut failures).await {
                Ok(()) => tracing::info!("push stream ended; reconnecting"),
                Err(error) => tracing::warn!(%error, "push stream failed"),
            }
            failures = failures.saturating_add(1);
            tokio::time::sleep(backoff.delay(failures)).await;
        }
    }

    async fn watch_once(&self, failures: &mut u32) -> Result<(), String> {
        let url = &self.url;
        let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| format!("invalid control plane URL {url}: {e}"))?
            .tls_config(self.tls.clone())
            .map_err(|e| format!("the push stream's TLS: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connecting to {url}: {e}"))?;
        let mut request = tonic::Request::new(WatchRequest {
            node_id: self.node_id.clone(),
            applied_revision: self.applied.max(self.notices.borrow().revision),
        });
        let bearer = format!("Bearer {}", self.token)
            .parse()
            .map_err(|_| "the node token is not a valid header value".to_string())?;
        request.metadata_mut().insert("authorization", bearer);
        let mut stream = NodeSyncClient::new(channel)
            .watch(request)
            .await
            .map_err(|status| format!("watch: {}", status.message()))?
            .into_inner();
        tracing::info!(node_id = %self.node_id, "push stream open");
        while let Some(notice) = stream
            .message()
            .await
            .map_err(|status| format!("stream: {}", status.message()))?
        {
            *failures = 0;
            if notice.revision <= self.applied.max(self.notices.borrow().revision) {
                continue;
            }
            let state = if notice.desired_state.is_empty() {
                None
            } else {
                DesiredState::decode(&notice.desired_state)
                    .inspect_err(|error| {
                        tracing::warn!(%error, "ignoring a pushed desired state; fetching it")
                    })
                    .ok()
            };
            self.notices.send_replace(Notice {
                revision: notice.revision,
                state,
            });
        }
        Ok(())
    }
}
