//! A checkpoint store in one local file, for single-machine clusters without etcd.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::CheckpointStore;
use crate::error::{Error, Result};

/// Keeps every entry in memory and rewrites the file atomically (write, fsync, rename)
/// on each change, so a crash leaves either the old or the new state.
#[derive(Debug)]
pub struct EmbeddedStore {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, String>>,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating it when absent.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let io_err = |context: &str| {
            let context = format!("{context} {}", path.display());
            move |source| Error::Io { context, source }
        };
        let entries = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Checkpoint {
                message: format!("corrupt embedded store {}: {e}", path.display()),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err("creating directory for"))?;
                }
                BTreeMap::new()
            }
            Err(e) => return Err(io_err("reading")(e)),
        };
        Ok(EmbeddedStore {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
        })
    }

    fn persist(&self, entries: &BTreeMap<String, String>) -> Result<()> {
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&serde_json::to_vec(entries).expect("strings serialize"))?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|source| Error::Io {
            context: format!("writing {}", self.path.display()),
            source,
        })
    }
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
        let mut next = entries.clone();
        next.extend(new_entries);
        self.persist(&next)?;
        *entries = next;
        Ok(())
    }

    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()> {
        let mut entries = self.entries.lock().await;
        let mut next = entries.clone();
        next.retain(|k, _| !(k.starts_with(prefix) && k.as_str() < before));
        if next.len() != entries.len() {
            self.persist(&next)?;
            *entries = next;
        }
        Ok(())
    }
}
