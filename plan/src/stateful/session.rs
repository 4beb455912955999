//! Session windows as SQL: a session job's `source` is a view over the stream that gives
//! every row its session's `window_start` (the session's first event time) and `window_end`
//! (its last event time plus the gap). Rows of one key in event-time order belong to one
//! session while each follows the previous by less than the gap. The window functions'
//! `PARTITION BY` makes a key's rows meet in one task after a shuffle; that stage keeps the
//! rows of open sessions as state, and its reader adds to the fetched rows every row of
//! their keys ([`SessionLookup`]; see docs/architecture.md, "Session windows").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use sluice_core::error::{Error, Result};
use sluice_core::schema::{stream_schema, OFFSET_COLUMN, PARTITION_COLUMN, TOPIC_COLUMN};
use sluice_core::spec::{
    EventTime, KafkaSourceSpec, SessionSpec, WINDOW_END_COLUMN, WINDOW_START_COLUMN,
};

use super::keyed_files::{KeyedFiles, KnownKeys};
use crate::quote;
use crate::STREAM_TABLE;

/// Marks a row that starts a session (its predecessor is a gap or more before it).
const STARTS_COLUMN: &str = "_sluice_session_starts";
/// Marks a row that ends a session (its successor is a gap or more after it).
const ENDS_COLUMN: &str = "_sluice_session_ends";

/// The view's SQL: every stream column, and the row's session bounds as millisecond
/// timestamps.
pub fn sessions_sql(
    kafka: &KafkaSourceSpec,
    stateful: EventTime,
    session: &SessionSpec,
) -> Result<String> {
    let event_time = stateful
        .watermark
        .map(|w| quote(&w.column))
        .ok_or_else(|| Error::spec("session", "needs source.watermark"))?;
    let gap = format!("INTERVAL '{} milliseconds'", session.gap_ms()?);
    let columns = stream_schema(kafka, stateful)?
        .fields()
        .iter()
        .map(|f| quote(f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let partition = match session.key.is_empty() {
        true => String::new(),
        false => format!(
            "PARTITION BY {} ",
            session
                .key
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let order = format!(
        "{partition}ORDER BY {event_time}, {}, {}, {}",
        quote(TOPIC_COLUMN),
        quote(PARTITION_COLUMN),
        quote(OFFSET_COLUMN)
    );
    let millis = "'Timestamp(Millisecond, None)'";
    Ok(format!(
        "SELECT {columns}, \
           arrow_cast(max(CASE WHEN {starts} THEN {event_time} END) OVER ({order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW), {millis}) AS {start}, \
           arrow_cast(min(CASE WHEN {ends} THEN {event_time} END) OVER ({order} ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) + {gap}, {millis}) AS {end} \
         FROM (SELECT *, \
           coalesce(lag({event_time}) OVER ({order}) + {gap} <= {event_time}, true) AS {starts}, \
           coalesce(lead({event_time}) OVER ({order}) >= {event_time} + {gap}, true) AS {ends} \
           FROM {input})",
        starts = quote(STARTS_COLUMN),
        ends = quote(ENDS_COLUMN),
        start = quote(WINDOW_START_COLUMN),
        end = quote(WINDOW_END_COLUMN),
        input = quote(STREAM_TABLE),
    ))
}

/// Session state as the reader of the stream stage's output adds it: the rows of the
/// files a batch rewrites, whole, and from the partition's other files the rows of every
/// key those and the fetched rows have, so that each key the query sees comes with all
/// its rows. Which files are which is the executor's choice (see
/// `executor/src/state_deltas.rs`).
#[derive(Debug)]
pub struct SessionLookup {
    /// The session key (empty: all rows form the sessions together).
    pub key: Vec<String>,
    /// The rows of the files the batch rewrites, by shuffle partition.
    pub rewritten: HashMap<u32, Vec<RecordBatch>>,
    /// The partition's other files, looked up one at a time.
    pub others: Arc<dyn KeyedFiles>,
    /// The rows the reader found in `others`, by shuffle partition.
    pub looked_up: Mutex<HashMap<u32, Vec<RecordBatch>>>,
}

impl SessionLookup {
    /// The rows of `partition`'s other files with a key one of `fed` has, also kept in
    /// [`Self::looked_up`]. No file is loaded when `fed` has no row.
    pub async fn same_keys(&self, partition: u32, fed: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
        let mut found = vec![];
        if fed.iter().any(|b| b.num_rows() > 0) {
            let known = match self.key.is_empty() {
                true => None,
                false => KnownKeys::of(&self.key, fed)?,
            };
            for index in 0..self.others.files(partition) {
                let rows = self.others.load(partition, index).await?;
                for batch in rows.iter() {
                    let same = match &known {
                        Some(known) => known.known(batch)?,
                        None => batch.clone(),
                    };
                    if same.num_rows() > 0 {
                        found.push(same);
                    }
                }
            }
        }
        self.looked_up
            .lock()
            .expect("session lookup lock")
            .entry(partition)
            .or_default()
            .extend(found.iter().cloned());
        Ok(found)
    }

    /// The rows looked up in `partition`'s other files (taken).
    pub fn take_looked_up(&self, partition: u32) -> Vec<RecordBatch> {
        self.looked_up
            .lock()
            .expect("session lookup lock")
            .remove(&partition)
            .unwrap_or_default()
    }
}
