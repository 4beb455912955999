//! Runs a batch's stages on live executors: least-loaded placement, job specs and stage
//! plans sent once per executor, bounded retries with exponential backoff on another
//! executor, and map tasks run again when their shuffle output cannot be fetched.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use sluice_core::failpoint;
use sluice_core::spec::{Aggregation, JobSpec, WINDOW_END_COLUMN};
use sluice_core::{BatchId, ExecutorId, JobId, TaskId};
use sluice_iceberg::data_files::{state_file_partition, state_file_stage};
use sluice_kafka::offsets::OffsetRange;

use crate::batch::BatchPlan;
use sluice_plan::{plan_job, JobPlan, StageKind, StageOutput};
use sluice_proto::v1::{
    self, task_result, FailureKind, MapOutput, PrepareJobRequest, ReleaseShuffleRequest,
    RewriteFiles, ShuffleInput, StagePlan, TaskDefinition, TaskFailure, TaskSuccess,
};
use tracing::{debug, error, info, warn};

use crate::crash;
use crate::error::{Error, Result};
use crate::registry::{ExecutorHandle, Registry};

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

/// A stage as the scheduler runs it.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub id: u32,
    pub kind: StageKind,
    pub output: StageOutput,
    pub inputs: Vec<u32>,
}

/// The job a batch belongs to, as executors need it: spec and stage plans, made once.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub job_id: JobId,
    pub spec_json: Arc<String>,
    pub stages: Arc<Vec<StageInfo>>,
    /// The rows the last stage writes to the sink table.
    pub output_schema: arrow::datatypes::SchemaRef,
    stage_plans: Arc<Vec<StagePlan>>,
    /// Names this spec and plan on executors, so that a changed job is prepared again.
    prepared_key: String,
    /// The first stage that reads the stream: its tasks count input rows.
    counting_stage: Option<u32>,
    /// Stateful jobs: the stages whose tasks carry the state: those keeping it after a
    /// shuffle (sessions, deduplication, windows; windows over deduplicated records have
    /// two), else the stream's stage.
    state_stages: Vec<u32>,
}

impl JobRef {
    /// Plans the job's SQL into stages (once per job and driver).
    pub async fn plan(job_id: &str, spec: &JobSpec) -> Result<JobRef> {
        let plan = plan_job(spec).await?;
        let kafka = spec.event_time();
        check_aggregation(&plan, spec)?;
        if kafka.is_stateful() {
            check_stateful_plan(&plan, kafka.is_windowed())?;
        }
        // State is kept after the shuffle where the plan allows (sessions always), else
        // by the stream stage's tasks.
        let after_shuffle: Vec<u32> = plan
            .shuffle_state_stages(spec)
            .iter()
            .map(|s| s.stage_id)
            .collect();
        let refuse = |message: &str| {
            Err(sluice_core::Error::InvalidSql {
                message: message.into(),
            }
            .into())
        };
        if kafka.session.is_some() && after_shuffle.is_empty() {
            return refuse("a session job's plan must shuffle the stream by the session key");
        }
        if kafka.dedup.is_some() && kafka.window.is_some() && after_shuffle.len() < 2 {
            return refuse(
                "windows over deduplicated records must be aggregated right after the deduplication, e.g. SELECT window_start, window_end, country, count(*) FROM source GROUP BY window_start, window_end, country",
            );
        }
        let counting_stage = plan
            .stages
            .iter()
            .find(|s| s.kind == StageKind::Source)
            .map(|s| s.id);
        let state_stages = match (after_shuffle.is_empty(), kafka.is_stateful()) {
            (false, _) => after_shuffle,
            (true, true) => counting_stage.into_iter().collect(),
            (true, false) => vec![],
        };
        let encoded = plan.encoded_stages()?;
        debug!(job = %job_id, plan = %plan.display(), "stage plans");
        let spec_json = spec.to_json();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        spec_json.hash(&mut hasher);
        encoded.hash(&mut hasher);
        let stage_plans = plan
            .stages
            .iter()
            .zip(encoded)
            .map(|(stage, bytes)| StagePlan {
                stage_id: stage.id,
                plan: bytes,
                output: wire_output(stage.output).into(),
            })
            .collect();
        let stages: Vec<StageInfo> = plan
            .stages
            .iter()
            .map(|s| StageInfo {
                id: s.id,
                kind: s.kind,
                output: s.output,
                inputs: s.inputs.clone(),
            })
            .collect();
        info!(job = %job_id, stages = stages.len(), "job planned");
        Ok(JobRef {
            job_id: JobId::new(job_id),
            prepared_key: format!("{job_id}@{:016x}", hasher.finish()),
            counting_stage,
            state_stages,
            spec_json: Arc::new(spec_json),
            stages: Arc::new(stages),
            output_schema: plan.output_schema,
            stage_plans: Arc::new(stage_plans),
        })
    }

