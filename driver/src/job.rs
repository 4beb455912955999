//! One job's batch loop: plan, schedule, execute, commit, checkpoint, repeat on the trigger.
//! External failures (Kafka, etcd, catalog, executors) pause the job and retry with
//! backoff; user failures (bad data, bad SQL) fail it. Every batch is logged before it
//! runs, so a retry re-runs exactly the same ranges.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use sluice_common::catalog::{open_catalog, CatalogRef};
use sluice_common::checkpoint::JobLog;
use sluice_common::data_files::{delete_batch_files_except, names_of, snapshot_file_names};
use sluice_common::iceberg_sink::{
    dead_letter_ident, expire_snapshots, find_batch_snapshot, needs_expiry, table_ident,
    total_records, SNAPSHOTS_RETAINED,
};
use sluice_common::kafka::OffsetReader;
use sluice_common::offsets::Checkpoint;
use sluice_common::spec::{JobSpec, OnMalformed, Trigger};
use sluice_common::{failpoint, BatchId, Error as CommonError, JobId};
use sluice_proto::v1::JobStatus;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::committer::{commit, commit_dead_letters, record_commit};
use crate::error::{Error, Result};
use crate::planner::{self, LatestOffsets};
use crate::progress::{batch_progress, BatchTimings, ProgressLog};
use crate::recovery::{pending_batch, Pending};
use crate::scheduler::{JobRef, Scheduler};

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Stopping,
    Stopped,
    Finished,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "RUNNING",
            JobState::Stopping => "STOPPING",
            JobState::Stopped => "STOPPED",
            JobState::Finished => "FINISHED",
            JobState::Failed => "FAILED",
        }
    }

    /// The state named by [`JobState::as_str`].
    pub fn parse(name: &str) -> Option<JobState> {
        [
            JobState::Running,
            JobState::Stopping,
            JobState::Stopped,
            JobState::Finished,
            JobState::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Stopped | JobState::Finished | JobState::Failed
        )
    }
}

/// Why a job loop should end between batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    None,
    /// `sluice stop`: finish the running batch, then stop for good.
    User,
    /// The driver is shutting down: finish the running batch; the job resumes on restart.
    DriverShutdown,
}

#[derive(Debug)]
struct StatusInner {
    state: JobState,
    message: String,
    last_committed_batch: i64,
    total_rows: u64,
}

/// What the rest of the driver sees of a running job.
#[derive(Debug)]
pub struct JobShared {
    pub job_id: JobId,
    pub spec: JobSpec,
    pub progress: ProgressLog,
    status: Mutex<StatusInner>,
    stop: watch::Sender<StopRequest>,
}

impl JobShared {
    pub fn new(spec: JobSpec) -> Arc<JobShared> {
        Arc::new(JobShared {
            job_id: spec.name.clone(),
            spec,
            progress: ProgressLog::default(),
            status: Mutex::new(StatusInner {
                state: JobState::Running,
                message: String::new(),
                last_committed_batch: -1,
                total_rows: 0,
            }),
            stop: watch::channel(StopRequest::None).0,
        })
    }

    pub fn state(&self) -> JobState {
        self.status.lock().expect("status lock").state
    }

    fn set(&self, update: impl FnOnce(&mut StatusInner)) {
        update(&mut self.status.lock().expect("status lock"));
    }

    /// Records how the loop ended; `Running` means interrupted by driver shutdown.
    pub fn set_final(&self, state: JobState, message: &str) {
        self.set(|s| {
            s.state = state;
            s.message = message.to_string();
        });
    }

    /// Records the last committed batch (for a job that is not running).
    pub fn set_last_committed(&self, batch: BatchId) {
        self.set(|s| s.last_committed_batch = batch);
    }

    /// Asks the loop to end after the running batch.
    pub fn request_stop(&self, request: StopRequest) {
        if request == StopRequest::User {
            self.set(|s| {
                if !s.state.is_final() {
                    s.state = JobState::Stopping
                }
            });
        }
        self.stop.send_replace(request);
    }

