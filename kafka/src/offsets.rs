//! Offset bookkeeping: checkpoints, the ranges of a batch, and how a batch is cut and split.
//! Pure functions, no I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sluice_core::BatchId;

/// A half-open range `[start, end)` of one Kafka partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

impl OffsetRange {
    /// Number of offsets in the range (records, unless the partition has gaps).
    pub fn len(&self) -> u64 {
        (self.end - self.start).max(0) as u64
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Next offset to read, per topic and partition.
pub type PartitionOffsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// What a job has durably consumed: the last committed batch and where to go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last committed batch; [`BatchId::BEFORE_FIRST`] before the first one.
    pub batch_id: BatchId,
    pub offsets: PartitionOffsets,
    /// The highest event time seen in each partition, ms since the epoch (jobs with a
    /// watermark).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_event_time_ms: EventTimes,
    /// The event-time watermark after this batch, ms since the epoch: the minimum of
    /// `max_event_time_ms` less the allowed delay, never moving back. `None` until a
    /// record with an event time was seen (or for a job without a watermark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Windowed jobs: the rows of windows not yet written after this batch, as Parquet
    /// files; the next batch starts from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_files: Vec<String>,
    /// The watermark the last batch ran under (its plan's): the state was last processed
    /// under it, so a newer `watermark_ms` may close windows without new records (see
    /// `crate::watermark`). `None` before the first batch and in checkpoints written
    /// before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_watermark_ms: Option<i64>,
    /// Jobs with a watermark: when each partition last had records, as the planning time
    /// of the last batch that read some (ms since the epoch), for `idle_timeout`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records_at_ms: EventTimes,
}

/// Highest event time per topic and partition, ms since the epoch.
pub type EventTimes = BTreeMap<String, BTreeMap<i32, i64>>;

/// Keeps `ms` as `topic`/`partition`'s highest event time if it is higher.
pub fn record_event_time(times: &mut EventTimes, topic: &str, partition: i32, ms: i64) {
    let max = times
        .entry(topic.to_string())
        .or_default()
        .entry(partition)
        .or_insert(ms);
    *max = (*max).max(ms);
}

impl Checkpoint {
    /// The checkpoint a job starts from, before any batch.
    pub fn initial(offsets: PartitionOffsets) -> Checkpoint {
        Checkpoint {
            batch_id: BatchId::BEFORE_FIRST,
            offsets,
            max_event_time_ms: EventTimes::new(),
            watermark_ms: None,
            state_files: Vec::new(),
            applied_watermark_ms: None,
            records_at_ms: EventTimes::new(),
        }
    }

    /// The checkpoint after `plan` is committed: its offsets, and the watermark it ran
    /// under as the applied one (the checkpoint's watermark never falls behind it).
    pub fn after(&self, plan: &BatchPlan) -> Checkpoint {
        let mut offsets = self.offsets.clone();
        for range in &plan.ranges {
            offsets
                .entry(range.topic.clone())
                .or_default()
                .insert(range.partition, range.end);
        }
        Checkpoint {
            batch_id: plan.batch_id,
            offsets,
            max_event_time_ms: self.max_event_time_ms.clone(),
            watermark_ms: self.watermark_ms.max(plan.watermark_ms),
            state_files: self.state_files.clone(),
            applied_watermark_ms: plan.watermark_ms,
            records_at_ms: self.records_at_ms.clone(),
        }
    }

    /// This checkpoint with the event times a batch saw merged in and the watermark moved
    /// on: the minimum over partitions that have data of their highest event time, less
    /// `delay_ms`, and never below the previous watermark. (With idle partitions, see
    /// `crate::watermark`.) The batch protocol commits through
    /// `Checkpoint::with_batch_event_times`; this delay-only form pins the default rule in
    /// tests.
    #[cfg(test)]
    pub fn with_event_times(self, seen: &EventTimes, delay_ms: i64) -> Checkpoint {
        self.with_batch_event_times(
            None,
            seen,
            &crate::watermark::WatermarkRule::delay(delay_ms),
        )
    }

    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(topic)?.get(&partition).copied()
    }
}

/// A batch as written to the offset log before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchPlan {
    pub batch_id: BatchId,
    pub ranges: Vec<OffsetRange>,
    /// When the batch was planned, milliseconds since the Unix epoch.
    pub planned_at_ms: i64,
    /// The watermark the batch runs under (the previous checkpoint's): records older are
    /// late. Logged with the plan, so a re-run counts the same records late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Windowed jobs: the state the batch starts from (the previous checkpoint's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_files: Vec<String>,
}

