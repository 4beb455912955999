//! Several offset ranges read at once by one consumer: a task's ranges share one client,
//! one connection and one fetch stream (librdkafka fetches all assigned partitions of a
//! broker in one request), instead of a consumer, a connection and a reader thread per
//! range. Messages are routed to their range as they arrive, and handed over per range in
//! offset order and in bounded chunks, still in librdkafka's buffers. Messages are taken
//! off the consumer many at a time ([`BatchPoller`]).
//!
//! When every range is read, the consumer stays on their partitions at the ranges' ends
//! and fetches ahead while idle: a next read of the ranges that follow on the same
//! partitions finds their records already fetched (read-ahead), as a single-range read
//! does. A partition whose record past its range's end arrives while other ranges are
//! still read is unassigned then (librdkafka stops fetching it and drops what it fetched)
//! and assigned again at the range's end once all are read. (Pausing and resuming it
//! instead would keep it waiting up to a second: librdkafka's broker thread notices a
//! resume only at its next periodic wake-up.)
//!
//! This is the fast path for the common case: every range's records arrive. Anything
//! else (a fetch error, offsets deleted by retention, a partition that stops short of its
//! range) hands each unfinished range, from where it got to, to the exact single-range
//! reader ([`read_range_chunks`]), which knows how to tell data loss from a gap, a
//! truncated partition from a slow one, and names the range in its error.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::decode::{KafkaRecord, CHUNK_RECORDS};
use crate::fetched::{BatchPoller, FetchedMessage};
use crate::offsets::OffsetRange;
use crate::read::{look_up_topics, read_range_chunks, KafkaConsumer, Position, RangeSummary};
use sluice_core::error::{Error, Result};

/// How long the shared read may go without any record before it hands the unfinished
/// ranges to the single-range reader (which checks for truncation and stalls).
const QUIET_BEFORE_CHECKING: Duration = Duration::from_secs(2);
/// Records held across all ranges before every pending chunk is handed over: bounds the
/// fetch buffers the read keeps alive however many ranges it reads.
const HELD_RECORDS: usize = 4 * CHUNK_RECORDS;
/// Messages taken off the consumer at a time at most.
const POLL_BATCH: usize = 1024;

/// Where [`read_ranges_together`] hands the records it reads.
pub trait RangeChunks {
    /// The next `records` of `ranges[range]`, in offset order (at most [`CHUNK_RECORDS`]).
    fn take<R: KafkaRecord>(&mut self, range: usize, records: &[R]) -> Result<()>;
}

/// What a read of several ranges did.
#[derive(Debug, Default)]
pub struct RangesRead {
    /// Per range, in the order given.
    pub ranges: Vec<RangeSummary>,
    /// Where the consumer stands, fetching ahead: every range's partition at the range's
    /// end. Empty when a range was finished by the exact single-range reader; the
    /// consumer is then unassigned.
    pub standing: Vec<Position>,
}

/// Whether a consumer standing at `standing` (its whole assignment) can read `ranges`
/// without assigning: the same partitions, each range starting where it stands.
pub fn continues_all(standing: &[Position], ranges: &[OffsetRange]) -> bool {
    !standing.is_empty()
        && standing.len() == ranges.len()
        && ranges
            .iter()
            .all(|range| standing.iter().any(|p| p.continues(range)))
}

