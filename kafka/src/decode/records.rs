//! The records decoding reads: a Kafka record owned ([`RawRecord`]) or still in
//! librdkafka's buffers (any [`KafkaRecord`]), and what decoding hands back besides rows
//! ([`DecodedBatch`], [`DeadLetter`]).

use arrow::array::RecordBatch;

/// One Kafka record as read from a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A Kafka record as the decoder reads it: an owned [`RawRecord`] or a message still in
/// librdkafka's buffers (decoded without copying it).
pub trait KafkaRecord {
    fn offset(&self) -> i64;
    fn timestamp_ms(&self) -> Option<i64>;
    fn key(&self) -> Option<&[u8]>;
    fn value(&self) -> Option<&[u8]>;

    /// The partition the record was read from, when it knows (a message does; a record
    /// copied out does not).
    fn source_partition(&self) -> Option<i32> {
        None
    }

    /// Why the value cannot be read at all (an Avro value that does not decode), before
    /// the JSON decoder sees it.
    fn unreadable(&self) -> Option<&str> {
        None
    }

    /// The record copied out, e.g. to keep it as a dead letter.
    fn to_raw(&self) -> RawRecord {
        RawRecord {
            offset: self.offset(),
            timestamp_ms: self.timestamp_ms(),
            key: self.key().map(<[u8]>::to_vec),
            value: self.value().map(<[u8]>::to_vec),
        }
    }
}

/// A record whose Avro value was read as a JSON object (or could not be read); its
/// dead letter is the record as it came.
pub(crate) struct AvroAsJson<'a, R> {
    pub(crate) record: &'a R,
    pub(crate) json: Result<Vec<u8>, String>,
}

impl<R: KafkaRecord> KafkaRecord for AvroAsJson<'_, R> {
    fn offset(&self) -> i64 {
        self.record.offset()
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.record.timestamp_ms()
    }
    fn key(&self) -> Option<&[u8]> {
        self.record.key()
    }
    fn value(&self) -> Option<&[u8]> {
        self.json.as_deref().ok()
    }
    fn source_partition(&self) -> Option<i32> {
        self.record.source_partition()
    }
    fn unreadable(&self) -> Option<&str> {
        self.json.as_ref().err().map(String::as_str)
    }
    fn to_raw(&self) -> RawRecord {
        self.record.to_raw()
    }
}

impl KafkaRecord for RawRecord {
    fn offset(&self) -> i64 {
        self.offset
    }
    fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

impl KafkaRecord for rdkafka::message::BorrowedMessage<'_> {
    fn offset(&self) -> i64 {
        rdkafka::Message::offset(self)
    }
    fn timestamp_ms(&self) -> Option<i64> {
        rdkafka::Message::timestamp(self).to_millis()
    }
    fn key(&self) -> Option<&[u8]> {
        rdkafka::Message::key(self)
    }
    fn value(&self) -> Option<&[u8]> {
        rdkafka::Message::payload(self)
    }
    fn source_partition(&self) -> Option<i32> {
        Some(rdkafka::Message::partition(self))
    }
}

/// Decoded rows of one partition's records.
#[derive(Debug)]
pub struct DecodedBatch {
    pub batch: RecordBatch,
    /// Records dropped because they did not decode (`skip` or `dead_letter`).
    pub malformed_skipped: u64,
    /// The dropped records themselves, with `on_malformed: dead_letter`.
    pub dead_letters: Vec<DeadLetter>,
}

/// A record that did not decode, kept whole with the reason.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub record: RawRecord,
    pub error: String,
}
