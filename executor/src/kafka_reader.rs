//! Offset ranges -> decoded Arrow batches. Consumers are pooled per bootstrap address so a
//! task does not pay for a new connection; offsets are never committed.

use std::collections::HashMap;
use std::sync::Mutex;

use arrow::array::RecordBatch;
use rdkafka::consumer::BaseConsumer;
use sluice_common::decode::{DeadLetter, RecordDecoder};
use sluice_common::kafka::{consumer, read_range, RangeRead};
use sluice_common::offsets::OffsetRange;
use sluice_common::{Error, Result};

/// Idle consumers, by bootstrap servers.
#[derive(Default)]
pub struct ConsumerPool {
    idle: Mutex<HashMap<String, Vec<BaseConsumer>>>,
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
    fn take(&self, bootstrap_servers: &str) -> Result<BaseConsumer> {
        let pooled = self
            .idle
            .lock()
            .expect("pool lock")
            .get_mut(bootstrap_servers)
            .and_then(Vec::pop);
        match pooled {
            Some(c) => Ok(c),
            None => consumer(bootstrap_servers),
        }
    }

    fn give_back(&self, bootstrap_servers: &str, consumer: BaseConsumer) {
        self.idle
            .lock()
            .expect("pool lock")
            .entry(bootstrap_servers.to_string())
            .or_default()
            .push(consumer);
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
                        let consumer = self.take(bootstrap_servers)?;
                        // A consumer that failed mid-read is dropped, not pooled.
                        let read =
                            read_range(&consumer, bootstrap_servers, range, fail_on_data_loss)?;
                        self.give_back(bootstrap_servers, consumer);
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
