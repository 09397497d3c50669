//! Signed checkpoints of the audit chain, kept outside the database (a directory or an S3
//! bucket) so that whoever can rewrite the database cannot also rewrite what vouches for it.
//!
//! A checkpoint covers records `from_seq..=seq`: it holds each one's hash (so verification
//! names exactly the first record that changed, even after a rewrite with recomputed
//! hashes) and is a JWT signed with the control plane's ES256 key, audience
//! `edgefn-audit`, stored as `checkpoints/{seq:020}.jwt`. The writer (every
//! `--audit-checkpoint-secs`, and at shutdown) refuses to extend a chain that no longer
//! links to the previous checkpoint.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::audit::{Checkpoint, StoredRecord, Vouched};
use crate::auth::tokens::{CHECKPOINT_AUDIENCE, Signer};
use crate::store::Store;

/// Records per checkpoint file: a long log is vouched for in files of bounded size.
const RECORDS_PER_CHECKPOINT: usize = 10_000;

/// Where checkpoints live.
#[derive(Clone)]
pub struct CheckpointStore {
    store: Arc<dyn ObjectStore>,
    /// Where, for messages.
    pub location: String,
}

#[derive(Debug, thiserror::Error)]
#[error("audit checkpoints at {location}: {message}")]
pub struct CheckpointError {
    location: String,
    message: String,
}

impl CheckpointStore {
    /// `DIR` or `s3://BUCKET[/PREFIX]` (with `s3_endpoint` for S3-compatible servers).
    pub fn open(spec: &str, s3_endpoint: Option<&str>) -> Result<Self, CheckpointError> {
        let error = |message: String| CheckpointError {
            location: spec.to_string(),
            message,
        };
        let store: Arc<dyn ObjectStore> = match spec.strip_prefix("s3://") {
            Some(rest) => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(error("an S3 location is s3://BUCKET[/PREFIX]".into()));
                }
                let settings = crate::artifacts::S3Settings {
                    bucket: bucket.to_string(),
                    endpoint: s3_endpoint.map(str::to_string),
                    ..Default::default()
                };
                return Self::on_s3(&settings, prefix);
            }
            None => {
                std::fs::create_dir_all(spec)
                    .map_err(|e| error(format!("cannot create the directory: {e}")))?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(spec)
                        .map_err(|e| error(e.to_string()))?,
                )
            }
        };
        Ok(Self {
            store,
            location: spec.to_string(),
        })
    }

    /// Checkpoints under `prefix` of the bucket `settings` names.
    pub fn on_s3(
        settings: &crate::artifacts::S3Settings,
        prefix: &str,
    ) -> Result<Self, CheckpointError> {
        let location = format!("s3://{}/{prefix}", settings.bucket);
        let s3 = crate::artifacts::s3_store(settings).map_err(|e| CheckpointError {
            location: location.clone(),
            message: e.to_string(),
        })?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix))
        };
        Ok(Self { store, location })
    }

    fn error(&self, message: impl std::fmt::Display) -> CheckpointError {
        CheckpointError {
            location: self.location.clone(),
            message: message.to_string(),
        }
    }

    /// Every checkpoint file: `(name, signed JWT)`, oldest first.
    pub async fn list(&self) -> Result<Vec<(String, String)>, CheckpointError> {
        let prefix = ObjectPath::from("checkpoints");
        let mut names: Vec<ObjectPath> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let bytes = self
                .store
                .get(&name)
                .await
                .map_err(|e| self.error(e))?
                .bytes()
                .await
                .map_err(|e| self.error(e))?;
            out.push((
                name.to_string(),
                String::from_utf8_lossy(&bytes).trim().to_string(),
            ));
        }
        Ok(out)
    }

    async fn put(&self, checkpoint: &Checkpoint, signed: String) -> Result<(), CheckpointError> {
        let name = ObjectPath::from(format!("checkpoints/{:020}.jwt", checkpoint.seq));
        self.store
            .put(&name, PutPayload::from(signed.into_bytes()))
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// What the checkpoints here vouch for, each checked against `signer`'s key.
    pub async fn vouched(&self, signer: &Signer) -> Result<Vouched, CheckpointError> {
        let mut vouched = Vouched::default();
        for (name, jwt) in self.list().await? {
            match signer.verify_checkpoint(&jwt) {
                Ok(checkpoint) => vouched.add(&name, &checkpoint),
                Err(error) => vouched
                    .problems
                    .push(format!("checkpoint {name} is not validly signed: {error}")),
            }
        }
        Ok(vouched)
    }
}

/// Checkpoints the records written since the last checkpoint. Returns the newest sequence
/// number now covered. Refuses (an error, logged by the caller) when the chain no longer
/// links to the last checkpoint or a new record does not match its own hash.
pub async fn write_checkpoint(
    store: &Store,
    signer: &Signer,
    location: &CheckpointStore,
) -> Result<u64, CheckpointError> {
    // Counted refusals are recorded before the checkpoint vouches for the log.
    store
        .flush_refusals()
        .await
        .map_err(|e| location.error(e))?;
    let vouched = location.vouched(signer).await?;
    if let Some(problem) = vouched.problems.first() {
        return Err(location.error(problem));
    }
    let through = vouched.through();
    let mut prev = match through {
        0 => crate::audit::GENESIS_HASH.to_string(),
        seq => vouched.hash_of(seq).unwrap_or_default().to_string(),
    };
    let mut from = through + 1;
    loop {
        let records: Vec<StoredRecord> = store
            .audit_records(from, RECORDS_PER_CHECKPOINT)
            .await
            .map_err(|e| location.error(e))?;
        let Some(last) = records.last() else {
            return Ok(from - 1);
        };
        for (offset, record) in records.iter().enumerate() {
            let seq = from + offset as u64;
            if record.seq != seq
                || record.prev_hash != prev
                || record.hash != record.expected_hash()
            {
                return Err(location.error(format!(
                    "record {seq} does not extend the checkpointed chain; not checkpointing (run `edgefn audit verify`)"
                )));
            }
            prev = record.hash.clone();
        }
        let checkpoint = Checkpoint {
            iss: signer.issuer().to_string(),
            aud: CHECKPOINT_AUDIENCE.to_string(),
            iat: crate::clock::now_ms() / 1000,
            from_seq: from,
            seq: last.seq,
            head_hash: last.hash.clone(),
            hashes: records.iter().map(|r| r.hash.clone()).collect(),
        };
        let signed = signer
            .sign(&checkpoint)
            .map_err(|e| location.error(format!("cannot sign: {e}")))?;
        location.put(&checkpoint, signed).await?;
        from = last.seq + 1;
    }
}

/// Writes a checkpoint every `every`.
pub fn spawn_checkpointer(
    store: Store,
    signer: Arc<Signer>,
    location: CheckpointStore,
    every: Duration,
) {
    tokio::spawn(async move {
        let mut through = 0;
        loop {
            tokio::time::sleep(every).await;
            match write_checkpoint(&store, &signer, &location).await {
                Ok(seq) if seq > through => {
                    tracing::info!(seq, location = %location.location, "audit checkpoint written");
                    through = seq;
                }
                Ok(_) => {}
                Err(error) => tracing::error!(%error, "audit checkpoint failed"),
            }
        }
    });
}
