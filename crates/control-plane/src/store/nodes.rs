//! Nodes: bootstrap tokens, enrollment, certificates and revocation, heartbeats, the
//! offline sweep.

use std::collections::BTreeMap;

use edgefn_proto::api::Node;
use edgefn_proto::sync::{Heartbeat, InventoryItem, NodeStatus};
use sqlx::Row as _;
use sqlx::any::AnyRow;

use serde_json::json;

use super::{Result, Store, StoreError, json, now_ms, parse_json};
use crate::audit::Entry;

/// What the node listener checks of a node when it connects.
#[derive(Clone, Debug)]
pub struct NodeCredentials {
    pub cert_serial: Option<String>,
    pub revoked_at: Option<i64>,
    /// The certificate a renewal replaced, and until when (Unix ms) it still gets in.
    pub previous_serial: Option<String>,
    pub previous_until: Option<i64>,
}

/// How long a renewed node's previous certificate stays valid if the node never uses the
/// new one (its answer lost, the node crashed before saving it).
pub const RENEWAL_GRACE_MS: i64 = 24 * 3600 * 1000;

/// A node enrolling: who it says it is, and the certificate it was just issued.
pub struct Enrollment<'a> {
    pub node_id: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub address: &'a str,
    pub cert_serial: &'a str,
    pub cert_expires_at: i64,
    pub peer: Option<String>,
}

