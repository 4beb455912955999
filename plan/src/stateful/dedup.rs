//! Deduplication as SQL: a deduplicating job's `source` is a view over the stream that
//! keeps the first row of each key. Rows of keys seen in earlier batches (the job's state,
//! marked by [`SEEN_COLUMN`]) rank first and are then dropped, so a key passes once over
//! the whole stream; among a batch's new rows the one with the earliest event time (then
//! topic, partition, offset) passes. The window function's `PARTITION BY` makes rows with
//! the same key meet in one task after a shuffle. See docs/architecture.md,
//! "Deduplication".

use std::sync::Arc;

use arrow::array::RecordBatch;
use sluice_core::error::{Error, Result};
use sluice_core::schema::{
    stream_schema, OFFSET_COLUMN, PARTITION_COLUMN, SEEN_COLUMN, TOPIC_COLUMN,
};
use sluice_core::spec::{
    DedupSpec, EventTime, KafkaSourceSpec, WindowSpec, WINDOW_END_COLUMN, WINDOW_START_COLUMN,
};

use super::keyed_files::{KeyedFiles, KnownKeys};
use crate::quote;
use crate::STREAM_TABLE;

/// The rank column the view filters on.
const RANK_COLUMN: &str = "_sluice_rank";

/// The view's SQL: every `source` column of the first row per key among rows not seen
/// before, and for a windowed job each such row once per window it falls in.
pub fn first_row_per_key_sql(
    kafka: &KafkaSourceSpec,
    stateful: EventTime,
    dedup: &DedupSpec,
) -> Result<String> {
    let event_time = stateful
        .watermark
        .map(|w| w.column.as_str())
        .ok_or_else(|| Error::spec("dedup", "needs source.watermark"))?;
    let columns = stream_schema(kafka, stateful)?
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
    let first_rows = format!(
        "SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS {rank} FROM {input}) \
         WHERE {rank} = 1 AND NOT {seen}",
        rank = quote(RANK_COLUMN),
        input = quote(STREAM_TABLE),
        seen = quote(SEEN_COLUMN),
    );
    match stateful.window {
        Some(window) => with_windows_sql(&first_rows, &columns, event_time, window),
        None => Ok(first_rows),
    }
}

/// The window column the view unnests, before it becomes `window_start`.
const WINDOW_COLUMN: &str = "_sluice_window";

/// `rows` (a query selecting `columns`) with each row repeated once per fixed window its
/// event time falls in (one when tumbling, `size / slide` when sliding), with the window's
/// `window_start` and `window_end`: what decoding gives a stream that is not deduplicated.
fn with_windows_sql(
    rows: &str,
    columns: &str,
    event_time: &str,
    window: &WindowSpec,
) -> Result<String> {
    let (size, slide) = (window.size_ms()?, window.slide_ms()?);
    let slide_interval = format!("INTERVAL '{slide} milliseconds'");
    let last_start = format!(
        "date_bin({slide_interval}, {}, TIMESTAMP '1970-01-01T00:00:00')",
        quote(event_time)
    );
    let millis = |expr: String| format!("arrow_cast({expr}, 'Timestamp(Millisecond, None)')");
    Ok(format!(
        "SELECT {columns}, {start} AS {window_start}, {end} AS {window_end} FROM \
         (SELECT {columns}, unnest(generate_series({last_start} - INTERVAL '{earlier} milliseconds', {last_start}, {slide_interval})) AS {w} FROM ({rows}))",
        start = millis(quote(WINDOW_COLUMN)),
        end = millis(format!("{} + INTERVAL '{size} milliseconds'", quote(WINDOW_COLUMN))),
        earlier = size - slide,
        w = quote(WINDOW_COLUMN),
        window_start = quote(WINDOW_START_COLUMN),
        window_end = quote(WINDOW_END_COLUMN),
    ))
}

/// Deduplication's lookup as the reader of the stream stage's output does it: the key
/// columns and where the remembered keys are.
#[derive(Debug, Clone)]
pub struct DedupLookup {
    pub key: Vec<String>,
    pub remembered: Arc<dyn KeyedFiles>,
}

impl DedupLookup {
    /// The rows of `batches` whose key `partition` does not remember, looked up one state
    /// file at a time; no file is loaded once no row is left to look up.
    pub async fn unknown(
        &self,
        partition: u32,
        mut batches: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        for index in 0..self.remembered.files(partition) {
            if batches.iter().all(|b| b.num_rows() == 0) {
                break;
            }
            let rows = self.remembered.load(partition, index).await?;
            if let Some(known) = KnownKeys::of(&self.key, &rows)? {
                batches = batches
                    .iter()
                    .map(|b| known.unknown(b))
                    .collect::<Result<_>>()?;
            }
        }
        Ok(batches)
    }
}
