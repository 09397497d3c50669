//! Compiling artifacts once for the fleet: a node asks for the native code of an artifact
//! for its engine (`GET /precompiled/{sha256}/{engine_hash}` on the node listener); the
//! first request (or a deploy) claims the compilation in the database, one replica runs
//! the compile worker — the same program and rlimits a node uses — stores the code in the
//! artifact store beside the artifact and signs `{wasm sha256, engine hash, native
//! sha256}`; every other node of that engine downloads it. The control plane itself links
//! no compiler: it runs `PROGRAM compile-worker …` (`edgefn` or `edgefn-compile-worker`),
//! and only for engines whose hash that program reproduces.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgefn_proto::GuestKind;
use object_store::path::Path as ObjectPath;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use crate::artifacts::{Artifacts, artifact_path};
use crate::ca::NodeAuthority;
use crate::store::{EngineProfile, Precompiled, Store};

/// Where and under which limits the control plane compiles.
#[derive(Clone, Debug)]
pub struct PrecompileConfig {
    /// Run as `program compile-worker …`.
    pub program: PathBuf,
    /// Wall-clock (and, plus a second, CPU) limit of one compilation.
    pub timeout: Duration,
    /// Address-space limit of the worker.
    pub max_memory_bytes: u64,
    /// Compilations at once on this replica.
    pub max_concurrent: usize,
    /// Cranelift's incremental cache (directory, byte limit), passed to the worker.
    pub incremental_cache: Option<(PathBuf, u64)>,
}

pub struct Precompiler {
    config: PrecompileConfig,
    store: Store,
    artifacts: Arc<Artifacts>,
    ca: Arc<NodeAuthority>,
    turns: tokio::sync::Semaphore,
    /// The worker's engine hash per (max_memory_pages, fuel), asked once.
    hashes: Mutex<HashMap<(u64, bool), Result<String, String>>>,
}

/// How often a replica renews its claim on a compilation it runs; a claim three times this
/// old is taken over, so a control plane that crashed mid-compile holds its nodes up for
/// seconds, not for the compile limit.
const CLAIM_RENEWAL: Duration = Duration::from_secs(5);

/// 4 GiB of linear memory: the most a 32-bit memory can have.
const MAX_MEMORY_PAGES: u64 = 65_536;

/// Distinct engine settings (memory pages, fuel) whose hash is asked of the worker.
const MAX_ENGINE_SETTINGS: usize = 64;

/// Where the native code of `wasm_sha256` for `engine_hash` is kept.
pub fn native_path(engine_hash: &str, wasm_sha256: &str) -> ObjectPath {
    ObjectPath::from(format!("precompiled/{engine_hash}/{wasm_sha256}"))
}

