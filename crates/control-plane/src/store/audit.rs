//! The audit log's table: records appended inside the transaction of the change they
//! record, read back in order for checkpoints, verification and `GET /audit`.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Backend, Result, Store, StoreError, now_ms};
use crate::audit::{Entry, GENESIS_HASH, StoredRecord, record_hash};

/// Filters of `GET /audit`; `None` matches everything.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub project: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Records after this sequence number (paging).
    pub after_seq: u64,
    pub limit: u32,
}

/// Refusal records per second and replica by default; beyond the limit they are counted,
/// and the count is recorded once (`audit.refusals_suppressed`) with the next refusal
/// recorded or at the next checkpoint. A flood of garbage tokens must not turn into a
/// flood of writes that holds up every other audited change.
pub const REFUSALS_PER_SECOND: u32 = 100;

/// Counts refusal records in the current one-second window.
#[derive(Debug)]
pub struct RefusalLimiter {
    limit: std::sync::atomic::AtomicU32,
    state: std::sync::Mutex<LimiterState>,
}

impl Default for RefusalLimiter {
    fn default() -> Self {
        Self {
            limit: std::sync::atomic::AtomicU32::new(REFUSALS_PER_SECOND),
            state: Default::default(),
        }
    }
}

#[derive(Debug, Default)]
struct LimiterState {
    window: Option<std::time::Instant>,
    written: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    /// Whether a refusal may be recorded now; and, if some were suppressed before, how
    /// many (to record first).
    fn admit(&self) -> (bool, u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if state
            .window
            .is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(1))
        {
            state.window = Some(now);
            state.written = 0;
        }
        if state.written >= self.limit.load(std::sync::atomic::Ordering::Relaxed) {
            state.suppressed += 1;
            return (false, 0);
        }
        state.written += 1;
        (true, std::mem::take(&mut state.suppressed))
    }

    fn take_suppressed(&self) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.suppressed)
    }
}

/// Any PostgreSQL advisory-lock key: the one lock that orders audited transactions.
const AUDIT_LOCK: i64 = 0x6564_6765_666e_0001;

