//! Users, projects and memberships, API tokens, and the control plane's own keys. Every
//! change writes its audit record in the same transaction.

use std::collections::BTreeMap;

use edgefn_proto::identity::{Member, Project, Role, TokenInfo, User};
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, new_id, now_ms};
use crate::audit::Entry;
use crate::auth::tokens::ApiClaims;

/// A user as authentication needs them.
#[derive(Clone, Debug)]
pub struct UserRecord {
    pub id: String,
    pub name: String,
    pub admin: bool,
    pub password_hash: Option<String>,
    pub memberships: BTreeMap<String, Role>,
    pub created_at: i64,
    /// The external issuer whose tokens act as this user (`None`: a local user).
    pub issuer: Option<String>,
}

/// An API token's row with its user, for checking a presented token.
#[derive(Clone, Debug)]
pub struct TokenPrincipal {
    pub user_id: String,
    pub user: String,
    pub admin: bool,
    pub memberships: BTreeMap<String, Role>,
    pub project: Option<String>,
    pub role: Option<Role>,
    pub token_sha256: String,
    pub revoked_at: Option<i64>,
}

fn role_of(text: &str) -> Result<Role> {
    Role::parse(text).ok_or_else(|| StoreError::Database(format!("unknown role {text}")))
}

fn optional_role(text: Option<String>) -> Result<Option<Role>> {
    text.as_deref().map(role_of).transpose()
}

