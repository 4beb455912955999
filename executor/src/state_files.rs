//! Stateful jobs' state between batches, kept as Parquet files next to the sink table: a
//! batch reads the state files the previous batch left (listed in its checkpoint) and
//! writes its own. Which rows are state is the job's [`crate::state_rule::StateRule`].
//! See docs/architecture.md, "Windows" and "Deduplication".

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use iceberg::io::FileIO;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use sluice_core::{Error, Result};
use sluice_iceberg::data_files::STATE_DIR;

use crate::writer::to_table_batch;

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

/// Where a state file named `name` is kept: beside the table's data, named like the data
/// files of the attempt that wrote it (see `sluice_iceberg::data_files::state_file_name`).
pub fn state_path(table_location: &str, name: &str) -> String {
    format!(
        "{}/{STATE_DIR}/{name}",
        table_location.trim_end_matches('/')
    )
}

fn state_error(path: &str, error: impl std::fmt::Display) -> Error {
    Error::Io {
        context: format!("state file {path}"),
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
    use super::*;

    fn batch() -> RecordBatch {
        crate::state_rule::tests::batch("window_end")
    }

    #[tokio::test]
    async fn state_round_trips_through_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let file_io = iceberg::io::FileIO::new_with_fs();
        let path = state_path(&format!("file://{}", dir.path().display()), "j.b1.parquet");
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
