//! Every node's desired state, the durable queue of node sync: the one home of the SQL
//! about `node_desired` and revisions. What a node's document holds is the pure rule of
//! `crate::desired`; here it is recomputed (under one lock), stored with the next revision,
//! read back and acked.

use std::collections::{BTreeMap, HashMap};

use edgefn_proto::GuestKind;
use edgefn_proto::sync::DesiredState;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, json, now_ms, parse_json};

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

/// The PostgreSQL advisory-lock key that serializes every recomputation of desired states.
const DESIRED_LOCK: i64 = 0x6564_6765_666e_0002;

/// Builds the artifact URL nodes download a hash from.
pub type ArtifactUrl<'a> = &'a (dyn Fn(&str) -> String + Send + Sync);

/// A stored document with the revision of its row (documents are stored with revision 0,
/// so that a change of content is a change of text).
fn document_of(row: &AnyRow) -> Result<DesiredState> {
    let revision: i64 = row.try_get("revision")?;
    let mut state: DesiredState = parse_json(&row.try_get::<String, _>("document")?)?;
    state.revision = revision as u64;
    Ok(state)
}

impl Store {
    /// Serializes the transactions that change desired states, until `tx` ends.
    ///
    /// On PostgreSQL (READ COMMITTED) two deploys running at once would both read revision r
    /// and write r + 1 — the second document without the first change, which nodes that
    /// applied r + 1 would never see. A transaction-scoped advisory lock taken before the
    /// first read makes them queue, on one replica or several: each statement after the
    /// lock sees everything the previous holder committed. Row locks would not do: the
    /// conflict is between a node's row and the deployments and routes it is computed from.
    /// Deploys are rare next to heartbeats, which never take it. SQLite needs nothing: its
    /// write transactions already hold the database's write lock (`BEGIN IMMEDIATE`). Take
    /// it before [`Self::append_audit`]'s lock, never after (one order, no deadlock).
    pub(super) async fn lock_desired(tx: &mut sqlx::Transaction<'static, sqlx::Any>) -> Result<()> {
        if tx.backend_name() == "PostgreSQL" {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(DESIRED_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Recomputes the desired state of every node (or of `only` one) inside `tx`. A node
    /// whose document changed gets the next revision, and a `pending` entry in each active
    /// deployment it now holds and had no entry in (so a node that registers later shows up
    /// in the deployments it joins).
    pub async fn recompute_desired(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        artifact_url: ArtifactUrl<'_>,
        only: Option<&str>,
    ) -> Result<Vec<Targeted>> {
        use crate::desired::{ActiveDeployment, compute};
        Self::lock_desired(tx).await?;
        let rows = sqlx::query(
            "SELECT d.id, d.function_id, d.version, d.pop_selector, d.retries, v.sha256, v.kind, v.settings, f.name, f.project_id \
             FROM deployments d JOIN versions v ON v.function_id = d.function_id AND v.version = d.version \
             JOIN functions f ON f.id = d.function_id WHERE d.state = 'active' ORDER BY d.function_id",
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
                let project: String = row.try_get("project_id")?;
                let mut settings: edgefn_proto::sync::FunctionSettings =
                    parse_json(&row.try_get::<String, _>("settings")?)?;
                // The quota tenant is the project, whatever an older version stored.
                settings.tenant = project.clone();
                Ok(ActiveDeployment {
                    name: row.try_get("name")?,
                    project,
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
                        settings,
                        retry: row.try_get::<i64, _>("retries")?.max(0) as u64,
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
        let domains = Self::verified_domains_in(tx).await?;
        let quotas = Self::project_quotas_in(tx).await?;
        let platform = self.platform_domain();
        let hosts = crate::desired::Hosts {
            platform_domain: &platform,
            verified: &domains,
            quotas: &quotas,
        };
        let ledgers = Self::ledgers_in(tx).await?;
        let applied_seqs = Self::applied_seqs_in(tx, only).await?;
        let repairs = Self::pending_repairs_in(tx, only).await?;
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
            let mut state = compute(&node_id, &labels, 0, &deployments, &routes, &hosts);
            let applied = applied_seqs.get(&node_id);
            state.databases = crate::desired::databases_of(
                &state,
                &labels,
                &ledgers,
                applied,
                repairs.get(&node_id),
            );
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
            let held: Vec<String> = state.databases.iter().map(|d| d.id.clone()).collect();
            Self::target_databases_in(tx, &node_id, &held, applied).await?;
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
            self.recompute_desired(&mut tx, artifact_url, only).await?;
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
    pub async fn desired_state(&self, node_id: &str) -> Result<DesiredState> {
        let row = sqlx::query("SELECT revision, document FROM node_desired WHERE node_id = $1")
            .bind(node_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        document_of(&row)
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

    /// Takes a node's ack (`applied`, when it says one; revisions never go back) inside a
    /// heartbeat's transaction, and answers the node's revision and its desired state when
    /// the node has not applied it yet. `(0, None)` before the node has a desired state.
    pub(super) async fn ack_desired(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        node_id: &str,
        applied: Option<u64>,
    ) -> Result<(u64, Option<DesiredState>)> {
        let row = sqlx::query(
            "SELECT revision, document, applied_revision FROM node_desired WHERE node_id = $1",
        )
        .bind(node_id)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok((0, None)) };
        let revision: i64 = row.try_get("revision")?;
        let stored_applied: i64 = row.try_get("applied_revision")?;
        if let Some(applied) = applied
            && applied as i64 > stored_applied
        {
            sqlx::query("UPDATE node_desired SET applied_revision = $2 WHERE node_id = $1")
                .bind(node_id)
                .bind(applied as i64)
                .execute(&mut **tx)
                .await?;
        }
        if applied.is_some_and(|a| a as i64 >= revision) {
            return Ok((revision as u64, None));
        }
        Ok((revision as u64, Some(document_of(&row)?)))
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
