//! Late records of a stateful job, for the dead-letter table
//! (`source.watermark.late: dead_letter`): each dropped row becomes a dead letter
//! with its Kafka coordinates, its value (the decoded columns as JSON, or the raw bytes of
//! a `raw` source) and why it was dropped. A record repeated once per sliding window is
//! written once.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type};
use sluice_core::schema::{
    KEY_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN, RAW_VALUE_COLUMN, TIMESTAMP_COLUMN, TOPIC_COLUMN,
};
use sluice_core::{Error, Result};
use sluice_kafka::decode::{millis, DeadLetter, RawRecord};

/// Dead letters for the late rows in `batches`; `value_columns` are the decoded columns
/// (the source's value schema) and `watermark_ms` the watermark they were late for.
pub fn late_dead_letters(
    batches: &[RecordBatch],
    value_columns: &[String],
    watermark_ms: Option<i64>,
) -> Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    let mut seen = HashSet::new();
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| Error::InvalidRequest(format!("late rows lack column {name}")))
        };
        let topics = column(TOPIC_COLUMN)?.as_string::<i32>();
        let partitions = column(PARTITION_COLUMN)?.as_primitive::<Int32Type>();
        let offsets = column(OFFSET_COLUMN)?.as_primitive::<Int64Type>();
        let timestamps = millis(column(TIMESTAMP_COLUMN)?)?;
        let keys = column(KEY_COLUMN)?.as_binary::<i32>();
        let values = row_values(batch, value_columns)?;
        for (row, value) in values.into_iter().enumerate() {
            let coordinates = (topics.value(row), partitions.value(row), offsets.value(row));
            if !seen.insert(coordinates) {
                continue;
            }
            letters.push(DeadLetter {
                topic: coordinates.0.to_string(),
                partition: coordinates.1,
                record: RawRecord {
                    offset: coordinates.2,
                    timestamp_ms: timestamps.is_valid(row).then(|| timestamps.value(row)),
                    key: keys.is_valid(row).then(|| keys.value(row).to_vec()),
                    value: Some(value),
                },
                error: match watermark_ms {
                    Some(w) => format!("late: its event time is before the watermark ({w} ms) or has no window left open"),
                    None => "late: it has no event time".into(),
                },
            });
        }
    }
    Ok(letters)
}

/// Each row's value: the raw bytes of a `raw` source, else its decoded columns as one
/// JSON object.
fn row_values(batch: &RecordBatch, value_columns: &[String]) -> Result<Vec<Vec<u8>>> {
    if let [only] = value_columns {
        if only == RAW_VALUE_COLUMN {
            let raw = batch
                .column_by_name(RAW_VALUE_COLUMN)
                .filter(|c| c.data_type() == &DataType::Binary)
                .ok_or_else(|| Error::InvalidRequest("late rows lack their raw value".into()))?
                .as_binary::<i32>();
            return Ok((0..raw.len())
                .map(|i| {
                    if raw.is_valid(i) {
                        raw.value(i).to_vec()
                    } else {
                        Vec::new()
                    }
                })
                .collect());
        }
    }
    let indices = value_columns
        .iter()
        .map(|name| batch.schema().index_of(name))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let values = batch.project(&indices)?;
    let mut json = arrow::json::LineDelimitedWriter::new(Vec::new());
    json.write(&values)?;
    json.finish()?;
    let text = json.into_inner();
    Ok(text
        .split(|b| *b == b'\n')
        .take(batch.num_rows())
        .map(<[u8]>::to_vec)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        BinaryArray, Int32Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    #[test]
    fn late_rows_become_dead_letters_once_each_with_their_values_as_json() {
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        let schema = Schema::new(vec![
            Field::new("order_id", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
            Field::new(TOPIC_COLUMN, DataType::Utf8, false),
            Field::new(PARTITION_COLUMN, DataType::Int32, false),
            Field::new(OFFSET_COLUMN, DataType::Int64, false),
            Field::new(TIMESTAMP_COLUMN, ms, true),
            Field::new(KEY_COLUMN, DataType::Binary, true),
        ]);
        // Offset 7 twice: one record in two sliding windows.
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["a", "a", "b"])),
                Arc::new(arrow::array::Float64Array::from(vec![1.5, 1.5, 2.0])),
                Arc::new(StringArray::from(vec!["t", "t", "t"])),
                Arc::new(Int32Array::from(vec![3, 3, 3])),
                Arc::new(Int64Array::from(vec![7, 7, 9])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(5),
                    Some(5),
                    None,
                ])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"k"[..]),
                    Some(&b"k"[..]),
                    None,
                ])),
            ],
        )
        .unwrap();
        let columns = ["order_id".to_string(), "amount".to_string()];
        let letters = late_dead_letters(&[batch], &columns, Some(100)).unwrap();
        assert_eq!(letters.len(), 2);
        assert_eq!(
            (
                letters[0].topic.as_str(),
                letters[0].partition,
                letters[0].record.offset
            ),
            ("t", 3, 7)
        );
        assert_eq!(
            letters[0].record.value.as_deref(),
            Some(&br#"{"order_id":"a","amount":1.5}"#[..])
        );
        assert_eq!(letters[0].record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(letters[1].record.timestamp_ms, None);
        assert!(
            letters[1].error.contains("watermark (100 ms)"),
            "{}",
            letters[1].error
        );
    }
}