/// An engine hash as nodes send it: 16 lower-case hex digits.
pub fn valid_engine_hash(hash: &str) -> bool {
    hash.len() == 16 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Precompiler {
    pub fn new(
        config: PrecompileConfig,
        store: Store,
        artifacts: Arc<Artifacts>,
        ca: Arc<NodeAuthority>,
    ) -> Arc<Self> {
        let turns = tokio::sync::Semaphore::new(config.max_concurrent.max(1));
        Arc::new(Self {
            config,
            store,
            artifacts,
            ca,
            turns,
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// A claim not renewed for this long belongs to a replica that died while compiling.
    fn stale_after(&self) -> Duration {
        CLAIM_RENEWAL * 3
    }

    /// Whether a claim last renewed at `updated_at` (Unix ms) was abandoned.
    pub fn is_stale(&self, updated_at: i64) -> bool {
        updated_at < crate::clock::now_ms() - self.stale_after().as_millis() as i64
    }

    /// Whether the worker makes code for `profile`'s engine: `Err` says why not (another
    /// Wasmtime version, another CPU, a worker that does not start).
    pub async fn serves(&self, profile: &EngineProfile) -> Result<(), String> {
        if !(1..=MAX_MEMORY_PAGES).contains(&profile.max_memory_pages) {
            return Err(format!("max_memory_pages must be 1..={MAX_MEMORY_PAGES}"));
        }
        let key = (profile.max_memory_pages, profile.fuel);
        let known = {
            let hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
            // Each new setting costs a worker process: a node cannot make us start many.
            if hashes.len() >= MAX_ENGINE_SETTINGS && !hashes.contains_key(&key) {
                return Err("too many different engine settings in the fleet".into());
            }
            hashes.get(&key).cloned()
        };
        let hash = match known {
            Some(hash) => hash,
            None => {
                let hash = self.worker_engine_hash(key.0, key.1).await;
                self.hashes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, hash.clone());
                hash
            }
        };
        match hash {
            Ok(hash) if hash == profile.engine_hash => Ok(()),
            Ok(hash) => Err(format!(
                "this control plane's compiler makes code for engine {hash}, not {}",
                profile.engine_hash
            )),
            Err(error) => Err(error),
        }
    }

    async fn worker_engine_hash(&self, pages: u64, fuel: bool) -> Result<String, String> {
        let output = tokio::process::Command::new(&self.config.program)
            .args(["compile-worker", "engine-hash", &pages.to_string()])
            .arg(fuel_arg(fuel))
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(30), output)
            .await
            .map_err(|_| "the compile worker did not answer within 30 s".to_string())?
            .map_err(|e| {
                format!(
                    "cannot run the compile worker {}: {e}",
                    self.config.program.display()
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "the compile worker cannot tell its engine: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Starts compiling `wasm_sha256` for `profile` in the background unless it is held,
    /// being compiled, or failed. Returns at once.
    pub fn request(self: &Arc<Self>, wasm_sha256: &str, kind: GuestKind, profile: EngineProfile) {
        let this = self.clone();
        let wasm_sha256 = wasm_sha256.to_string();
        tokio::spawn(async move {
            if let Err(error) = this.compile_if_claimed(&wasm_sha256, kind, &profile).await {
                tracing::warn!(%wasm_sha256, engine = %profile.engine_hash, %error, "cannot precompile");
            }
        });
    }

    async fn compile_if_claimed(
        &self,
        wasm_sha256: &str,
        kind: GuestKind,
        profile: &EngineProfile,
    ) -> Result<(), String> {
        self.serves(profile).await?;
        let stale_before = crate::clock::now_ms() - self.stale_after().as_millis() as i64;
        let claimed = self
            .store
            .claim_precompile(wasm_sha256, kind, profile, stale_before)
            .await
            .map_err(|e| e.to_string())?;
        if !claimed {
            return Ok(());
        }
        let started = Instant::now();
        let renewing = {
            let (store, sha, engine) = (
                self.store.clone(),
                wasm_sha256.to_string(),
                profile.engine_hash.clone(),
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CLAIM_RENEWAL).await;
                    if let Err(error) = store.renew_precompile_claim(&sha, &engine).await {
                        tracing::warn!(%error, "cannot renew a compilation claim");
                    }
                }
            })
        };
        let outcome = match self.compile(wasm_sha256, kind, profile).await {
            Ok(outcome) => outcome,
            Err(error) => Precompiled::Failed { error },
        };
        renewing.abort();
        let elapsed = started.elapsed().as_millis() as u64;
        match &outcome {
            Precompiled::Ready { native_bytes, .. } => {
                tracing::info!(%wasm_sha256, engine = %profile.engine_hash, native_bytes, compile_ms = elapsed, "precompiled for the fleet")
            }
            Precompiled::Failed { error } => {
                tracing::warn!(%wasm_sha256, engine = %profile.engine_hash, %error, "precompilation failed; nodes compile for themselves")
            }
            Precompiled::Compiling { .. } => {}
        }
        self.store
            .finish_precompile(wasm_sha256, &profile.engine_hash, &outcome, elapsed)
            .await
            .map_err(|e| e.to_string())
    }

    /// Compiles, stores and signs. `Err` is a failure to record (the compiler's refusal
    /// or limits; a store that cannot be read or written).
    async fn compile(
        &self,
        wasm_sha256: &str,
        kind: GuestKind,
        profile: &EngineProfile,
    ) -> Result<Precompiled, String> {
        let _turn = self
            .turns
            .acquire()
            .await
            .map_err(|_| "the compiler is shutting down".to_string())?;
        let wasm = self
            .artifacts
            .read(&artifact_path(wasm_sha256))
            .await
            .map_err(|e| format!("cannot read the artifact: {e}"))?;
        let native = self.run_worker(kind, profile, wasm).await?;
        let native_sha256 = hex::encode(Sha256::digest(&native));
        let native_bytes = native.len() as u64;
        self.artifacts
            .put(
                &native_path(&profile.engine_hash, wasm_sha256),
                Bytes::from(native),
            )
            .await
            .map_err(|e| format!("cannot store the native code: {e}"))?;
        let attestation =
            self.ca
                .attest_precompiled(wasm_sha256, &profile.engine_hash, &native_sha256)?;
        Ok(Precompiled::Ready {
            native_sha256,
            native_bytes,
            attestation,
        })
    }

    async fn run_worker(
        &self,
        kind: GuestKind,
        profile: &EngineProfile,
        wasm: Bytes,
    ) -> Result<Vec<u8>, String> {
        let timeout = self.config.timeout;
        let cpu_seconds = timeout.as_secs().max(1) + 1;
        let mut child = tokio::process::Command::new(&self.config.program)
            .arg("compile-worker")
            .arg(kind.as_str())
            .arg(profile.max_memory_pages.to_string())
            .arg(fuel_arg(profile.fuel))
            .arg(self.config.max_memory_bytes.to_string())
            .arg(cpu_seconds.to_string())
            .args(
                self.config
                    .incremental_cache
                    .iter()
                    .flat_map(|(dir, bytes)| {
                        [dir.as_os_str().to_owned(), bytes.to_string().into()]
                    }),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the compile worker: {e}"))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| "the compile worker has no stdin".to_string())?;
        let feed = async move {
            // A worker that dies early closes its stdin; its exit status says why.
            let _ = stdin.write_all(&wasm).await;
            drop(stdin);
        };
        let run = async {
            let (_, output) = tokio::join!(feed, child.wait_with_output());
            output
        };
        let output = tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| format!("compilation took longer than the limit of {timeout:?}"))?
            .map_err(|e| format!("the compile worker failed: {e}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(format!(
                "compilation failed ({}; limits {} s of CPU, {} MiB of address space): {}",
                output.status,
                cpu_seconds,
                self.config.max_memory_bytes >> 20,
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }
}

fn fuel_arg(fuel: bool) -> &'static str {
    if fuel { "fuel" } else { "no-fuel" }
}
