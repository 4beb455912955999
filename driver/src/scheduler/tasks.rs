//! The tasks of one batch in flight: how many each stage has, which shuffle partitions
//! and state files each task gets, and each task's definition; and what the batch's
//! tasks returned. Placement and retries are the scheduler's (`super`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Mutex};

use sluice_core::BatchId;
use sluice_iceberg::data_files::{state_file_partition, state_file_stage};
use sluice_kafka::offsets::OffsetRange;
use sluice_plan::StageKind;
use sluice_proto::v1::{self, MapOutput, ShuffleInput, TaskDefinition, TaskSuccess};

use crate::job::plan::{JobRef, StageInfo};

/// A task of a stage, as (stage id, task id).
pub(super) type StageTask = (u32, u32);

/// One batch in flight: where map outputs are and what each task returned.
pub(super) struct BatchRun<'a> {
    pub(super) job: &'a JobRef,
    pub(super) batch: BatchId,
    /// The leadership term the batch runs under (named in data files).
    pub(super) term: i64,
    /// The watermark the batch runs under (jobs with a watermark).
    pub(super) watermark_ms: Option<i64>,
    /// Stateful jobs: the state the batch starts from, shared out among the tasks of the
    /// job's state stage.
    pub(super) state_files: Vec<String>,
    /// The offset ranges of each task of the stages reading the stream.
    pub(super) ranges: Vec<Vec<OffsetRange>>,
    /// Flight address of each finished map task, by (stage, task).
    pub(super) outputs: Mutex<HashMap<StageTask, String>>,
    pub(super) results: Mutex<BTreeMap<StageTask, TaskSuccess>>,
    /// One re-run at a time per map output.
    pub(super) recoveries: Mutex<HashMap<StageTask, Arc<tokio::sync::Mutex<()>>>>,
    pub(super) retried: AtomicBool,
    /// Attempts that crashed their executor or panicked.
    pub(super) crashes: AtomicU32,
    /// Tasks of a stage after a hash shuffle: the shuffle partitions, or fewer when the
    /// cluster has fewer task slots (each task then reduces several partitions). Fixed
    /// for the batch, so that map outputs keep their task ids.
    pub(super) reduce_tasks: u32,
}

impl BatchRun<'_> {
    pub(super) fn stage(&self, id: u32) -> &StageInfo {
        &self.job.stages[id as usize]
    }

    pub(super) fn task_count(&self, stage: &StageInfo) -> u32 {
        match stage.kind {
            StageKind::Source => self.ranges.len() as u32,
            StageKind::Hash(n) => (n as u32).min(self.reduce_tasks).max(1),
            StageKind::Single => 1,
        }
    }

    /// The shuffle partitions task `task` of a hash-reading stage reduces.
    pub(super) fn partitions(&self, stage: &StageInfo, task: u32) -> Vec<u32> {
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
    pub(super) fn state_files_of(&self, stage: &StageInfo, task: u32) -> Vec<String> {
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

    pub(super) fn definition(&self, stage: &StageInfo, task: u32, attempt: u32) -> TaskDefinition {
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::JobId;
    use sluice_plan::StageOutput;

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
