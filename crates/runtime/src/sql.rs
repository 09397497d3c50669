//! `edgefn:sql/sql@0.1.0`: guests query the edge databases their settings grant. Deny by
//! default — `open` finds only the granted names, read-only grants cannot write, and
//! everything a statement may do is decided by `edgefn_edgedb::guest` (authorizer, result
//! limits, page quota). The request's deadline interrupts a running statement.
//!
//! Each function version keeps a pool of open connections per grant ([`SqlGrants`]); a
//! guest's `connection` resource holds one until it is dropped, which gives it back.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use edgefn_edgedb::guest::DatabasePool;
use edgefn_edgedb::{GuestError, GuestLimits};
use wasmtime::component::{HasData, Resource, ResourceTable};

use crate::config::SqlGrant;

mod spin;

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "edgefn:host/sql-host",
    with: {
        "edgefn:sql/sql.connection": SqlConnection,
    },
});

use self::edgefn::sql::sql::{
    Error, ExecuteResult, Host, HostConnection, QueryResult, Statement, Value,
};

/// The connection pools of one function version's grants.
#[derive(Default)]
pub(crate) struct SqlGrants {
    pools: Vec<Arc<DatabasePool>>,
}

impl SqlGrants {
    pub(crate) fn new(grants: &[SqlGrant], dir: Option<&Path>) -> Self {
        let Some(dir) = dir else {
            return Self::default();
        };
        Self {
            pools: grants
                .iter()
                .map(|grant| {
                    Arc::new(DatabasePool::new(
                        &grant.name,
                        dir.join(&grant.file),
                        grant.read_only,
                        GuestLimits::default(),
                        grant.required_seq,
                    ))
                })
                .collect(),
        }
    }

    fn find(&self, name: &str) -> Option<&Arc<DatabasePool>> {
        self.pools.iter().find(|pool| pool.name() == name)
    }
}

/// A guest's open database (the `connection` resource).
pub struct SqlConnection {
    pool: Arc<DatabasePool>,
    conn: Option<edgefn_edgedb::GuestDatabase>,
}

impl SqlConnection {
    /// Runs `call` on the open connection, interrupted at `deadline`.
    fn run<R>(
        &self,
        deadline: Instant,
        call: impl FnOnce(&edgefn_edgedb::GuestDatabase) -> Result<R, GuestError>,
    ) -> Result<R, GuestError> {
        let Some(conn) = self.conn.as_ref() else {
            return Err(GuestError::Sql("the connection is closed".into()));
        };
        conn.set_deadline(Some(deadline));
        let result = call(conn);
        conn.set_deadline(None);
        result
    }
}

impl Drop for SqlConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.give_back(conn);
        }
    }
}

/// What the host functions see of a store: its resource table, the version's grants and
/// the current call's deadline.
pub(crate) struct SqlView<'a> {
    pub(crate) table: &'a mut ResourceTable,
    pub(crate) grants: &'a SqlGrants,
    pub(crate) deadline: Instant,
}

struct SqlData;

impl HasData for SqlData {
    type Data<'a> = SqlView<'a>;
}

/// Adds `edgefn:sql/sql` and Spin's `fermyon:spin/sqlite` to a component linker.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> SqlView<'_>,
) -> wasmtime::Result<()> {
    edgefn::sql::sql::add_to_linker::<T, SqlData>(linker, get)?;
    spin::add_to_linker(linker, get)
}

fn error_of(error: GuestError) -> Error {
    match error {
        GuestError::NoSuchDatabase(m) => Error::NoSuchDatabase(m),
        GuestError::AccessDenied(m) => Error::AccessDenied(m),
        GuestError::SchemaBehind(m) => Error::SchemaBehind(m),
        GuestError::Busy => Error::Busy,
        GuestError::Constraint(m) => Error::Constraint(m),
        GuestError::LimitExceeded(m) => Error::LimitExceeded(m),
        GuestError::Sql(m) => Error::Sql(m),
    }
}

