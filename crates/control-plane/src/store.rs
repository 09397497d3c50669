//! The metadata store: domain methods over SQLite or PostgreSQL. Both run the same SQL
//! through sqlx's `Any` driver (`$N` placeholders, `ON CONFLICT`, `RETURNING` and JSON as
//! text work on both); schema migrations are kept per backend in `migrations/`. Database
//! errors are mapped to domain errors here, and nowhere else. The only SQL built at run
//! time joins constant column lists (`AssertSqlSafe`); values are always bound.

use std::collections::{BTreeMap, HashMap};

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
                        // Checkpoints (which do sync) every 10,000 pages rather than 1,000: a
                        // 10,000-node deploy acked in ~5 s instead of ~6 s.
                        sqlx::raw_sql("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 10000")
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

    /// Ends a write transaction: commit on success, roll back on any error. A transaction
    /// that is merely dropped is rolled back only when its connection is next used, and until
    /// then holds its locks.
    async fn finish<T>(tx: sqlx::Transaction<'static, sqlx::Any>, result: Result<T>) -> Result<T> {
        match result {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        }
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
        let result: Result<()> = async {
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
        Ok(())
        }
        .await;
        Self::finish(tx, result).await?;
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
        let result: Result<Vec<String>> = async {
            let routes: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM routes WHERE function_id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            let deployed: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM deployments WHERE function_id = $1 AND state = 'active'",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if deployed > 0 && !force {
                return Err(StoreError::Conflict(
                    "the function is deployed; undeploy it or force".into(),
                ));
            }
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
            sqlx::query("DELETE FROM deployments WHERE function_id = $1")
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
            Ok(orphaned)
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Adds the next version (pending) with the function's current settings.
    pub async fn create_version(&self, function_id: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let result: Result<u64> = async {
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
        Ok(version as u64)
        }
        .await;
        Self::finish(tx, result).await
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
        // Both statements take the route's fields as $2..$9, bound in one place.
        let fields = |query: sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>| {
            query
                .bind(function.project.clone())
                .bind(input.host.clone())
                .bind(input.path.clone())
                .bind(methods.clone())
                .bind(input.function_id.clone())
                .bind(input.version)
                .bind(input.priority)
                .bind(input.pop_selector.clone())
        };
        let route_id = match id {
            None => {
                let id = new_id("rt");
                let insert = sqlx::query(
                    "INSERT INTO routes (id, project_id, host, path, methods, function_id, version, priority, pop_selector, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                );
                fields(insert.bind(id.clone()))
                    .bind(now_ms())
                    .execute(&self.pool)
                    .await
                    .map_err(conflict)?;
                id
            }
            Some(id) => {
                let update = sqlx::query(
                    "UPDATE routes SET project_id = $2, host = $3, path = $4, methods = $5, function_id = $6, version = $7, \
                     priority = $8, pop_selector = $9 WHERE id = $1",
                );
                let updated = fields(update.bind(id.to_string()))
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
            usage: parse_json(&row.try_get::<String, _>("usage")?)?,
        })
    }

    const NODE_COLUMNS: &str = "id, name, labels, address, status, registered_at, last_heartbeat, cpu_percent, mem_bytes, inventory, usage";

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

    /// Records a heartbeat: the node's status and usage and, when it acks something (a
    /// higher applied revision, or item results), that ack in the same transaction.
    /// Returns the node's desired revision, and its desired state when the node is behind.
    /// `NotFound` when the node is not registered.
    ///
    /// Most heartbeats ack nothing new (a runner sends results only when they change): those
    /// cost one read and one UPDATE, without a transaction.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<(u64, Option<edgefn_proto::sync::DesiredState>)> {
        let (revision, stored_applied) = self.node_revisions(node_id).await?;
        let acks = heartbeat
            .applied_revision
            .is_some_and(|applied| applied > stored_applied || !heartbeat.results.is_empty());
        if acks {
            let mut tx = self.begin_write().await?;
            let result = Self::heartbeat_in(&mut tx, node_id, heartbeat).await;
            return Self::finish(tx, result).await;
        }
        Self::record_status(&self.pool, node_id, heartbeat).await?;
        if heartbeat
            .applied_revision
            .is_some_and(|applied| applied >= revision)
            || revision == 0
        {
            return Ok((revision, None));
        }
        Ok((revision, Some(self.desired_state(node_id).await?)))
    }

    /// The heartbeat's UPDATE of the node's row; `NotFound` for an unknown node.
    async fn record_status<'e>(
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        node_id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE nodes SET status = $2, last_heartbeat = $3, cpu_percent = $4, mem_bytes = $5, inventory = $6, usage = $7 WHERE id = $1",
        )
        .bind(node_id)
        .bind(heartbeat.status.as_str())
        .bind(now_ms())
        .bind(heartbeat.cpu_percent)
        .bind(heartbeat.mem_bytes.min(i64::MAX as u64) as i64)
        .bind(json(&heartbeat.inventory))
        .bind(json(&heartbeat.usage))
        .execute(executor)
        .await?;
        if updated.rows_affected() == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn heartbeat_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        node_id: &str,
        heartbeat: &Heartbeat,
    ) -> Result<(u64, Option<edgefn_proto::sync::DesiredState>)> {
        let now = now_ms();
        Self::record_status(&mut **tx, node_id, heartbeat).await?;
        let row = sqlx::query(
            "SELECT revision, document, applied_revision FROM node_desired WHERE node_id = $1",
        )
        .bind(node_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok((0, None)) };
        let revision: i64 = row.try_get("revision")?;
        let stored_applied: i64 = row.try_get("applied_revision")?;
        let applied = heartbeat.applied_revision;
        if let Some(applied) = applied {
            if applied as i64 > stored_applied {
                sqlx::query("UPDATE node_desired SET applied_revision = $2 WHERE node_id = $1")
                    .bind(node_id)
                    .bind(applied as i64)
                    .execute(&mut **tx)
                    .await?;
            }
            for result in &heartbeat.results {
                // Only a change of state is written: most heartbeats repeat the last one.
                sqlx::query(
                    "UPDATE deployment_nodes SET state = $4, error = $5, updated_at = $6 WHERE node_id = $1 AND deployment_id IN \
                     (SELECT id FROM deployments WHERE function_id = $2 AND version = $3 AND state = 'active') \
                     AND (state <> $4 OR COALESCE(error, '') <> COALESCE($5, ''))",
                )
                .bind(node_id)
                .bind(&result.function_id)
                .bind(result.version as i64)
                .bind(result.state.as_str())
                .bind(result.error.clone())
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        if applied.is_some_and(|a| a as i64 >= revision) {
            return Ok((revision as u64, None));
        }
        let mut state: edgefn_proto::sync::DesiredState =
            parse_json(&row.try_get::<String, _>("document")?)?;
        state.revision = revision as u64;
        Ok((revision as u64, Some(state)))
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

// ---- deployments and desired state ----------------------------------------------------

/// Rows per multi-row INSERT (at most 4 parameters each: far below SQLite's 32,766).
const WRITE_BATCH: usize = 500;

/// `($1, $2, …, constant), (…)` for `rows` rows of `per_row` parameters and a trailing
/// constant column.
fn placeholders(rows: usize, per_row: usize, constant: &str) -> String {
    (0..rows)
        .map(|row| {
            let params: Vec<String> = (1..=per_row)
                .map(|i| format!("${}", row * per_row + i))
                .collect();
            format!("({}, {constant})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a recomputation decided for one node.
pub struct Targeted {
    pub node_id: String,
    /// The (function, version) pairs the node must hold.
    pub functions: Vec<(String, u64)>,
    /// Whether its document (and so its revision) changed.
    pub changed: bool,
}

/// Builds the artifact URL nodes download a hash from.
pub type ArtifactUrl<'a> = &'a (dyn Fn(&str) -> String + Send + Sync);

impl Store {
    /// Deploys a ready version to the nodes `selector` matches: the function's previous
    /// active deployment is superseded, every node's desired state is recomputed, and the
    /// matching nodes get a pending entry, all in one transaction.
    pub async fn deploy(
        &self,
        function_id: &str,
        version: u64,
        selector: &str,
        strategy: &str,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<edgefn_proto::api::Deployment> {
        let mut tx = self.begin_write().await?;
        let result: Result<String> = async {
        let state: Option<String> =
            sqlx::query("SELECT state FROM versions WHERE function_id = $1 AND version = $2")
                .bind(function_id)
                .bind(version as i64)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("ready") => {}
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "version {version} is {other}, not ready"
                )));
            }
        }
        sqlx::query("UPDATE deployments SET state = 'superseded' WHERE function_id = $1 AND state = 'active'")
            .bind(function_id)
            .execute(&mut *tx)
            .await?;
        let id = new_id("dep");
        let now = now_ms();
        sqlx::query(
            "INSERT INTO deployments (id, function_id, version, pop_selector, strategy, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6)",
        )
        .bind(&id)
        .bind(function_id)
        .bind(version as i64)
        .bind(selector)
        .bind(strategy)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Nodes whose document changed joined the deployment in the recomputation; the ones
        // that already held this version (a redeploy) join it here, in the state their last
        // heartbeat reported for it (they send results only when those change).
        for node in Self::recompute_desired(&mut tx, artifact_url, None).await? {
            let holds = node.functions.iter().any(|(f, v)| f == function_id && *v == version);
            if holds && !node.changed {
                let inventory: String = sqlx::query("SELECT inventory FROM nodes WHERE id = $1")
                    .bind(&node.node_id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("inventory")?;
                let state = parse_json::<Vec<InventoryItem>>(&inventory)?
                    .iter()
                    .find(|item| item.function_id == function_id && item.version == version)
                    .and_then(|item| edgefn_proto::sync::ItemState::parse(&item.state))
                    .unwrap_or(edgefn_proto::sync::ItemState::Pending);
                sqlx::query("INSERT INTO deployment_nodes (deployment_id, node_id, state, updated_at) VALUES ($1, $2, $3, $4)")
                    .bind(&id)
                    .bind(&node.node_id)
                    .bind(state.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(id)
        }
        .await;
        let id = Self::finish(tx, result).await?;
        self.get_deployment(&id).await
    }

    /// Stops serving a function anywhere: its active deployment ends and nodes drop it.
    pub async fn undeploy(&self, function_id: &str, artifact_url: ArtifactUrl<'_>) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
        let ended = sqlx::query("UPDATE deployments SET state = 'undeployed' WHERE function_id = $1 AND state = 'active'")
            .bind(function_id)
            .execute(&mut *tx)
            .await?;
        if ended.rows_affected() == 0 {
            return Err(StoreError::Conflict("the function is not deployed".into()));
        }
        Self::recompute_desired(&mut tx, artifact_url, None).await?;
        Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// The version to roll back to: `to_version`, or the newest version deployed before the
    /// active one; and the active deployment's selector and strategy.
    pub async fn rollback_target(
        &self,
        function_id: &str,
        to_version: Option<u64>,
    ) -> Result<(u64, String, String)> {
        let active = sqlx::query(
            "SELECT version, pop_selector, strategy FROM deployments WHERE function_id = $1 AND state = 'active'",
        )
        .bind(function_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::Conflict("the function has no active deployment to roll back".into()))?;
        let current: i64 = active.try_get("version")?;
        let selector: String = active.try_get("pop_selector")?;
        let strategy: String = active.try_get("strategy")?;
        let target = match to_version {
            Some(version) => version,
            None => {
                let previous: Option<i64> = sqlx::query(
                    "SELECT version FROM deployments WHERE function_id = $1 AND state = 'superseded' AND version <> $2 \
                     ORDER BY created_at DESC, id DESC LIMIT 1",
                )
                .bind(function_id)
                .bind(current)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| row.try_get("version"))
                .transpose()?;
                previous
                    .ok_or_else(|| StoreError::Conflict("no earlier deployed version".into()))?
                    as u64
            }
        };
        Ok((target, selector, strategy))
    }

    pub async fn get_deployment(&self, id: &str) -> Result<edgefn_proto::api::Deployment> {
        let row = sqlx::query(
            "SELECT id, function_id, version, pop_selector, strategy, state, created_at FROM deployments WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        let nodes = sqlx::query("SELECT node_id, state, error, updated_at FROM deployment_nodes WHERE deployment_id = $1 ORDER BY node_id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|n| {
                let state: String = n.try_get("state")?;
                Ok(edgefn_proto::api::DeploymentNode {
                    node_id: n.try_get("node_id")?,
                    state: edgefn_proto::sync::ItemState::parse(&state)
                        .ok_or_else(|| StoreError::Database(format!("unknown item state {state}")))?,
                    error: n.try_get("error")?,
                    updated_at: n.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let version: i64 = row.try_get("version")?;
        Ok(edgefn_proto::api::Deployment {
            id: row.try_get("id")?,
            function_id: row.try_get("function_id")?,
            version: version as u64,
            pop_selector: row.try_get("pop_selector")?,
            strategy: row.try_get("strategy")?,
            state: row.try_get("state")?,
            created_at: row.try_get("created_at")?,
            nodes,
        })
    }

    /// Recomputes the desired state of every node (or of `only` one) inside `tx`. A node
    /// whose document changed gets the next revision, and a `pending` entry in each active
    /// deployment it now holds and had no entry in (so a node that registers later shows up
    /// in the deployments it joins).
    pub async fn recompute_desired(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        artifact_url: ArtifactUrl<'_>,
        only: Option<&str>,
    ) -> Result<Vec<Targeted>> {
        use crate::desired::{ActiveDeployment, compute};
        let rows = sqlx::query(
            "SELECT d.id, d.function_id, d.version, d.pop_selector, v.sha256, v.kind, v.settings FROM deployments d \
             JOIN versions v ON v.function_id = d.function_id AND v.version = d.version WHERE d.state = 'active' \
             ORDER BY d.function_id",
        )
        .fetch_all(&mut **tx)
        .await?;
        let deployment_ids = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<String, _>("function_id")?,
                    row.try_get::<String, _>("id")?,
                ))
            })
            .collect::<Result<HashMap<String, String>>>()?;
        let deployments = rows
            .iter()
            .map(|row| {
                let selector: String = row.try_get("pop_selector")?;
                let sha256: String = row.try_get("sha256")?;
                let kind: String = row.try_get("kind")?;
                let version: i64 = row.try_get("version")?;
                Ok(ActiveDeployment {
                    // Selectors were validated when submitted; one that no longer parses selects nothing.
                    selector: edgefn_proto::Selector::parse(&selector)
                        .unwrap_or(edgefn_proto::Selector::Bool(false)),
                    function: edgefn_proto::sync::DesiredFunction {
                        function_id: row.try_get("function_id")?,
                        version: version as u64,
                        kind: GuestKind::parse(&kind)
                            .ok_or_else(|| StoreError::Database(format!("unknown kind {kind}")))?,
                        artifact_url: artifact_url(&sha256),
                        sha256,
                        settings: parse_json(&row.try_get::<String, _>("settings")?)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let sql = format!(
            "SELECT {} FROM routes ORDER BY created_at, id",
            Self::ROUTE_COLUMNS
        );
        let routes = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|row| {
                let route = Self::route_from_row(row)?;
                let selector = edgefn_proto::Selector::parse(&route.pop_selector)
                    .unwrap_or(edgefn_proto::Selector::Bool(false));
                Ok((route, selector))
            })
            .collect::<Result<Vec<_>>>()?;
        let nodes = sqlx::query(
            "SELECT n.id, n.labels, d.revision, d.document FROM nodes n LEFT JOIN node_desired d ON d.node_id = n.id \
             WHERE CAST($1 AS TEXT) IS NULL OR n.id = $1",
        )
        .bind(only)
        .fetch_all(&mut **tx)
        .await?;
        let now = now_ms();
        let mut targeted = Vec::with_capacity(nodes.len());
        let mut upserts = Vec::new();
        let mut joins = Vec::new();
        for row in &nodes {
            let node_id: String = row.try_get("id")?;
            let labels: BTreeMap<String, String> =
                parse_json(&row.try_get::<String, _>("labels")?)?;
            let revision: Option<i64> = row.try_get("revision")?;
            let old: Option<String> = row.try_get("document")?;
            // Documents are stored with revision 0, so a change of content is a change of text.
            let state = compute(&node_id, &labels, 0, &deployments, &routes);
            let document = json(&state);
            let changed = old.as_deref() != Some(document.as_str());
            targeted.push(Targeted {
                node_id: node_id.clone(),
                functions: state
                    .functions
                    .iter()
                    .map(|f| (f.function_id.clone(), f.version))
                    .collect(),
                changed,
            });
            if !changed {
                continue;
            }
            for function in &state.functions {
                if let Some(deployment_id) = deployment_ids.get(&function.function_id) {
                    joins.push((deployment_id.clone(), node_id.clone()));
                }
            }
            upserts.push((node_id, revision.unwrap_or(0) + 1, document));
        }
        // Many rows per statement: a deploy to 10,000 nodes is 40 statements, not 20,000
        // round trips.
        for chunk in upserts.chunks(WRITE_BATCH) {
            let values = placeholders(chunk.len(), 4, "0");
            let sql = format!(
                "INSERT INTO node_desired (node_id, revision, document, updated_at, applied_revision) VALUES {values} \
                 ON CONFLICT (node_id) DO UPDATE SET revision = excluded.revision, document = excluded.document, \
                 updated_at = excluded.updated_at"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (node_id, next, document) in chunk {
                query = query.bind(node_id).bind(*next).bind(document).bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        for chunk in joins.chunks(WRITE_BATCH) {
            let values = placeholders(chunk.len(), 3, "'pending'");
            let sql = format!(
                "INSERT INTO deployment_nodes (deployment_id, node_id, updated_at, state) VALUES {values} \
                 ON CONFLICT (deployment_id, node_id) DO NOTHING"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (deployment_id, node_id) in chunk {
                query = query.bind(deployment_id).bind(node_id).bind(now);
            }
            query.execute(&mut **tx).await?;
        }
        Ok(targeted)
    }

    /// Recomputes the desired state of every node (or of `only` one) in a transaction of its
    /// own: after a route change, a registration, or at start-up (which catches up with a
    /// change whose recomputation a crash interrupted).
    pub async fn refresh_desired(
        &self,
        artifact_url: ArtifactUrl<'_>,
        only: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            Self::recompute_desired(&mut tx, artifact_url, only).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// `(node_id, revision, updated_at)` of every desired state written at or after `since`
    /// (Unix ms): what the revision feed passes on to connected nodes.
    pub async fn desired_changed_since(&self, since: i64) -> Result<Vec<(String, u64, i64)>> {
        sqlx::query("SELECT node_id, revision, updated_at FROM node_desired WHERE updated_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                let revision: i64 = row.try_get("revision")?;
                Ok((
                    row.try_get("node_id")?,
                    revision as u64,
                    row.try_get("updated_at")?,
                ))
            })
            .collect()
    }

    /// A node's desired state with its revision; `NotFound` for an unknown node.
    pub async fn desired_state(&self, node_id: &str) -> Result<edgefn_proto::sync::DesiredState> {
        let row = sqlx::query("SELECT revision, document FROM node_desired WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let revision: i64 = row.try_get("revision")?;
        let mut state: edgefn_proto::sync::DesiredState =
            parse_json(&row.try_get::<String, _>("document")?)?;
        state.revision = revision as u64;
        Ok(state)
    }

    /// A node's desired and applied revisions (0 and 0 before it has a desired state).
    pub async fn node_revisions(&self, node_id: &str) -> Result<(u64, u64)> {
        let row =
            sqlx::query("SELECT revision, applied_revision FROM node_desired WHERE node_id = $1")
                .bind(node_id)
                .fetch_optional(&self.pool)
                .await?;
        let Some(row) = row else { return Ok((0, 0)) };
        let revision: i64 = row.try_get("revision")?;
        let applied: i64 = row.try_get("applied_revision")?;
        Ok((revision as u64, applied as u64))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(
            super::placeholders(2, 3, "'pending'"),
            "($1, $2, $3, 'pending'), ($4, $5, $6, 'pending')"
        );
    }
}
