//! Sluice's own physical operators and the per-task inputs they read: the Kafka range scan
//! (the stream's records of one task) and the shuffle reader (map outputs of an earlier
//! stage, fetched over Arrow Flight).

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::common::{internal_err, DataFusionError};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::future::try_join_all;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::stateful::{DedupLookup, SessionLookup};

/// Names one partition of one map task's output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShuffleKey {
    pub job_id: String,
    pub batch_id: i64,
    pub stage_id: u32,
    pub map_task: u32,
    pub partition: u32,
}

/// Where one map task's output is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutputLocation {
    pub map_task: u32,
    pub flight_address: String,
}

/// A map output that could not be fetched: the executor serving it is gone or lost it.
#[derive(Debug, thiserror::Error)]
#[error("fetching shuffle partition {partition} of stage {stage_id} map task {map_task} from {address}: {message}")]
pub struct ShuffleFetchError {
    pub stage_id: u32,
    pub map_task: u32,
    pub partition: u32,
    pub address: String,
    pub message: String,
}

impl ShuffleFetchError {
    /// The fetch failure at the root of a DataFusion error, if that is what it is.
    pub fn find(error: &DataFusionError) -> Option<&ShuffleFetchError> {
        match error.find_root() {
            DataFusionError::External(inner) => inner.downcast_ref::<ShuffleFetchError>(),
            _ => None,
        }
    }
}

/// Fetches map outputs from the executors serving them.
#[async_trait]
pub trait ShuffleFetcher: fmt::Debug + Send + Sync {
    async fn fetch(
        &self,
        address: &str,
        key: &ShuffleKey,
    ) -> Result<Vec<RecordBatch>, ShuffleFetchError>;
}

/// What one task's plan reads, handed to its operators through the session config.
#[derive(Debug)]
pub struct TaskInputs {
    pub job_id: String,
    pub batch_id: i64,
    /// The decoded records of the task's offset ranges (stages that read the stream).
    pub source: Vec<RecordBatch>,
    /// The shuffle partitions this task reduces; hash-partitioned readers yield nothing
    /// for the others. `None`: every partition is this task's.
    pub partitions: Option<Vec<u32>>,
    /// Map outputs of the stages this task reads, by stage id.
    pub shuffle: HashMap<u32, Vec<MapOutputLocation>>,
    pub fetcher: Arc<dyn ShuffleFetcher>,
    /// A stage keeping state after a shuffle (session windows): the rows its reader adds
    /// and collects.
    pub carried: Option<Arc<CarriedRows>>,
}

/// State joining a shuffle: the reader of `stage_id`'s output adds each partition's state
/// rows to what it fetches (or, deduplicating, drops fetched rows of known keys), and
/// collects the fetched rows it yields, from which the task picks the state it adds.
#[derive(Debug, Default)]
pub struct CarriedRows {
    /// The input stage the state joins (the stage reading the stream).
    pub stage_id: u32,
    pub state: CarriedState,
    /// The fetched rows the reader yielded (not the state's), by shuffle partition.
    pub yielded: std::sync::Mutex<HashMap<u32, Vec<RecordBatch>>>,
}

/// What the reader does with the state.
#[derive(Debug)]
pub enum CarriedState {
    /// Adds these rows (by shuffle partition, in the reader's schema) to what it fetches:
    /// windows' partial aggregates.
    Rows(HashMap<u32, Vec<RecordBatch>>),
    /// Deduplication: drops fetched rows whose key is remembered.
    Lookup(DedupLookup),
    /// Session windows: adds the rewritten files' rows and every other state row of the
    /// keys it yields.
    Sessions(SessionLookup),
}

impl Default for CarriedState {
    fn default() -> Self {
        CarriedState::Rows(HashMap::new())
    }
}

