//! Kafka helpers: latest offsets for planning and exact offset-range reads for tasks.
//! No consumer-group offsets are ever committed; the checkpoint store is the only truth.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};

use crate::decode::{RawRecord, CHUNK_RECORDS};
use crate::offsets::{OffsetRange, Watermarks};
use sluice_core::error::{Error, Result};
use sluice_core::secrets;
use sluice_core::spec::KafkaSourceSpec;

/// How long a metadata or watermark request may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a range read waits for records before it checks whether the partition still
/// reaches the range's end.
const TRUNCATION_CHECK_AFTER: Duration = Duration::from_secs(2);
/// How long a range read may go without receiving anything before it gives up.
pub const READ_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an error the client logged stays the explanation of a failed request.
const CLIENT_ERROR_RELEVANCE: Duration = Duration::from_secs(60);

/// A consumer that remembers the last error librdkafka logged for it and the topics it
/// has looked up.
pub type KafkaConsumer = BaseConsumer<ConsumerNotes>;

/// Client context that passes librdkafka's log lines on to tracing and keeps the last
/// error among them (a refused SASL login, a failed TLS handshake, an unreachable
/// broker): a request that then fails says why, instead of only "broker transport
/// failure". It also notes which topics' metadata the consumer has (see
/// [`look_up_topics`]).
#[derive(Default)]
pub struct ConsumerNotes {
    last: std::sync::Mutex<Option<(Instant, String)>>,
    /// The broker refused the client (authentication or TLS failed): retrying the same
    /// request will not help.
    refused: std::sync::atomic::AtomicBool,
    /// Topics whose metadata the consumer has looked up.
    known_topics: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl ConsumerNotes {
    /// The last error logged within the last minute.
    pub fn recent(&self) -> Option<String> {
        let last = self.last.lock().expect("client errors lock");
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < CLIENT_ERROR_RELEVANCE)
            .map(|(_, message)| message.clone())
    }

    /// Whether the broker refused this client's credentials or TLS.
    pub fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ClientContext for ConsumerNotes {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(facility, "kafka client: {message}");
                *self.last.lock().expect("client errors lock") =
                    Some((Instant::now(), message.to_string()));
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(facility, "kafka client: {message}")
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(facility, "kafka client: {message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!("kafka client: {error}: {reason}");
        let refused_code = matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        );
        // A TLS alert from the broker (e.g. a client certificate it requires) arrives as a
        // transport failure; OpenSSL's text in the reason tells it from a network fault.
        let tls_alert = reason.contains("SSL routines");
        if refused_code || tls_alert {
            self.refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for ConsumerNotes {}

/// Where a job's Kafka is and how to reach it: bootstrap servers and the spec's client
/// properties (secret references unresolved).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connection {
    pub bootstrap_servers: String,
    pub properties: BTreeMap<String, String>,
}

impl Connection {
    /// A plaintext connection without extra properties.
    pub fn plain(bootstrap_servers: &str) -> Connection {
        Connection {
            bootstrap_servers: bootstrap_servers.to_string(),
            properties: BTreeMap::new(),
        }
    }

    /// The connection a job's source spec describes.
    pub fn of(kafka: &KafkaSourceSpec) -> Connection {
        Connection {
            bootstrap_servers: kafka.bootstrap_servers.clone(),
            properties: kafka.properties.clone(),
        }
    }

    /// A consumer for assign/seek reads with the connection's properties, secrets
    /// resolved now. A property librdkafka does not know or accept, or a secret that
    /// cannot be resolved, is an invalid spec naming it.
    pub fn consumer(&self) -> Result<KafkaConsumer> {
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties {
            let value = secrets::resolve(value).map_err(|message| Error::InvalidSpec {
                field: format!("source.kafka.properties.{name}"),
                message,
            })?;
            config.set(name, value);
        }
        consumer_from(config, &self.bootstrap_servers).map_err(|e| match e {
            Error::Kafka { message, .. } => Error::InvalidSpec {
                field: "source.kafka.properties".into(),
                message,
            },
            other => other,
        })
    }
}

/// A consumer configured for assign/seek reads: no group commits, no offset reset.
pub fn consumer(bootstrap_servers: &str) -> Result<KafkaConsumer> {
    consumer_from(ClientConfig::new(), bootstrap_servers)
}

/// `config` (the spec's properties) completed with what exact range reads need, which
/// wins, and with tuning defaults the spec may override.
fn consumer_from(mut config: ClientConfig, bootstrap_servers: &str) -> Result<KafkaConsumer> {
    let defaults = [
        ("fetch.wait.max.ms", "10"),
        // Small fetch requests must not wait for a delayed ACK.
        ("socket.nagle.disable", "true"),
        ("socket.connection.setup.timeout.ms", "5000"),
        // A pooled consumer keeps fetching ahead on its partitions; bound what it holds.
        ("queued.max.messages.kbytes", "16384"),
        // Once that bound is reached, a partition waits this long before it fetches
        // again. librdkafka's default (1 s) turns a consumer that drains its queue in
        // tens of milliseconds into one that idles most of every second.
        ("fetch.queue.backoff.ms", "10"),
        ("log_level", "3"),
    ];
    for (name, value) in defaults {
        if config.get(name).is_none() {
            config.set(name, value);
        }
    }
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", "sluice")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Only committed transactional records; aborted ones and control records are
        // offset gaps. Watermark lookups then return the last stable offset, so a batch
        // never waits on an open transaction.
        .set("isolation.level", "read_committed")
        // A range below the earliest offset is data loss; never silently jump.
        .set("auto.offset.reset", "error")
        .create_with_context(ConsumerNotes::default())
        .map_err(|e| kafka_error(bootstrap_servers, e))
}

fn kafka_error(bootstrap_servers: &str, e: impl std::fmt::Display) -> Error {
    Error::Kafka {
        bootstrap_servers: bootstrap_servers.to_string(),
        message: e.to_string(),
    }
}

/// Looks up the metadata of those of `topics` the consumer has not looked up yet, before
/// it is assigned their partitions. librdkafka would look them up itself after the
/// assignment, but its broker thread then starts fetching only at its next periodic
/// wake-up, up to a second later. A failed lookup is left to the read that follows
/// (which names what went wrong).
pub fn look_up_topics<'t>(consumer: &KafkaConsumer, topics: impl IntoIterator<Item = &'t str>) {
    let notes = consumer.context();
    for topic in topics {
        if notes
            .known_topics
            .lock()
            .expect("topics lock")
            .contains(topic)
        {
            continue;
        }
        match consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(_) => {
                notes
                    .known_topics
                    .lock()
                    .expect("topics lock")
                    .insert(topic.to_string());
            }
            Err(e) => tracing::debug!(topic, "looking up a topic before reading it: {e}"),
        }
    }
}

