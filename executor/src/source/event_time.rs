//! Event time of decoded records, for the job's watermark: the highest event time a task
//! read per partition, and how many of its records are older than the batch's watermark.

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, TimeUnit};
use sluice_kafka::decode::millis;

/// What a batch of one partition's records says about event time.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EventTimeStats {
    /// The highest event time, ms since the epoch; `None` without any (all null or no rows).
    pub max_ms: Option<i64>,
    /// Records whose event time is below the watermark.
    pub late: u64,
}

/// Event-time statistics of `batch`'s `column` against `watermark_ms`. Records without an
/// event time (null) are neither counted late nor move the maximum.
pub fn event_time_stats(
    batch: &RecordBatch,
    column: &str,
    watermark_ms: Option<i64>,
) -> EventTimeStats {
    let Some(array) = batch.column_by_name(column) else {
        return EventTimeStats::default();
    };
    if !matches!(
        array.data_type(),
        DataType::Timestamp(TimeUnit::Millisecond | TimeUnit::Microsecond, _)
    ) {
        return EventTimeStats::default();
    }
    let Ok(millis) = millis(array) else {
        return EventTimeStats::default();
    };
    let mut stats = EventTimeStats::default();
    for ms in millis.iter().flatten() {
        stats.max_ms = Some(stats.max_ms.map_or(ms, |max| max.max(ms)));
        if watermark_ms.is_some_and(|w| ms < w) {
            stats.late += 1;
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, TimestampMicrosecondArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(column: Arc<dyn Array>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("ts", column.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    #[test]
    fn the_highest_event_time_and_records_below_the_watermark() {
        let ms = batch(Arc::new(TimestampMillisecondArray::from(vec![
            Some(5_000),
            None,
            Some(9_000),
            Some(1_000),
        ])));
        assert_eq!(
            event_time_stats(&ms, "ts", Some(5_000)),
            EventTimeStats {
                max_ms: Some(9_000),
                late: 1
            }
        );
        assert_eq!(event_time_stats(&ms, "ts", None).late, 0);
        let us = batch(Arc::new(TimestampMicrosecondArray::from(vec![2_500_000])));
        assert_eq!(event_time_stats(&us, "ts", None).max_ms, Some(2_500));
        let empty = batch(Arc::new(TimestampMillisecondArray::from(Vec::<i64>::new())));
        assert_eq!(
            event_time_stats(&empty, "ts", Some(0)),
            EventTimeStats::default()
        );
    }
}
