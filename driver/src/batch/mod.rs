//! The batch protocol: the one place where a micro-batch moves from its logged ranges to a
//! committed snapshot, a checkpoint and a clean table directory.
//!
//! # The invariant
//!
//! Every Kafka record in a committed offset range appears in the sink table exactly once,
//! whatever process pauses or dies at whatever moment. Four rules hold it:
//!
//! 1. **Write-ahead.** A batch's ranges are in the offset log before anything runs, and a
//!    logged batch is only ever re-run with exactly those ranges (the log refuses a second
//!    plan for a logged batch).
//! 2. **Conditional commit.** Batch N's snapshot is appended on exactly the table state in
//!    which N was found absent from the current snapshot's ancestry; if the table moved
//!    on, the catalog refuses the commit and the driver looks again (found: record it,
//!    append nothing; absent: try on the new state). A stale driver can therefore never
//!    add N twice, however late it wakes up.
//! 3. **Fenced records.** The leader checks its fence right before each Iceberg commit,
//!    and the commit record and checkpoint are written in one checkpoint-store transaction
//!    that requires the leadership to be held.
//! 4. **Delete only what nobody can commit.** Data files carry the leader term in their
//!    names; files of batch N that are not in N's snapshot are deleted only after N's
//!    snapshot is in the table: from then on any other attempt's commit of N conflicts.
//!
//! # States
//!
//! ```text
//! Planned ──execute──▶ FilesWritten ──commit──▶ Committed ──checkpoint──▶ Checkpointed ──clean──▶ done
//!    ▲                                              ▲
//!    └──────────── recover (offset log, commit log, table ancestry) ──────┘
//! ```
//!
//! [`recover`](BatchProtocol::recover) maps what the checkpoint store and the table say
//! onto a state; [`execute_logged`] runs a `Planned` batch's tasks and
//! [`BatchProtocol::finish`] drives the state on to the end (files of other attempts
//! deleted).
//!
//! At most two batches are logged beyond the checkpoint: the job runner may log and run
//! batch N+1 while N is in `finish`, and commits N+1 only after N's checkpoint; recovery
//! takes them in order. See docs/architecture.md, "The commit protocol's invariant" and
//! "Two batches in flight".

mod clean;
mod commit;
mod recover;
mod sink;

#[cfg(test)]
pub(crate) mod tests;

use std::time::{Duration, Instant};

use crate::checkpoint::JobLog;
use async_trait::async_trait;
use sluice_core::{failpoint, BatchId, JobId};
use sluice_proto::v1::TaskSuccess;

use crate::error::{Error, Result};
use crate::protocol::{BatchPlan, Checkpoint, EventTimes, WatermarkRule};

pub use sink::SinkTables;

/// Where one batch stands in the protocol.
#[derive(Debug)]
pub enum BatchState {
    /// The ranges are in the offset log; the batch is not in the table.
    Planned { plan: BatchPlan },
    /// Every task succeeded; their files are written, not committed.
    FilesWritten { plan: BatchPlan, executed: Executed },
    /// The batch's snapshot is in the sink table: ours (`appended`) or an earlier
    /// attempt's, found by its `sluice.batch-id`.
    Committed {
        plan: BatchPlan,
        snapshot_id: i64,
        appended: bool,
        /// The highest event time the batch read per partition (jobs with a watermark),
        /// kept in the snapshot's summary so that recovery finds the same values.
        event_times: EventTimes,
        /// Windowed jobs: the state the batch left (rows of windows still open), also in
        /// the snapshot's summary.
        state_files: Vec<String>,
    },
    /// The commit record and the checkpoint after the batch are written.
    Checkpointed {
        plan: BatchPlan,
        snapshot_id: i64,
        checkpoint: Checkpoint,
    },
}

/// Runs a batch's tasks; the driver's scheduler in production, a fake in tests.
#[async_trait]
pub trait ExecuteBatch: Send {
    /// Runs every task of `plan`; files are named with leader term `term`.
    async fn execute(&mut self, plan: &BatchPlan, term: i64) -> Result<Executed>;
}

/// The results of a batch's tasks.
#[derive(Debug, Default)]
pub struct Executed {
    pub tasks: Vec<TaskSuccess>,
    /// Whether some task needed more than one attempt (earlier attempts may have left
    /// files behind).
    pub retried: bool,
    /// Attempts that crashed their executor or panicked.
    pub crashes: u32,
}

/// How long each phase of a batch's commit took (its tasks are timed where they run).
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimings {
    pub commit: Duration,
    pub checkpoint: Duration,
}

/// What a finished batch leaves for progress reporting.
#[derive(Debug)]
pub struct BatchOutcome {
    pub plan: BatchPlan,
    pub checkpoint: Checkpoint,
    /// The tasks' results; empty when the batch was found committed by recovery.
    pub tasks: Vec<TaskSuccess>,
    /// False when the table already held the batch (an earlier attempt committed it).
    pub appended: bool,
    pub timings: PhaseTimings,
    /// Task attempts that crashed their executor or panicked before the batch succeeded.
    pub crashes: u32,
}

/// One job's side of the protocol: its logs, its tables, its fence.
pub struct BatchProtocol {
    pub job_id: JobId,
    pub log: JobLog,
    pub sink: SinkTables,
    /// How the watermark follows the partitions, for jobs with a watermark.
    pub watermark: Option<WatermarkRule>,
    /// Whether the job keeps state between batches (windows, deduplication).
    pub stateful: bool,
}

