//! Runs a batch's tasks on live executors: least-loaded placement, job specs sent once per
//! executor, bounded retries with exponential backoff on another executor.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::try_join_all;
use sluice_common::failpoint;
use sluice_common::offsets::OffsetRange;
use sluice_common::BatchId;
use sluice_proto::v1::{self, task_result, PrepareJobRequest, TaskDefinition, TaskSuccess};
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::registry::{ExecutorHandle, Registry};

/// Attempts per task before the batch fails.
pub const MAX_TASK_ATTEMPTS: u32 = 4;
/// First retry delay; doubles on each further attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a task waits for some executor to be alive.
const EXECUTOR_WAIT: Duration = Duration::from_secs(30);

/// Places tasks on executors.
#[derive(Debug, Clone)]
pub struct Scheduler {
    registry: Arc<Registry>,
    /// Task attempts that failed and were retried, since start.
    retries: Arc<AtomicU64>,
}

/// The successful results of a batch's tasks.
#[derive(Debug)]
pub struct BatchResults {
    pub tasks: Vec<TaskSuccess>,
    /// Whether some task needed more than one attempt (earlier attempts may have left files).
    pub retried: bool,
}

/// The job a batch belongs to, as executors need it.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub job_id: String,
    pub spec_json: Arc<String>,
}

impl Scheduler {
    pub fn new(registry: Arc<Registry>) -> Scheduler {
        Scheduler {
            registry,
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Task attempts that failed and were retried, since start.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Runs one task per range; all must succeed. The first task that fails for good
    /// fails the batch (the other tasks' results are dropped).
    pub async fn run_batch(
        &self,
        job: &JobRef,
        batch: BatchId,
        tasks: Vec<OffsetRange>,
    ) -> Result<BatchResults> {
        let runs = tasks
            .into_iter()
            .enumerate()
            .map(|(task_id, range)| self.run_task(job, batch, task_id as u32, range));
        let outcomes = try_join_all(runs).await?;
        Ok(BatchResults {
            retried: outcomes.iter().any(|(_, attempts)| *attempts > 1),
            tasks: outcomes.into_iter().map(|(success, _)| success).collect(),
        })
    }

    async fn wait_for_executor(&self, avoid: Option<&str>) -> Result<Arc<ExecutorHandle>> {
        let deadline = Instant::now() + EXECUTOR_WAIT;
        loop {
            if let Some(executor) = self.registry.pick(avoid) {
                return Ok(executor);
            }
            if Instant::now() > deadline {
                return Err(Error::NoExecutors);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs one task to success; returns its result and the attempts it took.
    async fn run_task(
        &self,
        job: &JobRef,
        batch: BatchId,
        task_id: u32,
        range: OffsetRange,
    ) -> Result<(TaskSuccess, u32)> {
        let mut last_executor: Option<String> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut last_failure = (String::new(), String::new());
        for attempt in 1..=MAX_TASK_ATTEMPTS {
            let executor = self.wait_for_executor(last_executor.as_deref()).await?;
            last_executor = Some(executor.id.clone());
            let definition = TaskDefinition {
                job_id: job.job_id.clone(),
                batch_id: batch,
                task_id,
                attempt,
                ranges: vec![v1::OffsetRange {
                    topic: range.topic.clone(),
                    partition: range.partition,
                    start: range.start,
                    end: range.end,
                }],
            };
            match self.launch(&executor, job, definition).await {
                Ok(task_result::Outcome::Success(success)) => {
                    failpoint::hit(failpoint::TASK_FINISHED, batch);
                    return Ok((success, attempt));
                }
                Ok(task_result::Outcome::Failure(failure)) if !failure.retryable => {
                    return Err(Error::TaskFailed {
                        batch,
                        task: task_id,
                        attempts: attempt,
                        kind: failure.kind,
                        message: failure.message,
                        retryable: false,
                    });
                }
                Ok(task_result::Outcome::Failure(failure)) => {
                    if failure.kind == "unknown_job" {
                        executor
                            .prepared
                            .lock()
                            .expect("prepared lock")
                            .remove(&job.job_id);
                    }
                    warn!(executor = %executor.id, batch, task = task_id, attempt, kind = %failure.kind, message = %failure.message, "task failed; retrying");
                    last_failure = (failure.kind, failure.message);
                }
                Err(status) => {
                    warn!(executor = %executor.id, address = %executor.address, batch, task = task_id, attempt, error = %status.message(), "executor call failed; retrying elsewhere");
                    if executor_gone(&status) {
                        self.registry.remove(&executor.id, status.message());
                    }
                    last_failure = ("executor_unreachable".into(), status.message().to_string());
                }
            }
            if attempt < MAX_TASK_ATTEMPTS {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        Err(Error::TaskFailed {
            batch,
            task: task_id,
            attempts: MAX_TASK_ATTEMPTS,
            kind: last_failure.0,
            message: last_failure.1,
            retryable: true,
        })
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
            .contains(&job.job_id);
        if !prepared {
            client
                .prepare_job(PrepareJobRequest {
                    job_id: job.job_id.clone(),
                    spec_json: job.spec_json.as_ref().clone(),
                })
                .await?;
            executor
                .prepared
                .lock()
                .expect("prepared lock")
                .insert(job.job_id.clone());
        }
        executor.in_flight.fetch_add(1, Ordering::Relaxed);
        debug!(executor = %executor.id, batch = task.batch_id, task = task.task_id, "task sent");
        let reply = client.run_task(task).await;
        executor.in_flight.fetch_sub(1, Ordering::Relaxed);
        reply?.into_inner().outcome.ok_or_else(|| {
            tonic::Status::internal("the executor sent a task result without an outcome")
        })
    }
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
