//! Routes.

use edgefn_proto::api::{Route, RouteInput};
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, new_id, now_ms, to_value};
use crate::audit::Entry;

impl Store {
    pub(super) fn route_from_row(row: &AnyRow) -> Result<Route> {
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

    pub(super) const ROUTE_COLUMNS: &str = "id, project_id, host, path, methods, function_id, version, priority, pop_selector, created_at";

    /// Creates (`id` = None) or replaces a route; the function must exist.
    pub async fn put_route(
        &self,
        actor: &str,
        id: Option<&str>,
        input: &RouteInput,
    ) -> Result<Route> {
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
        let mut tx = self.begin_write().await?;
        let result: Result<Route> = async {
            let (route_id, before) = match id {
                None => {
                    let id = new_id("rt");
                    let insert = sqlx::query(
                        "INSERT INTO routes (id, project_id, host, path, methods, function_id, version, priority, pop_selector, created_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    );
                    fields(insert.bind(id.clone()))
                        .bind(now_ms())
                        .execute(&mut *tx)
                        .await
                        .map_err(conflict)?;
                    (id, None)
                }
                Some(id) => {
                    let before = Self::route_in(&mut *tx, id).await?;
                    let update = sqlx::query(
                        "UPDATE routes SET project_id = $2, host = $3, path = $4, methods = $5, function_id = $6, version = $7, \
                         priority = $8, pop_selector = $9 WHERE id = $1",
                    );
                    fields(update.bind(id.to_string()))
                        .execute(&mut *tx)
                        .await
                        .map_err(conflict)?;
                    (id.to_string(), Some(before))
                }
            };
            let after = Self::route_in(&mut *tx, &route_id).await?;
            let entry = match &before {
                None => Entry::new(actor, "route.create", &route_id)
                    .details(json!({ "after": to_value(&after) })),
                Some(before) => Entry::new(actor, "route.update", &route_id)
                    .details(json!({ "before": to_value(before), "after": to_value(&after) })),
            }
            .project(&after.project);
            self.append_audit(&mut tx, &entry).await?;
            Ok(after)
        }
        .await;
        Self::finish(tx, result).await
    }

    async fn route_in<'e>(
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        id: &str,
    ) -> Result<Route> {
        let sql = format!("SELECT {} FROM routes WHERE id = $1", Self::ROUTE_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(executor)
            .await?
            .ok_or(StoreError::NotFound)?;
        Self::route_from_row(&row)
    }

    pub async fn get_route(&self, id: &str) -> Result<Route> {
        Self::route_in(&self.pool, id).await
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

    pub async fn delete_route(&self, actor: &str, id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let before = Self::route_in(&mut *tx, id).await?;
            sqlx::query("DELETE FROM routes WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "route.delete", id)
                .project(&before.project)
                .details(json!({ "before": to_value(&before) }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }
}
