//! Resolving a node's file that left the ledger, as an operator asks (`edgefn db repair`):
//!
//! - **recreate**: the file is built again from the whole ledger. The old file is kept
//!   beside it first (`{name}.before-{repair}.sqlite`, a consistent copy by `VACUUM INTO`,
//!   so the rows the node wrote are not lost), the new one is built in a file of its own,
//!   and it replaces the live one's pages in one step (SQLite's backup API), so open
//!   connections see either the old file or the new one, and a crash leaves one of them.
//! - **accept**: the file's schema, as it is, becomes what the node expects at its current
//!   sequence. Later changes apply on top of it; as its schema is not the ledger's, their
//!   fingerprints are recorded instead of compared, and a hand edit after it is drift
//!   again.
//!
//! Each repair has an id, recorded in the file (`_edgefn_repairs`, in the same transaction
//! or copy as the repair itself): a repair the file already carries is never done twice,
//! however often the desired state asks.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, MAIN_DB};

use crate::apply::{ApplyError, LedgerChange, apply_changes, open_node_database};
use crate::schema::{FileStatus, ensure_repairs, fingerprint, status};

/// What a repair did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repaired {
    /// Where the file stands after it.
    pub status: FileStatus,
    /// The copy of the file as it was (recreate only).
    pub kept: Option<PathBuf>,
}

/// Whether the file already carries repair `id`.
pub fn carries(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    let table: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = '_edgefn_repairs'",
            [],
            |row| row.get(0),
        )
        .ok();
    if table.is_none() {
        return Ok(false);
    }
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM _edgefn_repairs WHERE id = ?1)",
        [id],
        |row| row.get(0),
    )
}

/// A repair id is the control plane's: letters, digits, '-' and '_' (it becomes part of a
/// file name).
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Records repair `id` (`action`: "recreate" or "accept") in the file.
fn record(conn: &Connection, id: &str, action: &str) -> rusqlite::Result<()> {
    ensure_repairs(conn)?;
    let at = status(conn)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    conn.execute(
        "INSERT INTO _edgefn_repairs (id, action, seq, fingerprint, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![id, action, at.seq as i64, fingerprint(conn)?, now_ms],
    )?;
    Ok(())
}

/// Accepts the schema of `conn`'s file as it is (see the module docs).
pub fn accept(conn: &Connection, id: &str) -> Result<Repaired, ApplyError> {
    if !safe_id(id) {
        return Err(ApplyError::Sqlite(format!("unusable repair id {id:?}")));
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let recorded = (|| {
        if !carries(conn, id)? {
            record(conn, id, "accept")?;
        }
        conn.execute_batch("COMMIT")
    })();
    if let Err(error) = recorded {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(error.into());
    }
    Ok(Repaired {
        status: status(conn)?,
        kept: None,
    })
}

/// Rebuilds `conn`'s file (at `path`) from `ledger`, which must start at change 1 (see
/// the module docs). On any error the live file is untouched.
pub fn recreate(
    conn: &mut Connection,
    path: &Path,
    ledger: &[LedgerChange],
    id: &str,
) -> Result<Repaired, ApplyError> {
    if !safe_id(id) {
        return Err(ApplyError::Sqlite(format!("unusable repair id {id:?}")));
    }
    if ledger.first().is_some_and(|c| c.seq != 1) {
        return Err(ApplyError::Sqlite(
            "recreating needs the whole ledger, from change 1".into(),
        ));
    }
    if carries(conn, id)? {
        return Ok(Repaired {
            status: status(conn)?,
            kept: None,
        });
    }
    let sibling = |suffix: &str| {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        path.with_file_name(format!("{stem}.{suffix}.sqlite"))
    };
    // The file as it was, rows included: a consistent copy, made once per repair.
    let kept = sibling(&format!("before-{id}"));
    if !kept.exists() {
        conn.execute("VACUUM INTO ?1", [kept.to_string_lossy()])?;
    }
    let fresh_path = sibling(&format!("repair-{id}"));
    remove_database_files(&fresh_path);
    let built = (|| {
        let fresh = open_node_database(&fresh_path)?;
        let applied = apply_changes(&fresh, ledger)?;
        if let Some(error) = applied.error {
            return Ok(Err(error));
        }
        fresh.execute_batch("BEGIN IMMEDIATE")?;
        record(&fresh, id, "recreate")?;
        fresh.execute_batch("COMMIT")?;
        // One file for the backup to read: the WAL folded in.
        fresh.pragma_update(None, "journal_mode", "DELETE")?;
        Ok::<_, rusqlite::Error>(Ok(()))
    })();
    let outcome = match built {
        Ok(Ok(())) => conn
            .restore(MAIN_DB, &fresh_path, None::<fn(rusqlite::backup::Progress)>)
            .map_err(ApplyError::from),
        Ok(Err(error)) => Err(error),
        Err(error) => Err(error.into()),
    };
    remove_database_files(&fresh_path);
    outcome?;
    // The backup copied the fresh file's header, journal mode included: WAL again.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(Repaired {
        status: status(conn)?,
        kept: Some(kept),
    })
}

