//! Fetched messages taken off a consumer's queue many at a time
//! (`rd_kafka_consume_batch_queue`) instead of one poll per message. A poll per message
//! costs a queue lock, several clock readings, an event wrapped and an allocation; in a
//! profile of the throughput benchmark, the clock readings alone were 9% of executors'
//! task threads.
//!
//! librdkafka hands over only messages (and per-partition errors, as messages) this way:
//! log lines, and client errors (which librdkafka then logs), would be dropped. While a
//! [`BatchPoller`] lives they go to a queue of its own and reach the consumer's context as
//! they do through a normal poll, and a client error among them is noted
//! ([`BatchPoller::client_failed`]) as a normal poll would have returned it.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::os::raw::{c_char, c_int};
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::Consumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;

use crate::decode::KafkaRecord;
use crate::read::KafkaConsumer;

/// A message taken off a consumer's queue, owned: freed when dropped. It lives in the
/// consumer's buffers, so it cannot outlive the consumer (`'c`).
pub struct FetchedMessage<'c> {
    message: NonNull<rdsys::rd_kafka_message_t>,
    consumer: PhantomData<&'c KafkaConsumer>,
}

impl FetchedMessage<'_> {
    fn fields(&self) -> &rdsys::rd_kafka_message_t {
        // SAFETY: librdkafka handed the message over and it is freed only on drop.
        unsafe { self.message.as_ref() }
    }

    pub fn partition(&self) -> i32 {
        self.fields().partition
    }

    /// librdkafka's handle of the message's topic: the same for every message of a topic
    /// taken from one consumer, and cheaper to compare than the name.
    pub fn topic_handle(&self) -> usize {
        self.fields().rkt as usize
    }

    pub fn topic(&self) -> &str {
        // SAFETY: the message holds a reference to its topic, whose name is a C string.
        unsafe { CStr::from_ptr(rdsys::rd_kafka_topic_name(self.fields().rkt)) }
            .to_str()
            .unwrap_or("")
    }

    /// The error this message stands for (a failed fetch of its partition), if it is one.
    pub fn error(&self) -> Option<RDKafkaErrorCode> {
        let err = self.fields().err;
        (err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR).then(|| err.into())
    }
}

impl<'c> FetchedMessage<'c> {
    /// Keeps the message past the read that took it, no longer borrowing its consumer
    /// (see [`KeptMessage`]).
    pub fn keep(self) -> KeptMessage {
        let kept = KeptMessage(self.message);
        std::mem::forget(self);
        kept
    }

    /// Takes a kept message back as a message of `consumer`, the consumer that fetched it.
    pub fn from_kept(kept: KeptMessage, consumer: &'c KafkaConsumer) -> FetchedMessage<'c> {
        let _ = consumer;
        let message = kept.0;
        std::mem::forget(kept);
        FetchedMessage {
            message,
            consumer: PhantomData,
        }
    }

    /// Bytes of key and value.
    pub fn size(&self) -> usize {
        self.fields().key_len + self.fields().len
    }
}

/// A fetched message held across reads (records a read took past its ranges, for the
/// next read): freed when dropped. It lives in its consumer's buffers, so whoever holds
/// it must drop it before that consumer.
pub struct KeptMessage(NonNull<rdsys::rd_kafka_message_t>);

// SAFETY: librdkafka messages may be read and destroyed from any thread.
unsafe impl Send for KeptMessage {}

impl Drop for KeptMessage {
    fn drop(&mut self) {
        // SAFETY: owned since librdkafka handed it over; freed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.0.as_ptr()) };
    }
}

/// `len` bytes at `data`, or none for a null pointer.
fn bytes<'a>(data: *const std::ffi::c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: librdkafka's key and payload pointers are valid for their lengths for as
    // long as the message lives, which bounds the returned slice's lifetime at the caller.
    (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) })
}

impl KafkaRecord for FetchedMessage<'_> {
    fn offset(&self) -> i64 {
        self.fields().offset
    }

    fn timestamp_ms(&self) -> Option<i64> {
        let mut kind = rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message.
        let millis = unsafe { rdsys::rd_kafka_message_timestamp(self.message.as_ptr(), &mut kind) };
        (kind != rdsys::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && millis >= 0)
            .then_some(millis)
    }

    fn key(&self) -> Option<&[u8]> {
        let fields = self.fields();
        bytes(fields.key, fields.key_len)
    }

    fn value(&self) -> Option<&[u8]> {
        let fields = self.fields();
        bytes(fields.payload, fields.len)
    }

    fn source_partition(&self) -> Option<i32> {
        Some(self.partition())
    }
}

