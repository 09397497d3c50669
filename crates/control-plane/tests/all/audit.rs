//! The audit log on real databases: what each change records, the triggers that refuse
//! to change it, a runtime role on PostgreSQL that cannot even switch them off, and
//! tampering with a copy of the database (edit, delete, reorder, truncate, a rewritten
//! suffix with a recomputed chain) caught by verification at the first bad record.

use std::sync::OnceLock;

use edgefn_control_plane::audit::{Entry, StoredRecord, chain, verify};
use edgefn_control_plane::checkpoints::{CheckpointStore, write_checkpoint};
use edgefn_control_plane::store::{AuditFilter, Store};
use proptest::prelude::*;
use serde_json::json;
use sqlx::Row as _;

use crate::fixture::{Backend, app, hello};
use crate::on_every_backend;

on_every_backend!(
    changes_are_recorded_with_their_before_after_and_nodes,
    the_audit_table_refuses_updates_and_deletes,
);

async fn records(store: &Store, action: &str) -> Vec<serde_json::Value> {
    store
        .list_audit(&AuditFilter {
            action: Some(action.into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::to_value(r.to_api()).unwrap())
        .collect()
}

async fn changes_are_recorded_with_their_before_after_and_nodes(backend: Backend) {
    let app = app(&backend).await;
    let (_, function) = app.deploy_bytes("hello", &hello()).await;
    let node = app.enroll("edge-1", json!({ "region": "tokyo" })).await;
    let route = app
        .json(
            "POST",
            "/api/v1/routes",
            json!({ "path": "/a", "function_id": function }),
        )
        .await
        .json();
    let route_id = route["id"].as_str().unwrap();
    app.json(
        "PUT",
        &format!("/api/v1/routes/{route_id}"),
        json!({ "path": "/b", "function_id": function, "priority": 5 }),
    )
    .await;
    let deployed = app
        .json(
            "POST",
            &format!("/api/v1/functions/{function}/deploy"),
            json!({ "version": 1, "pop_selector": "region == 'tokyo'" }),
        )
        .await;
    assert_eq!(deployed.status, 201);

    let update = &records(&app.store, "route.update").await[0];
    assert_eq!(update["actor"], "user:admin");
    assert_eq!(update["project"], "default");
    assert_eq!(update["target"], route_id);
    assert_eq!(update["details"]["before"]["path"], "/a");
    assert_eq!(update["details"]["after"]["path"], "/b");
    assert_eq!(update["details"]["after"]["priority"], 5);
    let deploy = &records(&app.store, "deploy").await[0];
    assert_eq!(deploy["details"]["pop_selector"], "region == 'tokyo'");
    assert_eq!(deploy["details"]["version"], 1);
    assert_eq!(deploy["details"]["nodes"], json!([node.id]));
    let enroll = &records(&app.store, "node.enroll").await[0];
    assert!(enroll["actor"].as_str().unwrap().starts_with("bootstrap:"));
    assert_eq!(enroll["details"]["after"]["labels"]["region"], "tokyo");
    assert_eq!(
        records(&app.store, "token.create").await.len(),
        1,
        "the administrator's"
    );
    assert_eq!(records(&app.store, "node.token").await.len(), 1);
    let upload = &records(&app.store, "version.upload").await[0];
    assert_eq!(upload["actor"], "upload-url");
    assert_eq!(upload["target"], format!("{function}/1"));
    assert!(upload["details"]["bytes"].as_u64().unwrap() > 0);

    // A refused authentication is recorded too, with the reason.
    let refused = app
        .json_as(Some("garbage"), "GET", "/api/v1/functions", json!(null))
        .await;
    assert_eq!(refused.status, 401);
    let refusal = &records(&app.store, "auth.refused").await[0];
    assert_eq!(refusal["target"], "GET /api/v1/functions");
    assert!(
        refusal["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("malformed")
    );

    // The API filters by project, actor, action and time, and verifies the chain.
    let listed = app.get("/api/v1/audit?action=deploy").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let by_actor = app.get("/api/v1/audit?actor=anonymous").await.json();
    assert!(
        by_actor
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["actor"] == "anonymous")
    );
    let future = app.get("/api/v1/audit?since=99999999999999").await.json();
    assert_eq!(future, json!([]));
    let verified = app.get("/api/v1/audit/verify").await.json();
    assert_eq!(verified["ok"], true, "{verified}");
}

async fn the_audit_table_refuses_updates_and_deletes(backend: Backend) {
    let app = app(&backend).await;
    app.deploy_bytes("hello", &hello()).await;
    let pool = sqlx::AnyPool::connect(app.database_url()).await.unwrap();
    let mut statements = vec![
        "UPDATE audit_log SET actor = 'user:mallory' WHERE seq = 1",
        "DELETE FROM audit_log WHERE seq = 1",
        "DELETE FROM audit_log",
    ];
    if matches!(backend, Backend::Postgres { .. }) {
        statements.push("TRUNCATE audit_log");
    }
    for statement in statements {
        let error = sqlx::query(statement)
            .execute(&pool)
            .await
            .expect_err(statement)
            .to_string();
        assert!(error.contains("append-only"), "{statement}: {error}");
    }
    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM audit_log")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert!(count >= 3, "nothing was lost");
}

/// Checkpoints in a bucket (SeaweedFS in CI) vouch for the chain like a directory does.
#[tokio::test]
async fn checkpoints_go_to_a_bucket_too() {
    let settings = crate::artifacts::s3_settings();
    let app = app(&Backend::Sqlite).await;
    app.deploy_bytes("hello", &hello()).await;
    let prefix = format!("audit-{}", uuid::Uuid::new_v4().simple());
    let location = CheckpointStore::on_s3(&settings, &prefix).unwrap();
    let through = write_checkpoint(&app.store, &app.state.auth.signer, &location)
        .await
        .unwrap();
    assert!(through >= 3);
    // Nothing new: nothing written; one more change: one more checkpoint.
    assert_eq!(
        write_checkpoint(&app.store, &app.state.auth.signer, &location)
            .await
            .unwrap(),
        through
    );
    app.json("POST", "/api/v1/functions", json!({ "name": "more" }))
        .await;
    let later = write_checkpoint(&app.store, &app.state.auth.signer, &location)
        .await
        .unwrap();
    assert_eq!(later, through + 1);
    assert_eq!(location.list().await.unwrap().len(), 2);
    let vouched = location.vouched(&app.state.auth.signer).await.unwrap();
    let result = verify(app.store.all_audit_records().await.unwrap(), &vouched);
    assert!(result.ok, "{result:?}");
    assert_eq!(result.checkpointed_through, later);
}

/// A flood of refusals writes at most the limit per second, then one record of how many
/// were left out.
#[tokio::test]
async fn a_flood_of_refusals_is_counted_not_written() {
    let app = app(&Backend::Sqlite).await;
    app.store.set_refusal_limit(20);
    let before = app.store.all_audit_records().await.unwrap().len();
    for _ in 0..50 {
        app.json_as(Some("garbage"), "GET", "/api/v1/whoami", json!(null))
            .await;
    }
    app.store.flush_refusals().await.unwrap();
    let records = app.store.all_audit_records().await.unwrap();
    let new = &records[before..];
    let refused = new.iter().filter(|r| r.action == "auth.refused").count();
    assert!((20..50).contains(&refused), "{refused} refusals recorded");
    let suppressed: u64 = new
        .iter()
        .filter(|r| r.action == "audit.refusals_suppressed")
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.details).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(
        refused as u64 + suppressed,
        50,
        "every refusal is recorded or counted"
    );
}

/// On PostgreSQL, with `--database-owner-url`: the control plane's own role may only read
/// and append to the audit log, and cannot switch its triggers off; even the owner's
/// UPDATE, DELETE and TRUNCATE meet the triggers.
#[tokio::test]
async fn the_runtime_role_cannot_touch_the_audit_log_on_postgres() {
    // Held to the end: dropping it drops the schema.
    let backend = crate::fixture::postgres().await;
    let url = match &backend {
        Backend::Postgres { url, .. } => url.clone(),
        Backend::Sqlite => return,
    };
    let schema = url.rsplit("search_path%3D").next().unwrap().to_string();
    let base = url.split('?').next().unwrap().to_string();
    let (owner, runtime) = (format!("{schema}_owner"), format!("{schema}_rt"));
    let admin = sqlx::AnyPool::connect(&base).await.unwrap();
    for statement in [
        format!("CREATE ROLE {owner} LOGIN"),
        format!("CREATE ROLE {runtime} LOGIN"),
        format!("ALTER SCHEMA {schema} OWNER TO {owner}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&admin)
            .await
            .unwrap();
    }
    let _roles = Roles {
        base: base.clone(),
        schema: schema.clone(),
        names: vec![owner.clone(), runtime.clone()],
    };
    let as_role = |role: &str| {
        base.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1)
            + &format!("?options=-c%20search_path%3D{schema}")
    };
    let result = async {
        let store = Store::connect_as(&as_role(&runtime), Some(&as_role(&owner)))
            .await
            .unwrap();
        // The store appends as the runtime role.
        store
            .record_audit(&Entry::new("user:test", "test", "x"))
            .await
            .unwrap();
        let runtime_pool = sqlx::AnyPool::connect(&as_role(&runtime)).await.unwrap();
        for statement in [
            "UPDATE audit_log SET actor = 'user:mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            "ALTER TABLE audit_log DISABLE TRIGGER ALL",
            "DROP TABLE audit_log",
        ] {
            let error = sqlx::query(statement)
                .execute(&runtime_pool)
                .await
                .expect_err(statement)
                .to_string();
            assert!(
                error.contains("permission denied") || error.contains("must be owner"),
                "{statement}: {error}"
            );
        }
        // The runtime role still does its work on the other tables.
        sqlx::query("UPDATE nodes SET status = status")
            .execute(&runtime_pool)
            .await
            .unwrap();
        runtime_pool.close().await;
        let owner_pool = sqlx::AnyPool::connect(&as_role(&owner)).await.unwrap();
        for statement in [
            "UPDATE audit_log SET actor = 'user:mallory'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ] {
            let error = sqlx::query(statement)
                .execute(&owner_pool)
                .await
                .expect_err(statement)
                .to_string();
            assert!(error.contains("append-only"), "{statement}: {error}");
        }
        owner_pool.close().await;
    }
    .await;
    admin.close().await;
    result
}

/// Drops the test's roles (cluster-wide, unlike its schema) however the test ends.
struct Roles {
    base: String,
    schema: String,
    names: Vec<String>,
}

impl Drop for Roles {
    fn drop(&mut self) {
        let (base, schema, names) = (self.base.clone(), self.schema.clone(), self.names.clone());
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let Ok(admin) = sqlx::AnyPool::connect(&base).await else {
                    return;
                };
                let mut statements = vec![format!("ALTER SCHEMA {schema} OWNER TO postgres")];
                for name in &names {
                    statements.push(format!("REASSIGN OWNED BY {name} TO postgres"));
                    statements.push(format!("DROP OWNED BY {name}"));
                    statements.push(format!("DROP ROLE {name}"));
                }
                for statement in statements {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(statement))
                        .execute(&admin)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A SQLite database with 40 audited changes, all vouched for by checkpoints.
struct Signed {
    _dir: tempfile::TempDir,
    database: std::path::PathBuf,
    checkpoints: CheckpointStore,
    signer: std::sync::Arc<edgefn_control_plane::auth::tokens::Signer>,
    count: u64,
}

fn signed() -> &'static Signed {
    static SIGNED: OnceLock<Signed> = OnceLock::new();
    // Made on a thread of its own: callers may be inside a runtime already.
    SIGNED.get_or_init(|| std::thread::spawn(make_signed).join().unwrap())
}

fn make_signed() -> Signed {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let app = app(&Backend::Sqlite).await;
        let (_, function) = app.deploy_bytes("hello", &hello()).await;
        for i in 0..30 {
            app.json(
                "POST",
                "/api/v1/routes",
                json!({ "path": format!("/r{i}"), "function_id": function }),
            )
            .await;
        }
        let checkpoints =
            CheckpointStore::open(dir.path().join("checkpoints").to_str().unwrap(), None).unwrap();
        let signer = app.state.auth.signer.clone();
        let count = write_checkpoint(&app.store, &signer, &checkpoints)
            .await
            .unwrap();
        assert!(count >= 33, "{count} records");
        let database = dir.path().join("signed.db");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "VACUUM INTO '{}'",
            database.display()
        )))
        .execute(&sqlx::AnyPool::connect(app.database_url()).await.unwrap())
        .await
        .unwrap();
        Signed {
            _dir: dir,
            database,
            checkpoints,
            signer,
            count,
        }
    })
}

