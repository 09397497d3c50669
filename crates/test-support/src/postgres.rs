//! A fresh schema in the PostgreSQL test database per test, dropped when the test is done.

const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema of its own; `url` connects with it as the search path. Dropped on drop.
#[derive(Debug)]
pub struct TestSchema {
    /// The database URL scoped to the schema.
    pub url: String,
    base_url: String,
    schema: String,
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.base_url.clone(), self.schema.clone());
        // On a thread of its own: `Drop` cannot await, and may run inside a runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                // Never wait forever behind a connection that still holds a lock.
                if let Ok(pool) = sqlx::AnyPool::connect(&url).await {
                    let _ = sqlx::query("SET lock_timeout = '5s'").execute(&pool).await;
                    let _ =
                        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                            .execute(&pool)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A new schema named `schema` (emptied first) on the PostgreSQL server tests use:
/// `EDGEFN_TEST_POSTGRES_URL`, or this machine's default. The PostgreSQL suites never skip.
///
/// # Panics
/// When the server does not answer, saying which one and how to name another.
pub async fn test_schema(schema: &str) -> TestSchema {
    let url =
        std::env::var("EDGEFN_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.to_string());
    sqlx::any::install_default_drivers();
    let pool = match sqlx::AnyPool::connect(&url).await {
        Ok(pool) => pool,
        Err(error) => panic!(
            "the PostgreSQL suites need a server: {url} is unavailable ({error}); start it, or name another with EDGEFN_TEST_POSTGRES_URL"
        ),
    };
    for statement in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .expect("create the test schema");
    }
    pool.close().await;
    let separator = if url.contains('?') { '&' } else { '?' };
    TestSchema {
        url: format!("{url}{separator}options=-c%20search_path%3D{schema}"),
        base_url: url,
        schema: schema.to_string(),
    }
}

/// A unique schema name with `prefix`.
pub fn unique_schema_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
