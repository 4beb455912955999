//! Kafka records -> Arrow record batches with the job's `source` schema.
//!
//! JSON is decoded with arrow-json in one pass; only when that pass fails are records
//! decoded one by one, to name the offending offset (or skip it with `on_malformed: skip`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::SchemaRef;

use crate::error::{Error, Result};
use crate::schema::{source_schema, value_schema};
use crate::spec::{KafkaSourceSpec, OnMalformed, RecordFormat};

/// One Kafka record as read from a partition.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// Decoded rows of one partition's records.
#[derive(Debug)]
pub struct DecodedBatch {
    pub batch: RecordBatch,
    /// Records dropped because they did not decode (`on_malformed: skip`).
    pub malformed_skipped: u64,
}

/// Decodes records of a job's source; cheap to clone.
#[derive(Debug, Clone)]
pub struct RecordDecoder {
    format: RecordFormat,
    on_malformed: OnMalformed,
    value_schema: SchemaRef,
    source_schema: SchemaRef,
}

impl RecordDecoder {
    pub fn new(kafka: &KafkaSourceSpec) -> Result<RecordDecoder> {
        Ok(RecordDecoder {
            format: kafka.format,
            on_malformed: kafka.on_malformed,
            value_schema: value_schema(kafka)?,
            source_schema: source_schema(kafka)?,
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> SchemaRef {
        self.source_schema.clone()
    }

    /// Decodes `records` of `topic`/`partition`.
    pub fn decode(
        &self,
        topic: &str,
        partition: i32,
        records: &[RawRecord],
    ) -> Result<DecodedBatch> {
        let (values, kept, malformed_skipped) = match self.format {
            RecordFormat::Raw => {
                let values: BinaryArray = records.iter().map(|r| r.value.as_deref()).collect();
                let kept: Vec<&RawRecord> = records.iter().collect();
                (vec![Arc::new(values) as ArrayRef], kept, 0)
            }
            RecordFormat::Json => match self.decode_json(records.iter()) {
                Ok(batch) => (batch.columns().to_vec(), records.iter().collect(), 0),
                Err(_) => self.decode_json_one_by_one(topic, partition, records)?,
            },
        };
        let mut columns = values;
        columns.extend(metadata_columns(topic, partition, &kept));
        let batch = RecordBatch::try_new(self.source_schema.clone(), columns)?;
        Ok(DecodedBatch {
            batch,
            malformed_skipped,
        })
    }

    /// Decodes all records in one arrow-json pass; any bad record fails the pass.
    fn decode_json<'a>(
        &self,
        records: impl ExactSizeIterator<Item = &'a RawRecord>,
    ) -> Result<RecordBatch, String> {
        let count = records.len();
        let mut decoder = arrow_json::ReaderBuilder::new(self.value_schema.clone())
            .with_batch_size(count.max(1) + 1)
            .build_decoder()
            .map_err(|e| e.to_string())?;
        for (i, record) in records.enumerate() {
            let value = record.value.as_deref().ok_or("the record has no value")?;
            let consumed = decoder.decode(value).map_err(|e| e.to_string())?;
            if consumed != value.len() {
                return Err("trailing data after the JSON value".into());
            }
            decoder.decode(b"\n").map_err(|e| e.to_string())?;
            if decoder.has_partial_record() {
                return Err("incomplete JSON value".into());
            }
            if decoder.len() != i + 1 {
                return Err("expected exactly one JSON object".into());
            }
        }
        match decoder.flush().map_err(|e| e.to_string())? {
            Some(batch) => Ok(batch),
            None => Ok(RecordBatch::new_empty(self.value_schema.clone())),
        }
    }

    /// The slow path: find the malformed records, fail on the first or skip them all.
    fn decode_json_one_by_one<'a>(
        &self,
        topic: &str,
        partition: i32,
        records: &'a [RawRecord],
    ) -> Result<(Vec<ArrayRef>, Vec<&'a RawRecord>, u64)> {
        let mut kept = Vec::with_capacity(records.len());
        let mut skipped = 0;
        for record in records {
            match self.decode_json(std::iter::once(record)) {
                Ok(_) => kept.push(record),
                Err(message) => match self.on_malformed {
                    OnMalformed::Fail => {
                        return Err(Error::MalformedRecord {
                            topic: topic.to_string(),
                            partition,
                            offset: record.offset,
                            message,
                        })
                    }
                    OnMalformed::Skip => skipped += 1,
                },
            }
        }
        let batch =
            self.decode_json(kept.iter().copied())
                .map_err(|message| Error::MalformedRecord {
                    topic: topic.to_string(),
                    partition,
                    offset: kept.first().map(|r| r.offset).unwrap_or(-1),
                    message,
                })?;
        Ok((batch.columns().to_vec(), kept, skipped))
    }
}

fn metadata_columns(topic: &str, partition: i32, records: &[&RawRecord]) -> Vec<ArrayRef> {
    let n = records.len();
    vec![
        Arc::new(StringArray::from(vec![topic; n])),
        Arc::new(Int32Array::from(vec![partition; n])),
        Arc::new(Int64Array::from_iter_values(
            records.iter().map(|r| r.offset),
        )),
        Arc::new(TimestampMillisecondArray::from_iter(
            records.iter().map(|r| r.timestamp_ms),
        )),
        Arc::new(BinaryArray::from_iter(
            records.iter().map(|r| r.key.as_deref()),
        )),
    ]
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};

