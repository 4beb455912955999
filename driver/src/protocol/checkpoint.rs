//! The checkpoint: what a job has durably done, whatever its sources are. Written by the
//! batch protocol in the same fenced transaction as the commit record (see
//! docs/architecture.md, "The checkpoint").
//!
//! A checkpoint holds the last committed batch, per named source its position (the kind
//! of position is the source's: Kafka offsets today) and the highest event time of each
//! of its splits, the job's watermark, and the state version (the files of the job's
//! state). A checkpoint written before sources were named (one Kafka source, its offsets
//! at the top) reads as the position of the source named `source`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sluice_core::spec::SOURCE_TABLE;
use sluice_core::BatchId;
use sluice_kafka::offsets::PartitionOffsets;

use super::plan::{BatchPlan, SourceRead};

/// The highest event time (or another time) per split of a source, ms since the epoch.
/// A Kafka source's splits are its partitions: topic, then partition.
pub type EventTimes = BTreeMap<String, BTreeMap<i32, i64>>;

/// Keeps `ms` as `group`/`split`'s time if it is higher.
pub fn record_event_time(times: &mut EventTimes, group: &str, split: i32, ms: i64) {
    let max = times
        .entry(group.to_string())
        .or_default()
        .entry(split)
        .or_insert(ms);
    *max = (*max).max(ms);
}

/// What a job has durably consumed: the last committed batch and where to go on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredCheckpoint")]
pub struct Checkpoint {
    /// Last committed batch; [`BatchId::BEFORE_FIRST`] before the first one.
    pub batch_id: BatchId,
    /// Each source's position and event times, by the source's name in the spec.
    pub sources: BTreeMap<String, SourceCheckpoint>,
    /// The event-time watermark after this batch, ms since the epoch: over every source,
    /// the lowest of each source's highest event time per split less the allowed delay,
    /// never moving back (see `super::watermark`). `None` until a record with an event
    /// time was seen (or for a job without a watermark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// The watermark the last batch ran under (its plan's): the state was last processed
    /// under it, so a newer `watermark_ms` may close windows without new records. `None`
    /// before the first batch and in checkpoints written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_watermark_ms: Option<i64>,
    /// The state version: the files holding the job's state after this batch (windows not
    /// yet written, open sessions, remembered keys); the next batch starts from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_files: Vec<String>,
}

/// One source's part of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SourceCheckpoint {
    /// Where the source goes on.
    pub position: SourcePosition,
    /// Sources with a watermark: the highest event time seen per split.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max_event_time_ms: EventTimes,
    /// Sources with a watermark and `idle_timeout`: when each split last had records, as
    /// the planning time of the last batch that read some.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub records_at_ms: EventTimes,
}

/// Where a source goes on; its kind is the source's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourcePosition {
    /// The next offset to read per topic and partition.
    Kafka(PartitionOffsets),
}

impl Default for SourcePosition {
    fn default() -> Self {
        SourcePosition::Kafka(PartitionOffsets::new())
    }
}

impl SourcePosition {
    /// The Kafka offsets of a Kafka source.
    pub fn kafka_offsets(&self) -> &PartitionOffsets {
        match self {
            SourcePosition::Kafka(offsets) => offsets,
        }
    }
}

impl Checkpoint {
    /// The checkpoint a job starts from, before any batch: each source at its start.
    pub fn initial(sources: BTreeMap<String, SourcePosition>) -> Checkpoint {
        Checkpoint {
            batch_id: BatchId::BEFORE_FIRST,
            sources: sources
                .into_iter()
                .map(|(name, position)| {
                    let source = SourceCheckpoint {
                        position,
                        ..SourceCheckpoint::default()
                    };
                    (name, source)
                })
                .collect(),
            watermark_ms: None,
            applied_watermark_ms: None,
            state_files: Vec::new(),
        }
    }

    /// The initial checkpoint of a job whose one Kafka source, `source`, starts at
    /// `offsets`.
    pub fn initial_kafka(source: &str, offsets: PartitionOffsets) -> Checkpoint {
        Checkpoint::initial(BTreeMap::from([(
            source.to_string(),
            SourcePosition::Kafka(offsets),
        )]))
    }

