//! A job: its state and status as the rest of the driver sees them (`JobShared`), and
//! the loop that runs its batches (`runner.rs`) on the cluster (`cluster.rs`).

mod cluster;
pub(crate) mod plan;
mod runner;

use std::sync::{Arc, Mutex};

use sluice_core::spec::JobSpec;
use sluice_core::{BatchId, JobId};
use sluice_proto::v1::JobStatus;
use tokio::sync::watch;

use crate::progress::ProgressLog;

pub use runner::JobRunner;

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

/// The status fields the job loop updates.
#[derive(Debug)]
pub(super) struct StatusInner {
    pub(super) state: JobState,
    pub(super) message: String,
    pub(super) last_committed_batch: i64,
    pub(super) total_rows: u64,
}

/// What the rest of the driver sees of a running job.
#[derive(Debug)]
pub struct JobShared {
    pub job_id: JobId,
    pub spec: JobSpec,
    pub progress: ProgressLog,
    status: Mutex<StatusInner>,
    pub(super) stop: watch::Sender<StopRequest>,
}

impl JobShared {
    pub fn new(spec: JobSpec) -> Arc<JobShared> {
        Arc::new(JobShared {
            job_id: spec.job_id(),
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

    pub(super) fn set(&self, update: impl FnOnce(&mut StatusInner)) {
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
        self.set(|s| s.last_committed_batch = batch.get());
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
            job_id: self.job_id.to_string(),
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
