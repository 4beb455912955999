//! Kafka transactions on librdkafka's mock broker, which keeps transactional record batches
//! but plays no part in their outcome: its `EndTxn` writes no commit or abort marker, and
//! its fetch answers list no aborted transaction and give the log end as the last stable
//! offset (`rdkafka_mock_handlers.c`, `#Aborted` always 0). A broker does both, and a
//! `read_committed` client relies on them to drop aborted records.
//!
//! Tests write a transaction as a broker's log holds one: its records in a transactional
//! batch, then a control batch with the commit or abort marker ([`write_transaction`],
//! raw `Produce` requests). The gate relays the connections of clients with the aborted
//! transactions listed in every fetch answer ([`relay`]), as a broker does, so the client
//! drops exactly those records and skips the markers, leaving offset gaps.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::kafka_wire::{
    api_versions_entries, push_string, read_frame, write_frame, RequestHeader, API_VERSIONS,
};

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
/// The newest fetch version whose answers are not in the flexible encoding: the relay
/// caps the broker's advertised fetch versions there, so it can rewrite the answers.
const FETCH_MAX_VERSION: i16 = 11;
/// Fetch versions that carry aborted transactions.
const FETCH_WITH_TRANSACTIONS: std::ops::RangeInclusive<i16> = 4..=FETCH_MAX_VERSION;

/// Record batch attribute bits.
const TRANSACTIONAL: i16 = 1 << 4;
const CONTROL: i16 = 1 << 5;

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Abort,
}

/// Where a written transaction sits in its partition's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenTransaction {
    pub producer_id: i64,
    /// Offset of its first record.
    pub first_offset: i64,
    /// Offset of its marker: the records are `first_offset..marker_offset`.
    pub marker_offset: i64,
}

/// A record's key and value.
type Record<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);
/// A topic's partition.
type Partition = (String, i32);
/// An aborted transaction as a fetch answer lists it: producer id, first offset.
type Aborted = (i64, i64);

/// The aborted transactions of each partition, as fetch answers list them.
#[derive(Debug, Default)]
pub struct AbortedTransactions {
    by_partition: Mutex<HashMap<Partition, Vec<Aborted>>>,
}

impl AbortedTransactions {
    /// Records that `transaction` on `topic`/`partition` was aborted.
    pub fn add(&self, topic: &str, partition: i32, transaction: WrittenTransaction) {
        self.by_partition
            .lock()
            .expect("aborted transactions")
            .entry((topic.to_string(), partition))
            .or_default()
            .push((transaction.producer_id, transaction.first_offset));
    }

    fn of(&self, topic: &str, partition: i32) -> Vec<Aborted> {
        self.by_partition
            .lock()
            .expect("aborted transactions")
            .get(&(topic.to_string(), partition))
            .cloned()
            .unwrap_or_default()
    }
}

/// Writes a transaction of `values` (records without key) by `producer_id` to `topic`/
/// `partition` of the broker at `broker`, then its marker. Blocking.
pub fn write_transaction(
    broker: SocketAddr,
    topic: &str,
    partition: i32,
    producer_id: i64,
    values: &[Vec<u8>],
    outcome: Outcome,
) -> std::io::Result<WrittenTransaction> {
    assert!(!values.is_empty(), "a transaction writes records");
    let mut connection = std::net::TcpStream::connect(broker)?;
    let records: Vec<Record<'_>> = values.iter().map(|v| (None, Some(v.as_slice()))).collect();
    let first_offset = produce(
        &mut connection,
        topic,
        partition,
        &record_batch(producer_id, TRANSACTIONAL, &records),
    )?;
    // A control record: key (version 0, type 0 abort or 1 commit), value (version 0,
    // coordinator epoch 0).
    let marker_key = [0, 0, 0, u8::from(outcome == Outcome::Commit)];
    let marker_value = [0u8; 6];
    let marker_offset = produce(
        &mut connection,
        topic,
        partition,
        &record_batch(
            producer_id,
            TRANSACTIONAL | CONTROL,
            &[(Some(&marker_key), Some(&marker_value))],
        ),
    )?;
    Ok(WrittenTransaction {
        producer_id,
        first_offset,
        marker_offset,
    })
}

