//! Cranelift's incremental compilation cache on disk, shared by the compile workers of a
//! node: a second JavaScript or Python function embeds the same engine as the first, so
//! most of its functions come out of the cache instead of the compiler.
//!
//! One file per entry, named by the SHA-256 of Cranelift's key, holding the SHA-256 of the
//! value and the value: an entry that does not match its hash is deleted and treated as a
//! miss. Files are written atomically (temporary file, rename), so concurrent workers never
//! see half an entry. The directory is trimmed to its byte limit when a worker opens it
//! (oldest use first), so it exceeds the limit by at most one compilation's entries.

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// The store, as Wasmtime's `CacheStore`.
#[derive(Debug)]
pub(crate) struct DiskCacheStore {
    dir: PathBuf,
}

const HASH_BYTES: usize = 32;

impl DiskCacheStore {
    /// Opens (creating) `dir` and trims it to `max_bytes`.
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        trim(dir, max_bytes);
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path_of(&self, key: &[u8]) -> PathBuf {
        self.dir.join(hex::encode(Sha256::digest(key)))
    }
}

impl wasmtime::CacheStore for DiskCacheStore {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let path = self.path_of(key);
        let mut bytes = std::fs::read(&path).ok()?;
        if bytes.len() < HASH_BYTES
            || Sha256::digest(&bytes[HASH_BYTES..])[..] != bytes[..HASH_BYTES]
        {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // The use keeps the entry from being trimmed first.
        if let Ok(file) = std::fs::File::options().write(true).open(&path) {
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        bytes.drain(..HASH_BYTES);
        Some(Cow::Owned(bytes))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let mut contents = Vec::with_capacity(HASH_BYTES + value.len());
        contents.extend_from_slice(&Sha256::digest(&value));
        contents.extend_from_slice(&value);
        let path = self.path_of(key);
        let written = tempfile::NamedTempFile::new_in(&self.dir).and_then(|mut file| {
            use std::io::Write as _;
            file.write_all(&contents)?;
            file.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        written.is_ok()
    }
}

/// Deletes the least recently used entries until the directory holds at most `max_bytes`.
fn trim(dir: &Path, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let metadata = entry.metadata().ok().filter(|m| m.is_file())?;
            Some((metadata.modified().ok()?, metadata.len(), entry.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    if total <= max_bytes {
        return;
    }
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::CacheStore as _;

    #[test]
    fn entries_round_trip_and_corrupt_ones_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskCacheStore::open(dir.path(), 1 << 20).unwrap();
        assert!(store.get(b"key").is_none());
        assert!(store.insert(b"key", b"value".to_vec()));
        assert_eq!(store.get(b"key").as_deref(), Some(&b"value"[..]));
        let path = store.path_of(b"key");
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(store.get(b"key").is_none());
        assert!(!path.exists(), "the corrupt entry is deleted");
    }

    #[test]
    fn opening_trims_the_oldest_entries_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskCacheStore::open(dir.path(), 1 << 20).unwrap();
        for i in 0..10u8 {
            assert!(store.insert(&[i], vec![i; 1000]));
            let old = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(u64::from(i) + 1);
            std::fs::File::options()
                .write(true)
                .open(store.path_of(&[i]))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let store = DiskCacheStore::open(dir.path(), 5 * 1032).unwrap();
        let kept: Vec<u8> = (0..10u8).filter(|i| store.get(&[*i]).is_some()).collect();
        assert_eq!(kept, vec![5, 6, 7, 8, 9]);
    }
}
