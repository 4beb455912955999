//! Distributed plans: the driver plans a job's SQL once with DataFusion, cuts the physical
//! plan into stages at its exchanges and serializes each stage; executors cache the stage
//! plans and run one fresh copy per task with the task's inputs.

mod codec;
mod nodes;
mod split;
pub mod stateful;
mod tables;

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use codec::{decode_plan, encode_plan, SluiceCodec};
pub use nodes::{
    reader_schema, reads_stream, stream_columns, CarriedRows, CarriedState, KafkaScanExec,
    MapOutputLocation, ReaderMode, ShuffleFetchError, ShuffleFetcher, ShuffleKey,
    ShuffleReaderExec, TaskInputs,
};
pub use split::{Stage, StageKind, StageOutput};
pub use stateful::{
    DedupLookup, FirstRowPerKeyExec, KeyedFiles, OrderColumn, RowsInMemory, SessionLookup,
    ShuffleStateKind, ShuffleStateStage, StatefulOperator,
};

use sluice_core::error::{Error, Result};
use sluice_core::schema::scan_schema;
use sluice_core::spec::JobSpec;

/// The name of the micro-batch table in a job's SQL.
pub use sluice_core::spec::SOURCE_TABLE;

/// The stream as source tasks hand it over, under the `source` view of a deduplicating or
/// session job.
pub const STREAM_TABLE: &str = "_sluice_stream";

/// A SQL identifier, quoted so any column name works.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A job's SQL planned for distributed execution.
#[derive(Debug, Clone)]
pub struct JobPlan {
    /// Stages in execution order (a stage only reads earlier ones); the last is the sink.
    pub stages: Vec<Stage>,
    /// The rows the sink stage writes.
    pub output_schema: SchemaRef,
}

impl JobPlan {
    /// The stages keeping a stateful job's state after a shuffle (none when its source
    /// tasks keep it).
    pub fn shuffle_state_stages(&self, spec: &JobSpec) -> Vec<ShuffleStateStage> {
        let plans: Vec<_> = self.stages.iter().map(|s| (s.id, s.plan.clone())).collect();
        ShuffleStateStage::find_all(spec.event_time(), &plans)
    }

    /// Whether the query aggregates (a `GROUP BY`, `DISTINCT` or aggregate function: an
    /// `AggregateExec` in some stage).
    pub fn aggregates(&self) -> bool {
        fn any_aggregate(plan: &Arc<dyn ExecutionPlan>) -> bool {
            plan.as_any()
                .is::<datafusion::physical_plan::aggregates::AggregateExec>()
                || plan.children().into_iter().any(any_aggregate)
        }
        self.stages.iter().any(|s| any_aggregate(&s.plan))
    }

    /// The stage plans serialized with datafusion-proto.
    pub fn encoded_stages(&self) -> Result<Vec<Vec<u8>>> {
        self.stages
            .iter()
            .map(|stage| encode_plan(stage.plan.clone()).map_err(sluice_core::Error::query))
            .collect()
    }

