//! The job loop's links to the cluster: a batch's tasks and compaction's rewrite tasks,
//! run through the scheduler.

use std::time::Duration;

use crate::protocol::BatchPlan;
use async_trait::async_trait;
use sluice_core::spec::JobSpec;

use crate::batch::{execute_logged, BatchState, ExecuteBatch, Executed};
use crate::checkpoint::JobLog;
use crate::compaction::RunRewrites;
use crate::error::Result;
use crate::job::plan::JobRef;
use crate::planner;
use crate::scheduler::Scheduler;

/// Runs compaction's rewrite tasks on the cluster through the scheduler.
pub(super) struct SchedulerRewrites<'a> {
    pub(super) scheduler: &'a Scheduler,
    pub(super) job: &'a JobRef,
}

#[async_trait]
impl RunRewrites for SchedulerRewrites<'_> {
    async fn run_rewrites(
        &self,
        compaction: i64,
        term: i64,
        groups: Vec<Vec<String>>,
    ) -> Result<Vec<Vec<String>>> {
        self.scheduler
            .run_rewrites(self.job, compaction, term, groups)
            .await
    }
}

/// Runs a batch's tasks on the cluster through the scheduler.
pub(super) struct SchedulerExecution<'a> {
    pub(super) scheduler: &'a Scheduler,
    pub(super) job: &'a JobRef,
    pub(super) spec: &'a JobSpec,
}

impl SchedulerExecution<'_> {
    /// Runs a `Planned` batch's tasks (other states pass through) and lets go of its
    /// shuffle data; returns how long the tasks took.
    pub(super) async fn run_tasks(
        &mut self,
        log: &JobLog,
        state: BatchState,
    ) -> Result<(BatchState, Duration)> {
        let BatchState::Planned { plan } = state else {
            return Ok((state, Duration::ZERO));
        };
        let batch = plan.batch_id;
        let executed = execute_logged(log, plan, self).await;
        self.scheduler.release_shuffle(self.job, batch);
        executed
    }
}

#[async_trait]
impl ExecuteBatch for SchedulerExecution<'_> {
    async fn execute(&mut self, plan: &BatchPlan, term: i64) -> Result<Executed> {
        let tasks = planner::tasks(plan, &self.spec.parallelism, self.scheduler.task_slots());
        let results = self
            .scheduler
            .run_batch(self.job, plan, term, tasks)
            .await?;
        Ok(Executed {
            tasks: results.tasks,
            retried: results.retried,
            crashes: results.crashes,
        })
    }
}