impl BatchProtocol {
    pub fn new(job_id: JobId, log: JobLog, sink: SinkTables) -> BatchProtocol {
        BatchProtocol {
            job_id,
            log,
            sink,
            watermark: None,
            stateful: false,
        }
    }

    /// The same protocol for a job that keeps state between batches.
    pub fn with_state(mut self, stateful: bool) -> BatchProtocol {
        self.stateful = stateful;
        self
    }

    /// The same protocol for a job whose watermark follows `rule`.
    pub fn with_watermark(mut self, rule: Option<WatermarkRule>) -> BatchProtocol {
        self.watermark = rule;
        self
    }

    /// Writes a new batch's ranges to the offset log: the batch is `Planned`.
    pub async fn log_plan(&mut self, plan: BatchPlan) -> Result<BatchState> {
        log_plan_to(&self.log, plan).await
    }

    /// Drives a batch whose tasks ran (or that recovery found further on) from
    /// `FilesWritten` to its end: commit, checkpoint, clean-up. `checkpoint` is the
    /// checkpoint before the batch. Needs nothing the next batch's execution does, so
    /// that the two can overlap (docs/architecture.md, "Two batches in flight").
    pub async fn finish(
        &mut self,
        mut state: BatchState,
        checkpoint: &Checkpoint,
        recovered: bool,
    ) -> Result<BatchOutcome> {
        let mut timings = PhaseTimings::default();
        let mut tasks = Vec::new();
        let mut appended = false;
        let mut crashes = 0;
        // Files other than this attempt's can exist only for a recovered batch or after a
        // retried task; otherwise the clean-up's listing of the table is skipped.
        let mut garbage_possible = recovered;
        loop {
            let started = Instant::now();
            state = match state {
                BatchState::Planned { plan } => {
                    return Err(Error::CommitBeforeExecution {
                        batch: plan.batch_id,
                    })
                }
                BatchState::FilesWritten { plan, executed } => {
                    let committed = self.commit(plan, &executed.tasks).await?;
                    garbage_possible |= executed.retried;
                    crashes = executed.crashes;
                    tasks = executed.tasks;
                    timings.commit = started.elapsed();
                    failpoint::hit(failpoint::SNAPSHOT_COMMITTED, committed.batch_id()).await;
                    committed
                }
                BatchState::Committed {
                    plan,
                    snapshot_id,
                    appended: ours,
                    event_times,
                    state_files,
                } => {
                    appended = ours;
                    garbage_possible |= !ours;
                    let next = self
                        .checkpoint(checkpoint, plan, snapshot_id, &event_times, state_files)
                        .await?;
                    timings.checkpoint = started.elapsed();
                    failpoint::hit(failpoint::CHECKPOINT_WRITTEN, next.batch_id()).await;
                    next
                }
                BatchState::Checkpointed {
                    plan,
                    snapshot_id,
                    checkpoint: next,
                } => {
                    if garbage_possible {
                        self.clean(plan.batch_id, snapshot_id).await;
                    }
                    if self.stateful {
                        self.clean_state(
                            plan.batch_id,
                            &plan.state_files,
                            &next.state_files,
                            garbage_possible,
                        )
                        .await;
                    }
                    self.sink.expire_if_due(&self.log).await;
                    return Ok(BatchOutcome {
                        plan,
                        checkpoint: next,
                        tasks,
                        appended,
                        timings,
                        crashes,
                    });
                }
            };
        }
    }
}

/// Writes a new batch's ranges to `log`: the batch is `Planned`. Like
/// [`BatchProtocol::log_plan`], for a batch logged while the one before it commits.
pub async fn log_plan_to(log: &JobLog, plan: BatchPlan) -> Result<BatchState> {
    log.log_plan(&plan).await?;
    failpoint::hit(failpoint::PLAN_LOGGED, plan.batch_id).await;
    Ok(BatchState::Planned { plan })
}

/// `Planned → FilesWritten`: runs a logged batch's tasks under the leader's term, and
/// returns how long they took. Takes only the job's log, so that it can run while
/// [`BatchProtocol::finish`] commits the batch before.
pub async fn execute_logged(
    log: &JobLog,
    plan: BatchPlan,
    executor: &mut dyn ExecuteBatch,
) -> Result<(BatchState, Duration)> {
    let started = Instant::now();
    // A deposed leader must not even run tasks: their files would be written after the
    // new leader cleaned the batch up.
    log.check_fence().await?;
    let executed = executor.execute(&plan, log.term()).await?;
    let took = started.elapsed();
    failpoint::hit(failpoint::FILES_WRITTEN, plan.batch_id).await;
    Ok((BatchState::FilesWritten { plan, executed }, took))
}

impl BatchState {
    /// The batch this state is of.
    pub fn batch_id(&self) -> BatchId {
        self.plan().batch_id
    }

    /// The batch's logged plan.
    pub fn plan(&self) -> &BatchPlan {
        match self {
            BatchState::Planned { plan }
            | BatchState::FilesWritten { plan, .. }
            | BatchState::Committed { plan, .. }
            | BatchState::Checkpointed { plan, .. } => plan,
        }
    }
}
