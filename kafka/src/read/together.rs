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
//! does. Records that arrive past a range's end while other ranges are still read are
//! kept ([`CarriedRecords`], up to [`CARRIED_BYTES`]) and handed to that next read first:
//! a range's end rarely falls on a producer's record batch boundary, and dropping the
//! rest of the batch would make librdkafka fetch and decompress it a second time. Past
//! that bound a partition is unassigned (librdkafka stops fetching it and drops what it
//! fetched) and assigned again after the last record kept once all ranges are read.
//! (Pausing and resuming it instead would keep it waiting up to a second: librdkafka's
//! broker thread notices a resume only at its next periodic wake-up.)
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
use crate::offsets::OffsetRange;
use crate::read::fetched::{BatchPoller, FetchedMessage, KeptMessage};
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
/// Bytes of keys and values a consumer keeps past its ranges' ends for the next read at
/// most: about one producer record batch per partition of a task.
pub const CARRIED_BYTES: usize = 16 << 20;

/// Records a read took past its ranges' ends (in arrival order, so in offset order per
/// partition), kept for the read that goes on from there. They live in the buffers of
/// the consumer that fetched them, so only a [`ReadAheadConsumer`] holds them.
pub struct CarriedRecords {
    messages: Vec<KeptMessage>,
    /// Bytes of keys and values of `messages`.
    bytes: usize,
    /// Bytes of keys and values kept at most.
    limit: usize,
}

