//! Functions reading and writing rows of their project's databases. Guests change rows,
//! never the schema: an authorizer refuses DDL, `ATTACH`, pragmas, transaction statements,
//! `load_extension` and any access to the ledger table, and a read-only grant refuses
//! writes too. Results are bounded (rows and bytes), a database's pages are capped, and the
//! request's deadline interrupts a running statement. Nothing a guest sends panics: text
//! that is not UTF-8 comes back lossily converted.
//!
//! A [`DatabasePool`] keeps a few open connections per database and grant, so a query costs
//! a prepared-statement lookup, not an open.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::schema::is_node_table;

/// A value of a column or parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Self::Null => ValueRef::Null,
            Self::Integer(i) => ValueRef::Integer(*i),
            Self::Real(r) => ValueRef::Real(*r),
            Self::Text(t) => ValueRef::Text(t.as_bytes()),
            Self::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Value {
    fn of(value: ValueRef<'_>) -> Self {
        match value {
            ValueRef::Null => Self::Null,
            ValueRef::Integer(i) => Self::Integer(i),
            ValueRef::Real(r) => Self::Real(r),
            ValueRef::Text(t) => Self::Text(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Self::Blob(b.to_vec()),
        }
    }

    /// Bytes the value takes in a result.
    fn size(&self) -> usize {
        match self {
            Self::Null | Self::Integer(_) | Self::Real(_) => 8,
            Self::Text(t) => t.len(),
            Self::Blob(b) => b.len(),
        }
    }
}

/// A query's columns and rows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Executed {
    pub changes: u64,
    pub last_insert_rowid: i64,
}

/// One statement of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Value>,
}

/// What a guest's database call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    #[error("access denied: {0}")]
    AccessDenied(String),
    #[error("schema behind: {0}")]
    SchemaBehind(String),
    #[error("the database is busy")]
    Busy,
    #[error("constraint failed: {0}")]
    Constraint(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("{0}")]
    Sql(String),
}

/// Bounds of one grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestLimits {
    /// Rows one query may return.
    pub max_rows: usize,
    /// Bytes of values one query may return.
    pub max_result_bytes: usize,
    /// Pages (of the file's page size) the database may grow to.
    pub max_pages: u64,
    /// Bytes of one statement's SQL.
    pub max_sql_bytes: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        Self {
            max_rows: 10_000,
            max_result_bytes: 4 << 20,
            // 1 GiB of 4 KiB pages.
            max_pages: 262_144,
            max_sql_bytes: 100_000,
        }
    }
}

/// Why the guest authorizer refuses an action (`None`: allowed).
fn guest_refusal(action: &AuthAction<'_>, read_only: bool) -> Option<String> {
    Some(match action {
        AuthAction::Select | AuthAction::Recursive => return None,
        AuthAction::Read { table_name, .. } => {
            if is_node_table(table_name) {
                format!("{table_name} is the node's")
            } else {
                return None;
            }
        }
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. } => {
            if read_only {
                "this function may only read the database".into()
            } else if is_node_table(table_name)
                || table_name.to_ascii_lowercase().starts_with("sqlite_")
            {
                format!("{table_name} is not the function's to write")
            } else {
                return None;
            }
        }
        AuthAction::Function { function_name } => {
            if function_name.eq_ignore_ascii_case("load_extension") {
                "load_extension is not allowed".into()
            } else {
                return None;
            }
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            "transactions are the host's: use batch for atomic writes".into()
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => "ATTACH is not allowed".into(),
        AuthAction::Pragma { pragma_name, .. } => format!("PRAGMA {pragma_name} is not allowed"),
        _ => {
            "functions change rows, not the schema (schema changes go through `edgefn db migrate`)"
                .into()
        }
    })
}

