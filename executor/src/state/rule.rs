//! Which rows a stateful job keeps between batches, and which records are late.
//!
//! - Windows: a record is on time while its window is open (the watermark has not passed
//!   the window's end); the rows of open windows are the state.
//! - Deduplication: a record is on time while its event time is not below the watermark;
//!   the rows of keys still remembered (event time plus `within` not below the watermark)
//!   are the state, read back marked seen so the query's view drops them; kept after the
//!   shuffle, by the stage where the deduplicating window function meets a key's rows,
//!   when the plan has one (see `sluice_plan::shuffle_state`).
//! - Sessions: a record is on time while its event time is not below the watermark (so
//!   no record can join a session already written); the rows of open sessions are the
//!   state, picked after the shuffle ([`crate::state::sessions`]), not by source tasks.
//!
//! See docs/architecture.md, "Windows" and "Deduplication".

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema};
use sluice_core::schema::{SEEN_COLUMN, WINDOW_END_COLUMN};
use sluice_core::{Error, Result};
use sluice_kafka::decode::millis;

use sluice_plan::stateful::StatefulOperator;

#[cfg(doc)]
use super::sessions::Sessions;

/// Which rows a stateful operator keeps and which records are late: its rule, by
/// [`StatefulOperator`]'s kind.
pub trait StateRule {
    /// A batch's new records split into the on-time rows, ready for the query, and the
    /// late ones (including those without an event time), which the query never sees.
    fn split_late(
        &self,
        batch: &RecordBatch,
        watermark_ms: Option<i64>,
    ) -> Result<(RecordBatch, RecordBatch)>;

    /// The rows of `batch` (new or state) the next batch still needs: every on-time row
    /// of a batch's new records (an open window; an event time not below the watermark),
    /// and the state rows the watermark has not yet passed. State kept by source tasks, and
    /// deduplication's after the shuffle.
    fn still_needed(&self, batch: &RecordBatch, watermark_ms: Option<i64>) -> Result<RecordBatch>;

    /// The watermarks at which the first and the last of `batches`' rows stop being state
    /// (see `sluice_iceberg::data_files::StateFileStats`): a window's end, a remembered
    /// key's event time plus `within` and one. Sessions' follow from their sessions
    /// ([`Sessions::open_rows`]), not from a row alone; this spans all watermarks.
    fn lifetime(&self, batches: &[RecordBatch]) -> Result<(i64, i64)>;

    /// A state file's rows as the query gets them.
    fn read_back(&self, batch: RecordBatch) -> Result<RecordBatch>;
}

impl StateRule for StatefulOperator {
    fn split_late(
        &self,
        batch: &RecordBatch,
        watermark_ms: Option<i64>,
    ) -> Result<(RecordBatch, RecordBatch)> {
        let on_time = match self {
            StatefulOperator::Windows => window_mask(batch, watermark_ms, true)?,
            StatefulOperator::Dedup { event_time, .. }
            | StatefulOperator::Sessions { event_time, .. } => {
                time_mask(time_column(batch, event_time)?, |ms| {
                    watermark_ms.is_none_or(|w| ms >= w)
                })?
            }
        };
        let late = filter_record_batch(batch, &arrow::compute::not(&on_time)?)?;
        let on_time = filter_record_batch(batch, &on_time)?;
        let on_time = match self {
            StatefulOperator::Windows | StatefulOperator::Sessions { .. } => on_time,
            StatefulOperator::Dedup { .. } => with_seen(&on_time, false)?,
        };
        Ok((on_time, late))
    }

    fn still_needed(&self, batch: &RecordBatch, watermark_ms: Option<i64>) -> Result<RecordBatch> {
        match self {
            StatefulOperator::Windows => select_windows(batch, watermark_ms, true),
            StatefulOperator::Sessions { .. } => Err(Error::InvalidRequest(
                "session state is kept after the shuffle, not by source tasks".into(),
            )),
            StatefulOperator::Dedup {
                event_time,
                within_ms,
                ..
            } => select_by_time(batch, event_time, |ms| {
                watermark_ms.is_none_or(|w| ms.saturating_add(*within_ms) >= w)
            }),
        }
    }

