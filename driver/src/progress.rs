//! Progress records of batches (like Spark's StreamingQueryProgress), kept per job and
//! broadcast to watchers.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::protocol::BatchPlan;
use sluice_core::http::{Histogram, DURATION_BUCKETS};
use sluice_proto::v1::{BatchProgress, PartitionProgress, TaskSuccess, TaskTimes};
use tokio::sync::broadcast;

use crate::planner::LatestOffsets;

/// Progress records kept per job.
pub const RECENT_BATCHES: usize = 100;

/// What a batch took, step by step.
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTimings {
    pub plan: Duration,
    pub execute: Duration,
    pub commit: Duration,
    pub checkpoint: Duration,
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
    let duration = timings.plan + timings.execute + timings.commit + timings.checkpoint;
    let rate = |rows: u64, over: Duration| {
        if over.is_zero() {
            0.0
        } else {
            rows as f64 / over.as_secs_f64()
        }
    };
    BatchProgress {
        job_id: job_id.to_string(),
        batch_id: plan.batch_id.get(),
        trigger_time_ms: plan.planned_at_ms,
        input_rows,
        output_rows: results.iter().map(|r| r.output_rows).sum(),
        malformed_skipped: results.iter().map(|r| r.malformed_skipped).sum(),
        offsets_lost: results.iter().map(|r| r.offsets_lost).sum(),
        input_rows_per_second: rate(input_rows, timings.since_previous_trigger.max(duration)),
        processed_rows_per_second: rate(input_rows, duration),
        plan_ms: timings.plan.as_millis() as u64,
        execute_ms: timings.execute.as_millis() as u64,
        commit_ms: timings.commit.as_millis() as u64,
        checkpoint_ms: timings.checkpoint.as_millis() as u64,
        duration_ms: duration.as_millis() as u64,
        partitions: plan
            .kafka_ranges()
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
        executor_crashes: 0,
        watermark_ms: None,
        late_records: results.iter().map(|r| r.late_records).sum(),
        state_rows: results.iter().map(|r| r.state_rows).sum(),
        state_bytes: results.iter().map(|r| r.state_bytes).sum(),
        state_bytes_written: results.iter().map(|r| r.state_bytes_written).sum(),
        state_bytes_read: results.iter().map(|r| r.state_bytes_read).sum(),
        watermark_partition: String::new(),
        idle_partitions: vec![],
        task_times: Some(summed_task_times(results)),
        job_state: String::new(),
        message: String::new(),
        files_compacted: 0,
        compacted_files_written: 0,
        bytes_compacted: 0,
        compaction_ms: 0,
    }
}

/// The batch's task times, summed over its tasks.
fn summed_task_times(results: &[TaskSuccess]) -> TaskTimes {
    let mut sum = TaskTimes::default();
    for times in results.iter().filter_map(|r| r.times.as_ref()) {
        sum.read_ms += times.read_ms;
        sum.decode_ms += times.decode_ms;
        sum.state_ms += times.state_ms;
        sum.execute_ms += times.execute_ms;
        sum.write_ms += times.write_ms;
    }
    sum
}

/// Counters and duration histograms over every batch a job committed in this process.
#[derive(Debug, Clone)]
pub struct BatchMetrics {
    pub batches: u64,
    pub input_rows: u64,
    pub output_rows: u64,
    pub malformed: u64,
    pub offsets_lost: u64,
    /// Records older than the watermark their batch ran under.
    pub late_records: u64,
    /// The latest batch's watermark, ms since the epoch (jobs with a watermark).
    pub watermark_ms: Option<i64>,
    /// Windowed jobs: the state the latest batch left, in bytes and rows (open windows'
    /// partial aggregates, open sessions' rows, remembered keys).
    pub state_bytes: Option<u64>,
    pub state_rows: Option<u64>,
    /// The partition holding the latest batch's watermark back ("topic/partition"), and
    /// the partitions `idle_timeout` left out.
    pub watermark_partition: String,
    pub idle_partitions: usize,
    /// Stateful jobs: state bytes written (changes and merges) and read from storage.
    pub state_bytes_written: u64,
    pub state_bytes_read: u64,
    /// Data files compaction replaced, and their bytes.
    pub files_compacted: u64,
    pub bytes_compacted: u64,
    /// Per phase: plan, execute, commit, checkpoint, total.
    pub durations: [Histogram; 5],
}

