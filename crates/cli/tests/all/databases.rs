//! Edge databases end to end, as real processes: a control plane and three runners; a
//! database with three schema changes; a function that reads and writes rows on every
//! node; a change that passes the dry run but fails on the nodes (rolled back everywhere,
//! reported, the CLI exits non-zero, the function keeps serving, a version requiring it
//! waits until it applies); what a guest may not do;
//! a file altered by hand showing as drift, and on the node's page. On SQLite and
//! PostgreSQL metadata; the operator repairing drift (recreate, accept). Then a Spin app using Spin's SQLite interface, and a node that is
//! away while a change lands (offline, warning, catching up).

use std::time::Duration;

use edgefn_edgedb::rusqlite;

use crate::{Backend, ControlPlane, Runner, eventually, guest};

#[test]
fn sqlite_metadata() {
    edge_databases_end_to_end(&Backend::Sqlite);
}

#[test]
fn postgres_metadata() {
    edge_databases_end_to_end(&Backend::postgres());
}

/// `db status shop --json`.
fn status(cp: &ControlPlane) -> Vec<serde_json::Value> {
    cp.cli(&["db", "status", "shop", "--json"])
        .ok()
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn migrate(cp: &ControlPlane, dir: &std::path::Path, file: &str, sql: &str) -> crate::CliOutput {
    let path = dir.join(file);
    std::fs::write(&path, sql).unwrap();
    cp.cli(&[
        "db",
        "migrate",
        "shop",
        "--file",
        path.to_str().unwrap(),
        "--wait",
        "--timeout",
        "60",
    ])
}

fn edge_databases_end_to_end(backend: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(backend, &dir.path().join("cp"), &[]);
    let runners: Vec<Runner> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            Runner::start(
                &cp,
                &dir.path().join(name),
                name,
                &format!("pop={name}"),
                200,
            )
        })
        .collect();
    eventually("every runner registered", Duration::from_secs(60), || {
        let nodes = cp.cli(&["nodes", "list", "--json"]).ok().json();
        nodes.as_array().map_or(0, Vec::len) == 3
    });

    cp.cli(&["db", "create", "shop"]).ok();
    let created = cp.cli(&["db", "create", "shop"]);
    assert!(!created.success, "a second shop is refused");
    // A change the dry run refuses never reaches the ledger.
    let refused = migrate(
        &cp,
        dir.path(),
        "bad.sql",
        "CREATE TABLE a (x);\nINSERT INTO nope VALUES (1);",
    );
    assert!(!refused.success);
    assert!(
        refused.stderr.contains("no such table: nope"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("statement 2"), "{}", refused.stderr);
    let refused = migrate(
        &cp,
        dir.path(),
        "tx.sql",
        "BEGIN; CREATE TABLE a (x); COMMIT;",
    );
    assert!(!refused.success, "transaction statements are refused");
    // Three changes before any node holds the database.
    for (file, sql) in [
        (
            "0001_items.sql",
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
        ),
        ("0002_price.sql", "ALTER TABLE items ADD COLUMN price REAL;"),
        (
            "0003_index.sql",
            "CREATE INDEX items_by_name ON items (name);",
        ),
    ] {
        migrate(&cp, dir.path(), file, sql).ok();
    }
    let ledger = cp.cli(&["db", "show", "shop", "--json"]).ok().json();
    assert_eq!(ledger["database"]["target_seq"], 3);
    assert_eq!(ledger["changes"].as_array().unwrap().len(), 3);

    // A function that uses it: every node gets the database at change 3, then the function.
    cp.cli(&[
        "deploy",
        "items",
        "--wasm",
        &guest("items"),
        "--database",
        "shop",
        "--requires",
        "shop=3",
        "--wait",
    ])
    .ok();
    cp.cli(&["routes", "add", "--path", "/*", "--function", "items"])
        .ok();
    eventually("every node in sync at 3", Duration::from_secs(60), || {
        let nodes = status(&cp);
        nodes.len() == 3
            && nodes
                .iter()
                .all(|n| n["state"] == "in_sync" && n["applied_seq"] == 3)
    });
    for runner in &runners {
        let (code, body) = runner.get("/items?add=pen");
        assert_eq!(code, 200, "{}: {body}", runner.name);
        let (code, body) = runner.get("/items?add=pen");
        assert_eq!(code, 200, "{body}");
        let (code, body) = runner.get("/items");
        assert_eq!(
            (code, body.as_str()),
            (200, "1\tpen\n2\tpen\n"),
            "{}",
            runner.name
        );
        // The file is an ordinary SQLite file at the ledger's sequence.
        let file = runner.state_dir().join("db/default/shop.sqlite");
        let conn = rusqlite::Connection::open(&file).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }

    // What a guest may not do.
    let runner = &runners[0];
    for sql in [
        "DROP TABLE items",
        "CREATE TABLE x (y)",
        "PRAGMA user_version = 9",
        "ATTACH 'x' AS x",
        "BEGIN",
    ] {
        let (code, body) = runner.get(&format!(
            "/exec?sql={}",
            sql.replace(' ', "+")
                .replace('\'', "%27")
                .replace('=', "%3D")
        ));
        assert_eq!(code, 403, "{sql}: {body}");
        assert!(body.starts_with("access-denied"), "{sql}: {body}");
    }
    let (code, body) = runner.get("/items?db=other");
    assert_eq!(
        code, 404,
        "a database not in the settings cannot be opened: {body}"
    );

    // Passes the dry run (the control plane's copy has no rows), fails on every node (two
    // `pen` rows): rolled back to 3 everywhere, the CLI says so, the function keeps serving.
    let failed = migrate(
        &cp,
        dir.path(),
        "0004_unique.sql",
        "CREATE UNIQUE INDEX items_name ON items (name);",
    );
    assert!(!failed.success, "{}", failed.stdout);
    assert!(
        failed.stderr.contains("failed on 3 of 3 nodes"),
        "{}",
        failed.stderr
    );
    let nodes = status(&cp);
    assert!(
        nodes
            .iter()
            .all(|n| n["state"] == "failed" && n["applied_seq"] == 3),
        "{nodes:?}"
    );
    assert!(
        nodes.iter().all(|n| n["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("UNIQUE")),
        "{nodes:?}"
    );
    let log = cp.cli(&["db", "log", "shop", "--json"]).ok().json();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["to_seq"] == 3 && e["error"].as_str().is_some_and(|e| e.contains("UNIQUE"))),
        "{log}"
    );
    for runner in &runners {
        assert_eq!(runner.get("/items").0, 200);
        let file = runner.state_dir().join("db/default/shop.sqlite");
        let conn = rusqlite::Connection::open(&file).unwrap();
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3, "never in between");
    }

    // A version that requires the failed change never serves against schema 3: it fails
    // on every node with the reason, and the version before it keeps serving.
    let needs_4 = cp.cli(&[
        "deploy",
        "items",
        "--wasm",
        &guest("items"),
        "--database",
        "shop",
        "--requires",
        "shop=4",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert!(!needs_4.success, "{}", needs_4.stdout);
    assert!(
        needs_4.stdout.contains("schema shop@4 not applied"),
        "{}",
        needs_4.stdout
    );
    for runner in &runners {
        assert_eq!(runner.get("/items").0, 200, "{}", runner.name);
    }

    // The fix is a new change: remove the duplicates on the nodes' side first (a guest can),
    // then a change that passes everywhere.
    for runner in &runners {
        let (code, body) = runner.get("/exec?sql=DELETE+FROM+items+WHERE+id+%3D+2");
        assert_eq!(code, 200, "{body}");
    }
    migrate(
        &cp,
        dir.path(),
        "0005_unique.sql",
        "CREATE UNIQUE INDEX IF NOT EXISTS items_name_2 ON items (name, price);",
    )
    .ok();
    eventually("every node in sync at 5", Duration::from_secs(60), || {
        status(&cp)
            .iter()
            .all(|n| n["state"] == "in_sync" && n["applied_seq"] == 5)
    });

    // Change 4 went through: the version waiting for it replaces the old one everywhere.
    eventually(
        "the version requiring shop@4 ready",
        Duration::from_secs(60),
        || {
            runners.iter().all(|runner| {
                let node = cp
                    .cli(&["nodes", "show", &runner.name, "--json"])
                    .ok()
                    .json();
                node["inventory"].as_array().is_some_and(|items| {
                    !items.is_empty()
                        && items
                            .iter()
                            .all(|i| i["state"] == "ready" && i["version"].as_u64() > Some(1))
                })
            })
        },
    );
    for runner in &runners {
        assert_eq!(runner.get("/items").0, 200, "{}", runner.name);
    }

    // Someone alters a node's file by hand: drift at its next heartbeat.
    let file = runners[1].state_dir().join("db/default/shop.sqlite");
    rusqlite::Connection::open(&file)
        .unwrap()
        .execute_batch("CREATE TABLE mine (x)")
        .unwrap();
    eventually("drift on node b", Duration::from_secs(30), || {
        status(&cp)
            .iter()
            .any(|n| n["node_name"] == "b" && n["state"] == "drift")
    });

    // A node shows the databases it holds with their schema versions.
    let node = cp.cli(&["nodes", "show", "b", "--json"]).ok().json();
    assert_eq!(
        node["databases"],
        serde_json::json!([{
            "project": "default", "database": "shop", "state": "drift",
            "applied_seq": 5, "target_seq": 5,
            "fingerprint": node["databases"][0]["fingerprint"],
        }]),
        "{node}"
    );
    let shown = cp.cli(&["nodes", "show", "a"]).ok();
    assert!(
        shown.stdout.contains("default/shop") && shown.stdout.contains("5/5"),
        "{}",
        shown.stdout
    );

    // The operator resolves it. Accepting needs a copy in drift; node a's is not.
    let refused = cp.cli(&["db", "repair", "shop", "--node", "a", "--accept"]);
    assert!(
        !refused.success && refused.stderr.contains("not in drift"),
        "{}",
        refused.stderr
    );
    // b: built again from the ledger; the file as it was is kept beside it, rows and all.
    let repaired = cp
        .cli(&[
            "db",
            "repair",
            "shop",
            "--node",
            "b",
            "--recreate",
            "--wait",
            "--json",
        ])
        .ok()
        .json();
    assert_eq!(
        (
            repaired[0]["state"].clone(),
            repaired[0]["applied_seq"].clone()
        ),
        ("in_sync".into(), 5.into()),
        "{repaired}"
    );
    let tables = |path: &std::path::Path| -> Vec<String> {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut names = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        names
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert!(!tables(&file).contains(&"mine".to_string()));
    let kept: Vec<_> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("shop.before-repair_"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(tables(&kept[0]).contains(&"mine".to_string()));
    assert_eq!(runners[1].get("/items?add=after-repair").0, 200);
    // c: altered by hand too, and its schema accepted; the next change applies on top.
    let file_c = runners[2].state_dir().join("db/default/shop.sqlite");
    rusqlite::Connection::open(&file_c)
        .unwrap()
        .execute_batch("CREATE TABLE notes (x)")
        .unwrap();
    eventually("drift on node c", Duration::from_secs(30), || {
        status(&cp)
            .iter()
            .any(|n| n["node_name"] == "c" && n["state"] == "drift")
    });
    cp.cli(&["db", "repair", "shop", "--node", "c", "--accept", "--wait"])
        .ok();
    migrate(
        &cp,
        dir.path(),
        "0006_stock.sql",
        "ALTER TABLE items ADD COLUMN stock INTEGER NOT NULL DEFAULT 0;",
    )
    .ok();
    let nodes = status(&cp);
    assert!(
        nodes
            .iter()
            .all(|n| n["state"] == "in_sync" && n["applied_seq"] == 6),
        "{nodes:?}"
    );
    assert!(tables(&file_c).contains(&"notes".to_string()));
    let log = cp.cli(&["db", "log", "shop", "--json"]).ok().json();
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .any(|e| e["from_seq"] == 5 && e["to_seq"] == 5 && e["error"].is_null()),
        "the repairs are in the sync log: {log}"
    );
}

/// A Spin app built with Spin's own SDK (`spin-sdk` 3, `fermyon:spin/sqlite@2.0.0`) runs
/// unchanged on the database `default`; a node that is down while a change lands shows
/// `offline` with a warning once it is behind for longer than the threshold, and catches
/// up (keeping its rows) when it returns.
#[test]
fn a_spin_app_and_a_node_that_was_away() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(
        &Backend::Sqlite,
        &dir.path().join("cp"),
        &[
            "--database-warn-after-secs",
            "2",
            "--node-offline-after-secs",
            "2",
        ],
    );
    let mut runner = Runner::start(&cp, &dir.path().join("a"), "a", "pop=a", 200);
    cp.cli(&["db", "create", "default"]).ok();
    let dir_path = dir.path();
    let table = "CREATE TABLE todo (id INTEGER PRIMARY KEY, title TEXT NOT NULL, \
                 done INTEGER NOT NULL DEFAULT 0);";
    let path = dir_path.join("0001_todo.sql");
    std::fs::write(&path, table).unwrap();
    cp.cli(&["db", "migrate", "default", "--file", path.to_str().unwrap()])
        .ok();
    cp.cli(&[
        "deploy",
        "todo",
        "--wasm",
        &guest("todo"),
        "--database",
        "default",
        "--requires",
        "default=1",
        "--wait",
    ])
    .ok();
    cp.cli(&["routes", "add", "--path", "/*", "--function", "todo"])
        .ok();

    eventually("the Spin app answers", Duration::from_secs(30), || {
        runner.get("/todo").0 == 200
    });
    assert_eq!(runner.post("/todo", "milk"), (201, "1".into()));
    assert_eq!(runner.post("/todo", "eggs"), (201, "2".into()));
    assert_eq!(runner.post("/todo/done?id=1", "").0, 204);
    assert_eq!(
        runner.get("/todo"),
        (200, "1\tmilk\ttrue\n2\teggs\tfalse\n".into())
    );
    // In Spin's words, a database not in the function's settings is access-denied.
    assert_eq!(runner.get("/todo?db=other"), (403, "access denied".into()));

    // Down while a change lands: offline, then behind for longer than the threshold.
    runner.crash();
    let path = dir_path.join("0002_due.sql");
    std::fs::write(&path, "ALTER TABLE todo ADD COLUMN due TEXT;").unwrap();
    cp.cli(&["db", "migrate", "default", "--file", path.to_str().unwrap()])
        .ok();
    let db_status = || -> serde_json::Value {
        let nodes = cp.cli(&["db", "status", "default", "--json"]).ok().json();
        nodes[0].clone()
    };
    eventually(
        "node a offline with a warning",
        Duration::from_secs(30),
        || {
            let node = db_status();
            node["state"] == "offline" && node["warning"] == true
        },
    );
    let node = db_status();
    assert_eq!(
        (node["applied_seq"].clone(), node["target_seq"].clone()),
        (1.into(), 2.into())
    );
    assert!(node["behind_since"].as_i64().is_some(), "{node}");
    assert!(
        node["lag_ms"].as_u64().is_some_and(|lag| lag > 2000),
        "{node}"
    );
    let shown = cp.cli(&["db", "status", "default"]).ok();
    assert!(shown.stdout.contains("WARNING"), "{}", shown.stdout);

    runner.start_again();
    eventually("node a caught up", Duration::from_secs(30), || {
        let node = db_status();
        node["state"] == "in_sync" && node["applied_seq"] == 2 && node["warning"] == false
    });
    assert_eq!(
        runner.get("/todo"),
        (200, "1\tmilk\ttrue\n2\teggs\tfalse\n".into())
    );
}
