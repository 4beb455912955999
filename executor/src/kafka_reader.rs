//! Offset ranges -> decoded Arrow batches. Consumers are pooled per bootstrap address so a
//! task does not pay for a new connection; offsets are never committed.
//!
//! A pooled consumer stays assigned to the partition it last read and keeps fetching
//! ahead. The next range of that partition starts where the last one ended, so a task
//! handed that consumer finds its records already fetched instead of waiting for a seek
//! and a fetch round trip; the driver sends a partition's ranges to the same executor
//! while it has room. Consumers idle longer than [`IDLE_TTL`] are closed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::consumer::BaseConsumer;
use sluice_common::decode::{DeadLetter, RecordDecoder};
use sluice_common::kafka::{consumer, read_range, Position, RangeRead};
use sluice_common::offsets::OffsetRange;
use sluice_common::{Error, Result};

/// How long an idle consumer is kept (fetching ahead on its partition).
pub const IDLE_TTL: Duration = Duration::from_secs(30);
/// Idle consumers kept per bootstrap address at most; the longest idle go first.
pub const MAX_IDLE: usize = 64;

/// Idle consumers, by bootstrap servers.
#[derive(Default)]
pub struct ConsumerPool {
    idle: Mutex<HashMap<String, Vec<PooledConsumer>>>,
}

struct PooledConsumer {
    consumer: BaseConsumer,
    /// Where the consumer stands; `None` when unknown (it must seek).
    position: Option<Position>,
    idle_since: Instant,
}

/// The decoded records of a task's ranges.
pub struct TaskInput {
    pub batches: Vec<RecordBatch>,
    pub input_rows: u64,
    pub malformed_skipped: u64,
    /// Offsets deleted from Kafka before they were read (`fail_on_data_loss: false`).
    pub offsets_lost: u64,
    /// Malformed records to write to the dead-letter table.
    pub dead_letters: Vec<DeadLetter>,
}

impl ConsumerPool {
    /// The consumer standing where `range` starts, else the longest idle one, else a new
    /// one. Consumers idle too long are closed on the way.
    fn take(&self, bootstrap_servers: &str, range: &OffsetRange) -> Result<PooledConsumer> {
        let pooled = {
            let mut idle = self.idle.lock().expect("pool lock");
            let consumers = idle.entry(bootstrap_servers.to_string()).or_default();
            consumers.retain(|c| c.idle_since.elapsed() < IDLE_TTL);
            let continuing = consumers
                .iter()
                .position(|c| c.position.as_ref().is_some_and(|p| p.continues(range)));
            let longest_idle = || {
                (0..consumers.len()).min_by_key(|&i| {
                    // Unpositioned consumers first, then the longest idle.
                    (consumers[i].position.is_some(), consumers[i].idle_since)
                })
            };
            continuing
                .or_else(longest_idle)
                .map(|i| consumers.swap_remove(i))
        };
        match pooled {
            Some(c) => Ok(c),
            None => Ok(PooledConsumer {
                consumer: consumer(bootstrap_servers)?,
                position: None,
                idle_since: Instant::now(),
            }),
        }
    }

    fn give_back(&self, bootstrap_servers: &str, mut pooled: PooledConsumer) {
        pooled.idle_since = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        let consumers = idle.entry(bootstrap_servers.to_string()).or_default();
        consumers.push(pooled);
        if consumers.len() > MAX_IDLE {
            if let Some(oldest) = (0..consumers.len()).min_by_key(|&i| consumers[i].idle_since) {
                consumers.swap_remove(oldest);
            }
        }
    }

    /// Reads and decodes every range; several ranges are read at once, one pooled
    /// consumer each. Blocking: call from a blocking thread.
    pub fn read(
        &self,
        bootstrap_servers: &str,
        decoder: &RecordDecoder,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
    ) -> Result<TaskInput> {
        let reads: Vec<Result<RangeRead>> = std::thread::scope(|scope| {
            let readers: Vec<_> = ranges
                .iter()
                .map(|range| {
                    scope.spawn(move || -> Result<RangeRead> {
                        let mut pooled = self.take(bootstrap_servers, range)?;
                        // A consumer that failed mid-read is dropped, not pooled.
                        let read = read_range(
                            &pooled.consumer,
                            bootstrap_servers,
                            range,
                            fail_on_data_loss,
                            pooled.position.as_ref(),
                        )?;
                        pooled.position = read.position.clone();
                        self.give_back(bootstrap_servers, pooled);
                        Ok(read)
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|reader| {
                    reader.join().unwrap_or_else(|_| {
                        Err(Error::Io {
                            context: "Kafka reader thread".into(),
                            source: std::io::Error::other("the reader thread panicked"),
                        })
                    })
                })
                .collect()
        });
        let mut input = TaskInput {
            batches: Vec::with_capacity(ranges.len()),
            input_rows: 0,
            malformed_skipped: 0,
            offsets_lost: 0,
            dead_letters: Vec::new(),
        };
        for (range, read) in ranges.iter().zip(reads) {
            let read = read?;
            input.input_rows += read.records.len() as u64;
            input.offsets_lost += read.offsets_lost;
            let decoded = decoder.decode(&range.topic, range.partition, &read.records)?;
            input.malformed_skipped += decoded.malformed_skipped;
            input.dead_letters.extend(decoded.dead_letters);
            input.batches.push(decoded.batch);
        }
        Ok(input)
    }
}
