//! Node sync, push half: the gRPC `NodeSync.Watch` stream (see `edgefn-proto`'s
//! `proto/sync.proto`) over which a connected node receives a new desired revision, with
//! its desired state, within milliseconds. Acks travel in heartbeats, whose replies also
//! carry the state to a node that is behind, so a lost notice costs at most one heartbeat
//! interval.
//!
//! The database is the one source of notices, whichever replica made the change: the
//! [`RevisionFeed`] reads recently written desired states every `poll` interval, and at once
//! when this replica committed a change itself ([`RevisionFeed::poke`]). So several control
//! planes on one PostgreSQL push each other's changes within one poll interval.
//!
//! A notice a node has not acked (by a heartbeat whose applied revision reaches it) is sent
//! again after a backoff (5 s doubling to 60 s, with jitter).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgefn_proto::backoff::Backoff;
use edgefn_proto::grpc::node_sync_server::{NodeSync, NodeSyncServer};
use edgefn_proto::grpc::{RevisionNotice, WatchRequest};
use tokio::sync::{Notify, watch};

use crate::store::{Store, StoreError, now_ms};

/// Clock skew between replicas tolerated by the feed's polling.
const SKEW_MS: i64 = 2_000;

/// The latest desired revision of every node with an open stream on this replica.
/// (Revoked nodes are `crate::revocations`' business: closing their connections ends their
/// streams.)
pub struct RevisionFeed {
    nodes: Mutex<HashMap<String, Followed>>,
    poke: Notify,
    /// Set when the server shuts down: streams end so that connections can drain.
    closing: watch::Sender<bool>,
}

impl RevisionFeed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::new(HashMap::new()),
            poke: Notify::new(),
            closing: watch::Sender::new(false),
        })
    }

    /// Ends every stream (nodes reconnect, to another replica or after the restart).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Revisions of `node_id` from now on, and the newest revision it acked here.
    pub fn subscribe(&self, node_id: &str) -> (watch::Receiver<u64>, Arc<AtomicU64>) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let followed = nodes
            .entry(node_id.to_string())
            .or_insert_with(|| Followed {
                revision: watch::Sender::new(0),
                acked: Arc::new(AtomicU64::new(0)),
            });
        (followed.revision.subscribe(), followed.acked.clone())
    }

    /// Forgets `node_id` when no stream follows it any more.
    fn release(&self, node_id: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if nodes
            .get(node_id)
            .is_some_and(|f| f.revision.receiver_count() == 0)
        {
            nodes.remove(node_id);
        }
    }

    /// A heartbeat through this replica acked `applied`: its stream need not resend up to
    /// there (nor ask the database whether it should).
    pub fn record_ack(&self, node_id: &str, applied: u64) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(followed) = nodes.get(node_id) {
            followed.acked.fetch_max(applied, Ordering::Relaxed);
        }
    }

    /// Passes on `revision` if it is newer than what `node_id`'s followers have seen.
    pub fn publish(&self, node_id: &str, revision: u64) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(followed) = nodes.get(node_id) {
            followed.revision.send_if_modified(|seen| {
                let newer = revision > *seen;
                if newer {
                    *seen = revision;
                }
                newer
            });
        }
    }

    /// A change was committed here: read the database now rather than at the next poll.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Streams connected to this replica.
    pub fn connected(&self) -> usize {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Reads changed desired states every `poll` (and when poked) and publishes them.
    pub fn spawn_poller(self: &Arc<Self>, store: Store, poll: Duration) {
        let feed = self.clone();
        tokio::spawn(async move {
            let mut since = now_ms() - SKEW_MS;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = feed.poke.notified() => {}
                }
                if feed.connected() == 0 {
                    continue;
                }
                match store.desired_changed_since(since - SKEW_MS).await {
                    Ok(changes) => {
                        for (node_id, revision, updated_at) in changes {
                            since = since.max(updated_at);
                            feed.publish(&node_id, revision);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "reading desired-state changes failed"),
                }
            }
        });
    }
}

