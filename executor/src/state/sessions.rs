//! Which rows of a session job are state: the rows of sessions the watermark has not yet
//! closed. A session is a run of one key's rows, in event-time order, each less than the
//! gap after the previous; it closes when the watermark reaches its last event time plus
//! the gap (its `window_end`, as `plan/src/session.rs` computes it in SQL). Picked after the
//! shuffle, where all rows of a key meet. See docs/architecture.md, "Session windows".

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};
use sluice_core::{Error, Result};
use sluice_kafka::decode::millis;
use sluice_plan::stateful::StatefulOperator;

/// How a session job's rows form sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    pub event_time: String,
    pub gap_ms: i64,
    pub key: Vec<String>,
}

impl Sessions {
    /// The sessions of a session job's operator; `None` for another operator.
    pub fn of(operator: &StatefulOperator) -> Option<Sessions> {
        match operator {
            StatefulOperator::Sessions {
                key,
                event_time,
                gap_ms,
            } => Some(Sessions {
                event_time: event_time.clone(),
                gap_ms: *gap_ms,
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// The rows of `candidates` whose session is still open under `watermark_ms` (every
    /// session without a watermark), sessions taken over `candidates` and `context` (other
    /// rows of their keys, which are not returned); rows without an event time belong to
    /// no session.
    pub fn open_rows(
        &self,
        schema: &SchemaRef,
        candidates: &[RecordBatch],
        context: &[RecordBatch],
        watermark_ms: Option<i64>,
    ) -> Result<OpenSessions> {
        let candidate_rows: usize = candidates.iter().map(RecordBatch::num_rows).sum();
        let batch = concat_batches(schema, candidates.iter().chain(context))?;
        let column = |name: &str| {
            batch.column_by_name(name).cloned().ok_or_else(|| {
                Error::InvalidRequest(format!("the session stage's rows lack column {name}"))
            })
        };
        let times = millis(&column(&self.event_time)?)?;
        let keys = self
            .key
            .iter()
            .map(|name| column(name))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = KeyRows::of(&keys)?;
        let mut order: Vec<usize> = (0..batch.num_rows())
            .filter(|&i| times.is_valid(i))
            .collect();
        order.sort_unstable_by(|&a, &b| {
            keys.cmp(a, b)
                .then_with(|| times.value(a).cmp(&times.value(b)))
        });
        let mut keep = vec![false; candidate_rows];
        let mut ends: Option<(i64, i64)> = None;
        let mut first = 0;
        for i in 1..=order.len() {
            let last = order[i - 1];
            let ends_here = i == order.len()
                || keys.cmp(last, order[i]) != Ordering::Equal
                || times.value(order[i]) >= times.value(last).saturating_add(self.gap_ms);
            if !ends_here {
                continue;
            }
            let end = times.value(last).saturating_add(self.gap_ms);
            if watermark_ms.is_none_or(|w| end > w) {
                for &row in order[first..i].iter().filter(|&&row| row < candidate_rows) {
                    keep[row] = true;
                    ends = Some(ends.map_or((end, end), |(lo, hi)| (lo.min(end), hi.max(end))));
                }
            }
            first = i;
        }
        let candidates = batch.slice(0, candidate_rows);
        Ok(OpenSessions {
            rows: filter_record_batch(&candidates, &BooleanArray::from(keep))?,
            ends: ends.unwrap_or((i64::MAX, i64::MAX)),
        })
    }
}

/// The rows of open sessions, and the earliest and latest end of their sessions: the
/// watermarks at which the first and the last of them may stop being state (later, when
/// more rows extend a session).
#[derive(Debug)]
pub struct OpenSessions {
    pub rows: RecordBatch,
    pub ends: (i64, i64),
}

/// The session key of each row, comparable (no key: every row has the same).
struct KeyRows(Option<Rows>);

impl KeyRows {
    fn of(columns: &[ArrayRef]) -> Result<KeyRows> {
        if columns.is_empty() {
            return Ok(KeyRows(None));
        }
        let converter = RowConverter::new(
            columns
                .iter()
                .map(|c| SortField::new(c.data_type().clone()))
                .collect(),
        )?;
        Ok(KeyRows(Some(converter.convert_columns(columns)?)))
    }

    fn cmp(&self, a: usize, b: usize) -> Ordering {
        match &self.0 {
            Some(rows) => rows.row(a).cmp(&rows.row(b)),
            None => Ordering::Equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};

    use super::*;

    /// Rows `n` of users a and b at event times (ms).
    fn rows(rows: &[(i64, &str, Option<i64>)]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("user", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(TimestampMillisecondArray::from_iter(
                    rows.iter().map(|r| r.2),
                )),
            ],
        )
        .unwrap()
    }

    fn kept(sessions: &Sessions, batches: &[RecordBatch], watermark: Option<i64>) -> Vec<i64> {
        let open = sessions
            .open_rows(&batches[0].schema(), batches, &[], watermark)
            .unwrap();
        let mut ns = open
            .rows
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        ns.sort_unstable();
        ns
    }

    #[test]
    fn a_session_is_state_until_the_watermark_reaches_its_last_time_plus_the_gap() {
        let sessions = Sessions {
            event_time: "ts".into(),
            gap_ms: 10,
            key: vec!["user".into()],
        };
        // a: 0, 5, 14 (one session, ends 24), then 30 (ends 40); b: 12 (ends 22).
        // Split over two batches and out of order.
        let batches = [
            rows(&[(1, "a", Some(14)), (2, "b", Some(12)), (3, "a", Some(0))]),
            rows(&[(4, "a", Some(30)), (5, "a", Some(5)), (6, "a", None)]),
        ];
        assert_eq!(kept(&sessions, &batches, Some(21)), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            kept(&sessions, &batches, Some(22)),
            vec![1, 3, 4, 5],
            "b's session ends at 22"
        );
        assert_eq!(
            kept(&sessions, &batches, Some(24)),
            vec![4],
            "a's first session (0, 5, 14) is closed; 14 alone would look open"
        );
        assert!(kept(&sessions, &batches, Some(40)).is_empty());
        assert_eq!(
            kept(&sessions, &batches, None).len(),
            5,
            "a row without an event time is in no session"
        );
    }

    #[test]
    fn rows_of_the_same_keys_elsewhere_decide_a_session_but_are_not_returned() {
        let sessions = Sessions {
            event_time: "ts".into(),
            gap_ms: 10,
            key: vec!["user".into()],
        };
        // a at 0 alone would close at 10; a at 8 elsewhere extends it to 18.
        let candidates = [rows(&[(1, "a", Some(0)), (2, "b", Some(3))])];
        let context = [rows(&[(3, "a", Some(8))])];
        let schema = candidates[0].schema();
        let open = sessions
            .open_rows(&schema, &candidates, &context, Some(13))
            .unwrap();
        let ns = open
            .rows
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ns, vec![1], "b's session ends at 13, a's at 18");
        assert_eq!(open.ends, (18, 18));
        let none = sessions
            .open_rows(&schema, &candidates, &context, Some(18))
            .unwrap();
        assert_eq!((none.rows.num_rows(), none.ends), (0, (i64::MAX, i64::MAX)));
        let all = sessions
            .open_rows(&schema, &candidates, &context, None)
            .unwrap();
        assert_eq!(all.ends, (13, 18));
    }

    #[test]
    fn without_a_key_all_rows_form_the_sessions() {
        let sessions = Sessions {
            event_time: "ts".into(),
            gap_ms: 10,
            key: vec![],
        };
        let batches = [rows(&[
            (1, "a", Some(0)),
            (2, "b", Some(8)),
            (3, "a", Some(30)),
        ])];
        assert_eq!(kept(&sessions, &batches, Some(17)), vec![1, 2, 3]);
        assert_eq!(kept(&sessions, &batches, Some(18)), vec![3]);
    }
}