    fn lifetime(&self, batches: &[RecordBatch]) -> Result<(i64, i64)> {
        let (column, after) = match self {
            StatefulOperator::Windows => (WINDOW_END_COLUMN, 0),
            StatefulOperator::Dedup {
                event_time,
                within_ms,
                ..
            } => (event_time.as_str(), within_ms.saturating_add(1)),
            StatefulOperator::Sessions { .. } => return Ok((i64::MIN, i64::MAX)),
        };
        let mut span: Option<(i64, i64)> = None;
        for batch in batches {
            let times = millis(time_column(batch, column)?)?;
            for time in times.iter().flatten() {
                let at = time.saturating_add(after);
                span = Some(span.map_or((at, at), |(from, until)| (from.min(at), until.max(at))));
            }
        }
        Ok(span.unwrap_or((i64::MAX, i64::MAX)))
    }

    fn read_back(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self {
            StatefulOperator::Windows | StatefulOperator::Sessions { .. } => Ok(batch),
            StatefulOperator::Dedup { .. } => with_seen(&batch, true),
        }
    }
}

/// The rows of `batch` whose window ends after `watermark_ms` (`keep_open`), or at or
/// before it (the complement). Rows without a window are dropped either way. Without a
/// watermark every window is open.
pub fn select_windows(
    batch: &RecordBatch,
    watermark_ms: Option<i64>,
    keep_open: bool,
) -> Result<RecordBatch> {
    Ok(filter_record_batch(
        batch,
        &window_mask(batch, watermark_ms, keep_open)?,
    )?)
}

/// Which rows of `batch` have a window still open (`keep_open`) or closed by
/// `watermark_ms`; rows without a window are neither.
fn window_mask(
    batch: &RecordBatch,
    watermark_ms: Option<i64>,
    keep_open: bool,
) -> Result<BooleanArray> {
    let end = time_column(batch, WINDOW_END_COLUMN)?;
    match keep_open {
        true => time_mask(end, |end| watermark_ms.is_none_or(|w| end > w)),
        false => time_mask(end, |end| watermark_ms.is_some_and(|w| end <= w)),
    }
}

/// `batch`'s timestamp column `name`.
fn time_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::InvalidRequest(format!("no time column {name}")))
}

/// Which rows of a timestamp column hold a time `keep` accepts (nulls never do).
fn time_mask(column: &arrow::array::ArrayRef, keep: impl Fn(i64) -> bool) -> Result<BooleanArray> {
    let times = millis(column)?;
    Ok((0..times.len())
        .map(|i| Some(times.is_valid(i) && keep(times.value(i))))
        .collect())
}

/// The rows of `batch` with an event time in `column` that `keep` accepts.
fn select_by_time(
    batch: &RecordBatch,
    column: &str,
    keep: impl Fn(i64) -> bool,
) -> Result<RecordBatch> {
    Ok(filter_record_batch(
        batch,
        &time_mask(time_column(batch, column)?, keep)?,
    )?)
}

