//! Runs a batch's stages on live executors: least-loaded placement, job specs and stage
//! plans sent once per executor, bounded retries with exponential backoff on another
//! executor, and map tasks run again when their shuffle output cannot be fetched.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use sluice_core::failpoint;
use sluice_core::{BatchId, ExecutorId, TaskId};
use sluice_kafka::offsets::OffsetRange;

use crate::protocol::BatchPlan;
use sluice_plan::{StageKind, StageOutput};
use sluice_proto::v1::{
    task_result, FailureKind, PrepareJobRequest, ReleaseShuffleRequest, RewriteFiles,
    TaskDefinition, TaskFailure, TaskSuccess,
};
use tracing::{debug, error, warn};

use crate::crash;
use crate::error::{Error, Result};
use crate::job::plan::{JobRef, StageInfo};
use crate::registry::{ExecutorHandle, Registry};

mod tasks;

use tasks::BatchRun;

/// Attempts per task before the batch fails.
pub const MAX_TASK_ATTEMPTS: u32 = 4;
/// First retry delay; doubles on each further attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Deadline of the calls that hand an executor a job's plans or release its outputs.
const CONTROL_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a task waits for some executor to be alive.
const EXECUTOR_WAIT: Duration = Duration::from_secs(30);

/// Places tasks on executors.
#[derive(Debug, Clone)]
pub struct Scheduler {
    registry: Arc<Registry>,
    /// Deadline of one task attempt.
    task_timeout: Duration,
    /// Task attempts that failed and were retried, since start.
    retries: Arc<AtomicU64>,
    /// Task attempts that crashed their executor or panicked, since start.
    crashes: Arc<AtomicU64>,
    /// Where tasks went last, so the next batch's task of the same kind goes there again
    /// while it has a free slot: a partition's next range to the executor whose consumer
    /// already stands at the range's start and has fetched ahead, a state stage task to
    /// the executor holding its partitions' state in memory.
    homes: Arc<Mutex<HashMap<HomeKey, String>>>,
}

/// What a task's home is kept by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HomeKey {
    /// A partition of a job's source: job, topic, partition.
    SourcePartition(String, String, i32),
    /// A task of a job's state stage (the same task reduces the same shuffle partitions
    /// every batch): job, stage, task.
    StateTask(String, u32, u32),
}

/// The successful results of a batch's tasks.
#[derive(Debug)]
pub struct BatchResults {
    /// One result per task of every stage (the latest run of a map task run again).
    pub tasks: Vec<TaskSuccess>,
    /// Whether some task needed more than one attempt (earlier attempts may have left files).
    pub retried: bool,
    /// Attempts that crashed their executor or panicked.
    pub crashes: u32,
}

impl Scheduler {
    /// The task slots of every executor alive (at least one).
    pub fn task_slots(&self) -> u32 {
        self.registry
            .alive()
            .iter()
            .map(|executor| executor.slots)
            .sum::<u32>()
            .max(1)
    }

