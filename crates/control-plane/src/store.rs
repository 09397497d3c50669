//! The metadata store: domain methods over SQLite or PostgreSQL. Both run the same SQL
//! through sqlx's `Any` driver (`$N` placeholders, `ON CONFLICT`, `RETURNING` and JSON as
//! text work on both); schema migrations are kept per backend in `migrations/`. Database
//! errors are mapped to domain errors here, and nowhere else. The only SQL built at run
//! time joins constant column lists (`AssertSqlSafe`); values are always bound.

use edgefn_proto::GuestKind;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

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
    /// The request holds something the store refuses (a schema change the dry run failed).
    #[error("{0}")]
    Invalid(String),
    /// A credential the store checks (a bootstrap token) does not hold.
    #[error("{0}")]
    Refused(String),
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
    /// Bounds how many refusal records this process writes per second.
    refusals: std::sync::Arc<audit::RefusalLimiter>,
    /// Under which domain projects get their platform hosts (part of the desired-state
    /// rule: `{function}.{project}.{platform}` reaches a function).
    platform_domain: std::sync::Arc<std::sync::RwLock<std::sync::Arc<str>>>,
}

pub use crate::clock::{new_id, now_ms};

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Database(format!("corrupt JSON column: {e}")))
}

/// `value` as JSON, for audit details.
fn to_value<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
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
        Self::connect_as(url, None).await
    }

    /// Like [`Self::connect`]; with `owner_url` (PostgreSQL), the schema is migrated as that
    /// role, which then grants `url`'s role what the control plane needs and nothing more on
    /// the audit log (SELECT and INSERT: no UPDATE, DELETE or TRUNCATE, and not owning it,
    /// no way to disable its triggers).
    pub async fn connect_as(url: &str, owner_url: Option<&str>) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = Self::backend_of(url)?;
        let pool = Self::open_pool(url, backend).await?;
        match owner_url {
            None => {
                Self::migrate(&pool, backend).await?;
                if backend == Backend::Postgres {
                    Self::warn_if_audit_owner(&pool).await;
                }
            }
            Some(owner_url) => {
                if backend != Backend::Postgres || Self::backend_of(owner_url)? != Backend::Postgres
                {
                    return Err(StoreError::Startup(
                        "--database-owner-url is for PostgreSQL: both URLs must be postgres://"
                            .into(),
                    ));
                }
                let owner = Self::open_pool(owner_url, backend).await?;
                Self::migrate(&owner, backend).await?;
                Self::grant_runtime_role(&owner, &pool).await?;
                owner.close().await;
            }
        }
        Ok(Self {
            pool,
            backend,
            refusals: Default::default(),
            platform_domain: std::sync::Arc::new(std::sync::RwLock::new(
                crate::domains::DEFAULT_PLATFORM_DOMAIN.into(),
            )),
        })
    }

    /// Sets the platform domain (`--platform-domain`); the same on every replica.
    pub fn set_platform_domain(&self, domain: &str) {
        *self
            .platform_domain
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = domain.into();
    }

    pub fn platform_domain(&self) -> std::sync::Arc<str> {
        self.platform_domain
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn backend_of(url: &str) -> Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(StoreError::Startup(format!(
                "unsupported database url {url:?}: use sqlite:… or postgres://…"
            )))
        }
    }

    async fn open_pool(url: &str, backend: Backend) -> Result<AnyPool> {
        AnyPoolOptions::new()
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
            .map_err(|e| StoreError::Startup(format!("cannot connect to the database: {e}")))
    }

    async fn migrate(pool: &AnyPool, backend: Backend) -> Result<()> {
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator.run(pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::VersionMissing(version) => StoreError::Startup(format!(
                "the database schema is newer than this binary (it has migration {version}, unknown here): \
                 upgrade edgefn-control-plane"
            )),
            other => StoreError::Startup(format!("cannot migrate the database schema: {other}")),
        })
    }

    /// As the schema's owner: lets `runtime`'s role use every table, but only read and
    /// append to the audit log.
    async fn grant_runtime_role(owner: &AnyPool, runtime: &AnyPool) -> Result<()> {
        use sqlx::Row as _;
        let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
        let role: String = sqlx::query("SELECT CAST(current_user AS TEXT) AS name")
            .fetch_one(runtime)
            .await?
            .try_get("name")?;
        let schema: String = sqlx::query("SELECT CAST(current_schema() AS TEXT) AS name")
            .fetch_one(owner)
            .await?
            .try_get("name")?;
        let (role, schema) = (quote(&role), quote(&schema));
        for statement in [
            format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
            format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}"
            ),
            format!("REVOKE UPDATE, DELETE, TRUNCATE ON {schema}.audit_log FROM {role}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(owner)
                .await
                .map_err(|e| {
                    StoreError::Startup(format!(
                        "cannot grant the runtime role its privileges: {e}"
                    ))
                })?;
        }
        Ok(())
    }

    /// Says so when the control plane's role could switch the audit log's triggers off.
    async fn warn_if_audit_owner(pool: &AnyPool) {
        use sqlx::Row as _;
        let strong = sqlx::query(
            "SELECT CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
             OR pg_has_role(current_user, (SELECT tableowner FROM pg_tables WHERE tablename = 'audit_log' \
             AND schemaname = current_schema()), 'USAGE') THEN 1 ELSE 0 END AS strong",
        )
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get::<i32, _>("strong"));
        if let Ok(1) = strong {
            tracing::warn!(
                "the database role owns the audit log (or is a superuser) and could disable its triggers; \
                 run the control plane as a role that does not, with --database-owner-url for migrations"
            );
        }
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
}

mod audit;
mod databases;
mod deployments;
mod desired;
mod domains;
mod functions;
mod identity;
mod nodes;
mod precompiled;
mod routes;

pub use audit::{AuditFilter, REFUSALS_PER_SECOND};
pub use deployments::DeploySpec;
pub use desired::{ArtifactUrl, Targeted};
pub use domains::MAX_DOMAINS_PER_PROJECT;
pub use identity::{TokenPrincipal, UserRecord};
pub use nodes::{Enrollment, NodeCredentials};
pub use precompiled::{EngineProfile, Precompiled};
