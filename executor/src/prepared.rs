//! A job as an executor keeps it between tasks: its spec, record decoder, stage plans,
//! sink and dead-letter tables and where its state lives, prepared once per job.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::physical_plan::ExecutionPlan;
use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use sluice_core::spec::JobSpec;
use sluice_core::{Error, Result};
use sluice_iceberg::catalog::open_catalog;
use sluice_iceberg::sink::{
    data_files_to_json, dead_letter_ident, table_arrow_schema, table_ident,
};
use sluice_kafka::decode::RecordDecoder;
use sluice_plan::ShuffleStateStage;
use sluice_proto::v1::{StageOutput, StagePlan};

use crate::writer::{write_data_files, WriteOptions};
use sluice_plan::StatefulOperator;

/// A table files are written to, with its Arrow schema (carrying Iceberg field ids).
pub(crate) struct TargetTable {
    pub(crate) table: Table,
    pub(crate) schema: SchemaRef,
    options: WriteOptions,
}

impl TargetTable {
    async fn load(
        catalog: &dyn Catalog,
        ident: &TableIdent,
        options: WriteOptions,
    ) -> Result<TargetTable> {
        let table = catalog
            .load_table(ident)
            .await
            .map_err(Error::iceberg(format!("loading table {ident}")))?;
        Ok(TargetTable {
            schema: table_arrow_schema(&table)?,
            table,
            options,
        })
    }

    /// Writes `batches` as data files and returns their metadata as JSON.
    pub(crate) async fn write(
        &self,
        batches: &[RecordBatch],
        prefix: String,
    ) -> Result<Vec<String>> {
        let files =
            write_data_files(&self.table, &self.schema, batches, prefix, &self.options).await?;
        data_files_to_json(&self.table, files)
    }
}

/// What a stage's tasks do with their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// Every output partition is a shuffle partition.
    Hash,
    /// All output is one shuffle partition.
    Single,
    /// Data files of the sink table.
    Sink,
}

/// One stage of a job, as the driver planned and serialized it.
pub(crate) struct PreparedStage {
    pub(crate) plan: Vec<u8>,
    pub(crate) output: Output,
}

/// `decoder` building only the columns the stages' range scans read (and the event-time
/// column the watermark needs): the others' values are checked, not kept. A stateful
/// job's source rows stay whole, as its state files hold them.
fn read_columns(
    decoder: RecordDecoder,
    spec: &JobSpec,
    plans: &[(u32, Arc<dyn ExecutionPlan>)],
) -> RecordDecoder {
    let event_time = spec.event_time();
    if event_time.is_stateful() {
        return decoder;
    }
    let mut columns: BTreeSet<String> = plans
        .iter()
        .flat_map(|(_, plan)| sluice_plan::stream_columns(plan))
        .collect();
    columns.extend(event_time.watermark.iter().map(|w| w.column.clone()));
    decoder.keeping(&columns)
}

/// A job as an executor keeps it: spec, decoder, stage plans and tables, loaded once.
pub struct PreparedJob {
    pub spec: JobSpec,
    pub(crate) decoder: RecordDecoder,
    pub(crate) stages: HashMap<u32, PreparedStage>,
    /// The session stage plans are decoded and run in.
    pub(crate) context: Arc<datafusion::execution::TaskContext>,
    pub(crate) sink: TargetTable,
    /// With `on_malformed: dead_letter`.
    pub(crate) dead_letters: Option<TargetTable>,
    /// What a stateful job (windows, sessions, deduplication) keeps between batches.
    pub(crate) operator: Option<StatefulOperator>,
    /// Jobs keeping their state after a shuffle (sessions, deduplication, most windowed
    /// aggregations): the stages that keep it. Otherwise (empty) source tasks keep a
    /// stateful job's state.
    pub(crate) shuffle_state: Vec<ShuffleStateStage>,
    /// The rows source tasks hand the plan, and state files hold.
    pub(crate) scan_schema: arrow::datatypes::SchemaRef,
    /// The columns decoded from record values, for late records' dead letters.
    pub(crate) value_columns: Vec<String>,
}

impl PreparedJob {
    /// Parses the spec, keeps the stage plans and loads the sink table (created by the
    /// driver at submit).
    pub async fn prepare(spec_json: &str, stage_plans: Vec<StagePlan>) -> Result<PreparedJob> {
        let spec = JobSpec::parse(spec_json)?;
        if stage_plans.is_empty() {
            return Err(Error::InvalidRequest(
                "the job comes without stage plans".into(),
            ));
        }
        let context = sluice_plan::base_task_context(&spec);
        let mut stages = HashMap::new();
        let mut decoded = Vec::with_capacity(stage_plans.len());
        for stage in stage_plans {
            let plan = sluice_plan::decode_plan(&stage.plan, &context).map_err(|e| {
                Error::InvalidRequest(format!(
                    "stage {} does not decode: {}",
                    stage.stage_id,
                    e.strip_backtrace()
                ))
            })?;
            decoded.push((stage.stage_id, plan));
            let output = match stage.output() {
                StageOutput::Hash => Output::Hash,
                StageOutput::Single => Output::Single,
                StageOutput::Sink => Output::Sink,
                StageOutput::Unspecified => {
                    return Err(Error::InvalidRequest(format!(
                        "stage {} has no output kind (a driver of another version?)",
                        stage.stage_id
                    )))
                }
            };
            stages.insert(
                stage.stage_id,
                PreparedStage {
                    plan: stage.plan,
                    output,
                },
            );
        }
        let decoder = read_columns(RecordDecoder::for_job(&spec)?, &spec, &decoded);
        let operator = StatefulOperator::of(spec.event_time())?;
        let shuffle_state = ShuffleStateStage::find_all(spec.event_time(), &decoded);
        if matches!(operator, Some(StatefulOperator::Sessions { .. })) && shuffle_state.is_empty() {
            return Err(Error::InvalidRequest(
                "a session job's plan has no stage after the stream's shuffle".into(),
            ));
        }
        let scan_schema =
            sluice_core::schema::scan_schema(&spec.source().kafka, spec.event_time())?;
        let value_columns = sluice_core::schema::value_schema(&spec.source().kafka)?
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let sink = &spec.sink.iceberg;
        let catalog = open_catalog(&sink.catalog).await?;
        let dead_letters = if spec.writes_dead_letters() {
            let options = WriteOptions::default();
            Some(TargetTable::load(catalog.as_ref(), &dead_letter_ident(sink), options).await?)
        } else {
            None
        };
        Ok(PreparedJob {
            sink: TargetTable::load(
                catalog.as_ref(),
                &table_ident(sink),
                WriteOptions::of(sink)?,
            )
            .await?,
            dead_letters,
            decoder,
            operator,
            shuffle_state,
            scan_schema,
            value_columns,
            stages,
            context,
            spec,
        })
    }
}
