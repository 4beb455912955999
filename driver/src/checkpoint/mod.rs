//! The checkpoint store: where a job's spec, offset log, commit log and checkpoint live.
//!
//! [`CheckpointStore`] is a tiny ordered key-value interface with an atomic multi-put;
//! [`JobLog`] puts the batch protocol (docs/architecture.md, "The commit protocol's
//! invariant") on top of it. Two implementations:
//! [`EtcdStore`] for clusters and [`EmbeddedStore`], a file, for one machine.

mod election;
mod embedded;
mod etcd;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{de::DeserializeOwned, Serialize};

pub use election::{campaign, Fence, Leadership, LEADER_ELECTION};
pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

use crate::error::{Error, Result};
use crate::protocol::{BatchPlan, Checkpoint};
use sluice_core::{BatchId, JobId};

/// Root of every key Sluice writes.
pub const KEY_ROOT: &str = "/sluice/jobs/";

/// An ordered key-value store with atomic multi-key writes.
#[async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<String>>;
    /// All entries whose key starts with `prefix`, ordered by key.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>>;
    /// The entry with the greatest key that starts with `prefix`.
    async fn last(&self, prefix: &str) -> Result<Option<(String, String)>>;
    /// Writes every entry, all or none.
    async fn put_all(&self, entries: Vec<(String, String)>) -> Result<()>;
    /// Writes `key` only when it is absent (fenced like every write); false, writing
    /// nothing, when it exists.
    async fn put_new(&self, key: &str, value: String) -> Result<bool>;
    /// Deletes every key that starts with `prefix` and sorts before `before`.
    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()>;
    /// The leadership term this store's writes are fenced by: increases with every new
    /// leader (etcd: the leader key's create revision; embedded: a counter bumped by each
    /// driver that opens the file).
    fn term(&self) -> i64;
    /// Fails with [`Error::Fenced`] when this driver's leadership is gone. Checked right
    /// before every Iceberg commit, which the store's own fence cannot cover.
    async fn check_fence(&self) -> Result<()>;
}

/// The durable record of a submitted job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct JobRecord {
    pub job_id: JobId,
    /// The spec as JSON.
    pub spec_json: String,
    /// Whether the job should run: false once stopped, finished or failed.
    pub active: bool,
    /// Final state and message when inactive.
    pub state: String,
    pub message: String,
}

/// A compaction of the job's sink table, logged before its rewrite tasks run: while not
/// `done`, its outcome is unknown (the replace snapshot may or may not be in the table,
/// its files may exist), and the next compaction settles it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct CompactionRecord {
    /// Increases with each compaction of the job; names its files and its snapshot.
    pub id: i64,
    /// The leadership term that started it.
    pub term: i64,
    pub done: bool,
}

/// How many batches of offset and commit log are kept behind the checkpoint.
pub const RETAINED_BATCHES: i64 = 100;

/// One job's durable state (docs/architecture.md, "The life of a batch"):
/// `/sluice/jobs/J/{job, offsets/N, commits/N, checkpoint}`.
#[derive(Debug, Clone)]
pub struct JobLog {
    store: Arc<dyn CheckpointStore>,
    prefix: String,
}