impl Store {
    /// Records a one-time bootstrap token (its hash) that enrolls one node until
    /// `expires_at`.
    pub async fn create_bootstrap_token(
        &self,
        actor: &str,
        id: &str,
        token_sha256: &str,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            sqlx::query(
                "INSERT INTO bootstrap_tokens (id, token_sha256, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(token_sha256)
            .bind(actor)
            .bind(now_ms())
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new(actor, "node.bootstrap_token", id)
                .details(json!({ "expires_at": expires_at }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Whether the bootstrap token whose hash is `bootstrap_sha256` could enroll a node now.
    pub async fn bootstrap_token_usable(&self, bootstrap_sha256: &str) -> Result<bool> {
        Ok(sqlx::query(
            "SELECT 1 FROM bootstrap_tokens WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(bootstrap_sha256)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }

    /// Enrolls a node with the bootstrap token whose hash is `bootstrap_sha256`, using the
    /// token up in the same transaction. `Refused` when the token is unknown, used or
    /// expired.
    pub async fn enroll_node(&self, bootstrap_sha256: &str, node: &Enrollment<'_>) -> Result<()> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let token = sqlx::query(
                "UPDATE bootstrap_tokens SET used_at = $2, node_id = $3 \
                 WHERE token_sha256 = $1 AND used_at IS NULL AND expires_at > $2 RETURNING id",
            )
            .bind(bootstrap_sha256)
            .bind(now)
            .bind(node.node_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(token) = token else {
                return Err(StoreError::Refused(
                    "the bootstrap token is unknown, used or expired".into(),
                ));
            };
            let token_id: String = token.try_get("id")?;
            sqlx::query(
                "INSERT INTO nodes (id, name, labels, address, status, registered_at, inventory, cert_serial, cert_expires_at) \
                 VALUES ($1, $2, $3, $4, 'syncing', $5, '[]', $6, $7)",
            )
            .bind(node.node_id)
            .bind(node.name)
            .bind(json(node.labels))
            .bind(node.address)
            .bind(now)
            .bind(node.cert_serial)
            .bind(node.cert_expires_at)
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new(&format!("bootstrap:{token_id}"), "node.enroll", node.node_id)
                .details(json!({
                    "after": { "name": node.name, "labels": node.labels, "address": node.address },
                    "certificate": { "serial": node.cert_serial, "expires_at": node.cert_expires_at },
                    "peer": node.peer,
                }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// The certificate serial a node must present, and whether it was revoked; `None` for
    /// a node that is not enrolled.
    pub async fn node_credentials(&self, node_id: &str) -> Result<Option<NodeCredentials>> {
        let row = sqlx::query(
            "SELECT cert_serial, revoked_at, prev_cert_serial, prev_cert_until FROM nodes WHERE id = $1",
        )
        .bind(node_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(NodeCredentials {
                cert_serial: row.try_get("cert_serial")?,
                revoked_at: row.try_get("revoked_at")?,
                previous_serial: row.try_get("prev_cert_serial")?,
                previous_until: row.try_get("prev_cert_until")?,
            })
        })
        .transpose()
    }

    /// The node connected with its new certificate: the previous one no longer gets in.
    pub async fn forget_previous_certificate(&self, node_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE nodes SET prev_cert_serial = NULL, prev_cert_until = NULL \
             WHERE id = $1 AND prev_cert_serial IS NOT NULL",
        )
        .bind(node_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A node's new certificate. The old one still gets in until the node has used the new
    /// one once, or for [`RENEWAL_GRACE_MS`].
    pub async fn renew_node_certificate(
        &self,
        node_id: &str,
        serial: &str,
        expires_at: i64,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let old =
                sqlx::query("SELECT cert_serial FROM nodes WHERE id = $1 AND revoked_at IS NULL")
                    .bind(node_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let old: Option<String> = old.try_get("cert_serial")?;
            sqlx::query(
                "UPDATE nodes SET cert_serial = $2, cert_expires_at = $3, prev_cert_serial = $4, \
                 prev_cert_until = $5 WHERE id = $1",
            )
            .bind(node_id)
            .bind(serial)
            .bind(expires_at)
            .bind(old.clone())
            .bind(now_ms() + RENEWAL_GRACE_MS)
            .execute(&mut *tx)
            .await?;
            let entry = Entry::new(&format!("node:{node_id}"), "node.certificate", node_id)
                .details(json!({
                    "before": { "serial": old },
                    "after": { "serial": serial, "expires_at": expires_at },
                }));
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Records a node token issued to `node_id`.
    pub async fn record_node_token(&self, node_id: &str, jti: &str, expires_at: i64) -> Result<()> {
        let entry = Entry::new(&format!("node:{node_id}"), "node.token", node_id)
            .details(json!({ "token": jti, "expires_at": expires_at }));
        self.record_audit(&entry).await.map(|_| ())
    }

    /// Revokes a node: refused from now on (the caller closes its connections).
    pub async fn revoke_node(&self, actor: &str, node_id: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let result: Result<()> = async {
            let updated = sqlx::query("UPDATE nodes SET revoked_at = $2, status = 'offline' WHERE id = $1 AND revoked_at IS NULL")
                .bind(node_id)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            if updated.rows_affected() == 0 {
                let exists = sqlx::query("SELECT 1 FROM nodes WHERE id = $1")
                    .bind(node_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match exists {
                    Some(_) => StoreError::Conflict("the node is already revoked".into()),
                    None => StoreError::NotFound,
                });
            }
            let entry = Entry::new(actor, "node.revoke", node_id);
            self.append_audit(&mut tx, &entry).await?;
            Ok(())
        }
        .await;
        Self::finish(tx, result).await
    }

    /// Nodes revoked at or after `since` (Unix ms), for every replica to disconnect them.
    pub async fn revoked_nodes_since(&self, since: i64) -> Result<Vec<String>> {
        sqlx::query("SELECT id FROM nodes WHERE revoked_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok(row.try_get("id")?))
            .collect()
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
            certificate_expires_at: row.try_get("cert_expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
            databases: Vec::new(),
        })
    }

    const NODE_COLUMNS: &str = "id, name, labels, address, status, registered_at, last_heartbeat, cpu_percent, mem_bytes, inventory, usage, \
        cert_expires_at, revoked_at";

    pub async fn get_node(&self, id: &str) -> Result<Node> {
        let sql = format!("SELECT {} FROM nodes WHERE id = $1", Self::NODE_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut node = Self::node_from_row(&row)?;
        node.databases = self.node_schemas(id).await?;
        Ok(node)
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
        let (revision, behind) = Self::ack_desired(tx, node_id, heartbeat.applied_revision).await?;
        // Revisions start at 1: 0 means the node has no desired state, so no deployment
        // lists it yet.
        if revision > 0 && heartbeat.applied_revision.is_some() {
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
        Ok((revision, behind))
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
