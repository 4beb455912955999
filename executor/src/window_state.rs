//! Windowed jobs' state between batches: the rows of windows not yet written, kept as
//! Parquet files next to the sink table. A batch reads the state the previous batch left
//! (listed in its checkpoint), runs the SQL over it and its own records, writes only the
//! windows the watermark has passed, and leaves the rows of the windows still open as the
//! next state. Late rows (their window already written) are dropped. See
//! docs/architecture.md, "Windows".

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use iceberg::io::FileIO;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use sluice_core::schema::WINDOW_END_COLUMN;
use sluice_core::{Error, Result};
use sluice_iceberg::data_files::STATE_DIR;
use sluice_kafka::decode::millis;

use crate::writer::to_table_batch;

/// The rows of `batch` whose window ends after `watermark_ms` (`keep_open`), or at or
/// before it (the complement). Rows without a window are dropped either way. Without a
/// watermark every window is open.
pub fn select_windows(
    batch: &RecordBatch,
    watermark_ms: Option<i64>,
    keep_open: bool,
) -> Result<RecordBatch> {
    let end = batch
        .column_by_name(WINDOW_END_COLUMN)
        .ok_or_else(|| Error::InvalidRequest(format!("no {WINDOW_END_COLUMN} column")))?;
    let end = millis(end)?;
    let mask: BooleanArray = (0..end.len())
        .map(|i| {
            let open = end.is_valid(i) && watermark_ms.is_none_or(|w| end.value(i) > w);
            let closed = end.is_valid(i) && watermark_ms.is_some_and(|w| end.value(i) <= w);
            Some(if keep_open { open } else { closed })
        })
        .collect();
    Ok(filter_record_batch(batch, &mask)?)
}

/// A state file as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// Writes `batches` as one Parquet file at `path`; nothing when they hold no rows.
pub async fn write_state(
    file_io: &FileIO,
    path: &str,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<StateFile>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let mut writer =
        ArrowWriter::try_new(&mut bytes, schema.clone(), None).map_err(|e| state_error(path, e))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer.write(batch).map_err(|e| state_error(path, e))?;
    }
    writer.close().map_err(|e| state_error(path, e))?;
    let written = StateFile {
        path: path.to_string(),
        rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
        bytes: bytes.len() as u64,
    };
    file_io
        .new_output(path)
        .map_err(Error::iceberg(format!("opening state file {path}")))?
        .write(Bytes::from(bytes))
        .await
        .map_err(Error::iceberg(format!("writing state file {path}")))?;
    Ok(Some(written))
}

/// Reads the state files a batch starts from.
pub async fn read_state(file_io: &FileIO, paths: &[String]) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for path in paths {
        let bytes = file_io
            .new_input(path)
            .map_err(Error::iceberg(format!("opening state file {path}")))?
            .read()
            .await
            .map_err(Error::iceberg(format!("reading state file {path}")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| state_error(path, e))?;
        for batch in reader {
            batches.push(batch?);
        }
    }
    Ok(batches)
}

/// Where a task attempt keeps its state: beside the table's data, named like its data
/// files (job, batch, term, task, attempt).
pub fn state_path(table_location: &str, attempt_prefix: &str) -> String {
    format!(
        "{}/{STATE_DIR}/{attempt_prefix}.parquet",
        table_location.trim_end_matches('/')
    )
}

fn state_error(path: &str, error: impl std::fmt::Display) -> Error {
    Error::Io {
        context: format!("window state {path}"),
        source: std::io::Error::other(error.to_string()),
    }
}

/// `batch` cast to `schema` by column name (state files may come back with other but
/// compatible types, e.g. a dictionary or view encoding); every column must be there.
pub fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if let Some(missing) = schema
        .fields()
        .iter()
        .find(|field| batch.column_by_name(field.name()).is_none())
    {
        return Err(Error::InvalidRequest(format!(
            "state file lacks column {}",
            missing.name()
        )));
    }
    to_table_batch(batch, schema)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new(
                WINDOW_END_COLUMN,
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
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn windows_are_open_until_the_watermark_reaches_their_end() {
        let b = batch();
        assert_eq!(ns(&select_windows(&b, Some(20), true).unwrap()), vec![4]);
        assert_eq!(
            ns(&select_windows(&b, Some(20), false).unwrap()),
            vec![1, 2]
        );
        assert_eq!(ns(&select_windows(&b, None, true).unwrap()), vec![1, 2, 4]);
        assert!(ns(&select_windows(&b, None, false).unwrap()).is_empty());
    }

    #[tokio::test]
    async fn state_round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let file_io = iceberg::io::FileIO::new_with_fs();
        let path = state_path(&format!("file://{}", dir.path().display()), "j.b1");
        let b = batch();
        let written = write_state(&file_io, &path, &b.schema(), std::slice::from_ref(&b))
            .await
            .unwrap();
        let written = written.unwrap();
        assert_eq!((written.path.as_str(), written.rows), (path.as_str(), 4));
        assert!(written.bytes > 0);
        let read = read_state(&file_io, &[path]).await.unwrap();
        assert_eq!(conform(&read[0], &b.schema()).unwrap(), b);
        assert_eq!(
            write_state(&file_io, "unused", &b.schema(), &[])
                .await
                .unwrap(),
            None
        );
    }
}
