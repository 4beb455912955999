//! Compaction tasks: read some of the sink table's data files and write their rows again
//! as target-size files, through the same writer batches use (partitioned like the table,
//! rolled at `sink.iceberg.target_file_size`). The driver commits the result as a replace
//! snapshot. See docs/architecture.md, "Compaction".

use std::time::Instant;

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use sluice_core::{failpoint, BatchId, Error, Result};
use sluice_iceberg::data_files::compaction_attempt_prefix;
use sluice_iceberg::sink::data_files_from_json;
use sluice_proto::v1::{RewriteFiles, TaskDefinition, TaskSuccess, TaskTimes};
use tracing::info;

use crate::prepared::PreparedJob;
use crate::writer::to_table_batch;

/// Runs a compaction task of `job`: the files of `rewrite`, read and written again.
pub async fn rewrite_files(
    job: &PreparedJob,
    task: &TaskDefinition,
    rewrite: &RewriteFiles,
) -> Result<TaskSuccess> {
    let started = Instant::now();
    let sink = &job.sink;
    let files = data_files_from_json(&sink.table, &rewrite.files_json)?;
    let mut batches: Vec<RecordBatch> = vec![];
    for file in &files {
        let path = file.file_path();
        let bytes = sink
            .table
            .file_io()
            .new_input(path)
            .map_err(Error::iceberg(format!("opening {path}")))?
            .read()
            .await
            .map_err(Error::iceberg(format!("reading {path}")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .map_err(|e| Error::Io {
                context: format!("data file {path}"),
                source: std::io::Error::other(e.to_string()),
            })?;
        for batch in reader {
            batches.push(to_table_batch(&batch?, &sink.schema)?);
        }
    }
    let read_ms = started.elapsed().as_millis() as u64;
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let expected: u64 = files.iter().map(|f| f.record_count()).sum();
    if rows != expected {
        return Err(Error::InvalidRequest(format!(
            "compaction {}: the files hold {rows} rows, their metadata says {expected}",
            rewrite.compaction_id
        )));
    }
    let prefix = compaction_attempt_prefix(
        &task.job_id,
        rewrite.compaction_id,
        task.term,
        task.task_id,
        task.attempt,
    );
    let written = sink.write(&batches, prefix).await?;
    failpoint::hit(
        failpoint::EXECUTOR_REWRITE_WRITTEN,
        BatchId::new(rewrite.compaction_id),
    )
    .await;
    info!(job = %task.job_id, compaction = rewrite.compaction_id, files = files.len(), written = written.len(), rows, "files rewritten");
    Ok(TaskSuccess {
        data_files_json: written,
        output_rows: rows,
        times: Some(TaskTimes {
            read_ms,
            write_ms: started.elapsed().as_millis() as u64 - read_ms,
            ..Default::default()
        }),
        ..Default::default()
    })
}
