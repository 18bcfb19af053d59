use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{ArtifactStore, Error, Result};

/// Artifacts as files under a directory, written atomically (temp file, fsync,
/// rename) so a crash never leaves a half-written archive under its key.
pub struct LocalArtifactStore {
    root: PathBuf,
}

impl LocalArtifactStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&root)
            .and_then(|()| std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| Error::unavailable(format!("cannot create {}", root.display()), e))?;
        Ok(LocalArtifactStore { root })
    }

    /// Deletes the artifacts under `prefix` last written before `cutoff`
    /// (with `infra up`, what S3 lifecycle rules do in production); returns
    /// how many. Links are not followed (the store writes none).
    pub async fn purge_before(&self, prefix: &str, cutoff: std::time::SystemTime) -> Result<usize> {
        validate_key(prefix.trim_end_matches('/'))?;
        let (root, top) = (self.root.clone(), self.root.join(prefix.trim_end_matches('/')));
        tokio::task::spawn_blocking(move || {
            let mut purged = 0;
            let mut dirs = Vec::new();
            let mut stack = vec![top];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else { continue };
                dirs.push(dir);
                for entry in entries.flatten() {
                    let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
                        continue;
                    };
                    if meta.is_dir() {
                        stack.push(entry.path());
                    } else if meta.modified().is_ok_and(|m| m < cutoff) && std::fs::remove_file(entry.path()).is_ok() {
                        purged += 1;
                    }
                }
            }
            // Deepest first: a dir emptied here goes too (never the root).
            for dir in dirs.iter().rev() {
                if *dir != root {
                    let _ = std::fs::remove_dir(dir);
                }
            }
            purged
        })
        .await
        .map_err(|e| Error::unavailable("artifact purge task failed", e))
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

/// Keys are relative slash-separated paths of plain segments.
fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!("invalid artifact key {key:?}")))
    }
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::unavailable(what, e)
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key)?;
        tokio::task::spawn_blocking(move || -> Result<()> {
            let dir = path.parent().unwrap_or(Path::new("."));
            std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err("temp file".into()))?;
            std::io::Write::write_all(&mut tmp, &data).map_err(io_err("write artifact".into()))?;
            tmp.as_file().sync_all().map_err(io_err("sync artifact".into()))?;
            tmp.persist(&path)
                .map_err(|e| Error::unavailable("rename artifact", e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| Error::unavailable("artifact writer task failed", e))?
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Bytes::from(data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(format!("artifact {key}"))),
            Err(e) => Err(Error::unavailable(format!("read artifact {key}"), e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::unavailable(format!("delete artifact {key}"), e)),
        }
        // Tidy now-empty parent folders, never the root itself.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            // From the deepest folder the prefix names, not the whole tree: a
            // cleanup of one of 1,000 functions must not walk all of them.
            let mut stack = vec![root.join(prefix_dir(&prefix))];
            while let Some(dir) = stack.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::unavailable("list artifacts", e)),
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(ft) = entry.file_type() else { continue };
                    if ft.is_dir() {
                        stack.push(path);
                    } else if ft.is_file() {
                        if let Ok(rel) = path.strip_prefix(&root) {
                            let key = rel.to_string_lossy().replace('\\', "/");
                            // Skip in-progress temp files (they start with ".tmp").
                            let hidden = key.rsplit('/').next().is_some_and(|n| n.starts_with('.'));
                            if key.starts_with(&prefix) && !hidden {
                                keys.push(key);
                            }
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| Error::unavailable("artifact list task failed", e))?
    }

    fn bucket(&self) -> &str {
        "local"
    }

    async fn ping(&self) -> Result<()> {
        let meta = tokio::fs::metadata(&self.root)
            .await
            .map_err(|e| Error::unavailable(format!("artifact dir {}", self.root.display()), e))?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(Error::Unavailable {
                message: format!("{} is not a directory", self.root.display()),
                source: None,
            })
        }
    }
}

/// The folder (relative to the root) that holds every key starting with
/// `prefix`: its part up to the last `/`, when that part is plain names.
fn prefix_dir(prefix: &str) -> std::path::PathBuf {
    let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
    let plain = std::path::Path::new(dir)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        std::path::PathBuf::from(dir)
    } else {
        std::path::PathBuf::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_listing_starts_in_the_folder_its_prefix_names() {
        use std::path::PathBuf;
        assert_eq!(prefix_dir("functions/abc/"), PathBuf::from("functions/abc"));
        assert_eq!(prefix_dir("functions/ab"), PathBuf::from("functions"));
        assert_eq!(prefix_dir("functions"), PathBuf::new());
        assert_eq!(prefix_dir(""), PathBuf::new());
        // Anything but plain names walks from the root (and filters there).
        assert_eq!(prefix_dir("../x/"), PathBuf::new());
        assert_eq!(prefix_dir("/etc/"), PathBuf::new());
        assert_eq!(prefix_dir("a/./b/"), PathBuf::from("a/b"));
    }

    use super::{prefix_dir, validate_key, LocalArtifactStore};
    use crate::backend::ArtifactStore;
    use std::time::{Duration, SystemTime};

    #[tokio::test]
    async fn old_artifacts_under_a_prefix_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalArtifactStore::open(dir.path().join("a")).unwrap();
        for key in ["outputs/job-1/a.txt", "outputs/job-1/d/b.txt", "functions/f/x.zip"] {
            store.put(key, bytes::Bytes::from_static(b"x")).await.unwrap();
        }
        let past = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(store.purge_before("outputs/", past).await.unwrap(), 0);
        assert_eq!(store.list("outputs/").await.unwrap().len(), 2);
        let future = SystemTime::now() + Duration::from_secs(1);
        assert_eq!(store.purge_before("outputs/", future).await.unwrap(), 2);
        assert!(store.list("outputs/").await.unwrap().is_empty());
        assert!(!dir.path().join("a/outputs/job-1").exists(), "emptied dirs go too");
        // Other prefixes are untouched.
        assert_eq!(store.list("functions/").await.unwrap(), ["functions/f/x.zip"]);
    }

    #[test]
    fn keys_cannot_escape_the_root() {
        assert!(validate_key("functions/abc/def.zip").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a\\b", "a b"] {
            assert!(validate_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
