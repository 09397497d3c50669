//! Functions and their versions.

use edgefn_proto::GuestKind;
use edgefn_proto::api::{Function, Version, VersionState};
use edgefn_proto::sync::FunctionSettings;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use serde_json::json;

use super::{Completion, Result, Store, StoreError, new_id, now_ms, parse_json, to_value};
use crate::audit::Entry;

impl Store {
    /// Creates a function and its version 1 (pending) in one transaction, in an existing
    /// project.
    pub async fn create_function(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        settings: &FunctionSettings,
    ) -> Result<(Function, u64)> {
        let id = new_id("fn");
        let now = now_ms();
        let settings_json = super::json(settings);
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
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
            .map_err(|e| match &e {
                sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
                    StoreError::Conflict(format!("no project {project:?}"))
                }
                _ => match StoreError::from(e) {
                    StoreError::Conflict(_) => StoreError::Conflict(format!(
                        "a function named {name:?} exists in project {project:?}"
                    )),
                    other => other,
                },
            })?;
            sqlx::query("INSERT INTO versions (function_id, version, state, settings, created_at) VALUES ($1, 1, 'pending', $2, $3)")
                .bind(&id)
                .bind(&settings_json)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "function.create", &id)
                .project(project)
                .details(json!({ "after": { "name": name, "settings": to_value(settings) }, "version": 1 }));
            self.append_audit(&mut tx, &entry).await?;
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
    pub async fn delete_function(&self, actor: &str, id: &str, force: bool) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let result: Result<Vec<String>> = async {
            let function = sqlx::query("SELECT project_id, name, settings FROM functions WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let project: String = function.try_get("project_id")?;
            let name: String = function.try_get("name")?;
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
            let entry = Entry::new(actor, "function.delete", id)
                .project(&project)
                .details(json!({ "before": { "name": name, "routes": routes, "deployed": deployed > 0 }, "force": force }));
            self.append_audit(&mut tx, &entry).await?;
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
    /// Replaces a function's settings (for the versions created after).
    pub async fn update_function_settings(
        &self,
        actor: &str,
        function_id: &str,
        settings: &FunctionSettings,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let row = sqlx::query("SELECT project_id, settings FROM functions WHERE id = $1")
                .bind(function_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let before: serde_json::Value = parse_json(&row.try_get::<String, _>("settings")?)?;
            sqlx::query("UPDATE functions SET settings = $2 WHERE id = $1")
                .bind(function_id)
                .bind(super::json(settings))
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "function.settings", function_id)
                .project(row.try_get::<String, _>("project_id")?)
                .details(json!({ "before": before, "after": to_value(settings) }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// A new pending version with the function's settings.
    pub async fn create_version(&self, actor: &str, function_id: &str) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let result: Result<u64> = async {
        let row = sqlx::query("SELECT next_version, settings, project_id FROM functions WHERE id = $1")
            .bind(function_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let version: i64 = row.try_get("next_version")?;
        let settings_json: String = row.try_get("settings")?;
        sqlx::query("UPDATE functions SET next_version = next_version + 1 WHERE id = $1 AND next_version = $2")
            .bind(function_id)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO versions (function_id, version, state, settings, created_at) VALUES ($1, $2, 'pending', $3, $4)")
            .bind(function_id)
            .bind(version)
            .bind(&settings_json)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let entry = Entry::new(actor, "version.create", format!("{function_id}/{version}"))
            .project(row.try_get::<String, _>("project_id")?);
        self.append_audit(&mut tx, &entry).await?;
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
        actor: &str,
        function_id: &str,
        version: u64,
        completion: Completion,
    ) -> Result<()> {
        let now = now_ms();
        let details = match &completion {
            Completion::Ready { sha256, size, kind } => {
                json!({ "after": { "state": "ready", "sha256": sha256, "size": size, "kind": kind.as_str() } })
            }
            Completion::Invalid { error } => {
                json!({ "after": { "state": "invalid", "error": error } })
            }
        };
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
        let mut tx = self.begin_write().await?;
        let result: Result<bool> = async {
            if query.execute(&mut *tx).await?.rows_affected() == 0 {
                return Ok(false);
            }
            let project: String = sqlx::query("SELECT project_id FROM functions WHERE id = $1")
                .bind(function_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("project_id")?;
            let entry = Entry::new(
                actor,
                "version.complete",
                format!("{function_id}/{version}"),
            )
            .project(project)
            .details(details);
            self.append_audit(&mut tx, &entry).await?;
            Ok(true)
        }
        .await;
        if Self::finish(tx, result).await? {
            return Ok(());
        }
        self.get_version(function_id, version).await?;
        Err(StoreError::Conflict(
            "the version is no longer pending; versions are immutable once uploaded".into(),
        ))
    }

    /// The projects with a version made of the artifact with this hash.
    pub async fn artifact_projects(&self, sha256: &str) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT DISTINCT f.project_id FROM versions v JOIN functions f ON f.id = v.function_id WHERE v.sha256 = $1",
        )
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok(row.try_get("project_id")?))
        .collect()
    }

    /// Whether any version references the artifact with this hash.
    pub async fn artifact_referenced(&self, sha256: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM versions WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }
}
