//! The node's edge databases: applying the ledger changes its desired state carries
//! (before the functions, so a version never starts against an older schema than the
//! document's), and reporting where each file stands in the heartbeats.
//!
//! Files live at `{state_dir}/db/{project}/{database}.sqlite` (WAL mode). Each change is
//! its own transaction (`edgefn_edgedb::apply_changes`): a failure keeps the file at the
//! last good change and is reported with SQLite's message; a failed or drifted database is
//! tried again when a new desired state comes, or after [`RETRY_AFTER`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgefn_edgedb::{ApplyError, LedgerChange};
use edgefn_proto::api::DatabaseRepairAction;
use edgefn_proto::sync::{ApplyAttempt, DatabaseReport, DatabaseSyncState, DesiredDatabase};

/// Where the node's databases stand: `(project, name)` → the sequence of the last change
/// applied to the node's file.
pub type Schemas = HashMap<(String, String), u64>;

/// How long a failed database waits before the node tries its changes again by itself.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Where one database stands on the node.
#[derive(Clone, Debug)]
struct Held {
    desired: DesiredDatabase,
    report: DatabaseReport,
    tried_at: Instant,
}

/// The node's databases.
pub struct EdgeDatabases {
    dir: PathBuf,
    held: Mutex<HashMap<String, Held>>,
}