/// One open connection of a guest grant.
pub struct GuestDatabase {
    conn: Connection,
    read_only: bool,
    limits: GuestLimits,
    /// While set, statements are the host's own (`BEGIN` of a batch) and pass.
    host: Arc<AtomicBool>,
    refusal: Arc<Mutex<Option<String>>>,
    /// Nanoseconds after `epoch` at which running statements are interrupted (0: none).
    deadline: Arc<AtomicU64>,
    epoch: Instant,
}

impl GuestDatabase {
    /// Opens `path` for a guest. The file must exist (the node creates it when it applies
    /// the ledger) and be at `required_seq` or later.
    pub fn open(
        name: &str,
        path: &Path,
        read_only: bool,
        limits: GuestLimits,
        required_seq: u64,
    ) -> Result<Self, GuestError> {
        if !path.is_file() {
            return Err(GuestError::NoSuchDatabase(name.to_string()));
        }
        let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
        flags |= if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        };
        let failed = |e: rusqlite::Error| GuestError::Sql(format!("cannot open {name}: {e}"));
        let conn = Connection::open_with_flags(path, flags).map_err(failed)?;
        conn.busy_timeout(Duration::from_secs(1)).map_err(failed)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if (version.max(0) as u64) < required_seq {
            return Err(GuestError::SchemaBehind(format!(
                "{name} is at change {version} on this node; the function needs {required_seq}"
            )));
        }
        if !read_only {
            conn.pragma_update(None, "max_page_count", limits.max_pages as i64)
                .map_err(failed)?;
        }
        let clamp = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        let _ = conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, clamp(limits.max_sql_bytes));
        let _ = conn.set_limit(
            Limit::SQLITE_LIMIT_LENGTH,
            clamp(limits.max_result_bytes.max(1)),
        );
        let _ = conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0);
        conn.set_prepared_statement_cache_capacity(64);
        let host = Arc::new(AtomicBool::new(false));
        let refusal = Arc::new(Mutex::new(None));
        let (host_seen, refusal_seen) = (host.clone(), refusal.clone());
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            if host_seen.load(Ordering::Relaxed) {
                return Authorization::Allow;
            }
            match guest_refusal(&context.action, read_only) {
                None => Authorization::Allow,
                Some(reason) => {
                    if let Ok(mut slot) = refusal_seen.lock() {
                        *slot = Some(reason);
                    }
                    Authorization::Deny
                }
            }
        }))
        .map_err(failed)?;
        let deadline = Arc::new(AtomicU64::new(0));
        let epoch = Instant::now();
        let watched = deadline.clone();
        conn.progress_handler(
            1_000,
            Some(move || {
                let at = watched.load(Ordering::Relaxed);
                at != 0 && epoch.elapsed().as_nanos() as u64 >= at
            }),
        )
        .map_err(failed)?;
        Ok(Self {
            conn,
            read_only,
            limits,
            host,
            refusal,
            deadline,
            epoch,
        })
    }

    /// Running statements are interrupted at `deadline` (`None`: never).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        let at = deadline.map_or(0, |d| {
            (d.saturating_duration_since(self.epoch).as_nanos() as u64).max(1)
        });
        self.deadline.store(at, Ordering::Relaxed);
    }

    fn error(&self, error: rusqlite::Error) -> GuestError {
        let refused = self.refusal.lock().ok().and_then(|mut r| r.take());
        let code = error.sqlite_error_code();
        let message = match &error {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
            rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
            other => other.to_string(),
        };
        match code {
            Some(ErrorCode::AuthorizationForStatementDenied) => {
                GuestError::AccessDenied(refused.unwrap_or(message))
            }
            Some(ErrorCode::ConstraintViolation) => GuestError::Constraint(message),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => GuestError::Busy,
            Some(ErrorCode::OperationInterrupted) => {
                GuestError::LimitExceeded("the request's deadline interrupted the statement".into())
            }
            Some(ErrorCode::DiskFull) => GuestError::LimitExceeded(format!(
                "the database reached its quota of {} pages",
                self.limits.max_pages
            )),
            Some(ErrorCode::TooBig) => GuestError::LimitExceeded(message),
            Some(ErrorCode::ReadOnly) => GuestError::AccessDenied(message),
            _ if refused.is_some() => GuestError::AccessDenied(refused.unwrap_or_default()),
            _ => GuestError::Sql(message),
        }
    }

    fn prepare(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, GuestError> {
        if sql.len() > self.limits.max_sql_bytes {
            return Err(GuestError::LimitExceeded(format!(
                "statements are limited to {} bytes",
                self.limits.max_sql_bytes
            )));
        }
        self.conn.prepare_cached(sql).map_err(|e| self.error(e))
    }

    /// Runs a query and returns its rows (within the grant's limits).
    pub fn query(&self, sql: &str, params: &[Value]) -> Result<Rows, GuestError> {
        let mut statement = self.prepare(sql)?;
        let columns: Vec<String> = statement
            .column_names()
            .iter()
            .map(|c| c.to_string())
            .collect();
        let width = columns.len();
        let mut rows = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(|e| self.error(e))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(|e| self.error(e))? {
            if out.len() == self.limits.max_rows {
                return Err(GuestError::LimitExceeded(format!(
                    "queries return at most {} rows",
                    self.limits.max_rows
                )));
            }
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                let value = Value::of(row.get_ref(i).map_err(|e| self.error(e))?);
                bytes += value.size();
                values.push(value);
            }
            if bytes > self.limits.max_result_bytes {
                return Err(GuestError::LimitExceeded(format!(
                    "query results are limited to {} bytes",
                    self.limits.max_result_bytes
                )));
            }
            out.push(values);
        }
        Ok(Rows { columns, rows: out })
    }

    /// Runs a statement that changes rows.
    pub fn execute(&self, sql: &str, params: &[Value]) -> Result<Executed, GuestError> {
        let mut statement = self.prepare(sql)?;
        // A statement that returns rows (`INSERT … RETURNING`, a `SELECT`) runs to its end.
        let mut rows = statement
            .query(rusqlite::params_from_iter(params))
            .map_err(|e| self.error(e))?;
        while rows.next().map_err(|e| self.error(e))?.is_some() {}
        drop(rows);
        Ok(Executed {
            changes: self.conn.changes(),
            last_insert_rowid: self.conn.last_insert_rowid(),
        })
    }

    /// Runs `statements` in one transaction: all of them or none.
    pub fn batch(&self, statements: &[Statement]) -> Result<Vec<Executed>, GuestError> {
        self.host_statement(if self.read_only {
            "BEGIN DEFERRED"
        } else {
            "BEGIN IMMEDIATE"
        })?;
        let mut results = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.execute(&statement.sql, &statement.params) {
                Ok(result) => results.push(result),
                Err(error) => {
                    let _ = self.host_statement("ROLLBACK");
                    return Err(error);
                }
            }
        }
        if let Err(error) = self.host_statement("COMMIT") {
            let _ = self.host_statement("ROLLBACK");
            return Err(error);
        }
        Ok(results)
    }

    fn host_statement(&self, sql: &str) -> Result<(), GuestError> {
        if sql == "ROLLBACK" && self.conn.is_autocommit() {
            return Ok(());
        }
        self.host.store(true, Ordering::Relaxed);
        let result = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]));
        self.host.store(false, Ordering::Relaxed);
        result.map(|_| ()).map_err(|e| self.error(e))
    }

    /// Leaves the connection as a fresh one would be (no open transaction), for the pool.
    fn reset(&self) -> bool {
        self.set_deadline(None);
        self.conn.is_autocommit() || self.host_statement("ROLLBACK").is_ok()
    }
}