/// A failed request of `consumer`, with the error its client last logged, if recent.
fn client_error(
    consumer: &KafkaConsumer,
    bootstrap_servers: &str,
    e: impl std::fmt::Display,
) -> Error {
    match consumer.context().recent() {
        Some(cause) => kafka_error(
            bootstrap_servers,
            format!("{e}; the client reported: {cause}"),
        ),
        None => kafka_error(bootstrap_servers, e),
    }
}

/// Reads partition watermarks of a job's topics; blocking, keep it off async threads.
pub struct OffsetReader {
    consumer: KafkaConsumer,
    bootstrap_servers: String,
}

impl OffsetReader {
    /// Runs a metadata request (`request` given its timeout) in short steps for up to
    /// [`METADATA_TIMEOUT`], serving the client's events between them: a broker that
    /// refuses the client's credentials or TLS fails it at once instead of after the
    /// whole timeout. `what` names the request in the error.
    fn within_timeout<T>(
        &self,
        what: impl Fn() -> String,
        request: impl Fn(Duration) -> std::result::Result<T, KafkaError>,
    ) -> Result<T> {
        const STEP: Duration = Duration::from_millis(500);
        let deadline = Instant::now() + METADATA_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match request(left.min(STEP)) {
                Ok(found) => return Ok(found),
                Err(e) => {
                    self.serve_events();
                    if left <= STEP || self.consumer.context().refused() {
                        return Err(self.failed(format!("{}: {e}", what())));
                    }
                }
            }
        }
    }

    /// Serves the client's queued events (log lines, errors). This reader's consumer is
    /// never assigned, so serving the queue consumes no record.
    fn serve_events(&self) {
        for _ in 0..100 {
            if self.consumer.poll(Duration::ZERO).is_none() {
                break;
            }
        }
    }

    /// A failed request, with what the client logged about it (its log lines wait in
    /// its queue until served).
    fn failed(&self, e: impl std::fmt::Display) -> Error {
        self.serve_events();
        client_error(&self.consumer, &self.bootstrap_servers, e)
    }

    /// A reader over plaintext Kafka at `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str) -> Result<OffsetReader> {
        OffsetReader::connect(&Connection::plain(bootstrap_servers))
    }

    /// A reader over `connection` (its client properties applied).
    pub fn connect(connection: &Connection) -> Result<OffsetReader> {
        Ok(OffsetReader {
            consumer: connection.consumer()?,
            bootstrap_servers: connection.bootstrap_servers.clone(),
        })
    }

    /// Partition count of every topic; an absent topic is an error naming it.
    pub fn partitions(&self, topics: &[String]) -> Result<BTreeMap<String, i32>> {
        let mut counts = BTreeMap::new();
        for topic in topics {
            let metadata = self.within_timeout(
                || format!("metadata of topic {topic}"),
                |timeout| self.consumer.fetch_metadata(Some(topic), timeout),
            )?;
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

    /// The source's topics as they are now: the named ones, and every topic the pattern
    /// matches (sorted).
    pub fn topics(&self, matcher: &sluice_core::spec::TopicMatcher) -> Result<Vec<String>> {
        let mut topics: Vec<String> = matcher.named().to_vec();
        if matcher.has_pattern() {
            let metadata = self.within_timeout(
                || "topic list".to_string(),
                |timeout| self.consumer.fetch_metadata(None, timeout),
            )?;
            topics.extend(
                metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .filter(|name| matcher.matches(name)),
            );
        }
        topics.sort();
        topics.dedup();
        Ok(topics)
    }

    /// Per partition, the offset of its first record with a timestamp at or after `ms`
    /// (Kafka's offset-for-time lookup); `None` where no record is that new.
    pub fn offsets_at_time(
        &self,
        partitions: impl IntoIterator<Item = (String, i32)>,
        ms: i64,
    ) -> Result<BTreeMap<(String, i32), Option<i64>>> {
        let found = self.lookup_offsets(partitions, Offset::Offset(ms), || {
            format!("offsets for time {ms}")
        })?;
        let mut offsets = BTreeMap::new();
        for element in found.elements() {
            if let Err(e) = element.error() {
                return Err(self.failed(format!(
                    "offset for time {ms} of {}/{}: {e}",
                    element.topic(),
                    element.partition()
                )));
            }
            offsets.insert(
                (element.topic().to_string(), element.partition()),
                found_offset(element.offset()),
            );
        }
        Ok(offsets)
    }

    /// Low and high watermarks of every partition of `topics`: two offset lookups for all
    /// partitions at once (the earliest and the latest offsets), not two per partition, so
    /// planning a batch costs the same few round trips however many partitions it reads.
    /// A partition the batched lookup leaves without an offset is asked on its own.
    pub fn watermarks(&self, topics: &[String]) -> Result<BTreeMap<(String, i32), Watermarks>> {
        let partitions: Vec<(String, i32)> = self
            .partitions(topics)?
            .into_iter()
            .flat_map(|(topic, count)| (0..count).map(move |p| (topic.clone(), p)))
            .collect();
        let lows = self.list_offsets(&partitions, Offset::Beginning)?;
        let highs = self.list_offsets(&partitions, Offset::End)?;
        let mut marks = BTreeMap::new();
        for (topic, partition) in partitions {
            let key = (topic, partition);
            let (low, high) = match (lows.get(&key), highs.get(&key)) {
                (Some(low), Some(high)) => (*low, *high),
                _ => self.within_timeout(
                    || format!("watermarks of {}/{}", key.0, key.1),
                    |timeout| self.consumer.fetch_watermarks(&key.0, key.1, timeout),
                )?,
            };
            marks.insert(key, Watermarks { low, high });
        }
        Ok(marks)
    }

    /// The earliest (`Offset::Beginning`) or latest (`Offset::End`, the last stable
    /// offset under `read_committed`) offset of each of `partitions`, in one Kafka offset
    /// lookup per leader; partitions the answer gives no offset for are left out.
    fn list_offsets(
        &self,
        partitions: &[(String, i32)],
        which: Offset,
    ) -> Result<BTreeMap<(String, i32), i64>> {
        let found = self.lookup_offsets(partitions.iter().cloned(), which, || {
            format!("{which:?} offsets")
        })?;
        Ok(found
            .elements()
            .iter()
            .filter(|element| element.error().is_ok())
            .filter_map(|element| {
                let offset = found_offset(element.offset())?;
                Some(((element.topic().to_string(), element.partition()), offset))
            })
            .collect())
    }

    /// Kafka's offset lookup for `partitions` at `at` (a time in ms, or the earliest or
    /// latest offset), in one request per leader; `what` names it in the error.
    fn lookup_offsets(
        &self,
        partitions: impl IntoIterator<Item = (String, i32)>,
        at: Offset,
        what: impl Fn() -> String,
    ) -> Result<TopicPartitionList> {
        let mut request = TopicPartitionList::new();
        for (topic, partition) in partitions {
            request
                .add_partition_offset(&topic, partition, at)
                .map_err(|e| kafka_error(&self.bootstrap_servers, e))?;
        }
        self.within_timeout(what, |timeout| {
            self.consumer.offsets_for_times(request.clone(), timeout)
        })
    }
}

/// The offset an offset lookup found, `None` when it found none.
fn found_offset(offset: Offset) -> Option<i64> {
    match offset {
        Offset::Offset(offset) if offset >= 0 => Some(offset),
        _ => None,
    }
}

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
        let producer = crate::synthetic::producer(&bootstrap).unwrap();
        crate::synthetic::produce_orders(&producer, "busy", 3, 0, 7, None, |_| {}).unwrap();
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