impl CarriedState {
    /// The state rows of `partition` the reader adds whole (none for deduplication; the
    /// rewritten files' for sessions, not those looked up).
    pub fn rows(&self, partition: u32) -> &[RecordBatch] {
        let rows = match self {
            CarriedState::Rows(rows) => rows,
            CarriedState::Sessions(sessions) => &sessions.rewritten,
            CarriedState::Lookup(_) => return &[],
        };
        rows.get(&partition).map(Vec::as_slice).unwrap_or_default()
    }
}

impl CarriedRows {
    /// The fetched rows the reader yielded, by shuffle partition (taken, once the plan
    /// ran).
    pub fn take_yielded(&self) -> HashMap<u32, Vec<RecordBatch>> {
        std::mem::take(&mut *self.yielded.lock().expect("carried rows lock"))
    }
}

fn task_inputs(
    context: &TaskContext,
    operator: &str,
) -> datafusion::common::Result<Arc<TaskInputs>> {
    context
        .session_config()
        .get_extension::<TaskInputs>()
        .ok_or_else(|| {
            DataFusionError::Internal(format!("{operator} runs only inside a Sluice task"))
        })
}

fn properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// The micro-batch's records of the running task, as the SQL's `source` table.
///
/// It declares several partitions so that the planner puts exchanges where rows of
/// different tasks meet; at run time partition 0 holds the task's records and the others
/// are empty.
#[derive(Debug, Clone)]
pub struct KafkaScanExec {
    schema: SchemaRef,
    partitions: usize,
    properties: Arc<PlanProperties>,
}

impl KafkaScanExec {
    /// A scan producing `schema` (a projection of the source schema, by column name).
    pub fn new(schema: SchemaRef, partitions: usize) -> KafkaScanExec {
        let partitions = partitions.max(1);
        KafkaScanExec {
            properties: properties(schema.clone(), partitions),
            schema,
            partitions,
        }
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }
}

impl DisplayAs for KafkaScanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KafkaScanExec: partitions={}", self.partitions)
    }
}

impl ExecutionPlan for KafkaScanExec {
    fn name(&self) -> &'static str {
        "KafkaScanExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let inputs = task_inputs(&context, self.name())?;
        if partition >= self.partitions {
            return internal_err!("KafkaScanExec has no partition {partition}");
        }
        // Partition 0 holds the task's records (all decoded with the source schema),
        // projected by column name; the other partitions are empty.
        let batches = match inputs.source.first() {
            Some(first) if partition == 0 => {
                let source = first.schema();
                let columns = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| source.index_of(f.name()))
                    .collect::<Result<Vec<_>, _>>()?;
                inputs
                    .source
                    .iter()
                    .map(|b| b.project(&columns))
                    .collect::<Result<Vec<_>, _>>()?
            }
            _ => vec![],
        };
        Ok(Box::pin(MemoryStream::try_new(
            batches,
            self.schema.clone(),
            None,
        )?))
    }
}

/// The schema of the rows `plan` reads from stage `stage_id`'s output, if it reads them.
pub fn reader_schema(plan: &Arc<dyn ExecutionPlan>, stage_id: u32) -> Option<SchemaRef> {
    if let Some(reader) = plan.as_any().downcast_ref::<ShuffleReaderExec>() {
        if reader.stage_id == stage_id {
            return Some(reader.schema.clone());
        }
    }
    plan.children()
        .into_iter()
        .find_map(|child| reader_schema(child, stage_id))
}

/// Whether `plan` reads the stream (holds the Kafka range scan).
pub fn reads_stream(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.as_any().is::<KafkaScanExec>() || plan.children().into_iter().any(reads_stream)
}

/// The stream columns `plan`'s range scans read (none when it reads no stream).
pub fn stream_columns(plan: &Arc<dyn ExecutionPlan>) -> BTreeSet<String> {
    let mut columns = BTreeSet::new();
    if let Some(scan) = plan.as_any().downcast_ref::<KafkaScanExec>() {
        columns.extend(scan.schema.fields().iter().map(|f| f.name().clone()));
    }
    for child in plan.children() {
        columns.extend(stream_columns(child));
    }
    columns
}