/// Sends one `Produce` (version 3, all replicas acknowledge) of `batch`; the offset the
/// broker gave its first record.
fn produce(
    connection: &mut std::net::TcpStream,
    topic: &str,
    partition: i32,
    batch: &[u8],
) -> std::io::Result<i64> {
    let mut request = Vec::new();
    request.extend(PRODUCE.to_be_bytes());
    request.extend(3i16.to_be_bytes());
    request.extend(1i32.to_be_bytes()); // correlation id
    push_string(&mut request, "sluice-test");
    request.extend((-1i16).to_be_bytes()); // no transactional id
    request.extend((-1i16).to_be_bytes()); // acks: all
    request.extend(5_000i32.to_be_bytes());
    request.extend(1i32.to_be_bytes());
    push_string(&mut request, topic);
    request.extend(1i32.to_be_bytes());
    request.extend(partition.to_be_bytes());
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);
    connection.write_all(&(request.len() as i32).to_be_bytes())?;
    connection.write_all(&request)?;

    let mut length = [0u8; 4];
    connection.read_exact(&mut length)?;
    let mut response = vec![0u8; i32::from_be_bytes(length).max(0) as usize];
    connection.read_exact(&mut response)?;
    // Correlation id, one topic (count, name), one partition (count, index), then the
    // partition's error code and base offset.
    let mut at = Cursor::new(&response);
    let parsed = (|| {
        at.skip(4 + 4)?;
        let name_len = at.i16()?;
        at.skip(name_len.max(0) as usize + 4 + 4)?;
        Some((at.i16()?, at.i64()?))
    })();
    match parsed {
        Some((0, base_offset)) => Ok(base_offset),
        Some((error, _)) => Err(std::io::Error::other(format!(
            "producing to {topic}/{partition}: Kafka error code {error}"
        ))),
        None => Err(std::io::Error::other("short Produce answer")),
    }
}

/// A record batch (magic 2) of `records` (key, value) with `attributes`, written by
/// `producer_id` (epoch 0, sequence 0), its checksum set.
fn record_batch(producer_id: i64, attributes: i16, records: &[Record<'_>]) -> Vec<u8> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // From the attributes on: what the checksum covers.
    let mut checked = Vec::new();
    checked.extend(attributes.to_be_bytes());
    checked.extend((records.len() as i32 - 1).to_be_bytes()); // last offset delta
    checked.extend(now_ms.to_be_bytes()); // first timestamp
    checked.extend(now_ms.to_be_bytes()); // max timestamp
    checked.extend(producer_id.to_be_bytes());
    checked.extend(0i16.to_be_bytes()); // producer epoch
    checked.extend(0i32.to_be_bytes()); // base sequence
    checked.extend((records.len() as i32).to_be_bytes());
    for (delta, (key, value)) in records.iter().enumerate() {
        let mut record = vec![0u8]; // attributes
        push_varint(&mut record, 0); // timestamp delta
        push_varint(&mut record, delta as i64);
        for field in [key, value] {
            match field {
                Some(bytes) => {
                    push_varint(&mut record, bytes.len() as i64);
                    record.extend(*bytes);
                }
                None => push_varint(&mut record, -1),
            }
        }
        push_varint(&mut record, 0); // headers
        push_varint(&mut checked, record.len() as i64);
        checked.extend(record);
    }
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset: the broker assigns it
    batch.extend(((4 + 1 + 4 + checked.len()) as i32).to_be_bytes());
    batch.extend(0i32.to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&checked).to_be_bytes());
    batch.extend(checked);
    batch
}

/// Kafka's variable-length signed integer (zig-zag, 7 bits a byte).
fn push_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

/// CRC-32C (Castagnoli), the record batch checksum.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Passes a client's requests to the broker and the broker's answers back, listing the
/// partitions' aborted transactions in fetch answers (and advertising fetch versions only
/// up to [`FETCH_MAX_VERSION`], whose answers it can rewrite).
pub async fn relay(
    client: impl AsyncRead + AsyncWrite + Unpin,
    broker: TcpStream,
    aborted: Arc<AbortedTransactions>,
) -> std::io::Result<()> {
    let (mut client_reads, mut client_writes) = tokio::io::split(client);
    let (mut broker_reads, mut broker_writes) = broker.into_split();
    // Correlation id -> (api key, version) of requests whose answers are rewritten.
    let pending: Mutex<HashMap<i32, (i16, i16)>> = Mutex::default();
    tokio::try_join!(
        pass_requests(&mut client_reads, &mut broker_writes, &pending),
        pass_answers(&mut broker_reads, &mut client_writes, &pending, &aborted),
    )
    .map(|_| ())
}

