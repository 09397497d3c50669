//! Domains of projects. Claims and verifications run under the desired-state lock
//! (`lock_desired`), so two projects never verify overlapping names at once, and a route
//! change never sees half of a verification.

use edgefn_proto::api::Domain;
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, new_id, now_ms};
use crate::audit::Entry;
use crate::domains::{DomainName, TXT_PREFIX};

/// Domains (verified or not) one project may hold: claims are cheap to make, and each is a
/// row, a DNS lookup when verified, and a host on every node.
pub const MAX_DOMAINS_PER_PROJECT: i64 = 100;

const DOMAIN_COLUMNS: &str = "id, project_id, name, verified, token, created_at, verified_at";

fn domain_from_row(row: &AnyRow) -> Result<Domain> {
    let name: String = row.try_get("name")?;
    let token: String = row.try_get("token")?;
    let verified: i64 = row.try_get("verified")?;
    let base = name.strip_prefix("*.").unwrap_or(&name);
    Ok(Domain {
        id: row.try_get("id")?,
        project: row.try_get("project_id")?,
        txt_record_name: format!("{TXT_PREFIX}.{base}"),
        txt_record_value: format!("edgefn-verification={token}"),
        name,
        verified: verified != 0,
        created_at: row.try_get("created_at")?,
        verified_at: row.try_get("verified_at")?,
    })
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Store {
    /// Every verified claim as `(project, name)`: what routes are checked against.
    pub async fn verified_domains(&self) -> Result<Vec<(String, DomainName)>> {
        Self::verified_domains_in(&mut *self.pool.acquire().await?).await
    }

    pub(super) async fn verified_domains_in(
        executor: &mut sqlx::AnyConnection,
    ) -> Result<Vec<(String, DomainName)>> {
        let rows = sqlx::query("SELECT project_id, name FROM domains WHERE verified = 1")
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get("name")?;
                let parsed = DomainName::parse(&name).map_err(|e| {
                    StoreError::Database(format!("stored domain {name:?} does not parse: {e}"))
                })?;
                Ok((row.try_get("project_id")?, parsed))
            })
            .collect()
    }

    /// Refuses `name` for `project` when another project verified an overlapping name.
    async fn check_unclaimed(tx: &mut Tx, project: &str, name: &DomainName) -> Result<()> {
        let taken = Self::verified_domains_in(&mut *tx)
            .await?
            .into_iter()
            .find(|(owner, other)| owner != project && other.overlaps(name));
        match taken {
            Some((_, other)) => Err(StoreError::Conflict(format!(
                "{name} overlaps {other}, which another project owns"
            ))),
            None => Ok(()),
        }
    }

    /// Marks `id` verified and drops the other projects' claims that overlap it.
    async fn mark_verified(tx: &mut Tx, id: &str, project: &str, name: &DomainName) -> Result<()> {
        sqlx::query("UPDATE domains SET verified = 1, verified_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        let pending =
            sqlx::query("SELECT id, name FROM domains WHERE verified = 0 AND project_id <> $1")
                .bind(project)
                .fetch_all(&mut **tx)
                .await?;
        for row in pending {
            let other: String = row.try_get("name")?;
            if DomainName::parse(&other).is_ok_and(|other| other.overlaps(name)) {
                sqlx::query("DELETE FROM domains WHERE id = $1")
                    .bind(row.try_get::<String, _>("id")?)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Claims `name` for `project`, verified at once when an administrator says so.
    pub async fn claim_domain(
        &self,
        actor: &str,
        project: &str,
        name: &DomainName,
        verified: bool,
        token: &str,
    ) -> Result<Domain> {
        let mut tx = self.begin_write().await?;
        let result: Result<Domain> = async {
            Self::lock_desired(&mut tx).await?;
            Self::check_unclaimed(&mut tx, project, name).await?;
            let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE project_id = $1")
                .bind(project)
                .fetch_one(&mut *tx)
                .await?;
            if held >= MAX_DOMAINS_PER_PROJECT {
                return Err(StoreError::Conflict(format!(
                    "project {project} has {held} domains, the most a project may claim; remove one first"
                )));
            }
            let id = new_id("dom");
            sqlx::query(
                "INSERT INTO domains (id, project_id, name, verified, token, created_at) \
                 VALUES ($1, $2, $3, 0, $4, $5)",
            )
            .bind(&id)
            .bind(project)
            .bind(name.to_string())
            .bind(token)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("project {project} has claimed {name} already"))
                }
                other => other,
            })?;
            if verified {
                Self::mark_verified(&mut tx, &id, project, name).await?;
            }
            let entry = Entry::new(actor, "domain.create", name.to_string())
                .project(project)
                .details(json!({ "verified": verified }));
            self.append_audit(&mut tx, &entry).await?;
            Self::domain_in(&mut *tx, project, &name.to_string()).await
        }
        .await;
        Self::finish(tx, result).await
    }

    async fn domain_in<'e>(
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        project: &str,
        name: &str,
    ) -> Result<Domain> {
        let sql =
            format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE project_id = $1 AND name = $2");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project)
            .bind(name)
            .fetch_optional(executor)
            .await?
            .ok_or(StoreError::NotFound)?;
        domain_from_row(&row)
    }

    /// The domain `name` of `project`, with its verification token.
    pub async fn get_domain(&self, project: &str, name: &str) -> Result<Domain> {
        Self::domain_in(&self.pool, project, name).await
    }

    pub async fn list_domains(&self, project: &str) -> Result<Vec<Domain>> {
        let sql =
            format!("SELECT {DOMAIN_COLUMNS} FROM domains WHERE project_id = $1 ORDER BY name");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(domain_from_row).collect()
    }

    /// Marks a claim verified once its proof held (checked by the caller).
    pub async fn verify_domain(
        &self,
        actor: &str,
        project: &str,
        name: &DomainName,
    ) -> Result<Domain> {
        let mut tx = self.begin_write().await?;
        let result: Result<Domain> = async {
            Self::lock_desired(&mut tx).await?;
            let domain = Self::domain_in(&mut *tx, project, &name.to_string()).await?;
            if !domain.verified {
                Self::check_unclaimed(&mut tx, project, name).await?;
                Self::mark_verified(&mut tx, &domain.id, project, name).await?;
            }
            // Recorded either way: every verification asked for is in the log.
            let entry = Entry::new(actor, "domain.verify", name.to_string())
                .project(project)
                .details(json!({ "already_verified": domain.verified }));
            self.append_audit(&mut tx, &entry).await?;
            Self::domain_in(&mut *tx, project, &name.to_string()).await
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Removes a claim; refused while a route of the project relies on it.
    pub async fn delete_domain(&self, actor: &str, project: &str, name: &DomainName) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            Self::lock_desired(&mut tx).await?;
            let domain = Self::domain_in(&mut *tx, project, &name.to_string()).await?;
            let hosts = sqlx::query("SELECT host FROM routes WHERE project_id = $1")
                .bind(project)
                .fetch_all(&mut *tx)
                .await?;
            for row in hosts {
                let host: String = row.try_get("host")?;
                if DomainName::parse(&host).is_ok_and(|host| name.covers(&host)) {
                    return Err(StoreError::Conflict(format!(
                        "a route of project {project} uses {host}: remove it first"
                    )));
                }
            }
            sqlx::query("DELETE FROM domains WHERE id = $1")
                .bind(&domain.id)
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "domain.delete", name.to_string()).project(project);
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }
}
