//! Kafka records -> Arrow record batches with the job's `source` schema.
//!
//! JSON is decoded with arrow-json in one pass; only when that pass fails are records
//! decoded one by one, to name the offending offset (or skip it with `on_malformed: skip`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;

pub mod avro;
pub(crate) mod flat_json;
pub mod json_guard;
mod records;

pub use records::{DeadLetter, DecodedBatch, KafkaRecord, RawRecord};

use flat_json::FlatJsonDecoder;
use records::AvroAsJson;
use sluice_core::error::{Error, Result};
use sluice_core::schema::{
    metadata_fields, stream_schema, value_schema, KEY_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN,
    TIMESTAMP_COLUMN, TOPIC_COLUMN,
};
use sluice_core::spec::{EventTime, JobSpec, KafkaSourceSpec, OnMalformed, RecordFormat};

/// Decodes records of a job's source; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: RecordFormat,
    on_malformed: OnMalformed,
    max_record_bytes: usize,
    max_nesting_depth: u32,
    /// Windowed sources: the event-time column, the window length and slide (ms).
    window: Option<(String, i64, i64)>,
    value_schema: SchemaRef,
    /// `format: avro`: how values are read (as JSON for the JSON decoder).
    avro: Option<Arc<avro::AvroReader>>,
    /// Decoded batches' schema (`sluice_core::schema::stream_schema`).
    stream_schema: SchemaRef,
    /// JSON decoders kept between chunks, shared by clones.
    json_decoders: Arc<Mutex<Vec<arrow_json::reader::Decoder>>>,
    /// The fast path for flat JSON objects, when the value schema suits it.
    flat_json: Option<Arc<FlatJsonDecoder>>,
    /// The columns decoded batches keep, when not all (see [`RecordDecoder::keeping`]).
    projection: Option<Arc<Projection>>,
}

/// The stream columns a job's plan reads: decoded batches hold only these.
#[derive(Debug)]
struct Projection {
    /// The kept value columns' names, in schema order.
    values: Vec<String>,
    /// Which metadata columns are kept (in `sluice_core::schema::metadata_fields` order).
    metadata: Vec<bool>,
    /// The decoded batches' schema.
    schema: SchemaRef,
}

/// How many records a chunked range read hands over at once (about a DataFusion batch):
/// memory for a range's records stays bounded whatever the range's size.
pub const CHUNK_RECORDS: usize = 8192;

/// Chunks of up to this many records are decoded by a kept decoder. A flushed decoder
/// keeps its buffers; a new one per chunk allocated and grew them again every time, on
/// fresh pages the kernel had to zero (a tenth of executors' CPU time in a profile).
const KEPT_DECODER_RECORDS: usize = CHUNK_RECORDS;
/// Decoders kept at most: one per task running at once is enough.
const KEPT_DECODERS: usize = 16;

impl RecordDecoder {
    /// A decoder of `kafka`'s records without event time (no windows at decode).
    pub fn new(kafka: &KafkaSourceSpec) -> Result<RecordDecoder> {
        Self::with_event_time(kafka, EventTime::default())
    }

    /// The decoder of a job's one source, under the job's event time.
    pub fn for_job(spec: &JobSpec) -> Result<RecordDecoder> {
        Self::with_event_time(&spec.source().kafka, spec.event_time())
    }

    /// A decoder of `kafka`'s records processed under `event_time`: with fixed windows
    /// assigned at decode, each record gets its windows' columns.
    pub fn with_event_time(
        kafka: &KafkaSourceSpec,
        event_time: EventTime,
    ) -> Result<RecordDecoder> {
        Ok(RecordDecoder {
            format: kafka.format,
            on_malformed: kafka.on_malformed,
            max_record_bytes: kafka.max_record_bytes() as usize,
            max_nesting_depth: kafka.max_nesting_depth(),
            window: match (event_time.window, event_time.watermark) {
                (Some(window), Some(watermark)) if event_time.windows_at_decode() => Some((
                    watermark.column.clone(),
                    window.size_ms()?,
                    window.slide_ms()?,
                )),
                _ => None,
            },
            flat_json: match kafka.format {
                RecordFormat::Json | RecordFormat::Avro => {
                    FlatJsonDecoder::new(&value_schema(kafka)?).map(Arc::new)
                }
                RecordFormat::Raw => None,
            },
            value_schema: value_schema(kafka)?,
            avro: match (kafka.format, &kafka.avro) {
                (RecordFormat::Avro, Some(avro)) => Some(Arc::new(avro::AvroReader::new(avro)?)),
                (RecordFormat::Avro, None) => {
                    return Err(Error::spec("source.kafka.avro", "format avro needs avro"))
                }
                _ => None,
            },
            stream_schema: stream_schema(kafka, event_time)?,
            json_decoders: Arc::default(),
            projection: None,
        })
    }

