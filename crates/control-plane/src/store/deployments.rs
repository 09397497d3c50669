//! Deployments: deploy, undeploy, rollback targets (every node's desired state is
//! recomputed in the same transaction, by `desired.rs`).

use edgefn_proto::sync::InventoryItem;
use sqlx::Row as _;

use serde_json::json;

use super::desired::ArtifactUrl;
use super::{Result, Store, StoreError, new_id, now_ms, parse_json};
use crate::audit::Entry;

/// What to deploy where.
#[derive(Clone, Copy, Debug)]
pub struct DeploySpec<'a> {
    pub function_id: &'a str,
    pub version: u64,
    /// The POP selector of the nodes that run it.
    pub selector: &'a str,
    pub strategy: &'a str,
}

impl Store {
    /// The project of `function_id`, inside a transaction.
    pub(super) async fn project_of(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        function_id: &str,
    ) -> Result<String> {
        Ok(
            sqlx::query("SELECT project_id FROM functions WHERE id = $1")
                .bind(function_id)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(StoreError::NotFound)?
                .try_get("project_id")?,
        )
    }

    /// Deploys a ready version to the nodes `selector` matches: the function's previous
    /// active deployment is superseded, every node's desired state is recomputed, and the
    /// matching nodes get a pending entry, all in one transaction.
    ///
    /// `action` names it in the audit log (`deploy` or `rollback`), with the selector, the
    /// version, the version it replaces and the nodes chosen.
    pub async fn deploy(
        &self,
        actor: &str,
        action: &'static str,
        spec: &DeploySpec<'_>,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<edgefn_proto::api::Deployment> {
        let DeploySpec {
            function_id,
            version,
            selector,
            strategy,
        } = *spec;
        let mut tx = self.begin_write().await?;
        let result: Result<String> = async {
        // Before reading the active deployment: two deploys of one function queue here.
        Self::lock_desired(&mut tx).await?;
        let state: Option<String> =
            sqlx::query("SELECT state FROM versions WHERE function_id = $1 AND version = $2")
                .bind(function_id)
                .bind(version as i64)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("state"))
                .transpose()?;
        match state.as_deref() {
            // The function exists (its caller checked): the request names a version it
            // does not have, which is a conflict with its state, not a missing resource.
            None => {
                return Err(StoreError::Conflict(format!(
                    "the function has no version {version}"
                )));
            }
            Some("ready") => {}
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "version {version} is {other}, not ready"
                )));
            }
        }
        let previous: Option<i64> = sqlx::query("SELECT version FROM deployments WHERE function_id = $1 AND state = 'active'")
            .bind(function_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("version"))
            .transpose()?;
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
        let targeted = self.recompute_desired(&mut tx, artifact_url, None).await?;
        let mut chosen = Vec::new();
        for node in targeted {
            if node.functions.iter().any(|(f, v)| f == function_id && *v == version) {
                chosen.push(node.node_id.clone());
            }
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
                    .map(|item| item.state)
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
        let project = Self::project_of(&mut tx, function_id).await?;
        let entry = Entry::new(actor, action, function_id).project(project).details(json!({
            "deployment": id,
            "version": version,
            "previous_version": previous,
            "pop_selector": selector,
            "strategy": strategy,
            "nodes": chosen,
        }));
        self.append_audit(&mut tx, &entry).await?;
        Ok(id)
        }
        .await;
        let id = Self::finish(tx, result).await?;
        self.get_deployment(&id).await
    }

    /// Stops serving a function anywhere: its active deployment ends and nodes drop it.
    pub async fn undeploy(
        &self,
        actor: &str,
        function_id: &str,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
        Self::lock_desired(&mut tx).await?;
        let active: Option<i64> = sqlx::query("SELECT version FROM deployments WHERE function_id = $1 AND state = 'active'")
            .bind(function_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get("version"))
            .transpose()?;
        let Some(active) = active else {
            return Err(StoreError::Conflict("the function is not deployed".into()));
        };
        sqlx::query("UPDATE deployments SET state = 'undeployed' WHERE function_id = $1 AND state = 'active'")
            .bind(function_id)
            .execute(&mut *tx)
            .await?;
        self.recompute_desired(&mut tx, artifact_url, None).await?;
        let project = Self::project_of(&mut tx, function_id).await?;
        let entry = Entry::new(actor, "undeploy", function_id)
            .project(project)
            .details(json!({ "before": { "version": active } }));
        self.append_audit(&mut tx, &entry).await?;
        Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// An operator's retry of the active deployment `id`: its failed nodes go back to
    /// pending, failed compilations of its artifact are forgotten, and every node holding
    /// it gets a desired state that makes it load the version again. Returns the function.
    pub async fn retry_deployment(
        &self,
        actor: &str,
        id: &str,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<String> {
        let mut tx = self.begin_write().await?;
        let result: Result<String> = async {
            Self::lock_desired(&mut tx).await?;
            let row = sqlx::query(
                "SELECT d.function_id, d.state, v.sha256 FROM deployments d \
                 JOIN versions v ON v.function_id = d.function_id AND v.version = d.version \
                 WHERE d.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let function_id: String = row.try_get("function_id")?;
            let state: String = row.try_get("state")?;
            if state != "active" {
                return Err(StoreError::Conflict(format!(
                    "the deployment is {state}; only the active one can be retried"
                )));
            }
            sqlx::query("UPDATE deployments SET retries = retries + 1 WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let failed = sqlx::query(
                "UPDATE deployment_nodes SET state = 'pending', error = NULL, updated_at = $2 \
                 WHERE deployment_id = $1 AND state = 'failed'",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if let Some(sha256) = row.try_get::<Option<String>, _>("sha256")? {
                sqlx::query("DELETE FROM precompiled WHERE wasm_sha256 = $1 AND state = 'failed'")
                    .bind(sha256)
                    .execute(&mut *tx)
                    .await?;
            }
            self.recompute_desired(&mut tx, artifact_url, None).await?;
            let project = Self::project_of(&mut tx, &function_id).await?;
            let entry = Entry::new(actor, "deployment.retry", id)
                .project(project)
                .details(json!({ "function": function_id, "failed_nodes": failed }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(function_id)
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
}
