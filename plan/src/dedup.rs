//! Deduplication as SQL: a deduplicating job's `source` is a view over the stream that
//! keeps the first row of each key. Rows of keys seen in earlier batches (the job's state,
//! marked by [`SEEN_COLUMN`]) rank first and are then dropped, so a key passes once over
//! the whole stream; among a batch's new rows the one with the earliest event time (then
//! topic, partition, offset) passes. The window function's `PARTITION BY` makes rows with
//! the same key meet in one task after a shuffle. See docs/architecture.md,
//! "Deduplication".

use sluice_core::error::{Error, Result};
use sluice_core::schema::{
    source_schema, OFFSET_COLUMN, PARTITION_COLUMN, SEEN_COLUMN, TOPIC_COLUMN,
};
use sluice_core::spec::{DedupSpec, KafkaSourceSpec};

use crate::quote;
use crate::STREAM_TABLE;

/// The rank column the view filters on.
const RANK_COLUMN: &str = "_sluice_rank";

/// The view's SQL: every `source` column of the first row per key among rows not seen
/// before.
pub fn first_row_per_key_sql(kafka: &KafkaSourceSpec, dedup: &DedupSpec) -> Result<String> {
    let event_time = kafka
        .watermark
        .as_ref()
        .map(|w| w.column.as_str())
        .ok_or_else(|| Error::spec("source.kafka.dedup", "needs source.kafka.watermark"))?;
    let columns = source_schema(kafka)?
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let key = dedup
        .key
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let order = [
        format!("{} DESC", quote(SEEN_COLUMN)),
        format!("{} ASC NULLS LAST", quote(event_time)),
        quote(TOPIC_COLUMN),
        quote(PARTITION_COLUMN),
        quote(OFFSET_COLUMN),
    ]
    .join(", ");
    Ok(format!(
        "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS {rank} FROM {input}) \
         WHERE {rank} = 1 AND NOT {seen}",
        rank = quote(RANK_COLUMN),
        input = quote(STREAM_TABLE),
        seen = quote(SEEN_COLUMN),
    ))
}