fn value_in(value: Value) -> edgefn_edgedb::Value {
    match value {
        Value::Null => edgefn_edgedb::Value::Null,
        Value::Integer(i) => edgefn_edgedb::Value::Integer(i),
        Value::Real(r) => edgefn_edgedb::Value::Real(r),
        Value::Text(t) => edgefn_edgedb::Value::Text(t),
        Value::Blob(b) => edgefn_edgedb::Value::Blob(b),
    }
}

fn value_out(value: edgefn_edgedb::Value) -> Value {
    match value {
        edgefn_edgedb::Value::Null => Value::Null,
        edgefn_edgedb::Value::Integer(i) => Value::Integer(i),
        edgefn_edgedb::Value::Real(r) => Value::Real(r),
        edgefn_edgedb::Value::Text(t) => Value::Text(t),
        edgefn_edgedb::Value::Blob(b) => Value::Blob(b),
    }
}

fn executed(result: edgefn_edgedb::Executed) -> ExecuteResult {
    ExecuteResult {
        changes: result.changes,
        last_insert_rowid: result.last_insert_rowid,
    }
}

impl SqlView<'_> {
    /// Opens the granted database `name` (a pooled connection).
    fn checkout(&self, name: &str) -> Result<SqlConnection, GuestError> {
        let Some(pool) = self.grants.find(name) else {
            return Err(GuestError::NoSuchDatabase(format!(
                "{name} (not in the function's databases)"
            )));
        };
        Ok(SqlConnection {
            pool: pool.clone(),
            conn: Some(pool.checkout()?),
        })
    }

    /// Runs `call` on the resource's connection under the call's deadline.
    fn with<R>(
        &mut self,
        connection: &Resource<SqlConnection>,
        call: impl FnOnce(&edgefn_edgedb::GuestDatabase) -> Result<R, GuestError>,
    ) -> Result<R, Error> {
        let deadline = self.deadline;
        let connection = self
            .table
            .get_mut(connection)
            .map_err(|e| Error::Sql(e.to_string()))?;
        connection.run(deadline, call).map_err(error_of)
    }
}

impl HostConnection for SqlView<'_> {
    fn open(&mut self, name: String) -> Result<Resource<SqlConnection>, Error> {
        let connection = self.checkout(&name).map_err(error_of)?;
        self.table
            .push(connection)
            .map_err(|e| Error::LimitExceeded(e.to_string()))
    }

    fn query(
        &mut self,
        connection: Resource<SqlConnection>,
        sql: String,
        params: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let params: Vec<_> = params.into_iter().map(value_in).collect();
        self.with(&connection, |conn| {
            let rows = conn.query(&sql, &params)?;
            Ok(QueryResult {
                columns: rows.columns,
                rows: rows
                    .rows
                    .into_iter()
                    .map(|row| row.into_iter().map(value_out).collect())
                    .collect(),
            })
        })
    }

    fn execute(
        &mut self,
        connection: Resource<SqlConnection>,
        sql: String,
        params: Vec<Value>,
    ) -> Result<ExecuteResult, Error> {
        let params: Vec<_> = params.into_iter().map(value_in).collect();
        self.with(&connection, |conn| {
            conn.execute(&sql, &params).map(executed)
        })
    }

    fn batch(
        &mut self,
        connection: Resource<SqlConnection>,
        statements: Vec<Statement>,
    ) -> Result<Vec<ExecuteResult>, Error> {
        let statements: Vec<edgefn_edgedb::Statement> = statements
            .into_iter()
            .map(|s| edgefn_edgedb::Statement {
                sql: s.sql,
                params: s.params.into_iter().map(value_in).collect(),
            })
            .collect();
        self.with(&connection, |conn| {
            conn.batch(&statements)
                .map(|all| all.into_iter().map(executed).collect())
        })
    }

    fn drop(&mut self, connection: Resource<SqlConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl Host for SqlView<'_> {}