impl CarriedRecords {
    /// None yet; reads keep at most `limit` bytes of keys and values.
    fn with_limit(limit: usize) -> Self {
        CarriedRecords {
            messages: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Bytes of keys and values kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees the records (the consumer is about to read elsewhere).
    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// Where [`read_ranges_together`] hands the records it reads.
pub trait RangeChunks {
    /// The next `records` of `ranges[range]`, in offset order (at most [`CHUNK_RECORDS`]).
    fn take<R: KafkaRecord>(&mut self, range: usize, records: &[R]) -> Result<()>;
}

/// A consumer and where its last read left it: the partitions it stands on, fetching
/// ahead, and the records it took past its ranges' ends. Fields drop in order, so the
/// records (which live in the consumer's buffers) are freed before the consumer: a
/// librdkafka client destroyed while its messages live waits for them forever.
pub struct ReadAheadConsumer {
    carried: CarriedRecords,
    standing: Vec<Position>,
    consumer: KafkaConsumer,
}

impl ReadAheadConsumer {
    /// A consumer standing nowhere yet (its first read seeks).
    pub fn new(consumer: KafkaConsumer) -> Self {
        ReadAheadConsumer::with_carry_limit(consumer, CARRIED_BYTES)
    }

    /// Like [`ReadAheadConsumer::new`], keeping at most `limit` bytes of keys and values
    /// past its ranges' ends.
    pub fn with_carry_limit(consumer: KafkaConsumer, limit: usize) -> Self {
        ReadAheadConsumer {
            carried: CarriedRecords::with_limit(limit),
            standing: Vec::new(),
            consumer,
        }
    }

    pub fn consumer(&self) -> &KafkaConsumer {
        &self.consumer
    }

    /// Every partition the consumer is assigned and fetching ahead on, with the next
    /// offset a read gets there; empty when unknown (the next read seeks).
    pub fn standing(&self) -> &[Position] {
        &self.standing
    }

    /// The records kept past the last read's ranges' ends.
    pub fn carried(&self) -> &CarriedRecords {
        &self.carried
    }

    /// After a read by the consumer alone (the single-range reader): it stands at
    /// `position`, or nowhere. Only valid with nothing carried (see
    /// [`ReadAheadConsumer::stop_reading_ahead`]): the consumer's queue goes on after
    /// the records carried.
    pub fn stands_at(&mut self, position: Option<Position>) {
        debug_assert!(self.carried.is_empty(), "records carried past the position");
        self.standing = position.into_iter().collect();
    }

    /// Stops fetching ahead and lets go of what was read ahead: the next read seeks.
    pub fn stop_reading_ahead(&mut self) {
        self.carried.clear();
        self.standing.clear();
        let _ = self.consumer.unassign();
    }
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
/// [`CHUNK_RECORDS`] at a time, nothing copied. When where the consumer stands
/// [`continues_all`] the ranges, the read takes the records carried from its last read,
/// then what it fetched ahead; else it assigns the ranges' starts. Afterwards the
/// consumer stands at the ranges' ends, carrying what it took past them (nowhere when a
/// range was finished by the exact single-range reader: it is then unassigned). Ranges
/// of one partition are read one after another. Per range, in the order given, what
/// was read. Blocking.
pub fn read_ranges_together(
    reader: &mut ReadAheadConsumer,
    bootstrap_servers: &str,
    ranges: &[OffsetRange],
    fail_on_data_loss: bool,
    chunks: &mut impl RangeChunks,
) -> Result<Vec<RangeSummary>> {
    let ReadAheadConsumer {
        carried,
        standing,
        consumer,
    } = reader;
    let consumer = &*consumer;
    let positioned = continues_all(standing, ranges);
    standing.clear();
    // Kept records go to this read when it goes on where the consumer stands, else they
    // are freed.
    let earlier = positioned.then(|| std::mem::take(&mut carried.messages));
    carried.clear();
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
        return Ok(summaries);
    }
    let mut reads: Vec<RangeProgress> = ranges.iter().map(RangeProgress::new).collect();
    let mut past_ends = PastEnds::new(carried.limit);
    let all_read = read_until_done_or_quiet(
        consumer,
        bootstrap_servers,
        ranges,
        earlier,
        &mut reads,
        chunks,
        &mut past_ends,
    )?;
    if all_read {
        carried.bytes = past_ends.bytes;
        carried.messages = past_ends
            .kept
            .into_iter()
            .map(FetchedMessage::keep)
            .collect();
    } else {
        drop(past_ends);
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
    if all_read {
        *standing = ranges
            .iter()
            .map(|range| Position {
                topic: range.topic.clone(),
                partition: range.partition,
                next: range.end,
            })
            .collect();
    }
    Ok(summaries)
}

/// How far the shared read got with one range.
struct RangeProgress<'c> {
    /// The offset after the last record taken.
    next: i64,
    records: u64,
    done: bool,
    /// The partition was unassigned: the records past the range's end outgrew what is
    /// kept.
    unassigned: bool,
    /// The offset after the last record kept past the range's end.
    kept_to: Option<i64>,
    pending: Vec<FetchedMessage<'c>>,
}

impl RangeProgress<'_> {
    fn new(range: &OffsetRange) -> Self {
        RangeProgress {
            next: range.start,
            records: 0,
            done: range.start >= range.end,
            unassigned: false,
            kept_to: None,
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
/// there: `carried` holds what its last read kept) and takes records until every range
/// is done, a poll fails or nothing arrives for [`QUIET_BEFORE_CHECKING`]; every record
/// taken is handed over before it returns, those past the ranges' ends go to
/// `past_ends`. Returns whether every range was read; the partitions then go on fetching
/// after the ranges' ends (those unassigned on the way are assigned there again, after
/// the records kept). Errors are only those of `on_chunk` and of assigning; a failed
/// poll ends the shared read quietly (the exact reader meets the failure again and
/// names it).
fn read_until_done_or_quiet<'c>(
    consumer: &'c KafkaConsumer,
    bootstrap_servers: &str,
    ranges: &[OffsetRange],
    carried: Option<Vec<KeptMessage>>,
    reads: &mut [RangeProgress<'c>],
    chunks: &mut impl RangeChunks,
    past_ends: &mut PastEnds<'c>,
) -> Result<bool> {
    let failed = |e: rdkafka::error::KafkaError| Error::Kafka {
        bootstrap_servers: bootstrap_servers.to_string(),
        message: format!("assigning a task's partitions: {e}"),
    };
    // The partitions of `at` (a range and an offset each), at those offsets.
    let assignment = |at: &mut dyn Iterator<Item = (&OffsetRange, i64)>| {
        let mut list = TopicPartitionList::new();
        for (range, offset) in at {
            list.add_partition_offset(&range.topic, range.partition, Offset::Offset(offset))
                .map_err(failed)?;
        }
        Ok::<_, Error>(list)
    };
    let earlier = match carried {
        Some(carried) => carried
            .into_iter()
            .map(|kept| FetchedMessage::from_kept(kept, consumer))
            .collect(),
        None => {
            look_up_topics(consumer, ranges.iter().map(|range| range.topic.as_str()));
            let starts = assignment(&mut ranges.iter().map(|range| (range, range.start)))?;
            consumer.assign(&starts).map_err(failed)?;
            Vec::new()
        }
    };
    if !take_records(consumer, ranges, reads, chunks, earlier, past_ends)? {
        return Ok(false);
    }
    // Partitions unassigned on the way fetch again after what was kept of them; the
    // others are there already, with what they fetched ahead.
    let resume_at = |range: &OffsetRange, read: &RangeProgress<'_>| {
        read.kept_to.unwrap_or(range.end).max(range.end)
    };
    let moved = assignment(
        &mut ranges
            .iter()
            .zip(reads.iter())
            .filter(|(_, read)| read.unassigned)
            .map(|(range, read)| (range, resume_at(range, read))),
    )?;
    if moved.count() > 0 && consumer.incremental_assign(&moved).is_err() {
        let all = assignment(
            &mut ranges
                .iter()
                .zip(reads.iter())
                .map(|(range, read)| (range, resume_at(range, read))),
        )?;
        consumer.assign(&all).map_err(failed)?;
    }
    Ok(true)
}

/// The loop of [`read_until_done_or_quiet`]: routes the records `earlier` reads kept,
/// then those polled, to their ranges. Whether every range was read.
fn take_records<'c>(
    consumer: &'c KafkaConsumer,
    ranges: &[OffsetRange],
    reads: &mut [RangeProgress<'c>],
    chunks: &mut impl RangeChunks,
    earlier: Vec<FetchedMessage<'c>>,
    past_ends: &mut PastEnds<'c>,
) -> Result<bool> {
    let Some(mut poller) = BatchPoller::new(consumer) else {
        return Ok(false);
    };
    let mut router = Router::new(consumer, ranges, reads, chunks, past_ends);
    for message in earlier {
        router.route(message)?;
    }
    let mut last_progress = Instant::now();
    let mut progressed = false;
    let mut arrived = Vec::with_capacity(POLL_BATCH);
    'reading: while router.unfinished > 0 {
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
                router.done_where_consumed(&positions);
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
            router.route(message)?;
        }
    }
    router.flush_all()?;
    Ok(router.unfinished == 0)
}

/// The records a read keeps past its ranges' ends, their bytes of keys and values, and
/// how many bytes it keeps at most.
struct PastEnds<'c> {
    kept: Vec<FetchedMessage<'c>>,
    bytes: usize,
    limit: usize,
}

impl<'c> PastEnds<'c> {
    fn new(limit: usize) -> Self {
        PastEnds {
            kept: Vec::new(),
            bytes: 0,
            limit,
        }
    }

