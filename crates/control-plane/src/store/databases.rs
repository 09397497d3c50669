//! Edge databases and their schema ledgers: the one home of the SQL about `databases`,
//! `database_changes`, `node_databases` and `database_sync_log`.
//!
//! A change is registered in one transaction under the desired-state lock: the ledger is
//! read, the new SQL dry-run on top of it (`edgefn_edgedb::dry_run`), the next sequence
//! appended with its SHA-256, fingerprint and chain hash, the audit record written and the
//! nodes' desired states recomputed — so two changes never take the same sequence and a
//! node never sees a change the ledger does not hold.

use std::collections::{BTreeMap, HashMap};

use edgefn_proto::api::{
    Database, DatabaseChange, DatabaseRepairAction, NodeDatabase, NodeDatabaseState, NodeSchema,
    SyncLogEntry,
};
use edgefn_proto::sync::{
    DatabaseReport, DatabaseSyncState, DesiredChange, DesiredRepair, NodeStatus,
};
use serde_json::json;
use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::desired::ArtifactUrl;
use super::{Result, Store, StoreError, new_id, now_ms};
use crate::audit::Entry;
use crate::desired::Ledger;

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Apply attempts one report may log.
const MAX_ATTEMPTS_PER_REPORT: usize = 100;

/// An error as stored: at most 2 KiB (a node's message, not a document).
fn bounded(error: &str) -> String {
    crate::audit::truncate(error, 2048).to_string()
}

/// Apply attempts older than this are dropped from the sync log.
pub const SYNC_LOG_RETENTION_MS: i64 = 30 * 24 * 3600 * 1000;

const DATABASE_COLUMNS: &str = "d.id, d.project_id, d.name, d.pop_selector, d.created_at, d.created_by, \
     (SELECT MAX(seq) FROM database_changes c WHERE c.database_id = d.id) AS target_seq, \
     (SELECT fingerprint FROM database_changes c WHERE c.database_id = d.id ORDER BY seq DESC LIMIT 1) AS fingerprint";

