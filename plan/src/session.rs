//! Session windows as SQL: a session job's `source` is a view over the stream that gives
//! every row its session's `window_start` (the session's first event time) and `window_end`
//! (its last event time plus the gap). Rows of one key in event-time order belong to one
//! session while each follows the previous by less than the gap. The window functions'
//! `PARTITION BY` makes a key's rows meet in one task after a shuffle; that stage keeps the
//! rows of open sessions as state (see docs/architecture.md, "Session windows").

use sluice_core::error::{Error, Result};
use sluice_core::schema::{stream_schema, OFFSET_COLUMN, PARTITION_COLUMN, TOPIC_COLUMN};
use sluice_core::spec::{KafkaSourceSpec, SessionSpec, WINDOW_END_COLUMN, WINDOW_START_COLUMN};

use crate::quote;
use crate::STREAM_TABLE;

/// Marks a row that starts a session (its predecessor is a gap or more before it).
const STARTS_COLUMN: &str = "_sluice_session_starts";
/// Marks a row that ends a session (its successor is a gap or more after it).
const ENDS_COLUMN: &str = "_sluice_session_ends";

/// The view's SQL: every stream column, and the row's session bounds as millisecond
/// timestamps.
pub fn sessions_sql(kafka: &KafkaSourceSpec, session: &SessionSpec) -> Result<String> {
    let event_time = kafka
        .watermark
        .as_ref()
        .map(|w| quote(&w.column))
        .ok_or_else(|| Error::spec("source.kafka.session", "needs source.kafka.watermark"))?;
    let gap = format!("INTERVAL '{} milliseconds'", session.gap_ms()?);
    let columns = stream_schema(kafka)?
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