impl Drop for FetchedMessage<'_> {
    fn drop(&mut self) {
        // SAFETY: owned since librdkafka handed it over; freed once.
        unsafe { rdsys::rd_kafka_message_destroy(self.message.as_ptr()) };
    }
}

/// Takes a consumer's messages in batches; see the module documentation.
pub struct BatchPoller<'c> {
    consumer: &'c KafkaConsumer,
    /// The consumer's queue, where fetched messages arrive.
    messages: NonNull<rdsys::rd_kafka_queue_t>,
    /// Where the consumer's log lines go meanwhile.
    logs: NonNull<rdsys::rd_kafka_queue_t>,
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    /// A client error arrived (librdkafka logs those under the facility `ERROR` here).
    client_failed: bool,
}

impl<'c> BatchPoller<'c> {
    /// A poller of `consumer`'s messages, or none if librdkafka gives no consumer queue
    /// (a consumer without a group; Sluice's consumers have one).
    pub fn new(consumer: &'c KafkaConsumer) -> Option<BatchPoller<'c>> {
        let client = consumer.client().native_ptr();
        // SAFETY: a live client; both queues are references released on drop.
        let messages = NonNull::new(unsafe { rdsys::rd_kafka_queue_get_consumer(client) })?;
        let logs = NonNull::new(unsafe { rdsys::rd_kafka_queue_new(client) })
            .expect("librdkafka creates queues");
        // SAFETY: both live; the client keeps its own reference to the log queue.
        unsafe { rdsys::rd_kafka_set_log_queue(client, logs.as_ptr()) };
        Some(BatchPoller {
            consumer,
            messages,
            logs,
            taken: Vec::new(),
            client_failed: false,
        })
    }

    /// Appends to `out` the messages there are now, at most `max`; when there are none,
    /// waits up to `timeout` for one. Returns how many were appended.
    pub fn poll(
        &mut self,
        timeout: Duration,
        max: usize,
        out: &mut Vec<FetchedMessage<'c>>,
    ) -> usize {
        let mut count = self.take(0, max);
        if count == 0 {
            // librdkafka waits for a full batch until the timeout: ask for one message.
            count = self.take(timeout.as_millis().min(c_int::MAX as u128) as c_int, 1);
        }
        out.extend(self.taken.drain(..count).filter_map(|message| {
            NonNull::new(message).map(|message| FetchedMessage {
                message,
                consumer: PhantomData,
            })
        }));
        self.serve_logs();
        count
    }

    /// Whether the client reported an error (e.g. every broker down) since the poller was
    /// created: what a poll per message returns as an error.
    pub fn client_failed(&self) -> bool {
        self.client_failed
    }

    /// Up to `max` messages into `taken`, waiting at most `timeout_ms` for them.
    fn take(&mut self, timeout_ms: c_int, max: usize) -> usize {
        self.taken.clear();
        self.taken.resize(max, std::ptr::null_mut());
        // SAFETY: `taken` has room for `max` pointers; the queue is live.
        let count = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.messages.as_ptr(),
                timeout_ms,
                self.taken.as_mut_ptr(),
                max,
            )
        };
        let count = usize::try_from(count).unwrap_or(0);
        self.taken.truncate(count);
        count
    }

    /// Hands the log lines waiting on the poller's queue to the consumer's context.
    fn serve_logs(&mut self) {
        loop {
            // SAFETY: a live queue; a returned event is destroyed below.
            let event = unsafe { rdsys::rd_kafka_queue_poll(self.logs.as_ptr(), 0) };
            if event.is_null() {
                return;
            }
            // SAFETY: a live event; the strings live as long as it does.
            unsafe {
                if rdsys::rd_kafka_event_type(event) == rdsys::RD_KAFKA_EVENT_LOG {
                    let mut facility: *const c_char = std::ptr::null();
                    let mut message: *const c_char = std::ptr::null();
                    let mut level: c_int = 0;
                    rdsys::rd_kafka_event_log(event, &mut facility, &mut message, &mut level);
                    let text = |s: *const c_char| {
                        if s.is_null() {
                            String::new()
                        } else {
                            CStr::from_ptr(s).to_string_lossy().into_owned()
                        }
                    };
                    let facility = text(facility);
                    // Syslog levels: 3 is an error, lower is worse.
                    self.client_failed |= facility == "ERROR" && level <= 3;
                    self.consumer
                        .context()
                        .log(log_level(level), &facility, &text(message));
                }
                rdsys::rd_kafka_event_destroy(event);
            }
        }
    }
}

