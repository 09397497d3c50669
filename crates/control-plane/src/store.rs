//! The metadata store: domain methods over SQLite or PostgreSQL. Both run the same SQL
//! through sqlx's `Any` driver (`$N` placeholders, `ON CONFLICT`, `RETURNING` and JSON as
//! text work on both); schema migrations are kept per backend in `migrations/`. Database
//! errors are mapped to domain errors here, and nowhere else. The only SQL built at run
//! time joins constant column lists (`AssertSqlSafe`); values are always bound.

use std::collections::BTreeMap;

use edgefn_proto::GuestKind;
use edgefn_proto::api::{
    Function, FunctionSettings, Heartbeat, InventoryItem, Node, NodeStatus, Route, RouteInput,
    Version, VersionState,
};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("{0}")]
    Startup(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => Self::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Self::Conflict("already exists".into())
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                Self::Conflict("still referenced".into())
            }
            _ => Self::Database(error.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, StoreError>;

/// Which engine backs the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    pub backend: Backend,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Database(format!("corrupt JSON column: {e}")))
}

/// How a pending version ends.
pub enum Completion {
    Ready {
        sha256: String,
        size: u64,
        kind: GuestKind,
    },
    Invalid {
        error: String,
    },
}

impl Store {
    /// Connects, creates or migrates the schema, and refuses a schema newer than this binary.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Startup(format!(
                "unsupported database url {url:?}: use sqlite:… or postgres://…"
            )));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 16 })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer. `synchronous = NORMAL` syncs
                        // at checkpoints instead of at every commit: commits survive a crash of
                        // this process, and only an OS crash or power loss can lose the newest
                        // ones (never corrupt the file). With FULL, every heartbeat waited for
                        // an fsync: ~1,200/s instead of the 5,000/s goal (bench/RESULTS.md).
                        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON")
                            .execute(connection)
                            .await?;
                    }
                    Ok(())
                })
            })
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| StoreError::Startup(format!("cannot connect to the database: {e}")))?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::Startup(format!(
                "the database schema is newer than this binary (it has migration {version}, unknown here): \
                 upgrade edgefn-control-plane"
            )),
            other => StoreError::Startup(format!("cannot migrate the database schema: {other}")),
        })?;
        Ok(Self { pool, backend })
    }

    /// A transaction that will write. On SQLite it takes the write lock up front (`BEGIN
    /// IMMEDIATE`): a transaction that reads first and upgrades later fails at once with
    /// `SQLITE_BUSY` when another connection writes, instead of waiting its turn.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    // ---- functions and versions -------------------------------------------------------

    /// Creates a function and its version 1 (pending) in one transaction.
    pub async fn create_function(
        &self,
        project: &str,
        name: &str,
        settings: &FunctionSettings,
    ) -> Result<(Function, u64)> {
        let id = new_id("fn");
        let now = now_ms();
        let settings_json = json(settings);
        let mut tx = self.begin_write().await?;
        let project_exists = sqlx::query("SELECT 1 FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&mut *tx)
            .await?;
        if project_exists.is_none() {
            sqlx::query("INSERT INTO projects (id, name, created_at) VALUES ($1, $1, $2)")
                .bind(project)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO functions (id, project_id, name, settings, next_version, created_at) VALUES ($1, $2, $3, $4, 2, $5)",
        )
        .bind(&id)
        .bind(project)
        .bind(name)
        .bind(&settings_json)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("a function named {name:?} exists in project {project:?}")),
            other => other,
        })?;
        sqlx::query("INSERT INTO versions (function_id, version, state, settings, created_at) VALUES ($1, 1, 'pending', $2, $3)")
            .bind(&id)
            .bind(&settings_json)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let function = Function {
            id,
            project: project.to_string(),
            name: name.to_string(),
            settings: settings.clone(),
            created_at: now,
            latest_ready_version: None,
        };
        Ok((function, 1))
    }

    fn function_from_row(row: &AnyRow) -> Result<Function> {
        let latest: Option<i64> = row.try_get("latest")?;
        Ok(Function {
            id: row.try_get("id")?,
            project: row.try_get("project_id")?,
            name: row.try_get("name")?,
            settings: parse_json(&row.try_get::<String, _>("settings")?)?,
            created_at: row.try_get("created_at")?,
            latest_ready_version: latest.map(|v| v as u64),
        })
    }

    const FUNCTION_COLUMNS: &str = "f.id, f.project_id, f.name, f.settings, f.created_at, \
        (SELECT MAX(v.version) FROM versions v WHERE v.function_id = f.id AND v.state = 'ready') AS latest";

    pub async fn get_function(&self, id: &str) -> Result<Function> {
        let sql = format!(
            "SELECT {} FROM functions f WHERE f.id = $1",
            Self::FUNCTION_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::function_from_row(&row)
    }

    pub async fn list_functions(&self, project: Option<&str>) -> Result<Vec<Function>> {
        let sql = format!(
            "SELECT {} FROM functions f WHERE ($1 = '' OR f.project_id = $1) ORDER BY f.created_at, f.id",
            Self::FUNCTION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::function_from_row).collect()
    }

    /// Deletes a function, its versions and (with `force`) its routes. Returns the artifact
    /// hashes no remaining version references, for the caller to delete.
    pub async fn delete_function(&self, id: &str, force: bool) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let routes: i64 = sqlx::query("SELECT COUNT(*) AS n FROM routes WHERE function_id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
        if routes > 0 && !force {
            return Err(StoreError::Conflict(format!(
                "the function is in use by {routes} route(s); delete them or force"
            )));
        }
        let hashes: Vec<String> = sqlx::query(
            "SELECT DISTINCT sha256 FROM versions WHERE function_id = $1 AND sha256 IS NOT NULL",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get("sha256"))
        .collect::<std::result::Result<_, _>>()?;
        sqlx::query("DELETE FROM routes WHERE function_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM versions WHERE function_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM functions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut orphaned = Vec::new();
        for hash in hashes {
            let still_used = sqlx::query("SELECT 1 FROM versions WHERE sha256 = $1")
                .bind(&hash)
                .fetch_optional(&mut *tx)
                .await?;
            if still_used.is_none() {
                orphaned.push(hash);
            }
        }
        tx.commit().await?;
        Ok(orphaned)
    }

    /// Adds the next version (pending) with the function's current settings.
    pub async fn create_version(&self, function_id: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query("SELECT next_version, settings FROM functions WHERE id = $1")
            .bind(function_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let version: i64 = row.try_get("next_version")?;
        let settings: String = row.try_get("settings")?;
        sqlx::query("UPDATE functions SET next_version = next_version + 1 WHERE id = $1 AND next_version = $2")
            .bind(function_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO versions (function_id, version, state, settings, created_at) VALUES ($1, $2, 'pending', $3, $4)")
            .bind(function_id)
            .bind(version)
            .bind(&settings)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(version as u64)
    }

    fn version_from_row(row: &AnyRow) -> Result<Version> {
        let state: String = row.try_get("state")?;
        let kind: Option<String> = row.try_get("kind")?;
        let size: Option<i64> = row.try_get("size")?;
        let version: i64 = row.try_get("version")?;
        Ok(Version {
            function_id: row.try_get("function_id")?,
            version: version as u64,
            state: VersionState::parse(&state)
                .ok_or_else(|| StoreError::Database(format!("unknown state {state}")))?,
            settings: parse_json(&row.try_get::<String, _>("settings")?)?,
            sha256: row.try_get("sha256")?,
            size: size.map(|s| s as u64),
            kind: kind.as_deref().and_then(GuestKind::parse),
            artifact_url: None,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            completed_at: row.try_get("completed_at")?,
        })
    }

    const VERSION_COLUMNS: &str = "function_id, version, state, settings, sha256, size, kind, error, created_at, completed_at";

    pub async fn get_version(&self, function_id: &str, version: u64) -> Result<Version> {
        let sql = format!(
            "SELECT {} FROM versions WHERE function_id = $1 AND version = $2",
            Self::VERSION_COLUMNS
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(function_id)
            .bind(version as i64)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::version_from_row(&row)
    }

    pub async fn list_versions(&self, function_id: &str) -> Result<Vec<Version>> {
        self.get_function(function_id).await?;
        let sql = format!(
            "SELECT {} FROM versions WHERE function_id = $1 ORDER BY version",
            Self::VERSION_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(function_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::version_from_row).collect()
    }

    /// Ends a pending version. A version that is no longer pending is immutable: conflict.
    pub async fn complete_version(
        &self,
        function_id: &str,
        version: u64,
        completion: Completion,
    ) -> Result<()> {
        let now = now_ms();
        let query = match &completion {
            Completion::Ready { sha256, size, kind } => sqlx::query(
                "UPDATE versions SET state = 'ready', sha256 = $3, size = $4, kind = $5, completed_at = $6 \
                 WHERE function_id = $1 AND version = $2 AND state = 'pending'",
            )
            .bind(function_id)
            .bind(version as i64)
            .bind(sha256.clone())
            .bind(*size as i64)
            .bind(kind.as_str())
            .bind(now),
            Completion::Invalid { error } => sqlx::query(
                "UPDATE versions SET state = 'invalid', error = $3, completed_at = $4 \
                 WHERE function_id = $1 AND version = $2 AND state = 'pending'",
            )
            .bind(function_id)
            .bind(version as i64)
            .bind(error.clone())
            .bind(now),
        };
        if query.execute(&self.pool).await?.rows_affected() == 1 {
            return Ok(());
        }
        self.get_version(function_id, version).await?;
        Err(StoreError::Conflict(
            "the version is no longer pending; versions are immutable once uploaded".into(),
        ))
    }

    /// Whether any version references the artifact with this hash.
    pub async fn artifact_referenced(&self, sha256: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM versions WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    // ---- routes ---------------------------------------------------------------------

    fn route_from_row(row: &AnyRow) -> Result<Route> {
        let methods: String = row.try_get("methods")?;
        let version: Option<i64> = row.try_get("version")?;
        let priority: i64 = row.try_get("priority")?;
        Ok(Route {
            id: row.try_get("id")?,
            project: row.try_get("project_id")?,
            host: row.try_get("host")?,
            path: row.try_get("path")?,
            function_id: row.try_get("function_id")?,
            version: version.map(|v| v as u64),
            methods: methods
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect(),
            priority: priority as i32,
            pop_selector: row.try_get("pop_selector")?,
            created_at: row.try_get("created_at")?,
        })
    }

    const ROUTE_COLUMNS: &str = "id, project_id, host, path, methods, function_id, version, priority, pop_selector, created_at";

    /// Creates (`id` = None) or replaces a route; the function must exist.
    pub async fn put_route(&self, id: Option<&str>, input: &RouteInput) -> Result<Route> {
        let function = self
            .get_function(&input.function_id)
            .await
            .map_err(|e| match e {
                StoreError::NotFound => {
                    StoreError::Conflict(format!("no function {:?}", input.function_id))
                }
                other => other,
            })?;
        let methods = input.methods.join(",");
        let conflict = |e: sqlx::Error| match StoreError::from(e) {
            StoreError::Conflict(_) => {
                StoreError::Conflict("a route with the same host, path and methods exists".into())
            }
            other => other,
        };
        let route_id = match id {
            None => {
                let id = new_id("rt");
                sqlx::query(
                    "INSERT INTO routes (id, project_id, host, path, methods, function_id, version, priority, pop_selector, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(&id)
                .bind(&function.project)
                .bind(&input.host)
                .bind(&input.path)
                .bind(&methods)
                .bind(&input.function_id)
                .bind(input.version)
                .bind(input.priority)
                .bind(&input.pop_selector)
                .bind(now_ms())
                .execute(&self.pool)
                .await
                .map_err(conflict)?;
                id
            }
            Some(id) => {
                let updated = sqlx::query(
                    "UPDATE routes SET project_id = $2, host = $3, path = $4, methods = $5, function_id = $6, version = $7, \
                     priority = $8, pop_selector = $9 WHERE id = $1",
                )
                .bind(id)
                .bind(&function.project)
                .bind(&input.host)
                .bind(&input.path)
                .bind(&methods)
                .bind(&input.function_id)
                .bind(input.version)
                .bind(input.priority)
                .bind(&input.pop_selector)
                .execute(&self.pool)
                .await
                .map_err(conflict)?;
                if updated.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                id.to_string()
            }
        };
        self.get_route(&route_id).await
    }

    pub async fn get_route(&self, id: &str) -> Result<Route> {
        let sql = format!("SELECT {} FROM routes WHERE id = $1", Self::ROUTE_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::route_from_row(&row)
    }

    pub async fn list_routes(&self) -> Result<Vec<Route>> {
        let sql = format!(
            "SELECT {} FROM routes ORDER BY created_at, id",
            Self::ROUTE_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::route_from_row).collect()
    }

    pub async fn delete_route(&self, id: &str) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM routes WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if deleted.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    // ---- nodes ----------------------------------------------------------------------

    pub async fn register_node(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        address: &str,
    ) -> Result<String> {
        let id = new_id("node");
        sqlx::query(
            "INSERT INTO nodes (id, name, labels, address, status, registered_at, inventory) \
             VALUES ($1, $2, $3, $4, 'syncing', $5, '[]')",
        )
        .bind(&id)
        .bind(name)
        .bind(json(labels))
        .bind(address)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    fn node_from_row(row: &AnyRow) -> Result<Node> {
        let status: String = row.try_get("status")?;
        let mem: Option<i64> = row.try_get("mem_bytes")?;
        Ok(Node {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            labels: parse_json(&row.try_get::<String, _>("labels")?)?,
            address: row.try_get("address")?,
            status: NodeStatus::parse(&status)
                .ok_or_else(|| StoreError::Database(format!("unknown status {status}")))?,
            registered_at: row.try_get("registered_at")?,
            last_heartbeat: row.try_get("last_heartbeat")?,
            cpu_percent: row.try_get("cpu_percent")?,
            mem_bytes: mem.map(|m| m as u64),
            inventory: parse_json::<Vec<InventoryItem>>(&row.try_get::<String, _>("inventory")?)?,
        })
    }

    const NODE_COLUMNS: &str = "id, name, labels, address, status, registered_at, last_heartbeat, cpu_percent, mem_bytes, inventory";

    pub async fn get_node(&self, id: &str) -> Result<Node> {
        let sql = format!("SELECT {} FROM nodes WHERE id = $1", Self::NODE_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::node_from_row(&row)
    }

    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        let sql = format!(
            "SELECT {} FROM nodes ORDER BY registered_at, id",
            Self::NODE_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::node_from_row).collect()
    }

    /// Records a heartbeat: one UPDATE. `NotFound` when the node is not registered.
    pub async fn heartbeat(&self, node_id: &str, heartbeat: &Heartbeat) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE nodes SET status = $2, last_heartbeat = $3, cpu_percent = $4, mem_bytes = $5, inventory = $6 WHERE id = $1",
        )
        .bind(node_id)
        .bind(heartbeat.status.as_str())
        .bind(now_ms())
        .bind(heartbeat.cpu_percent)
        .bind(heartbeat.mem_bytes.min(i64::MAX as u64) as i64)
        .bind(json(&heartbeat.inventory))
        .execute(&self.pool)
        .await?;
        if updated.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    /// The benchmark's peer: the bare single-row UPDATE a heartbeat costs the database.
    #[doc(hidden)]
    pub async fn bare_update_for_benchmark(&self, node_id: &str, now: i64) -> bool {
        sqlx::query("UPDATE nodes SET last_heartbeat = $2 WHERE id = $1")
            .bind(node_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .is_ok_and(|r| r.rows_affected() == 1)
    }

    /// Marks offline every node silent since before `cutoff` (Unix ms). Returns how many.
    pub async fn mark_silent_nodes_offline(&self, cutoff: i64) -> Result<u64> {
        let updated = sqlx::query(
            "UPDATE nodes SET status = 'offline' WHERE status <> 'offline' AND COALESCE(last_heartbeat, registered_at) < $1",
        )
        .bind(cutoff)
        .execute(&self.pool)
        .await?;
        Ok(updated.rows_affected())
    }
}