/// A copy of the signed database in `dir`; its URL.
fn copy_of(dir: &std::path::Path) -> String {
    let copy = dir.join("copy.db");
    std::fs::copy(&signed().database, &copy).unwrap();
    format!("sqlite://{}", copy.display())
}

#[derive(Clone, Debug)]
enum Tamper {
    Edit(u64),
    Delete(u64),
    Swap(u64, u64),
    TruncateFrom(u64),
    RewriteFrom(u64),
}

async fn read(pool: &sqlx::AnyPool, seq: u64) -> StoredRecord {
    let row = sqlx::query(
        "SELECT seq, at, actor, project, action, target, details, prev_hash, hash FROM audit_log WHERE seq = $1",
    )
    .bind(seq as i64)
    .fetch_one(pool)
    .await
    .unwrap();
    StoredRecord {
        seq: row.get::<i64, _>("seq") as u64,
        at: row.get("at"),
        actor: row.get("actor"),
        project: row.get("project"),
        action: row.get("action"),
        target: row.get("target"),
        details: row.get("details"),
        prev_hash: row.get("prev_hash"),
        hash: row.get("hash"),
    }
}

async fn write(pool: &sqlx::AnyPool, seq: u64, r: &StoredRecord) {
    sqlx::query(
        "UPDATE audit_log SET at = $2, actor = $3, project = $4, action = $5, target = $6, details = $7, \
         prev_hash = $8, hash = $9 WHERE seq = $1",
    )
    .bind(seq as i64)
    .bind(r.at)
    .bind(&r.actor)
    .bind(r.project.clone())
    .bind(&r.action)
    .bind(&r.target)
    .bind(&r.details)
    .bind(&r.prev_hash)
    .bind(&r.hash)
    .execute(pool)
    .await
    .unwrap();
}