/// Passes requests on, noting those whose answers [`pass_answers`] rewrites.
async fn pass_requests(
    client: &mut (impl AsyncRead + Unpin),
    broker: &mut (impl AsyncWrite + Unpin),
    pending: &Mutex<HashMap<i32, (i16, i16)>>,
) -> std::io::Result<()> {
    loop {
        let request = read_frame(client).await?;
        if let Some(header) = RequestHeader::parse(&request) {
            if matches!(header.api_key, FETCH | API_VERSIONS) {
                pending
                    .lock()
                    .expect("pending requests")
                    .insert(header.correlation_id, (header.api_key, header.api_version));
            }
        }
        write_frame(broker, &request).await?;
    }
}

/// Passes answers back, rewriting ApiVersions and Fetch answers.
async fn pass_answers(
    broker: &mut (impl AsyncRead + Unpin),
    client: &mut (impl AsyncWrite + Unpin),
    pending: &Mutex<HashMap<i32, (i16, i16)>>,
    aborted: &AbortedTransactions,
) -> std::io::Result<()> {
    loop {
        let answer = read_frame(broker).await?;
        let asked = answer
            .get(0..4)
            .map(|id| i32::from_be_bytes(id.try_into().expect("4 bytes")))
            .and_then(|id| pending.lock().expect("pending requests").remove(&id));
        let answer = match asked {
            Some((API_VERSIONS, version)) if version <= 2 => cap_fetch_version(answer),
            Some((FETCH, version)) if FETCH_WITH_TRANSACTIONS.contains(&version) => {
                list_aborted(&answer, version, aborted).unwrap_or(answer)
            }
            _ => answer,
        };
        write_frame(client, &answer).await?;
    }
}

/// An ApiVersions answer (versions 0 to 2: correlation id, error code, a count of 6-byte
/// entries) with the fetch entry's newest version capped at [`FETCH_MAX_VERSION`].
fn cap_fetch_version(mut answer: Vec<u8>) -> Vec<u8> {
    let Some(entries) = api_versions_entries(&answer) else {
        return answer;
    };
    for entry in entries.step_by(6) {
        let bytes = &answer[entry..entry + 6];
        let key = i16::from_be_bytes([bytes[0], bytes[1]]);
        let newest = i16::from_be_bytes([bytes[4], bytes[5]]);
        if key == FETCH && newest > FETCH_MAX_VERSION {
            answer[entry + 4..entry + 6].copy_from_slice(&FETCH_MAX_VERSION.to_be_bytes());
        }
    }
    answer
}

/// A fetch answer (versions 4 to 11) with each partition's aborted transactions replaced
/// by those of `aborted`; `None` when it does not parse.
fn list_aborted(answer: &[u8], version: i16, aborted: &AbortedTransactions) -> Option<Vec<u8>> {
    let mut at = Cursor::new(answer);
    let mut out = Vec::with_capacity(answer.len());
    // Correlation id, throttle time, then (from version 7) error code and session id.
    out.extend(at.take(4 + 4 + if version >= 7 { 2 + 4 } else { 0 })?);
    let topics = at.i32()?;
    out.extend(topics.to_be_bytes());
    for _ in 0..topics.max(0) {
        let name_len = at.i16()?;
        let name = at.take(name_len.max(0) as usize)?;
        out.extend(name_len.to_be_bytes());
        out.extend(name);
        let topic = String::from_utf8_lossy(name).into_owned();
        let partitions = at.i32()?;
        out.extend(partitions.to_be_bytes());
        for _ in 0..partitions.max(0) {
            let partition = at.i32()?;
            out.extend(partition.to_be_bytes());
            // Error code, high watermark, last stable offset, (5+) log start offset.
            out.extend(at.take(2 + 8 + 8 + if version >= 5 { 8 } else { 0 })?);
            let listed = at.i32()?;
            at.skip(16 * listed.max(0) as usize)?;
            let transactions = aborted.of(&topic, partition);
            out.extend((transactions.len() as i32).to_be_bytes());
            for (producer_id, first_offset) in transactions {
                out.extend(producer_id.to_be_bytes());
                out.extend(first_offset.to_be_bytes());
            }
            if version >= 11 {
                out.extend(at.take(4)?); // preferred read replica
            }
            let records = at.i32()?;
            out.extend(records.to_be_bytes());
            out.extend(at.take(records.max(0) as usize)?);
        }
    }
    out.extend(at.rest());
    Some(out)
}

/// Reads big-endian fields off a byte slice.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let taken = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(taken)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }

    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn varints_zig_zag() {
        let encode = |value| {
            let mut out = Vec::new();
            push_varint(&mut out, value);
            out
        };
        assert_eq!(encode(0), [0]);
        assert_eq!(encode(-1), [1]);
        assert_eq!(encode(1), [2]);
        assert_eq!(encode(64), [0x80, 1]);
    }
}