    /// This decoder keeping only the stream columns `columns` names (the others are not
    /// built; for JSON, their values are still checked, so a record is malformed exactly
    /// when it was before). Unchanged when it keeps them all, or when records are
    /// repeated per window at decode (the window columns need the event time).
    pub fn keeping(mut self, columns: &BTreeSet<String>) -> RecordDecoder {
        if self.window.is_some() {
            return self;
        }
        let kept: Vec<bool> = (self.stream_schema.fields().iter())
            .map(|field| columns.contains(field.name()))
            .collect();
        if kept.iter().all(|kept| *kept) {
            return self;
        }
        let value_count = self.value_schema.fields().len();
        let (value_kept, metadata_kept) = kept.split_at(value_count);
        let kept_indices: Vec<usize> = (0..kept.len()).filter(|index| kept[*index]).collect();
        let schema = match self.stream_schema.project(&kept_indices) {
            Ok(schema) => Arc::new(schema),
            // The indices come from the schema itself: this cannot fail.
            Err(_) => return self,
        };
        self.projection = Some(Arc::new(Projection {
            values: (kept_indices.iter())
                .filter(|index| **index < value_count)
                .map(|index| self.value_schema.field(*index).name().clone())
                .collect(),
            metadata: metadata_kept.to_vec(),
            schema,
        }));
        self.flat_json = self
            .flat_json
            .take()
            .map(|flat| Arc::new(Arc::unwrap_or_clone(flat).keeping(value_kept)));
        self
    }

