//! Compaction while streaming: between batches the driver, the table's only writer,
//! rewrites a partition's small data files into large ones on executors and commits a
//! `replace` snapshot that swaps them, changing no rows. The same commit merges the
//! table's manifests into one per partition spec.
//!
//! The protocol mirrors the batch protocol (see `crate::batch`):
//!
//! 1. **Settle the last one.** A compaction whose record is not `done` has an unknown
//!    outcome: its snapshot found in the table's ancestry means committed; otherwise its
//!    files (named `J.c{id}.…`) are deleted. Either way it is then recorded done.
//! 2. **Write-ahead.** The next compaction's id is recorded (fenced) before any rewrite
//!    task runs, so whatever dies next, step 1 finds its files.
//! 3. **Conditional commit.** The replace is a compare-and-swap on exactly the table
//!    state the files were chosen in, after a fence check; on a conflict the driver
//!    reloads and tries again while the files are still live.
//! 4. **Bounded.** Rewrite tasks run under the spec's budget; a compaction over budget is
//!    abandoned (its files deleted now and again by step 1), never holding the next batch
//!    back for longer.
//!
//! The removed files stay on storage while older snapshots hold them; snapshot expiry
//! deletes them once none does (`crate::batch::SinkTables::expire_if_due`). See
//! docs/architecture.md, "Compaction".

mod select;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sluice_core::compaction::CompactionSpec;
use sluice_core::{failpoint, BatchId, JobId};
use sluice_iceberg::commit::{CasOutcome, JOB_ID_PROPERTY};
use sluice_iceberg::data_files::{
    compaction_prefix, delete_prefixed_files_except, file_name, DATA_DIR,
};
use sluice_iceberg::live::LiveFiles;
use sluice_iceberg::rewrite::{
    find_compaction_in_ancestry, replace_files_on, COMPACTION_ID_PROPERTY,
};
use sluice_iceberg::sink::{data_files_from_json, data_files_to_json};
use tracing::{info, warn};

use crate::batch::SinkTables;
use crate::checkpoint::{CompactionRecord, JobLog};
use crate::error::Result;

/// Replace commits tried before a compaction gives up for this time.
const COMMIT_ATTEMPTS: u32 = 3;

/// Runs rewrite tasks: the scheduler in production, a fake in tests.
#[async_trait]
pub trait RunRewrites: Send + Sync {
    /// Runs one rewrite task per group of data files (Iceberg JSON) and returns the files
    /// each wrote.
    async fn run_rewrites(
        &self,
        compaction: i64,
        term: i64,
        groups: Vec<Vec<String>>,
    ) -> Result<Vec<Vec<String>>>;
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    pub id: i64,
    /// Files replaced, files written in their place, and the bytes replaced.
    pub files_removed: u32,
    pub files_written: u32,
    pub bytes_removed: u64,
    pub duration: Duration,
    /// Whether the replace snapshot is in the table (false: abandoned over budget or
    /// because the table changed).
    pub committed: bool,
}

/// One job's compaction settings.
#[derive(Debug)]
pub struct Compactor {
    job_id: JobId,
    spec: CompactionSpec,
    target_file_size: u64,
    /// The sink table's live files, read only where appends changed them.
    live: LiveFiles,
}

impl Compactor {
    pub fn new(job_id: JobId, spec: CompactionSpec, target_file_size: u64) -> Compactor {
        Compactor {
            job_id,
            spec,
            target_file_size,
            live: LiveFiles::default(),
        }
    }