impl BatchPlan {
    pub fn total_offsets(&self) -> u64 {
        self.ranges.iter().map(OffsetRange::len).sum()
    }
}

/// Kafka's view of one partition: the earliest and the next-to-be-written offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// Cuts the next batch's ranges: from the checkpoint (or the partition's earliest offset
/// when the partition is new) up to the latest offset, with at most `max_offsets` offsets
/// in all, shared between partitions in proportion to their backlog.
/// Returns only non-empty ranges, ordered by topic and partition.
pub fn cut_ranges(
    checkpoint: &Checkpoint,
    latest: &BTreeMap<(String, i32), Watermarks>,
    max_offsets: Option<u64>,
) -> Vec<OffsetRange> {
    let mut ranges: Vec<OffsetRange> = latest
        .iter()
        .filter_map(|((topic, partition), marks)| {
            let start = checkpoint.get(topic, *partition).unwrap_or(marks.low);
            (marks.high > start).then(|| OffsetRange {
                topic: topic.clone(),
                partition: *partition,
                start,
                end: marks.high,
            })
        })
        .collect();
    let backlog: u64 = ranges.iter().map(OffsetRange::len).sum();
    let Some(budget) = max_offsets.filter(|max| *max < backlog) else {
        return ranges;
    };
    // Proportional share, rounded down, then the remainder one by one in partition order.
    let mut shares: Vec<u64> = ranges
        .iter()
        .map(|r| (r.len() as u128 * budget as u128 / backlog as u128) as u64)
        .collect();
    let mut remainder = budget - shares.iter().sum::<u64>();
    for (share, range) in shares.iter_mut().zip(&ranges) {
        if remainder == 0 {
            break;
        }
        if *share < range.len() {
            *share += 1;
            remainder -= 1;
        }
    }
    for (range, share) in ranges.iter_mut().zip(shares) {
        range.end = range.start + share as i64;
    }
    ranges.retain(|r| !r.is_empty());
    ranges
}

/// Splits ranges into task-sized pieces of at most `max_per_task` offsets each.
pub fn split_ranges(ranges: &[OffsetRange], max_per_task: u64) -> Vec<OffsetRange> {
    let max_per_task = max_per_task.max(1) as i64;
    let mut pieces = Vec::new();
    for range in ranges {
        let mut start = range.start;
        while start < range.end {
            let end = (start + max_per_task).min(range.end);
            pieces.push(OffsetRange {
                topic: range.topic.clone(),
                partition: range.partition,
                start,
                end,
            });
            start = end;
        }
    }
    pieces
}