/// The phases of [`BatchMetrics::durations`], in order.
pub const PHASES: [&str; 5] = ["plan", "execute", "commit", "checkpoint", "total"];

impl Default for BatchMetrics {
    fn default() -> Self {
        BatchMetrics {
            batches: 0,
            input_rows: 0,
            output_rows: 0,
            malformed: 0,
            offsets_lost: 0,
            late_records: 0,
            watermark_ms: None,
            state_bytes: None,
            state_rows: None,
            watermark_partition: String::new(),
            idle_partitions: 0,
            state_bytes_written: 0,
            state_bytes_read: 0,
            files_compacted: 0,
            bytes_compacted: 0,
            durations: std::array::from_fn(|_| Histogram::new(DURATION_BUCKETS)),
        }
    }
}

impl BatchMetrics {
    fn record(&mut self, p: &BatchProgress) {
        self.batches += 1;
        self.input_rows += p.input_rows;
        self.output_rows += p.output_rows;
        self.malformed += p.malformed_skipped;
        self.offsets_lost += p.offsets_lost;
        self.late_records += p.late_records;
        self.files_compacted += p.files_compacted as u64;
        self.bytes_compacted += p.bytes_compacted;
        self.state_bytes_written += p.state_bytes_written;
        self.state_bytes_read += p.state_bytes_read;
        if p.watermark_ms.is_some() {
            self.watermark_ms = p.watermark_ms;
            self.state_bytes = Some(p.state_bytes);
            self.state_rows = Some(p.state_rows);
            self.watermark_partition = p.watermark_partition.clone();
            self.idle_partitions = p.idle_partitions.len();
        }
        let phases = [
            p.plan_ms,
            p.execute_ms,
            p.commit_ms,
            p.checkpoint_ms,
            p.duration_ms,
        ];
        for (histogram, ms) in self.durations.iter_mut().zip(phases) {
            histogram.observe(ms as f64 / 1000.0);
        }
    }
}

/// The last [`RECENT_BATCHES`] records of a job, its metrics, and a channel of new ones.
#[derive(Debug)]
pub struct ProgressLog {
    recent: Mutex<VecDeque<BatchProgress>>,
    metrics: Mutex<BatchMetrics>,
    events: broadcast::Sender<BatchProgress>,
}

impl Default for ProgressLog {
    fn default() -> Self {
        ProgressLog {
            recent: Mutex::new(VecDeque::with_capacity(RECENT_BATCHES)),
            metrics: Mutex::new(BatchMetrics::default()),
            events: broadcast::channel(1024).0,
        }
    }
}

impl ProgressLog {
    /// A copy of the job's metrics.
    pub fn metrics(&self) -> BatchMetrics {
        self.metrics.lock().expect("metrics lock").clone()
    }

    /// Keeps a batch's record and tells watchers.
    pub fn publish(&self, progress: BatchProgress) {
        self.metrics.lock().expect("metrics lock").record(&progress);
        let mut recent = self.recent.lock().expect("progress lock");
        if recent.len() == RECENT_BATCHES {
            recent.pop_front();
        }
        recent.push_back(progress.clone());
        let _ = self.events.send(progress);
    }

    /// Tells watchers why the job is paused (a record with a message and no batch; not kept).
    pub fn publish_pause(&self, job_id: &str, message: &str) {
        let _ = self.events.send(BatchProgress {
            job_id: job_id.to_string(),
            batch_id: -1,
            message: message.to_string(),
            ..Default::default()
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_times_are_summed_over_the_tasks_that_report_them() {
        let task = |read_ms, decode_ms, write_ms| TaskSuccess {
            times: Some(TaskTimes {
                read_ms,
                decode_ms,
                state_ms: 1,
                execute_ms: 2,
                write_ms,
            }),
            ..TaskSuccess::default()
        };
        let results = [task(10, 4, 3), TaskSuccess::default(), task(20, 6, 5)];
        assert_eq!(
            summed_task_times(&results),
            TaskTimes {
                read_ms: 30,
                decode_ms: 10,
                state_ms: 2,
                execute_ms: 4,
                write_ms: 8,
            }
        );
    }
}
