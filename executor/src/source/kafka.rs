//! Offset ranges -> decoded Arrow batches. Consumers are pooled per bootstrap address so a
//! task does not pay for a new connection; offsets are never committed.
//!
//! A task's ranges are read by one consumer together (one client, one fetch stream),
//! decoded chunk by chunk as they arrive.
//!
//! A pooled consumer stays assigned to the partitions it last read and keeps fetching
//! ahead. The next ranges of those partitions start where the last ones ended, so a task
//! handed that consumer finds its records already fetched instead of waiting for a seek
//! and a fetch round trip; the driver sends a partition's ranges to the same executor
//! while it has room. Consumers idle longer than [`READ_AHEAD_TTL`] stop fetching ahead.
//! Without read-ahead (`--kafka-read-ahead false`) idle consumers are unassigned and
//! every read seeks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use sluice_core::Result;
use sluice_kafka::decode::{DeadLetter, KafkaRecord, RecordDecoder};
use sluice_kafka::offsets::OffsetRange;
use sluice_kafka::read::together::{
    continues_all, read_ranges_together, RangeChunks, ReadAheadConsumer,
};
use sluice_kafka::read::{read_range_chunks, Connection};

use super::event_time::event_time_stats;

/// How long an idle consumer keeps fetching ahead on its partition; then it is unassigned
/// (and stays pooled, connected).
pub const READ_AHEAD_TTL: Duration = Duration::from_secs(30);
/// Idle consumers kept per bootstrap address at most; the longest idle go first.
pub const MAX_IDLE: usize = 64;

/// Idle consumers, by connection (bootstrap servers and client properties).
pub struct ConsumerPool {
    idle: Mutex<HashMap<String, Vec<PooledConsumer>>>,
    /// Whether idle consumers stay on their partition, fetching ahead.
    read_ahead: bool,
}

struct PooledConsumer {
    reader: ReadAheadConsumer,
    idle_since: Instant,
}

/// The decoded records of a task's ranges.
#[derive(Default)]
pub struct TaskInput {
    pub batches: Vec<RecordBatch>,
    pub input_rows: u64,
    pub malformed_skipped: u64,
    /// Offsets deleted from Kafka before they were read (`fail_on_data_loss: false`).
    pub offsets_lost: u64,
    /// Malformed records to write to the dead-letter table.
    pub dead_letters: Vec<DeadLetter>,
    /// Jobs with a watermark: the highest event time read, per (topic, partition).
    pub max_event_times: Vec<(String, i32, i64)>,
    /// Records older than the batch's watermark.
    pub late_records: u64,
    /// Time spent decoding, summed over the ranges (decoded on their reader threads).
    pub decode_time: Duration,
}

/// One range's records, decoded (a batch per chunk).
#[derive(Default)]
struct DecodedRange {
    records: u64,
    offsets_lost: u64,
    batches: Vec<RecordBatch>,
    malformed_skipped: u64,
    dead_letters: Vec<DeadLetter>,
    decode_time: Duration,
}

impl DecodedRange {
    /// Decodes one chunk of `range`'s records and keeps what came of it.
    fn add_chunk<R: KafkaRecord>(
        &mut self,
        decoder: &RecordDecoder,
        range: &OffsetRange,
        chunk: &[R],
    ) -> Result<()> {
        let started = Instant::now();
        let chunk = decoder.decode(&range.topic, range.partition, chunk)?;
        self.decode_time += started.elapsed();
        self.malformed_skipped += chunk.malformed_skipped;
        self.dead_letters.extend(chunk.dead_letters);
        self.batches.push(chunk.batch);
        Ok(())
    }
}

/// A task's ranges, decoded as their chunks arrive.
struct DecodedRanges<'a> {
    decoder: &'a RecordDecoder,
    ranges: &'a [OffsetRange],
    decoded: Vec<DecodedRange>,
}

impl RangeChunks for DecodedRanges<'_> {
    fn take<R: KafkaRecord>(&mut self, range: usize, records: &[R]) -> Result<()> {
        self.decoded[range].add_chunk(self.decoder, &self.ranges[range], records)
    }
}

/// Which column holds event time, and the watermark of the batch being read.
#[derive(Debug, Clone, Copy)]
pub struct EventTime<'a> {
    pub column: &'a str,
    pub watermark_ms: Option<i64>,
}

/// Consumers are shared only between reads of the same connection.
fn pool_key(connection: &Connection) -> String {
    format!(
        "{}|{:?}",
        connection.bootstrap_servers, connection.properties
    )
}

impl ConsumerPool {
    /// An empty pool; with `read_ahead`, consumers stay on their partition between reads.
    pub fn new(read_ahead: bool) -> ConsumerPool {
        ConsumerPool {
            idle: Mutex::new(HashMap::new()),
            read_ahead,
        }
    }