    /// This decoder without the flat JSON fast path: every chunk goes through arrow-json
    /// (for comparing the two; results are the same).
    pub fn without_fast_path(mut self) -> RecordDecoder {
        self.flat_json = None;
        self
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> SchemaRef {
        match &self.projection {
            Some(projection) => projection.schema.clone(),
            None => self.stream_schema.clone(),
        }
    }

    /// The kept value columns of a batch decoded from values (by the fast path, which
    /// built only those, or by arrow-json, which built all).
    fn kept_values(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        match &self.projection {
            Some(projection) => (projection.values.iter())
                .map(|name| {
                    batch.column_by_name(name).cloned().ok_or_else(|| {
                        arrow::error::ArrowError::SchemaError(format!(
                            "decoded values lack column {name}"
                        ))
                        .into()
                    })
                })
                .collect(),
            None => Ok(batch.columns().to_vec()),
        }
    }

    /// Why a record cannot be taken before decoding it, if it cannot: too large, or (JSON)
    /// nested too deep for the decoder to be safe on it.
    fn precheck(&self, record: &impl KafkaRecord) -> Option<String> {
        if let Some(reason) = self.size_check(record) {
            return Some(reason);
        }
        let value = record.value().unwrap_or_default();
        if self.format == RecordFormat::Json {
            if let Some(at) = json_guard::too_deep_at(value, self.max_nesting_depth) {
                return Some(format!(
                    "JSON nested deeper than max_nesting_depth ({}) at byte {at}",
                    self.max_nesting_depth
                ));
            }
        }
        None
    }

    /// Why a record cannot be taken whatever its contents, if it cannot: unreadable, or
    /// too large.
    fn size_check(&self, record: &impl KafkaRecord) -> Option<String> {
        if let Some(reason) = record.unreadable() {
            return Some(reason.to_string());
        }
        let value = record.value().unwrap_or_default();
        // Avro values were measured before they became JSON.
        if self.format != RecordFormat::Avro && value.len() > self.max_record_bytes {
            return Some(format!(
                "record of {} bytes exceeds max_record_bytes ({})",
                value.len(),
                self.max_record_bytes
            ));
        }
        None
    }

    /// The chunk's values decoded by the flat JSON fast path, when it takes them all: flat
    /// objects are never nested deep, so only their size is checked first.
    fn decode_flat<R: KafkaRecord>(&self, records: &[R]) -> Option<RecordBatch> {
        let flat = self.flat_json.as_ref()?;
        if records.iter().any(|r| self.size_check(r).is_some()) {
            return None;
        }
        flat.decode(records.iter().map(|record| record.value()))
    }

    /// Decodes `records` of `topic`/`partition`; malformed records are handled as the
    /// spec's `on_malformed` says.
    pub fn decode<R: KafkaRecord>(
        &self,
        topic: &str,
        partition: i32,
        records: &[R],
    ) -> Result<DecodedBatch> {
        if let Some(avro) = &self.avro {
            // Avro values read as JSON objects, then decoded as JSON records are.
            let converted: Vec<AvroAsJson<'_, R>> = records
                .iter()
                .map(|record| AvroAsJson {
                    json: match record.value() {
                        Some(value) if value.len() > self.max_record_bytes => Err(format!(
                            "record of {} bytes exceeds max_record_bytes ({})",
                            value.len(),
                            self.max_record_bytes
                        )),
                        Some(value) => avro.to_json(value),
                        None => Err("the record has no value".into()),
                    },
                    record,
                })
                .collect();
            return self.decode_converted(topic, partition, &converted);
        }
        self.decode_converted(topic, partition, records)
    }

    /// [`RecordDecoder::decode`] of records whose values are JSON (or raw) by now.
    fn decode_converted<R: KafkaRecord>(
        &self,
        topic: &str,
        partition: i32,
        records: &[R],
    ) -> Result<DecodedBatch> {
        let fast = match self.format {
            RecordFormat::Json | RecordFormat::Avro => self.decode_flat(records).or_else(|| {
                // The fast path just gave this chunk back: arrow-json alone.
                if records.iter().all(|r| self.precheck(r).is_none()) {
                    self.decode_arrow_json(records.iter()).ok()
                } else {
                    None
                }
            }),
            RecordFormat::Raw => None,
        };
        let (values, kept, malformed) = match (fast, self.format) {
            (Some(batch), _) => (self.kept_values(&batch)?, records.iter().collect(), vec![]),
            (None, RecordFormat::Raw) => {
                let (kept, malformed) = self.split(records, |_| Ok(()));
                let values: BinaryArray = kept.iter().map(|r| r.value()).collect();
                let batch = RecordBatch::try_new(
                    self.value_schema.clone(),
                    vec![Arc::new(values) as ArrayRef],
                )?;
                (self.kept_values(&batch)?, kept, malformed)
            }
            (None, RecordFormat::Json | RecordFormat::Avro) => {
                let (kept, malformed) = self.split(records, |record| {
                    self.decode_json(std::iter::once(record)).map(|_| ())
                });
                let batch = self.decode_json(kept.iter().copied()).map_err(|message| {
                    Error::MalformedRecord {
                        topic: topic.to_string(),
                        partition,
                        offset: kept.first().map_or(-1, |r| r.offset()),
                        message,
                    }
                })?;
                (self.kept_values(&batch)?, kept, malformed)
            }
        };
        let mut dead_letters = Vec::new();
        for (record, error) in &malformed {
            match self.on_malformed {
                OnMalformed::Fail => {
                    return Err(Error::MalformedRecord {
                        topic: topic.to_string(),
                        partition,
                        offset: record.offset(),
                        message: error.clone(),
                    })
                }
                OnMalformed::Skip => {}
                OnMalformed::DeadLetter => dead_letters.push(DeadLetter {
                    topic: topic.to_string(),
                    partition,
                    record: record.to_raw(),
                    error: error.clone(),
                }),
            }
        }
        let mut columns = values;
        let metadata = self.projection.as_ref().map(|p| p.metadata.as_slice());
        columns.extend(metadata_columns(topic, partition, &kept, metadata)?);
        if let Some((column, size_ms, slide_ms)) = &self.window {
            let index = self.stream_schema.index_of(column)?;
            columns = with_windows(columns, index, *size_ms, *slide_ms)?;
        }
        // Windows may repeat rows; a batch keeping no column has one row per record.
        let rows = columns.first().map_or(kept.len(), |column| column.len());
        let batch = RecordBatch::try_new_with_options(
            self.schema(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok(DecodedBatch {
            batch,
            malformed_skipped: malformed.len() as u64,
            dead_letters,
        })
    }

    /// Splits records into those that pass the precheck and `check`, and the others
    /// with their reason.
    fn split<'a, R: KafkaRecord>(
        &self,
        records: &'a [R],
        check: impl Fn(&R) -> Result<(), String>,
    ) -> (Vec<&'a R>, Vec<(&'a R, String)>) {
        let mut kept = Vec::with_capacity(records.len());
        let mut malformed = Vec::new();
        for record in records {
            match self.precheck(record).map_or_else(|| check(record), Err) {
                Ok(()) => kept.push(record),
                Err(reason) => malformed.push((record, reason)),
            }
        }
        (kept, malformed)
    }

    /// Decodes all records in one pass (the flat fast path, else arrow-json); any bad
    /// record fails the pass.
    fn decode_json<'a, R: KafkaRecord + 'a>(
        &self,
        records: impl ExactSizeIterator<Item = &'a R> + Clone,
    ) -> Result<RecordBatch, String> {
        if let Some(flat) = &self.flat_json {
            if let Some(batch) = flat.decode(records.clone().map(|record| record.value())) {
                return Ok(batch);
            }
        }
        self.decode_arrow_json(records)
    }

    /// Decodes all records in one arrow-json pass; any bad record fails the pass.
    fn decode_arrow_json<'a, R: KafkaRecord + 'a>(
        &self,
        records: impl ExactSizeIterator<Item = &'a R>,
    ) -> Result<RecordBatch, String> {
        let count = records.len();
        let kept = count <= KEPT_DECODER_RECORDS;
        let taken = if kept {
            self.json_decoders.lock().expect("decoders lock").pop()
        } else {
            None
        };
        let mut decoder = match taken {
            Some(decoder) => decoder,
            None => arrow_json::ReaderBuilder::new(self.value_schema.clone())
                .with_batch_size(if kept { KEPT_DECODER_RECORDS } else { count } + 1)
                .build_decoder()
                .map_err(decoder_error)?,
        };
        let batch = decode_with(&mut decoder, records, &self.value_schema)?;
        // Only a decoder that flushed cleanly is empty again; a failed one is dropped.
        if kept {
            let mut decoders = self.json_decoders.lock().expect("decoders lock");
            if decoders.len() < KEPT_DECODERS {
                decoders.push(decoder);
            }
        }
        Ok(batch)
    }
}

/// Decodes `records` with `decoder` (empty) and flushes it.
pub(crate) fn decode_with<'a, R: KafkaRecord + 'a>(
    decoder: &mut arrow_json::reader::Decoder,
    records: impl Iterator<Item = &'a R>,
    schema: &SchemaRef,
) -> Result<RecordBatch, String> {
    for (i, record) in records.enumerate() {
        let value = record.value().ok_or("the record has no value")?;
        let consumed = decoder.decode(value).map_err(decoder_error)?;
        if consumed != value.len() {
            return Err("trailing data after the JSON value".into());
        }
        decoder.decode(b"\n").map_err(decoder_error)?;
        if decoder.has_partial_record() {
            return Err("incomplete JSON value".into());
        }
        if decoder.len() != i + 1 {
            return Err("expected exactly one JSON object".into());
        }
    }
    match decoder.flush().map_err(decoder_error)? {
        Some(batch) => Ok(batch),
        None => Ok(RecordBatch::new_empty(schema.clone())),
    }
}

/// Longest decoder message kept: arrow-json quotes the offending value whole, which may be
/// megabytes of one record.
const MAX_ERROR_CHARS: usize = 500;

/// A decoder error as a message of at most [`MAX_ERROR_CHARS`] characters.
fn decoder_error(error: arrow::error::ArrowError) -> String {
    let message = error.to_string();
    match message.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}… ({} bytes in all)", &message[..cut], message.len()),
        None => message,
    }
}

