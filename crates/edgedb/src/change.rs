//! What a schema change may hold, and the control plane's dry run of it.
//!
//! A change runs inside a transaction on every node, so it may not hold statements that
//! cannot (transaction control, `VACUUM`, `ATTACH`/`DETACH`, pragmas, temporary objects,
//! `load_extension`): the migration authorizer refuses them while the statement is
//! prepared. The dry run replays the whole ledger on an in-memory database, then runs the
//! new SQL statement by statement inside a transaction, so a change that fails there
//! never reaches a node; SQLite's message comes back with the statement's number and its
//! line and column. A change that loses a table or a column (`DROP TABLE`, `DROP COLUMN`,
//! a rename) is destructive and needs the caller's consent.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, fallible_iterator::FallibleIterator as _};

use crate::schema::{fingerprint, is_node_table};

/// How long the dry run of one change may take (a recursive query in a change would
/// otherwise hold a control-plane thread forever).
const DRY_RUN_TIME: Duration = Duration::from_secs(5);
/// Pages (4 KiB) the dry run's in-memory database may grow to.
const DRY_RUN_PAGES: u32 = 65_536;

/// What kind of refusal a change got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeErrorKind {
    /// SQLite refused it (syntax, a missing table, a constraint, …).
    Invalid,
    /// A statement that cannot run inside the change's transaction, or that a change may
    /// not hold.
    NotAllowed,
    /// It drops or renames a table or column, and the caller did not say `destructive`.
    Destructive,
}

/// A refused change: what, and where in its SQL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (statement {statement}, line {line}, column {column})")]
pub struct ChangeError {
    pub kind: ChangeErrorKind,
    pub message: String,
    /// 1-based number of the statement in the change.
    pub statement: usize,
    /// Byte offset in the change's SQL, and its 1-based line and column.
    pub offset: usize,
    pub line: usize,
    pub column: usize,
}

impl ChangeError {
    fn at(
        kind: ChangeErrorKind,
        message: String,
        sql: &str,
        statement: usize,
        offset: usize,
    ) -> Self {
        let offset = offset.min(sql.len());
        let before = sql.get(..offset).unwrap_or(sql);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Self {
            kind,
            message,
            statement,
            offset,
            line,
            column,
        }
    }
}

/// What the dry run found of an accepted change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRun {
    /// The schema fingerprint after the change: what every node must end at.
    pub fingerprint: String,
    /// Statements in the change.
    pub statements: usize,
    /// Tables and columns (`table.column`) the change removes.
    pub removes: Vec<String>,
}

/// Why the migration authorizer refused an action, or `None` when a change may do it.
fn migration_refusal(action: &AuthAction<'_>) -> Option<String> {
    if let Some(table) = table_of(action).filter(|t| is_node_table(t)) {
        return Some(format!(
            "{table} is the node's: tables named _edgefn_… are not a schema change's to touch"
        ));
    }
    Some(match action {
        AuthAction::Transaction { operation } => {
            format!("{operation:?} is not allowed: each change already runs in its own transaction")
                .to_uppercase()
        }
        AuthAction::Savepoint { .. } => {
            "SAVEPOINT is not allowed: each change runs in its own transaction".into()
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            "ATTACH and DETACH are not allowed in a schema change".into()
        }
        AuthAction::Pragma { pragma_name, .. } => format!(
            "PRAGMA {pragma_name} is not allowed in a schema change (pragmas are not transactional)"
        ),
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. } => {
            "temporary objects are not allowed in a schema change (they do not outlive it)".into()
        }
        AuthAction::Function { function_name }
            if function_name.eq_ignore_ascii_case("load_extension") =>
        {
            "load_extension is not allowed".into()
        }
        _ => return None,
    })
}

/// The table (or view, index or trigger) an action names, if it names one.
fn table_of<'a>(action: &AuthAction<'a>) -> Option<&'a str> {
    Some(match *action {
        AuthAction::CreateIndex { index_name, .. } if is_node_table(index_name) => index_name,
        AuthAction::CreateTrigger { trigger_name, .. } if is_node_table(trigger_name) => {
            trigger_name
        }
        AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTable { table_name }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::Delete { table_name }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Read { table_name, .. }
        | AuthAction::Update { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateVtable { table_name, .. }
        | AuthAction::DropVtable { table_name, .. } => table_name,
        AuthAction::CreateView { view_name } | AuthAction::DropView { view_name } => view_name,
        _ => return None,
    })
}