    /// Keeps `message`, or gives it back when that would hold more than the limit.
    fn keep(&mut self, message: FetchedMessage<'c>) -> Option<FetchedMessage<'c>> {
        let size = message.size();
        if self.bytes + size > self.limit {
            return Some(message);
        }
        self.bytes += size;
        self.kept.push(message);
        None
    }
}

/// Routes a shared read's records to their ranges, in chunks, and keeps those past a
/// range's end (up to a limit; past it, the partition is unassigned).
struct Router<'r, 'c, C> {
    consumer: &'c KafkaConsumer,
    ranges: &'r [OffsetRange],
    reads: &'r mut [RangeProgress<'c>],
    chunks: &'r mut C,
    past_ends: &'r mut PastEnds<'c>,
    by_name: HashMap<(&'r str, i32), usize>,
    /// The range of a message's partition, by librdkafka's topic handle (no name read).
    by_handle: HashMap<(usize, i32), Option<usize>>,
    /// The last message's partition and its range: messages come in runs of one
    /// partition, so most need no hashing.
    last_route: Option<((usize, i32), Option<usize>)>,
    /// Ranges not yet read to their end.
    unfinished: usize,
    /// Records pending in chunks not yet handed over, over all ranges.
    held: usize,
}

impl<'r, 'c, C: RangeChunks> Router<'r, 'c, C> {
    fn new(
        consumer: &'c KafkaConsumer,
        ranges: &'r [OffsetRange],
        reads: &'r mut [RangeProgress<'c>],
        chunks: &'r mut C,
        past_ends: &'r mut PastEnds<'c>,
    ) -> Self {
        let by_name = ranges
            .iter()
            .enumerate()
            .map(|(i, range)| ((range.topic.as_str(), range.partition), i))
            .collect();
        let unfinished = reads.iter().filter(|read| !read.done).count();
        Router {
            consumer,
            ranges,
            reads,
            chunks,
            past_ends,
            by_name,
            by_handle: HashMap::new(),
            last_route: None,
            unfinished,
            held: 0,
        }
    }

