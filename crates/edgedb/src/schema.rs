//! Where a database file stands: its schema fingerprint, the ledger sequence it is at and
//! the chain hash of the ledger up to there, kept in the file itself (`_edgefn_schema`, one
//! row per applied change, and `PRAGMA user_version`), so a file copied elsewhere still
//! says what it is.

use rusqlite::{Connection, OptionalExtension as _};
use sha2::{Digest as _, Sha256};

/// The table in each database that records the changes applied to it. Guests can neither
/// read nor write it.
pub const LEDGER_TABLE: &str = "_edgefn_schema";

/// The table in each database that records the repairs an operator asked for
/// (`crate::repair`).
pub const REPAIRS_TABLE: &str = "_edgefn_repairs";

/// Whether `name` is one of the node's own tables (`_edgefn_…`), which neither guests nor
/// schema changes may touch and the fingerprint leaves out.
pub fn is_node_table(name: &str) -> bool {
    name.get(..8)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("_edgefn_"))
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The chain hash after change `seq` (whose SQL hashes to `sql_sha256`), following the
/// chain hash `previous` of the ledger before it (`""` before the first change). A node
/// compares it with what it holds, so a rewritten history is noticed, not applied on top.
pub fn chain_hash(previous: &str, seq: u64, sql_sha256: &str) -> String {
    sha256_hex(format!("{previous}:{seq}:{sql_sha256}").as_bytes())
}

/// SHA-256 of the normalized schema: every table, index, view and trigger (type, name,
/// table, SQL with runs of whitespace collapsed), in name order, leaving out SQLite's own
/// objects (`sqlite_%`: `sqlite_sequence`, `sqlite_stat1`, automatic indexes) and the
/// node's (`_edgefn_%`: the ledger and repairs tables). The same ledger gives the same fingerprint on every node and in the dry
/// run; a file altered by hand gives another.
pub fn fingerprint(conn: &Connection) -> rusqlite::Result<String> {
    let mut statement = conn.prepare_cached(
        "SELECT type, name, tbl_name, COALESCE(sql, '') FROM sqlite_schema \
         WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_edgefn\\_%' ESCAPE '\\' \
         AND tbl_name NOT LIKE '\\_edgefn\\_%' ESCAPE '\\' ORDER BY type, name",
    )?;
    let mut rows = statement.query([])?;
    let mut hasher = Sha256::new();
    while let Some(row) = rows.next()? {
        for i in 0..3 {
            hasher.update(row.get_ref(i)?.as_bytes().unwrap_or_default());
            hasher.update([0]);
        }
        let sql = row.get_ref(3)?.as_bytes().unwrap_or_default();
        let sql = String::from_utf8_lossy(sql);
        hasher.update(sql.split_whitespace().collect::<Vec<_>>().join(" "));
        hasher.update([b'\n']);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Creates the ledger table if the file has none (inside the caller's transaction).
pub(crate) fn ensure_ledger(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _edgefn_schema (\
           seq INTEGER PRIMARY KEY, \
           sha256 TEXT NOT NULL, \
           chain TEXT NOT NULL, \
           fingerprint TEXT NOT NULL, \
           applied_at_ms INTEGER NOT NULL)",
    )
}

/// Creates the repairs table if the file has none (inside the caller's transaction).
pub(crate) fn ensure_repairs(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS _edgefn_repairs (\
           id TEXT PRIMARY KEY, \
           action TEXT NOT NULL, \
           seq INTEGER NOT NULL, \
           fingerprint TEXT NOT NULL, \
           at_ms INTEGER NOT NULL)",
    )
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false))
}

/// What a database file holds, as its node reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    /// The last ledger sequence applied (0: none).
    pub seq: u64,
    /// The chain hash recorded with it (`""` at 0).
    pub chain: String,
    /// The fingerprint recorded when it was applied.
    pub recorded_fingerprint: String,
    /// The fingerprint of the schema the file has now.
    pub fingerprint: String,
    /// An operator accepted a schema that is not the ledger's (`db repair --accept`): the
    /// changes after it cannot be checked against the ledger's fingerprints.
    pub accepted_drift: bool,
    /// The last repair the file carries (its id), if any.
    pub repair: Option<String>,
}

impl FileStatus {
    /// The schema is not what the last applied change left (altered by hand).
    pub fn drifted(&self) -> bool {
        self.fingerprint != self.recorded_fingerprint
    }
}

/// Reads where `conn`'s file stands. A file without a ledger table is at 0 with the
/// fingerprint of an empty schema recorded.
pub fn status(conn: &Connection) -> rusqlite::Result<FileStatus> {
    let last = if has_table(conn, LEDGER_TABLE)? {
        conn.query_row(
            "SELECT seq, chain, fingerprint FROM _edgefn_schema ORDER BY seq DESC LIMIT 1",
            [],
            |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    } else {
        None
    };
    let (seq, chain, mut recorded_fingerprint) =
        last.unwrap_or_else(|| (0, String::new(), empty_fingerprint()));
    let seq = seq.max(0) as u64;
    let (mut accepted_drift, mut repair) = (false, None);
    if has_table(conn, REPAIRS_TABLE)? {
        let repairs = conn.query_row(
            "SELECT id, EXISTS (SELECT 1 FROM _edgefn_repairs WHERE action = 'accept') FROM _edgefn_repairs \
             ORDER BY rowid DESC LIMIT 1",
            [],
            |row| Ok((row.get::<_, String>(0)?, row.get::<_, bool>(1)?)),
        );
        if let Some((id, accepted)) = repairs.optional()? {
            (repair, accepted_drift) = (Some(id), accepted);
        }
        // An accepted schema is what the file should have at the sequence it was accepted.
        let accepted: Option<String> = conn
            .query_row(
                "SELECT fingerprint FROM _edgefn_repairs WHERE action = 'accept' AND seq = ?1 \
                 ORDER BY rowid DESC LIMIT 1",
                [seq as i64],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(accepted) = accepted {
            recorded_fingerprint = accepted;
        }
    }
    Ok(FileStatus {
        seq,
        chain,
        recorded_fingerprint,
        fingerprint: fingerprint(conn)?,
        accepted_drift,
        repair,
    })
}

/// The fingerprint of a database with no schema.
pub fn empty_fingerprint() -> String {
    sha256_hex(b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_whitespace_sqlites_objects_and_the_ledger() {
        let a = Connection::open_in_memory().unwrap();
        a.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);",
        )
        .unwrap();
        let b = Connection::open_in_memory().unwrap();
        b.execute_batch(
            "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE);",
        )
        .unwrap();
        ensure_ledger(&b).unwrap();
        b.execute_batch("INSERT INTO items (name) VALUES ('x'); ANALYZE;")
            .unwrap();
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        b.execute_batch("CREATE INDEX items_by_name ON items (name)")
            .unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        let empty = Connection::open_in_memory().unwrap();
        assert_eq!(fingerprint(&empty).unwrap(), empty_fingerprint());
    }

    #[test]
    fn the_chain_depends_on_every_earlier_change() {
        let one = chain_hash("", 1, "aa");
        assert_ne!(
            chain_hash(&one, 2, "bb"),
            chain_hash(&chain_hash("", 1, "ab"), 2, "bb")
        );
        assert_eq!(one, chain_hash("", 1, "aa"));
    }
}
