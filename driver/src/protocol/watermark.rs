//! The event-time watermark over a job's sources and their splits (a Kafka source's
//! partitions): the lowest highest event time among the splits that count, over every
//! source, less the allowed delay, never moving back.
//!
//! Every partition that had records counts, unless `idle_timeout` is set: then a partition
//! whose last records are that old (processing time, by the planning time of the last
//! batch that read some) stops counting until a batch reads records of it again. When no
//! partition counts, the watermark stays, or with `advance_when_idle` follows processing
//! time less that bound. Everything here is a function of the checkpoint and a moment, so
//! the watermark a batch is planned under (logged with its plan) and the one its commit
//! leaves (computed at its planning time, whichever attempt commits) are the same on
//! every driver. See docs/architecture.md, "Watermarks and quiet streams".

use sluice_core::spec::WatermarkSpec;
use sluice_core::Result;

use super::checkpoint::{record_event_time, Checkpoint, EventTimes};
use super::plan::{BatchPlan, SourceRead};

/// How a job's watermark follows its partitions (`source.watermark`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkRule {
    /// The allowed lateness.
    pub delay_ms: i64,
    /// A partition without records for this long stops counting.
    pub idle_timeout_ms: Option<i64>,
    /// When no partition counts, the watermark follows processing time less this.
    pub advance_when_idle_ms: Option<i64>,
}

impl WatermarkRule {
    /// A watermark `delay_ms` behind the slowest partition, which always counts.
    pub fn delay(delay_ms: i64) -> WatermarkRule {
        WatermarkRule {
            delay_ms,
            idle_timeout_ms: None,
            advance_when_idle_ms: None,
        }
    }

    /// The rule a spec's watermark states.
    pub fn of(spec: &WatermarkSpec) -> Result<WatermarkRule> {
        Ok(WatermarkRule {
            delay_ms: spec.delay_ms()?,
            idle_timeout_ms: spec.idle_timeout_ms()?,
            advance_when_idle_ms: spec.advance_when_idle_ms()?,
        })
    }
}

/// The watermark at a moment and what sets it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatermarkView {
    pub watermark_ms: Option<i64>,
    /// The counting partition with the lowest highest event time: the one holding the
    /// watermark back. `None` when no partition counts.
    pub held_by: Option<(String, i32)>,
    /// Partitions with records once that `idle_timeout` leaves out.
    pub idle: Vec<(String, i32)>,
}

impl Checkpoint {
    /// The watermark at `at_ms` (processing time) under `rule`: the checkpoint's, or later
    /// when splits went idle since or processing time moved on.
    pub fn watermark_at(&self, rule: &WatermarkRule, at_ms: i64) -> WatermarkView {
        let mut view = WatermarkView::default();
        let mut lowest: Option<i64> = None;
        for source in self.sources.values() {
            let is_idle = |group: &str, split: i32| {
                let Some(timeout) = rule.idle_timeout_ms else {
                    return false;
                };
                source
                    .records_at_ms
                    .get(group)
                    .and_then(|p| p.get(&split))
                    .is_some_and(|&last| at_ms.saturating_sub(last) >= timeout)
            };
            for (group, splits) in &source.max_event_time_ms {
                for (&split, &ms) in splits {
                    if is_idle(group, split) {
                        view.idle.push((group.clone(), split));
                    } else if lowest.is_none_or(|low| ms < low) {
                        lowest = Some(ms);
                        view.held_by = Some((group.clone(), split));
                    }
                }
            }
        }
        let candidate = match (lowest, rule.advance_when_idle_ms) {
            (Some(lowest), _) => Some(lowest.saturating_sub(rule.delay_ms)),
            (None, Some(bound)) if !view.idle.is_empty() => Some(at_ms.saturating_sub(bound)),
            (None, _) => None,
        };
        view.watermark_ms = self.watermark_ms.max(candidate);
        view
    }

