//! The artifact-store suite, run against the local directory and a real S3-compatible
//! server (SeaweedFS: `.ci/run`'s, or one the harness starts; `scripts/s3-test-server.sh`).

use std::time::Duration;

use bytes::Bytes;
use edgefn_control_plane::artifacts::{
    ArtifactError, Artifacts, S3Settings, artifact_path, upload_path,
};

/// Where the store under test lives.
pub enum Kind {
    Local(tempfile::TempDir),
    S3(S3Settings),
}

/// The real S3 server: `.ci/run`'s, or one the harness starts (`edgefn_test_support::s3`).
pub fn s3_settings() -> S3Settings {
    let server = edgefn_test_support::s3::server();
    S3Settings {
        bucket: server.bucket,
        endpoint: Some(server.endpoint),
        access_key_id: Some(server.access_key_id),
        secret_access_key: Some(server.secret_access_key),
        region: Some("us-east-1".into()),
    }
}

pub async fn open(kind: &Kind) -> Artifacts {
    match kind {
        Kind::Local(dir) => Artifacts::local(dir.path(), [9; 32], "http://cp.test".into()).unwrap(),
        Kind::S3(settings) => Artifacts::s3(settings, "http://cp.test".into())
            .await
            .unwrap(),
    }
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn objects_round_trip_and_are_content_addressed(kind: Kind) {
    let store = open(&kind).await;
    let function = unique("f");
    let chunks = |parts: Vec<Result<&'static [u8], &'static str>>| {
        futures_util::stream::iter(parts.into_iter().map(|part| part.map(Bytes::from_static)))
    };
    let size = store
        .put_upload_stream(&function, 1, chunks(vec![Ok(b"up"), Ok(b"loaded")]), 8)
        .await
        .unwrap();
    assert_eq!(size, 8);
    // Over the limit, or broken off: refused, and nothing is stored or replaced.
    let over = store
        .put_upload_stream(&function, 2, chunks(vec![Ok(b"12345"), Ok(b"6789")]), 8)
        .await;
    assert!(
        matches!(over, Err(ArtifactError::TooLarge { size: 9, limit: 8 })),
        "{over:?}"
    );
    let broken = store
        .put_upload_stream(&function, 2, chunks(vec![Ok(b"12"), Err("reset")]), 8)
        .await;
    assert!(
        matches!(&broken, Err(ArtifactError::Incomplete(why)) if why == "reset"),
        "{broken:?}"
    );
    assert!(store.read(&upload_path(&function, 2)).await.is_err());
    assert_eq!(
        store.read(&upload_path(&function, 1)).await.unwrap(),
        "uploaded"
    );
    store.delete(&upload_path(&function, 1)).await.unwrap();
    assert!(store.read(&upload_path(&function, 1)).await.is_err());
    store.delete(&upload_path(&function, 1)).await.unwrap();

    let sha = unique("0000");
    store
        .store_artifact(&sha, Bytes::from_static(b"first"))
        .await
        .unwrap();
    // The same hash again never replaces the stored object.
    store
        .store_artifact(&sha, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(store.read(&artifact_path(&sha)).await.unwrap(), "first");
}

async fn presigned_uploads_work_and_tampering_is_refused(kind: Kind) {
    let store = open(&kind).await;
    let function = unique("f");
    let (url, expires) = store
        .upload_url(&function, 3, Duration::from_secs(300))
        .await
        .unwrap();
    assert!(expires > edgefn_control_plane::store::now_ms());
    match &kind {
        Kind::Local(_) => {
            // The local store's URL is checked by the control plane's upload endpoint.
            let query: std::collections::HashMap<String, String> = url::Url::parse(&url)
                .unwrap()
                .query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let signature = &query["signature"];
            let expires: i64 = query["expires"].parse().unwrap();
            assert!(store.verify_upload(&function, 3, expires, signature));
            assert!(!store.verify_upload(&function, 4, expires, signature));
            assert!(!store.verify_upload(&function, 3, expires + 1, signature));
            assert!(!store.verify_upload(
                &function,
                3,
                edgefn_control_plane::store::now_ms() - 1,
                signature
            ));
        }
        Kind::S3(_) => {
            let client = reqwest::Client::new();
            let put = client
                .put(&url)
                .body("presigned bytes")
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success(), "presigned PUT: {}", put.status());
            assert_eq!(
                store.read(&upload_path(&function, 3)).await.unwrap(),
                "presigned bytes"
            );
            let tampered = url.replacen("X-Amz-Signature=", "X-Amz-Signature=0", 1);
            assert_eq!(
                client
                    .put(&tampered)
                    .body("evil")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                403
            );
            let other_key = url.replace(&format!("/{function}/3"), &format!("/{function}/4"));
            assert_eq!(
                client
                    .put(&other_key)
                    .body("evil")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                403
            );
            let (short, _) = store
                .upload_url(&function, 5, Duration::from_secs(1))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2100)).await;
            assert_eq!(
                client
                    .put(&short)
                    .body("late")
                    .send()
                    .await
                    .unwrap()
                    .status(),
                403,
                "expired"
            );
        }
    }
}

macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test] async fn $name() { super::$name(super::Kind::Local(tempfile::tempdir().unwrap())).await })*
        }
        mod s3 {
            $(#[tokio::test] async fn $name() {
                super::$name(super::Kind::S3(super::s3_settings())).await
            })*
        }
    };
}

on_every_store!(
    objects_round_trip_and_are_content_addressed,
    presigned_uploads_work_and_tampering_is_refused
);