    use super::*;
    use crate::spec::{FieldSpec, StartingOffsets};

    fn spec(format: RecordFormat, on_malformed: OnMalformed) -> KafkaSourceSpec {
        let field = |name: &str, ty: &str| FieldSpec {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
            fields: vec![],
        };
        KafkaSourceSpec {
            bootstrap_servers: "b".into(),
            topics: vec!["t".into()],
            starting_offsets: StartingOffsets::Earliest,
            max_offsets_per_trigger: None,
            format,
            schema: if format == RecordFormat::Json {
                vec![
                    field("id", "int64"),
                    field("amount", "float64"),
                    field("name", "utf8"),
                ]
            } else {
                vec![]
            },
            on_malformed,
            fail_on_data_loss: true,
        }
    }

    fn record(offset: i64, value: &str) -> RawRecord {
        RawRecord {
            offset,
            timestamp_ms: Some(1_700_000_000_000 + offset),
            key: Some(format!("k{offset}").into_bytes()),
            value: Some(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn json_records_decode_with_metadata_columns() {
        let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
        let records = vec![
            record(7, r#"{"id": 1, "amount": 2.5, "name": "a", "extra": true}"#),
            record(8, r#"{"id": 2, "name": null}"#),
        ];
        let decoded = decoder.decode("t", 3, &records).unwrap();
        let batch = decoded.batch;
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), decoder.schema());
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(ids.values(), &[1, 2]);
        let amounts = batch
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!(amounts.value(0), 2.5);
        assert!(amounts.is_null(1));
        let offsets = batch
            .column_by_name("_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(offsets.values(), &[7, 8]);
        let partitions = batch.column_by_name("_partition").unwrap();
        assert_eq!(
            partitions
                .as_primitive::<arrow::datatypes::Int32Type>()
                .value(1),
            3
        );
        let keys = batch.column_by_name("_key").unwrap().as_binary::<i32>();
        assert_eq!(keys.value(1), b"k8");
        assert_eq!(
            batch
                .column_by_name("_topic")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "t"
        );
    }

    #[test]
    fn malformed_record_fails_naming_its_coordinates() {
        let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
        for bad in [
            r#"{"id": 1"#,
            "not json",
            r#"{"id": "abc"}"#,
            r#"{"id": 1} {"id": 2}"#,
        ] {
            let records = vec![
                record(10, r#"{"id": 1}"#),
                record(11, bad),
                record(12, r#"{"id": 3}"#),
            ];
            match decoder.decode("orders", 2, &records) {
                Err(Error::MalformedRecord {
                    topic,
                    partition,
                    offset,
                    ..
                }) => {
                    assert_eq!(
                        (topic.as_str(), partition, offset),
                        ("orders", 2, 11),
                        "{bad}"
                    );
                }
                other => panic!("{bad}: expected a malformed record error, got {other:?}"),
            }
        }
    }

    #[test]
    fn skipped_malformed_records_are_counted() {
        let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Skip)).unwrap();
        let mut tombstone = record(12, "");
        tombstone.value = None;
        let records = vec![
            record(10, r#"{"id": 1}"#),
            record(11, "{oops"),
            tombstone,
            record(13, r#"{"id": 4}"#),
        ];
        let decoded = decoder.decode("t", 0, &records).unwrap();
        assert_eq!(decoded.malformed_skipped, 2);
        let offsets = decoded
            .batch
            .column_by_name("_offset")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(offsets.values(), &[10, 13]);
    }

    #[test]
    fn raw_records_keep_their_bytes() {
        let decoder = RecordDecoder::new(&spec(RecordFormat::Raw, OnMalformed::Fail)).unwrap();
        let decoded = decoder
            .decode("t", 0, &[record(0, "\u{1}anything")])
            .unwrap();
        let values = decoded
            .batch
            .column_by_name("value")
            .unwrap()
            .as_binary::<i32>();
        assert_eq!(values.value(0), b"\x01anything");
    }

    #[test]
    fn no_records_make_an_empty_batch() {
        let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
        let decoded = decoder.decode("t", 0, &[]).unwrap();
        assert_eq!(decoded.batch.num_rows(), 0);
        assert_eq!(decoded.batch.schema(), decoder.schema());
    }
}