    /// Settles the last compaction, then compacts if some partition has enough small
    /// files. `None` when there was nothing to do.
    pub async fn run(
        &mut self,
        log: &JobLog,
        sink: &mut SinkTables,
        rewrites: &dyn RunRewrites,
    ) -> Result<Option<Compacted>> {
        if !self.spec.enabled {
            return Ok(None);
        }
        let started = Instant::now();
        let last = log.compaction().await?;
        if let Some(record) = last.as_ref().filter(|r| !r.done) {
            self.settle(log, sink, record).await?;
        }
        let table = sink.main_table().await?;
        let live = self.live.of(&table).await?;
        let groups = select::select(
            live,
            self.spec.min_files(),
            self.target_file_size,
            self.spec.max_bytes(),
        );
        if groups.is_empty() {
            return Ok(None);
        }
        let record = CompactionRecord {
            id: last.map_or(1, |r| r.id + 1),
            term: log.term(),
            done: false,
        };
        log.put_compaction(&record).await?;
        failpoint::hit(failpoint::COMPACTION_LOGGED, BatchId::new(record.id)).await;
        let mut compacted = Compacted {
            id: record.id,
            files_removed: groups.iter().map(|g| g.len() as u32).sum(),
            bytes_removed: groups
                .iter()
                .flatten()
                .map(|f| f.data_file.file_size_in_bytes())
                .sum(),
            ..Default::default()
        };
        let removed: HashSet<String> = groups
            .iter()
            .flatten()
            .map(|f| f.data_file.file_path().to_string())
            .collect();
        let groups_json = groups
            .into_iter()
            .map(|g| data_files_to_json(&table, g.into_iter().map(|f| f.data_file).collect()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let budget = Duration::from_millis(self.spec.budget_ms()? as u64);
        let run = rewrites.run_rewrites(record.id, record.term, groups_json);
        let written = match tokio::time::timeout(budget, run).await {
            Ok(written) => written?,
            Err(_) => {
                warn!(job = %self.job_id, compaction = record.id, budget_ms = budget.as_millis() as u64, "compaction over its budget; abandoned");
                self.delete_files_except(sink, record.id, &HashSet::new())
                    .await?;
                compacted.duration = started.elapsed();
                return Ok(Some(compacted));
            }
        };
        let added = data_files_from_json(&table, &written.concat())?;
        let added_names: HashSet<String> = added
            .iter()
            .map(|f| file_name(f.file_path()).to_string())
            .collect();
        compacted.files_written = added.len() as u32;
        failpoint::hit(failpoint::COMPACTION_FILES_WRITTEN, BatchId::new(record.id)).await;
        compacted.committed = self.commit(log, sink, &record, &removed, added).await?;
        if compacted.committed {
            failpoint::hit(failpoint::COMPACTION_COMMITTED, BatchId::new(record.id)).await;
            // Files of rewrite attempts that failed after writing are not in the table.
            self.delete_files_except(sink, record.id, &added_names)
                .await?;
        } else {
            self.delete_files_except(sink, record.id, &HashSet::new())
                .await?;
        }
        log.put_compaction(&CompactionRecord {
            done: true,
            ..record
        })
        .await?;
        compacted.duration = started.elapsed();
        info!(job = %self.job_id, compaction = compacted.id, removed = compacted.files_removed, written = compacted.files_written, bytes = compacted.bytes_removed, committed = compacted.committed, ms = compacted.duration.as_millis() as u64, "compaction");
        Ok(Some(compacted))
    }

    /// Commits the replace on the table state the files were chosen in, again on a
    /// newer state while every removed file is still live; false when it cannot.
    async fn commit(
        &self,
        log: &JobLog,
        sink: &mut SinkTables,
        record: &CompactionRecord,
        removed: &HashSet<String>,
        added: Vec<iceberg::spec::DataFile>,
    ) -> Result<bool> {
        let properties = HashMap::from([
            (JOB_ID_PROPERTY.to_string(), self.job_id.to_string()),
            (COMPACTION_ID_PROPERTY.to_string(), record.id.to_string()),
        ]);
        let mut table = sink.main_table().await?;
        for _ in 0..COMMIT_ATTEMPTS {
            log.check_fence().await?;
            let catalog = sink.catalog().await?;
            match replace_files_on(catalog, &table, removed, added.clone(), properties.clone())
                .await?
            {
                CasOutcome::Committed(committed) => {
                    sink.set_main(*committed);
                    return Ok(true);
                }
                CasOutcome::Conflict => {
                    let ident = sink.main.clone();
                    table = sink.load(&ident).await?;
                    if find_compaction_in_ancestry(&table, self.job_id.as_str(), record.id)
                        .is_some()
                    {
                        return Ok(true);
                    }
                }
            }
        }
        warn!(job = %self.job_id, compaction = record.id, "the table kept changing under the compaction; abandoned");
        Ok(false)
    }

    /// Settles a compaction whose outcome is unknown: committed if its snapshot is in the
    /// table, else its files are deleted; then it is recorded done.
    async fn settle(
        &self,
        log: &JobLog,
        sink: &mut SinkTables,
        record: &CompactionRecord,
    ) -> Result<()> {
        let ident = sink.main.clone();
        let table = sink.load(&ident).await?;
        let committed =
            find_compaction_in_ancestry(&table, self.job_id.as_str(), record.id).is_some();
        if !committed {
            self.delete_files_except(sink, record.id, &HashSet::new())
                .await?;
        }
        info!(job = %self.job_id, compaction = record.id, committed, "settled an unfinished compaction");
        log.put_compaction(&CompactionRecord {
            done: true,
            ..record.clone()
        })
        .await?;
        Ok(())
    }

    /// Deletes the files compaction `id` wrote whose names are not in `keep` (the files
    /// its replace snapshot holds, when committed).
    async fn delete_files_except(
        &self,
        sink: &mut SinkTables,
        id: i64,
        keep: &HashSet<String>,
    ) -> Result<()> {
        let table = sink.main_table().await?;
        let prefix = compaction_prefix(self.job_id.as_str(), id);
        let deleted = delete_prefixed_files_except(
            &table,
            sink.storage_properties(),
            DATA_DIR,
            &prefix,
            keep,
        )
        .await?;
        if deleted > 0 {
            info!(job = %self.job_id, compaction = id, deleted, "deleted compaction files the table does not hold");
        }
        Ok(())
    }
}