impl JobLog {
    pub fn new(store: Arc<dyn CheckpointStore>, job_id: &str) -> JobLog {
        JobLog {
            store,
            prefix: format!("{KEY_ROOT}{job_id}/"),
        }
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn batch_key(&self, log: &str, batch: BatchId) -> String {
        // Zero-padded so that key order is batch order.
        self.key(&format!("{log}/{batch:020}"))
    }

    /// Every job record in the store.
    pub async fn all_jobs(store: &dyn CheckpointStore) -> Result<Vec<JobRecord>> {
        let mut jobs = Vec::new();
        for (key, value) in store.list(KEY_ROOT).await? {
            if key.ends_with("/job") {
                jobs.push(decode(&key, &value)?);
            }
        }
        Ok(jobs)
    }

    pub async fn job(&self) -> Result<Option<JobRecord>> {
        self.get_json(&self.key("job")).await
    }

    pub async fn put_job(&self, record: &JobRecord) -> Result<()> {
        self.store
            .put_all(vec![(self.key("job"), encode(record))])
            .await
    }

    /// Writes a batch's ranges to the offset log (before the batch runs). Refuses a batch
    /// already logged: its logged ranges are the ones it runs with (the protocol's rule 1).
    pub async fn log_plan(&self, plan: &BatchPlan) -> Result<()> {
        let key = self.batch_key("offsets", plan.batch_id);
        if self.store.put_new(&key, encode(plan)).await? {
            Ok(())
        } else {
            Err(Error::BatchAlreadyLogged {
                batch: plan.batch_id,
                key,
            })
        }
    }

    /// The logged plan of batch `batch`, if it is still in the offset log.
    pub async fn plan(&self, batch: BatchId) -> Result<Option<BatchPlan>> {
        self.get_json(&self.batch_key("offsets", batch)).await
    }

    /// The most recently logged batch plan.
    pub async fn last_plan(&self) -> Result<Option<BatchPlan>> {
        match self.store.last(&self.key("offsets/")).await? {
            Some((key, value)) => Ok(Some(decode(&key, &value)?)),
            None => Ok(None),
        }
    }

    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        self.get_json(&self.key("checkpoint")).await
    }

    /// Records the starting offsets before the first batch.
    pub async fn put_initial_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()> {
        self.store
            .put_all(vec![(self.key("checkpoint"), encode(checkpoint))])
            .await
    }

    /// Records batch `checkpoint.batch_id` as committed and moves the checkpoint, atomically.
    pub async fn commit(&self, checkpoint: &Checkpoint, snapshot_id: i64) -> Result<()> {
        let batch = checkpoint.batch_id;
        self.store
            .put_all(vec![
                (self.batch_key("commits", batch), snapshot_id.to_string()),
                (self.key("checkpoint"), encode(checkpoint)),
            ])
            .await?;
        let horizon = BatchId::new(batch.get() - RETAINED_BATCHES);
        if horizon > BatchId::FIRST {
            for log in ["offsets", "commits"] {
                self.store
                    .delete_range(&self.key(&format!("{log}/")), &self.batch_key(log, horizon))
                    .await?;
            }
        }
        Ok(())
    }

    /// The job's latest compaction, if it ever compacted.
    pub async fn compaction(&self) -> Result<Option<CompactionRecord>> {
        self.get_json(&self.key("compaction")).await
    }

    /// Records the job's latest compaction (before its rewrite runs, and once done).
    pub async fn put_compaction(&self, record: &CompactionRecord) -> Result<()> {
        self.store
            .put_all(vec![(self.key("compaction"), encode(record))])
            .await
    }

    /// The leadership term of this driver (see [`CheckpointStore::term`]).
    pub fn term(&self) -> i64 {
        self.store.term()
    }

    /// Fails with [`Error::Fenced`] when this driver is no longer the leader.
    pub async fn check_fence(&self) -> Result<()> {
        self.store.check_fence().await
    }

    /// Whether batch `batch` is recorded as committed.
    pub async fn is_committed(&self, batch: BatchId) -> Result<bool> {
        Ok(self
            .store
            .get(&self.batch_key("commits", batch))
            .await?
            .is_some())
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.store.get(key).await? {
            Some(value) => Ok(Some(decode(key, &value)?)),
            None => Ok(None),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("checkpoint records always serialize")
}

fn decode<T: DeserializeOwned>(key: &str, value: &str) -> Result<T> {
    serde_json::from_str(value).map_err(|e| Error::Checkpoint {
        message: format!("corrupt record at {key}: {e}"),
    })
}

#[cfg(test)]
pub(crate) mod conformance;
