//! The artifact cache: `{cache_dir}/{function_id}/{version}.wasm`, with the precompiled
//! native code the runtime writes beside it.
//!
//! Every artifact's SHA-256 is recorded when it enters (and checked against the expected
//! one), checked again by the runtime when it is loaded, and for every file at start-up; a
//! file that does not match is deleted and reported, never executed. Writes are atomic.
//! Eviction is least recently used, by total size and by file count; recency lives in an
//! index file so it survives restarts. A new version never overwrites an older one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

const INDEX_FILE: &str = "index.json";

/// Limits of the cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_bytes: 10 << 30,
            max_files: 1000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Entry {
    function_id: String,
    version: u64,
    sha256: String,
    size: u64,
    /// Milliseconds since the Unix epoch of the last use.
    last_used_ms: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Index {
    entries: Vec<Entry>,
}

/// Something wrong found in the cache (reported by the runner as a log line and a metric).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptArtifact {
    pub path: PathBuf,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    #[error("cache i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

pub struct ArtifactCache {
    dir: PathBuf,
    limits: CacheLimits,
    entries: Mutex<HashMap<(String, u64), Entry>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

pub use edgefn_runtime::sha256_hex;

/// Writes a file of the cache; its directory is made first.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    edgefn_runtime::fs::write_atomically(path, bytes, None)
}

impl ArtifactCache {
    /// Opens (creating) the cache and verifies every artifact in it. Files that do not match
    /// their recorded hash, or that the index does not know, are deleted and returned.
    pub fn open(
        dir: &Path,
        limits: CacheLimits,
    ) -> Result<(Self, Vec<CorruptArtifact>), CacheError> {
        std::fs::create_dir_all(dir)?;
        let index: Index = std::fs::read(dir.join(INDEX_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        let mut known: HashMap<PathBuf, Entry> = HashMap::new();
        for entry in index.entries {
            known.insert(
                dir.join(&entry.function_id)
                    .join(format!("{}.wasm", entry.version)),
                entry,
            );
        }
        let mut entries = HashMap::new();
        let mut corrupt = Vec::new();
        for function_dir in std::fs::read_dir(dir)?.filter_map(Result::ok) {
            if !function_dir.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            for file in std::fs::read_dir(function_dir.path())?.filter_map(Result::ok) {
                let path = file.path();
                if path.extension().is_none_or(|e| e != "wasm") {
                    continue;
                }
                let reason = match (known.remove(&path), std::fs::read(&path)) {
                    (Some(entry), Ok(bytes)) => {
                        let actual = sha256_hex(&bytes);
                        if actual == entry.sha256 {
                            entries.insert((entry.function_id.clone(), entry.version), entry);
                            continue;
                        }
                        format!(
                            "sha256 mismatch: expected {}, file has {actual}",
                            entry.sha256
                        )
                    }
                    (None, _) => "not in the cache index".to_string(),
                    (Some(_), Err(e)) => format!("unreadable: {e}"),
                };
                remove_artifact_files(&path);
                corrupt.push(CorruptArtifact { path, reason });
            }
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            limits,
            entries: Mutex::new(entries),
        };
        cache.sweep_orphans();
        cache.persist();
        Ok((cache, corrupt))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, function_id: &str, version: u64) -> PathBuf {
        self.dir.join(function_id).join(format!("{version}.wasm"))
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The recorded SHA-256 of a cached artifact, if it is cached.
    pub fn get(&self, function_id: &str, version: u64) -> Option<(PathBuf, String)> {
        let entries = self.entries();
        let entry = entries.get(&(function_id.to_string(), version))?;
        Some((self.path(function_id, version), entry.sha256.clone()))
    }

    /// Marks an artifact as used now.
    pub fn touch(&self, function_id: &str, version: u64) {
        if let Some(entry) = self.entries().get_mut(&(function_id.to_string(), version)) {
            entry.last_used_ms = now_ms();
        }
    }

    /// Adds an artifact after checking it against `expected` (when given). An artifact that
    /// is already cached with the same content is left as it is. Returns the path and hash.
    pub fn insert(
        &self,
        function_id: &str,
        version: u64,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<(PathBuf, String), CacheError> {
        let actual = sha256_hex(bytes);
        if let Some(expected) = expected
            && !expected.eq_ignore_ascii_case(&actual)
        {
            return Err(CacheError::Sha256Mismatch {
                expected: expected.to_string(),
                actual,
            });
        }
        let path = self.path(function_id, version);
        let existing = self.get(function_id, version);
        if existing.as_ref().is_none_or(|(_, sha)| *sha != actual) {
            write_atomically(&path, bytes)?;
        }
        self.entries().insert(
            (function_id.to_string(), version),
            Entry {
                function_id: function_id.to_string(),
                version,
                sha256: actual.clone(),
                size: bytes.len() as u64,
                last_used_ms: now_ms(),
            },
        );
        self.evict(Some((function_id, version)));
        self.persist();
        Ok((path, actual))
    }

    /// Deletes one artifact (undeploy, or a file found corrupt on load).
    pub fn remove(&self, function_id: &str, version: u64) {
        self.entries().remove(&(function_id.to_string(), version));
        remove_artifact_files(&self.path(function_id, version));
        self.sweep_orphans();
        self.persist();
    }

    /// Evicts least recently used artifacts until both limits hold. `keep` (the artifact
    /// just inserted) is never evicted. Returns how many were evicted.
    pub fn evict(&self, keep: Option<(&str, u64)>) -> usize {
        let mut evicted = Vec::new();
        {
            let mut entries = self.entries();
            loop {
                let total: u64 = entries.values().map(|e| e.size).sum();
                if total <= self.limits.max_bytes && entries.len() <= self.limits.max_files {
                    break;
                }
                let victim = entries
                    .values()
                    .filter(|e| keep.is_none_or(|(id, v)| e.function_id != id || e.version != v))
                    .min_by_key(|e| e.last_used_ms)
                    .map(|e| (e.function_id.clone(), e.version));
                let Some(key) = victim else { break };
                entries.remove(&key);
                evicted.push(key);
            }
        }
        for (function_id, version) in &evicted {
            remove_artifact_files(&self.path(function_id, *version));
        }
        if !evicted.is_empty() {
            self.sweep_orphans();
        }
        evicted.len()
    }

    /// Deletes precompiled code (`{sha256}.*` beside the artifacts) that no cached artifact
    /// of its function has the hash of any more.
    pub fn sweep_orphans(&self) {
        let live: std::collections::HashSet<(String, String)> = self
            .entries()
            .values()
            .map(|e| (e.function_id.clone(), e.sha256.clone()))
            .collect();
        let Ok(dirs) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for function_dir in dirs
            .filter_map(Result::ok)
            .filter(|d| d.file_type().is_ok_and(|t| t.is_dir()))
        {
            let function_id = function_dir.file_name().to_string_lossy().to_string();
            let Ok(files) = std::fs::read_dir(function_dir.path()) else {
                continue;
            };
            for file in files.filter_map(Result::ok) {
                let name = file.file_name().to_string_lossy().to_string();
                if !name.contains(".cwasm") {
                    continue;
                }
                let sha = name.split('.').next().unwrap_or_default().to_string();
                if !live.contains(&(function_id.clone(), sha)) {
                    let _ = std::fs::remove_file(file.path());
                }
            }
        }
    }

    /// Total bytes and count of cached artifacts.
    pub fn usage(&self) -> (u64, usize) {
        let entries = self.entries();
        (entries.values().map(|e| e.size).sum(), entries.len())
    }

    /// Writes the index (recency included) atomically.
    pub fn persist(&self) {
        let index = Index {
            entries: self.entries().values().cloned().collect(),
        };
        let written = serde_json::to_vec(&index)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_atomically(&self.dir.join(INDEX_FILE), &bytes));
        if let Err(error) = written {
            tracing::warn!(%error, "cannot write the cache index");
        }
    }
}

/// Removes an artifact file (its precompiled code goes with [`ArtifactCache::sweep_orphans`]).
fn remove_artifact_files(artifact: &Path) {
    let _ = std::fs::remove_file(artifact);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, limits: CacheLimits) -> ArtifactCache {
        ArtifactCache::open(dir, limits).unwrap().0
    }

    #[test]
    fn insert_verifies_and_lays_out_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), CacheLimits::default());
        let (path, sha) = cache.insert("hello", 3, b"bytes", None).unwrap();
        assert_eq!(path, dir.path().join("hello/3.wasm"));
        assert_eq!(std::fs::read(&path).unwrap(), b"bytes");
        assert_eq!(sha, sha256_hex(b"bytes"));
        let error = cache
            .insert("hello", 4, b"other", Some(&"0".repeat(64)))
            .unwrap_err();
        assert!(matches!(error, CacheError::Sha256Mismatch { .. }));
        assert!(
            !dir.path().join("hello/4.wasm").exists(),
            "a mismatching artifact is never written"
        );
    }

    #[test]
    fn versions_live_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let cache = cache(dir.path(), CacheLimits::default());
        cache.insert("f", 1, b"one", None).unwrap();
        cache.insert("f", 2, b"two", None).unwrap();
        assert_eq!(std::fs::read(cache.path("f", 1)).unwrap(), b"one");
        assert_eq!(std::fs::read(cache.path("f", 2)).unwrap(), b"two");
    }

    #[test]
    fn corrupt_and_unknown_files_are_deleted_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        {
            let cache = cache(dir.path(), CacheLimits::default());
            cache.insert("good", 1, b"good", None).unwrap();
            cache.insert("bad", 1, b"original", None).unwrap();
        }
        std::fs::write(dir.path().join("bad/1.wasm"), b"tampered").unwrap();
        std::fs::create_dir_all(dir.path().join("stray")).unwrap();
        std::fs::write(dir.path().join("stray/1.wasm"), b"who put this here").unwrap();
        let (cache, corrupt) = ArtifactCache::open(dir.path(), CacheLimits::default()).unwrap();
        let mut reasons: Vec<_> = corrupt
            .iter()
            .map(|c| (c.path.clone(), c.reason.clone()))
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].1.contains("sha256 mismatch"), "{reasons:?}");
        assert!(
            reasons[1].1.contains("not in the cache index"),
            "{reasons:?}"
        );
        assert!(!dir.path().join("bad/1.wasm").exists());
        assert!(!dir.path().join("stray/1.wasm").exists());
        assert!(cache.get("good", 1).is_some());
        assert!(cache.get("bad", 1).is_none());
    }

    #[test]
    fn eviction_is_least_recently_used_by_size_and_count_and_survives_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let limits = CacheLimits {
            max_bytes: 30,
            max_files: 3,
        };
        {
            let cache = cache(dir.path(), limits);
            cache.insert("a", 1, &[1; 10], None).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            cache.insert("b", 1, &[2; 10], None).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            cache.insert("c", 1, &[3; 10], None).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            cache.touch("a", 1);
            cache.persist();
        }
        // After a restart, "b" is still the least recently used.
        let cache = cache(dir.path(), limits);
        cache.insert("d", 1, &[4; 10], None).unwrap();
        assert!(cache.get("b", 1).is_none(), "b was least recently used");
        assert!(!cache.path("b", 1).exists());
        for id in ["a", "c", "d"] {
            assert!(cache.get(id, 1).is_some(), "{id} must stay");
        }
        // By size: one big artifact pushes out the rest, but never itself.
        cache.insert("e", 1, &[5; 25], None).unwrap();
        assert_eq!(cache.usage(), (25, 1));
        assert_eq!(cache.evict(None), 0);
    }
}
