//! A checkpoint store in one local file, for single-machine clusters without etcd.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::CheckpointStore;
use crate::error::{Error, Result};

/// The key holding the last driver term handed out by this store.
const TERM_KEY: &str = "/sluice/term";

/// Keeps every entry in memory and rewrites the file atomically (write, fsync, rename)
/// on each change, so a crash leaves either the old or the new state. One driver at a
/// time: opening takes an exclusive lock on `PATH.lock`, held until the store is dropped
/// (the process exits), and bumps the store's term.
#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, String>>,
    term: i64,
    /// Holds the lock for the store's lifetime.
    _lock: std::fs::File,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating it when absent. Fails with
    /// [`Error::StoreLocked`] when another driver has it open.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let io_err = |context: &str| {
            let context = format!("{context} {}", path.display());
            move |source| Error::from(sluice_core::Error::Io { context, source })
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("creating directory for"))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("opening the lock file of"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::StoreLocked {
                    path: path.display().to_string(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking")(e)),
        }
        let mut entries: BTreeMap<String, String> = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
                message: format!("corrupt embedded store {}: {e}", path.display()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io_err("reading")(e)),
        };
        let term = entries
            .get(TERM_KEY)
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0)
            + 1;
        entries.insert(TERM_KEY.to_string(), term.to_string());
        persist(path, &entries)?;
        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
            term,
            _lock: lock,
        })
    }
}

/// Writes `entries` to `path` atomically (write, fsync, rename).
fn persist(path: &Path, entries: &BTreeMap<String, String>) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(entries).expect("strings serialize"))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| {
        sluice_core::Error::Io {
            context: format!("writing {}", path.display()),
            source,
        }
        .into()
    })
}

#[async_trait]
impl CheckpointStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.entries.lock().await.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let entries = self.entries.lock().await;
        Ok(entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn last(&self, prefix: &str) -> Result<Option<(String, String)>> {
        let entries = self.entries.lock().await;
        Ok(entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .last()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    async fn put_all(&self, new_entries: Vec<(String, String)>) -> Result<()> {
        let mut entries = self.entries.lock().await;
        self.apply(&mut entries, |next| next.extend(new_entries))
    }

    async fn put_new(&self, key: &str, value: String) -> Result<bool> {
        let mut entries = self.entries.lock().await;
        if entries.contains_key(key) {
            return Ok(false);
        }
        self.apply(&mut entries, |next| {
            next.insert(key.to_string(), value);
        })?;
        Ok(true)
    }

    fn term(&self) -> i64 {
        self.term
    }

    async fn check_fence(&self) -> Result<()> {
        // The file lock makes this driver the store's only writer for as long as it lives.
        Ok(())
    }

    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()> {
        let mut entries = self.entries.lock().await;
        let doomed = |k: &String| k.starts_with(prefix) && k.as_str() < before;
        if !entries.keys().any(doomed) {
            return Ok(());
        }
        self.apply(&mut entries, |next| next.retain(|k, _| !doomed(k)))
    }
}

impl EmbeddedStore {
    /// Applies `change` to a copy of `entries`, persists the copy, then keeps it: on a
    /// failed write the store stays as it was, in memory and on disk.
    fn apply(
        &self,
        entries: &mut BTreeMap<String, String>,
        change: impl FnOnce(&mut BTreeMap<String, String>),
    ) -> Result<()> {
        let mut next = entries.clone();
        change(&mut next);
        persist(&self.path, &next)?;
        *entries = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_driver_cannot_open_a_store_in_use_and_each_opening_is_a_new_term() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoints.json");
        let first = EmbeddedStore::open(&path).unwrap();
        let error = EmbeddedStore::open(&path).unwrap_err();
        assert!(
            matches!(&error, Error::StoreLocked { path: p } if p.ends_with("checkpoints.json")),
            "{error}"
        );
        let term = first.term();
        drop(first);
        let second = EmbeddedStore::open(&path).unwrap();
        assert_eq!(second.term(), term + 1);
    }
}
