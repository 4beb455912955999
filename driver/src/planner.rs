//! Cutting batches: a Kafka source's starting offsets and capped ends, a batch's
//! watermark, the batches that read no records, and a batch's tasks. Pure. (A source's
//! part, what the next batch reads, is `crate::source`.)

use std::collections::BTreeMap;

#[cfg(test)]
use crate::protocol::SourceRead;
use sluice_core::spec::{ParallelismSpec, StartingOffsets};
use sluice_iceberg::data_files::state_file_stats;
#[cfg(test)]
use sluice_kafka::offsets::cut_ranges;
use sluice_kafka::offsets::{pack_ranges, split_ranges, OffsetRange, PartitionOffsets, Watermarks};

use crate::protocol::{BatchPlan, Checkpoint, WatermarkRule};

/// Partition watermarks as Kafka reports them.
pub type LatestOffsets = BTreeMap<(String, i32), Watermarks>;

/// Per partition, the first offset at or after a starting time (`None`: no record that
/// new), as Kafka's offset-for-time lookup answered.
pub type OffsetsAtTime = BTreeMap<(String, i32), Option<i64>>;

/// Where a Kafka source starts: each partition where `starting_offsets` says. A start by
/// time takes the offsets `at_time` found, within what the partition still holds; a
/// partition with no record that new starts at its end.
pub fn initial_offsets(
    starting: &StartingOffsets,
    latest: &LatestOffsets,
    at_time: &OffsetsAtTime,
) -> PartitionOffsets {
    let mut offsets = PartitionOffsets::new();
    for ((topic, partition), marks) in latest {
        let start = match starting {
            StartingOffsets::Earliest => marks.low,
            StartingOffsets::Latest => marks.high,
            StartingOffsets::PerPartition(map) => map
                .get(topic)
                .and_then(|p| p.get(partition))
                .copied()
                .unwrap_or(marks.low),
            StartingOffsets::Timestamp(_) => at_time
                .get(&(topic.clone(), *partition))
                .copied()
                .flatten()
                .map_or(marks.high, |offset| offset.clamp(marks.low, marks.high)),
        };
        offsets
            .entry(topic.clone())
            .or_default()
            .insert(*partition, start);
    }
    offsets
}

/// The checkpoint of a job whose one Kafka source `source` starts at [`initial_offsets`].
#[cfg(test)]
pub fn initial_checkpoint(
    source: &str,
    starting: &StartingOffsets,
    latest: &LatestOffsets,
    at_time: &OffsetsAtTime,
) -> Checkpoint {
    Checkpoint::initial_kafka(source, initial_offsets(starting, latest, at_time))
}

/// Caps each partition's latest offset at `limit` (an `available_now` job's end).
pub fn cap(latest: &LatestOffsets, limit: Option<&LatestOffsets>) -> LatestOffsets {
    let Some(limit) = limit else {
        return latest.clone();
    };
    latest
        .iter()
        .map(|(key, marks)| {
            let high = limit.get(key).map_or(marks.low, |l| l.high.min(marks.high));
            (
                key.clone(),
                Watermarks {
                    low: marks.low,
                    high,
                },
            )
        })
        .collect()
}

/// The watermark a batch planned at `now_ms` after `checkpoint` runs under: the
/// checkpoint's, or (by `rule`, for a job with a watermark) later where partitions went
/// idle or processing time moved on since.
pub fn batch_watermark(
    checkpoint: &Checkpoint,
    rule: Option<&WatermarkRule>,
    now_ms: i64,
) -> Option<i64> {
    match rule {
        Some(rule) => checkpoint.watermark_at(rule, now_ms).watermark_ms,
        None => checkpoint.watermark_ms,
    }
}

/// The batch after `checkpoint` reading the Kafka ranges up to `latest` of its one
/// source, or `None` when there is no new data (what `source::plan_after` plans for a
/// Kafka source, without a limit).
#[cfg(test)]
pub fn next_plan(
    checkpoint: &Checkpoint,
    latest: &LatestOffsets,
    max_offsets: Option<u64>,
    rule: Option<&WatermarkRule>,
    now_ms: i64,
) -> Option<BatchPlan> {
    let (source, position) = checkpoint.source()?;
    let ranges = cut_ranges(position.position.kafka_offsets(), latest, max_offsets);
    if ranges.is_empty() {
        return None;
    }
    let reads = [(source.to_string(), SourceRead::Kafka(ranges))].into();
    Some(checkpoint.next_plan(reads, batch_watermark(checkpoint, rule, now_ms), now_ms))
}