    pub fn new(registry: Arc<Registry>, task_timeout: Duration) -> Scheduler {
        Scheduler {
            registry,
            task_timeout,
            retries: Arc::new(AtomicU64::new(0)),
            crashes: Arc::new(AtomicU64::new(0)),
            homes: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Task attempts that failed and were retried, since start.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Task attempts that crashed their executor or panicked, since start.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Runs the job's stages in order; stages that read the stream run one task per
    /// entry of `ranges`. Every task must succeed. The first task that fails for good
    /// fails the batch (the other tasks' results are dropped).
    pub async fn run_batch(
        &self,
        job: &JobRef,
        plan: &BatchPlan,
        term: i64,
        ranges: Vec<Vec<OffsetRange>>,
    ) -> Result<BatchResults> {
        let batch = plan.batch_id;
        let run = BatchRun {
            job,
            batch,
            term,
            watermark_ms: plan.watermark_ms,
            state_files: plan.state_files.clone(),
            ranges,
            outputs: Mutex::new(HashMap::new()),
            results: Mutex::new(BTreeMap::new()),
            recoveries: Mutex::new(HashMap::new()),
            retried: AtomicBool::new(false),
            crashes: AtomicU32::new(0),
            reduce_tasks: self.task_slots(),
        };
        for stage in job.stages.iter() {
            let tasks = (0..run.task_count(stage)).map(|task| self.run_task(&run, stage.id, task));
            try_join_all(tasks).await?;
            if stage.output != StageOutput::Sink {
                failpoint::hit(failpoint::MAP_STAGE_DONE, batch).await;
            }
        }
        let retried = run.retried.load(Ordering::Relaxed);
        Ok(BatchResults {
            tasks: run
                .results
                .into_inner()
                .expect("results lock")
                .into_values()
                .collect(),
            retried,
            crashes: run.crashes.load(Ordering::Relaxed),
        })
    }

    /// Runs compaction `compaction`'s rewrite tasks, one per group of data files (as
    /// Iceberg JSON), each on some executor, retried elsewhere on failure; returns the
    /// files each task wrote.
    pub async fn run_rewrites(
        &self,
        job: &JobRef,
        compaction: i64,
        term: i64,
        groups: Vec<Vec<String>>,
    ) -> Result<Vec<Vec<String>>> {
        let tasks = groups
            .into_iter()
            .enumerate()
            .map(|(task, files)| self.run_rewrite(job, compaction, term, task as u32, files));
        try_join_all(tasks).await
    }

    async fn run_rewrite(
        &self,
        job: &JobRef,
        compaction: i64,
        term: i64,
        task: u32,
        files_json: Vec<String>,
    ) -> Result<Vec<String>> {
        let mut last_executor: Option<ExecutorId> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut message = String::new();
        for attempt in 1..=MAX_TASK_ATTEMPTS {
            let executor = self
                .wait_for_executor(last_executor.as_deref(), None)
                .await?;
            last_executor = Some(executor.id.clone());
            let definition = TaskDefinition {
                job_id: job.job_id.to_string(),
                task_id: task,
                attempt,
                term,
                rewrite: Some(RewriteFiles {
                    compaction_id: compaction,
                    files_json: files_json.clone(),
                }),
                ..Default::default()
            };
            match self.launch(&executor, job, definition).await {
                Ok(task_result::Outcome::Success(success)) => return Ok(success.data_files_json),
                Ok(task_result::Outcome::Failure(failure)) => {
                    if failure.kind() == FailureKind::UnknownJob {
                        executor
                            .prepared
                            .lock()
                            .expect("prepared lock")
                            .remove(&job.prepared_key);
                    }
                    warn!(executor = %executor.id, compaction, task, attempt, message = %failure.message, "rewrite task failed");
                    message = failure.message;
                    if !failure.retryable {
                        break;
                    }
                }
                Err(status) => {
                    warn!(executor = %executor.id, compaction, task, attempt, error = %status.message(), "executor call failed; retrying the rewrite elsewhere");
                    if executor_gone(&status) {
                        self.registry.remove(&executor.id, status.message());
                    }
                    message = status.message().to_string();
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        Err(Error::RewriteFailed {
            compaction,
            task,
            attempts: MAX_TASK_ATTEMPTS,
            message,
        })
    }

    /// Drops the batch's shuffle outputs on every executor (best effort: executors also
    /// drop a job's older outputs when its next batch runs).
    pub fn release_shuffle(&self, job: &JobRef, batch: BatchId) {
        if !job.shuffles() {
            return;
        }
        for executor in self.registry.alive() {
            let mut client = executor.client.clone();
            let request = ReleaseShuffleRequest {
                job_id: job.job_id.to_string(),
                batch_id: batch.get(),
            };
            tokio::spawn(async move {
                let call = client.release_shuffle(request);
                if let Err(e) = with_deadline(CONTROL_CALL_TIMEOUT, "release_shuffle", call).await {
                    debug!(executor = %executor.id, error = %e.message(), "shuffle release failed");
                }
            });
        }
    }

    async fn wait_for_executor(
        &self,
        avoid: Option<&str>,
        prefer: Option<&str>,
    ) -> Result<Arc<ExecutorHandle>> {
        let deadline = Instant::now() + EXECUTOR_WAIT;
        loop {
            if let Some(executor) = self.registry.pick(avoid, prefer) {
                return Ok(executor);
            }
            if Instant::now() > deadline {
                return Err(Error::NoExecutors);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one task of a stage to success, recording its result and output location.
    async fn run_task(&self, run: &BatchRun<'_>, stage_id: u32, task_id: u32) -> Result<()> {
        let stage = run.stage(stage_id);
        let batch = run.batch;
        let mut last_executor: Option<ExecutorId> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut last_failure = (String::new(), String::new());
        let mut attempt = 0;
        let mut recoveries = 0;
        let mut crashes = 0;
        let ranges: &[OffsetRange] = match stage.kind {
            StageKind::Source => &run.ranges[task_id as usize],
            _ => &[],
        };
        let home_keys = self.home_keys(run, stage, task_id, ranges);
        let home = self.home(&home_keys);
        while attempt < MAX_TASK_ATTEMPTS {
            attempt += 1;
            let prefer = if attempt == 1 { home.as_deref() } else { None };
            let executor = self
                .wait_for_executor(last_executor.as_deref(), prefer)
                .await?;
            last_executor = Some(executor.id.clone());
            let definition = run.definition(stage, task_id, attempt);
            let sent_inputs = definition.inputs.clone();
            match self.launch(&executor, run.job, definition).await {
                Ok(task_result::Outcome::Success(success)) => {
                    failpoint::hit(failpoint::TASK_FINISHED, batch).await;
                    self.set_home(home_keys, &executor.id);
                    if attempt > 1 {
                        run.retried.store(true, Ordering::Relaxed);
                    }
                    if stage.output != StageOutput::Sink {
                        run.outputs
                            .lock()
                            .expect("outputs lock")
                            .insert((stage_id, task_id), executor.flight_address.clone());
                    }
                    run.results
                        .lock()
                        .expect("results lock")
                        .insert((stage_id, task_id), success);
                    return Ok(());
                }
                Ok(task_result::Outcome::Failure(failure)) if !failure.retryable => {
                    return Err(Error::TaskFailed {
                        batch,
                        task: TaskId(task_id),
                        attempts: attempt,
                        kind: failure.kind().label(),
                        message: failure.message,
                        retryable: false,
                    });
                }
                Ok(task_result::Outcome::Failure(TaskFailure {
                    lost_stage: Some(lost_stage),
                    lost_map_task: Some(lost_task),
                    message,
                    ..
                })) if recoveries < MAX_TASK_ATTEMPTS => {
                    // Not the task's fault: run the lost map task again, then this one.
                    recoveries += 1;
                    attempt -= 1;
                    run.retried.store(true, Ordering::Relaxed);
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(%batch, stage = stage_id, task = task_id, lost_stage, lost_task, %message, "map output lost; running its map task again");
                    let lost_address = sent_inputs
                        .iter()
                        .find(|i| i.stage_id == lost_stage)
                        .and_then(|i| i.outputs.iter().find(|o| o.map_task == lost_task))
                        .map(|o| o.flight_address.clone())
                        .unwrap_or_default();
                    Box::pin(self.recover_map_output(run, lost_stage, lost_task, &lost_address))
                        .await?;
                    continue;
                }
                Ok(task_result::Outcome::Failure(failure))
                    if failure.kind() == FailureKind::Panic =>
                {
                    warn!(executor = %executor.id, %batch, stage = stage_id, task = task_id, attempt, message = %failure.message, "task panicked");
                    crashes += 1;
                    self.count_crash(run);
                    last_failure = (failure.kind().label(), failure.message);
                }
                Ok(task_result::Outcome::Failure(failure)) => {
                    if failure.kind() == FailureKind::UnknownJob {
                        executor
                            .prepared
                            .lock()
                            .expect("prepared lock")
                            .remove(&run.job.prepared_key);
                    }
                    warn!(executor = %executor.id, %batch, stage = stage_id, task = task_id, attempt, kind = %failure.kind().label(), message = %failure.message, "task failed; retrying");
                    last_failure = (failure.kind().label(), failure.message);
                }
                Err(status) => {
                    warn!(executor = %executor.id, address = %executor.address, %batch, stage = stage_id, task = task_id, attempt, error = %status.message(), "executor call failed; retrying elsewhere");
                    if executor_gone(&status) {
                        self.registry.remove(&executor.id, status.message());
                    }
                    last_failure = ("executor_unreachable".into(), status.message().to_string());
                    if crash::executor_died(&executor.address, &status).await {
                        error!(executor = %executor.id, %batch, stage = stage_id, task = task_id, attempt, ranges = %crash::describe_ranges(ranges), "the executor died running the task");
                        crashes += 1;
                        self.count_crash(run);
                        last_failure.1 = format!("executor {} died running it", executor.id);
                    }
                }
            }
            if crashes >= crash::MAX_TASK_CRASHES {
                return Err(Error::TaskCrashed {
                    batch,
                    stage: stage_id,
                    task: TaskId(task_id),
                    crashes,
                    ranges: crash::describe_ranges(ranges),
                    last: last_failure.1,
                });
            }
            if attempt < MAX_TASK_ATTEMPTS {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(Error::TaskFailed {
            batch,
            task: TaskId(task_id),
            attempts: attempt,
            kind: last_failure.0,
            message: last_failure.1,
            retryable: true,
        })
    }

    fn count_crash(&self, run: &BatchRun<'_>) {
        run.crashes.fetch_add(1, Ordering::Relaxed);
        self.crashes.fetch_add(1, Ordering::Relaxed);
    }

    /// What a task's home is kept by: its ranges' partitions (the first one decides), or,
    /// for a task of the job's state stage, the task.
    fn home_keys(
        &self,
        run: &BatchRun<'_>,
        stage: &StageInfo,
        task_id: u32,
        ranges: &[OffsetRange],
    ) -> Vec<HomeKey> {
        let job_id = &run.job.job_id;
        if run.job.state_stages.contains(&stage.id) && stage.kind != StageKind::Source {
            return vec![HomeKey::StateTask(job_id.to_string(), stage.id, task_id)];
        }
        ranges
            .iter()
            .map(|r| HomeKey::SourcePartition(job_id.to_string(), r.topic.clone(), r.partition))
            .collect()
    }

    /// The executor that last ran the task of the first of `keys`.
    fn home(&self, keys: &[HomeKey]) -> Option<String> {
        let homes = self.homes.lock().expect("homes lock");
        homes.get(keys.first()?).cloned()
    }

    fn set_home(&self, keys: Vec<HomeKey>, executor: &str) {
        let mut homes = self.homes.lock().expect("homes lock");
        for key in keys {
            homes.insert(key, executor.to_string());
        }
    }

    /// Runs map task `task` of `stage` again, unless another task already did since its
    /// output at `lost_address` was found missing.
    async fn recover_map_output(
        &self,
        run: &BatchRun<'_>,
        stage: u32,
        task: u32,
        lost_address: &str,
    ) -> Result<()> {
        let lock = run
            .recoveries
            .lock()
            .expect("recoveries lock")
            .entry((stage, task))
            .or_default()
            .clone();
        let _one_at_a_time = lock.lock().await;
        let current = run
            .outputs
            .lock()
            .expect("outputs lock")
            .get(&(stage, task))
            .cloned();
        if current.as_deref() != Some(lost_address) {
            return Ok(());
        }
        if let Some(executor) = self.registry.by_flight_address(lost_address) {
            self.registry
                .remove(&executor.id, "its shuffle output could not be fetched");
        }
        self.run_task(run, stage, task).await
    }

    /// Sends the job spec when the executor lacks it, then the task.
    async fn launch(
        &self,
        executor: &ExecutorHandle,
        job: &JobRef,
        task: TaskDefinition,
    ) -> Result<task_result::Outcome, tonic::Status> {
        let mut client = executor.client.clone();
        let prepared = executor
            .prepared
            .lock()
            .expect("prepared lock")
            .contains(&job.prepared_key);
        if !prepared {
            let request = PrepareJobRequest {
                job_id: job.job_id.to_string(),
                spec_json: job.spec_json.as_ref().clone(),
                stages: job.stage_plans.as_ref().clone(),
            };
            let call = client.prepare_job(request);
            with_deadline(CONTROL_CALL_TIMEOUT, "prepare_job", call).await?;
            executor
                .prepared
                .lock()
                .expect("prepared lock")
                .insert(job.prepared_key.clone());
        }
        executor.in_flight.fetch_add(1, Ordering::Relaxed);
        debug!(executor = %executor.id, batch = task.batch_id, task = task.task_id, "task sent");
        let call = client.run_task(task);
        let reply = with_deadline(self.task_timeout, "run_task", call).await;
        executor.in_flight.fetch_sub(1, Ordering::Relaxed);
        reply?.into_inner().outcome.ok_or_else(|| {
            tonic::Status::internal("the executor sent a task result without an outcome")
        })
    }
}

/// Awaits an executor call for at most `deadline`: a paused or wedged executor answers
/// nothing, and the call would otherwise wait for ever.
async fn with_deadline<T>(
    deadline: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "{what} got no answer within {}s",
                deadline.as_secs()
            )))
        })
}

/// Whether a failed call means the executor itself is unreachable or broken.
fn executor_gone(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Internal
    )
}