    /// The checkpoint after `plan` is committed: each source's position after what the
    /// plan read of it, and the watermark it ran under as the applied one (the
    /// checkpoint's watermark never falls behind it).
    pub fn after(&self, plan: &BatchPlan) -> Checkpoint {
        let mut sources = self.sources.clone();
        for (name, read) in &plan.reads {
            let source = sources.entry(name.clone()).or_default();
            match (&mut source.position, read) {
                (SourcePosition::Kafka(offsets), SourceRead::Kafka(ranges)) => {
                    for range in ranges {
                        offsets
                            .entry(range.topic.clone())
                            .or_default()
                            .insert(range.partition, range.end);
                    }
                }
            }
        }
        Checkpoint {
            batch_id: plan.batch_id,
            sources,
            watermark_ms: self.watermark_ms.max(plan.watermark_ms),
            applied_watermark_ms: plan.watermark_ms,
            state_files: self.state_files.clone(),
        }
    }

    /// The batch after this checkpoint: it reads `reads` (nothing for a batch that runs
    /// only the state) under `watermark_ms`, from this checkpoint's state.
    pub fn next_plan(
        &self,
        reads: BTreeMap<String, SourceRead>,
        watermark_ms: Option<i64>,
        planned_at_ms: i64,
    ) -> BatchPlan {
        BatchPlan {
            batch_id: self.batch_id.next(),
            reads,
            planned_at_ms,
            watermark_ms,
            state_files: self.state_files.clone(),
        }
    }

    /// The job's one source: its name and checkpoint (one source per job for now).
    pub fn source(&self) -> Option<(&str, &SourceCheckpoint)> {
        self.sources
            .iter()
            .next()
            .map(|(name, source)| (name.as_str(), source))
    }

    /// The job's one source, to change.
    pub fn source_mut(&mut self) -> Option<&mut SourceCheckpoint> {
        self.sources.values_mut().next()
    }

    /// The next offset of `topic`/`partition` of the job's Kafka source, if known.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        let (_, source) = self.source()?;
        source
            .position
            .kafka_offsets()
            .get(topic)?
            .get(&partition)
            .copied()
    }

    /// The Kafka offsets of the job's one source (empty before it has any).
    pub fn kafka_offsets(&self) -> PartitionOffsets {
        self.source()
            .map(|(_, source)| source.position.kafka_offsets().clone())
            .unwrap_or_default()
    }
}

/// A checkpoint as stored: today's layout, or the one written before sources were named
/// (`offsets`, `max_event_time_ms` and `records_at_ms` of the one Kafka source at the
/// top), which reads as the source named [`SOURCE_TABLE`].
#[derive(Deserialize)]
struct StoredCheckpoint {
    batch_id: BatchId,
    #[serde(default)]
    sources: Option<BTreeMap<String, SourceCheckpoint>>,
    #[serde(default)]
    offsets: Option<PartitionOffsets>,
    #[serde(default)]
    max_event_time_ms: EventTimes,
    #[serde(default)]
    records_at_ms: EventTimes,
    #[serde(default)]
    watermark_ms: Option<i64>,
    #[serde(default)]
    applied_watermark_ms: Option<i64>,
    #[serde(default)]
    state_files: Vec<String>,
}