/// The batch a quiet stream runs without new records (a `processing_time` job with state,
/// like Spark's no-data micro-batch): when the watermark at `now_ms` is ahead of the one
/// the state was last processed under and some state file holds rows it ends (windows or
/// sessions it closes; for deduplication, `dedup`, a file whose keys are all forgotten).
/// `None` when nothing would change, so an idle stream writes nothing.
pub fn quiet_plan(
    checkpoint: &Checkpoint,
    rule: &WatermarkRule,
    dedup: bool,
    now_ms: i64,
) -> Option<BatchPlan> {
    let watermark = checkpoint.watermark_at(rule, now_ms).watermark_ms?;
    let advanced = checkpoint
        .applied_watermark_ms
        .is_none_or(|applied| watermark > applied);
    let ends_rows = checkpoint.state_files.iter().any(|file| {
        // A file named without what its rows hold is read anyway.
        state_file_stats(file)
            .is_none_or(|stats| watermark >= if dedup { stats.until } else { stats.from })
    });
    (advanced && ends_rows).then(|| checkpoint.next_plan(BTreeMap::new(), Some(watermark), now_ms))
}

/// The batch that ends an `once` or `available_now` windowed job: no new records, run
/// under the final watermark, so the windows it closes are written from the state. `None`
/// without state or watermark.
pub fn flush_plan(checkpoint: &Checkpoint, now_ms: i64) -> Option<BatchPlan> {
    (checkpoint.watermark_ms.is_some() && !checkpoint.state_files.is_empty())
        .then(|| checkpoint.next_plan(BTreeMap::new(), checkpoint.watermark_ms, now_ms))
}

