//! What the control-plane benches share.

use std::collections::BTreeMap;

use edgefn_control_plane::ca::NodeAuthority;
use edgefn_control_plane::store::{Enrollment, Store, now_ms};

/// Enrolls `count` nodes (with made-up certificate serials: no TLS here) and returns each
/// id with its node token.
pub async fn enroll(store: &Store, nodes: &NodeAuthority, count: usize) -> Vec<(String, String)> {
    let mut enrolled = Vec::with_capacity(count);
    for i in 0..count {
        let labels = BTreeMap::from([
            ("region".to_string(), format!("r{}", i % 10)),
            ("pop".to_string(), format!("p{}", i % 100)),
        ]);
        let secret = format!("bench-bootstrap-{i}");
        let hash = edgefn_control_plane::auth::tokens::secret_hash(&secret);
        store
            .create_bootstrap_token("user:bench", &format!("bt_{i}"), &hash, now_ms() + 600_000)
            .await
            .unwrap();
        let id = format!("node_bench_{i}");
        let enrollment = Enrollment {
            node_id: &id,
            name: &format!("node-{i}"),
            labels: &labels,
            address: "127.0.0.1:8000",
            cert_serial: "01",
            cert_expires_at: now_ms() + 600_000,
            peer: None,
        };
        store.enroll_node(&hash, &enrollment).await.unwrap();
        let (_, token) = nodes.issue_node_token(&id).unwrap();
        enrolled.push((id, token));
    }
    enrolled
}
