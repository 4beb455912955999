//! Kafka offset ranges: how the next batch's ranges are cut from where the source stands,
//! split into task-sized pieces and packed into tasks. Pure functions, no I/O. (The
//! checkpoint that holds the offsets is the driver's, source-neutral.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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

/// Kafka's view of one partition: the earliest and the next-to-be-written offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermarks {
    pub low: i64,
    pub high: i64,
}

/// Cuts the next batch's ranges: from the next offsets `next` (or the partition's
/// earliest offset when the partition is new) up to the latest offset, with at most `max_offsets` offsets
/// in all, shared between partitions in proportion to their backlog.
/// Returns only non-empty ranges, ordered by topic and partition.
pub fn cut_ranges(
    next: &PartitionOffsets,
    latest: &BTreeMap<(String, i32), Watermarks>,
    max_offsets: Option<u64>,
) -> Vec<OffsetRange> {
    let mut ranges: Vec<OffsetRange> = latest
        .iter()
        .filter_map(|((topic, partition), marks)| {
            let start = next
                .get(topic)
                .and_then(|p| p.get(partition))
                .copied()
                .unwrap_or(marks.low);
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

    fn checkpoint(entries: &[(&str, i32, i64)]) -> PartitionOffsets {
        let mut offsets = PartitionOffsets::new();
        for (t, p, o) in entries {
            offsets.entry(t.to_string()).or_default().insert(*p, *o);
        }
        offsets
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
}