/// Open connections of one grant (database file, read-only or not), reused by requests.
pub struct DatabasePool {
    name: String,
    path: PathBuf,
    read_only: bool,
    limits: GuestLimits,
    required_seq: u64,
    idle: Mutex<Vec<GuestDatabase>>,
    /// Idle connections kept (more are closed when returned).
    keep: usize,
}

impl DatabasePool {
    pub fn new(
        name: &str,
        path: PathBuf,
        read_only: bool,
        limits: GuestLimits,
        required_seq: u64,
    ) -> Self {
        Self {
            name: name.to_string(),
            path,
            read_only,
            limits,
            required_seq,
            idle: Mutex::new(Vec::new()),
            keep: 8,
        }
    }

    /// The database's name in the grant.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// An idle connection, or a new one.
    pub fn checkout(&self) -> Result<GuestDatabase, GuestError> {
        if let Some(conn) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
            return Ok(conn);
        }
        GuestDatabase::open(
            &self.name,
            &self.path,
            self.read_only,
            self.limits,
            self.required_seq,
        )
    }

    /// Returns a connection for the next request.
    pub fn give_back(&self, conn: GuestDatabase) {
        if !conn.reset() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.keep
        {
            idle.push(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{apply_changes, open_node_database};

    fn database(dir: &Path) -> PathBuf {
        let path = dir.join("shop.sqlite");
        let conn = open_node_database(&path).unwrap();
        let changes = crate::apply::tests::ledger(&[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB)",
        ]);
        assert_eq!(apply_changes(&conn, &changes).unwrap().error, None);
        path
    }

    #[test]
    fn guests_read_and_write_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let db = GuestDatabase::open("shop", &path, false, GuestLimits::default(), 1).unwrap();
        let done = db
            .execute(
                "INSERT INTO items (name, data) VALUES (?1, ?2)",
                &[Value::Text("pen".into()), Value::Blob(vec![0, 255])],
            )
            .unwrap();
        assert_eq!(
            done,
            Executed {
                changes: 1,
                last_insert_rowid: 1
            }
        );
        let rows = db
            .query("SELECT id, name, data, 1.5, NULL FROM items", &[])
            .unwrap();
        assert_eq!(rows.columns, ["id", "name", "data", "1.5", "NULL"]);
        assert_eq!(
            rows.rows,
            [vec![
                Value::Integer(1),
                Value::Text("pen".into()),
                Value::Blob(vec![0, 255]),
                Value::Real(1.5),
                Value::Null
            ]]
        );
        let error = db
            .execute("INSERT INTO items (name) VALUES ('pen')", &[])
            .unwrap_err();
        assert!(matches!(error, GuestError::Constraint(_)), "{error}");
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let db = GuestDatabase::open("shop", &path, false, GuestLimits::default(), 0).unwrap();
        let insert = |name: &str| Statement {
            sql: "INSERT INTO items (name) VALUES (?1)".into(),
            params: vec![Value::Text(name.into())],
        };
        assert!(db.batch(&[insert("a"), insert("b"), insert("a")]).is_err());
        assert_eq!(
            db.query("SELECT count(*) FROM items", &[]).unwrap().rows[0][0],
            Value::Integer(0)
        );
        assert_eq!(db.batch(&[insert("a"), insert("b")]).unwrap().len(), 2);
        assert_eq!(
            db.query("SELECT count(*) FROM items", &[]).unwrap().rows[0][0],
            Value::Integer(2)
        );
    }

    #[test]
    fn the_schema_ledger_and_pragmas_are_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let db = GuestDatabase::open("shop", &path, false, GuestLimits::default(), 0).unwrap();
        for sql in [
            "CREATE TABLE x (y)",
            "DROP TABLE items",
            "ALTER TABLE items ADD COLUMN z",
            "CREATE INDEX i ON items (data)",
            "ATTACH '/tmp/x.db' AS x",
            "PRAGMA user_version = 9",
            "PRAGMA writable_schema = ON",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT a",
            "SELECT load_extension('/tmp/x')",
            "SELECT * FROM _edgefn_schema",
            "DELETE FROM _edgefn_schema",
            "VACUUM",
            "CREATE TEMP TABLE t (x)",
            "CREATE TRIGGER t AFTER INSERT ON items BEGIN DELETE FROM items; END",
        ] {
            let error = db.execute(sql, &[]).unwrap_err();
            assert!(
                matches!(error, GuestError::AccessDenied(_)),
                "{sql}: {error:?}"
            );
        }
        let reader = GuestDatabase::open("shop", &path, true, GuestLimits::default(), 0).unwrap();
        let error = reader
            .execute("INSERT INTO items (name) VALUES ('x')", &[])
            .unwrap_err();
        assert!(matches!(error, GuestError::AccessDenied(_)), "{error:?}");
        assert!(reader.query("SELECT * FROM items", &[]).is_ok());
    }

    #[test]
    fn limits_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let limits = GuestLimits {
            max_rows: 5,
            max_pages: 20,
            ..GuestLimits::default()
        };
        let db = GuestDatabase::open("shop", &path, false, limits, 0).unwrap();
        let error = db
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 10) SELECT x FROM c", &[])
            .unwrap_err();
        assert!(matches!(error, GuestError::LimitExceeded(_)), "{error:?}");
        let error = db
            .execute("INSERT INTO items (name, data) SELECT x, zeroblob(10000) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c)", &[])
            .unwrap_err();
        assert!(matches!(error, GuestError::LimitExceeded(_)), "{error:?}");
        db.set_deadline(Some(Instant::now() + Duration::from_millis(50)));
        let started = Instant::now();
        let error = db
            .query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", &[])
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(error, GuestError::LimitExceeded(_)), "{error:?}");
        let missing =
            GuestDatabase::open("other", &dir.path().join("other.sqlite"), false, limits, 0);
        assert!(matches!(missing, Err(GuestError::NoSuchDatabase(_))));
        let behind = GuestDatabase::open("shop", &path, false, limits, 2);
        assert!(matches!(behind, Err(GuestError::SchemaBehind(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// Whatever SQL a guest sends — statements glued from hostile words, bytes that
        /// are not UTF-8 in its text — the node does not panic and the schema stays the
        /// ledger's.
        #[test]
        fn hostile_sql_never_changes_the_schema(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "CREATE", "TABLE", "DROP", "ALTER", "ADD", "COLUMN", "INDEX", "TRIGGER", "VIEW",
                "ATTACH", "DETACH", "DATABASE", "PRAGMA", "writable_schema", "=", "ON", "1",
                "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "VACUUM", "INTO",
                "SELECT", "load_extension('x')", "*", "FROM", "items", "_edgefn_schema",
                "sqlite_schema", "INSERT", "VALUES", "(1)", "('a')", "x'ff'", ";", "TEMP",
                "AS", "t", "(x)", "DELETE", "UPDATE", "SET", "name", "WHERE", "REINDEX",
                "ANALYZE", "VIRTUAL", "USING", "fts5(a)", "END", "AFTER", "ROWID",
            ]), 1..12),
            blob in proptest::collection::vec(proptest::num::u8::ANY, 0..16),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = database(dir.path());
            let before = crate::schema::fingerprint(&Connection::open(&path).unwrap()).unwrap();
            let db = GuestDatabase::open("shop", &path, false, GuestLimits::default(), 0).unwrap();
            let sql = words.join(" ");
            let _ = db.execute(&sql, &[]);
            let _ = db.query(&sql, &[Value::Blob(blob.clone())]);
            let _ = db.batch(&[Statement { sql: sql.clone(), params: vec![] }]);
            let text = String::from_utf8_lossy(&blob).into_owned();
            let _ = db.execute("INSERT INTO items (name, data) VALUES (CAST(?1 AS TEXT), ?1)", &[Value::Blob(blob)]);
            let _ = db.query("SELECT name FROM items", &[Value::Text(text)]);
            let after = crate::schema::fingerprint(&Connection::open(&path).unwrap()).unwrap();
            proptest::prop_assert_eq!(before, after, "{}", sql);
        }
    }
}
