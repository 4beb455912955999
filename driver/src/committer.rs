//! Committing a batch: one Iceberg snapshot, then the commit record and the new checkpoint
//! in one checkpoint-store transaction. Idempotent by batch id at every step.

use std::time::{Duration, Instant};

use iceberg::table::Table;
use iceberg::Catalog;
use iceberg::TableIdent;
use sluice_common::checkpoint::JobLog;
use sluice_common::failpoint;
use sluice_common::iceberg_sink::{commit_batch, commit_batch_to, BatchSnapshot};
use sluice_common::offsets::{BatchPlan, Checkpoint};

use crate::error::Result;

/// Snapshot id recorded for a batch that produced no rows (nothing to append).
pub const NO_SNAPSHOT: i64 = -1;

/// How a batch was committed, the table as committed, and how long each step took.
pub struct Committed {
    pub snapshot: BatchSnapshot,
    pub table: Table,
    pub timings: CommitTimings,
}

/// How long each commit step took.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitTimings {
    pub commit: Duration,
    pub checkpoint: Duration,
}

/// Commits `plan` with `data_files`; returns the new checkpoint.
pub async fn commit(
    catalog: &dyn Catalog,
    table: &Table,
    log: &JobLog,
    job_id: &str,
    checkpoint: &Checkpoint,
    plan: &BatchPlan,
    data_files: &[String],
) -> Result<(Checkpoint, Committed)> {
    let started = Instant::now();
    let (table, snapshot) = if data_files.is_empty() {
        let nothing = BatchSnapshot {
            snapshot_id: NO_SNAPSHOT,
            appended: true,
        };
        (table.clone(), nothing)
    } else {
        commit_batch_to(catalog, table, job_id, plan.batch_id, data_files).await?
    };
    failpoint::hit(failpoint::SNAPSHOT_COMMITTED, plan.batch_id);
    let commit = started.elapsed();
    let next = record_commit(log, checkpoint, plan, snapshot.snapshot_id).await?;
    failpoint::hit(failpoint::CHECKPOINT_WRITTEN, plan.batch_id);
    let timings = CommitTimings {
        commit,
        checkpoint: started.elapsed() - commit,
    };
    Ok((
        next,
        Committed {
            snapshot,
            table,
            timings,
        },
    ))
}

/// Commits a batch's dead letters to the dead-letter table; this happens before the main
/// commit, so a batch found in the main table always has its dead letters committed.
pub async fn commit_dead_letters(
    catalog: &dyn Catalog,
    dead_letter_table: &TableIdent,
    job_id: &str,
    plan: &BatchPlan,
    files: &[String],
) -> Result<BatchSnapshot> {
    Ok(commit_batch(catalog, dead_letter_table, job_id, plan.batch_id, files).await?)
}

/// Writes the commit record and the checkpoint after `plan`.
pub async fn record_commit(
    log: &JobLog,
    checkpoint: &Checkpoint,
    plan: &BatchPlan,
    snapshot_id: i64,
) -> Result<Checkpoint> {
    let next = checkpoint.after(plan);
    log.commit(&next, snapshot_id).await?;
    Ok(next)
}
