//! A node applying ledger changes to its file. Each change is one `BEGIN IMMEDIATE`
//! transaction: the file must be exactly at the previous sequence with the ledger's chain
//! hash and an untouched schema; the SQL runs under the migration authorizer; the change is
//! recorded in `_edgefn_schema`, `user_version` set, and the resulting fingerprint
//! compared with the ledger's before `COMMIT`. Anything else rolls back, so a file is only
//! ever at a ledger sequence with its fingerprint — a crash mid-change leaves the previous
//! one (SQLite's journal) — and applying stops at the first change that fails.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthContext, Authorization};
use rusqlite::{Connection, OpenFlags};

use crate::change::{ChangeError, authorize_migrations, dry_run, run_statements};
use crate::schema::{FileStatus, chain_hash, ensure_ledger, fingerprint, sha256_hex, status};

/// One change of the ledger, as the desired state carries it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerChange {
    pub seq: u64,
    pub sql: String,
    /// SHA-256 of `sql`.
    pub sha256: String,
    /// The schema fingerprint after this change.
    pub fingerprint: String,
    /// The ledger's chain hash after this change.
    pub chain: String,
}

/// Why applying stopped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("change {seq}: {message}")]
    Change { seq: u64, message: String },
    #[error(
        "the file's schema was altered outside the ledger (fingerprint {found}, expected {expected})"
    )]
    Drift { found: String, expected: String },
    #[error("the file's history differs from the ledger at change {seq} (rewritten history?)")]
    History { seq: u64 },
    #[error("{0}")]
    Sqlite(String),
}

impl From<rusqlite::Error> for ApplyError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error.to_string())
    }
}

/// What [`apply_changes`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Where the file was before.
    pub from: u64,
    /// Where it is now (the last change that committed).
    pub status: FileStatus,
    /// The change that failed, if one did (the file stays at `status.seq`).
    pub error: Option<ApplyError>,
    pub duration: Duration,
}

/// Opens (creating it and its directory when missing) a node's database file in WAL mode.
pub fn open_node_database(path: &Path) -> rusqlite::Result<Connection> {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL with NORMAL loses no committed change on a process crash (only on power loss,
    // the last transactions); FULL makes every commit durable — a schema change is rare.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

/// Applies `changes` (ascending; those at or below the file's sequence are checked against
/// its history and skipped) to `conn`. Stops at the first failure, which is in the result,
/// not an `Err`: `Err` is for a file that cannot even be read.
pub fn apply_changes(conn: &Connection, changes: &[LedgerChange]) -> rusqlite::Result<Applied> {
    let started = Instant::now();
    let before = status(conn)?;
    let from = before.seq;
    let mut error = None;
    if before.drifted() {
        error = Some(ApplyError::Drift {
            found: before.fingerprint.clone(),
            expected: before.recorded_fingerprint.clone(),
        });
    } else {
        for change in changes {
            if let Err(failed) = apply_one(conn, change) {
                error = Some(failed);
                break;
            }
        }
    }
    Ok(Applied {
        from,
        status: status(conn)?,
        error,
        duration: started.elapsed(),
    })
}

fn apply_one(conn: &Connection, change: &LedgerChange) -> Result<(), ApplyError> {
    let fail = |message: String| ApplyError::Change {
        seq: change.seq,
        message,
    };
    if sha256_hex(change.sql.as_bytes()) != change.sha256 {
        return Err(fail("its SQL does not match its SHA-256".into()));
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        ensure_ledger(conn)?;
        let current = status(conn)?;
        if change.seq <= current.seq {
            // Already applied: the history must be the ledger's.
            let recorded: String = conn.query_row(
                "SELECT chain FROM _edgefn_schema WHERE seq = ?1",
                [change.seq as i64],
                |row| row.get(0),
            )?;
            return if recorded == change.chain {
                Ok(false)
            } else {
                Err(ApplyError::History { seq: change.seq })
            };
        }
        if change.seq != current.seq + 1 {
            return Err(fail(format!(
                "the file is at change {}; change {} cannot come next",
                current.seq, change.seq
            )));
        }
        if chain_hash(&current.chain, change.seq, &change.sha256) != change.chain {
            return Err(ApplyError::History { seq: change.seq });
        }
        if current.drifted() {
            return Err(ApplyError::Drift {
                found: current.fingerprint,
                expected: current.recorded_fingerprint,
            });
        }
        let refusal = authorize_migrations(conn)?;
        let ran = run_statements(conn, &change.sql, &refusal);
        conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)?;
        ran.map_err(|e| fail(e.to_string()))?;
        let reached = fingerprint(conn)?;
        // A file whose different schema an operator accepted cannot reach the ledger's
        // fingerprints; it records its own, so drift after it is still noticed.
        if reached != change.fingerprint && !current.accepted_drift {
            return Err(fail(format!(
                "the schema after it has fingerprint {reached}, the ledger says {}",
                change.fingerprint
            )));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        conn.execute(
            "INSERT INTO _edgefn_schema (seq, sha256, chain, fingerprint, applied_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            rusqlite::params![change.seq as i64, change.sha256, change.chain, reached, now_ms],
        )?;
        conn.pragma_update(None, "user_version", change.seq as i64)?;
        Ok(true)
    })();
    match result {
        Ok(_) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(error) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(error)
        }
    }
}

