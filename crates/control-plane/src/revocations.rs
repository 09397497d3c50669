//! Revoked nodes, as every replica must know them at once: a node revoked through any
//! replica has its connections to this one closed within one poll interval (at once when
//! revoked here). The node listener follows [`Revocations::subscribe`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::store::{Store, now_ms};

/// Clock skew between replicas tolerated by the polling.
const SKEW_MS: i64 = 2_000;

/// The node ids revoked so far, and a channel of new ones.
pub struct Revocations {
    revoked: Mutex<HashSet<String>>,
    announced: broadcast::Sender<String>,
}

impl Revocations {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            revoked: Mutex::new(HashSet::new()),
            announced: broadcast::Sender::new(64),
        })
    }

    /// `node_id` was revoked: every connection of it closes.
    pub fn revoke(&self, node_id: &str) {
        let newly = self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string());
        if newly {
            let _ = self.announced.send(node_id.to_string());
        }
    }

    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node_id)
    }

    /// Node ids as they are revoked from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.announced.subscribe()
    }

    /// Resolves once `node_id` is revoked (a subscriber that fell behind checks the set).
    pub async fn revoked(&self, node_id: &str) {
        let mut announced = self.subscribe();
        if self.is_revoked(node_id) {
            return;
        }
        loop {
            match announced.recv().await {
                Ok(id) if id == node_id => return,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if self.is_revoked(node_id) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }

    /// Reads the nodes revoked through any replica every `poll`.
    pub fn spawn_poller(self: &Arc<Self>, store: Store, poll: Duration) {
        let revocations = self.clone();
        tokio::spawn(async move {
            // Every revocation so far, then the new ones.
            let mut since = i64::MIN;
            loop {
                let checked_at = now_ms();
                match store.revoked_nodes_since(since).await {
                    Ok(revoked) => {
                        for node_id in revoked {
                            revocations.revoke(&node_id);
                        }
                        since = checked_at - SKEW_MS;
                    }
                    Err(error) => tracing::warn!(%error, "reading revoked nodes failed"),
                }
                tokio::time::sleep(poll).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_reaches_a_waiting_connection_and_later_ones() {
        let revocations = Revocations::new();
        let waiting = {
            let revocations = revocations.clone();
            tokio::spawn(async move { revocations.revoked("node-1").await })
        };
        tokio::task::yield_now().await;
        revocations.revoke("node-2");
        revocations.revoke("node-1");
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        // Already revoked: resolves at once.
        tokio::time::timeout(Duration::from_secs(5), revocations.revoked("node-2"))
            .await
            .unwrap();
    }
}
