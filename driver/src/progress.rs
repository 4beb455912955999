//! Progress records of batches (like Spark's StreamingQueryProgress), kept per job and
//! broadcast to watchers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use sluice_common::offsets::BatchPlan;
use sluice_proto::v1::{BatchProgress, PartitionProgress, TaskSuccess};
use tokio::sync::broadcast;

use crate::committer::CommitTimings;
use crate::planner::LatestOffsets;

/// Progress records kept per job.
pub const RECENT_BATCHES: usize = 100;

/// What a batch took, step by step.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTimings {
    pub plan: Duration,
    pub execute: Duration,
    pub commit: CommitTimings,
    /// Time since the previous batch was triggered (for the input rate).
    pub since_previous_trigger: Duration,
}

/// Builds a batch's progress record.
pub fn batch_progress(
    job_id: &str,
    plan: &BatchPlan,
    latest: &LatestOffsets,
    results: &[TaskSuccess],
    timings: &BatchTimings,
) -> BatchProgress {
    let input_rows: u64 = results.iter().map(|r| r.input_rows).sum();
    let duration =
        timings.plan + timings.execute + timings.commit.commit + timings.commit.checkpoint;
    let rate = |rows: u64, over: Duration| {
        if over.is_zero() {
            0.0
        } else {
            rows as f64 / over.as_secs_f64()
        }
    };
    BatchProgress {
        job_id: job_id.to_string(),
        batch_id: plan.batch_id,
        trigger_time_ms: plan.planned_at_ms,
        input_rows,
        output_rows: results.iter().map(|r| r.output_rows).sum(),
        malformed_skipped: results.iter().map(|r| r.malformed_skipped).sum(),
        offsets_lost: results.iter().map(|r| r.offsets_lost).sum(),
        input_rows_per_second: rate(input_rows, timings.since_previous_trigger.max(duration)),
        processed_rows_per_second: rate(input_rows, duration),
        plan_ms: timings.plan.as_millis() as u64,
        execute_ms: timings.execute.as_millis() as u64,
        commit_ms: timings.commit.commit.as_millis() as u64,
        checkpoint_ms: timings.commit.checkpoint.as_millis() as u64,
        duration_ms: duration.as_millis() as u64,
        partitions: plan
            .ranges
            .iter()
            .map(|r| PartitionProgress {
                topic: r.topic.clone(),
                partition: r.partition,
                start_offset: r.start,
                end_offset: r.end,
                latest_offset: latest
                    .get(&(r.topic.clone(), r.partition))
                    .map_or(r.end, |m| m.high),
            })
            .collect(),
        tasks: results.len() as u32,
        job_state: String::new(),
        message: String::new(),
    }
}

/// The last [`RECENT_BATCHES`] records of a job and a channel of new ones.
#[derive(Debug)]
pub struct ProgressLog {
    recent: Mutex<VecDeque<BatchProgress>>,
    events: broadcast::Sender<BatchProgress>,
}

impl Default for ProgressLog {
    fn default() -> Self {
        ProgressLog {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_BATCHES)),
            events: broadcast::channel(1024).0,
        }
    }
}

impl ProgressLog {
    /// Keeps a batch's record and tells watchers.
    pub fn publish(&self, progress: BatchProgress) {
        let mut recent = self.recent.lock().expect("progress lock");
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(progress.clone());
        let _ = self.events.send(progress);
    }

    /// Tells watchers the job ended (a record with `job_state` set and no batch).
    pub fn publish_end(&self, job_id: &str, state: &str, message: &str) {
        let _ = self.events.send(BatchProgress {
            job_id: job_id.to_string(),
            batch_id: -1,
            job_state: state.to_string(),
            message: message.to_string(),
            ..Default::default()
        });
    }

    pub fn recent(&self, n: usize) -> Vec<BatchProgress> {
        let recent = self.recent.lock().expect("progress lock");
        recent
            .iter()
            .skip(recent.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BatchProgress> {
        self.events.subscribe()
    }
}
