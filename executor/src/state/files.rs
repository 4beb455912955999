//! Stateful jobs' state between batches, kept as Parquet files next to the sink table: a
//! batch reads the state files the previous batch left (listed in its checkpoint) and
//! writes its own. Which rows are state is the job's [`crate::state::rule::StateRule`].
//! See docs/architecture.md, "Windows" and "Deduplication".

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use iceberg::io::FileIO;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use sluice_core::{Error, Result};
use sluice_iceberg::data_files::{state_file_name, state_file_stats, StateFileStats, STATE_DIR};

use crate::writer::to_table_batch;

/// A state file of a batch's state: written by the batch or carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

impl StateFile {
    /// A file carried over unread, described by its name (nothing known when named
    /// without stats).
    pub fn carried(path: &str) -> StateFile {
        let stats = state_file_stats(path);
        StateFile {
            path: path.to_string(),
            rows: stats.map_or(0, |s| s.rows),
            bytes: stats.map_or(0, |s| s.bytes),
        }
    }
}

/// Where and for what a state file is written.
pub struct StateFileTarget<'a> {
    /// The sink table's location.
    pub location: &'a str,
    /// The writing attempt's name prefix.
    pub prefix: &'a str,
    /// The stage keeping it and the shuffle partition whose state it holds, for state
    /// kept after a shuffle.
    pub shard: Option<(u32, u32)>,
}

/// Writes `batches` as one Parquet file named for `target` with its stats (`lifetime`:
/// see `StateRule::lifetime`); nothing when they hold no rows.
pub async fn write_state(
    file_io: &FileIO,
    target: StateFileTarget<'_>,
    lifetime: (i64, i64),
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Option<StateFile>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let context = || format!("{} {:?}", target.prefix, target.shard);
    let mut writer = ArrowWriter::try_new(&mut bytes, schema.clone(), None)
        .map_err(|e| state_error(&context(), e))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer
            .write(batch)
            .map_err(|e| state_error(&context(), e))?;
    }
    writer.close().map_err(|e| state_error(&context(), e))?;
    let stats = StateFileStats {
        rows: batches.iter().map(|b| b.num_rows() as u64).sum(),
        bytes: bytes.len() as u64,
        from: lifetime.0,
        until: lifetime.1,
    };
    let path = state_path(
        target.location,
        &state_file_name(target.prefix, target.shard, Some(stats)),
    );
    file_io
        .new_output(&path)
        .map_err(Error::iceberg(format!("opening state file {path}")))?
        .write(Bytes::from(bytes))
        .await
        .map_err(Error::iceberg(format!("writing state file {path}")))?;
    Ok(Some(StateFile {
        path,
        rows: stats.rows,
        bytes: stats.bytes,
    }))
}

/// Reads the state files a batch starts from; returns their rows and the bytes read.
pub async fn read_state(file_io: &FileIO, paths: &[String]) -> Result<(Vec<RecordBatch>, u64)> {
    let mut batches = Vec::new();
    let mut read = 0;
    for path in paths {
        let bytes = file_io
            .new_input(path)
            .map_err(Error::iceberg(format!("opening state file {path}")))?
            .read()
            .await
            .map_err(Error::iceberg(format!("reading state file {path}")))?;
        read += bytes.len() as u64;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| state_error(path, e))?;
        for batch in reader {
            batches.push(batch?);
        }
    }
    Ok((batches, read))
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
        crate::state::rule::tests::batch("window_end")
    }

    #[tokio::test]
    async fn state_round_trips_through_parquet_named_with_its_stats() {
        let dir = tempfile::tempdir().unwrap();
        let file_io = iceberg::io::FileIO::new_with_fs();
        let location = format!("file://{}", dir.path().display());
        let target = || StateFileTarget {
            location: &location,
            prefix: "j.b1.e1.t0.a1.ff",
            shard: Some((1, 3)),
        };
        let b = batch();
        let written = write_state(
            &file_io,
            target(),
            (10, 30),
            &b.schema(),
            std::slice::from_ref(&b),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(written
            .path
            .starts_with(&state_path(&location, "j.b1.e1.t0.a1.ff.g1.p3.s4_")));
        assert_eq!(written.rows, 4);
        assert!(written.bytes > 0);
        assert_eq!(StateFile::carried(&written.path), written, "the name tells");
        let (read, bytes_read) = read_state(&file_io, std::slice::from_ref(&written.path))
            .await
            .unwrap();
        assert_eq!(bytes_read, written.bytes);
        assert_eq!(conform(&read[0], &b.schema()).unwrap(), b);
        assert_eq!(
            write_state(&file_io, target(), (0, 0), &b.schema(), &[])
                .await
                .unwrap(),
            None
        );
    }
}