    /// Hands `message` to its range, or keeps it when it lies past the range's end.
    fn route(&mut self, message: FetchedMessage<'c>) -> Result<()> {
        let key = (message.topic_handle(), message.partition());
        let range = match self.last_route {
            Some((last, range)) if last == key => range,
            _ => {
                let by_name = &self.by_name;
                let range = *self.by_handle.entry(key).or_insert_with(|| {
                    by_name
                        .get(&(message.topic(), message.partition()))
                        .copied()
                });
                self.last_route = Some((key, range));
                range
            }
        };
        let Some(i) = range else {
            return Ok(());
        };
        let read = &mut self.reads[i];
        let offset = message.offset();
        if offset < read.next {
            return Ok(());
        }
        if !read.done && offset >= self.ranges[i].end {
            // The range ended in a gap.
            read.done = true;
            self.unfinished -= 1;
        }
        if read.done {
            self.keep_past_end(i, message);
            return Ok(());
        }
        read.next = offset + 1;
        read.records += 1;
        read.done = read.next >= self.ranges[i].end;
        read.pending.push(message);
        self.held += 1;
        if read.done {
            self.unfinished -= 1;
        }
        if self.reads[i].pending.len() >= CHUNK_RECORDS {
            self.held -= self.reads[i].pending.len();
            flush(self.reads, i, self.chunks)?;
        }
        if self.held >= HELD_RECORDS {
            self.flush_all()?;
        }
        Ok(())
    }

    /// Keeps a record past range `i`'s end for the next read, unless that would hold more
    /// than the limit: then the partition stops fetching (librdkafka drops what
    /// it fetched of it) and is assigned again after the records kept.
    fn keep_past_end(&mut self, i: usize, message: FetchedMessage<'c>) {
        let read = &mut self.reads[i];
        if read.unassigned {
            return;
        }
        let offset = message.offset();
        if self.past_ends.keep(message).is_some() {
            let range = &self.ranges[i];
            let mut stop = TopicPartitionList::new();
            stop.add_partition(&range.topic, range.partition);
            let _ = self.consumer.incremental_unassign(&stop);
            read.unassigned = true;
            return;
        }
        read.kept_to = Some(offset + 1);
    }

    /// Marks done the ranges the consumer has consumed to their end (a range ending in a
    /// gap has no record at its end to tell).
    fn done_where_consumed(&mut self, positions: &TopicPartitionList) {
        for (range, read) in self.ranges.iter().zip(self.reads.iter_mut()) {
            let consumed_to = positions
                .find_partition(&range.topic, range.partition)
                .and_then(|p| p.offset().to_raw());
            if !read.done && consumed_to.is_some_and(|to| to >= range.end) {
                read.done = true;
                self.unfinished -= 1;
            }
        }
    }

    /// Hands every range's pending records over.
    fn flush_all(&mut self) -> Result<()> {
        for i in 0..self.reads.len() {
            flush(self.reads, i, self.chunks)?;
        }
        self.held = 0;
        Ok(())
    }
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
        let producer = sluice_datagen::synthetic::producer(&kafka.bootstrap_servers()).unwrap();
        sluice_datagen::synthetic::produce_orders(
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
        let mut reader = ReadAheadConsumer::new(consumer(&bootstrap).unwrap());
        read_with(&mut reader, &bootstrap, ranges, fail_on_data_loss)
    }

