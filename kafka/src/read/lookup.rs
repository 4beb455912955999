//! The driver's offset lookups: topics, partition ends, offsets for a time.

use super::*;

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