/// `batch` with [`SEEN_COLUMN`] set to `seen` on every row (added when absent).
fn with_seen(batch: &RecordBatch, seen: bool) -> Result<RecordBatch> {
    let mut fields: Vec<Arc<Field>> = vec![];
    let mut columns = vec![];
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.name() != SEEN_COLUMN {
            fields.push(field.clone());
            columns.push(column.clone());
        }
    }
    fields.push(Arc::new(Field::new(SEEN_COLUMN, DataType::Boolean, false)));
    columns.push(Arc::new(BooleanArray::from(vec![seen; batch.num_rows()])));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{Int64Type, TimeUnit};

    use super::*;

    /// Rows `n` = 1..=4 with `column` = 10, 20, null, 30 (ms).
    pub(crate) fn batch(column: &str) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(
                column,
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(10),
                    Some(20),
                    None,
                    Some(30),
                ])),
            ],
        )
        .unwrap()
    }

    fn ns(batch: &RecordBatch) -> Vec<i64> {
        batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>()
            .values()
            .to_vec()
    }

    fn seen(batch: &RecordBatch) -> Vec<bool> {
        let seen = batch.column_by_name(SEEN_COLUMN).unwrap().as_boolean();
        (0..seen.len()).map(|i| seen.value(i)).collect()
    }

    #[test]
    fn windows_are_open_until_the_watermark_reaches_their_end() {
        let b = batch(WINDOW_END_COLUMN);
        assert_eq!(ns(&select_windows(&b, Some(20), true).unwrap()), vec![4]);
        assert_eq!(
            ns(&select_windows(&b, Some(20), false).unwrap()),
            vec![1, 2]
        );
        assert_eq!(ns(&select_windows(&b, None, true).unwrap()), vec![1, 2, 4]);
        assert!(ns(&select_windows(&b, None, false).unwrap()).is_empty());
        let rule = StatefulOperator::Windows;
        let (on_time, late) = rule.split_late(&b, Some(20)).unwrap();
        assert_eq!((ns(&on_time), ns(&late)), (vec![4], vec![1, 2, 3]));
        assert_eq!(ns(&rule.still_needed(&b, Some(20)).unwrap()), vec![4]);
    }

    #[test]
    fn dedup_drops_records_below_the_watermark_and_remembers_keys_for_within_longer() {
        let rule = StatefulOperator::Dedup {
            key: vec![],
            event_time: "ts".into(),
            within_ms: 15,
        };
        let b = batch("ts");
        let (on_time, late) = rule.split_late(&b, Some(20)).unwrap();
        assert_eq!(ns(&on_time), vec![2, 4]);
        assert_eq!(ns(&late), vec![1, 3], "10 is late, null has no event time");
        assert_eq!(seen(&on_time), vec![false, false]);
        // Remembered while ts + 15 >= watermark: 10 until 25, 20 until 35, 30 until 45.
        assert_eq!(ns(&rule.still_needed(&b, Some(25)).unwrap()), vec![1, 2, 4]);
        assert_eq!(ns(&rule.still_needed(&b, Some(36)).unwrap()), vec![4]);
        let state = rule.read_back(on_time).unwrap();
        assert_eq!(seen(&state), vec![true, true]);
        assert_eq!(
            state.num_columns(),
            3,
            "the seen column is replaced, not added twice"
        );
        assert_eq!(
            ns(&rule.split_late(&b, None).unwrap().0),
            vec![1, 2, 4],
            "without a watermark only records without an event time are late"
        );
    }

    #[test]
    fn a_state_files_lifetime_spans_the_watermarks_at_which_its_rows_stop_being_state() {
        let windows = batch(WINDOW_END_COLUMN);
        let rule = StatefulOperator::Windows;
        assert_eq!(
            rule.lifetime(std::slice::from_ref(&windows)).unwrap(),
            (10, 30)
        );
        // A window ending at 10 is state while the watermark is below 10.
        assert_eq!(ns(&rule.still_needed(&windows, Some(9)).unwrap())[0], 1);
        assert!(!ns(&rule.still_needed(&windows, Some(10)).unwrap()).contains(&1));
        let dedup = StatefulOperator::Dedup {
            key: vec![],
            event_time: "ts".into(),
            within_ms: 15,
        };
        let keys = batch("ts");
        assert_eq!(
            dedup.lifetime(std::slice::from_ref(&keys)).unwrap(),
            (26, 46)
        );
        // A key seen at 10 is remembered while the watermark is at most 25.
        assert!(ns(&dedup.still_needed(&keys, Some(25)).unwrap()).contains(&1));
        assert!(!ns(&dedup.still_needed(&keys, Some(26)).unwrap()).contains(&1));
        assert_eq!(rule.lifetime(&[]).unwrap(), (i64::MAX, i64::MAX));
    }
}