    /// The consumer standing where `ranges` start (see [`continues_all`]), else an
    /// unpositioned or the longest idle one, else a new one. Consumers idle too long stop
    /// fetching ahead on the way.
    fn take(&self, connection: &Connection, ranges: &[OffsetRange]) -> Result<PooledConsumer> {
        let pooled = {
            let mut idle = self.idle.lock().expect("pool lock");
            let consumers = idle.entry(pool_key(connection)).or_default();
            for stale in consumers.iter_mut().filter(|c| {
                !c.reader.standing().is_empty() && c.idle_since.elapsed() >= READ_AHEAD_TTL
            }) {
                stale.reader.stop_reading_ahead();
            }
            let continuing = consumers
                .iter()
                .position(|c| continues_all(c.reader.standing(), ranges));
            let longest_idle = || {
                (0..consumers.len()).min_by_key(|&i| {
                    // Unpositioned consumers first, then the longest idle.
                    (
                        !consumers[i].reader.standing().is_empty(),
                        consumers[i].idle_since,
                    )
                })
            };
            continuing
                .or_else(longest_idle)
                .map(|i| consumers.swap_remove(i))
        };
        match pooled {
            Some(c) => Ok(c),
            None => Ok(PooledConsumer {
                reader: ReadAheadConsumer::new(connection.consumer()?),
                idle_since: Instant::now(),
            }),
        }
    }

    /// Pools a consumer after a read; without read-ahead it stops fetching first (the
    /// next read seeks).
    fn give_back(&self, connection: &Connection, mut pooled: PooledConsumer) {
        if !self.read_ahead && !pooled.reader.standing().is_empty() {
            pooled.reader.stop_reading_ahead();
        }
        pooled.idle_since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let consumers = idle.entry(pool_key(connection)).or_default();
        consumers.push(pooled);
        if consumers.len() > MAX_IDLE {
            if let Some(oldest) = (0..consumers.len()).min_by_key(|&i| consumers[i].idle_since) {
                consumers.swap_remove(oldest);
            }
        }
    }

    /// Reads and decodes one range with a pooled consumer, chunk by chunk straight from
    /// librdkafka's buffers; a consumer that failed mid-read is dropped, not pooled.
    /// Blocking.
    fn read_one(
        &self,
        connection: &Connection,
        decoder: &RecordDecoder,
        range: &OffsetRange,
        fail_on_data_loss: bool,
    ) -> Result<DecodedRange> {
        let mut pooled = self.take(connection, std::slice::from_ref(range))?;
        if !pooled.reader.carried().is_empty() {
            // The single-range reader reads from the consumer's queue alone, which goes on
            // after the records carried: it must seek.
            pooled.reader.stop_reading_ahead();
        }
        let mut decoded = DecodedRange::default();
        let read = read_range_chunks(
            pooled.reader.consumer(),
            &connection.bootstrap_servers,
            range,
            fail_on_data_loss,
            pooled.reader.standing().first(),
            |chunk| decoded.add_chunk(decoder, range, chunk),
        )?;
        decoded.records = read.records;
        decoded.offsets_lost = read.offsets_lost;
        pooled.reader.stands_at(read.position);
        self.give_back(connection, pooled);
        Ok(decoded)
    }

    /// Reads and decodes several ranges with one pooled consumer (one client and fetch
    /// stream for all of them), decoding each range's chunks as they come; the consumer
    /// standing where they all start, if any, reads on from what it fetched ahead.
    /// Blocking.
    fn read_together(
        &self,
        connection: &Connection,
        decoder: &RecordDecoder,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
    ) -> Result<Vec<DecodedRange>> {
        let mut pooled = self.take(connection, ranges)?;
        let mut decoded = DecodedRanges {
            decoder,
            ranges,
            decoded: ranges.iter().map(|_| DecodedRange::default()).collect(),
        };
        let summaries = read_ranges_together(
            &mut pooled.reader,
            &connection.bootstrap_servers,
            ranges,
            fail_on_data_loss,
            &mut decoded,
        )?;
        let mut decoded = decoded.decoded;
        for (decoded, summary) in decoded.iter_mut().zip(summaries) {
            decoded.records = summary.records;
            decoded.offsets_lost = summary.offsets_lost;
        }
        self.give_back(connection, pooled);
        Ok(decoded)
    }

    /// Reads and decodes every range. A task's several ranges share one consumer (see
    /// [`read_ranges_together`]); a single range is read by the pooled consumer standing
    /// where it starts, if any. Blocking: call from a blocking thread.
    pub fn read(
        &self,
        connection: &Connection,
        decoder: &RecordDecoder,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
        event_time: Option<EventTime<'_>>,
    ) -> Result<TaskInput> {
        let reads = match ranges {
            [range] => vec![self.read_one(connection, decoder, range, fail_on_data_loss)?],
            _ => self.read_together(connection, decoder, ranges, fail_on_data_loss)?,
        };
        let mut input = TaskInput {
            batches: Vec::with_capacity(ranges.len()),
            input_rows: 0,
            malformed_skipped: 0,
            offsets_lost: 0,
            dead_letters: Vec::new(),
            max_event_times: Vec::new(),
            late_records: 0,
            decode_time: Duration::ZERO,
        };
        for (range, read) in ranges.iter().zip(reads) {
            input.input_rows += read.records;
            input.offsets_lost += read.offsets_lost;
            input.decode_time += read.decode_time;
            input.malformed_skipped += read.malformed_skipped;
            input.dead_letters.extend(read.dead_letters);
            if let Some(event_time) = event_time {
                let mut max_ms = None;
                for batch in &read.batches {
                    let stats = event_time_stats(batch, event_time.column, event_time.watermark_ms);
                    input.late_records += stats.late;
                    max_ms = max_ms.max(stats.max_ms);
                }
                if let Some(max) = max_ms {
                    input
                        .max_event_times
                        .push((range.topic.clone(), range.partition, max));
                }
            }
            input.batches.extend(read.batches);
        }
        Ok(input)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type};
    use sluice_testkit::{mock_topic, partition_range};

