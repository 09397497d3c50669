//! SIGKILL during apply. A child process (this test binary, run again as
//! [`apply_child`]) applies a six-change ledger — each change heavy enough to take
//! milliseconds, with data as well as schema — and is killed after a random delay. The
//! file must then pass `PRAGMA integrity_check` and be exactly at a ledger sequence: the
//! recorded and actual fingerprints are the ledger's for that sequence, `user_version`
//! and the chain hash agree, the data of a change is there only with its change, and
//! applying again reaches the end.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgefn_edgedb::schema::empty_fingerprint;
use edgefn_edgedb::{LedgerChange, apply_changes, build_ledger, open_node_database, status};
use proptest::prelude::*;

/// The file the child applies the ledger to (set only for the child).
const CHILD_ENV: &str = "EDGEFN_TEST_APPLY_CHILD_DB";

const SQLS: [&str; 6] = [
    "CREATE TABLE a (x INTEGER PRIMARY KEY, b BLOB NOT NULL); \
     WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 4000) \
     INSERT INTO a SELECT x, randomblob(300) FROM c;",
    "CREATE INDEX a_b ON a (b);",
    "ALTER TABLE a ADD COLUMN c TEXT; UPDATE a SET c = hex(b);",
    "CREATE TABLE d (x INTEGER PRIMARY KEY, c TEXT NOT NULL); INSERT INTO d SELECT x, c FROM a;",
    "CREATE INDEX d_c ON d (c);",
    "CREATE TABLE e (k TEXT PRIMARY KEY, n INTEGER NOT NULL); \
     INSERT INTO e SELECT substr(c, 1, 16), x FROM d;",
];

/// The ledger of [`SQLS`] as the control plane builds it.
fn ledger() -> Vec<LedgerChange> {
    build_ledger(&SQLS).expect("the ledger passes its dry run")
}

/// The child's work: apply the whole ledger to the file named by [`CHILD_ENV`].
#[test]
#[ignore = "run by `a_killed_apply_leaves_a_ledger_sequence` as its child process"]
fn apply_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let conn = open_node_database(Path::new(&path)).unwrap();
    let applied = apply_changes(&conn, &ledger()).unwrap();
    assert_eq!(applied.error, None);
}

/// Starts the child on `path`; with `kill_after`, SIGKILLs it then. Returns how long it
/// ran.
fn run_child(path: &Path, kill_after: Option<Duration>) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::apply_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    match kill_after {
        Some(delay) => {
            std::thread::sleep(delay);
            let _ = child.kill();
            let _ = child.wait();
        }
        None => assert!(child.wait().unwrap().success()),
    }
    started.elapsed()
}

/// The file is exactly at a ledger sequence; returns it.
fn check_at_a_ledger_sequence(path: &Path, ledger: &[LedgerChange]) -> u64 {
    let conn = open_node_database(path).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let at = status(&conn).unwrap();
    let (fingerprint, chain) = match at.seq {
        0 => (empty_fingerprint(), String::new()),
        seq => {
            let change = &ledger[seq as usize - 1];
            (change.fingerprint.clone(), change.chain.clone())
        }
    };
    assert_eq!(
        at.fingerprint, fingerprint,
        "the schema of change {}",
        at.seq
    );
    assert_eq!(at.recorded_fingerprint, fingerprint);
    assert_eq!(at.chain, chain);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version as u64, at.seq);
    // The data of each change is there with its change, all of it.
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    if at.seq >= 1 {
        assert_eq!(count("SELECT count(*) FROM a"), 4000);
    }
    if at.seq >= 3 {
        assert_eq!(count("SELECT count(*) FROM a WHERE c IS NULL"), 0);
    }
    if at.seq >= 4 {
        assert_eq!(count("SELECT count(*) FROM d"), 4000);
    }
    if at.seq >= 6 {
        assert_eq!(count("SELECT count(*) FROM e"), 4000);
    }
    at.seq
}

#[test]
fn a_killed_apply_leaves_a_ledger_sequence() {
    let ledger = ledger();
    let dir = tempfile::tempdir().unwrap();
    // How long a whole apply takes here, so the kills spread over all of it.
    let whole = run_child(&dir.path().join("calibrate.sqlite"), None);
    assert_eq!(
        check_at_a_ledger_sequence(&dir.path().join("calibrate.sqlite"), &ledger),
        6
    );
    let span = (whole.as_micros() as u64 * 5 / 4).max(1);
    // Where the kills left the files, and a counter for the files' names (the runner
    // takes a `Fn`, hence the cells).
    let reached = std::cell::RefCell::new([0u32; 7]);
    let case = std::cell::Cell::new(0u32);
    proptest!(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() },
        |(delay_us in 0..span, kills in 1usize..3)| {
        case.set(case.get() + 1);
        let path = dir.path().join(format!("case-{}.sqlite", case.get()));
        // Killed once or twice in a row (a restart that dies again), then looked at.
        for _ in 0..kills {
            run_child(&path, Some(Duration::from_micros(delay_us)));
            let seq = check_at_a_ledger_sequence(&path, &ledger);
            reached.borrow_mut()[seq as usize] += 1;
        }
        // The node comes back and finishes.
        let conn = open_node_database(&path).unwrap();
        let applied = apply_changes(&conn, &ledger).unwrap();
        prop_assert_eq!(applied.error, None);
        prop_assert_eq!(applied.status.seq, 6);
        drop(conn);
        prop_assert_eq!(check_at_a_ledger_sequence(&path, &ledger), 6);
        let _ = std::fs::remove_file(&path);
    });
    // The kills landed in the middle, not all before or after the apply.
    let reached = reached.into_inner();
    let between: u32 = reached[1..6].iter().sum();
    assert!(between > 0, "no kill landed between changes: {reached:?}");
    eprintln!("killed at sequences 0..=6: {reached:?} (a whole apply takes {whole:?})");
}