fn database_from_row(row: &AnyRow) -> Result<Database> {
    let target: Option<i64> = row.try_get("target_seq")?;
    let fingerprint: Option<String> = row.try_get("fingerprint")?;
    Ok(Database {
        id: row.try_get("id")?,
        project: row.try_get("project_id")?,
        name: row.try_get("name")?,
        pop_selector: row.try_get("pop_selector")?,
        target_seq: target.unwrap_or(0).max(0) as u64,
        fingerprint: fingerprint.unwrap_or_else(edgefn_edgedb::schema::empty_fingerprint),
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

/// Where a node's copy stands, from the node's status, the state it reported and whether
/// it is behind the ledger.
fn node_database_state(node_status: &str, reported: &str, behind: bool) -> NodeDatabaseState {
    if NodeStatus::parse(node_status) == Some(NodeStatus::Offline) {
        return NodeDatabaseState::Offline;
    }
    match DatabaseSyncState::parse(reported) {
        Some(DatabaseSyncState::Drift) => NodeDatabaseState::Drift,
        Some(DatabaseSyncState::Failed) if behind => NodeDatabaseState::Failed,
        _ if !behind => NodeDatabaseState::InSync,
        Some(DatabaseSyncState::Applying) => NodeDatabaseState::Applying,
        _ => NodeDatabaseState::Behind,
    }
}

fn change_from_row(row: &AnyRow) -> Result<DatabaseChange> {
    let seq: i64 = row.try_get("seq")?;
    let destructive: i64 = row.try_get("destructive")?;
    Ok(DatabaseChange {
        seq: seq.max(0) as u64,
        sql: row.try_get("sql")?,
        sha256: row.try_get("sha256")?,
        fingerprint: row.try_get("fingerprint")?,
        chain: row.try_get("chain")?,
        description: row.try_get("description")?,
        destructive: destructive != 0,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

const CHANGE_COLUMNS: &str =
    "seq, sql, sha256, fingerprint, chain, description, destructive, created_at, created_by";

use crate::desired::uses;

impl Store {
    async fn database_in<'e>(
        executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
        project: &str,
        name: &str,
    ) -> Result<Database> {
        let sql = format!(
            "SELECT {DATABASE_COLUMNS} FROM databases d WHERE d.project_id = $1 AND d.name = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project)
            .bind(name)
            .fetch_optional(executor)
            .await?
            .ok_or(StoreError::NotFound)?;
        database_from_row(&row)
    }

    /// Creates database `name` in `project` (selected by `selector`, already validated).
    pub async fn create_database(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        selector: &str,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<Database> {
        let mut tx = self.begin_write().await?;
        let result: Result<Database> = async {
            Self::lock_desired(&mut tx).await?;
            sqlx::query(
                "INSERT INTO databases (id, project_id, name, pop_selector, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id("db"))
            .bind(project)
            .bind(name)
            .bind(selector)
            .bind(now_ms())
            .bind(actor)
            .execute(&mut *tx)
            .await
            .map_err(|e| match StoreError::from(e) {
                StoreError::Conflict(_) => {
                    StoreError::Conflict(format!("project {project} has a database {name} already"))
                }
                other => other,
            })?;
            let entry = Entry::new(actor, "database.create", name)
                .project(project)
                .details(json!({ "pop_selector": selector }));
            self.append_audit(&mut tx, &entry).await?;
            self.recompute_desired(&mut tx, artifact_url, None).await?;
            Self::database_in(&mut *tx, project, name).await
        }
        .await;
        Self::finish(tx, result).await
    }

    pub async fn get_database(&self, project: &str, name: &str) -> Result<Database> {
        Self::database_in(&self.pool, project, name).await
    }

    pub async fn list_databases(&self, project: &str) -> Result<Vec<Database>> {
        let sql = format!(
            "SELECT {DATABASE_COLUMNS} FROM databases d WHERE d.project_id = $1 ORDER BY d.name"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(database_from_row).collect()
    }

    /// Deletes a database; refused while an active deployment of the project uses it,
    /// unless `force`. Nodes stop holding it (their files stay, for an operator to keep or
    /// remove).
    pub async fn delete_database(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        force: bool,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            Self::lock_desired(&mut tx).await?;
            let database = Self::database_in(&mut *tx, project, name).await?;
            if !force {
                let rows = sqlx::query(
                    "SELECT f.name, v.settings FROM deployments d JOIN versions v ON v.function_id = d.function_id AND v.version = d.version \
                     JOIN functions f ON f.id = d.function_id WHERE d.state = 'active' AND f.project_id = $1",
                )
                .bind(project)
                .fetch_all(&mut *tx)
                .await?;
                for row in rows {
                    let settings: edgefn_proto::sync::FunctionSettings =
                        super::parse_json(&row.try_get::<String, _>("settings")?)?;
                    if uses(&settings, name) {
                        let function: String = row.try_get("name")?;
                        return Err(StoreError::Conflict(format!(
                            "function {function} is deployed and uses database {name}: undeploy it first, or delete with force"
                        )));
                    }
                }
            }
            sqlx::query("DELETE FROM database_sync_log WHERE database_id = $1")
                .bind(&database.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM node_databases WHERE database_id = $1")
                .bind(&database.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM database_changes WHERE database_id = $1")
                .bind(&database.id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM databases WHERE id = $1")
                .bind(&database.id)
                .execute(&mut *tx)
                .await?;
            let entry = Entry::new(actor, "database.delete", name)
                .project(project)
                .details(json!({ "force": force, "target_seq": database.target_seq }));
            self.append_audit(&mut tx, &entry).await?;
            self.recompute_desired(&mut tx, artifact_url, None).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// The ledger of a database, in order.
    pub async fn database_changes(&self, database_id: &str) -> Result<Vec<DatabaseChange>> {
        let sql = format!(
            "SELECT {CHANGE_COLUMNS} FROM database_changes WHERE database_id = $1 ORDER BY seq"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(database_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(change_from_row).collect()
    }

    /// Registers a schema change: dry run on top of the ledger, the next sequence, the
    /// audit record and the nodes' desired states, in one transaction. A change the dry
    /// run refuses is `Invalid` with SQLite's message and where.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call from one handler; the arguments are the change"
    )]
    pub async fn add_database_change(
        &self,
        actor: &str,
        project: &str,
        name: &str,
        sql: &str,
        description: &str,
        destructive: bool,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<DatabaseChange> {
        // The dry run (CPU work of up to a few seconds) runs before the write transaction,
        // so it never holds the database's write lock; the transaction then checks that
        // the ledger it ran on is still the ledger (else: try again).
        let database = Self::database_in(&self.pool, project, name).await?;
        let ledger: Vec<String> = sqlx::query_scalar(
            "SELECT sql FROM database_changes WHERE database_id = $1 ORDER BY seq",
        )
        .bind(&database.id)
        .fetch_all(&self.pool)
        .await?;
        let based_on = ledger.len();
        let given = sql.to_string();
        let run = tokio::task::spawn_blocking(move || {
            let ledger: Vec<&str> = ledger.iter().map(String::as_str).collect();
            edgefn_edgedb::dry_run(&ledger, &given, destructive)
        })
        .await
        .map_err(|e| StoreError::Database(format!("dry run: {e}")))?
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut tx = self.begin_write().await?;
        let result: Result<DatabaseChange> = async {
            Self::lock_desired(&mut tx).await?;
            let database = Self::database_in(&mut *tx, project, name).await?;
            let rows = sqlx::query("SELECT chain FROM database_changes WHERE database_id = $1 ORDER BY seq")
                .bind(&database.id)
                .fetch_all(&mut *tx)
                .await?;
            if rows.len() != based_on {
                return Err(StoreError::Conflict(format!(
                    "another change of {name} was registered meanwhile: send this one again"
                )));
            }
            let chain: String = match rows.last() {
                Some(row) => row.try_get("chain")?,
                None => String::new(),
            };
            let seq = rows.len() as u64 + 1;
            let sha256 = edgefn_edgedb::sha256_hex(sql.as_bytes());
            let chain = edgefn_edgedb::chain_hash(&chain, seq, &sha256);
            let now = now_ms();
            sqlx::query(
                "INSERT INTO database_changes (database_id, seq, sql, sha256, fingerprint, chain, description, destructive, created_at, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&database.id)
            .bind(seq as i64)
            .bind(sql)
            .bind(&sha256)
            .bind(&run.fingerprint)
            .bind(&chain)
            .bind(description)
            .bind(i64::from(!run.removes.is_empty()))
            .bind(now)
            .bind(actor)
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new(actor, "database.change", name)
                .project(project)
                .details(json!({
                    "seq": seq,
                    "sha256": sha256,
                    "fingerprint": run.fingerprint,
                    "description": description,
                    "removes": run.removes,
                }));
            self.append_audit(&mut tx, &entry).await?;
            self.recompute_desired(&mut tx, artifact_url, None).await?;
            Ok(DatabaseChange {
                seq,
                sql: sql.to_string(),
                sha256,
                fingerprint: run.fingerprint,
                chain,
                description: description.to_string(),
                destructive: !run.removes.is_empty(),
                created_at: now,
                created_by: actor.to_string(),
            })
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Every database with its ledger (inside a recomputation).
    pub(super) async fn ledgers_in(tx: &mut Tx) -> Result<Vec<Ledger>> {
        let databases =
            sqlx::query("SELECT id, project_id, name, pop_selector FROM databases ORDER BY id")
                .fetch_all(&mut **tx)
                .await?;
        let changes = sqlx::query(
            "SELECT database_id, seq, sql, sha256, fingerprint, chain FROM database_changes ORDER BY database_id, seq",
        )
        .fetch_all(&mut **tx)
        .await?;
        let mut by_database: HashMap<String, Vec<DesiredChange>> = HashMap::new();
        for row in &changes {
            let seq: i64 = row.try_get("seq")?;
            by_database
                .entry(row.try_get("database_id")?)
                .or_default()
                .push(DesiredChange {
                    seq: seq.max(0) as u64,
                    sql: row.try_get("sql")?,
                    sha256: row.try_get("sha256")?,
                    fingerprint: row.try_get("fingerprint")?,
                    chain: row.try_get("chain")?,
                });
        }
        databases
            .iter()
            .map(|row| {
                let id: String = row.try_get("id")?;
                let selector: String = row.try_get("pop_selector")?;
                Ok(Ledger {
                    changes: by_database.remove(&id).unwrap_or_default(),
                    id,
                    project: row.try_get("project_id")?,
                    name: row.try_get("name")?,
                    selector: (!selector.trim().is_empty()).then(|| {
                        edgefn_proto::Selector::parse(&selector)
                            .unwrap_or(edgefn_proto::Selector::Bool(false))
                    }),
                })
            })
            .collect()
    }

    /// The repairs asked for and not yet done: `node → database → repair`.
    pub(super) async fn pending_repairs_in(
        tx: &mut Tx,
        only: Option<&str>,
    ) -> Result<HashMap<String, BTreeMap<String, DesiredRepair>>> {
        let rows = sqlx::query(
            "SELECT node_id, database_id, repair_id, repair_action FROM node_databases \
             WHERE repair_id IS NOT NULL AND (CAST($1 AS TEXT) IS NULL OR node_id = $1)",
        )
        .bind(only)
        .fetch_all(&mut **tx)
        .await?;
        let mut repairs: HashMap<String, BTreeMap<String, DesiredRepair>> = HashMap::new();
        for row in rows {
            let action: String = row.try_get("repair_action")?;
            let Some(action) = DatabaseRepairAction::parse(&action) else {
                continue;
            };
            repairs.entry(row.try_get("node_id")?).or_default().insert(
                row.try_get("database_id")?,
                DesiredRepair {
                    id: row.try_get("repair_id")?,
                    action,
                },
            );
        }
        Ok(repairs)
    }

    /// Asks node `node_id` to repair its copy of `database`: carried in its desired state
    /// until the node reports it done. `accept` needs a copy in drift.
    pub async fn request_database_repair(
        &self,
        actor: &str,
        database: &Database,
        node_id: &str,
        action: DatabaseRepairAction,
        warn_after_ms: i64,
        artifact_url: ArtifactUrl<'_>,
    ) -> Result<NodeDatabase> {
        let mut tx = self.begin_write().await?;
        let result: Result<Database> = async {
            Self::lock_desired(&mut tx).await?;
            let (project, name) = (&database.project, &database.name);
            let database = Self::database_in(&mut *tx, project, name).await?;
            let state: Option<String> = sqlx::query_scalar(
                "SELECT state FROM node_databases WHERE node_id = $1 AND database_id = $2",
            )
            .bind(node_id)
            .bind(&database.id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(state) = state else {
                return Err(StoreError::NotFound);
            };
            if action == DatabaseRepairAction::Accept
                && DatabaseSyncState::parse(&state) != Some(DatabaseSyncState::Drift)
            {
                return Err(StoreError::Conflict(format!(
                    "the node's copy of {name} is not in drift (it reported {state}): there is \
                     no schema of its own to accept"
                )));
            }
            let repair_id = new_id("repair");
            sqlx::query(
                "UPDATE node_databases SET repair_id = $3, repair_action = $4 WHERE node_id = $1 AND database_id = $2",
            )
            .bind(node_id)
            .bind(&database.id)
            .bind(&repair_id)
            .bind(action.as_str())
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new(actor, "database.repair", name)
                .project(project)
                .details(json!({
                    "node_id": node_id,
                    "action": action.as_str(),
                    "repair_id": repair_id,
                }));
            self.append_audit(&mut tx, &entry).await?;
            self.recompute_desired(&mut tx, artifact_url, Some(node_id))
                .await?;
            Ok(database)
        }
        .await;
        let database = Self::finish(tx, result).await?;
        self.database_nodes(&database, warn_after_ms)
            .await?
            .into_iter()
            .find(|n| n.node_id == node_id)
            .ok_or(StoreError::NotFound)
    }

    /// The sequence each node last reported for each database: `node → database → seq`.
    pub(super) async fn applied_seqs_in(
        tx: &mut Tx,
        only: Option<&str>,
    ) -> Result<HashMap<String, BTreeMap<String, u64>>> {
        let rows = sqlx::query(
            "SELECT node_id, database_id, applied_seq FROM node_databases WHERE CAST($1 AS TEXT) IS NULL OR node_id = $1",
        )
        .bind(only)
        .fetch_all(&mut **tx)
        .await?;
        let mut seqs: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
        for row in rows {
            let seq: i64 = row.try_get("applied_seq")?;
            seqs.entry(row.try_get("node_id")?)
                .or_default()
                .insert(row.try_get("database_id")?, seq.max(0) as u64);
        }
        Ok(seqs)
    }

    /// Keeps `node_databases` to the databases a node's new desired state holds: rows for
    /// new ones (pending), none for dropped ones.
    pub(super) async fn target_databases_in(
        tx: &mut Tx,
        node_id: &str,
        held: &[String],
        before: Option<&BTreeMap<String, u64>>,
    ) -> Result<()> {
        let now = now_ms();
        for id in held {
            if before.is_some_and(|b| b.contains_key(id)) {
                continue;
            }
            sqlx::query(
                "INSERT INTO node_databases (node_id, database_id, applied_seq, state, targeted_at, updated_at) \
                 VALUES ($1, $2, 0, 'pending', $3, $3) ON CONFLICT (node_id, database_id) DO NOTHING",
            )
            .bind(node_id)
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        for id in before.into_iter().flat_map(|b| b.keys()) {
            if !held.contains(id) {
                sqlx::query("DELETE FROM node_databases WHERE node_id = $1 AND database_id = $2")
                    .bind(node_id)
                    .bind(id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Takes a heartbeat's database reports: each database's row, and one sync-log row per
    /// apply attempt (older rows beyond the retention go).
    pub async fn record_database_reports(
        &self,
        node_id: &str,
        reports: &[DatabaseReport],
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let now = now_ms();
            let mut logged = false;
            for report in reports {
                let failed = report.state == DatabaseSyncState::Failed;
                let synced = report
                    .attempts
                    .iter()
                    .filter(|a| a.error.is_none())
                    .map(|a| a.at_ms)
                    .max();
                sqlx::query(
                    "UPDATE node_databases SET applied_seq = $3, fingerprint = $4, state = $5, last_error = $6, \
                     failures = CASE WHEN $7 = 1 THEN failures + $8 ELSE 0 END, \
                     last_sync_at = COALESCE($9, last_sync_at), updated_at = $10 \
                     WHERE node_id = $1 AND database_id = $2",
                )
                .bind(node_id)
                .bind(&report.database_id)
                .bind(report.seq.min(i64::MAX as u64) as i64)
                .bind(&report.fingerprint)
                .bind(report.state.as_str())
                .bind(report.error.as_deref().map(bounded))
                .bind(i64::from(failed))
                .bind(report.attempts.iter().filter(|a| a.error.is_some()).count() as i64)
                .bind(synced)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if let Some(repair) = &report.repair {
                    sqlx::query(
                        "UPDATE node_databases SET repair_id = NULL, repair_action = NULL \
                         WHERE node_id = $1 AND database_id = $2 AND repair_id = $3",
                    )
                    .bind(node_id)
                    .bind(&report.database_id)
                    .bind(repair)
                    .execute(&mut *tx)
                    .await?;
                }
                // A node writes only its own rows; a flood of attempts keeps its newest.
                let skip = report.attempts.len().saturating_sub(MAX_ATTEMPTS_PER_REPORT);
                for attempt in report.attempts.iter().skip(skip) {
                    logged = true;
                    sqlx::query(
                        "INSERT INTO database_sync_log (database_id, node_id, from_seq, to_seq, target_seq, duration_ms, error, at) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM node_databases WHERE database_id = $1 AND node_id = $2)",
                    )
                    .bind(&report.database_id)
                    .bind(node_id)
                    .bind(attempt.from_seq.min(i64::MAX as u64) as i64)
                    .bind(attempt.to_seq.min(i64::MAX as u64) as i64)
                    .bind(attempt.target_seq.min(i64::MAX as u64) as i64)
                    .bind(attempt.duration_ms.min(i64::MAX as u64) as i64)
                    .bind(attempt.error.as_deref().map(bounded))
                    .bind(attempt.at_ms)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            if logged {
                sqlx::query("DELETE FROM database_sync_log WHERE at < $1")
                    .bind(now - SYNC_LOG_RETENTION_MS)
                    .execute(&mut *tx)
                    .await?;
            }
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Where each node that holds the database stands; behind for longer than
    /// `warn_after_ms` is a warning.
    pub async fn database_nodes(
        &self,
        database: &Database,
        warn_after_ms: i64,
    ) -> Result<Vec<NodeDatabase>> {
        let rows = sqlx::query(
            "SELECT nd.node_id, n.name, n.status, nd.applied_seq, nd.fingerprint, nd.state, nd.targeted_at, \
             nd.last_sync_at, nd.failures, nd.last_error, nd.updated_at, nd.repair_action \
             FROM node_databases nd JOIN nodes n ON n.id = nd.node_id \
             WHERE nd.database_id = $1 ORDER BY n.name, nd.node_id",
        )
        .bind(&database.id)
        .fetch_all(&self.pool)
        .await?;
        // When each change was registered: a node behind since the first one it lacks.
        let created: Vec<(u64, i64)> = sqlx::query(
            "SELECT seq, created_at FROM database_changes WHERE database_id = $1 ORDER BY seq",
        )
        .bind(&database.id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            let seq: i64 = row.try_get("seq")?;
            Ok((seq.max(0) as u64, row.try_get("created_at")?))
        })
        .collect::<Result<_>>()?;
        let now = now_ms();
        rows.iter()
            .map(|row| {
                let applied = row.try_get::<i64, _>("applied_seq")?.max(0) as u64;
                let status: String = row.try_get("status")?;
                let reported: String = row.try_get("state")?;
                let targeted_at: i64 = row.try_get("targeted_at")?;
                let behind_since = (applied < database.target_seq).then(|| {
                    created
                        .iter()
                        .find(|(seq, _)| *seq == applied + 1)
                        .map_or(targeted_at, |(_, at)| *at)
                        .max(targeted_at)
                });
                let state = node_database_state(&status, &reported, behind_since.is_some());
                let lag_ms = behind_since.map_or(0, |since| (now - since).max(0) as u64);
                Ok(NodeDatabase {
                    node_id: row.try_get("node_id")?,
                    node_name: row.try_get("name")?,
                    state,
                    applied_seq: applied,
                    target_seq: database.target_seq,
                    fingerprint: row.try_get("fingerprint")?,
                    warning: lag_ms as i64 > warn_after_ms,
                    behind_since,
                    lag_ms,
                    last_sync_at: row.try_get("last_sync_at")?,
                    consecutive_failures: row.try_get::<i64, _>("failures")?.max(0) as u64,
                    last_error: row.try_get("last_error")?,
                    reported_at: row.try_get("updated_at")?,
                    pending_repair: row
                        .try_get::<Option<String>, _>("repair_action")?
                        .as_deref()
                        .and_then(DatabaseRepairAction::parse),
                })
            })
            .collect()
    }

    /// The databases node `node_id` holds, with their schema versions (`GET /nodes/{id}`).
    pub async fn node_schemas(&self, node_id: &str) -> Result<Vec<NodeSchema>> {
        let rows = sqlx::query(
            "SELECT d.project_id, d.name, n.status, nd.applied_seq, nd.fingerprint, nd.state, \
             (SELECT MAX(seq) FROM database_changes c WHERE c.database_id = d.id) AS target_seq \
             FROM node_databases nd JOIN databases d ON d.id = nd.database_id JOIN nodes n ON n.id = nd.node_id \
             WHERE nd.node_id = $1 ORDER BY d.project_id, d.name",
        )
        .bind(node_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let applied = row.try_get::<i64, _>("applied_seq")?.max(0) as u64;
                let target = row
                    .try_get::<Option<i64>, _>("target_seq")?
                    .unwrap_or(0)
                    .max(0) as u64;
                let status: String = row.try_get("status")?;
                let reported: String = row.try_get("state")?;
                Ok(NodeSchema {
                    project: row.try_get("project_id")?,
                    database: row.try_get("name")?,
                    state: node_database_state(&status, &reported, applied < target),
                    applied_seq: applied,
                    target_seq: target,
                    fingerprint: row.try_get("fingerprint")?,
                })
            })
            .collect()
    }

    /// The sync log of a database, newest first (at most `limit` rows).
    pub async fn database_sync_log(
        &self,
        database_id: &str,
        node: Option<&str>,
        since: Option<i64>,
        limit: i64,
    ) -> Result<Vec<SyncLogEntry>> {
        let rows = sqlx::query(
            "SELECT node_id, from_seq, to_seq, target_seq, duration_ms, error, at FROM database_sync_log \
             WHERE database_id = $1 AND (CAST($2 AS TEXT) IS NULL OR node_id = $2) AND at >= $3 \
             ORDER BY at DESC LIMIT $4",
        )
        .bind(database_id)
        .bind(node)
        .bind(since.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let count = |row: &AnyRow, column: &str| -> Result<u64> {
            Ok(row.try_get::<i64, _>(column)?.max(0) as u64)
        };
        rows.iter()
            .map(|row| {
                Ok(SyncLogEntry {
                    node_id: row.try_get("node_id")?,
                    from_seq: count(row, "from_seq")?,
                    to_seq: count(row, "to_seq")?,
                    target_seq: count(row, "target_seq")?,
                    duration_ms: count(row, "duration_ms")?,
                    error: row.try_get("error")?,
                    at: row.try_get("at")?,
                })
            })
            .collect()
    }
}
