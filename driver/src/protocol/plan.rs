//! A batch's plan: what it reads of each source, written to the offset log before any of
//! it runs (the protocol's write-ahead rule).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sluice_core::spec::SOURCE_TABLE;
use sluice_core::BatchId;
use sluice_kafka::offsets::OffsetRange;

/// A batch as written to the offset log before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredPlan")]
pub struct BatchPlan {
    pub batch_id: BatchId,
    /// What the batch reads of each source, by the source's name; a batch that only moves
    /// the watermark on (closing state) reads nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reads: BTreeMap<String, SourceRead>,
    /// When the batch was planned, milliseconds since the Unix epoch.
    pub planned_at_ms: i64,
    /// The watermark the batch runs under (the previous checkpoint's): records older are
    /// late. Logged with the plan, so a re-run counts the same records late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark_ms: Option<i64>,
    /// Stateful jobs: the state the batch starts from (the previous checkpoint's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_files: Vec<String>,
}

/// What a batch reads of one source, in the source's kind of split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceRead {
    /// Offset ranges of Kafka partitions.
    Kafka(Vec<OffsetRange>),
}

impl BatchPlan {
    /// A plan reading `ranges` of the Kafka source `source` (none: nothing).
    pub fn kafka(
        batch_id: BatchId,
        source: &str,
        ranges: Vec<OffsetRange>,
        planned_at_ms: i64,
    ) -> BatchPlan {
        let reads = if ranges.is_empty() {
            BTreeMap::new()
        } else {
            BTreeMap::from([(source.to_string(), SourceRead::Kafka(ranges))])
        };
        BatchPlan {
            batch_id,
            reads,
            planned_at_ms,
            watermark_ms: None,
            state_files: Vec::new(),
        }
    }

    /// Every Kafka range the batch reads, over its sources.
    pub fn kafka_ranges(&self) -> Vec<OffsetRange> {
        self.reads
            .values()
            .flat_map(|read| match read {
                SourceRead::Kafka(ranges) => ranges.iter().cloned(),
            })
            .collect()
    }

    /// Offsets the batch reads, over its sources.
    pub fn total_offsets(&self) -> u64 {
        self.kafka_ranges().iter().map(OffsetRange::len).sum()
    }

    /// Whether the batch reads records (not only the state under a newer watermark).
    pub fn reads_records(&self) -> bool {
        self.total_offsets() > 0
    }
}

/// A plan as logged: today's layout, or the one written before sources were named (the
/// one Kafka source's `ranges` at the top), which reads as the source named
/// [`SOURCE_TABLE`].
#[derive(Deserialize)]
struct StoredPlan {
    batch_id: BatchId,
    #[serde(default)]
    reads: BTreeMap<String, SourceRead>,
    #[serde(default)]
    ranges: Vec<OffsetRange>,
    planned_at_ms: i64,
    #[serde(default)]
    watermark_ms: Option<i64>,
    #[serde(default)]
    state_files: Vec<String>,
}

impl From<StoredPlan> for BatchPlan {
    fn from(stored: StoredPlan) -> BatchPlan {
        let mut reads = stored.reads;
        if !stored.ranges.is_empty() {
            reads.insert(SOURCE_TABLE.to_string(), SourceRead::Kafka(stored.ranges));
        }
        BatchPlan {
            batch_id: stored.batch_id,
            reads,
            planned_at_ms: stored.planned_at_ms,
            watermark_ms: stored.watermark_ms,
            state_files: stored.state_files,
        }
    }
}