/// Reads exactly the records of every range in `ranges` (offsets in `[start, end)`),
/// handing them to `chunks` with the range's index: per range in offset order, at most
/// [`CHUNK_RECORDS`] at a time, nothing copied. `standing` is where the consumer stood
/// after its last read ([`RangesRead::standing`]); when it [`continues_all`] the ranges,
/// the read takes what the consumer fetched ahead, else it assigns the ranges' starts.
/// Ranges of one partition are read one after another. Blocking.
pub fn read_ranges_together(
    consumer: &KafkaConsumer,
    bootstrap_servers: &str,
    ranges: &[OffsetRange],
    fail_on_data_loss: bool,
    standing: &[Position],
    chunks: &mut impl RangeChunks,
) -> Result<RangesRead> {
    let mut partitions = HashSet::new();
    if !ranges
        .iter()
        .all(|r| partitions.insert((r.topic.as_str(), r.partition)))
    {
        let summaries = ranges
            .iter()
            .enumerate()
            .map(|(i, range)| {
                read_range_chunks(
                    consumer,
                    bootstrap_servers,
                    range,
                    fail_on_data_loss,
                    None,
                    |c| chunks.take(i, c),
                )
            })
            .collect::<Result<_>>()?;
        let _ = consumer.unassign();
        return Ok(RangesRead {
            ranges: summaries,
            standing: Vec::new(),
        });
    }
    let mut reads: Vec<RangeProgress> = ranges.iter().map(RangeProgress::new).collect();
    let all_read = read_until_done_or_quiet(
        consumer,
        bootstrap_servers,
        ranges,
        continues_all(standing, ranges),
        &mut reads,
        chunks,
    )?;
    if !all_read {
        let _ = consumer.unassign();
    }
    // What the shared read did not finish, the exact reader finishes from where it got to.
    let mut summaries = Vec::with_capacity(ranges.len());
    for (i, (range, read)) in ranges.iter().zip(reads).enumerate() {
        let mut summary = RangeSummary {
            records: read.records,
            ..RangeSummary::default()
        };
        if !read.done {
            let rest = OffsetRange {
                start: read.next,
                ..range.clone()
            };
            let finished = read_range_chunks(
                consumer,
                bootstrap_servers,
                &rest,
                fail_on_data_loss,
                None,
                |chunk| chunks.take(i, chunk),
            )?;
            let _ = consumer.unassign();
            summary.records += finished.records;
            summary.offsets_lost = finished.offsets_lost;
        }
        summaries.push(summary);
    }
    let standing = if all_read {
        ranges
            .iter()
            .map(|range| Position {
                topic: range.topic.clone(),
                partition: range.partition,
                next: range.end,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(RangesRead {
        ranges: summaries,
        standing,
    })
}

/// How far the shared read got with one range.
struct RangeProgress<'c> {
    /// The offset after the last record taken.
    next: i64,
    records: u64,
    done: bool,
    /// The partition was unassigned: a record past the range's end arrived.
    unassigned: bool,
    pending: Vec<FetchedMessage<'c>>,
}

impl RangeProgress<'_> {
    fn new(range: &OffsetRange) -> Self {
        RangeProgress {
            next: range.start,
            records: 0,
            done: range.start >= range.end,
            unassigned: false,
            pending: Vec::new(),
        }
    }
}

/// Hands `reads[i]`'s pending records over.
fn flush(reads: &mut [RangeProgress<'_>], i: usize, chunks: &mut impl RangeChunks) -> Result<()> {
    if !reads[i].pending.is_empty() {
        chunks.take(i, &reads[i].pending)?;
        reads[i].pending.clear();
    }
    Ok(())
}

/// Assigns the ranges' partitions at their starts (unless the consumer already stands
/// there: `positioned`) and takes records until every range is done, a poll fails or
/// nothing arrives for [`QUIET_BEFORE_CHECKING`]; every record taken is handed over
/// before it returns. Returns whether every range was read; the partitions then stand at
/// the ranges' ends, fetching ahead (those unassigned on the way are assigned there
/// again). Errors are only those of `on_chunk` and of assigning; a failed poll ends the
/// shared read quietly (the exact reader meets the failure again and names it).
fn read_until_done_or_quiet<'c>(
    consumer: &'c KafkaConsumer,
    bootstrap_servers: &str,
    ranges: &[OffsetRange],
    positioned: bool,
    reads: &mut [RangeProgress<'c>],
    chunks: &mut impl RangeChunks,
) -> Result<bool> {
    let failed = |e: rdkafka::error::KafkaError| Error::Kafka {
        bootstrap_servers: bootstrap_servers.to_string(),
        message: format!("assigning a task's partitions: {e}"),
    };
    let assign_at = |offset_of: fn(&OffsetRange) -> i64| -> Result<()> {
        let mut assignment = TopicPartitionList::new();
        for range in ranges {
            assignment
                .add_partition_offset(
                    &range.topic,
                    range.partition,
                    Offset::Offset(offset_of(range)),
                )
                .map_err(failed)?;
        }
        consumer.assign(&assignment).map_err(failed)
    };
    if !positioned {
        look_up_topics(consumer, ranges.iter().map(|range| range.topic.as_str()));
        assign_at(|range| range.start)?;
    }
    if !take_records(consumer, ranges, reads, chunks)? {
        return Ok(false);
    }
    // Partitions that went past their range's end stand there again; the others are
    // there already, with what they fetched ahead.
    let mut moved = TopicPartitionList::new();
    for (range, read) in ranges.iter().zip(reads.iter()) {
        if read.unassigned {
            moved
                .add_partition_offset(&range.topic, range.partition, Offset::Offset(range.end))
                .map_err(failed)?;
        }
    }
    if moved.count() > 0 && consumer.incremental_assign(&moved).is_err() {
        assign_at(|range| range.end)?;
    }
    Ok(true)
}

/// The loop of [`read_until_done_or_quiet`]: whether every range was read.
fn take_records<'c>(
    consumer: &'c KafkaConsumer,
    ranges: &[OffsetRange],
    reads: &mut [RangeProgress<'c>],
    chunks: &mut impl RangeChunks,
) -> Result<bool> {
    let Some(mut poller) = BatchPoller::new(consumer) else {
        return Ok(false);
    };
    let by_name: HashMap<(&str, i32), usize> = ranges
        .iter()
        .enumerate()
        .map(|(i, range)| ((range.topic.as_str(), range.partition), i))
        .collect();
    // The range of a message's partition, by librdkafka's topic handle (no name read).
    let mut by_handle: HashMap<(usize, i32), Option<usize>> = HashMap::new();
    // Stops fetching a partition that went past its range's end (a record after the end
    // arrived); librdkafka drops what it fetched.
    let unassign = |range: &OffsetRange, read: &mut RangeProgress<'_>| {
        if !read.unassigned {
            let mut done = TopicPartitionList::new();
            done.add_partition(&range.topic, range.partition);
            let _ = consumer.incremental_unassign(&done);
            read.unassigned = true;
        }
    };
    let mut unfinished = reads.iter().filter(|read| !read.done).count();
    let mut held = 0usize;
    let mut last_progress = Instant::now();
    let mut progressed = false;
    let mut arrived = Vec::with_capacity(POLL_BATCH);
    'reading: while unfinished > 0 {
        let taken = poller.poll(Duration::from_millis(100), POLL_BATCH, &mut arrived);
        if poller.client_failed() {
            tracing::debug!("shared range read ends on a client error");
            break;
        }
        if taken == 0 {
            if progressed {
                last_progress = Instant::now();
                progressed = false;
            }
            // Nothing arrived: a range may end in a gap. The positions tell.
            if let Ok(positions) = consumer.position() {
                for (i, range) in ranges.iter().enumerate() {
                    let consumed_to = positions
                        .find_partition(&range.topic, range.partition)
                        .and_then(|p| p.offset().to_raw());
                    if !reads[i].done && consumed_to.is_some_and(|to| to >= range.end) {
                        reads[i].done = true;
                        unfinished -= 1;
                    }
                }
            }
            if last_progress.elapsed() > QUIET_BEFORE_CHECKING {
                break;
            }
            continue;
        }
        progressed = true;
        for message in arrived.drain(..) {
            if let Some(error) = message.error() {
                tracing::debug!("shared range read ends on a failed fetch: {error}");
                break 'reading;
            }
            let key = (message.topic_handle(), message.partition());
            let range = *by_handle.entry(key).or_insert_with(|| {
                by_name
                    .get(&(message.topic(), message.partition()))
                    .copied()
            });
            let Some(i) = range else {
                continue;
            };
            let read = &mut reads[i];
            let offset = message.offset();
            if offset < read.next {
                continue;
            }
            if read.done {
                unassign(&ranges[i], read);
                continue;
            }
            if offset >= ranges[i].end {
                // The range ended in a gap.
                read.done = true;
                unassign(&ranges[i], read);
            } else {
                read.next = offset + 1;
                read.records += 1;
                read.done = read.next >= ranges[i].end;
                read.pending.push(message);
                held += 1;
                if reads[i].pending.len() >= CHUNK_RECORDS {
                    held -= reads[i].pending.len();
                    flush(reads, i, chunks)?;
                }
            }
            if reads[i].done {
                unfinished -= 1;
            }
            if held >= HELD_RECORDS {
                for i in 0..reads.len() {
                    flush(reads, i, chunks)?;
                }
                held = 0;
            }
        }
    }
    for i in 0..reads.len() {
        flush(reads, i, chunks)?;
    }
    Ok(unfinished == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::tests::range;
    use crate::read::consumer;

    /// A topic of `partitions` partitions, each holding `per_partition` orders.
    fn topic(
        partitions: i32,
        per_partition: u64,
    ) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
        let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
        kafka.create_topic("t", partitions, 1).unwrap();
        let producer = crate::synthetic::producer(&kafka.bootstrap_servers()).unwrap();
        crate::synthetic::produce_orders(
            &producer,
            "t",
            partitions,
            0,
            per_partition * partitions as u64,
            None,
            |_| {},
        )
        .unwrap();
        kafka
    }

    /// Offsets handed over per range, in the order they came.
    fn read(
        kafka: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
    ) -> Result<(Vec<Vec<i64>>, Vec<RangeSummary>)> {
        let bootstrap = kafka.bootstrap_servers();
        let consumer = consumer(&bootstrap).unwrap();
        let (offsets, read) = read_with(&consumer, &bootstrap, ranges, fail_on_data_loss, &[])?;
        Ok((offsets, read.ranges))
    }

    fn read_with(
        consumer: &KafkaConsumer,
        bootstrap: &str,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
        standing: &[Position],
    ) -> Result<(Vec<Vec<i64>>, RangesRead)> {
        let mut offsets = Offsets {
            partitions: ranges.iter().map(|r| r.partition).collect(),
            offsets: vec![Vec::new(); ranges.len()],
        };
        let read = read_ranges_together(
            consumer,
            bootstrap,
            ranges,
            fail_on_data_loss,
            standing,
            &mut offsets,
        )?;
        Ok((offsets.offsets, read))
    }

    /// Offsets handed over, per range; each range's partition, to check the routing.
    struct Offsets {
        partitions: Vec<i32>,
        offsets: Vec<Vec<i64>>,
    }

    impl RangeChunks for Offsets {
        fn take<R: KafkaRecord>(&mut self, range: usize, records: &[R]) -> Result<()> {
            assert!(records.len() <= CHUNK_RECORDS);
            let partition = Some(self.partitions[range]);
            assert!(records.iter().all(|r| r.source_partition() == partition));
            self.offsets[range].extend(records.iter().map(|r| r.offset()));
            Ok(())
        }
    }

    /// A consumer that read ranges to their ends stands there, fetching ahead: the ranges
    /// that follow are read on from there; ranges elsewhere make it seek. Either way each
    /// range gets exactly its records.
    #[test]
    fn a_consumer_reads_on_where_its_ranges_ended_and_seeks_otherwise() {
        let kafka = topic(3, 300);
        let bootstrap = kafka.bootstrap_servers();
        let consumer = consumer(&bootstrap).unwrap();
        let mut standing = Vec::new();
        let rounds = [
            vec![range(0, 0, 100), range(1, 0, 100)],
            vec![range(0, 100, 200), range(1, 100, 150)],
            // The same partitions, one not where it stands.
            vec![range(0, 200, 250), range(1, 160, 170)],
            // A partition more.
            vec![range(0, 250, 300), range(1, 170, 300), range(2, 0, 300)],
        ];
        for (round, ranges) in rounds.iter().enumerate() {
            assert_eq!(
                continues_all(&standing, ranges),
                round == 1,
                "round {round}"
            );
            let (offsets, read) =
                read_with(&consumer, &bootstrap, ranges, true, &standing).unwrap();
            for (i, r) in ranges.iter().enumerate() {
                assert_eq!(offsets[i], (r.start..r.end).collect::<Vec<_>>(), "{r:?}");
            }
            let ends: Vec<(i32, i64)> = read
                .standing
                .iter()
                .map(|p| (p.partition, p.next))
                .collect();
            let expected: Vec<(i32, i64)> = ranges.iter().map(|r| (r.partition, r.end)).collect();
            assert_eq!(ends, expected);
            standing = read.standing;
        }
    }

    /// Each range gets exactly its records, in offset order, once; ranges of one
    /// partition and empty ranges included.
    #[test]
    fn each_range_gets_exactly_its_records_in_order() {
        let per_partition = 3 * CHUNK_RECORDS as i64;
        let kafka = topic(4, per_partition as u64);
        let ranges = [
            range(0, 0, per_partition),
            range(1, 5, per_partition - 7),
            range(2, 100, 100),
            range(3, per_partition - 1, per_partition),
        ];
        let (offsets, summaries) = read(&kafka, &ranges, true).unwrap();
        for (i, r) in ranges.iter().enumerate() {
            assert_eq!(offsets[i], (r.start..r.end).collect::<Vec<_>>(), "{r:?}");
            assert_eq!(summaries[i].records, (r.end - r.start) as u64);
            assert_eq!(summaries[i].offsets_lost, 0);
        }
        let same_partition = [range(1, 0, 10), range(1, 10, 30)];
        let (offsets, _) = read(&kafka, &same_partition, true).unwrap();
        assert_eq!(
            offsets,
            vec![(0..10).collect::<Vec<_>>(), (10..30).collect()]
        );
    }

    /// A range the partition cannot complete is finished by the exact reader: data loss
    /// naming the partition and the missing offsets, or skipped and counted, while the
    /// other ranges are read whole.
    #[test]
    fn a_range_past_its_partitions_end_is_data_loss_named_or_counted() {
        let kafka = topic(2, 50);
        let ranges = [range(0, 0, 50), range(1, 40, 80)];
        match read(&kafka, &ranges, true) {
            Err(Error::DataLoss {
                topic,
                partition,
                start,
                end,
            }) => assert_eq!((topic.as_str(), partition, start, end), ("t", 1, 50, 80)),
            other => panic!("expected data loss, got {:?}", other.map(|_| ())),
        }
        let (offsets, summaries) = read(&kafka, &ranges, false).unwrap();
        assert_eq!(offsets[0], (0..50).collect::<Vec<_>>());
        assert_eq!(offsets[1], (40..50).collect::<Vec<_>>());
        assert_eq!(summaries[1].offsets_lost, 30);
    }
}