impl Drop for BatchPoller<'_> {
    fn drop(&mut self) {
        let client = self.consumer.client().native_ptr();
        // SAFETY: live client and queues; logs go back to the main queue (what the
        // consumer was created with), those still waiting are served, then the
        // references are released.
        unsafe {
            rdsys::rd_kafka_set_log_queue(client, std::ptr::null_mut());
            self.serve_logs();
            rdsys::rd_kafka_queue_destroy(self.logs.as_ptr());
            rdsys::rd_kafka_queue_destroy(self.messages.as_ptr());
        }
    }
}

/// A syslog level as librdkafka gives it.
fn log_level(level: c_int) -> RDKafkaLogLevel {
    match level {
        0 => RDKafkaLogLevel::Emerg,
        1 => RDKafkaLogLevel::Alert,
        2 => RDKafkaLogLevel::Critical,
        3 => RDKafkaLogLevel::Error,
        4 => RDKafkaLogLevel::Warning,
        5 => RDKafkaLogLevel::Notice,
        6 => RDKafkaLogLevel::Info,
        _ => RDKafkaLogLevel::Debug,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rdkafka::message::Message;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;
    use rdkafka::{Offset, TopicPartitionList};

    use super::*;
    use crate::read::consumer;

    fn topic_of(records: u64) -> MockCluster<'static, DefaultProducerContext> {
        let kafka = MockCluster::new(1).unwrap();
        kafka.create_topic("t", 1, 1).unwrap();
        let producer = sluice_datagen::synthetic::producer(&kafka.bootstrap_servers()).unwrap();
        sluice_datagen::synthetic::produce_orders(&producer, "t", 1, 0, records, None, |_| {})
            .unwrap();
        kafka
    }

    fn assign_from_start(consumer: &KafkaConsumer) {
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("t", 0, Offset::Beginning)
            .unwrap();
        consumer.assign(&assignment).unwrap();
    }

    /// Messages taken in batches are the partition's records, as a poll per message
    /// returns them: offsets, keys, values and timestamps.
    #[test]
    fn batches_hold_the_records_a_poll_per_message_returns() {
        let kafka = topic_of(3000);
        let bootstrap = kafka.bootstrap_servers();
        let one_by_one = consumer(&bootstrap).unwrap();
        assign_from_start(&one_by_one);
        let mut expected = Vec::new();
        while expected.len() < 3000 {
            let message = one_by_one.poll(Duration::from_secs(5)).unwrap().unwrap();
            expected.push((
                Message::offset(&message),
                Message::key(&message).map(<[u8]>::to_vec),
                message.payload().map(<[u8]>::to_vec),
                message.timestamp().to_millis(),
            ));
        }

        let batched = consumer(&bootstrap).unwrap();
        assign_from_start(&batched);
        let mut poller = BatchPoller::new(&batched).unwrap();
        let mut taken = Vec::new();
        let mut polls = 0;
        while taken.len() < 3000 && polls < 1000 {
            assert!(poller.poll(Duration::from_secs(5), 500, &mut taken) <= 500);
            polls += 1;
        }
        assert!(
            polls < 3000,
            "{polls} polls for 3000 records: not in batches"
        );
        let got: Vec<_> = taken
            .iter()
            .map(|m| {
                assert!(m.error().is_none());
                assert_eq!((m.topic(), m.partition()), ("t", 0));
                (
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.value().map(<[u8]>::to_vec),
                    m.timestamp_ms(),
                )
            })
            .collect();
        assert_eq!(got, expected);
        assert!(got[0].3.is_some(), "records carry their timestamps");
    }

    /// The consumer's log lines reach its context while messages are taken in batches:
    /// an unreachable broker is still named when a read fails.
    #[test]
    fn log_lines_reach_the_consumer_while_it_is_polled_in_batches() {
        let kafka = topic_of(10);
        let batched = consumer(&kafka.bootstrap_servers()).unwrap();
        assign_from_start(&batched);
        let mut poller = BatchPoller::new(&batched).unwrap();
        let mut taken = Vec::new();
        while taken.len() < 10 {
            poller.poll(Duration::from_secs(5), 100, &mut taken);
        }
        assert_eq!(batched.context().recent(), None);
        kafka.broker_down(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while batched.context().recent().is_none() && Instant::now() < deadline {
            poller.poll(Duration::from_millis(100), 100, &mut taken);
        }
        let logged = batched.context().recent();
        assert!(
            logged.is_some(),
            "no error logged for a broker that went down"
        );
    }
}
