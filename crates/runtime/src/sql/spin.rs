//! Spin's `fermyon:spin/sqlite@2.0.0` on the same grants, pools and limits as `edgefn:sql`,
//! so a Spin app that uses SQLite runs unchanged. Spin has one call, `execute`, for reads
//! and writes: it runs the statement and returns whatever rows it yields (none for a write).
//! Spin's errors are coarser than ours: what has no variant of its own travels as `io`
//! with our message.

use edgefn_edgedb::GuestError;
use wasmtime::component::{HasData, Resource};

use super::{SqlConnection, SqlView};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "edgefn:host/spin-sqlite-host",
    with: {
        "fermyon:spin/sqlite.connection": SpinConnection,
    },
});

use self::fermyon::spin::sqlite::{Error, Host, HostConnection, QueryResult, RowResult, Value};

/// A Spin guest's open database: the same connection as an `edgefn:sql` one, under
/// Spin's resource type.
pub struct SpinConnection(SqlConnection);

struct SpinData;

impl HasData for SpinData {
    type Data<'a> = SqlView<'a>;
}

/// Adds `fermyon:spin/sqlite` to a component linker.
pub(crate) fn add_to_linker<T: Send + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    get: fn(&mut T) -> SqlView<'_>,
) -> wasmtime::Result<()> {
    fermyon::spin::sqlite::add_to_linker::<T, SpinData>(linker, get)
}

fn error_of(error: GuestError) -> Error {
    match error {
        GuestError::NoSuchDatabase(_) => Error::NoSuchDatabase,
        GuestError::AccessDenied(m) => Error::Io(format!("access denied: {m}")),
        GuestError::LimitExceeded(m) if m.contains("quota") => Error::DatabaseFull,
        other => Error::Io(other.to_string()),
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

impl HostConnection for SqlView<'_> {
    fn open(&mut self, database: String) -> Result<Resource<SpinConnection>, Error> {
        // Spin's word for a database the component's settings do not list; a granted one
        // the node does not hold is `no-such-database`.
        if self.grants.find(&database).is_none() {
            return Err(Error::AccessDenied);
        }
        let connection = self.checkout(&database).map_err(error_of)?;
        self.table
            .push(SpinConnection(connection))
            .map_err(|e| Error::Io(e.to_string()))
    }

    fn execute(
        &mut self,
        connection: Resource<SpinConnection>,
        statement: String,
        parameters: Vec<Value>,
    ) -> Result<QueryResult, Error> {
        let params: Vec<_> = parameters.into_iter().map(value_in).collect();
        let deadline = self.deadline;
        let Ok(SpinConnection(connection)) = self.table.get_mut(&connection) else {
            return Err(Error::InvalidConnection);
        };
        let rows = connection
            .run(deadline, |conn| conn.query(&statement, &params))
            .map_err(error_of)?;
        Ok(QueryResult {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|row| RowResult {
                    values: row.into_iter().map(value_out).collect(),
                })
                .collect(),
        })
    }

    fn drop(&mut self, connection: Resource<SpinConnection>) -> wasmtime::Result<()> {
        self.table.delete(connection)?;
        Ok(())
    }
}

impl Host for SqlView<'_> {}
