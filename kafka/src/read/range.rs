//! The executor's exact offset-range reads: every offset of a range once, gaps of
//! transaction markers and compaction told from data loss and from a truncated partition.

use super::*;

/// Where a consumer assigned to one partition stands: the next record it returns has
/// offset `next` or higher, and no record lies in between. A range starting at `next` is
/// read on from there without seeking, from records the consumer already fetched ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next: i64,
}

impl Position {
    /// Whether a read of `range` can go on from here without seeking.
    pub fn continues(&self, range: &OffsetRange) -> bool {
        self.topic == range.topic && self.partition == range.partition && self.next == range.start
    }
}

/// The records of a range, and how many of its offsets Kafka no longer had.
#[derive(Debug, Default)]
pub struct RangeRead {
    pub records: Vec<RawRecord>,
    pub offsets_lost: u64,
    /// Where the consumer stands after the read; `None` when it consumed a record past
    /// the range (which the next read must fetch again).
    pub position: Option<Position>,
}

/// What a chunked range read did.
#[derive(Debug, Default)]
pub struct RangeSummary {
    /// Records handed over.
    pub records: u64,
    /// Offsets Kafka no longer had (skipped with `fail_on_data_loss: false`).
    pub offsets_lost: u64,
    /// Where the consumer stands after the read; `None` when it consumed a record past
    /// the range (which the next read must fetch again).
    pub position: Option<Position>,
}

/// Reads exactly the records of `range` (offsets in `[start, end)`; gaps are fine) into
/// memory. See [`read_range_chunks`].
pub fn read_range(
    consumer: &KafkaConsumer,
    bootstrap_servers: &str,
    range: &OffsetRange,
    fail_on_data_loss: bool,
    position: Option<&Position>,
) -> Result<RangeRead> {
    let mut records = Vec::new();
    let summary = read_range_chunks(
        consumer,
        bootstrap_servers,
        range,
        fail_on_data_loss,
        position,
        |chunk| {
            records.extend(chunk.iter().map(crate::decode::KafkaRecord::to_raw));
            Ok(())
        },
    )?;
    Ok(RangeRead {
        records,
        offsets_lost: summary.offsets_lost,
        position: summary.position,
    })
}