    fn read_with(
        reader: &mut ReadAheadConsumer,
        bootstrap: &str,
        ranges: &[OffsetRange],
        fail_on_data_loss: bool,
    ) -> Result<(Vec<Vec<i64>>, Vec<RangeSummary>)> {
        let mut offsets = Offsets {
            partitions: ranges.iter().map(|r| r.partition).collect(),
            offsets: vec![Vec::new(); ranges.len()],
        };
        let read =
            read_ranges_together(reader, bootstrap, ranges, fail_on_data_loss, &mut offsets)?;
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
        let mut reader = ReadAheadConsumer::new(consumer(&bootstrap).unwrap());
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
                continues_all(reader.standing(), ranges),
                round == 1,
                "round {round}"
            );
            let (offsets, _) = read_with(&mut reader, &bootstrap, ranges, true).unwrap();
            for (i, r) in ranges.iter().enumerate() {
                assert_eq!(offsets[i], (r.start..r.end).collect::<Vec<_>>(), "{r:?}");
            }
            let ends: Vec<(i32, i64)> = reader
                .standing()
                .iter()
                .map(|p| (p.partition, p.next))
                .collect();
            let expected: Vec<(i32, i64)> = ranges.iter().map(|r| (r.partition, r.end)).collect();
            assert_eq!(ends, expected);
        }
    }

    /// Reads `rounds` of ranges that each continue the last with one consumer, keeping
    /// at most `carry_limit` bytes past the ends; every range must get exactly its
    /// records. Returns the records and bytes carried after each round.
    fn read_rounds(
        kafka: &rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        rounds: &[Vec<OffsetRange>],
        carry_limit: usize,
    ) -> Vec<(usize, usize)> {
        let bootstrap = kafka.bootstrap_servers();
        let mut reader =
            ReadAheadConsumer::with_carry_limit(consumer(&bootstrap).unwrap(), carry_limit);
        let mut carried_after = Vec::new();
        for (round, ranges) in rounds.iter().enumerate() {
            assert_eq!(
                continues_all(reader.standing(), ranges),
                round > 0,
                "round {round}"
            );
            let (offsets, _) = read_with(&mut reader, &bootstrap, ranges, true).unwrap();
            for (i, r) in ranges.iter().enumerate() {
                assert_eq!(offsets[i], (r.start..r.end).collect::<Vec<_>>(), "{r:?}");
            }
            let carried = reader.carried();
            carried_after.push((carried.len(), carried.bytes()));
        }
        carried_after
    }

    /// Ranges of `step` offsets on partitions 0 and 1, one round after another.
    fn continuing_rounds(step: i64, rounds: i64) -> Vec<Vec<OffsetRange>> {
        (0..rounds)
            .map(|n| {
                vec![
                    range(0, n * step, (n + 1) * step),
                    range(1, n * step, (n + 1) * step),
                ]
            })
            .collect()
    }

    /// Ranges shorter than the producer's record batches: the records a read takes past
    /// its ranges' ends are carried to the next read, which takes them first (some reads
    /// are served from them alone), and every range still gets exactly its records.
    #[test]
    fn records_past_the_ends_are_carried_to_the_next_read() {
        let kafka = topic(2, 400);
        let carried = read_rounds(&kafka, &continuing_rounds(20, 20), CARRIED_BYTES);
        assert!(
            carried.iter().any(|&(n, _)| n > 0),
            "records were carried: {carried:?}"
        );
    }

    /// With room for only a few records past the ends, a partition that outgrows it is
    /// unassigned and assigned again after the records kept: nothing is lost or repeated.
    #[test]
    fn a_partition_past_the_carry_limit_fetches_again_after_what_was_kept() {
        let kafka = topic(2, 400);
        let carried = read_rounds(&kafka, &continuing_rounds(20, 20), 2_000);
        assert!(
            carried.iter().all(|&(_, bytes)| bytes <= 2_000),
            "at most the limit is kept: {carried:?}"
        );
        assert!(carried.iter().any(|&(n, _)| n > 0), "{carried:?}");
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