    /// The job's status for clients, with its `recent` last batches.
    pub fn status(&self, recent: usize) -> JobStatus {
        let s = self.status.lock().expect("status lock");
        let sink = &self.spec.sink.iceberg;
        JobStatus {
            job_id: self.job_id.clone(),
            name: self.spec.name.clone(),
            state: s.state.as_str().to_string(),
            message: s.message.clone(),
            last_committed_batch: s.last_committed_batch,
            total_rows: s.total_rows,
            table: format!("{}.{}", sink.namespace, sink.table),
            recent_batches: self.progress.recent(recent),
        }
    }
}

/// Outcome of one pass of the loop.
enum Step {
    /// A batch was committed.
    Committed,
    /// No new data.
    Idle,
}

/// Runs a job's batches until it finishes, fails or is stopped.
pub struct JobRunner {
    shared: Arc<JobShared>,
    log: JobLog,
    scheduler: Scheduler,
    /// The job's stage plans, made at its first batch.
    job: Option<JobRef>,
    ident: TableIdent,
    catalog: Option<CatalogRef>,
    /// The sink table as this driver last committed it (reloaded after any Iceberg error).
    table: Option<Table>,
    offsets: Option<Arc<OffsetReader>>,
    /// For `once` / `available_now`: the offsets to stop at, fixed at the first batch.
    limit: Option<LatestOffsets>,
    batches_run: u64,
    last_trigger: Instant,
}

impl JobRunner {
    /// A runner; `job` is the job's plan when already made, else it is made at the first
    /// batch.
    pub fn new(
        shared: Arc<JobShared>,
        log: JobLog,
        scheduler: Scheduler,
        job: Option<JobRef>,
    ) -> JobRunner {
        JobRunner {
            ident: table_ident(&shared.spec.sink.iceberg),
            shared,
            log,
            scheduler,
            job,
            catalog: None,
            table: None,
            offsets: None,
            limit: None,
            batches_run: 0,
            last_trigger: Instant::now(),
        }
    }

