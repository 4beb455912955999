//! Running one task: read its offset ranges, run the job's SQL, write data files.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use iceberg::table::Table;
use iceberg::Catalog;
use iceberg::TableIdent;
use iceberg_catalog_sql::SqlCatalog;
use sluice_common::data_files::attempt_prefix;
use sluice_common::decode::{dead_letter_batch, RecordDecoder};
use sluice_common::iceberg_sink::{
    data_files_to_json, dead_letter_ident, open_catalog, table_arrow_schema, table_ident,
};
use sluice_common::offsets::OffsetRange;
use sluice_common::spec::JobSpec;
use sluice_common::spec::OnMalformed;
use sluice_common::{failpoint, query, Error, Result};
use sluice_proto::v1::{TaskDefinition, TaskFailure, TaskSuccess};
use tracing::{debug, Instrument};

use crate::kafka_reader::ConsumerPool;
use crate::writer::write_data_files;

/// A table files are written to, with its Arrow schema (carrying Iceberg field ids).
struct TargetTable {
    table: Table,
    schema: SchemaRef,
}

impl TargetTable {
    async fn load(catalog: &SqlCatalog, ident: &TableIdent) -> Result<TargetTable> {
        let table = catalog
            .load_table(ident)
            .await
            .map_err(Error::iceberg(format!("loading table {ident}")))?;
        Ok(TargetTable {
            schema: table_arrow_schema(&table)?,
            table,
        })
    }

    /// Writes `batches` as data files and returns their metadata as JSON.
    async fn write(&self, batches: &[RecordBatch], prefix: String) -> Result<Vec<String>> {
        let files = write_data_files(&self.table, &self.schema, batches, prefix).await?;
        data_files_to_json(&self.table, files)
    }
}

/// A job as an executor keeps it: spec, decoder and tables, loaded once.
pub struct PreparedJob {
    pub spec: JobSpec,
    decoder: RecordDecoder,
    sink: TargetTable,
    /// With `on_malformed: dead_letter`.
    dead_letters: Option<TargetTable>,
}

impl PreparedJob {
    /// Parses the spec and loads the sink table (created by the driver at submit).
    pub async fn prepare(spec_json: &str) -> Result<PreparedJob> {
        let spec = JobSpec::parse(spec_json)?;
        let decoder = RecordDecoder::new(&spec.source.kafka)?;
        let sink = &spec.sink.iceberg;
        let catalog = open_catalog(&sink.catalog).await?;
        let dead_letters = if spec.source.kafka.on_malformed == OnMalformed::DeadLetter {
            Some(TargetTable::load(&catalog, &dead_letter_ident(sink)).await?)
        } else {
            None
        };
        Ok(PreparedJob {
            sink: TargetTable::load(&catalog, &table_ident(sink)).await?,
            dead_letters,
            decoder,
            spec,
        })
    }
}

/// Parses a task's ranges; a malformed request is reported, never unwrapped.
pub fn task_ranges(task: &TaskDefinition) -> Result<Vec<OffsetRange>, String> {
    task.ranges
        .iter()
        .map(|r| {
            if r.topic.is_empty() || r.partition < 0 || r.start < 0 || r.end < r.start {
                Err(format!("invalid offset range {r:?}"))
            } else {
                Ok(OffsetRange {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    start: r.start,
                    end: r.end,
                })
            }
        })
        .collect()
}

/// The failure sent back to the driver for an error.
pub fn failure(error: &Error) -> TaskFailure {
    TaskFailure {
        retryable: !error.is_user_error(),
        kind: error.kind().to_string(),
        message: error.to_string(),
    }
}

/// Runs one task to completion.
pub async fn run_task(
    job: Arc<PreparedJob>,
    pool: Arc<ConsumerPool>,
    task: &TaskDefinition,
    ranges: Vec<OffsetRange>,
) -> Result<TaskSuccess> {
    let span = tracing::info_span!("task", job = %task.job_id, batch = task.batch_id, task = task.task_id, attempt = task.attempt);
    async move {
        let started = Instant::now();
        let input = {
            let job = job.clone();
            let span = tracing::info_span!("kafka_read");
            tokio::task::spawn_blocking(move || {
                let _enter = span.enter();
                let kafka = &job.spec.source.kafka;
                pool.read(
                    &kafka.bootstrap_servers,
                    &job.decoder,
                    &ranges,
                    kafka.fail_on_data_loss,
                )
            })
            .await
            .map_err(|e| Error::Io {
                context: "reader thread".into(),
                source: std::io::Error::other(e.to_string()),
            })??
        };
        let read_ms = started.elapsed().as_millis();
        let output = query::run(&job.spec.sql, job.decoder.schema(), input.batches)
            .instrument(tracing::info_span!("execute"))
            .await?;
        let output_rows: usize = output.iter().map(|b| b.num_rows()).sum();
        failpoint::hit(failpoint::EXECUTOR_RECORDS_READ, task.batch_id);
        let prefix = attempt_prefix(&task.job_id, task.batch_id, task.task_id, task.attempt);
        let data_files_json = job
            .sink
            .write(&output, prefix.clone())
            .instrument(tracing::info_span!("write"))
            .await?;
        let dead_letter_files_json = match (&job.dead_letters, input.dead_letters.is_empty()) {
            (Some(table), false) => {
                let letters = dead_letter_batch(&input.dead_letters)?;
                table.write(&[letters], prefix).await?
            }
            _ => vec![],
        };
        failpoint::hit(failpoint::EXECUTOR_FILES_WRITTEN, task.batch_id);
        debug!(
            input_rows = input.input_rows,
            output_rows,
            read_ms,
            total_ms = started.elapsed().as_millis(),
            "task done"
        );
        Ok(TaskSuccess {
            data_files_json,
            input_rows: input.input_rows,
            output_rows: output_rows as u64,
            malformed_skipped: input.malformed_skipped,
            offsets_lost: input.offsets_lost,
            dead_letter_files_json,
        })
    }
    .instrument(span)
    .await
}