/// Installs the migration authorizer on `conn`; the returned cell holds the reason of the
/// last refusal (SQLite itself only says "not authorized").
pub(crate) fn authorize_migrations(
    conn: &Connection,
) -> rusqlite::Result<Arc<Mutex<Option<String>>>> {
    let refusal = Arc::new(Mutex::new(None));
    let seen = refusal.clone();
    conn.authorizer(Some(
        move |context: AuthContext<'_>| match migration_refusal(&context.action) {
            None => Authorization::Allow,
            Some(reason) => {
                if let Ok(mut slot) = seen.lock() {
                    *slot = Some(reason);
                }
                Authorization::Deny
            }
        },
    ))?;
    Ok(refusal)
}

/// Every table and `table.column` of the schema.
fn tables_and_columns(conn: &Connection) -> rusqlite::Result<BTreeSet<String>> {
    let mut found = BTreeSet::new();
    let mut tables = conn.prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )?;
    let names: Vec<String> = tables
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for table in names {
        let mut columns = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let columns: Vec<String> = columns
            .query_map([&table], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        for column in columns {
            found.insert(format!("{table}.{column}"));
        }
        found.insert(table);
    }
    Ok(found)
}

/// Runs `sql` on `conn` statement by statement (inside the caller's transaction), with
/// `refusal` filled by the authorizer. Errors carry the statement and position.
pub(crate) fn run_statements(
    conn: &Connection,
    sql: &str,
    refusal: &Mutex<Option<String>>,
) -> Result<usize, ChangeError> {
    let mut batch = rusqlite::Batch::new(conn, sql);
    let mut cursor = 0usize;
    let mut number = 0usize;
    loop {
        let next = batch.next();
        let taken = refusal.lock().ok().and_then(|mut r| r.take());
        let mut statement = match next {
            Ok(Some(statement)) => statement,
            Ok(None) => break,
            Err(error) => {
                let start = cursor + skip_blank(sql.get(cursor..).unwrap_or_default());
                let (kind, message, offset) = match (taken, &error) {
                    (Some(reason), _) => (ChangeErrorKind::NotAllowed, reason, start),
                    (None, rusqlite::Error::SqlInputError { msg, offset, .. }) => (
                        ChangeErrorKind::Invalid,
                        msg.clone(),
                        cursor + (*offset).max(0) as usize,
                    ),
                    (None, rusqlite::Error::SqliteFailure(_, Some(message))) => {
                        (ChangeErrorKind::Invalid, message.clone(), start)
                    }
                    (None, error) => (ChangeErrorKind::Invalid, error.to_string(), start),
                };
                return Err(ChangeError::at(kind, message, sql, number + 1, offset));
            }
        };
        number += 1;
        // The statement's own text: found from the cursor on, it gives the position of the
        // next one (SQLite skips empty statements without a word).
        let text = statement.expanded_sql().unwrap_or_default();
        let start = sql
            .get(cursor..)
            .and_then(|rest| rest.find(text.as_str()))
            .map_or(cursor, |at| cursor + at);
        let word = start + (text.len() - text.trim_start().len());
        if statement.parameter_count() > 0 {
            return Err(ChangeError::at(
                ChangeErrorKind::NotAllowed,
                "parameters (`?`, `:name`) are not allowed in a schema change".into(),
                sql,
                number,
                word,
            ));
        }
        cursor = start + text.len();
        // Run to completion; a statement that yields rows (a `SELECT` in a change) is
        // stepped through and its rows dropped.
        let result = {
            let mut rows = statement.raw_query();
            loop {
                match rows.next() {
                    Ok(Some(_)) => continue,
                    Ok(None) => break Ok(()),
                    Err(error) => break Err(error),
                }
            }
        };
        if let Err(error) = result {
            let message = match error {
                rusqlite::Error::SqliteFailure(_, Some(message)) => message,
                error => error.to_string(),
            };
            return Err(ChangeError::at(
                ChangeErrorKind::Invalid,
                message,
                sql,
                number,
                word,
            ));
        }
    }
    Ok(number)
}