/// A project or database name that is safe as a path component (what the control plane
/// accepts as names: lower-case letters, digits and '-').
pub(crate) fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl EdgeDatabases {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("db"),
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The file of `project`'s database `name` (`None` for names that are not safe).
    pub fn path(&self, project: &str, name: &str) -> Option<PathBuf> {
        (safe_name(project) && safe_name(name))
            .then(|| self.dir.join(project).join(format!("{name}.sqlite")))
    }

    /// Brings every database of the desired state forward (blocking: run it off the async
    /// workers). Databases no longer desired are forgotten (their files stay).
    pub fn apply(&self, databases: &[DesiredDatabase]) {
        let mut next = HashMap::new();
        for desired in databases {
            let previous = self
                .held
                .lock()
                .ok()
                .and_then(|mut held| held.remove(&desired.id));
            let attempts = previous.map(|p| p.report.attempts).unwrap_or_default();
            next.insert(desired.id.clone(), self.apply_one(desired, attempts));
        }
        if let Ok(mut held) = self.held.lock() {
            *held = next;
        }
    }

    /// Between desired states (every heartbeat): tries again the databases that failed a
    /// while ago, and looks at the schema of those in sync, so a file altered by hand
    /// shows up as drift at the next heartbeat.
    pub fn check(&self) {
        let due: Vec<DesiredDatabase> = match self.held.lock() {
            Ok(held) => held
                .values()
                .filter(|h| match h.report.state {
                    DatabaseSyncState::Failed => h.tried_at.elapsed() >= RETRY_AFTER,
                    DatabaseSyncState::InSync => self.drifted(&h.desired),
                    _ => false,
                })
                .map(|h| h.desired.clone())
                .collect(),
            Err(_) => return,
        };
        for desired in due {
            let attempts = self
                .held
                .lock()
                .ok()
                .and_then(|mut held| held.remove(&desired.id))
                .map(|h| h.report.attempts)
                .unwrap_or_default();
            let held = self.apply_one(&desired, attempts);
            if let Ok(mut all) = self.held.lock() {
                all.insert(desired.id.clone(), held);
            }
        }
    }

    fn apply_one(&self, desired: &DesiredDatabase, mut attempts: Vec<ApplyAttempt>) -> Held {
        let started = Instant::now();
        let outcome = self.bring_forward(desired);
        let (seq, fingerprint, state, error, repair) = match outcome {
            Ok((applied, from, repaired)) => {
                let error = applied.error.as_ref().map(ToString::to_string);
                let state = match &applied.error {
                    None if applied.status.seq == desired.target_seq
                        && applied.status.chain == desired.chain =>
                    {
                        DatabaseSyncState::InSync
                    }
                    Some(ApplyError::Drift { .. }) => DatabaseSyncState::Drift,
                    _ => DatabaseSyncState::Failed,
                };
                let error = error.or_else(|| {
                    (state == DatabaseSyncState::Failed).then(|| {
                        format!(
                            "the file is at change {} and the ledger at {}: its history differs",
                            applied.status.seq, desired.target_seq
                        )
                    })
                });
                if from != applied.status.seq || error.is_some() || repaired {
                    attempts.push(ApplyAttempt {
                        from_seq: from,
                        to_seq: applied.status.seq,
                        target_seq: desired.target_seq,
                        duration_ms: started.elapsed().as_millis() as u64,
                        at_ms: now_ms(),
                        error: error.clone(),
                    });
                }
                let repair = applied.status.repair.clone();
                (
                    applied.status.seq,
                    applied.status.fingerprint,
                    state,
                    error,
                    repair,
                )
            }
            Err(message) => {
                attempts.push(ApplyAttempt {
                    from_seq: 0,
                    to_seq: 0,
                    target_seq: desired.target_seq,
                    duration_ms: started.elapsed().as_millis() as u64,
                    at_ms: now_ms(),
                    error: Some(message.clone()),
                });
                (
                    0,
                    String::new(),
                    DatabaseSyncState::Failed,
                    Some(message),
                    None,
                )
            }
        };
        match &error {
            Some(error) => {
                tracing::error!(database = %desired.name, project = %desired.project, seq, target = desired.target_seq, %error, "database not at its target")
            }
            None if attempts.last().is_some_and(|a| a.error.is_none()) => {
                tracing::info!(database = %desired.name, project = %desired.project, seq, "database schema applied")
            }
            None => {}
        }
        // Keep what the next heartbeat sends bounded.
        let excess = attempts.len().saturating_sub(100);
        attempts.drain(..excess);
        Held {
            desired: desired.clone(),
            report: DatabaseReport {
                database_id: desired.id.clone(),
                seq,
                fingerprint,
                state,
                error,
                attempts,
                repair,
            },
            tried_at: Instant::now(),
        }
    }

    /// Whether the file's schema is no longer what its last change left.
    fn drifted(&self, desired: &DesiredDatabase) -> bool {
        let Some(path) = self.path(&desired.project, &desired.name) else {
            return false;
        };
        let Ok(conn) = edgefn_edgedb::open_node_database(&path) else {
            return false;
        };
        edgefn_edgedb::status(&conn).is_ok_and(|s| s.drifted())
    }

    /// Opens the file, does the repair the desired state asks for (once), and applies the
    /// desired changes: the outcome, where it started, and whether it was repaired now.
    fn bring_forward(
        &self,
        desired: &DesiredDatabase,
    ) -> Result<(edgefn_edgedb::Applied, u64, bool), String> {
        let path = self
            .path(&desired.project, &desired.name)
            .ok_or_else(|| format!("unsafe database name {}/{}", desired.project, desired.name))?;
        let mut conn = edgefn_edgedb::open_node_database(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let changes: Vec<LedgerChange> = desired
            .changes
            .iter()
            .map(|c| LedgerChange {
                seq: c.seq,
                sql: c.sql.clone(),
                sha256: c.sha256.clone(),
                fingerprint: c.fingerprint.clone(),
                chain: c.chain.clone(),
            })
            .collect();
        let mut from = None;
        if let Some(repair) = &desired.repair {
            let carried = edgefn_edgedb::repair::carries(&conn, &repair.id)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if !carried {
                from = edgefn_edgedb::status(&conn).ok().map(|s| s.seq);
                let repaired = match repair.action {
                    DatabaseRepairAction::Accept => {
                        edgefn_edgedb::repair::accept(&conn, &repair.id)
                    }
                    DatabaseRepairAction::Recreate => {
                        edgefn_edgedb::repair::recreate(&mut conn, &path, &changes, &repair.id)
                    }
                };
                match repaired {
                    Ok(repaired) => {
                        tracing::warn!(database = %desired.name, project = %desired.project,
                            action = repair.action.as_str(), seq = repaired.status.seq,
                            kept = ?repaired.kept, "database repaired as an operator asked")
                    }
                    // Reported like a change that failed: the file is where it was.
                    Err(error) => {
                        let status = edgefn_edgedb::status(&conn)
                            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                        let message =
                            format!("repair ({}) failed: {error}", repair.action.as_str());
                        let applied = edgefn_edgedb::Applied {
                            from: status.seq,
                            status,
                            error: Some(ApplyError::Sqlite(message)),
                            duration: Duration::ZERO,
                        };
                        let from = applied.from;
                        return Ok((applied, from, true));
                    }
                }
            }
        }
        let applied = edgefn_edgedb::apply_changes(&conn, &changes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let start = from.unwrap_or(applied.from);
        Ok((applied, start, from.is_some()))
    }

    /// The sequence each database's file is at (what function versions require).
    pub fn schemas(&self) -> Schemas {
        let Ok(held) = self.held.lock() else {
            return Schemas::new();
        };
        held.values()
            .map(|h| {
                let key = (h.desired.project.clone(), h.desired.name.clone());
                (key, h.report.seq)
            })
            .collect()
    }

    /// The sequence the files of `databases` are at on disk, read without changing them:
    /// at startup, before the persisted state serves and before anything is applied.
    pub fn schemas_on_disk(&self, databases: &[DesiredDatabase]) -> Schemas {
        databases
            .iter()
            .filter_map(|d| {
                let path = self.path(&d.project, &d.name).filter(|p| p.exists())?;
                let conn = edgefn_edgedb::open_node_database(&path).ok()?;
                let status = edgefn_edgedb::status(&conn).ok()?;
                Some(((d.project.clone(), d.name.clone()), status.seq))
            })
            .collect()
    }

    /// Where each database stands, with the attempts not reported yet.
    pub fn reports(&self) -> Vec<DatabaseReport> {
        let Ok(held) = self.held.lock() else {
            return Vec::new();
        };
        let mut reports: Vec<DatabaseReport> = held.values().map(|h| h.report.clone()).collect();
        reports.sort_by(|a, b| a.database_id.cmp(&b.database_id));
        reports
    }

    /// The control plane took `reports`: their attempts are not sent again.
    pub fn reported(&self, reports: &[DatabaseReport]) {
        let Ok(mut held) = self.held.lock() else {
            return;
        };
        for report in reports {
            if let Some(h) = held.get_mut(&report.database_id) {
                let sent = report.attempts.len().min(h.report.attempts.len());
                h.report.attempts.drain(..sent);
            }
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