/// Reads exactly the records of `range` (offsets in `[start, end)`; gaps are fine),
/// handing them to `on_chunk` in offset order, at most [`CHUNK_RECORDS`] at a time, still
/// in librdkafka's buffers (nothing is copied). Offsets deleted by retention fail the read
/// with [`Error::DataLoss`], or are skipped and counted when `fail_on_data_loss` is false.
/// Blocking; `consumer` may be reused: `position` is where a previous read left it (see
/// [`RangeSummary::position`]).
pub fn read_range_chunks(
    consumer: &KafkaConsumer,
    bootstrap_servers: &str,
    range: &OffsetRange,
    fail_on_data_loss: bool,
    position: Option<&Position>,
    mut on_chunk: impl FnMut(&[BorrowedMessage<'_>]) -> Result<()>,
) -> Result<RangeSummary> {
    let positioned = position.is_some_and(|p| p.continues(range));
    let mut handed_over = 0u64;
    let mut counted = |chunk: &[BorrowedMessage<'_>]| {
        handed_over += chunk.len() as u64;
        on_chunk(chunk)
    };
    let first = read_from(
        consumer,
        bootstrap_servers,
        range,
        range.start,
        positioned,
        fail_on_data_loss,
        &mut counted,
    );
    let summary = match first {
        Err(Error::DataLoss { start, end, .. }) if !fail_on_data_loss => {
            tracing::warn!(topic = %range.topic, partition = range.partition, start, end, "offsets deleted from Kafka before they were processed; skipping them");
            let rest = read_from(
                consumer,
                bootstrap_servers,
                range,
                end,
                false,
                fail_on_data_loss,
                &mut counted,
            )?;
            ReadEnd {
                offsets_lost: (end - start) as u64 + rest.offsets_lost,
                ..rest
            }
        }
        other => other?,
    };
    Ok(RangeSummary {
        records: handed_over,
        offsets_lost: summary.offsets_lost,
        position: summary.position,
    })
}

/// How one pass of a range read ended.
struct ReadEnd {
    offsets_lost: u64,
    position: Option<Position>,
}

/// Chunks of messages waiting to be handed over.
struct Chunker<'c, F> {
    pending: Vec<BorrowedMessage<'c>>,
    on_chunk: F,
}

impl<'c, F: FnMut(&[BorrowedMessage<'_>]) -> Result<()>> Chunker<'c, F> {
    fn push(&mut self, message: BorrowedMessage<'c>) -> Result<()> {
        self.pending.push(message);
        if self.pending.len() >= CHUNK_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            (self.on_chunk)(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

fn read_from<F: FnMut(&[BorrowedMessage<'_>]) -> Result<()>>(
    consumer: &KafkaConsumer,
    bootstrap_servers: &str,
    range: &OffsetRange,
    from: i64,
    positioned: bool,
    fail_on_data_loss: bool,
    on_chunk: F,
) -> Result<ReadEnd> {
    let watermarks = || -> Result<(i64, i64)> {
        consumer
            .fetch_watermarks(&range.topic, range.partition, METADATA_TIMEOUT)
            .map_err(|e| client_error(consumer, bootstrap_servers, e))
    };
    // The partition ends before the range does and nothing more can come: it was
    // truncated, or deleted and re-created, under a logged batch.
    let truncated = |at: i64| Error::DataLoss {
        topic: range.topic.clone(),
        partition: range.partition,
        start: at,
        end: range.end,
    };
    let range_error = |message: String| Error::OffsetRange {
        topic: range.topic.clone(),
        partition: range.partition,
        start: range.start,
        end: range.end,
        message,
    };
    let at = |next: i64| {
        Some(Position {
            topic: range.topic.clone(),
            partition: range.partition,
            next,
        })
    };
    if from >= range.end {
        return Ok(ReadEnd {
            offsets_lost: 0,
            position: if positioned { at(from) } else { None },
        });
    }
    if !positioned {
        look_up_topics(consumer, [range.topic.as_str()]);
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&range.topic, range.partition, Offset::Offset(from))
            .map_err(|e| kafka_error(bootstrap_servers, e))?;
        consumer
            .assign(&assignment)
            .map_err(|e| kafka_error(bootstrap_servers, e))?;
    }
    let mut chunks = Chunker {
        pending: Vec::with_capacity(CHUNK_RECORDS.min((range.end - from) as usize)),
        on_chunk,
    };
    // The offset after the last record taken.
    let mut next = from;
    // Set once the read ends: where the consumer then stands.
    let mut position = None;
    // The clock is read when the consumer runs dry, not per record.
    let mut last_progress = Instant::now();
    let mut progressed = false;
    // Watermark lookups while stalled: one per TRUNCATION_CHECK_AFTER, not one per poll.
    let mut last_truncation_check = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                progressed = true;
                if message.topic() != range.topic || message.partition() != range.partition {
                    continue;
                }
                let offset = message.offset();
                if offset < from {
                    continue;
                }
                if offset >= range.end {
                    // Consumed past the range: a later read must seek back to it.
                    break;
                }
                next = offset + 1;
                chunks.push(message)?;
                if next >= range.end {
                    position = at(range.end);
                    break;
                }
            }
            // Retention shows as an out-of-range fetch (a gap inside the log is fine: the
            // next record simply has a higher offset).
            Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)))
            | Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                // What was read is handed over; the loss starts after it.
                chunks.flush()?;
                let (low, high) = watermarks()?;
                if low > next {
                    return Err(Error::DataLoss {
                        topic: range.topic.clone(),
                        partition: range.partition,
                        start: next,
                        end: low.min(range.end),
                    });
                }
                if high <= next {
                    return Err(truncated(next));
                }
                return Err(range_error(format!("offset {next} is out of range")));
            }
            Some(Err(e)) => return Err(client_error(consumer, bootstrap_servers, e)),
            None => {
                if progressed {
                    last_progress = Instant::now();
                    progressed = false;
                }
                // Nothing arrived: the rest of the range may be a gap. The position tells.
                let consumed_to = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| {
                        tpl.find_partition(&range.topic, range.partition)
                            .and_then(|p| p.offset().to_raw())
                    })
                    .unwrap_or(-1);
                if consumed_to >= range.end {
                    position = at(range.end);
                    break;
                }
                if last_progress.elapsed() > TRUNCATION_CHECK_AFTER
                    && last_truncation_check.elapsed() > TRUNCATION_CHECK_AFTER
                {
                    last_truncation_check = Instant::now();
                    let (_, high) = watermarks()?;
                    let reached = consumed_to.max(next);
                    if high < range.end && reached >= high {
                        if fail_on_data_loss {
                            return Err(truncated(reached));
                        }
                        tracing::warn!(topic = %range.topic, partition = range.partition, start = reached, end = range.end, "the partition ends before the batch's range (truncated or re-created); skipping the missing offsets");
                        chunks.flush()?;
                        return Ok(ReadEnd {
                            offsets_lost: (range.end - reached) as u64,
                            position: None,
                        });
                    }
                }
                if last_progress.elapsed() > READ_STALL_TIMEOUT {
                    return Err(range_error(format!(
                        "no records for {}s at offset {consumed_to}",
                        READ_STALL_TIMEOUT.as_secs()
                    )));
                }
            }
        }
    }
    chunks.flush()?;
    Ok(ReadEnd {
        offsets_lost: 0,
        position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::mock_topic;

    fn range(start: i64, end: i64) -> OffsetRange {
        OffsetRange {
            topic: "t".into(),
            partition: 0,
            start,
            end,
        }
    }

    fn offsets(read: &RangeRead) -> Vec<i64> {
        read.records.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn a_consumer_reads_on_from_where_its_last_range_ended_and_seeks_otherwise() {
        let kafka = mock_topic("t", 30);
        let bootstrap = kafka.bootstrap_servers();
        let consumer = consumer(&bootstrap).unwrap();

        let first = read_range(&consumer, &bootstrap, &range(0, 10), true, None).unwrap();
        assert_eq!(offsets(&first), (0..10).collect::<Vec<_>>());
        let position = first
            .position
            .clone()
            .expect("the read ended at the range end");
        assert!(position.continues(&range(10, 20)));
        assert!(!position.continues(&range(11, 20)));

        let second =
            read_range(&consumer, &bootstrap, &range(10, 20), true, Some(&position)).unwrap();
        assert_eq!(offsets(&second), (10..20).collect::<Vec<_>>());

        // A position that does not continue the range is not trusted: the consumer seeks.
        let stale = second.position.clone();
        let third = read_range(&consumer, &bootstrap, &range(5, 8), true, stale.as_ref()).unwrap();
        assert_eq!(offsets(&third), vec![5, 6, 7]);
        let fourth = read_range(
            &consumer,
            &bootstrap,
            &range(8, 30),
            true,
            third.position.as_ref(),
        )
        .unwrap();
        assert_eq!(offsets(&fourth), (8..30).collect::<Vec<_>>());
    }

    /// A large range comes in bounded chunks, in offset order, every record once.
    #[test]
    fn a_large_range_is_handed_over_in_bounded_chunks() {
        let total = 2 * CHUNK_RECORDS as i64 + 100;
        let kafka = mock_topic("t", total as u64);
        let bootstrap = kafka.bootstrap_servers();
        let consumer = consumer(&bootstrap).unwrap();
        let mut chunks = vec![];
        let mut offsets = vec![];
        let summary = read_range_chunks(
            &consumer,
            &bootstrap,
            &range(0, total),
            true,
            None,
            |chunk| {
                chunks.push(chunk.len());
                offsets.extend(chunk.iter().map(|m| m.offset()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(chunks, vec![CHUNK_RECORDS, CHUNK_RECORDS, 100]);
        assert_eq!(offsets, (0..total).collect::<Vec<_>>());
        assert_eq!(summary.records, total as u64);
        assert_eq!(summary.position.map(|p| p.next), Some(total));
    }

    /// Planning reads every partition's watermarks in two lookups; they are the ones a
    /// lookup per partition gives, empty partitions and topics included.
    #[test]
    fn watermarks_of_many_partitions_are_looked_up_at_once() {
        let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
        kafka.create_topic("busy", 3, 1).unwrap();
        kafka.create_topic("empty", 2, 1).unwrap();
        let bootstrap = kafka.bootstrap_servers();
        let producer = sluice_datagen::synthetic::producer(&bootstrap).unwrap();
        sluice_datagen::synthetic::produce_orders(&producer, "busy", 3, 0, 7, None, |_| {})
            .unwrap();
        let reader = OffsetReader::new(&bootstrap).unwrap();
        let marks = reader
            .watermarks(&["busy".to_string(), "empty".to_string()])
            .unwrap();
        assert_eq!(marks.len(), 5);
        let one_by_one = consumer(&bootstrap).unwrap();
        for ((topic, partition), found) in &marks {
            let (low, high) = one_by_one
                .fetch_watermarks(topic, *partition, METADATA_TIMEOUT)
                .unwrap();
            assert_eq!((found.low, found.high), (low, high), "{topic}/{partition}");
        }
        let records: i64 = marks.values().map(|m| m.high - m.low).sum();
        assert_eq!(records, 7);
    }

    /// A logged batch whose range reaches past the partition's end (the topic was
    /// re-created with fewer records) must not wait for ever for offsets that cannot come.
    #[test]
    fn a_range_beyond_a_truncated_partition_is_data_loss_not_a_stall() {
        let kafka = mock_topic("t", 10);
        let bootstrap = kafka.bootstrap_servers();
        let consumer = consumer(&bootstrap).unwrap();

        let strict = read_range(&consumer, &bootstrap, &range(5, 50), true, None).unwrap_err();
        match strict {
            Error::DataLoss {
                topic,
                partition,
                start,
                end,
            } => assert_eq!((topic.as_str(), partition, start, end), ("t", 0, 10, 50)),
            other => panic!("expected data loss, got {other}"),
        }

        let lenient = read_range(&consumer, &bootstrap, &range(5, 50), false, None).unwrap();
        assert_eq!(offsets(&lenient), (5..10).collect::<Vec<_>>());
        assert_eq!(lenient.offsets_lost, 40);
    }

    /// The spec's client properties reach the consumer: the same broker that answers a
    /// plaintext client does not answer one told to authenticate with SASL or to speak
    /// TLS (the mock broker has neither).
    #[test]
    fn client_properties_are_applied_to_every_consumer() {
        let kafka = mock_topic("t", 3);
        let plain = Connection::plain(&kafka.bootstrap_servers());
        let topics = ["t".to_string()];
        assert_eq!(
            OffsetReader::connect(&plain)
                .unwrap()
                .partitions(&topics)
                .unwrap()["t"],
            1
        );
        let sasl = Connection {
            properties: [
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "PLAIN"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            ..plain.clone()
        };
        // librdkafka is built with TLS: SASL_SSL with SCRAM is a valid configuration (the
        // plaintext mock broker cannot answer it).
        let scram = Connection {
            properties: [
                ("security.protocol", "sasl_ssl"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                ("sasl.password", "p"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into(),
            ..plain.clone()
        };
        // Both wait for the metadata timeout; at once, not one after the other.
        let refused = [sasl, scram].map(|connection| {
            let topics = topics.clone();
            std::thread::spawn(move || {
                OffsetReader::connect(&connection)
                    .unwrap()
                    .partitions(&topics)
                    .is_err()
            })
        });
        for refused in refused {
            assert!(refused.join().unwrap());
        }
        let unknown = Connection {
            properties: [("no.such.property".to_string(), "1".to_string())].into(),
            ..plain
        };
        match unknown.consumer() {
            Err(Error::InvalidSpec { field, message }) => {
                assert_eq!(field, "source.kafka.properties");
                assert!(message.contains("no.such.property"), "{message}");
            }
            other => panic!("expected an invalid spec, got {:?}", other.map(|_| ())),
        }
    }
}