impl Store {
    /// Appends `entry` to the chain inside `tx`. Records get consecutive sequence numbers:
    /// on SQLite every write transaction already holds the database's write lock (`BEGIN
    /// IMMEDIATE`); on PostgreSQL a transaction-scoped advisory lock orders the appends, held
    /// from here to the commit (so call this last in the transaction).
    pub async fn append_audit(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        entry: &Entry,
    ) -> Result<u64> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
        let (seq, prev_hash) = match last {
            Some(row) => {
                let seq: i64 = row.try_get("seq")?;
                (seq as u64 + 1, row.try_get::<String, _>("hash")?)
            }
            None => (1, GENESIS_HASH.to_string()),
        };
        let at = now_ms();
        let details = entry.details.to_string();
        let hash = record_hash(
            seq,
            at,
            &entry.actor,
            entry.project.as_deref(),
            entry.action,
            &entry.target,
            &details,
            &prev_hash,
        );
        sqlx::query(
            "INSERT INTO audit_log (seq, at, actor, project, action, target, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(seq as i64)
        .bind(at)
        .bind(&entry.actor)
        .bind(entry.project.clone())
        .bind(entry.action)
        .bind(&entry.target)
        .bind(&details)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut **tx)
        .await?;
        Ok(seq)
    }

    /// Records `entry` in a transaction of its own (refused authentications, which change
    /// nothing else).
    pub async fn record_audit(&self, entry: &Entry) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let result = self.append_audit(&mut tx, entry).await;
        Self::finish(tx, result).await
    }

    /// At most `per_second` refusal records a second from now on.
    pub fn set_refusal_limit(&self, per_second: u32) {
        self.refusals
            .limit
            .store(per_second.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Records a refused call (authentication or authorization), at most the refusal
    /// limit a second; the rest are counted and the count recorded.
    pub async fn record_refusal(&self, entry: &Entry) -> Result<()> {
        let (admitted, suppressed) = self.refusals.admit();
        if suppressed > 0 {
            self.record_suppressed(suppressed).await?;
        }
        if admitted {
            self.record_audit(&entry.bounded()).await?;
        }
        Ok(())
    }

    /// Records how many refusals were counted and not recorded since the last such record.
    pub async fn flush_refusals(&self) -> Result<()> {
        match self.refusals.take_suppressed() {
            0 => Ok(()),
            count => self.record_suppressed(count).await,
        }
    }

    async fn record_suppressed(&self, count: u64) -> Result<()> {
        let entry = Entry::new("system", "audit.refusals_suppressed", "refusals").details(
            serde_json::json!({
                "count": count,
                "limit_per_second": self.refusals.limit.load(std::sync::atomic::Ordering::Relaxed),
            }),
        );
        self.record_audit(&entry).await.map(|_| ())
    }

    fn audit_from_row(row: &AnyRow) -> Result<StoredRecord> {
        let seq: i64 = row.try_get("seq")?;
        Ok(StoredRecord {
            seq: u64::try_from(seq)
                .map_err(|_| StoreError::Database(format!("negative audit seq {seq}")))?,
            at: row.try_get("at")?,
            actor: row.try_get("actor")?,
            project: row.try_get("project")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            details: row.try_get("details")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        })
    }

    /// Verifies the whole chain against `vouched`, reading it page by page (a log of any
    /// length, in constant memory besides the checkpoints' hashes).
    pub async fn verify_audit_chain(
        &self,
        vouched: &crate::audit::Vouched,
    ) -> Result<edgefn_proto::audit::AuditVerification> {
        self.verify_audit_chain_in_pages(vouched, 5_000).await
    }

    /// [`Self::verify_audit_chain`] with `page` records read at a time.
    pub async fn verify_audit_chain_in_pages(
        &self,
        vouched: &crate::audit::Vouched,
        page_size: usize,
    ) -> Result<edgefn_proto::audit::AuditVerification> {
        let page_size = page_size.max(1);
        let mut verifier = crate::audit::ChainVerifier::new(vouched);
        loop {
            let page = self.audit_records(verifier.next_seq(), page_size).await?;
            let full = page.len() == page_size;
            for record in page {
                if let Err(broken) = verifier.feed(record) {
                    return Ok(broken);
                }
            }
            if !full {
                return Ok(verifier.finish());
            }
        }
    }

    /// Up to `limit` records from `from_seq` on, in order.
    pub async fn audit_records(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredRecord>> {
        sqlx::query(
            "SELECT seq, at, actor, project, action, target, details, prev_hash, hash FROM audit_log \
             WHERE seq >= $1 ORDER BY seq LIMIT $2",
        )
        .bind(from_seq.min(i64::MAX as u64) as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Self::audit_from_row)
        .collect()
    }

    /// Records matching `filter`, oldest first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<StoredRecord>> {
        sqlx::query(
            "SELECT seq, at, actor, project, action, target, details, prev_hash, hash FROM audit_log \
             WHERE seq > $1 AND (CAST($2 AS TEXT) IS NULL OR project = $2) AND (CAST($3 AS TEXT) IS NULL OR actor = $3) \
             AND (CAST($4 AS TEXT) IS NULL OR action = $4) AND at >= $5 AND at <= $6 ORDER BY seq LIMIT $7",
        )
        .bind(filter.after_seq.min(i64::MAX as u64) as i64)
        .bind(filter.project.clone())
        .bind(filter.actor.clone())
        .bind(filter.action.clone())
        .bind(filter.since.unwrap_or(i64::MIN))
        .bind(filter.until.unwrap_or(i64::MAX))
        .bind(i64::from(filter.limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(Self::audit_from_row)
        .collect()
    }

    /// Every record, in order, a page at a time (for verification).
    pub async fn all_audit_records(&self) -> Result<Vec<StoredRecord>> {
        let mut all = Vec::new();
        // Sequence numbers start at 1; a record a tamperer gave a lower one is read too.
        let mut from = 0u64;
        loop {
            let page = self.audit_records(from, 10_000).await?;
            let Some(last) = page.last() else {
                return Ok(all);
            };
            from = last.seq + 1;
            all.extend(page);
        }
    }
}