    /// The plan of every stage, for logs and `EXPLAIN`-like output.
    pub fn display(&self) -> String {
        self.stages
            .iter()
            .map(|s| {
                format!(
                    "stage {} ({:?} -> {:?}, reads {:?}):\n{}",
                    s.id,
                    s.kind,
                    s.output,
                    s.inputs,
                    displayable(s.plan.as_ref()).indent(true)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The session settings jobs are planned and run with.
pub fn session_config(spec: &JobSpec) -> SessionConfig {
    let mut config = SessionConfig::new()
        .with_target_partitions(spec.parallelism.shuffle_partitions as usize)
        .with_information_schema(false);
    let options = config.options_mut();
    // Exchanges happen only where rows of different tasks must meet.
    options.optimizer.enable_round_robin_repartition = false;
    options.optimizer.repartition_file_scans = false;
    // Filters shared between operators at run time cannot cross a stage boundary.
    options.optimizer.enable_dynamic_filter_pushdown = false;
    options.optimizer.enable_join_dynamic_filter_pushdown = false;
    options.optimizer.enable_topk_dynamic_filter_pushdown = false;
    options.optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    let threshold = spec.parallelism.broadcast_threshold_bytes as usize;
    options.optimizer.hash_join_single_partition_threshold = threshold;
    options.optimizer.hash_join_single_partition_threshold_rows = threshold / 64;
    options.execution.collect_statistics = true;
    config
}

/// Plans `spec`'s SQL: checks it, and cuts it into stages.
pub async fn plan_job(spec: &JobSpec) -> Result<JobPlan> {
    let ctx = SessionContext::new_with_config(session_config(spec));
    let schema = scan_schema(&spec.source().kafka, spec.event_time())?;
    let partitions = spec.parallelism.shuffle_partitions.max(2) as usize;
    let source = Arc::new(tables::SourceTable::new(schema, partitions));
    let invalid = |e: datafusion::error::DataFusionError| Error::InvalidSql {
        message: e.strip_backtrace(),
    };
    let kafka = &spec.source().kafka;
    let event_time = spec.event_time();
    // Deduplication and sessions: the query sees the stream through a view that keeps
    // each key's first row, or gives each row its session.
    let view = match (event_time.dedup, event_time.session) {
        (Some(dedup), _) => Some(stateful::dedup::first_row_per_key_sql(
            kafka, event_time, dedup,
        )?),
        (None, Some(session)) => Some(stateful::session::sessions_sql(kafka, event_time, session)?),
        (None, None) => None,
    };
    match view {
        Some(view) => {
            ctx.register_table(STREAM_TABLE, source)
                .map_err(sluice_core::Error::query)?;
            let view = ctx.sql(&view).await.map_err(invalid)?.into_view();
            ctx.register_table(spec.source_name(), view)
                .map_err(sluice_core::Error::query)?;
        }
        None => {
            ctx.register_table(spec.source_name(), source)
                .map_err(sluice_core::Error::query)?;
        }
    }
    tables::register_static_tables(&ctx, &spec.tables).await?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(&spec.sql, options)
        .await
        .map_err(invalid)?;
    let output_schema = Arc::new(frame.schema().as_arrow().clone());
    let mut physical = frame.create_physical_plan().await.map_err(invalid)?;
    if let Some(dedup) = event_time.dedup {
        physical = stateful::first_row::hash_first_rows(physical, &dedup.key)
            .map_err(sluice_core::Error::query)?;
    }
    let stages = split::split(physical)?;
    Ok(JobPlan {
        stages,
        output_schema,
    })
}

/// A task context carrying `inputs`, with the functions of a default session.
pub fn task_context(base: &TaskContext, inputs: TaskInputs) -> Arc<TaskContext> {
    let config = base
        .session_config()
        .clone()
        .with_extension(Arc::new(inputs));
    Arc::new(TaskContext::new(
        base.task_id(),
        base.session_id(),
        config,
        base.scalar_functions().clone(),
        base.aggregate_functions().clone(),
        base.window_functions().clone(),
        base.runtime_env(),
    ))
}

/// The context stage plans of `spec` are decoded and run in (without task inputs).
pub fn base_task_context(spec: &JobSpec) -> Arc<TaskContext> {
    SessionContext::new_with_config(session_config(spec)).task_ctx()
}

/// Runs every partition of `plan` at once and collects each partition's batches.
pub async fn execute_all_partitions(
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
) -> Result<Vec<Vec<arrow::array::RecordBatch>>> {
    let partitions = plan.properties().partitioning.partition_count();
    let runs = (0..partitions).map(|p| {
        let plan = plan.clone();
        let context = context.clone();
        async move {
            let stream = plan.execute(p, context)?;
            datafusion::physical_plan::common::collect(stream).await
        }
    });
    futures::future::try_join_all(runs)
        .await
        .map_err(sluice_core::Error::query)
}

#[cfg(test)]
mod tests;