impl From<StoredCheckpoint> for Checkpoint {
    fn from(stored: StoredCheckpoint) -> Checkpoint {
        let sources = match (stored.sources, stored.offsets) {
            (Some(sources), _) => sources,
            (None, offsets) => BTreeMap::from([(
                SOURCE_TABLE.to_string(),
                SourceCheckpoint {
                    position: SourcePosition::Kafka(offsets.unwrap_or_default()),
                    max_event_time_ms: stored.max_event_time_ms,
                    records_at_ms: stored.records_at_ms,
                },
            )]),
        };
        Checkpoint {
            batch_id: stored.batch_id,
            sources,
            watermark_ms: stored.watermark_ms,
            applied_watermark_ms: stored.applied_watermark_ms,
            state_files: stored.state_files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_kafka::offsets::{cut_ranges, OffsetRange, Watermarks};

    /// A checkpoint and a logged plan as release 0.1 wrote them (one Kafka source, its
    /// offsets at the top): see tests/fixtures/README.md.
    const CHECKPOINT_0_1: &str = include_str!("../../tests/fixtures/checkpoint-0.1.json");
    const PLAN_0_1: &str = include_str!("../../tests/fixtures/plan-0.1.json");

    #[test]
    fn a_checkpoint_of_release_0_1_reads_as_the_source_named_source() {
        let old: Checkpoint = serde_json::from_str(CHECKPOINT_0_1).unwrap();
        assert_eq!(old.batch_id, BatchId::new(2));
        let (name, source) = old.source().unwrap();
        assert_eq!(name, SOURCE_TABLE);
        assert_eq!(
            source.position,
            SourcePosition::Kafka([("clicks".to_string(), [(0, 30), (1, 28)].into())].into())
        );
        assert_eq!(
            source.max_event_time_ms,
            [(
                "clicks".to_string(),
                [(0, 1_767_225_629_000), (1, 1_767_225_627_000)].into()
            )]
            .into()
        );
        assert_eq!(source.records_at_ms["clicks"][&1], 1_800_000_000_000);
        assert_eq!(
            (old.watermark_ms, old.applied_watermark_ms),
            (Some(1_767_225_627_000), Some(1_767_225_619_000))
        );
        assert_eq!(old.state_files.len(), 1);
        assert_eq!(
            (old.get("clicks", 1), old.get("clicks", 2)),
            (Some(28), None)
        );
        // Written again, it is in today's layout and reads back the same.
        let again = serde_json::to_string(&old).unwrap();
        assert!(
            again.contains(r#""sources":{"source":{"position":{"kafka""#),
            "{again}"
        );
        assert_eq!(serde_json::from_str::<Checkpoint>(&again).unwrap(), old);
    }

    #[test]
    fn a_plan_logged_by_release_0_1_reads_its_ranges_as_the_source_named_source() {
        let old: BatchPlan = serde_json::from_str(PLAN_0_1).unwrap();
        let range = OffsetRange {
            topic: "clicks".into(),
            partition: 0,
            start: 30,
            end: 40,
        };
        assert_eq!(
            old.reads,
            BTreeMap::from([(SOURCE_TABLE.to_string(), SourceRead::Kafka(vec![range]))])
        );
        assert_eq!(old.watermark_ms, Some(1_767_225_627_000));
        let again = serde_json::to_string(&old).unwrap();
        assert_eq!(serde_json::from_str::<BatchPlan>(&again).unwrap(), old);
        // The old checkpoint moves on by the old plan as by a new one.
        let checkpoint: Checkpoint = serde_json::from_str(CHECKPOINT_0_1).unwrap();
        let after = checkpoint.after(&old);
        assert_eq!(
            (after.get("clicks", 0), after.get("clicks", 1)),
            (Some(40), Some(28))
        );
        assert_eq!(after.batch_id, BatchId::new(3));
    }

    #[test]
    fn successive_batches_cover_the_backlog_exactly_once() {
        let latest: BTreeMap<(String, i32), Watermarks> = [
            (("t", 0), (0, 997)),
            (("t", 1), (3, 250)),
            (("u", 0), (0, 13)),
        ]
        .into_iter()
        .map(|((t, p), (low, high))| ((t.to_string(), p), Watermarks { low, high }))
        .collect();
        let mut cp = Checkpoint::initial_kafka("orders", PartitionOffsets::new());
        let mut seen: BTreeMap<(String, i32), Vec<(i64, i64)>> = BTreeMap::new();
        for batch_id in 0.. {
            let ranges = cut_ranges(&cp.kafka_offsets(), &latest, Some(64));
            if ranges.is_empty() {
                break;
            }
            for r in &ranges {
                seen.entry((r.topic.clone(), r.partition))
                    .or_default()
                    .push((r.start, r.end));
            }
            cp = cp.after(&BatchPlan::kafka(
                BatchId::new(batch_id),
                "orders",
                ranges,
                0,
            ));
        }
        for ((topic, partition), marks) in &latest {
            let pieces = &seen[&(topic.clone(), *partition)];
            assert_eq!(pieces.first().unwrap().0, marks.low);
            assert_eq!(pieces.last().unwrap().1, marks.high);
            for pair in pieces.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "ranges must be contiguous");
            }
        }
        assert_eq!(cp.sources.keys().collect::<Vec<_>>(), ["orders"]);
    }
}
