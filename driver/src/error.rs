//! Driver errors and their gRPC status codes.

use sluice_core::JobId;
use sluice_core::{BatchId, TaskId};

/// What can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shared code failed (spec, Kafka, Iceberg, query).
    #[error(transparent)]
    Common(#[from] sluice_core::Error),
    /// The checkpoint store failed.
    #[error("checkpoint store: {message}")]
    Checkpoint { message: String },

    /// The embedded checkpoint store is open in another driver process.
    #[error("the checkpoint store {path} is in use by another driver (its lock file {path}.lock is held); run one driver per store, or use etcd for several")]
    StoreLocked { path: String },

    /// A batch's ranges were to be logged under a batch id already in the offset log: a
    /// logged batch is re-run with exactly its logged ranges, never planned again.
    #[error("batch {batch} is already in the offset log ({key}); it is recovered with its logged ranges instead")]
    BatchAlreadyLogged { batch: BatchId, key: String },

    /// A write was refused because this driver lost leadership.
    #[error("fenced: {message}")]
    Fenced { message: String },

    #[error("job {0} does not exist")]
    UnknownJob(JobId),
    #[error("job {0} is already running")]
    JobRunning(JobId),
    #[error("the driver already runs {running} jobs, its limit (--max-jobs); stop one first")]
    TooManyJobs { running: usize },
    #[error("table {table} is already written by job {job}; one job per table (stop {job} first, or choose another table)")]
    TableTaken { table: String, job: JobId },
    #[error("no executor is alive to run tasks")]
    NoExecutors,
    #[error("task {task} of batch {batch} failed after {attempts} attempts: {kind}: {message}")]
    TaskFailed {
        batch: BatchId,
        task: TaskId,
        attempts: u32,
        kind: String,
        message: String,
        retryable: bool,
    },
    #[error("batch {batch}: stage {stage} task {task} crashed {crashes} times (its executor died or it panicked; last: {last}); it reads {ranges}; no more executors are risked on it")]
    TaskCrashed {
        batch: BatchId,
        stage: u32,
        task: TaskId,
        crashes: u32,
        ranges: String,
        last: String,
    },
    #[error(
        "compaction {compaction}: rewrite task {task} failed after {attempts} attempts: {message}"
    )]
    RewriteFailed {
        compaction: i64,
        task: u32,
        attempts: u32,
        message: String,
    },
    #[error("batch {batch} could not be committed to {table}: the table changed under each of {attempts} attempts")]
    CommitConflicts {
        table: String,
        batch: BatchId,
        attempts: u32,
    },
    #[error("batch {batch} reached its commit before its tasks ran (a driver bug); it is run again from the offset log")]
    CommitBeforeExecution { batch: BatchId },
    #[error("the checkpoint of {topic}/{partition} is at offset {checkpoint} but the partition ends at {latest}: the topic was deleted and re-created or truncated; the offsets consumed no longer name the same records (resubmit the job under a new name to start over)")]
    CheckpointBeyondLog {
        topic: String,
        partition: i32,
        checkpoint: i64,
        latest: i64,
    },
    #[error("{what} did not answer within {seconds}s")]
    Timeout { what: String, seconds: u64 },
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

impl Error {
    /// Whether the job must fail rather than retry (the user's spec, SQL or data).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Common(e) => e.is_user_error(),
            Error::TaskFailed { retryable, .. } => !retryable,
            Error::CheckpointBeyondLog { .. } => true,
            // Running it again would crash more executors: the job fails instead.
            Error::TaskCrashed { .. } => true,
            _ => false,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> tonic::Status {
        use sluice_core::Error as C;
        let message = error.to_string();
        match &error {
            Error::UnknownJob(_) => tonic::Status::not_found(message),
            Error::JobRunning(_) => tonic::Status::already_exists(message),
            Error::TooManyJobs { .. } => tonic::Status::resource_exhausted(message),
            Error::TableTaken { .. } => tonic::Status::failed_precondition(message),
            Error::Common(
                C::InvalidSpec { .. } | C::InvalidSql { .. } | C::SchemaMismatch { .. },
            ) => tonic::Status::invalid_argument(message),
            // A deposed driver's refusal: the client tries the leader.
            Error::Common(C::Kafka { .. } | C::Iceberg { .. })
            | Error::Checkpoint { .. }
            | Error::Fenced { .. }
            | Error::NoExecutors
            | Error::Timeout { .. } => tonic::Status::unavailable(message),
            _ => tonic::Status::internal(message),
        }
    }
}

/// Result with the driver's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
