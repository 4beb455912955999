//! `FilesWritten → Committed → Checkpointed`: the conditional Iceberg commit (dead letters
//! first, then the sink table) and the fenced commit record.

use std::collections::HashMap;
use std::time::Duration;

use crate::protocol::{record_event_time, BatchPlan, Checkpoint, EventTimes};
use iceberg::table::Table;
use iceberg::TableIdent;
use sluice_core::BatchId;
use sluice_iceberg::commit::{append_batch_on, find_batch_in_ancestry, CasOutcome};
use sluice_iceberg::sink::data_files_from_json;
use sluice_proto::v1::TaskSuccess;
use tracing::{info, warn};

use super::{BatchProtocol, BatchState};
use crate::error::{Error, Result};

/// How long one Iceberg commit may take before the batch gives up on it (and recovery
/// later finds out from the table whether it landed).
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Commits refused because the table moved on, before the batch fails (and is retried).
const MAX_CONFLICTS: u32 = 10;

/// Snapshot summary property holding the highest event time the batch read per
/// partition (JSON: topic -> partition -> ms), for the watermark.
pub const EVENT_TIMES_PROPERTY: &str = "sluice.max-event-time";

/// Snapshot summary property listing a stateful batch's state files (JSON array).
pub const STATE_FILES_PROPERTY: &str = "sluice.state-files";

/// The highest event time per partition over a batch's task results.
pub fn batch_event_times(tasks: &[TaskSuccess]) -> EventTimes {
    let mut times = EventTimes::new();
    for seen in tasks.iter().flat_map(|t| &t.max_event_times) {
        record_event_time(
            &mut times,
            &seen.topic,
            seen.partition,
            seen.max_event_time_ms,
        );
    }
    times
}

/// How a batch's commit to one table ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCommitted {
    pub snapshot_id: i64,
    /// False when the table already held the batch.
    pub appended: bool,
}

impl BatchProtocol {
    /// Commits the batch's dead letters, then its data files; the batch is `Committed`.
    pub(super) async fn commit(
        &mut self,
        plan: BatchPlan,
        tasks: &[TaskSuccess],
    ) -> Result<BatchState> {
        let batch = plan.batch_id;
        let dead_letters: Vec<String> = tasks
            .iter()
            .flat_map(|t| t.dead_letter_files_json.iter().cloned())
            .collect();
        if let (Some(ident), false) = (self.sink.dead_letter.clone(), dead_letters.is_empty()) {
            // Before the main table: a batch found in the main table always has its dead
            // letters committed.
            let table = self.sink.load(&ident).await?;
            self.commit_to(&ident, table, batch, &dead_letters, &HashMap::new())
                .await?;
        }
        let files: Vec<String> = tasks
            .iter()
            .flat_map(|t| t.data_files_json.iter().cloned())
            .collect();
        let event_times = batch_event_times(tasks);
        let state_files: Vec<String> = tasks
            .iter()
            .flat_map(|t| t.state_files.iter().cloned())
            .collect();
        let mut properties = HashMap::new();
        if !event_times.is_empty() {
            properties.insert(
                EVENT_TIMES_PROPERTY.to_string(),
                serde_json::to_string(&event_times).expect("event times serialize"),
            );
        }
        if self.stateful {
            properties.insert(
                STATE_FILES_PROPERTY.to_string(),
                serde_json::to_string(&state_files).expect("state files serialize"),
            );
        }
        let ident = self.sink.main.clone();
        let table = self.sink.main_table().await?;
        let committed = self
            .commit_to(&ident, table, batch, &files, &properties)
            .await?;
        if !committed.appended {
            warn!(job = %self.job_id, %batch, snapshot_id = committed.snapshot_id, "another attempt committed this batch first; its files are kept, ours discarded");
        }
        Ok(BatchState::Committed {
            plan,
            snapshot_id: committed.snapshot_id,
            appended: committed.appended,
            event_times,
            state_files,
        })
    }

    /// Appends batch `batch` to table `ident`, starting from `table` (a cached state is
    /// fine: if stale, the catalog refuses the commit and the table is read again). Every
    /// attempt checks the fence first and is a compare-and-swap on the state in which the
    /// batch was found absent.
    pub(super) async fn commit_to(
        &mut self,
        ident: &TableIdent,
        mut table: Table,
        batch: BatchId,
        files_json: &[String],
        properties: &HashMap<String, String>,
    ) -> Result<TableCommitted> {
        for _ in 0..MAX_CONFLICTS {
            if let Some(snapshot_id) = find_batch_in_ancestry(&table, &self.job_id, batch) {
                return Ok(TableCommitted {
                    snapshot_id,
                    appended: false,
                });
            }
            self.log.check_fence().await?;
            let files = data_files_from_json(&table, files_json)?;
            let catalog = self.sink.catalog().await?;
            let attempt = append_batch_on(catalog, &table, &self.job_id, batch, files, properties);
            let outcome = tokio::time::timeout(COMMIT_TIMEOUT, attempt)
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("the Iceberg commit of batch {batch} to {ident}"),
                    seconds: COMMIT_TIMEOUT.as_secs(),
                })??;
            match outcome {
                CasOutcome::Committed(committed) => {
                    let snapshot_id = committed
                        .metadata()
                        .current_snapshot_id()
                        .expect("a committed append has a current snapshot");
                    if ident == &self.sink.main {
                        self.sink.set_main(*committed);
                    }
                    return Ok(TableCommitted {
                        snapshot_id,
                        appended: true,
                    });
                }
                CasOutcome::Conflict => {
                    info!(job = %self.job_id, %batch, table = %ident, "the table changed since it was read; reading it again");
                    table = self.sink.load(ident).await?;
                }
            }
        }
        Err(Error::CommitConflicts {
            table: ident.to_string(),
            batch,
            attempts: MAX_CONFLICTS,
        })
    }

    /// Writes the commit record and the checkpoint after the batch, in one fenced
    /// transaction; the batch is `Checkpointed`.
    pub(super) async fn checkpoint(
        &mut self,
        before: &Checkpoint,
        plan: BatchPlan,
        snapshot_id: i64,
        event_times: &EventTimes,
        state_files: Vec<String>,
    ) -> Result<BatchState> {
        let mut next = before.after(&plan);
        if let Some(rule) = &self.watermark {
            next = next.with_batch_event_times(Some(&plan), event_times, rule);
        }
        if self.stateful {
            next.state_files = state_files;
        }
        self.log.commit(&next, snapshot_id).await?;
        Ok(BatchState::Checkpointed {
            plan,
            snapshot_id,
            checkpoint: next,
        })
    }
}