/// The ledger of `sqls` as the control plane builds it, one change at a time: each dry-run
/// on top of the ones before it (destructive changes allowed), hashed and chained. For
/// tools and tests that need a ledger without a control plane.
pub fn build_ledger(sqls: &[&str]) -> Result<Vec<LedgerChange>, ChangeError> {
    let mut changes: Vec<LedgerChange> = Vec::with_capacity(sqls.len());
    let mut chain = String::new();
    for (i, sql) in sqls.iter().enumerate() {
        let run = dry_run(&sqls[..i], sql, true)?;
        let sha256 = sha256_hex(sql.as_bytes());
        let seq = i as u64 + 1;
        chain = chain_hash(&chain, seq, &sha256);
        changes.push(LedgerChange {
            seq,
            sql: sql.to_string(),
            sha256,
            fingerprint: run.fingerprint,
            chain: chain.clone(),
        });
    }
    Ok(changes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ledger of `sqls` as the control plane would build it.
    pub(crate) fn ledger(sqls: &[&str]) -> Vec<LedgerChange> {
        build_ledger(sqls).unwrap()
    }

    const SQLS: [&str; 3] = [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        "ALTER TABLE items ADD COLUMN price REAL",
        "CREATE INDEX items_by_name ON items (name)",
    ];

    #[test]
    fn changes_apply_in_order_and_again_is_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_node_database(&dir.path().join("p/shop.sqlite")).unwrap();
        let changes = ledger(&SQLS);
        let applied = apply_changes(&conn, &changes[..2]).unwrap();
        assert_eq!(
            (applied.from, applied.status.seq, applied.error),
            (0, 2, None)
        );
        let applied = apply_changes(&conn, &changes).unwrap();
        assert_eq!(
            (applied.from, applied.status.seq, applied.error),
            (2, 3, None)
        );
        assert_eq!(applied.status.fingerprint, changes[2].fingerprint);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
        assert_eq!(apply_changes(&conn, &changes).unwrap().error, None);
    }

    #[test]
    fn a_failing_change_rolls_back_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_node_database(&dir.path().join("shop.sqlite")).unwrap();
        let mut changes = ledger(&[
            SQLS[0],
            "CREATE UNIQUE INDEX items_name ON items (name)",
            SQLS[1],
        ]);
        apply_changes(&conn, &changes[..1]).unwrap();
        conn.execute_batch("INSERT INTO items (name) VALUES ('a'), ('a')")
            .unwrap();
        let applied = apply_changes(&conn, &changes).unwrap();
        assert_eq!(applied.status.seq, 1);
        let Some(ApplyError::Change { seq: 2, message }) = applied.error else {
            panic!("{:?}", applied.error)
        };
        assert!(message.contains("UNIQUE"), "{message}");
        assert_eq!(applied.status.fingerprint, changes[0].fingerprint);
        // A rewritten history is refused.
        changes[1].chain = "00".repeat(32);
        conn.execute_batch("DELETE FROM items").unwrap();
        let applied = apply_changes(&conn, &changes[1..]).unwrap();
        assert_eq!(applied.error, Some(ApplyError::History { seq: 2 }));
    }

    #[test]
    fn a_hand_altered_file_is_drift_and_gets_nothing_more() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_node_database(&dir.path().join("shop.sqlite")).unwrap();
        let changes = ledger(&SQLS);
        apply_changes(&conn, &changes[..1]).unwrap();
        conn.execute_batch("CREATE TABLE mine (x)").unwrap();
        let applied = apply_changes(&conn, &changes).unwrap();
        assert!(matches!(applied.error, Some(ApplyError::Drift { .. })));
        assert_eq!(applied.status.seq, 1);
        assert!(applied.status.drifted());
    }
}
