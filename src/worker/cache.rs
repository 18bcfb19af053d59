//! Function code on local disk, extracted once per code version (sha256) and
//! shared by every instance of that version.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::backend::{self, ArtifactStore};
use crate::function::package::{self, ExtractError};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot fetch the function's code: {0}")]
    Fetch(#[source] backend::Error),
    #[error("the function's code does not match its checksum (expected {expected}, got {actual})")]
    Checksum { expected: String, actual: String },
    #[error("the job names an invalid code version {0:?}")]
    BadVersion(String),
    #[error("cannot unpack the function's code: {0}")]
    Extract(#[from] ExtractError),
    #[error("code cache I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the function's code cannot be used (found earlier): {0}")]
    Unusable(String),
}

pub struct ArtifactCache {
    dir: PathBuf,
    store: Arc<dyn ArtifactStore>,
    /// Versions known to be extracted, so a warm invoke does not touch the disk.
    ready: Mutex<HashSet<String>>,
    /// Versions whose code cannot be extracted, with the reason: later runs
    /// fail at once instead of fetching and unpacking it again.
    unusable: Mutex<HashMap<String, String>>,
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ArtifactCache {
    pub fn new(dir: PathBuf, store: Arc<dyn ArtifactStore>) -> Self {
        ArtifactCache {
            dir,
            store,
            ready: Mutex::new(HashSet::new()),
            unusable: Mutex::new(HashMap::new()),
        }
    }

    /// The store code comes from (programs' output files go there too).
    pub fn store(&self) -> &Arc<dyn ArtifactStore> {
        &self.store
    }

    /// The bucket this worker reads code from (jobs name it as `s3Bucket`).
    pub fn bucket(&self) -> &str {
        self.store.bucket()
    }

    /// The directory holding the job's code, fetching and extracting it on a miss.
    /// Returns the directory and the code version (sha256).
    pub async fn code_dir(&self, s3_key: &str, sha256: &str) -> Result<(PathBuf, String), CacheError> {
        if !sha256.is_empty() {
            // The version becomes a path: accept only a real sha256.
            if !is_sha256_hex(sha256) {
                return Err(CacheError::BadVersion(sha256.to_string()));
            }
            if let Some(why) = self.unusable.lock().ok().and_then(|u| u.get(sha256).cloned()) {
                return Err(CacheError::Unusable(why));
            }
            let dir = self.dir.join(sha256);
            if self.ready.lock().is_ok_and(|r| r.contains(sha256)) {
                return Ok((dir, sha256.to_string()));
            }
            if tokio::fs::metadata(&dir).await.is_ok_and(|m| m.is_dir()) {
                self.mark_ready(sha256);
                return Ok((dir, sha256.to_string()));
            }
        }
        let bytes = self.store.get(s3_key).await.map_err(CacheError::Fetch)?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !sha256.is_empty() && actual != sha256 {
            return Err(CacheError::Checksum {
                expected: sha256.to_string(),
                actual,
            });
        }
        let target = self.dir.join(&actual);
        if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
            return Ok((target, actual));
        }
        let cache_dir = self.dir.clone();
        let dest = target.clone();
        let extracted = tokio::task::spawn_blocking(move || -> Result<(), CacheError> {
            use std::os::unix::fs::PermissionsExt;
            // Only the worker may read the cache; instances get their own
            // links to their own function's files.
            std::fs::create_dir_all(&cache_dir)?;
            std::fs::set_permissions(&cache_dir, std::fs::Permissions::from_mode(0o700))?;
            // Extract beside the target, then rename: readers never see half a tree.
            let tmp = tempfile::Builder::new().prefix(".extract-").tempdir_in(&cache_dir)?;
            package::extract_zip(&bytes, tmp.path())?;
            let tmp_path = tmp.keep();
            if let Err(e) = std::fs::rename(&tmp_path, &dest) {
                let _ = std::fs::remove_dir_all(&tmp_path);
                // Another job extracted the same version first: fine.
                if !dest.is_dir() {
                    return Err(e.into());
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| CacheError::Io(std::io::Error::other(e)))?;
        if let Err(e) = extracted {
            if let CacheError::Extract(ExtractError::Package(why)) = &e {
                // The bytes themselves are at fault: no retry can succeed.
                if let Ok(mut u) = self.unusable.lock() {
                    u.insert(actual.clone(), why.to_string());
                }
            }
            return Err(e);
        }
        self.mark_ready(&actual);
        Ok((target, actual))
    }

    fn mark_ready(&self, version: &str) {
        if let Ok(mut r) = self.ready.lock() {
            r.insert(version.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::embedded::LocalArtifactStore;

    /// A zip whose only entry declares 1 byte but inflates to 4 MiB.
    fn lying_zip() -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        w.start_file("main.py", zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&vec![b'#'; 4 << 20]).unwrap();
        let mut zip = w.finish().unwrap().into_inner();
        crate::function::package::tests::lie_about_sizes(&mut zip, 1);
        zip
    }

    #[tokio::test]
    async fn code_that_cannot_be_extracted_fails_fast_the_second_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalArtifactStore::open(dir.path().join("store")).unwrap());
        let zip = lying_zip();
        let sha = hex::encode(Sha256::digest(&zip));
        store.put("functions/f/x.zip", zip.into()).await.unwrap();
        let cache = ArtifactCache::new(dir.path().join("cache"), store);
        let first = cache.code_dir("functions/f/x.zip", &sha).await.unwrap_err();
        assert!(matches!(first, CacheError::Extract(_)), "{first}");
        // Nothing half-extracted is left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("cache")).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let second = cache.code_dir("functions/f/x.zip", &sha).await.unwrap_err();
        assert!(matches!(second, CacheError::Unusable(_)), "{second}");
    }
}
