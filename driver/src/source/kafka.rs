//! The Kafka source: a job's topics (named, or matching a pattern) read in offset ranges.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice_core::spec::{KafkaSourceSpec, StartingOffsets};
use sluice_kafka::offsets::cut_ranges;
use sluice_kafka::read::{Connection, OffsetReader};

use super::{Lookup, Source};
use crate::error::{Error, Result};
use crate::planner::{self, LatestOffsets};
use crate::protocol::{SourcePosition, SourceRead};

/// A job's Kafka source, with the offset reader its lookups share (connected on first use
/// and kept until [`Source::reset`]).
#[derive(Clone)]
pub struct KafkaSource {
    name: String,
    spec: Arc<KafkaSourceSpec>,
    reader: Arc<Mutex<Option<Arc<OffsetReader>>>>,
}

impl KafkaSource {
    /// The source `name` of a job, read as `spec` says.
    pub fn new(name: &str, spec: &KafkaSourceSpec) -> KafkaSource {
        KafkaSource {
            name: name.to_string(),
            spec: Arc::new(spec.clone()),
            reader: Arc::default(),
        }
    }

    /// The offset reader, connected on first use.
    fn reader(&self) -> Result<Arc<OffsetReader>> {
        let mut kept = self.reader.lock().expect("offset reader lock");
        if let Some(reader) = kept.as_ref() {
            return Ok(reader.clone());
        }
        let reader = Arc::new(OffsetReader::connect(&Connection::of(&self.spec))?);
        *kept = Some(reader.clone());
        Ok(reader)
    }
}

#[async_trait]
impl Source for KafkaSource {
    type Available = LatestOffsets;

    fn name(&self) -> &str {
        &self.name
    }

    /// The read_committed ends of the named topics and of those the pattern matches now.
    fn start_lookup(&self) -> Result<Lookup<LatestOffsets>> {
        let reader = self.reader()?;
        let matcher = self.spec.topic_matcher()?;
        Ok(tokio::task::spawn_blocking(move || {
            let topics = reader.topics(&matcher)?;
            Ok(reader.watermarks(&topics)?)
        }))
    }

    /// Where `starting_offsets` says, per partition (a start by time asks Kafka's
    /// offset-for-time lookup).
    async fn start(&self, available: &LatestOffsets) -> Result<SourcePosition> {
        let starting = self.spec.starting_offsets.clone();
        let at_time = match starting {
            StartingOffsets::Timestamp(ms) => {
                let reader = self.reader()?;
                let partitions: Vec<(String, i32)> = available.keys().cloned().collect();
                tokio::task::spawn_blocking(move || reader.offsets_at_time(partitions, ms))
                    .await
                    .map_err(|e| Error::Timeout {
                        what: format!("Kafka offset-for-time lookup ({e})"),
                        seconds: 0,
                    })??
            }
            _ => planner::OffsetsAtTime::new(),
        };
        let offsets = planner::initial_offsets(&starting, available, &at_time);
        Ok(SourcePosition::Kafka(offsets))
    }

    fn check(&self, position: &SourcePosition, available: &LatestOffsets) -> Result<()> {
        let next = position.kafka_offsets();
        for ((topic, partition), marks) in available {
            if let Some(&next) = next.get(topic).and_then(|p| p.get(partition)) {
                if next > marks.high {
                    return Err(Error::CheckpointBeyondLog {
                        topic: topic.clone(),
                        partition: *partition,
                        checkpoint: next,
                        latest: marks.high,
                    });
                }
            }
        }
        Ok(())
    }

    /// Ranges from the position to the ends, at most `max_offsets_per_trigger` in all.
    fn next_read(
        &self,
        position: &SourcePosition,
        available: &LatestOffsets,
        limit: Option<&LatestOffsets>,
    ) -> Option<SourceRead> {
        let capped = planner::cap(available, limit);
        let ranges = cut_ranges(
            position.kafka_offsets(),
            &capped,
            self.spec.max_offsets_per_trigger,
        );
        (!ranges.is_empty()).then_some(SourceRead::Kafka(ranges))
    }

    fn reset(&self) {
        *self.reader.lock().expect("offset reader lock") = None;
    }
}
