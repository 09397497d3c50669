//! Native code compiled by the control plane, one row per artifact and engine: claims (so
//! one replica compiles while the others answer "compiling"), results and failures.

use sqlx::Row as _;
use sqlx::any::AnyRow;

use super::{Result, Store, now_ms};

/// What the control plane holds for an artifact and an engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precompiled {
    /// A replica is compiling it (since `updated_at`, Unix ms).
    Compiling { updated_at: i64 },
    Ready {
        native_sha256: String,
        native_bytes: u64,
        attestation: String,
    },
    /// The compiler refused it or ran out of its limits; nodes compile it themselves (and
    /// will most likely fail the same way, which they then report).
    Failed { error: String },
}

/// An engine the fleet has asked for code for, with the settings that go into its code.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EngineProfile {
    pub engine_hash: String,
    pub max_memory_pages: u64,
    pub fuel: bool,
}

fn precompiled_from_row(row: &AnyRow) -> Result<Precompiled> {
    let state: String = row.try_get("state")?;
    Ok(match state.as_str() {
        "ready" => Precompiled::Ready {
            native_sha256: row.try_get("native_sha256")?,
            native_bytes: row.try_get::<i64, _>("native_bytes")?.max(0) as u64,
            attestation: row.try_get("attestation")?,
        },
        "failed" => Precompiled::Failed {
            error: row.try_get("error")?,
        },
        _ => Precompiled::Compiling {
            updated_at: row.try_get("updated_at")?,
        },
    })
}

impl Store {
    /// What is held for `wasm_sha256` on `engine_hash`, if anything.
    pub async fn precompiled(
        &self,
        wasm_sha256: &str,
        engine_hash: &str,
    ) -> Result<Option<Precompiled>> {
        let row = sqlx::query(
            "SELECT state, native_sha256, native_bytes, attestation, error, updated_at \
             FROM precompiled WHERE wasm_sha256 = $1 AND engine_hash = $2",
        )
        .bind(wasm_sha256)
        .bind(engine_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(precompiled_from_row).transpose()
    }

    /// Claims the compilation of `wasm_sha256` for `profile`: true when this caller should
    /// compile it — there was no row, or only a claim older than `stale_before` (Unix ms)
    /// whose replica must have died.
    pub async fn claim_precompile(
        &self,
        wasm_sha256: &str,
        kind: edgefn_proto::GuestKind,
        profile: &EngineProfile,
        stale_before: i64,
    ) -> Result<bool> {
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO precompiled (wasm_sha256, engine_hash, max_memory_pages, fuel, kind, \
             state, updated_at) VALUES ($1, $2, $3, $4, $5, 'compiling', $6) \
             ON CONFLICT (wasm_sha256, engine_hash) DO NOTHING",
        )
        .bind(wasm_sha256)
        .bind(&profile.engine_hash)
        .bind(profile.max_memory_pages as i64)
        .bind(i64::from(profile.fuel))
        .bind(kind.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(true);
        }
        let taken_over = sqlx::query(
            "UPDATE precompiled SET updated_at = $3 WHERE wasm_sha256 = $1 AND engine_hash = $2 \
             AND state = 'compiling' AND updated_at < $4",
        )
        .bind(wasm_sha256)
        .bind(&profile.engine_hash)
        .bind(now)
        .bind(stale_before)
        .execute(&self.pool)
        .await?;
        Ok(taken_over.rows_affected() == 1)
    }

    /// Keeps a claim alive while its compilation runs (a claim not renewed within the
    /// cut-off is taken over: its replica died).
    pub async fn renew_precompile_claim(&self, wasm_sha256: &str, engine_hash: &str) -> Result<()> {
        sqlx::query(
            "UPDATE precompiled SET updated_at = $3 WHERE wasm_sha256 = $1 AND engine_hash = $2 \
             AND state = 'compiling'",
        )
        .bind(wasm_sha256)
        .bind(engine_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records the outcome of a claimed compilation.
    pub async fn finish_precompile(
        &self,
        wasm_sha256: &str,
        engine_hash: &str,
        outcome: &Precompiled,
        compile_ms: u64,
    ) -> Result<()> {
        let (state, native_sha256, native_bytes, attestation, error) = match outcome {
            Precompiled::Ready {
                native_sha256,
                native_bytes,
                attestation,
            } => (
                "ready",
                Some(native_sha256.as_str()),
                Some(*native_bytes as i64),
                Some(attestation.as_str()),
                None,
            ),
            Precompiled::Failed { error } => ("failed", None, None, None, Some(error.as_str())),
            Precompiled::Compiling { .. } => ("compiling", None, None, None, None),
        };
        sqlx::query(
            "UPDATE precompiled SET state = $3, native_sha256 = $4, native_bytes = $5, \
             attestation = $6, error = $7, compile_ms = $8, updated_at = $9 \
             WHERE wasm_sha256 = $1 AND engine_hash = $2",
        )
        .bind(wasm_sha256)
        .bind(engine_hash)
        .bind(state)
        .bind(native_sha256)
        .bind(native_bytes)
        .bind(attestation)
        .bind(error)
        .bind(compile_ms as i64)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Forgets failed compilations of `wasm_sha256`, so that the next request compiles it
    /// again (an operator's retry).
    pub async fn forget_failed_precompiles(&self, wasm_sha256: &str) -> Result<u64> {
        let done =
            sqlx::query("DELETE FROM precompiled WHERE wasm_sha256 = $1 AND state = 'failed'")
                .bind(wasm_sha256)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected())
    }

    /// Every engine nodes have asked for code for: what a new deploy is compiled for ahead
    /// of the nodes' requests.
    pub async fn precompile_profiles(&self) -> Result<Vec<EngineProfile>> {
        let rows =
            sqlx::query("SELECT DISTINCT engine_hash, max_memory_pages, fuel FROM precompiled")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|row| {
                Ok(EngineProfile {
                    engine_hash: row.try_get("engine_hash")?,
                    max_memory_pages: row.try_get::<i64, _>("max_memory_pages")?.max(0) as u64,
                    fuel: row.try_get::<i64, _>("fuel")? != 0,
                })
            })
            .collect()
    }
}