/// Groups `pieces` (each at most `max_per_task` offsets) into tasks of consecutive pieces
/// with about equal offsets: as many tasks as hold `min_per_task` offsets each (at least
/// one), at most `max_tasks`, and more only where a task would exceed `max_per_task`. A
/// piece joins the task its middle offset falls in when the offsets are cut into equal
/// shares. Every piece lands in exactly one task, in order.
pub fn pack_ranges(
    pieces: Vec<OffsetRange>,
    min_per_task: u64,
    max_per_task: u64,
    max_tasks: usize,
) -> Vec<Vec<OffsetRange>> {
    let len = |r: &OffsetRange| (r.end - r.start).max(0) as u64;
    let max_per_task = max_per_task.max(1);
    let total: u64 = pieces.iter().map(len).sum();
    let shares = (total / min_per_task.max(1))
        .clamp(1, max_tasks.max(1) as u64)
        .max(total.div_ceil(max_per_task))
        .max(1);
    let mut tasks: Vec<Vec<OffsetRange>> = Vec::new();
    let mut share_of_task = None;
    let mut size = 0;
    let mut before = 0;
    for piece in pieces {
        let piece_len = len(&piece);
        let middle = 2 * before as u128 + piece_len as u128;
        let share = (middle * shares as u128 / (2 * total.max(1) as u128)).min(shares as u128 - 1);
        if share_of_task != Some(share) || size + piece_len > max_per_task {
            tasks.push(Vec::new());
            size = 0;
        }
        share_of_task = Some(share);
        size += piece_len;
        before += piece_len;
        tasks.last_mut().expect("a task was pushed").push(piece);
    }
    tasks
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Offsets `start..end` of partition `partition` of topic `t`.
    pub(crate) fn range(partition: i32, start: i64, end: i64) -> OffsetRange {
        OffsetRange {
            topic: "t".into(),
            partition,
            start,
            end,
        }
    }

    #[test]
    fn small_ranges_are_packed_into_tasks_up_to_the_bounds() {
        let pieces = vec![
            range(0, 0, 300),
            range(1, 0, 300),
            range(2, 0, 300),
            range(3, 0, 300),
        ];
        let any = usize::MAX;
        // 1,200 offsets, at least 1,000 per task: one task.
        let one = pack_ranges(pieces.clone(), 1_000, 5_000, any);
        assert_eq!(one, vec![pieces.clone()]);
        // At least 500 per task: two tasks of two ranges.
        let two = pack_ranges(pieces.clone(), 500, 5_000, any);
        assert_eq!(two, vec![pieces[..2].to_vec(), pieces[2..].to_vec()]);
        // A task never exceeds the maximum, even below the minimum.
        let capped = pack_ranges(pieces.clone(), 1_000, 700, any);
        assert_eq!(capped, vec![pieces[..2].to_vec(), pieces[2..].to_vec()]);
        // A minimum of one keeps every range its own task.
        assert_eq!(pack_ranges(pieces.clone(), 1, 5_000, any).len(), 4);
        assert!(pack_ranges(vec![], 1_000, 5_000, any).is_empty());
        // The task count caps how many tasks, unless the maximum needs more.
        assert_eq!(pack_ranges(pieces.clone(), 1, 5_000, 2), two);
        assert_eq!(pack_ranges(pieces.clone(), 1, 300, 2).len(), 4);
    }

    #[test]
    fn a_large_batch_is_packed_into_tasks_of_about_equal_offsets() {
        // 400,000 offsets over 48 partitions (8,333 or 8,334 each) into 4 tasks.
        let pieces: Vec<OffsetRange> = (0..48)
            .map(|p| range(p, 0, if p < 16 { 8_334 } else { 8_333 }))
            .collect();
        let tasks = pack_ranges(pieces.clone(), 5_000, 500_000, 4);
        let sizes: Vec<usize> = tasks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![12, 12, 12, 12]);
        assert_eq!(tasks.concat(), pieces, "every range once, in order");
        // Ten ranges of 10,000 into four tasks: 20,000 to 30,000 offsets each.
        let pieces: Vec<OffsetRange> = (0..10).map(|p| range(p, 0, 10_000)).collect();
        let offsets: Vec<i64> = pack_ranges(pieces, 5_000, 500_000, 4)
            .iter()
            .map(|task| task.iter().map(|r| r.end - r.start).sum())
            .collect();
        assert_eq!(offsets, vec![20_000, 30_000, 20_000, 30_000]);
    }

    fn marks(entries: &[(&str, i32, i64, i64)]) -> BTreeMap<(String, i32), Watermarks> {
        entries
            .iter()
            .map(|(t, p, low, high)| {
                (
                    (t.to_string(), *p),
                    Watermarks {
                        low: *low,
                        high: *high,
                    },
                )
            })
            .collect()
    }

    fn checkpoint(entries: &[(&str, i32, i64)]) -> Checkpoint {
        let mut offsets = PartitionOffsets::new();
        for (t, p, o) in entries {
            offsets.entry(t.to_string()).or_default().insert(*p, *o);
        }
        Checkpoint {
            batch_id: BatchId::new(3),
            offsets,
            ..Checkpoint::initial(Default::default())
        }
    }

    #[test]
    fn ranges_start_at_checkpoint_and_end_at_latest() {
        let ranges = cut_ranges(
            &checkpoint(&[("t", 0, 10), ("t", 1, 20)]),
            &marks(&[("t", 0, 0, 15), ("t", 1, 0, 20), ("t", 2, 5, 8)]),
            None,
        );
        assert_eq!(
            ranges,
            vec![
                OffsetRange {
                    topic: "t".into(),
                    partition: 0,
                    start: 10,
                    end: 15
                },
                // Partition 2 is new: it starts at its earliest offset.
                OffsetRange {
                    topic: "t".into(),
                    partition: 2,
                    start: 5,
                    end: 8
                },
            ]
        );
    }

    #[test]
    fn no_new_data_means_no_ranges() {
        let ranges = cut_ranges(
            &checkpoint(&[("t", 0, 15)]),
            &marks(&[("t", 0, 0, 15)]),
            Some(10),
        );
        assert!(ranges.is_empty());
    }

    #[test]
    fn max_offsets_is_shared_in_proportion_and_never_exceeded() {
        let latest = marks(&[("t", 0, 0, 300), ("t", 1, 0, 100), ("t", 2, 0, 1)]);
        let ranges = cut_ranges(&checkpoint(&[]), &latest, Some(100));
        let total: u64 = ranges.iter().map(OffsetRange::len).sum();
        assert_eq!(total, 100);
        assert_eq!(ranges[0].len(), 75);
        assert!(ranges[1].len() >= 24 && ranges[1].len() <= 25);
        for r in &ranges {
            assert_eq!(r.start, 0);
        }
    }

    #[test]
    fn a_tiny_budget_still_makes_progress() {
        let latest = marks(&[("t", 0, 0, 1000), ("t", 1, 0, 1000), ("t", 2, 0, 1000)]);
        let ranges = cut_ranges(&checkpoint(&[]), &latest, Some(1));
        assert_eq!(ranges.iter().map(OffsetRange::len).sum::<u64>(), 1);
    }

    #[test]
    fn successive_batches_cover_the_backlog_exactly_once() {
        let latest = marks(&[("t", 0, 0, 997), ("t", 1, 3, 250), ("u", 0, 0, 13)]);
        let mut cp = Checkpoint::initial(PartitionOffsets::new());
        let mut seen: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
        for batch_id in 0.. {
            let ranges = cut_ranges(&cp, &latest, Some(64));
            if ranges.is_empty() {
                break;
            }
            for r in &ranges {
                seen.entry((r.topic.clone(), r.partition))
                    .or_default()
                    .push((r.start, r.end));
            }
            cp = cp.after(&BatchPlan {
                batch_id: BatchId::new(batch_id),
                ranges,
                planned_at_ms: 0,
                watermark_ms: None,
                state_files: vec![],
            });
        }
        for ((topic, partition), marks) in &latest {
            let pieces = &seen[&(topic.clone(), *partition)];
            assert_eq!(pieces.first().unwrap().0, marks.low);
            assert_eq!(pieces.last().unwrap().1, marks.high);
            for pair in pieces.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "ranges must be contiguous");
            }
        }
    }

    #[test]
    fn split_respects_the_task_size_and_keeps_every_offset() {
        let ranges = vec![
            OffsetRange {
                topic: "t".into(),
                partition: 0,
                start: 0,
                end: 10,
            },
            OffsetRange {
                topic: "t".into(),
                partition: 1,
                start: 5,
                end: 7,
            },
        ];
        let pieces = split_ranges(&ranges, 4);
        let bounds: Vec<_> = pieces
            .iter()
            .map(|p| (p.partition, p.start, p.end))
            .collect();
        assert_eq!(bounds, vec![(0, 0, 4), (0, 4, 8), (0, 8, 10), (1, 5, 7)]);
    }

    #[test]
    fn the_watermark_is_the_slowest_partition_less_the_delay_and_never_moves_back() {
        let seen = |entries: &[(i32, i64)]| -> EventTimes {
            [("t".to_string(), entries.iter().copied().collect())].into()
        };
        let start = Checkpoint::initial(PartitionOffsets::new());
        assert_eq!(
            start
                .clone()
                .with_event_times(&EventTimes::new(), 10)
                .watermark_ms,
            None
        );

        let first = start.with_event_times(&seen(&[(0, 1_000), (1, 400)]), 100);
        assert_eq!(first.watermark_ms, Some(300), "partition 1 is the slowest");
        // Partition 1 has no new data: its old maximum still holds the watermark back.
        let second = first.with_event_times(&seen(&[(0, 5_000)]), 100);
        assert_eq!(second.watermark_ms, Some(300));
        let third = second.with_event_times(&seen(&[(1, 2_000)]), 100);
        assert_eq!(third.watermark_ms, Some(1_900));
        // An out-of-order batch of older records does not move it back.
        let fourth = third.with_event_times(&seen(&[(0, 10), (1, 10)]), 100);
        assert_eq!(fourth.watermark_ms, Some(1_900));
        assert_eq!(fourth.max_event_time_ms["t"][&0], 5_000);
        // A new partition with older data cannot pull it back either.
        let fifth = fourth.with_event_times(&seen(&[(2, 50)]), 100);
        assert_eq!(fifth.watermark_ms, Some(1_900));
    }
}