/// Bytes of whitespace and comments at the start of `sql`.
fn skip_blank(sql: &str) -> usize {
    let mut rest = sql;
    loop {
        let trimmed = rest.trim_start();
        if let Some(comment) = trimmed.strip_prefix("--") {
            rest = comment.find('\n').map_or("", |end| &comment[end..]);
        } else if let Some(comment) = trimmed.strip_prefix("/*") {
            rest = comment.find("*/").map_or("", |end| &comment[end + 2..]);
        } else {
            return sql.len() - trimmed.len();
        }
    }
}

/// Replays `ledger` (the SQL of every change so far, in order) on an in-memory database,
/// then tries `sql` in a transaction with the migration rules. `Ok` says what the change
/// leads to; a destructive change passes only with `allow_destructive`.
pub fn dry_run(ledger: &[&str], sql: &str, allow_destructive: bool) -> Result<DryRun, ChangeError> {
    let internal = |error: rusqlite::Error| {
        ChangeError::at(
            ChangeErrorKind::Invalid,
            format!("dry run: {error}"),
            sql,
            0,
            0,
        )
    };
    let conn = Connection::open_in_memory().map_err(internal)?;
    conn.pragma_update(None, "max_page_count", DRY_RUN_PAGES)
        .map_err(internal)?;
    let deadline = Instant::now() + DRY_RUN_TIME;
    conn.progress_handler(10_000, Some(move || Instant::now() >= deadline))
        .map_err(internal)?;
    for (index, earlier) in ledger.iter().enumerate() {
        conn.execute_batch(earlier).map_err(|error| {
            ChangeError::at(
                ChangeErrorKind::Invalid,
                format!(
                    "change {} of the ledger no longer applies: {error}",
                    index + 1
                ),
                sql,
                0,
                0,
            )
        })?;
    }
    let before = tables_and_columns(&conn).map_err(internal)?;
    conn.execute_batch("BEGIN IMMEDIATE").map_err(internal)?;
    let refusal = authorize_migrations(&conn).map_err(internal)?;
    let statements = run_statements(&conn, sql, &refusal);
    conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>)
        .map_err(internal)?;
    let statements = match statements {
        Ok(0) if skip_blank(sql) == sql.len() => {
            return Err(ChangeError::at(
                ChangeErrorKind::Invalid,
                "the change holds no statement".into(),
                sql,
                0,
                0,
            ));
        }
        Ok(n) => n,
        Err(error) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let timed_out = Instant::now() >= deadline;
            return Err(if timed_out {
                ChangeError {
                    message: format!(
                        "the change ran longer than {} s in the dry run",
                        DRY_RUN_TIME.as_secs()
                    ),
                    ..error
                }
            } else {
                error
            });
        }
    };
    let after = tables_and_columns(&conn).map_err(internal)?;
    let removes: Vec<String> = before.difference(&after).cloned().collect();
    if !removes.is_empty() && !allow_destructive {
        return Err(ChangeError::at(
            ChangeErrorKind::Destructive,
            format!(
                "the change removes or renames {}: send it with \"destructive\": true if that is meant",
                removes.join(", ")
            ),
            sql,
            1,
            0,
        ));
    }
    let fingerprint = fingerprint(&conn).map_err(internal)?;
    conn.execute_batch("COMMIT").map_err(internal)?;
    Ok(DryRun {
        fingerprint,
        statements,
        removes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_change_gives_the_fingerprint_nodes_reach() {
        let run = dry_run(&[], "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT);\nCREATE INDEX items_by_name ON items (name);", false).unwrap();
        assert_eq!(run.statements, 2);
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT); CREATE INDEX items_by_name ON items (name);").unwrap();
        assert_eq!(run.fingerprint, fingerprint(&conn).unwrap());
    }

    #[test]
    fn errors_name_the_statement_and_its_position() {
        let ledger = ["CREATE TABLE items (id INTEGER PRIMARY KEY)"];
        let error = dry_run(
            &ledger,
            "CREATE TABLE a (x);\n  INSERT INTO missing VALUES (1);",
            false,
        )
        .unwrap_err();
        assert_eq!(error.kind, ChangeErrorKind::Invalid);
        assert_eq!(
            (error.statement, error.line, error.column),
            (2, 2, 3),
            "{error}"
        );
        assert!(error.message.contains("no such table: missing"), "{error}");
        let error =
            dry_run(&ledger, "CREATE TABLE b (x);\nCREATE TABLEE c (x);", false).unwrap_err();
        assert_eq!((error.statement, error.line), (2, 2), "{error}");
        assert!(error.message.contains("syntax error"), "{error}");
    }

    #[test]
    fn statements_that_cannot_run_in_the_transaction_are_refused() {
        for sql in [
            "BEGIN; CREATE TABLE a (x); COMMIT;",
            "CREATE TABLE a (x); COMMIT;",
            "VACUUM",
            "ATTACH 'other.db' AS other",
            "PRAGMA journal_mode = DELETE",
            "PRAGMA foreign_keys = ON",
            "SAVEPOINT s",
            "CREATE TEMP TABLE t (x)",
            "SELECT load_extension('x')",
            "CREATE TABLE a (x DEFAULT ?)",
        ] {
            let error = dry_run(&[], sql, true).unwrap_err();
            assert_ne!(error.kind, ChangeErrorKind::Destructive, "{sql}: {error}");
            assert!(!error.message.is_empty(), "{sql}");
        }
        let error = dry_run(&[], "CREATE TABLE a (x);\nPRAGMA user_version = 3", true).unwrap_err();
        assert_eq!(
            (error.kind, error.statement),
            (ChangeErrorKind::NotAllowed, 2)
        );
        assert!(error.message.contains("PRAGMA user_version"), "{error}");
    }

    #[test]
    fn losing_a_table_or_column_needs_consent() {
        let ledger = ["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, note TEXT)"];
        for sql in [
            "DROP TABLE items",
            "ALTER TABLE items DROP COLUMN note",
            "ALTER TABLE items RENAME TO things",
            "ALTER TABLE items RENAME COLUMN note TO remark",
        ] {
            let error = dry_run(&ledger, sql, false).unwrap_err();
            assert_eq!(error.kind, ChangeErrorKind::Destructive, "{sql}");
            let run = dry_run(&ledger, sql, true).unwrap();
            assert!(!run.removes.is_empty());
        }
        assert!(dry_run(&ledger, "ALTER TABLE items ADD COLUMN price REAL", false).is_ok());
        let run = dry_run(&ledger, "DROP INDEX IF EXISTS no_such_index", false);
        assert!(run.is_ok(), "{run:?}");
    }

    #[test]
    fn a_change_that_runs_forever_stops() {
        let started = Instant::now();
        let error = dry_run(&[], "CREATE TABLE t AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT sum(x) FROM c", false).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(error.message.contains("longer than"), "{error}");
    }

    #[test]
    fn an_empty_change_is_refused() {
        assert!(dry_run(&[], "  -- nothing\n", false).is_err());
    }

    #[test]
    fn the_nodes_own_tables_are_not_a_changes_to_touch() {
        let ledger = ["CREATE TABLE items (x)"];
        for sql in [
            "CREATE TABLE _edgefn_schema (x)",
            "CREATE TABLE _EDGEFN_repairs (x)",
            "CREATE INDEX _edgefn_i ON items (x)",
            "CREATE VIEW _edgefn_v AS SELECT 1",
            "CREATE TRIGGER _edgefn_t AFTER INSERT ON items BEGIN SELECT 1; END",
        ] {
            let error = dry_run(&ledger, sql, true).unwrap_err();
            assert_eq!(error.kind, ChangeErrorKind::NotAllowed, "{sql}: {error}");
            assert!(error.message.contains("the node's"), "{sql}: {error}");
        }
    }
}