fn remove_database_files(path: &Path) {
    let _ = std::fs::remove_file(path);
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::tests::ledger;

    const SQLS: [&str; 2] = [
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        "CREATE INDEX items_by_name ON items (name)",
    ];

    #[test]
    fn recreate_rebuilds_from_the_ledger_and_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        let mut conn = open_node_database(&path).unwrap();
        let changes = ledger(&SQLS);
        apply_changes(&conn, &changes[..1]).unwrap();
        conn.execute_batch("INSERT INTO items (name) VALUES ('pen'); CREATE TABLE mine (x);")
            .unwrap();
        assert!(status(&conn).unwrap().drifted());
        // Another connection open across the repair (a guest's) sees the new file.
        let guest = Connection::open(&path).unwrap();

        let repaired = recreate(&mut conn, &path, &changes, "r1").unwrap();
        assert_eq!(repaired.status.seq, 2);
        assert!(!repaired.status.drifted());
        assert_eq!(repaired.status.fingerprint, changes[1].fingerprint);
        assert_eq!(repaired.status.repair.as_deref(), Some("r1"));
        let count: i64 = guest
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 0, "the rows went with the old file");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // The old file, rows and all, is kept.
        let kept = Connection::open(repaired.kept.unwrap()).unwrap();
        let name: String = kept
            .query_row("SELECT name FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(name, "pen");
        // The same repair again does nothing; no temporary file is left.
        conn.execute("INSERT INTO items (name) VALUES ('ink')", [])
            .unwrap();
        recreate(&mut conn, &path, &changes, "r1").unwrap();
        let count: i64 = conn
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
        assert!(!dir.path().join("shop.repair-r1.sqlite").exists());
        // A ledger that does not start at 1 is refused, the file untouched.
        assert!(recreate(&mut conn, &path, &changes[1..], "r2").is_err());
        assert_eq!(status(&conn).unwrap().repair.as_deref(), Some("r1"));
    }

    #[test]
    fn accept_takes_the_schema_as_it_is_and_later_changes_apply_on_top() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_node_database(&dir.path().join("shop.sqlite")).unwrap();
        let changes = ledger(&SQLS);
        apply_changes(&conn, &changes[..1]).unwrap();
        conn.execute_batch("CREATE TABLE mine (x)").unwrap();
        assert!(apply_changes(&conn, &changes).unwrap().error.is_some());

        let accepted = accept(&conn, "a1").unwrap();
        assert!(!accepted.status.drifted());
        assert!(accepted.status.accepted_drift);
        let applied = apply_changes(&conn, &changes).unwrap();
        assert_eq!((applied.status.seq, applied.error), (2, None));
        assert!(!applied.status.drifted());
        assert_ne!(applied.status.fingerprint, changes[1].fingerprint);
        // A hand edit after the accept is drift again.
        conn.execute_batch("CREATE TABLE more (y)").unwrap();
        assert!(status(&conn).unwrap().drifted());
    }

    #[test]
    fn repair_ids_never_reach_the_file_system_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.sqlite");
        let mut conn = open_node_database(&path).unwrap();
        for id in ["", "../x", "a/b", "a b"] {
            assert!(recreate(&mut conn, &path, &[], id).is_err(), "{id:?}");
            assert!(accept(&conn, id).is_err(), "{id:?}");
        }
    }
}