/// Tampers with the copy at `url` as someone with write access to its file would (the
/// triggers dropped first). Returns the sequence number verification must name.
async fn tamper(url: &str, how: &Tamper) -> u64 {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::raw_sql("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .execute(&pool)
        .await
        .unwrap();
    let first_bad = match *how {
        Tamper::Edit(seq) => {
            sqlx::query("UPDATE audit_log SET actor = 'user:mallory' WHERE seq = $1")
                .bind(seq as i64)
                .execute(&pool)
                .await
                .unwrap();
            seq
        }
        Tamper::Delete(seq) => {
            sqlx::query("DELETE FROM audit_log WHERE seq = $1")
                .bind(seq as i64)
                .execute(&pool)
                .await
                .unwrap();
            seq
        }
        Tamper::Swap(i, j) => {
            let (a, b) = (read(&pool, i).await, read(&pool, j).await);
            write(&pool, i, &b).await;
            write(&pool, j, &a).await;
            i
        }
        Tamper::TruncateFrom(seq) => {
            sqlx::query("DELETE FROM audit_log WHERE seq >= $1")
                .bind(seq as i64)
                .execute(&pool)
                .await
                .unwrap();
            seq
        }
        Tamper::RewriteFrom(seq) => {
            let first = read(&pool, seq).await;
            let mut forged = Vec::new();
            let mut at = seq;
            while let Ok(row) = sqlx::query("SELECT at, target FROM audit_log WHERE seq = $1")
                .bind(at as i64)
                .fetch_one(&pool)
                .await
            {
                let target: String = row.get("target");
                let entry = Entry::new("user:mallory", "route.create", format!("{target}-forged"))
                    .details(json!({ "forged": true }));
                forged.push((row.get::<i64, _>("at"), entry));
                at += 1;
            }
            sqlx::query("DELETE FROM audit_log WHERE seq >= $1")
                .bind(seq as i64)
                .execute(&pool)
                .await
                .unwrap();
            // Every hash recomputed: the chain is consistent in itself.
            for record in chain(&forged, seq - 1, first.prev_hash) {
                sqlx::query(
                    "INSERT INTO audit_log (seq, at, actor, project, action, target, details, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(record.seq as i64)
                .bind(record.at)
                .bind(&record.actor)
                .bind(record.project.clone())
                .bind(&record.action)
                .bind(&record.target)
                .bind(&record.details)
                .bind(&record.prev_hash)
                .bind(&record.hash)
                .execute(&pool)
                .await
                .unwrap();
            }
            seq
        }
    };
    pool.close().await;
    first_bad
}

fn tampering() -> impl Strategy<Value = Tamper> {
    let count = signed().count;
    prop_oneof![
        (1..=count).prop_map(Tamper::Edit),
        (1..=count).prop_map(Tamper::Delete),
        (1..count)
            .prop_flat_map(move |i| (Just(i), i + 1..=count))
            .prop_map(|(i, j)| Tamper::Swap(i, j)),
        (1..=count).prop_map(Tamper::TruncateFrom),
        (1..=count).prop_map(Tamper::RewriteFrom),
    ]
}

async fn verify_copy(url: &str) -> edgefn_proto::audit::AuditVerification {
    let signed = signed();
    let store = Store::connect(url).await.unwrap();
    let vouched = signed.checkpoints.vouched(&signed.signer).await.unwrap();
    // Read three records at a time (tampering lands on page boundaries too), and the same
    // verdict as the whole log in memory.
    let paged = store
        .verify_audit_chain_in_pages(&vouched, 3)
        .await
        .unwrap();
    let whole = verify(store.all_audit_records().await.unwrap(), &vouched);
    assert_eq!(paged, whole);
    paged
}

#[tokio::test]
async fn an_untouched_copy_verifies() {
    let signed = signed();
    let dir = tempfile::tempdir().unwrap();
    let result = verify_copy(&copy_of(dir.path())).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.checkpointed_through, signed.count);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn every_tampering_of_a_copy_is_caught_at_the_first_bad_record(how in tampering()) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = copy_of(dir.path());
            let first_bad = tamper(&url, &how).await;
            let result = verify_copy(&url).await;
            prop_assert!(!result.ok, "{:?} went unnoticed: {}", how, result.message);
            prop_assert_eq!(result.first_bad_seq, Some(first_bad), "{:?}: {}", how, result.message);
            Ok(())
        })?;
    }
}

/// `edgefn audit verify` itself, on a copy, is exercised by the CLI's tests; the same
/// library call backs it.
#[tokio::test]
async fn a_forged_checkpoint_is_reported() {
    let signed = signed();
    let dir = tempfile::tempdir().unwrap();
    let location = CheckpointStore::open(dir.path().to_str().unwrap(), None).unwrap();
    // A checkpoint signed by someone else's key.
    let other = edgefn_control_plane::auth::tokens::Signer::from_pem(
        &edgefn_control_plane::auth::tokens::generate_key().unwrap(),
        "edgefn",
    )
    .unwrap();
    let store = Store::connect(&copy_of(dir.path())).await.unwrap();
    write_checkpoint(&store, &other, &location).await.unwrap();
    let vouched = location.vouched(&signed.signer).await.unwrap();
    let result = verify(store.all_audit_records().await.unwrap(), &vouched);
    assert!(!result.ok);
    assert!(
        result.message.contains("not validly signed"),
        "{}",
        result.message
    );
}
