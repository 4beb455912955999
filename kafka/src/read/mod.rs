//! Reading Kafka: consumers and their connection settings here; the driver's offset
//! lookups (`lookup`), the executor's exact range reads (`range`), a task's ranges read
//! together by one consumer (`together`), and messages taken off a consumer in batches
//! (`fetched`). No consumer-group offsets are ever committed; the checkpoint store is the
//! only truth.

pub mod fetched;
mod lookup;
mod range;
pub mod together;

pub use lookup::OffsetReader;
pub use range::{read_range, read_range_chunks, Position, RangeRead, RangeSummary};

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
