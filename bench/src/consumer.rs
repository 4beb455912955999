//! The raw consumer baseline: messages polled one at a time or in batches off librdkafka.

use super::*;

/// How the raw consumers of the ceiling take their messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawPolls {
    /// One `poll` per message: the plain consumer API (the ceiling).
    PerMessage,
    /// Up to [`RAW_POLL_BATCH`] messages per call from the consumer's queue, as Sluice's
    /// reader takes them: a stricter ceiling, with less work per message.
    Batched,
}

/// Most messages a batched raw poll takes.
pub(crate) const RAW_POLL_BATCH: usize = 1024;

/// Reads every record of `topic` with one consumer per core (tuned as Sluice's consumers
/// are), each on its share of the partitions, without decoding: the rate Kafka can
/// deliver on this machine. Returns the seconds until the last record arrived.
pub(crate) fn consume_parallel(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    polls: RawPolls,
) -> Result<f64> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
    let started = Instant::now();
    let readers: Vec<_> = (0..threads)
        .map(|thread| {
            let bootstrap = cluster.bootstrap_servers();
            let topic = topic.to_string();
            std::thread::spawn(move || -> Result<u64> {
                let consumer = sluice_kafka::read::consumer(&bootstrap)?;
                let mut assignment = TopicPartitionList::new();
                let mut remaining = 0;
                for p in (0..partitions).filter(|p| p % threads == thread) {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                    remaining += (high - low) as u64;
                    assignment.add_partition_offset(&topic, p, Offset::Offset(low))?;
                }
                let total = remaining;
                consumer.assign(&assignment)?;
                match polls {
                    RawPolls::PerMessage => consume_per_message(&consumer, remaining)?,
                    RawPolls::Batched => consume_batched(&consumer, remaining)?,
                }
                Ok(total)
            })
        })
        .collect();
    for reader in readers {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("raw consumer panicked"))??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Polls `consumer` once per message until `remaining` messages arrived.
pub(crate) fn consume_per_message(consumer: &KafkaConsumer, mut remaining: u64) -> Result<()> {
    while remaining > 0 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => remaining -= 1,
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => bail!("raw consumer stalled with {remaining} records to go"),
        }
    }
    Ok(())
}

/// Takes `consumer`'s messages in batches until `remaining` messages arrived.
pub(crate) fn consume_batched(consumer: &KafkaConsumer, mut remaining: u64) -> Result<()> {
    let mut poller = BatchPoller::new(consumer).context("the raw consumer has no queue")?;
    let mut messages = Vec::with_capacity(RAW_POLL_BATCH);
    while remaining > 0 {
        if poller.poll(Duration::from_secs(10), RAW_POLL_BATCH, &mut messages) == 0 {
            bail!("raw consumer stalled with {remaining} records to go");
        }
        for message in messages.drain(..) {
            if let Some(code) = message.error() {
                bail!("raw consumer: {code}");
            }
            remaining = remaining.saturating_sub(1);
        }
    }
    Ok(())
}