/// How a shuffle reader reads its input stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderMode {
    /// Hash-partitioned input: reader partition `p` is shuffle partition `p` of every
    /// map task.
    Hash,
    /// One output per map task, all read together as one partition.
    Merged,
}

/// Reads an earlier stage's map outputs over Arrow Flight.
#[derive(Debug, Clone)]
pub struct ShuffleReaderExec {
    stage_id: u32,
    schema: SchemaRef,
    partitions: usize,
    mode: ReaderMode,
    properties: Arc<PlanProperties>,
}

impl ShuffleReaderExec {
    pub fn new(stage_id: u32, schema: SchemaRef, mode: ReaderMode, partitions: usize) -> Self {
        let partitions = match mode {
            ReaderMode::Merged => 1,
            ReaderMode::Hash => partitions.max(1),
        };
        ShuffleReaderExec {
            properties: properties(schema.clone(), partitions),
            stage_id,
            schema,
            partitions,
            mode,
        }
    }

    pub fn stage_id(&self) -> u32 {
        self.stage_id
    }

    pub fn mode(&self) -> ReaderMode {
        self.mode
    }

    pub fn partitions(&self) -> usize {
        self.partitions
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={} mode={:?} partitions={}",
            self.stage_id, self.mode, self.partitions
        )
    }
}

impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &'static str {
        "ShuffleReaderExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        let inputs = task_inputs(&context, self.name())?;
        if partition >= self.partitions {
            return internal_err!("ShuffleReaderExec has no partition {partition}");
        }
        let shuffle_partition = match self.mode {
            ReaderMode::Merged => 0,
            ReaderMode::Hash => partition as u32,
        };
        let owned = self.mode == ReaderMode::Merged
            || inputs
                .partitions
                .as_ref()
                .is_none_or(|owned| owned.contains(&shuffle_partition));
        let Some(locations) = inputs.shuffle.get(&self.stage_id).cloned() else {
            return internal_err!("the task has no locations for stage {}", self.stage_id);
        };
        let locations = if owned { locations } else { vec![] };
        let stage_id = self.stage_id;
        let carried = inputs
            .carried
            .clone()
            .filter(|carried| owned && carried.stage_id == stage_id);
        let fetch = async move {
            let fetches = locations.iter().map(|location| {
                let key = ShuffleKey {
                    job_id: inputs.job_id.clone(),
                    batch_id: inputs.batch_id,
                    stage_id,
                    map_task: location.map_task,
                    partition: shuffle_partition,
                };
                let fetcher = inputs.fetcher.clone();
                async move { fetcher.fetch(&location.flight_address, &key).await }
            });
            let outputs = try_join_all(fetches)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let mut batches: Vec<RecordBatch> = outputs.into_iter().flatten().collect();
            if let Some(carried) = carried {
                if let CarriedState::Lookup(dedup) = &carried.state {
                    batches = dedup
                        .unknown(shuffle_partition, batches)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                }
                carried
                    .yielded
                    .lock()
                    .expect("carried rows lock")
                    .entry(shuffle_partition)
                    .or_default()
                    .extend(batches.iter().cloned());
                let mut state = carried.state.rows(shuffle_partition).to_vec();
                if let CarriedState::Sessions(sessions) = &carried.state {
                    let fed = [state.as_slice(), batches.as_slice()].concat();
                    let same_keys = sessions
                        .same_keys(shuffle_partition, &fed)
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    state.extend(same_keys);
                }
                batches.splice(0..0, state);
            }
            Ok::<_, DataFusionError>(futures::stream::iter(batches.into_iter().map(Ok)))
        };
        let stream = futures::stream::once(fetch)
            .map(|result| match result {
                Ok(batches) => batches.left_stream(),
                Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}