    /// Whether batches exchange rows between executors.
    pub fn shuffles(&self) -> bool {
        self.stages.len() > 1
    }
}

/// Refuses a query that aggregates the stream without a window or session, unless the
/// spec asks for one result per batch (`aggregation: per_batch`): over a stream that
/// never ends such a result could never be final, and summed per batch it would silently
/// differ from the same SQL over the same records as one batch.
fn check_aggregation(plan: &JobPlan, spec: &JobSpec) -> Result<()> {
    if spec.event_time().is_windowed() || spec.aggregation == Aggregation::PerBatch {
        return Ok(());
    }
    if !plan.aggregates() {
        return Ok(());
    }
    Err(sluice_core::Error::InvalidSql {
        message: "the query aggregates the stream (GROUP BY, DISTINCT or an aggregate function) without a window, so its result could never be final. Group by an event-time window to get each group once over all its records, e.g. GROUP BY tumble(ts, INTERVAL '1 minute'), country (with source.watermark), or set `aggregation: per_batch` for one row per group per batch".into(),
    }
    .into())
}

/// Refuses what stateful jobs cannot do yet: a windowed query without `window_end` (its
/// rows could not be held back until their window closes), or one reading the stream more
/// than once (only one reading keeps the state).
fn check_stateful_plan(plan: &JobPlan, windowed: bool) -> Result<()> {
    let refuse = |message: String| Err(sluice_core::Error::InvalidSql { message }.into());
    if windowed && plan.output_schema.index_of(WINDOW_END_COLUMN).is_err() {
        return refuse(format!(
            "a windowed job's query must select {WINDOW_END_COLUMN} (a window's rows are written once the watermark passes its end), e.g. SELECT window_start, window_end, count(*) FROM source GROUP BY window_start, window_end"
        ));
    }
    let readings = plan
        .stages
        .iter()
        .filter(|s| s.kind == StageKind::Source)
        .count();
    if readings > 1 {
        return refuse(format!(
            "a windowed or deduplicating job's query may read the stream once; this one reads it {readings} times (a self-join or union of source)"
        ));
    }
    Ok(())
}

/// A task of a stage, as (stage id, task id).
type StageTask = (u32, u32);

/// One batch in flight: where map outputs are and what each task returned.
struct BatchRun<'a> {
    job: &'a JobRef,
    batch: BatchId,
    /// The leadership term the batch runs under (named in data files).
    term: i64,
    /// The watermark the batch runs under (jobs with a watermark).
    watermark_ms: Option<i64>,
    /// Stateful jobs: the state the batch starts from, shared out among the tasks of the
    /// job's state stage.
    state_files: Vec<String>,
    /// The offset ranges of each task of the stages reading the stream.
    ranges: Vec<Vec<OffsetRange>>,
    /// Flight address of each finished map task, by (stage, task).
    outputs: Mutex<HashMap<StageTask, String>>,
    results: Mutex<BTreeMap<StageTask, TaskSuccess>>,
    /// One re-run at a time per map output.
    recoveries: Mutex<HashMap<StageTask, Arc<tokio::sync::Mutex<()>>>>,
    retried: AtomicBool,
    /// Attempts that crashed their executor or panicked.
    crashes: AtomicU32,
    /// Tasks of a stage after a hash shuffle: the shuffle partitions, or fewer when the
    /// cluster has fewer task slots (each task then reduces several partitions). Fixed
    /// for the batch, so that map outputs keep their task ids.
    reduce_tasks: u32,
}