/// The schema of a dead-letter table: the record whole, where it came from, and why.
pub fn dead_letter_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, true),
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("error", DataType::Utf8, true),
    ]))
}

/// Dead letters as a record batch of [`dead_letter_schema`].
pub fn dead_letter_batch(letters: &[DeadLetter]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|l| l.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|l| l.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|l| l.record.offset),
        )),
        Arc::new(TimestampMillisecondArray::from_iter(
            letters.iter().map(|l| l.record.timestamp_ms),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|l| l.record.key.as_deref()),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|l| l.record.value.as_deref()),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|l| l.error.as_str()),
        )),
    ];
    Ok(RecordBatch::try_new(dead_letter_schema(), columns)?)
}

/// A timestamp (or date) column in milliseconds since the epoch.
pub fn millis(column: &ArrayRef) -> Result<TimestampMillisecondArray> {
    use arrow::datatypes::{DataType, TimeUnit};
    let millis = arrow::compute::cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(millis
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("cast to timestamp(ms)")
        .clone())
}

/// `columns` with each record repeated once per window it belongs to (one window when
/// tumbling, `size / slide` when sliding), and the window's start and end (ms) appended.
/// A record without an event time keeps one row, without a window.
fn with_windows(
    columns: Vec<ArrayRef>,
    event_time: usize,
    size_ms: i64,
    slide_ms: i64,
) -> Result<Vec<ArrayRef>> {
    let millis = millis(&columns[event_time])?;
    let copies = size_ms / slide_ms;
    let mut out = columns;
    let starts: Vec<Option<i64>> = if copies == 1 {
        // Tumbling: one window per record, the rows stay as they are.
        millis
            .iter()
            .map(|ms| ms.map(|ms| ms - ms.rem_euclid(slide_ms)))
            .collect()
    } else {
        let mut rows: Vec<u32> = Vec::with_capacity(millis.len() * copies as usize);
        let mut starts = Vec::with_capacity(rows.capacity());
        for (row, ms) in millis.iter().enumerate() {
            match ms {
                Some(ms) => {
                    let last = ms - ms.rem_euclid(slide_ms);
                    for copy in 0..copies {
                        rows.push(row as u32);
                        starts.push(Some(last - copy * slide_ms));
                    }
                }
                None => {
                    rows.push(row as u32);
                    starts.push(None);
                }
            }
        }
        let rows = arrow::array::UInt32Array::from(rows);
        out = out
            .iter()
            .map(|column| arrow::compute::take(column, &rows, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        starts
    };
    let start = TimestampMillisecondArray::from(starts);
    let end: TimestampMillisecondArray = start.iter().map(|s| s.map(|s| s + size_ms)).collect();
    out.push(Arc::new(start));
    out.push(Arc::new(end));
    Ok(out)
}

/// The metadata columns of `records` (those `kept` marks, in
/// `sluice_core::schema::metadata_fields` order; all when `None`).
fn metadata_columns<R: KafkaRecord>(
    topic: &str,
    partition: i32,
    records: &[&R],
    kept: Option<&[bool]>,
) -> Result<Vec<ArrayRef>> {
    let n = records.len();
    let column = |name: &str| -> Result<ArrayRef> {
        Ok(match name {
            TOPIC_COLUMN => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(topic, n))),
            PARTITION_COLUMN => Arc::new(Int32Array::from_value(partition, n)),
            OFFSET_COLUMN => Arc::new(Int64Array::from_iter_values(
                records.iter().map(|r| r.offset()),
            )),
            TIMESTAMP_COLUMN => Arc::new(TimestampMillisecondArray::from_iter(
                records.iter().map(|r| r.timestamp_ms()),
            )),
            KEY_COLUMN => Arc::new(BinaryArray::from_iter(records.iter().map(|r| r.key()))),
            other => {
                return Err(arrow::error::ArrowError::SchemaError(format!(
                    "no record metadata builds column {other}"
                ))
                .into())
            }
        })
    };
    (metadata_fields().iter().enumerate())
        .filter(|(index, _)| kept.is_none_or(|kept| kept.get(*index) != Some(&false)))
        .map(|(_, field)| column(field.name()))
        .collect()
}

#[cfg(test)]
mod tests;
