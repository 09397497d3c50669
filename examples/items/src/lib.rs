//! Stores and lists items in the edge database `shop` (or `?db=NAME`) through `edgefn:sql`:
//!
//! - `GET /items` lists them, one `id<TAB>name` line each;
//! - `GET /items?add=NAME` inserts one (409 when the name is taken);
//! - `GET /exec?sql=SQL` runs any statement (percent-encoded) and answers its outcome,
//!   which is how the tests show what a guest may not do (403 for access denied, 404 for a
//!   database the function may not open, 503 for a schema behind).

use wasip2::http::types::{IncomingRequest, ResponseOutparam};

wit_bindgen::generate!({
    path: "../../wit",
    world: "edgefn:host/imports",
    generate_all,
});

use edgefn::sql::sql::{Connection, Error, Value};

struct Items;

/// `%XX` and `+` decoded (invalid escapes are kept as they are).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The status and text of a database error.
fn failure(error: Error) -> (u16, String) {
    match error {
        Error::NoSuchDatabase(m) => (404, format!("no-such-database: {m}")),
        Error::AccessDenied(m) => (403, format!("access-denied: {m}")),
        Error::SchemaBehind(m) => (503, format!("schema-behind: {m}")),
        Error::Busy => (503, "busy".into()),
        Error::Constraint(m) => (409, format!("constraint: {m}")),
        Error::LimitExceeded(m) => (413, format!("limit-exceeded: {m}")),
        Error::Sql(m) => (400, format!("sql: {m}")),
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Integer(i) => i.to_string(),
        Value::Real(r) => r.to_string(),
        Value::Text(t) => t.clone(),
        Value::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

fn serve(request: &IncomingRequest) -> Result<String, Error> {
    let db = guest::query_param(request, "db").unwrap_or_else(|| "shop".into());
    let connection = Connection::open(&db)?;
    if guest::path(request) == "/exec" {
        let sql = decode(&guest::query_param(request, "sql").unwrap_or_default());
        let done = connection.execute(&sql, &[])?;
        return Ok(format!("ok {}\n", done.changes));
    }
    if let Some(name) = guest::query_param(request, "add") {
        let done = connection.execute(
            "INSERT INTO items (name) VALUES (?1)",
            &[Value::Text(decode(&name))],
        )?;
        return Ok(format!("added {}\n", done.last_insert_rowid));
    }
    let result = connection.query("SELECT id, name FROM items ORDER BY id", &[])?;
    Ok(result
        .rows
        .iter()
        .map(|row| row.iter().map(show).collect::<Vec<_>>().join("\t") + "\n")
        .collect())
}

impl wasip2::exports::http::incoming_handler::Guest for Items {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        match serve(&request) {
            Ok(body) => guest::text(out, 200, &body),
            Err(error) => {
                let (status, message) = failure(error);
                guest::text(out, status, &(message + "\n"));
            }
        }
    }
}

wasip2::http::proxy::export!(Items);