impl Store {
    async fn memberships<'e>(
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        user_id: &str,
    ) -> Result<BTreeMap<String, Role>> {
        sqlx::query("SELECT project_id, role FROM memberships WHERE user_id = $1")
            .bind(user_id)
            .fetch_all(executor)
            .await?
            .iter()
            .map(|row| {
                Ok((
                    row.try_get("project_id")?,
                    role_of(&row.try_get::<String, _>("role")?)?,
                ))
            })
            .collect()
    }

    /// Creates the administrator `name` when there are no users at all. Returns its id, or
    /// `None` when users exist (another replica, or an earlier start, made them).
    pub async fn create_first_admin(&self, name: &str) -> Result<Option<String>> {
        let mut tx = self.begin_write().await?;
        let result: Result<Option<String>> = async {
            let users: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if users > 0 {
                return Ok(None);
            }
            let id = new_id("user");
            sqlx::query(
                "INSERT INTO users (id, name, is_admin, created_at) VALUES ($1, $2, 1, $3)",
            )
            .bind(&id)
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new("system", "user.create", &id)
                .details(json!({ "after": { "name": name, "admin": true }, "bootstrap": true }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(Some(id))
        }
        .await;
        match Self::finish(tx, result).await {
            // Another replica made the first user at the same moment.
            Err(StoreError::Conflict(_)) => Ok(None),
            other => other,
        }
    }

    pub async fn create_user(
        &self,
        actor: &str,
        name: &str,
        password_hash: Option<&str>,
        admin: bool,
        issuer: Option<&str>,
    ) -> Result<User> {
        let id = new_id("user");
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            sqlx::query(
                "INSERT INTO users (id, name, password_hash, is_admin, created_at, issuer) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&id)
            .bind(name)
            .bind(password_hash.map(str::to_string))
            .bind(i64::from(admin))
            .bind(now)
            .bind(issuer.map(str::to_string))
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::Conflict(format!("a user named {name:?} exists")),
                other => other,
            })?;
            let entry = Entry::new(actor, "user.create", &id).details(json!({
                "after": { "name": name, "admin": admin, "password": password_hash.is_some(), "issuer": issuer }
            }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await?;
        Ok(User {
            id,
            name: name.to_string(),
            admin,
            created_at: now,
            projects: BTreeMap::new(),
            issuer: issuer.map(str::to_string),
        })
    }

    fn user_from_row(row: &AnyRow) -> Result<UserRecord> {
        let admin: i64 = row.try_get("is_admin")?;
        Ok(UserRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            admin: admin != 0,
            password_hash: row.try_get("password_hash")?,
            memberships: BTreeMap::new(),
            created_at: row.try_get("created_at")?,
            issuer: row.try_get("issuer")?,
        })
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT id, name, is_admin, password_hash, created_at, issuer FROM users WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut user = Self::user_from_row(&row)?;
        user.memberships = Self::memberships(&self.pool, &user.id).await?;
        Ok(Some(user))
    }

    pub async fn list_users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, name, is_admin, password_hash, created_at, issuer FROM users ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut users = Vec::with_capacity(rows.len());
        for row in &rows {
            let user = Self::user_from_row(row)?;
            users.push(User {
                projects: Self::memberships(&self.pool, &user.id).await?,
                id: user.id,
                name: user.name,
                admin: user.admin,
                created_at: user.created_at,
                issuer: user.issuer,
            });
        }
        Ok(users)
    }

    // ---- projects and members ---------------------------------------------------------

    pub async fn create_project(&self, actor: &str, name: &str) -> Result<Project> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            sqlx::query("INSERT INTO projects (id, name, created_at) VALUES ($1, $1, $2)")
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Conflict(_) => {
                        StoreError::Conflict(format!("a project named {name:?} exists"))
                    }
                    other => other,
                })?;
            let entry = Entry::new(actor, "project.create", name).project(name);
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await?;
        Ok(Project {
            id: name.to_string(),
            name: name.to_string(),
            created_at: now,
        })
    }

    /// Every project's quotas (projects without any are left out).
    pub(super) async fn project_quotas_in(
        executor: &mut sqlx::AnyConnection,
    ) -> Result<std::collections::BTreeMap<String, edgefn_proto::sync::ProjectQuota>> {
        let rows = sqlx::query("SELECT id, quota FROM projects WHERE quota IS NOT NULL")
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| {
                let quota: String = row.try_get("quota")?;
                Ok((row.try_get("id")?, super::parse_json(&quota)?))
            })
            .collect()
    }

    /// Sets a project's quotas on each node (fields left out: the nodes' defaults) and
    /// recomputes the desired states, which carry them.
    pub async fn set_project_quota(
        &self,
        actor: &str,
        project: &str,
        quota: &edgefn_proto::sync::ProjectQuota,
        artifact_url: super::ArtifactUrl<'_>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            Self::lock_desired(&mut tx).await?;
            let updated = sqlx::query("UPDATE projects SET quota = $2 WHERE id = $1")
                .bind(project)
                .bind(super::json(quota))
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            self.recompute_desired(&mut tx, artifact_url, None).await?;
            let entry = Entry::new(actor, "project.quota", project)
                .project(project)
                .details(super::to_value(quota));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// A project's quotas, as set (all fields `None` when never set).
    pub async fn project_quota(&self, project: &str) -> Result<edgefn_proto::sync::ProjectQuota> {
        let row = sqlx::query("SELECT quota FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        match row.try_get::<Option<String>, _>("quota")? {
            Some(text) => super::parse_json(&text),
            None => Ok(Default::default()),
        }
    }

    pub async fn list_projects(&self) -> Result<Vec<Project>> {
        sqlx::query("SELECT id, name, created_at FROM projects ORDER BY name")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(Project {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn project_exists(&self, project: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM projects WHERE id = $1")
            .bind(project)
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Adds `user` to `project` with `role`, or changes their role.
    pub async fn set_member(
        &self,
        actor: &str,
        project: &str,
        user: &str,
        role: Role,
    ) -> Result<Member> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let user_id: String = sqlx::query("SELECT id FROM users WHERE name = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?
                .try_get("id")?;
            let before: Option<String> = sqlx::query(
                "SELECT role FROM memberships WHERE project_id = $1 AND user_id = $2",
            )
            .bind(project)
            .bind(&user_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("role"))
            .transpose()?;
            sqlx::query(
                "INSERT INTO memberships (project_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project_id, user_id) DO UPDATE SET role = excluded.role",
            )
            .bind(project)
            .bind(&user_id)
            .bind(role.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => StoreError::NotFound,
                other => other,
            })?;
            let entry = Entry::new(actor, "member.set", format!("{project}/{user}"))
                .project(project)
                .details(json!({ "before": before.map(|r| json!({ "role": r })), "after": { "role": role } }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await?;
        Ok(Member {
            user: user.to_string(),
            role,
        })
    }

    pub async fn remove_member(&self, actor: &str, project: &str, user: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let row = sqlx::query(
                "SELECT m.user_id, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
                 WHERE m.project_id = $1 AND u.name = $2",
            )
            .bind(project)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let user_id: String = row.try_get("user_id")?;
            let role: String = row.try_get("role")?;
            sqlx::query("DELETE FROM memberships WHERE project_id = $1 AND user_id = $2")
                .bind(project)
                .bind(&user_id)
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "member.remove", format!("{project}/{user}"))
                .project(project)
                .details(json!({ "before": { "role": role } }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    pub async fn list_members(&self, project: &str) -> Result<Vec<Member>> {
        sqlx::query(
            "SELECT u.name, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.project_id = $1 ORDER BY u.name",
        )
        .bind(project)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Member {
                user: row.try_get("name")?,
                role: role_of(&row.try_get::<String, _>("role")?)?,
            })
        })
        .collect()
    }

    // ---- API tokens -------------------------------------------------------------------

    /// Records an issued token (its hash, never the token).
    pub async fn insert_token(
        &self,
        actor: &str,
        claims: &ApiClaims,
        token_sha256: &str,
        description: &str,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            sqlx::query(
                "INSERT INTO api_tokens (id, user_id, project_id, role, token_sha256, description, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&claims.jti)
            .bind(&claims.sub)
            .bind(claims.project.clone())
            .bind(claims.role.map(|r| r.as_str().to_string()))
            .bind(token_sha256)
            .bind(description)
            .bind(now_ms())
            .bind(claims.exp.saturating_mul(1000))
            .execute(&mut *tx)
            .await?;
            let mut entry = Entry::new(actor, "token.create", &claims.jti).details(json!({
                "user": claims.name,
                "project": claims.project,
                "role": claims.role,
                "expires_at": claims.exp.saturating_mul(1000),
                "description": description,
            }));
            entry.project = claims.project.clone();
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// The row of token `id` with its user's roles; `None` for a token never issued here.
    pub async fn token_principal(&self, id: &str) -> Result<Option<TokenPrincipal>> {
        let row = sqlx::query(
            "SELECT t.user_id, t.project_id, t.role, t.token_sha256, t.revoked_at, u.name, u.is_admin \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user_id: String = row.try_get("user_id")?;
        let admin: i64 = row.try_get("is_admin")?;
        Ok(Some(TokenPrincipal {
            memberships: Self::memberships(&self.pool, &user_id).await?,
            user_id,
            user: row.try_get("name")?,
            admin: admin != 0,
            project: row.try_get("project_id")?,
            role: optional_role(row.try_get("role")?)?,
            token_sha256: row.try_get("token_sha256")?,
            revoked_at: row.try_get("revoked_at")?,
        }))
    }

    fn token_from_row(row: &AnyRow) -> Result<(String, TokenInfo)> {
        Ok((
            row.try_get("user_id")?,
            TokenInfo {
                id: row.try_get("id")?,
                user: row.try_get("name")?,
                project: row.try_get("project_id")?,
                role: optional_role(row.try_get("role")?)?,
                description: row.try_get("description")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
            },
        ))
    }

    const TOKEN_COLUMNS: &str = "SELECT t.id, t.user_id, u.name, t.project_id, t.role, t.description, t.created_at, \
        t.expires_at, t.revoked_at FROM api_tokens t JOIN users u ON u.id = t.user_id";

    /// Tokens of `user_id` (every token with `None`), newest first, secrets never included.
    pub async fn list_tokens(&self, user_id: Option<&str>) -> Result<Vec<TokenInfo>> {
        let sql = format!(
            "{} WHERE CAST($1 AS TEXT) IS NULL OR t.user_id = $1 ORDER BY t.created_at DESC, t.id",
            Self::TOKEN_COLUMNS
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id.map(str::to_string))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Self::token_from_row(row).map(|(_, info)| info))
            .collect()
    }

    /// Token `id` and the id of its user.
    pub async fn get_token(&self, id: &str) -> Result<(String, TokenInfo)> {
        let sql = format!("{} WHERE t.id = $1", Self::TOKEN_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::token_from_row(&row)
    }

    /// Revokes token `id`: refused from the next call on.
    pub async fn revoke_token(&self, actor: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let updated = sqlx::query(
                "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::Conflict("the token is already revoked".into()));
            }
            let project: Option<String> =
                sqlx::query("SELECT project_id FROM api_tokens WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("project_id")?;
            let mut entry = Entry::new(actor, "token.revoke", id);
            entry.project = project;
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    // ---- the control plane's keys -----------------------------------------------------

    /// The key named `name` (private key PEM, certificate PEM), made by `make` and stored
    /// when there is none yet. Replicas on one database share it: the first to store wins,
    /// and every other reads what it stored.
    pub async fn key_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> std::result::Result<(String, Option<String>), String>,
    ) -> Result<(String, Option<String>)> {
        if let Some(found) = self.key(name).await? {
            return Ok(found);
        }
        let (private_key, certificate) = make().map_err(StoreError::Startup)?;
        sqlx::query(
            "INSERT INTO cp_keys (name, private_key, certificate, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&private_key)
        .bind(certificate.clone())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.key(name)
            .await?
            .ok_or_else(|| StoreError::Database(format!("the key {name} was not stored")))
    }

    async fn key(&self, name: &str) -> Result<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT private_key, certificate FROM cp_keys WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| Ok((row.try_get("private_key")?, row.try_get("certificate")?)))
            .transpose()
    }
}