    /// This checkpoint after a batch whose records had the event times `seen` (the job's
    /// one source's, by split): they are merged in, the splits `plan` read records of are
    /// marked as having had records at its planning time, and the watermark moves on as
    /// [`Checkpoint::watermark_at`] that time. Without a plan (tests), no split is marked.
    pub fn with_batch_event_times(
        mut self,
        plan: Option<&BatchPlan>,
        seen: &EventTimes,
        rule: &WatermarkRule,
    ) -> Checkpoint {
        if let Some(source) = self.source_mut() {
            for (group, splits) in seen {
                for (&split, &ms) in splits {
                    record_event_time(&mut source.max_event_time_ms, group, split, ms);
                }
            }
        }
        let at_ms = plan.map_or(0, |p| p.planned_at_ms);
        if let (Some(plan), Some(_)) = (plan, rule.idle_timeout_ms) {
            for (name, read) in &plan.reads {
                let Some(source) = self.sources.get_mut(name) else {
                    continue;
                };
                match read {
                    SourceRead::Kafka(ranges) => {
                        for range in ranges.iter().filter(|r| !r.is_empty()) {
                            source
                                .records_at_ms
                                .entry(range.topic.clone())
                                .or_default()
                                .insert(range.partition, at_ms);
                        }
                    }
                }
            }
            // Splits known before their records' times were kept (an upgrade) count as
            // having had records now.
            for source in self.sources.values_mut() {
                for (group, splits) in &source.max_event_time_ms {
                    let marked = source.records_at_ms.entry(group.clone()).or_default();
                    for &split in splits.keys() {
                        marked.entry(split).or_insert(at_ms);
                    }
                }
            }
        }
        self.watermark_ms = self.watermark_at(rule, at_ms).watermark_ms;
        self
    }

