//! The precompiled-code ledger on SQLite and PostgreSQL: one replica claims a compilation,
//! a dead replica's claim is taken over, results and failures are kept.

use edgefn_control_plane::store::{EngineProfile, Precompiled, Store};
use edgefn_proto::GuestKind;

use crate::fixture::{Backend, app, postgres};

async fn claims_are_exclusive_and_results_kept(store: &Store) {
    let sha = "ab".repeat(32);
    let profile = EngineProfile {
        engine_hash: "0123456789abcdef".into(),
        max_memory_pages: 4096,
        fuel: false,
    };
    let long_ago = 0;
    assert_eq!(
        store.precompiled(&sha, &profile.engine_hash).await.unwrap(),
        None
    );
    assert!(
        store
            .claim_precompile(&sha, GuestKind::Component, &profile, long_ago)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_precompile(&sha, GuestKind::Component, &profile, long_ago)
            .await
            .unwrap(),
        "a live claim is not taken twice"
    );
    assert!(matches!(
        store.precompiled(&sha, &profile.engine_hash).await.unwrap(),
        Some(Precompiled::Compiling { .. })
    ));
    // A claim older than the cut-off belongs to a replica that died: taken over once.
    let future = edgefn_control_plane::clock::now_ms() + 60_000;
    assert!(
        store
            .claim_precompile(&sha, GuestKind::Component, &profile, future)
            .await
            .unwrap()
    );
    let ready = Precompiled::Ready {
        native_sha256: "cd".repeat(32),
        native_bytes: 1234,
        attestation: "a.b.c".into(),
    };
    store
        .finish_precompile(&sha, &profile.engine_hash, &ready, 10)
        .await
        .unwrap();
    assert_eq!(
        store.precompiled(&sha, &profile.engine_hash).await.unwrap(),
        Some(ready)
    );
    assert!(
        !store
            .claim_precompile(&sha, GuestKind::Component, &profile, future)
            .await
            .unwrap(),
        "finished code is never claimed again"
    );
    assert_eq!(
        store.precompile_profiles().await.unwrap(),
        vec![profile.clone()]
    );

    // A failure is kept (nodes compile for themselves) until an operator retries.
    let other = "ef".repeat(32);
    assert!(
        store
            .claim_precompile(&other, GuestKind::Module, &profile, long_ago)
            .await
            .unwrap()
    );
    let failed = Precompiled::Failed {
        error: "compilation took longer than the limit".into(),
    };
    store
        .finish_precompile(&other, &profile.engine_hash, &failed, 10)
        .await
        .unwrap();
    assert!(
        !store
            .claim_precompile(&other, GuestKind::Module, &profile, future)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .precompiled(&other, &profile.engine_hash)
            .await
            .unwrap(),
        Some(failed)
    );
    assert_eq!(store.forget_failed_precompiles(&other).await.unwrap(), 1);
    assert!(
        store
            .claim_precompile(&other, GuestKind::Module, &profile, long_ago)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn the_ledger_on_sqlite() {
    let app = app(&Backend::Sqlite).await;
    claims_are_exclusive_and_results_kept(&app.store).await;
}

#[tokio::test]
async fn the_ledger_on_postgres() {
    // The schema lives as long as its backend.
    let backend = postgres().await;
    let app = app(&backend).await;
    claims_are_exclusive_and_results_kept(&app.store).await;
}