    /// The loop; returns the final state (or `Running` when interrupted by shutdown).
    pub async fn run(mut self) -> (JobState, String) {
        let trigger = self.shared.spec.trigger();
        let mut stop = self.shared.stop.subscribe();
        let mut retry_delay = FIRST_RETRY_DELAY;
        info!(job = %self.shared.job_id, ?trigger, "job started");
        loop {
            match *stop.borrow() {
                StopRequest::User => return (JobState::Stopped, String::new()),
                StopRequest::DriverShutdown => return (JobState::Running, String::new()),
                StopRequest::None => {}
            }
            let started = Instant::now();
            let wait = match self.step().await {
                Ok(Step::Committed) => {
                    retry_delay = FIRST_RETRY_DELAY;
                    self.shared.set(|s| s.message.clear());
                    self.batches_run += 1;
                    match trigger {
                        Trigger::Once => return (JobState::Finished, String::new()),
                        Trigger::AvailableNow => Duration::ZERO,
                        Trigger::ProcessingTime(interval) => {
                            interval.saturating_sub(started.elapsed())
                        }
                    }
                }
                Ok(Step::Idle) => match trigger {
                    Trigger::Once | Trigger::AvailableNow => {
                        return (JobState::Finished, String::new())
                    }
                    Trigger::ProcessingTime(interval) => interval.saturating_sub(started.elapsed()),
                },
                Err(error) if error.is_user_error() => {
                    warn!(job = %self.shared.job_id, %error, "job failed");
                    return (JobState::Failed, error.to_string());
                }
                Err(error) => {
                    warn!(job = %self.shared.job_id, %error, retry_in = ?retry_delay, "batch could not complete; retrying");
                    let message = format!("retrying in {retry_delay:?}: {error}");
                    self.shared
                        .progress
                        .publish_pause(&self.shared.job_id, &message);
                    self.shared.set(|s| s.message = message);
                    if matches!(error, Error::Common(CommonError::Kafka { .. })) {
                        self.offsets = None;
                    }
                    if matches!(error, Error::Common(CommonError::Iceberg { .. })) {
                        self.catalog = None;
                    }
                    // The batch may or may not have reached the table: reload it.
                    self.table = None;
                    let wait = retry_delay;
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The catalog, opened on first use, with the sink table loaded (again after errors).
    async fn catalog(&mut self) -> Result<&dyn Catalog> {
        if self.catalog.is_none() {
            self.catalog = Some(open_catalog(&self.shared.spec.sink.iceberg.catalog).await?);
        }
        let catalog = self.catalog.as_ref().expect("catalog just opened");
        if self.table.is_none() {
            let table = catalog
                .load_table(&self.ident)
                .await
                .map_err(CommonError::iceberg(format!(
                    "loading table {}",
                    self.ident
                )))?;
            let rows = total_records(&table);
            self.shared.set(|s| s.total_rows = rows);
            self.table = Some(table);
        }
        Ok(catalog.as_ref())
    }

    async fn load_table(&mut self) -> Result<Table> {
        let ident = self.ident.clone();
        Ok(self
            .catalog()
            .await?
            .load_table(&ident)
            .await
            .map_err(CommonError::iceberg(format!("loading table {ident}")))?)
    }

    /// Deletes the batch's data files that are not in `keep` (best effort: a failure
    /// leaves garbage, never loses data).
    async fn clean(&mut self, batch: BatchId, keep: &HashSet<String>) {
        let cleaned = async {
            // Only the table's location and file IO are needed: a cached table will do.
            let table = match self.table.clone() {
                Some(table) => table,
                None => self.load_table().await?,
            };
            delete_batch_files_except(
                &table,
                self.storage_properties(),
                &self.shared.job_id,
                batch,
                keep,
            )
            .await?;
            Ok::<_, Error>(())
        };
        if let Err(error) = cleaned.await {
            warn!(batch, %error, "cannot clean up data files");
        }
        if self.shared.spec.source.kafka.on_malformed == OnMalformed::DeadLetter {
            self.clean_dead_letters(batch).await;
        }
    }

    /// The catalog's FileIO properties, for listing the table's storage.
    fn storage_properties(&self) -> &BTreeMap<String, String> {
        &self.shared.spec.sink.iceberg.catalog.properties
    }

    /// Deletes the batch's dead-letter files that its dead-letter snapshot (if any) lacks.
    async fn clean_dead_letters(&mut self, batch: BatchId) {
        let ident = dead_letter_ident(&self.shared.spec.sink.iceberg);
        let job_id = self.shared.job_id.clone();
        let cleaned = async {
            let table = self
                .catalog()
                .await?
                .load_table(&ident)
                .await
                .map_err(CommonError::iceberg(format!("loading table {ident}")))?;
            let keep = match find_batch_snapshot(&table, &job_id, batch) {
                Some(snapshot_id) => snapshot_file_names(&table, snapshot_id).await?,
                None => HashSet::new(),
            };
            delete_batch_files_except(&table, self.storage_properties(), &job_id, batch, &keep)
                .await?;
            Ok::<_, Error>(())
        };
        if let Err(error) = cleaned.await {
            warn!(batch, %error, "cannot clean up dead-letter files");
        }
    }

    async fn latest_offsets(&mut self) -> Result<LatestOffsets> {
        let kafka = &self.shared.spec.source.kafka;
        let reader = match &self.offsets {
            Some(reader) => reader.clone(),
            None => {
                let reader = Arc::new(OffsetReader::new(&kafka.bootstrap_servers)?);
                self.offsets = Some(reader.clone());
                reader
            }
        };
        let topics = kafka.topics.clone();
        let latest = tokio::task::spawn_blocking(move || reader.watermarks(&topics))
            .await
            .map_err(|e| Error::Timeout {
                what: format!("Kafka offset lookup ({e})"),
                seconds: 0,
            })??;
        Ok(latest)
    }

    async fn checkpoint(&self, latest: &LatestOffsets) -> Result<Checkpoint> {
        if let Some(checkpoint) = self.log.checkpoint().await? {
            return Ok(checkpoint);
        }
        let initial =
            planner::initial_checkpoint(&self.shared.spec.source.kafka.starting_offsets, latest);
        self.log.put_initial_checkpoint(&initial).await?;
        Ok(initial)
    }

    /// One batch: plan (or recover), run, commit, checkpoint.
    /// The job's stage plans; planned once (a failed planning is tried again next time).
    async fn job_ref(&mut self) -> Result<JobRef> {
        if let Some(job) = &self.job {
            return Ok(job.clone());
        }
        let job = JobRef::plan(&self.shared.job_id, &self.shared.spec).await?;
        self.job = Some(job.clone());
        Ok(job)
    }

    /// Keeps the sink table's metadata from growing with every batch: once enough
    /// snapshots accumulated, all but the most recent ones are expired. A failure only
    /// delays expiry to a later batch.
    async fn expire_snapshots(&mut self) {
        let (Some(catalog), Some(table)) = (&self.catalog, &self.table) else {
            return;
        };
        if !needs_expiry(table) {
            return;
        }
        match expire_snapshots(catalog.as_ref(), table, SNAPSHOTS_RETAINED).await {
            Ok(table) => {
                info!(job = %self.shared.job_id, kept = table.metadata().snapshots().len(), "expired old snapshots of the sink table");
                self.table = Some(table);
            }
            Err(error) => {
                warn!(job = %self.shared.job_id, %error, "could not expire old snapshots; trying again later");
                // The table may have moved on: reload before the next commit.
                self.table = None;
            }
        }
    }

    async fn step(&mut self) -> Result<Step> {
        let trigger_started = Instant::now();
        let job = self.job_ref().await?;
        let since_previous_trigger = trigger_started - self.last_trigger;
        let latest = self.latest_offsets().await?;
        let checkpoint = self.checkpoint(&latest).await?;
        let trigger = self.shared.spec.trigger();
        if self.limit.is_none() && matches!(trigger, Trigger::Once | Trigger::AvailableNow) {
            self.limit = Some(latest.clone());
        }
        let job_id = self.shared.job_id.clone();
        let last_plan = self.log.last_plan().await?;
        let pending = match &last_plan {
            Some(plan) if plan.batch_id > checkpoint.batch_id => {
                let table = self.load_table().await?;
                let pending = pending_batch(&checkpoint, last_plan, &table, &job_id);
                let keep = match &pending {
                    Pending::Committed { snapshot_id, .. } => {
                        snapshot_file_names(&table, *snapshot_id).await?
                    }
                    _ => HashSet::new(),
                };
                (pending, keep)
            }
            _ => (Pending::None, HashSet::new()),
        };
        let (plan, rerun) = match pending {
            (Pending::Committed { plan, snapshot_id }, keep) => {
                info!(job = %job_id, batch = plan.batch_id, snapshot_id, "batch found in the table; recording its commit");
                self.clean(plan.batch_id, &keep).await;
                let next = record_commit(&self.log, &checkpoint, &plan, snapshot_id).await?;
                self.shared.set(|s| s.last_committed_batch = next.batch_id);
                return Ok(Step::Committed);
            }
            (Pending::Rerun(plan), _) => {
                info!(job = %job_id, batch = plan.batch_id, "re-running a logged batch with its ranges");
                self.clean(plan.batch_id, &HashSet::new()).await;
                (plan, true)
            }
            (Pending::None, _) => {
                let capped = planner::cap(&latest, self.limit.as_ref());
                let now_ms = chrono_now_ms();
                let max = self.shared.spec.source.kafka.max_offsets_per_trigger;
                match planner::next_plan(&checkpoint, &capped, max, now_ms) {
                    Some(plan) => {
                        self.log.log_plan(&plan).await?;
                        failpoint::hit(failpoint::PLAN_LOGGED, plan.batch_id);
                        (plan, false)
                    }
                    None => return Ok(Step::Idle),
                }
            }
        };
        self.last_trigger = trigger_started;
        let span = info_span!("batch", job = %job_id, batch = plan.batch_id);
        async {
            let planned = trigger_started.elapsed();
            let tasks = planner::tasks(&plan, &self.shared.spec.parallelism);
            let results = match self.scheduler.run_batch(&job, plan.batch_id, tasks).await {
                Ok(results) => results,
                Err(error) => {
                    // Nothing of the batch is committed: its files and shuffle outputs
                    // are garbage.
                    self.scheduler.release_shuffle(&job, plan.batch_id);
                    self.clean(plan.batch_id, &HashSet::new()).await;
                    return Err(error);
                }
            };
            failpoint::hit(failpoint::FILES_WRITTEN, plan.batch_id);
            let dead_letter_files: Vec<String> = results
                .tasks
                .iter()
                .flat_map(|r| r.dead_letter_files_json.iter().cloned())
                .collect();
            if !dead_letter_files.is_empty() {
                let ident = dead_letter_ident(&self.shared.spec.sink.iceberg);
                let catalog = self.catalog().await?;
                let snapshot =
                    commit_dead_letters(catalog, &ident, &job_id, &plan, &dead_letter_files)
                        .await?;
                if !snapshot.appended {
                    // Committed by an earlier run of this batch: these files are garbage.
                    self.clean_dead_letters(plan.batch_id).await;
                }
            }
            let executed = trigger_started.elapsed() - planned;
            let files: Vec<String> = results
                .tasks
                .iter()
                .flat_map(|r| r.data_files_json.iter().cloned())
                .collect();
            let log = self.log.clone();
            self.catalog().await?;
            let (catalog, table) = match (&self.catalog, &self.table) {
                (Some(catalog), Some(table)) => (catalog, table),
                _ => unreachable!("catalog() opens the catalog and loads the table"),
            };
            let (next, committed) = commit(
                catalog.as_ref(),
                table,
                &log,
                &job_id,
                &checkpoint,
                &plan,
                &files,
            )
            .await?;
            self.scheduler.release_shuffle(&job, plan.batch_id);
            self.table = Some(committed.table);
            self.expire_snapshots().await;
            if !committed.snapshot.appended {
                // Another driver (a deposed leader) committed this batch first: its files
                // are the batch's, ours are garbage.
                let table = self.load_table().await?;
                let keep = snapshot_file_names(&table, committed.snapshot.snapshot_id).await?;
                self.clean(plan.batch_id, &keep).await;
            } else if results.retried || rerun {
                self.clean(plan.batch_id, &names_of(&files)).await;
            }
            let commit_timings = committed.timings;
            let timings = BatchTimings {
                plan: planned,
                execute: executed,
                commit: commit_timings,
                since_previous_trigger,
            };
            let progress = batch_progress(&job_id, &plan, &latest, &results.tasks, &timings);
            info!(
                rows = progress.input_rows,
                output_rows = progress.output_rows,
                duration_ms = progress.duration_ms,
                "batch committed"
            );
            if progress.offsets_lost > 0 {
                warn!(
                    offsets_lost = progress.offsets_lost,
                    "offsets deleted from Kafka before they were processed were skipped"
                );
            }
            self.shared.set(|s| {
                s.last_committed_batch = next.batch_id;
                s.total_rows += progress.output_rows;
            });
            self.shared.progress.publish(progress);
            Ok(Step::Committed)
        }
        .instrument(span)
        .await
    }
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
