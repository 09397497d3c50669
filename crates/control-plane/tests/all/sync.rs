//! The push half of node sync across replicas: a change committed through one control
//! plane reaches the push streams of another on the same database within a second.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fixture::{Backend, app, hello};

crate::on_every_backend!(
    a_change_through_one_replica_reaches_the_streams_of_another_within_a_second
);

async fn a_change_through_one_replica_reaches_the_streams_of_another_within_a_second(
    backend: Backend,
) {
    let here = app(&backend).await;
    let there = here.replica().await;
    here.feed
        .spawn_poller(here.store.clone(), Duration::from_millis(250));

    let (completed, function) = there.deploy_bytes("hello", &hello()).await;
    assert_eq!(completed.status, 200);
    let node = there
        .enroll("edge-1", json!({ "region": "tokyo" }))
        .await
        .id;

    // A stream for the node on this replica sees the registration's revision first.
    let (mut revisions, _) = here.feed.subscribe(&node);
    let (registration, _) = there.store.node_revisions(&node).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(3),
        revisions.wait_for(|r| *r >= registration),
    )
    .await
    .expect("the registration's revision arrives")
    .unwrap();

    let started = Instant::now();
    let deployed = there
        .json(
            "POST",
            &format!("/api/v1/functions/{function}/deploy"),
            json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    assert_eq!(deployed.status, 201);
    let (desired, _) = there.store.node_revisions(&node).await.unwrap();
    assert!(desired > registration);
    tokio::time::timeout(
        Duration::from_secs(1),
        revisions.wait_for(|r| *r >= desired),
    )
    .await
    .expect("the deploy's revision reaches the other replica's stream within 1 s")
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
}
