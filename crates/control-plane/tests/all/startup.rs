//! The binary refuses to start, with a clear message, when what it needs is not there.

use std::process::Command;

fn start(args: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_edgefn-control-plane"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env_remove("EDGEFN_DATABASE_URL")
        .env_remove("EDGEFN_ARTIFACTS")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_database_is_refused_with_a_message() {
    let (ok, stderr) = start(&["--database-url", "postgres://postgres@127.0.0.1:1/nothing"]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_bucket_is_refused_with_a_message() {
    let (ok, stderr) = start(&[
        "--artifacts",
        "s3://missing",
        "--s3-endpoint",
        "http://127.0.0.1:1",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("bucket \"missing\" is not reachable"),
        "{stderr}"
    );
    let (ok, stderr) = start(&["--artifacts", "gs://elsewhere"]);
    assert!(!ok);
    assert!(stderr.contains("s3://BUCKET"), "{stderr}");
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("cp.db").display());
    edgefn_control_plane::store::Store::connect(&url)
        .await
        .unwrap();
    // A later release applied a migration this binary does not know.
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', '2030-01-01', TRUE, X'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let error = match edgefn_control_plane::store::Store::connect(&url).await {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a newer schema was accepted"),
    };
    assert!(error.contains("newer than this binary"), "{error}");
}