    /// This checkpoint with the event times a batch saw merged in and the watermark moved
    /// on: the minimum over splits that have data of their highest event time, less
    /// `delay_ms`, and never below the previous watermark. The batch protocol commits
    /// through [`Checkpoint::with_batch_event_times`]; this delay-only form pins the
    /// default rule in tests.
    #[cfg(test)]
    pub fn with_event_times(self, seen: &EventTimes, delay_ms: i64) -> Checkpoint {
        self.with_batch_event_times(None, seen, &WatermarkRule::delay(delay_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_kafka::offsets::{OffsetRange, PartitionOffsets};

    /// A checkpoint of one Kafka source, `source`, before any batch.
    fn initial() -> Checkpoint {
        Checkpoint::initial_kafka("source", PartitionOffsets::new())
    }

    fn seen(entries: &[(i32, i64)]) -> EventTimes {
        [("t".to_string(), entries.iter().copied().collect())].into()
    }

    /// A batch planned at `at_ms` that read records of `partitions`.
    fn plan_at(at_ms: i64, partitions: &[i32]) -> BatchPlan {
        let ranges = partitions
            .iter()
            .map(|&partition| OffsetRange {
                topic: "t".into(),
                partition,
                start: 0,
                end: 1,
            })
            .collect();
        BatchPlan::kafka(sluice_core::BatchId::new(0), "source", ranges, at_ms)
    }

    const IDLE: WatermarkRule = WatermarkRule {
        delay_ms: 100,
        idle_timeout_ms: Some(60_000),
        advance_when_idle_ms: None,
    };

    #[test]
    fn an_idle_partition_stops_holding_the_watermark_back_until_it_has_records_again() {
        let start = initial();
        let both = start.with_batch_event_times(
            Some(&plan_at(1_000, &[0, 1])),
            &seen(&[(0, 5_000), (1, 2_000)]),
            &IDLE,
        );
        assert_eq!(both.watermark_ms, Some(1_900));
        let view = both.watermark_at(&IDLE, 30_000);
        assert_eq!(view.held_by, Some(("t".to_string(), 1)));
        // Partition 0 goes on; partition 1 has had nothing since 1 s.
        let on =
            both.with_batch_event_times(Some(&plan_at(40_000, &[0])), &seen(&[(0, 9_000)]), &IDLE);
        assert_eq!(on.watermark_ms, Some(1_900), "partition 1 is not idle yet");
        let view = on.watermark_at(&IDLE, 61_000);
        assert_eq!(
            view.watermark_ms,
            Some(8_900),
            "partition 1 is left out after 60 s"
        );
        assert_eq!(view.held_by, Some(("t".to_string(), 0)));
        assert_eq!(view.idle, vec![("t".to_string(), 1)]);
        // Without the option it holds the watermark for ever, and is named.
        let strict = WatermarkRule::delay(100);
        let view = on.watermark_at(&strict, 10_000_000);
        assert_eq!(view.watermark_ms, Some(1_900));
        assert_eq!(view.held_by, Some(("t".to_string(), 1)));
        // It wakes with older records: they do not move the watermark back, and it counts
        // again from then on.
        let idle_now = on.with_batch_event_times(Some(&plan_at(61_000, &[0])), &seen(&[]), &IDLE);
        assert_eq!(idle_now.watermark_ms, Some(8_900));
        let woke = idle_now.with_batch_event_times(
            Some(&plan_at(62_000, &[1])),
            &seen(&[(1, 3_000)]),
            &IDLE,
        );
        assert_eq!(woke.watermark_ms, Some(8_900));
        assert_eq!(
            woke.watermark_at(&IDLE, 62_000).held_by,
            Some(("t".to_string(), 1))
        );
        let caught_up =
            woke.with_batch_event_times(Some(&plan_at(63_000, &[1])), &seen(&[(1, 20_000)]), &IDLE);
        assert_eq!(
            caught_up.watermark_ms,
            Some(8_900),
            "partition 0 is the slowest"
        );
        assert_eq!(
            caught_up.watermark_at(&IDLE, 63_000).held_by,
            Some(("t".to_string(), 0))
        );
    }

    #[test]
    fn when_every_partition_is_idle_the_watermark_stays_unless_it_follows_processing_time() {
        let start = initial();
        let seen_once =
            start.with_batch_event_times(Some(&plan_at(1_000, &[0])), &seen(&[(0, 5_000)]), &IDLE);
        let view = seen_once.watermark_at(&IDLE, 100_000);
        assert_eq!((view.watermark_ms, view.held_by), (Some(4_900), None));
        let following = WatermarkRule {
            advance_when_idle_ms: Some(10_000),
            ..IDLE
        };
        assert_eq!(
            seen_once.watermark_at(&following, 30_000).watermark_ms,
            Some(4_900),
            "not idle before the timeout"
        );
        assert_eq!(
            seen_once.watermark_at(&following, 100_000).watermark_ms,
            Some(90_000)
        );
        // A job that never saw an event time has no watermark to move.
        assert_eq!(start_view(&following), None);
    }

    fn start_view(rule: &WatermarkRule) -> Option<i64> {
        initial().watermark_at(rule, 1_000_000).watermark_ms
    }

    #[test]
    fn partitions_of_a_checkpoint_from_before_idle_times_count_from_the_next_batch() {
        let mut old = initial();
        old.source_mut().unwrap().max_event_time_ms = seen(&[(0, 5_000), (1, 2_000)]);
        old.watermark_ms = Some(1_900);
        let next = old.with_batch_event_times(Some(&plan_at(10_000, &[0])), &seen(&[]), &IDLE);
        assert_eq!(next.source().unwrap().1.records_at_ms["t"][&1], 10_000);
        let later =
            next.with_batch_event_times(Some(&plan_at(50_000, &[0])), &seen(&[(0, 6_000)]), &IDLE);
        assert_eq!(later.watermark_at(&IDLE, 69_999).watermark_ms, Some(1_900));
        assert_eq!(later.watermark_at(&IDLE, 70_000).watermark_ms, Some(5_900));
    }

    #[test]
    fn a_batch_planned_under_a_later_watermark_leaves_it_applied() {
        let mut before = initial();
        before.watermark_ms = Some(1_000);
        let mut plan = plan_at(5_000, &[]);
        plan.watermark_ms = Some(3_000);
        let after = before.after(&plan);
        assert_eq!(after.watermark_ms, Some(3_000));
        assert_eq!(after.applied_watermark_ms, Some(3_000));
    }
}

#[cfg(test)]
mod delay_tests {
    use super::*;
    use sluice_kafka::offsets::PartitionOffsets;

    #[test]
    fn the_watermark_is_the_slowest_partition_less_the_delay_and_never_moves_back() {
        let seen = |entries: &[(i32, i64)]| -> EventTimes {
            [("t".to_string(), entries.iter().copied().collect())].into()
        };
        let start = Checkpoint::initial_kafka("source", PartitionOffsets::new());
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
        assert_eq!(fourth.source().unwrap().1.max_event_time_ms["t"][&0], 5_000);
        // A new partition with older data cannot pull it back either.
        let fifth = fourth.with_event_times(&seen(&[(2, 50)]), 100);
        assert_eq!(fifth.watermark_ms, Some(1_900));
    }

    #[test]
    fn the_watermark_of_several_sources_is_the_lowest_over_them() {
        let mut two = Checkpoint::initial_kafka("orders", PartitionOffsets::new());
        two.sources.insert("payments".into(), Default::default());
        two.sources.get_mut("orders").unwrap().max_event_time_ms =
            [("o".to_string(), [(0, 9_000)].into())].into();
        two.sources.get_mut("payments").unwrap().max_event_time_ms =
            [("p".to_string(), [(0, 4_000), (1, 6_000)].into())].into();
        let view = two.watermark_at(&WatermarkRule::delay(1_000), 0);
        assert_eq!(view.watermark_ms, Some(3_000));
        assert_eq!(view.held_by, Some(("p".to_string(), 0)));
    }
}
