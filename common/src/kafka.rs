//! Kafka helpers: latest offsets for planning and exact offset-range reads for tasks.
//! No consumer-group offsets are ever committed; the checkpoint store is the only truth.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::decode::RawRecord;
use crate::error::{Error, Result};
use crate::offsets::{OffsetRange, Watermarks};

/// How long a metadata or watermark request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a range read may go without receiving anything before it gives up.
pub const READ_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A consumer configured for assign/seek reads: no group commits, no offset reset.
pub fn consumer(bootstrap_servers: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", "sluice")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // A range below the earliest offset is data loss; never silently jump.
        .set("auto.offset.reset", "error")
        .set("fetch.wait.max.ms", "10")
        // Small fetch requests must not wait for a delayed ACK.
        .set("socket.nagle.disable", "true")
        .set("socket.connection.setup.timeout.ms", "5000")
        .set("log_level", "3")
        .create()
        .map_err(|e| kafka_error(bootstrap_servers, e))
}

fn kafka_error(bootstrap_servers: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka {
        bootstrap_servers: bootstrap_servers.to_string(),
        message: e.to_string(),
    }
}

/// Reads partition watermarks of a job's topics; blocking, keep it off async threads.
pub struct OffsetReader {
    consumer: BaseConsumer,
    bootstrap_servers: String,
}

impl OffsetReader {
    pub fn new(bootstrap_servers: &str) -> Result<OffsetReader> {
        Ok(OffsetReader {
            consumer: consumer(bootstrap_servers)?,
            bootstrap_servers: bootstrap_servers.to_string(),
        })
    }

    /// Partition count of every topic; an absent topic is an error naming it.
    pub fn partitions(&self, topics: &[String]) -> Result<BTreeMap<String, i32>> {
        let mut counts = BTreeMap::new();
        for topic in topics {
            let metadata = self
                .consumer
                .fetch_metadata(Some(topic), METADATA_TIMEOUT)
                .map_err(|e| {
                    kafka_error(
                        &self.bootstrap_servers,
                        format!("metadata of topic {topic}: {e}"),
                    )
                })?;
            let found = metadata.topics().iter().find(|t| t.name() == topic);
            match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                    counts.insert(topic.clone(), t.partitions().len() as i32);
                }
                Some(t) => {
                    let cause = t
                        .error()
                        .map(|e| format!("{:?}", RDKafkaErrorCode::from(e)))
                        .unwrap_or_else(|| "no partitions".into());
                    return Err(kafka_error(
                        &self.bootstrap_servers,
                        format!("topic {topic} is not available: {cause}"),
                    ));
                }
                None => {
                    return Err(kafka_error(
                        &self.bootstrap_servers,
                        format!("topic {topic} does not exist"),
                    ))
                }
            }
        }
        Ok(counts)
    }

    /// Low and high watermarks of every partition of `topics`.
    pub fn watermarks(&self, topics: &[String]) -> Result<BTreeMap<(String, i32), Watermarks>> {
        let mut marks = BTreeMap::new();
        for (topic, count) in self.partitions(topics)? {
            for partition in 0..count {
                let (low, high) = self
                    .consumer
                    .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                    .map_err(|e| {
                        kafka_error(
                            &self.bootstrap_servers,
                            format!("watermarks of {topic}/{partition}: {e}"),
                        )
                    })?;
                marks.insert((topic.clone(), partition), Watermarks { low, high });
            }
        }
        Ok(marks)
    }
}

/// The records of a range, and how many of its offsets Kafka no longer had.
#[derive(Debug, Default)]
pub struct RangeRead {
    pub records: Vec<RawRecord>,
    pub offsets_lost: u64,
}

/// Reads exactly the records of `range` (offsets in `[start, end)`; gaps are fine).
/// Offsets deleted by retention fail the read with [`Error::DataLoss`], or are skipped
/// and counted when `fail_on_data_loss` is false. Blocking; `consumer` may be reused.
pub fn read_range(
    consumer: &BaseConsumer,
    bootstrap_servers: &str,
    range: &OffsetRange,
    fail_on_data_loss: bool,
) -> Result<RangeRead> {
    match read_from(consumer, bootstrap_servers, range, range.start) {
        Err(Error::DataLoss { start, end, .. }) if !fail_on_data_loss => {
            tracing::warn!(topic = %range.topic, partition = range.partition, start, end, "offsets deleted from Kafka before they were processed; skipping them");
            let rest = read_from(consumer, bootstrap_servers, range, end)?;
            Ok(RangeRead {
                records: rest.records,
                offsets_lost: (end - start) as u64,
            })
        }
        other => other,
    }
}

fn read_from(
    consumer: &BaseConsumer,
    bootstrap_servers: &str,
    range: &OffsetRange,
    from: i64,
) -> Result<RangeRead> {
    let data_loss = |low: i64| Error::DataLoss {
        topic: range.topic.clone(),
        partition: range.partition,
        start: from,
        end: low.min(range.end),
    };
    let low_watermark = || -> Result<i64> {
        consumer
            .fetch_watermarks(&range.topic, range.partition, METADATA_TIMEOUT)
            .map(|(low, _)| low)
            .map_err(|e| kafka_error(bootstrap_servers, e))
    };
    let range_error = |message: String| Error::OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        start: range.start,
        end: range.end,
        message,
    };
    let mut records = Vec::with_capacity((range.end - from).max(0) as usize);
    if from >= range.end {
        return Ok(RangeRead::default());
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&range.topic, range.partition, Offset::Offset(from))
        .map_err(|e| kafka_error(bootstrap_servers, e))?;
    consumer
        .assign(&assignment)
        .map_err(|e| kafka_error(bootstrap_servers, e))?;
    let mut last_progress = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                if message.topic() != range.topic || message.partition() != range.partition {
                    continue;
                }
                let offset = message.offset();
                if offset >= range.end {
                    break;
                }
                records.push(RawRecord {
                    offset,
                    timestamp_ms: message.timestamp().to_millis(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                });
                if offset + 1 >= range.end {
                    break;
                }
            }
            // Retention shows as an out-of-range fetch (a gap inside the log is fine: the
            // next record simply has a higher offset).
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)))
            | Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                let low = low_watermark()?;
                if low > from {
                    return Err(data_loss(low));
                }
                return Err(range_error(format!("offset {from} is out of range")));
            }
            Some(Err(e)) => return Err(kafka_error(bootstrap_servers, e)),
            None => {
                // Nothing arrived: the rest of the range may be a gap. The position tells.
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| {
                        tpl.find_partition(&range.topic, range.partition)
                            .and_then(|p| p.offset().to_raw())
                    })
                    .unwrap_or(-1);
                if position >= range.end {
                    break;
                }
                if last_progress.elapsed() > READ_STALL_TIMEOUT {
                    return Err(range_error(format!(
                        "no records for {}s at offset {position}",
                        READ_STALL_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
    Ok(RangeRead {
        records,
        offsets_lost: 0,
    })
}
