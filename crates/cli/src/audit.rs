//! `edgefn audit`: list the audit log, and verify its chain against the signed checkpoints
//! — through the API, or straight from a database (a copy, or one whose control plane is
//! down) and the checkpoint location.

use anyhow::Context as _;
use clap::Subcommand;
use edgefn_proto::audit::{AuditRecord, AuditVerification};

use crate::client::Client;
use crate::output::{Output, or_dash, time};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Records, oldest first (administrators; a project's owners with --project).
    List {
        #[arg(long)]
        project: Option<String>,
        /// `user:NAME`, `node:ID`, `anonymous`, `system`.
        #[arg(long)]
        actor: Option<String>,
        /// e.g. `deploy`, `route.update`, `auth.refused`.
        #[arg(long)]
        action: Option<String>,
        /// RFC 3339 time or Unix milliseconds.
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
        /// Records after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Walk the chain against the latest signed checkpoints and name the first record that
    /// does not match (non-zero exit if one does not).
    Verify {
        /// Read this database directly instead of asking the control plane (`sqlite://…`
        /// or `postgres://…`).
        #[arg(long, requires = "checkpoints")]
        database_url: Option<String>,
        /// Where the checkpoints are: a directory or `s3://BUCKET[/PREFIX]`.
        #[arg(long)]
        checkpoints: Option<String>,
        /// Endpoint of an S3-compatible server holding the checkpoints.
        #[arg(long)]
        s3_endpoint: Option<String>,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339(text)
        .map_err(|e| format!("{text:?} is neither RFC 3339 nor Unix milliseconds: {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .map_err(|_| format!("{text:?} is before 1970"))
        })
}

/// Verifies `database_url`'s audit log against the checkpoints at `checkpoints`, with the
/// signing key stored in that database.
pub async fn verify_offline(
    database_url: &str,
    checkpoints: &str,
    s3_endpoint: Option<&str>,
) -> anyhow::Result<AuditVerification> {
    use edgefn_control_plane::auth::tokens::Signer;
    use edgefn_control_plane::checkpoints::CheckpointStore;
    edgefn_control_plane::install_crypto_providers();
    let store = edgefn_control_plane::store::Store::connect(database_url)
        .await
        .context("cannot open the database")?;
    let (key, _) = store
        .key_or_create("signing", || {
            Err("the database has no signing key: it was never used by a control plane".into())
        })
        .await?;
    let location = CheckpointStore::open(checkpoints, s3_endpoint)?;
    // Checkpoints are checked by key and audience; the issuer name does not matter here.
    let signer = Signer::from_pem(&key, "edgefn").map_err(anyhow::Error::msg)?;
    let vouched = location.vouched(&signer).await?;
    Ok(store.verify_audit_chain(&vouched).await?)
}

pub async fn audit(
    client: anyhow::Result<Client>,
    out: &Output,
    command: AuditCommand,
) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            project,
            actor,
            action,
            since,
            until,
            after,
            limit,
        } => {
            let mut query = vec![format!("limit={limit}")];
            let pairs = [
                ("project", project),
                ("actor", actor),
                ("action", action),
                ("since", since.map(|s| s.to_string())),
                ("until", until.map(|s| s.to_string())),
                ("after", after.map(|s| s.to_string())),
            ];
            for (key, value) in pairs {
                if let Some(value) = value {
                    query.push(format!("{key}={}", encode(&value)));
                }
            }
            let records: Vec<AuditRecord> =
                client?.get(&format!("/audit?{}", query.join("&"))).await?;
            let rows = records.iter().map(|r| {
                vec![
                    r.seq.to_string(),
                    time(r.at),
                    r.actor.clone(),
                    or_dash(r.project.as_deref()),
                    r.action.clone(),
                    r.target.clone(),
                ]
            });
            out.list(
                &records,
                &["seq", "at", "actor", "project", "action", "target"],
                rows,
            );
        }
        AuditCommand::Verify {
            database_url,
            checkpoints,
            s3_endpoint,
        } => {
            let verification = match (&database_url, &checkpoints) {
                (Some(url), Some(location)) => {
                    verify_offline(url, location, s3_endpoint.as_deref()).await?
                }
                (None, None) => client?.get("/audit/verify").await?,
                (None, Some(_)) => {
                    anyhow::bail!(
                        "--checkpoints goes with --database-url (the control plane knows its own)"
                    )
                }
                (Some(_), None) => anyhow::bail!("--database-url needs --checkpoints"),
            };
            out.item(&verification, || {
                if verification.ok {
                    format!("ok: {}", verification.message)
                } else {
                    format!("TAMPERED: {}", verification.message)
                }
            });
            if !verification.ok {
                anyhow::bail!(
                    "the audit log does not verify{}",
                    verification
                        .first_bad_seq
                        .map(|seq| format!(": first bad record {seq}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_or_milliseconds() {
        assert_eq!(super::parse_time("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(
            super::parse_time("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert!(super::parse_time("yesterday").is_err());
        assert_eq!(super::encode("user:a b"), "user%3Aa%20b");
    }
}
