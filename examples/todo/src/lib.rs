//! A to-do list written as a Spin app with Spin's Rust SDK (`spin-sdk` 3), using Spin's
//! SQLite interface on the database `default` (or `?db=NAME`):
//!
//! - `GET /todo` lists the items, one `id<TAB>title<TAB>done` line each;
//! - `POST /todo` with a title as the body adds one and answers its id (201);
//! - `POST /todo/done?id=N` marks one done.
//!
//! Spin's errors come back as status codes: 403 for access denied, 404 for no such
//! database, 507 for a full database, 500 for the rest (with the message).

use spin_sdk::http::{IntoResponse, Method, Request, Response};
use spin_sdk::http_component;
use spin_sdk::sqlite::{Connection, Error, Value};

fn param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn answer(status: u16, body: impl Into<String>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body.into())
        .build()
}

fn failed(error: Error) -> Response {
    match error {
        Error::AccessDenied => answer(403, "access denied"),
        Error::NoSuchDatabase => answer(404, "no such database"),
        Error::DatabaseFull => answer(507, "database full"),
        Error::InvalidConnection => answer(500, "invalid connection"),
        Error::Io(message) => answer(500, message),
    }
}

fn todo(req: &Request) -> Result<Response, Error> {
    let db = Connection::open(param(req.query(), "db").unwrap_or("default"))?;
    match (req.method(), req.path()) {
        (Method::Get, "/todo") => {
            let items = db.execute("SELECT id, title, done FROM todo ORDER BY id", &[])?;
            let lines: Vec<String> = items
                .rows()
                .map(|row| {
                    format!(
                        "{}\t{}\t{}\n",
                        row.get::<i64>("id").unwrap_or_default(),
                        row.get::<&str>("title").unwrap_or_default(),
                        row.get::<bool>("done").unwrap_or_default(),
                    )
                })
                .collect();
            Ok(answer(200, lines.concat()))
        }
        (Method::Post, "/todo") => {
            let title = String::from_utf8_lossy(req.body()).into_owned();
            let added = db.execute(
                "INSERT INTO todo (title) VALUES (?) RETURNING id",
                &[Value::Text(title)],
            )?;
            let id = added.rows().next().and_then(|row| row.get::<i64>("id"));
            Ok(answer(201, id.unwrap_or_default().to_string()))
        }
        (Method::Post, "/todo/done") => {
            let id = param(req.query(), "id").and_then(|id| id.parse::<i64>().ok());
            let Some(id) = id else {
                return Ok(answer(400, "?id=N is required"));
            };
            db.execute(
                "UPDATE todo SET done = 1 WHERE id = ?",
                &[Value::Integer(id)],
            )?;
            Ok(answer(204, ""))
        }
        _ => Ok(answer(404, "not found")),
    }
}

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    Ok(todo(&req).unwrap_or_else(failed))
}