    use super::*;

    /// Positions of the pooled consumers.
    fn positions(pool: &ConsumerPool, connection: &Connection) -> Vec<Option<i64>> {
        let idle = pool.idle.lock().unwrap();
        idle[&pool_key(connection)]
            .iter()
            .map(|c| c.reader.standing().first().map(|p| p.next))
            .collect()
    }

    #[test]
    fn consumers_stay_on_their_partition_only_with_read_ahead() {
        let kafka = mock_topic("t", 20);
        let connection = Connection::plain(&kafka.bootstrap_servers());
        let spec =
            serde_json::from_str(r#"{"bootstrap_servers": "b", "topics": ["t"], "format": "raw"}"#);
        let decoder = RecordDecoder::new(&spec.unwrap()).unwrap();
        for read_ahead in [true, false] {
            let pool = ConsumerPool::new(read_ahead);
            for (start, end) in [(0, 10), (10, 20)] {
                let read = pool
                    .read_one(
                        &connection,
                        &decoder,
                        &partition_range("t", start, end),
                        true,
                    )
                    .unwrap();
                let offsets: Vec<i64> = read
                    .batches
                    .iter()
                    .flat_map(|b| {
                        b.column_by_name("_offset")
                            .unwrap()
                            .as_primitive::<Int64Type>()
                            .values()
                            .to_vec()
                    })
                    .collect();
                assert_eq!(offsets, (start..end).collect::<Vec<_>>());
                assert_eq!(read.records, (end - start) as u64);
                let expected = if read_ahead { Some(end) } else { None };
                assert_eq!(
                    positions(&pool, &connection),
                    vec![expected],
                    "one consumer, reused"
                );
            }
        }
    }

    /// A task's ranges share one consumer, which then stands at their ends and reads the
    /// ranges that follow from what it fetched ahead; each range gets exactly its records.
    #[test]
    fn a_tasks_ranges_share_one_consumer_that_reads_on_where_they_ended() {
        let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
        kafka.create_topic("t", 2, 1).unwrap();
        let producer = sluice_datagen::synthetic::producer(&kafka.bootstrap_servers()).unwrap();
        sluice_datagen::synthetic::produce_orders(&producer, "t", 2, 0, 40, None, |_| {}).unwrap();
        let connection = Connection::plain(&kafka.bootstrap_servers());
        let spec =
            serde_json::from_str(r#"{"bootstrap_servers": "b", "topics": ["t"], "format": "raw"}"#);
        let decoder = RecordDecoder::new(&spec.unwrap()).unwrap();
        let pool = ConsumerPool::new(true);
        let range = |partition, start, end| OffsetRange {
            partition,
            ..partition_range("t", start, end)
        };
        for (start, end) in [(0, 10), (10, 20)] {
            let ranges = [range(0, start, end), range(1, start, end)];
            let input = pool
                .read(&connection, &decoder, &ranges, true, None)
                .unwrap();
            assert_eq!(input.input_rows, 2 * (end - start) as u64);
            let mut read: Vec<(i32, i64)> = input
                .batches
                .iter()
                .flat_map(|b| {
                    let partitions = b
                        .column_by_name("_partition")
                        .unwrap()
                        .as_primitive::<Int32Type>()
                        .values()
                        .to_vec();
                    let offsets = b
                        .column_by_name("_offset")
                        .unwrap()
                        .as_primitive::<Int64Type>()
                        .values()
                        .to_vec();
                    partitions.into_iter().zip(offsets)
                })
                .collect();
            read.sort();
            let expected: Vec<(i32, i64)> = (0..2)
                .flat_map(|p| (start..end).map(move |o| (p, o)))
                .collect();
            assert_eq!(read, expected);
            let idle = pool.idle.lock().unwrap();
            let standing: Vec<Vec<(i32, i64)>> = idle[&pool_key(&connection)]
                .iter()
                .map(|c| {
                    c.reader
                        .standing()
                        .iter()
                        .map(|p| (p.partition, p.next))
                        .collect()
                })
                .collect();
            assert_eq!(
                standing,
                vec![vec![(0, end), (1, end)]],
                "one consumer, reused"
            );
        }
    }
}