/// A notice of `revision` (or of a newer one read meanwhile) with the desired state, or
/// the bare revision when the state cannot be read now (the node then fetches it).
async fn notice(store: &Store, node_id: &str, revision: u64) -> RevisionNotice {
    match store.desired_state(node_id).await {
        Ok(state) if state.revision >= revision => RevisionNotice {
            revision: state.revision,
            desired_state: state.encode(),
        },
        _ => RevisionNotice {
            revision,
            desired_state: Vec::new(),
        },
    }
}

/// One node followed by streams on this replica.
struct Followed {
    revision: watch::Sender<u64>,
    /// The newest revision the node acked through this replica.
    acked: Arc<AtomicU64>,
}

/// The gRPC service.
pub struct NodeSyncService {
    pub store: Store,
    pub feed: Arc<RevisionFeed>,
    /// A revoked node's stream ends at once.
    pub revocations: Arc<crate::revocations::Revocations>,
    /// When to send an unacked notice again.
    pub resend: Backoff,
}

impl NodeSyncService {
    pub fn server(self) -> NodeSyncServer<Self> {
        NodeSyncServer::new(self)
    }
}

type NoticeStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<RevisionNotice, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl NodeSync for NodeSyncService {
    type WatchStream = NoticeStream;

    async fn watch(
        &self,
        request: tonic::Request<WatchRequest>,
    ) -> Result<tonic::Response<NoticeStream>, tonic::Status> {
        // The node listener put the node its certificate names here (and the node guard
        // checked its token); a node watches only itself.
        let peer = request
            .extensions()
            .get::<crate::listener::NodePeer>()
            .cloned();
        let WatchRequest { node_id, .. } = request.into_inner();
        match peer {
            Some(peer) if peer.node_id == node_id => {}
            Some(peer) => {
                return Err(tonic::Status::permission_denied(format!(
                    "node {} cannot watch node {node_id}",
                    peer.node_id
                )));
            }
            None => {
                return Err(tonic::Status::unauthenticated(
                    "a node certificate is needed",
                ));
            }
        }
        if self.revocations.is_revoked(&node_id) {
            return Err(tonic::Status::unauthenticated("the node is revoked"));
        }
        let mut closing = self.feed.closing.subscribe();
        if *closing.borrow() {
            return Err(tonic::Status::unavailable(
                "the control plane is shutting down",
            ));
        }
        match self.store.get_node(&node_id).await {
            Ok(_) => {}
            Err(StoreError::NotFound) => {
                return Err(tonic::Status::not_found(format!("no node {node_id:?}")));
            }
            Err(error) => return Err(tonic::Status::unavailable(error.to_string())),
        }
        let (mut changes, acked) = self.feed.subscribe(&node_id);
        let (current, _) = self
            .store
            .node_revisions(&node_id)
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        self.feed.publish(&node_id, current);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        let (store, feed, resend) = (self.store.clone(), self.feed.clone(), self.resend);
        let revocations = self.revocations.clone();
        tokio::spawn(async move {
            let revoked = revocations.revoked(&node_id);
            tokio::pin!(revoked);
            let mut sent = 0;
            let mut attempt = 0;
            loop {
                let desired = *changes.borrow_and_update();
                if desired > sent {
                    let notice = notice(&store, &node_id, desired).await;
                    sent = notice.revision;
                    if sender.send(Ok(notice)).await.is_err() {
                        break;
                    }
                    attempt = 0;
                }
                let unacked = attempt < u32::MAX;
                tokio::select! {
                    _ = sender.closed() => break,
                    () = &mut revoked => break,
                    // `closing` only ever turns true.
                    _ = closing.changed() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(resend.delay(attempt.saturating_add(1))), if unacked => {
                        // Acked here: no question for the database. Otherwise the ack may
                        // have reached another replica.
                        let applied = match acked.load(Ordering::Relaxed) {
                            here if here >= sent => Ok((sent, here)),
                            _ => store.node_revisions(&node_id).await,
                        };
                        match applied {
                            Ok((_, applied)) if applied < sent => {
                                attempt += 1;
                                let notice = notice(&store, &node_id, sent).await;
                                sent = notice.revision;
                                if sender.send(Ok(notice)).await.is_err() {
                                    break;
                                }
                            }
                            // Acked (or unreadable now): wait for the next change.
                            _ => attempt = u32::MAX,
                        }
                    }
                }
            }
            drop(changes);
            feed.release(&node_id);
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver);
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
