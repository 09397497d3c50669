//! `edgefn db`: a project's edge databases, their schema changes and where each node
//! stands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use edgefn_proto::api::{
    CreateChange, CreateDatabase, Database, DatabaseChange, DatabaseRepairAction, NodeDatabase,
    NodeDatabaseState, RepairDatabase, SyncLogEntry,
};

use crate::client::Client;
use crate::commands::WaitArgs;
use crate::output::{Output, time};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create a database; nodes hold it once a function that uses it runs there.
    Create {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
        /// Nodes that hold it regardless of functions (a POP selector).
        #[arg(long, default_value = "")]
        selector: String,
    },
    /// The databases of a project.
    List {
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// One database and its ledger.
    Show {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// Delete a database (refused while a deployed function uses it, unless --force).
    Rm {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
        #[arg(long)]
        force: bool,
    },
    /// Register a schema change from a file of SQL (dry-run first; forward only).
    Migrate {
        name: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "default")]
        project: String,
        /// What the change is for (default: the file's name).
        #[arg(long)]
        description: Option<String>,
        /// Allow dropping or renaming a table or column.
        #[arg(long)]
        destructive: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Where each node's copy stands (warnings first).
    Status {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
    },
    /// Repair one node's copy that left the ledger (drift): build it again from the
    /// ledger (the node keeps the old file beside it), or accept its schema as it is.
    Repair {
        name: String,
        /// The node (its id or name).
        #[arg(long)]
        node: String,
        /// Build the file again from the ledger (its rows go; the old file is kept).
        #[arg(long, conflicts_with = "accept", required_unless_present = "accept")]
        recreate: bool,
        /// Take the file's schema as it is; later changes apply on top of it.
        #[arg(long)]
        accept: bool,
        #[arg(long, default_value = "default")]
        project: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Every apply attempt nodes reported, newest first.
    Log {
        name: String,
        #[arg(long, default_value = "default")]
        project: String,
        /// Only this node (its id).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
}

fn node_rows(nodes: &[NodeDatabase]) -> impl Iterator<Item = Vec<String>> + '_ {
    nodes.iter().map(|n| {
        let state = if n.warning {
            format!(
                "{} (WARNING: behind {} s)",
                n.state.as_str(),
                n.lag_ms / 1000
            )
        } else {
            n.state.as_str().to_string()
        };
        let state = match n.pending_repair {
            Some(action) => format!("{state} (repair: {} pending)", action.as_str()),
            None => state,
        };
        vec![
            n.node_name.clone(),
            state,
            format!("{}/{}", n.applied_seq, n.target_seq),
            n.last_sync_at.map(time).unwrap_or_else(|| "-".into()),
            n.consecutive_failures.to_string(),
            n.last_error.clone().unwrap_or_default(),
        ]
    })
}

const NODE_HEADERS: &[&str] = &["node", "state", "schema", "last sync", "failures", "error"];

pub async fn db(client: &Client, out: &Output, command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Create {
            name,
            project,
            selector,
        } => {
            let database: Database = client
                .post(
                    &format!("/projects/{project}/databases"),
                    &CreateDatabase {
                        name,
                        pop_selector: selector,
                    },
                )
                .await?;
            out.item(&database, || {
                format!(
                    "Created database {} in {project}. Add schema with `edgefn db migrate {} --file FILE.sql`, and let a function use it with `--database {}`.",
                    database.name, database.name, database.name
                )
            });
        }
        DbCommand::List { project } => {
            let databases: Vec<Database> = client
                .get(&format!("/projects/{project}/databases"))
                .await?;
            let rows = databases.iter().map(|d| {
                vec![
                    d.name.clone(),
                    d.target_seq.to_string(),
                    if d.pop_selector.is_empty() {
                        "(nodes of its functions)".into()
                    } else {
                        d.pop_selector.clone()
                    },
                    time(d.created_at),
                ]
            });
            out.list(&databases, &["name", "schema", "selector", "created"], rows);
        }
        DbCommand::Show { name, project } => {
            let base = format!("/projects/{project}/databases/{name}");
            let database: Database = client.get(&base).await?;
            let changes: Vec<DatabaseChange> = client.get(&format!("{base}/changes")).await?;
            let value = serde_json::json!({ "database": database, "changes": changes });
            out.item(&value, || {
                let mut text = format!(
                    "{} ({project}) at change {}, fingerprint {}\n",
                    database.name, database.target_seq, database.fingerprint
                );
                for change in &changes {
                    text.push_str(&format!(
                        "  {:>4}  {}  {}{}\n",
                        change.seq,
                        time(change.created_at),
                        change.description,
                        if change.destructive {
                            "  (destructive)"
                        } else {
                            ""
                        }
                    ));
                }
                text.trim_end().to_string()
            });
        }
        DbCommand::Rm {
            name,
            project,
            force,
        } => {
            let path = format!("/projects/{project}/databases/{name}?force={force}");
            client.send_empty(reqwest::Method::DELETE, &path).await?;
            out.item(&serde_json::json!({ "removed": name }), || {
                format!("Deleted database {name} of {project} (the nodes' files stay).")
            });
        }
        DbCommand::Migrate {
            name,
            file,
            project,
            description,
            destructive,
            wait,
        } => {
            let sql = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let description = description.unwrap_or_else(|| {
                file.file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            let base = format!("/projects/{project}/databases/{name}");
            let change: DatabaseChange = client
                .post(
                    &format!("{base}/changes"),
                    &CreateChange {
                        sql,
                        description,
                        destructive,
                    },
                )
                .await?;
            if !wait.wait {
                out.item(&change, || {
                    format!(
                        "Change {} of {name} registered; nodes apply it now (`edgefn db status {name}`).",
                        change.seq
                    )
                });
                return Ok(());
            }
            if !out.json {
                println!(
                    "Change {} of {name} registered; waiting for the nodes…",
                    change.seq
                );
            }
            let nodes = wait_for(client, &base, &change, Duration::from_secs(wait.timeout)).await?;
            let failed: Vec<&NodeDatabase> = nodes
                .iter()
                .filter(|n| {
                    matches!(
                        n.state,
                        NodeDatabaseState::Failed | NodeDatabaseState::Drift
                    )
                })
                .collect();
            out.list(&nodes, NODE_HEADERS, node_rows(&nodes));
            if !failed.is_empty() {
                anyhow::bail!(
                    "change {} failed on {} of {} nodes (they stay at their last good change)",
                    change.seq,
                    failed.len(),
                    nodes.len()
                );
            }
            let behind = nodes.iter().filter(|n| n.applied_seq < change.seq).count();
            if behind > 0 {
                anyhow::bail!(
                    "{behind} of {} nodes have not applied change {} after {} s",
                    nodes.len(),
                    change.seq,
                    wait.timeout
                );
            }
        }
        DbCommand::Status { name, project } => {
            let mut nodes: Vec<NodeDatabase> = client
                .get(&format!("/projects/{project}/databases/{name}/nodes"))
                .await?;
            nodes.sort_by_key(|n| (!n.warning, n.state == NodeDatabaseState::InSync));
            out.list(&nodes, NODE_HEADERS, node_rows(&nodes));
        }
        DbCommand::Repair {
            name,
            node,
            recreate,
            accept: _,
            project,
            wait,
        } => {
            let base = format!("/projects/{project}/databases/{name}");
            let nodes: Vec<NodeDatabase> = client.get(&format!("{base}/nodes")).await?;
            let Some(found) = nodes
                .iter()
                .find(|n| n.node_id == node)
                .or_else(|| nodes.iter().find(|n| n.node_name == node))
            else {
                anyhow::bail!("no node {node} holds {name} (see `edgefn db status {name}`)");
            };
            let action = if recreate {
                DatabaseRepairAction::Recreate
            } else {
                DatabaseRepairAction::Accept
            };
            let path = format!("{base}/nodes/{}/repair", found.node_id);
            let mut row: NodeDatabase = client.post(&path, &RepairDatabase { action }).await?;
            if wait.wait {
                let started = Instant::now();
                while row.pending_repair.is_some() {
                    if started.elapsed() >= Duration::from_secs(wait.timeout) {
                        anyhow::bail!(
                            "node {} has not done the repair after {} s",
                            row.node_name,
                            wait.timeout
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let nodes: Vec<NodeDatabase> = client.get(&format!("{base}/nodes")).await?;
                    match nodes.into_iter().find(|n| n.node_id == row.node_id) {
                        Some(now) => row = now,
                        None => anyhow::bail!("node {} no longer holds {name}", row.node_name),
                    }
                }
            }
            let rows = vec![row];
            out.list(&rows, NODE_HEADERS, node_rows(&rows));
            if !wait.wait && !out.json {
                println!(
                    "Node {} will {} its copy of {name} at its next desired state.",
                    rows[0].node_name,
                    action.as_str()
                );
            }
        }
        DbCommand::Log {
            name,
            project,
            node,
            limit,
        } => {
            let mut path = format!("/projects/{project}/databases/{name}/sync-log?limit={limit}");
            if let Some(node) = node {
                path.push_str(&format!("&node={node}"));
            }
            let entries: Vec<SyncLogEntry> = client.get(&path).await?;
            let rows = entries.iter().map(|e| {
                vec![
                    time(e.at),
                    e.node_id.clone(),
                    format!("{} → {} (target {})", e.from_seq, e.to_seq, e.target_seq),
                    format!("{} ms", e.duration_ms),
                    e.error.clone().unwrap_or_else(|| "ok".into()),
                ]
            });
            out.list(&entries, &["at", "node", "change", "took", "result"], rows);
        }
    }
    Ok(())
}

/// Polls the nodes until each has applied `seq`, failed or drifted, printing each node's
/// state as it changes; the last view when every node is settled or `timeout` passed.
async fn wait_for(
    client: &Client,
    base: &str,
    change: &DatabaseChange,
    timeout: Duration,
) -> anyhow::Result<Vec<NodeDatabase>> {
    let started = Instant::now();
    let mut shown: BTreeMap<String, (NodeDatabaseState, u64)> = BTreeMap::new();
    loop {
        let nodes: Vec<NodeDatabase> = client.get(&format!("{base}/nodes")).await?;
        for node in &nodes {
            let now = (node.state, node.applied_seq);
            if shown.get(&node.node_id) != Some(&now) {
                eprintln!(
                    "  {:<20} {:<9} at {}{}",
                    node.node_name,
                    node.state.as_str(),
                    node.applied_seq,
                    node.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                shown.insert(node.node_id.clone(), now);
            }
        }
        // A failure reported before the change existed is about an earlier one.
        let settled = nodes.iter().all(|n| {
            n.applied_seq >= change.seq
                || n.state == NodeDatabaseState::Offline
                || (matches!(
                    n.state,
                    NodeDatabaseState::Failed | NodeDatabaseState::Drift
                ) && n.reported_at >= change.created_at)
        });
        if settled || started.elapsed() >= timeout {
            return Ok(nodes);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