/// A batch's tasks for the stages reading the stream: its ranges cut to at most
/// `max_records_per_task` offsets and packed into tasks of about equal offsets, at least
/// `min_records_per_task` each and at most `tasks_per_slot` per task slot of the cluster
/// (`slots`), so that a large batch runs as one wave over every slot.
pub fn tasks(plan: &BatchPlan, parallelism: &ParallelismSpec, slots: u32) -> Vec<Vec<OffsetRange>> {
    let ranges = plan.kafka_ranges();
    if ranges.is_empty() {
        // A flush batch: one task, without records, carries the state.
        return vec![vec![]];
    }
    let pieces = split_ranges(&ranges, parallelism.max_records_per_task);
    let max_tasks = slots.max(1) as usize * parallelism.tasks_per_slot.max(1) as usize;
    pack_ranges(
        pieces,
        parallelism.min_records_per_task,
        parallelism.max_records_per_task,
        max_tasks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::BatchId;

    fn latest() -> LatestOffsets {
        [
            (("t".to_string(), 0), Watermarks { low: 2, high: 10 }),
            (("t".to_string(), 1), Watermarks { low: 0, high: 4 }),
        ]
        .into()
    }

    #[test]
    fn a_start_by_time_takes_the_found_offsets_within_the_partition() {
        let found: OffsetsAtTime = [
            (("t".to_string(), 0), Some(1)),
            (("t".to_string(), 1), None),
        ]
        .into();
        let start = initial_checkpoint("source", &StartingOffsets::Timestamp(5), &latest(), &found);
        // Partition 0's record at offset 1 was deleted since: its earliest is 2. Partition
        // 1 has no record that new: it starts at its end.
        assert_eq!((start.get("t", 0), start.get("t", 1)), (Some(2), Some(4)));
        let found: OffsetsAtTime = [(("t".to_string(), 0), Some(7))].into();
        let start = initial_checkpoint("source", &StartingOffsets::Timestamp(5), &latest(), &found);
        assert_eq!((start.get("t", 0), start.get("t", 1)), (Some(7), Some(4)));
    }

    #[test]
    fn starting_offsets_resolve_per_partition() {
        let earliest = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        assert_eq!(
            (earliest.get("t", 0), earliest.get("t", 1)),
            (Some(2), Some(0))
        );
        assert_eq!(earliest.batch_id, BatchId::new(-1));
        let newest = initial_checkpoint(
            "source",
            &StartingOffsets::Latest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        assert_eq!(
            (newest.get("t", 0), newest.get("t", 1)),
            (Some(10), Some(4))
        );
        let given = StartingOffsets::PerPartition([("t".to_string(), [(0, 7)].into())].into());
        let given = initial_checkpoint("source", &given, &latest(), &OffsetsAtTime::new());
        assert_eq!((given.get("t", 0), given.get("t", 1)), (Some(7), Some(0)));
    }

    #[test]
    fn the_first_plan_is_batch_zero_and_latest_start_waits_for_new_data() {
        let start = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        let plan = next_plan(&start, &latest(), None, None, 5).unwrap();
        assert_eq!(plan.batch_id, BatchId::new(0));
        assert_eq!(plan.total_offsets(), 12);
        let newest = initial_checkpoint(
            "source",
            &StartingOffsets::Latest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        assert_eq!(next_plan(&newest, &latest(), None, None, 5), None);
    }

    #[test]
    fn a_flush_batch_reads_nothing_and_one_task_carries_the_state() {
        let mut checkpoint = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        assert_eq!(flush_plan(&checkpoint, 7), None, "no state, no flush");
        checkpoint.state_files = vec!["s1.parquet".into(), "s2.parquet".into()];
        assert_eq!(flush_plan(&checkpoint, 7), None, "no watermark, no flush");
        checkpoint.watermark_ms = Some(5_000);
        let plan = flush_plan(&checkpoint, 7).unwrap();
        assert!(!plan.reads_records());
        assert_eq!(plan.batch_id, checkpoint.batch_id.next());
        assert_eq!(
            (plan.watermark_ms, plan.state_files.clone()),
            (Some(5_000), checkpoint.state_files.clone())
        );
        let tasks = tasks(&plan, &ParallelismSpec::default(), 4);
        assert_eq!(tasks, vec![Vec::<OffsetRange>::new()]);
        assert_eq!(checkpoint.after(&plan).sources, checkpoint.sources);
    }

    #[test]
    fn a_quiet_stream_runs_a_batch_only_when_its_watermark_ends_state_rows() {
        use sluice_iceberg::data_files::{state_file_name, StateFileStats};
        let file = |from, until| {
            let stats = StateFileStats {
                rows: 3,
                bytes: 100,
                from,
                until,
            };
            state_file_name("j.b1.e1.t0.a1.ff", Some((1, 0)), Some(stats))
        };
        let rule = WatermarkRule::delay(1_000);
        let mut checkpoint = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        assert_eq!(
            quiet_plan(&checkpoint, &rule, false, 7),
            None,
            "no watermark"
        );
        // Batch 4 ran under 5 s; its records moved the watermark to 9 s.
        checkpoint.batch_id = BatchId::new(4);
        checkpoint.applied_watermark_ms = Some(5_000);
        checkpoint.watermark_ms = Some(9_000);
        assert_eq!(quiet_plan(&checkpoint, &rule, false, 7), None, "no state");
        checkpoint.state_files = vec![file(12_000, 20_000)];
        assert_eq!(
            quiet_plan(&checkpoint, &rule, false, 7),
            None,
            "no window ends by 9 s"
        );
        checkpoint.state_files.push(file(8_000, 30_000));
        let plan = quiet_plan(&checkpoint, &rule, false, 7).unwrap();
        assert_eq!(plan.batch_id, BatchId::new(5));
        assert!(!plan.reads_records());
        assert_eq!(plan.watermark_ms, Some(9_000));
        assert_eq!(plan.state_files, checkpoint.state_files);
        // Deduplication: only a file whose keys are all forgotten changes.
        assert_eq!(quiet_plan(&checkpoint, &rule, true, 7), None);
        checkpoint.state_files.push(file(1_000, 8_500));
        assert!(quiet_plan(&checkpoint, &rule, true, 7).is_some());
        // Once a batch ran under it, the same watermark runs nothing more.
        let after = checkpoint.after(&plan);
        assert_eq!(after.applied_watermark_ms, Some(9_000));
        assert_eq!(quiet_plan(&after, &rule, false, 7), None);
        // A file named without its stats is read anyway, once per watermark.
        let mut unnamed = after.clone();
        unnamed.watermark_ms = Some(9_500);
        unnamed.state_files = vec!["j.b1.e1.t0.a1.ff.parquet".into()];
        assert!(quiet_plan(&unnamed, &rule, false, 7).is_some());
    }

    #[test]
    fn a_quiet_plan_runs_under_the_watermark_idle_partitions_leave() {
        use sluice_iceberg::data_files::{state_file_name, StateFileStats};
        let rule = WatermarkRule {
            delay_ms: 0,
            idle_timeout_ms: Some(60_000),
            advance_when_idle_ms: None,
        };
        let mut checkpoint = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        let source = checkpoint.source_mut().unwrap();
        source.max_event_time_ms = [("t".to_string(), [(0, 50_000), (1, 10_000)].into())].into();
        source.records_at_ms = [("t".to_string(), [(0, 100_000), (1, 1_000)].into())].into();
        checkpoint.watermark_ms = Some(10_000);
        checkpoint.applied_watermark_ms = Some(10_000);
        let stats = StateFileStats {
            rows: 1,
            bytes: 10,
            from: 20_000,
            until: 20_000,
        };
        checkpoint.state_files = vec![state_file_name("j.b1.e1.t0.a1.ff", None, Some(stats))];
        assert_eq!(quiet_plan(&checkpoint, &rule, false, 60_999), None);
        let plan = quiet_plan(&checkpoint, &rule, false, 61_000).unwrap();
        assert_eq!(plan.watermark_ms, Some(50_000), "partition 1 is idle");
        assert_eq!(
            batch_watermark(&checkpoint, Some(&rule), 61_000),
            Some(50_000)
        );
        assert_eq!(batch_watermark(&checkpoint, None, 61_000), Some(10_000));
    }

    #[test]
    fn available_now_stops_at_the_offsets_seen_at_start() {
        let at_start = latest();
        let mut grown = latest();
        grown.insert(("t".to_string(), 0), Watermarks { low: 2, high: 50 });
        grown.insert(("t".to_string(), 2), Watermarks { low: 0, high: 9 });
        let capped = cap(&grown, Some(&at_start));
        assert_eq!(capped[&("t".to_string(), 0)].high, 10);
        // A partition created after the start holds nothing for this run.
        assert_eq!(capped[&("t".to_string(), 2)].high, 0);
    }

    #[test]
    fn tasks_split_big_ranges() {
        let start = initial_checkpoint(
            "source",
            &StartingOffsets::Earliest,
            &latest(),
            &OffsetsAtTime::new(),
        );
        let plan = next_plan(&start, &latest(), None, None, 5).unwrap();
        let unpacked = ParallelismSpec {
            max_records_per_task: 3,
            min_records_per_task: 1,
            ..ParallelismSpec::default()
        };
        let tasks_of = |parallelism: &ParallelismSpec| tasks(&plan, parallelism, 64);
        let split = tasks_of(&unpacked);
        assert_eq!(split.len(), 5);
        assert!(split.iter().all(|t| t.len() == 1));
        assert_eq!(
            split.iter().flatten().map(OffsetRange::len).sum::<u64>(),
            12
        );
        // Pieces of at most 6 (6 + 2 of partition 0, 4 of partition 1), packed to 6.
        let packed = tasks_of(&ParallelismSpec {
            max_records_per_task: 6,
            min_records_per_task: 6,
            ..unpacked
        });
        let sizes: Vec<u64> = packed
            .iter()
            .map(|t| t.iter().map(OffsetRange::len).sum())
            .collect();
        assert_eq!(sizes, vec![6, 6]);
        assert_eq!(packed[1].len(), 2, "the small ranges share a task");
        // Pieces 6, 2 and 4: one task per slot where the minimum allows more, more only
        // where the maximum needs them.
        let per_slot = |slots, tasks_per_slot| {
            let spec = ParallelismSpec {
                max_records_per_task: 6,
                tasks_per_slot,
                ..unpacked.clone()
            };
            tasks(&plan, &spec, slots).len()
        };
        assert_eq!(per_slot(64, 1), 3);
        assert_eq!(per_slot(2, 1), 2);
        assert_eq!(per_slot(1, 1), 2, "12 offsets of at most 6 per task need 2");
        assert_eq!(per_slot(1, 3), 3);
    }
}