impl BatchRun<'_> {
    fn stage(&self, id: u32) -> &StageInfo {
        &self.job.stages[id as usize]
    }

    fn task_count(&self, stage: &StageInfo) -> u32 {
        match stage.kind {
            StageKind::Source => self.ranges.len() as u32,
            StageKind::Hash(n) => (n as u32).min(self.reduce_tasks).max(1),
            StageKind::Single => 1,
        }
    }

    /// The shuffle partitions task `task` of a hash-reading stage reduces.
    fn partitions(&self, stage: &StageInfo, task: u32) -> Vec<u32> {
        match stage.kind {
            StageKind::Hash(n) => {
                let tasks = self.task_count(stage);
                (0..n as u32).filter(|p| p % tasks == task).collect()
            }
            _ => vec![],
        }
    }

    /// The state files task `task` of `stage` carries. Source tasks of a job whose state
    /// they keep take a share each (round-robin), so reading and rewriting the state is
    /// spread like the records; after a shuffle each task of a state stage takes that
    /// stage's files of the partitions it reduces (files naming no stage belong to the
    /// first state stage: they were written before a job could have two). State files
    /// without a partition that a source stage wrote before the job's state moved after
    /// the shuffle (an upgrade) go to the source tasks, whose rows then reach the state
    /// stage with the batch's.
    fn state_files_of(&self, stage: &StageInfo, task: u32) -> Vec<String> {
        let keeps_state = self.job.state_stages.contains(&stage.id);
        let tasks = self.task_count(stage).max(1) as usize;
        let partitions = self.partitions(stage, task);
        let stage_of =
            |path: &str| state_file_stage(path).or(self.job.state_stages.first().copied());
        self.state_files
            .iter()
            .enumerate()
            .filter(|(i, path)| {
                let partition = state_file_partition(path);
                match stage.kind {
                    StageKind::Source if keeps_state => i % tasks == task as usize,
                    StageKind::Source => {
                        partition.is_none()
                            && !self.job.state_stages.is_empty()
                            && i % tasks == task as usize
                    }
                    _ if !keeps_state || stage_of(path) != Some(stage.id) => false,
                    StageKind::Hash(_) => partition.is_some_and(|p| partitions.contains(&p)),
                    StageKind::Single => partition.is_some(),
                }
            })
            .map(|(_, path)| path.clone())
            .collect()
    }

    fn definition(&self, stage: &StageInfo, task: u32, attempt: u32) -> TaskDefinition {
        let outputs = self.outputs.lock().expect("outputs lock");
        let inputs = stage
            .inputs
            .iter()
            .map(|input| ShuffleInput {
                stage_id: *input,
                outputs: (0..self.task_count(self.stage(*input)))
                    .map(|map_task| MapOutput {
                        map_task,
                        flight_address: outputs
                            .get(&(*input, map_task))
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect();
        let ranges = match stage.kind {
            StageKind::Source => self.ranges[task as usize]
                .iter()
                .map(|range| v1::OffsetRange {
                    topic: range.topic.clone(),
                    partition: range.partition,
                    start: range.start,
                    end: range.end,
                })
                .collect(),
            _ => vec![],
        };
        TaskDefinition {
            job_id: self.job.job_id.to_string(),
            batch_id: self.batch.get(),
            task_id: task,
            attempt,
            ranges,
            stage_id: stage.id,
            partitions: self.partitions(stage, task),
            inputs,
            report_input: self.job.counting_stage == Some(stage.id),
            term: self.term,
            watermark_ms: self.watermark_ms,
            state_files: self.state_files_of(stage, task),
            rewrite: None,
        }
    }
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

/// A stage's output kind as the protocol carries it.
fn wire_output(output: StageOutput) -> v1::StageOutput {
    match output {
        StageOutput::Hash(_) => v1::StageOutput::Hash,
        StageOutput::Single => v1::StageOutput::Single,
        StageOutput::Sink => v1::StageOutput::Sink,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(id: u32, kind: StageKind, output: StageOutput) -> StageInfo {
        StageInfo {
            id,
            kind,
            output,
            inputs: if id == 0 { vec![] } else { vec![id - 1] },
        }
    }

    /// A batch of a job whose stream stage (0, two tasks) shuffles into four partitions
    /// reduced by stage 1 (two tasks), starting from `state_files`.
    fn run_of(job: &JobRef, state_files: &[&str]) -> Vec<Vec<String>> {
        let run = BatchRun {
            job,
            batch: BatchId::new(7),
            term: 1,
            watermark_ms: None,
            state_files: state_files.iter().map(|f| f.to_string()).collect(),
            ranges: vec![vec![], vec![]],
            outputs: Mutex::new(HashMap::new()),
            results: Mutex::new(BTreeMap::new()),
            recoveries: Mutex::new(HashMap::new()),
            retried: AtomicBool::new(false),
            crashes: AtomicU32::new(0),
            reduce_tasks: 2,
        };
        job.stages
            .iter()
            .flat_map(|stage| {
                (0..run.task_count(stage)).map(|task| run.state_files_of(stage, task))
            })
            .collect()
    }

    fn job(state_stages: &[u32]) -> JobRef {
        JobRef {
            job_id: JobId::new("j"),
            spec_json: Arc::new(String::new()),
            stages: Arc::new(vec![
                stage(0, StageKind::Source, StageOutput::Hash(4)),
                stage(1, StageKind::Hash(4), StageOutput::Sink),
            ]),
            output_schema: Arc::new(arrow::datatypes::Schema::empty()),
            stage_plans: Arc::new(vec![]),
            prepared_key: "j@0".into(),
            counting_stage: Some(0),
            state_stages: state_stages.to_vec(),
        }
    }

    #[test]
    fn state_files_go_to_the_tasks_of_their_partitions_and_old_ones_to_the_source() {
        let files = [
            "s/j.b6.old.parquet",
            "s/j.b6.new.p0.parquet",
            "s/j.b6.new.p1.parquet",
            "s/j.b6.new.p2.parquet",
            "s/j.b6.new.p3.parquet",
        ];
        // State after the shuffle: each reduce task its partitions' files; a file a
        // source stage wrote before (no partition) goes to a source task, once.
        let dealt = run_of(&job(&[1]), &files);
        assert_eq!(
            dealt,
            [
                vec!["s/j.b6.old.parquet".to_string()],
                vec![],
                vec![
                    "s/j.b6.new.p0.parquet".to_string(),
                    "s/j.b6.new.p2.parquet".to_string()
                ],
                vec![
                    "s/j.b6.new.p1.parquet".to_string(),
                    "s/j.b6.new.p3.parquet".to_string()
                ],
            ]
        );
        // State in the source tasks: they share every file; the reducers get none.
        let dealt = run_of(&job(&[0]), &files);
        assert_eq!(dealt[0].len() + dealt[1].len(), files.len());
        assert!(dealt[2].is_empty() && dealt[3].is_empty());
    }

    #[test]
    fn each_state_stage_gets_its_own_files_and_unnamed_ones_go_to_the_first() {
        // Deduplication kept by stage 1, windows over its output by stage 2.
        let mut two = job(&[1, 2]);
        two.stages = Arc::new(vec![
            stage(0, StageKind::Source, StageOutput::Hash(4)),
            stage(1, StageKind::Hash(4), StageOutput::Hash(4)),
            stage(2, StageKind::Hash(4), StageOutput::Sink),
        ]);
        let files = [
            "s/j.b6.new.g1.p0.parquet",
            "s/j.b6.new.g2.p0.parquet",
            "s/j.b6.new.g2.p1.s1_2_3_4.parquet",
            "s/j.b6.old.p1.parquet",
        ];
        let dealt = run_of(&two, &files);
        let owned = |i: usize| dealt[i].iter().map(String::as_str).collect::<Vec<_>>();
        assert!(owned(0).is_empty() && owned(1).is_empty(), "{dealt:?}");
        assert_eq!(owned(2), vec!["s/j.b6.new.g1.p0.parquet"]);
        assert_eq!(owned(3), vec!["s/j.b6.old.p1.parquet"]);
        assert_eq!(owned(4), vec!["s/j.b6.new.g2.p0.parquet"]);
        assert_eq!(owned(5), vec!["s/j.b6.new.g2.p1.s1_2_3_4.parquet"]);
    }
}
