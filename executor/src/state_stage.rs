//! A state stage task's state (the first stage after the stream's shuffle, where a key's
//! rows meet): which of its partitions' state files it reads and hands its plan, and
//! which files it leaves for the next batch: the one it writes per partition and those
//! it carries over (`crate::state_deltas`). See docs/architecture.md, "State after the
//! shuffle".

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sluice_core::{Error, Result};
use sluice_iceberg::data_files::state_file_partition;
use sluice_plan::{CarriedRows, ShuffleStateKind, ShuffleStateStage};
use sluice_proto::v1::TaskDefinition;

use crate::state_cache::StateCache;
use crate::state_deltas::{partition_files, DeltaRule, PartitionFiles};
use crate::state_files::{self, StateFile, StateFileTarget};
use crate::state_rule::{self, StateRule};
use crate::task::PreparedJob;

/// The state a state stage task starts from.
pub(crate) struct StageState {
    /// The rows of the files read, by partition, handed to the plan.
    pub(crate) rows: Arc<CarriedRows>,
    /// What the task does with each partition's files.
    files: BTreeMap<u32, PartitionFiles>,
    /// Bytes read from storage (not from the cache).
    pub(crate) bytes_read: u64,
}

/// The state a state stage task leaves.
pub(crate) struct KeptState {
    /// Every file of the next batch's state in the task's partitions.
    pub(crate) files: Vec<StateFile>,
    /// Bytes of the files written.
    pub(crate) bytes_written: u64,
}

fn delta_rule(kind: &ShuffleStateKind) -> DeltaRule {
    match kind {
        ShuffleStateKind::WindowPartials(_) => DeltaRule::WindowPartials,
        ShuffleStateKind::DedupRows { .. } => DeltaRule::RememberedKeys,
        ShuffleStateKind::SessionRows => DeltaRule::Whole,
    }
}

/// Reads what the task needs of its partitions' state files (see [`partition_files`]).
pub(crate) async fn load(
    job: &PreparedJob,
    cache: &StateCache,
    stage: &ShuffleStateStage,
    task: &TaskDefinition,
) -> Result<StageState> {
    let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for path in &task.state_files {
        let partition = state_file_partition(path).ok_or_else(|| {
            Error::InvalidRequest(format!("state file {path} names no shuffle partition"))
        })?;
        by_partition
            .entry(partition)
            .or_default()
            .push(path.clone());
    }
    let state_schema = stage.state_schema();
    let rule = delta_rule(&stage.kind);
    let mut state: std::collections::HashMap<u32, Vec<RecordBatch>> = Default::default();
    let mut files = BTreeMap::new();
    let mut bytes_read = 0;
    for (partition, paths) in by_partition {
        let chosen = partition_files(rule, &paths, task.watermark_ms);
        for path in &chosen.read {
            let (rows, read) = load_file(job, cache, path, &state_schema).await?;
            bytes_read += read;
            let rows = match &job.state_rule {
                // Keys the watermark has forgotten since the file was written no longer
                // count.
                Some(rule @ StateRule::Dedup { .. }) => rows
                    .iter()
                    .map(|b| rule.still_needed(b, task.watermark_ms))
                    .collect::<Result<Vec<_>>>()?,
                _ => rows.to_vec(),
            };
            state.entry(partition).or_default().extend(rows);
        }
        files.insert(partition, chosen);
    }
    let dedup_key = match &stage.kind {
        ShuffleStateKind::DedupRows { key, .. } => Some(key.clone()),
        _ => None,
    };
    Ok(StageState {
        rows: Arc::new(CarriedRows {
            stage_id: stage.stream_stage,
            state,
            yielded: Default::default(),
            dedup_key,
        }),
        files,
        bytes_read,
    })
}

/// A state file's rows in the state's schema, from the cache or storage; with the bytes
/// read from storage.
async fn load_file(
    job: &PreparedJob,
    cache: &StateCache,
    path: &str,
    schema: &SchemaRef,
) -> Result<(Arc<Vec<RecordBatch>>, u64)> {
    if let Some(rows) = cache.get(path) {
        return Ok((rows, 0));
    }
    let file_io = job.sink.table.file_io();
    let (batches, read) = state_files::read_state(file_io, &[path.to_string()]).await?;
    let rows = batches
        .iter()
        .map(|b| state_files::conform(b, schema))
        .collect::<Result<Vec<_>>>()?;
    Ok((cache.insert(path, rows), read))
}

/// Writes, for each partition the task reduced, the state it adds after the batch's
/// watermark, and lists it with the files carried over: for windows, the merged partial
/// aggregates of open windows from the files read and the batch; for sessions, the rows
/// of open sessions; for deduplication, the keys the batch saw first (with those of the
/// files read when they are merged).
pub(crate) async fn keep(
    job: &PreparedJob,
    cache: &StateCache,
    stage: &ShuffleStateStage,
    loaded: &StageState,
    task: &TaskDefinition,
    prefix: &str,
) -> Result<KeptState> {
    let file_io = job.sink.table.file_io();
    let location = job.sink.table.metadata().location();
    let state_schema = stage.state_schema();
    let watermark = task.watermark_ms;
    let mut yielded = loaded.rows.take_yielded();
    let partitions: BTreeSet<u32> = loaded.files.keys().chain(yielded.keys()).copied().collect();
    let mut kept_state = KeptState {
        files: vec![],
        bytes_written: 0,
    };
    for partition in partitions {
        let chosen = loaded.files.get(&partition).cloned().unwrap_or_default();
        let state = loaded
            .rows
            .state
            .get(&partition)
            .cloned()
            .unwrap_or_default();
        let new = yielded.remove(&partition).unwrap_or_default();
        let (kept, rule) = match (&stage.kind, &job.state_rule) {
            (ShuffleStateKind::SessionRows, Some(rule @ StateRule::Sessions(sessions))) => {
                let all = [state, new].concat();
                (
                    vec![sessions.open_rows(&stage.schema, &all, watermark)?],
                    rule,
                )
            }
            (ShuffleStateKind::DedupRows { .. }, Some(rule @ StateRule::Dedup { .. })) => {
                let rows = if chosen.merge {
                    [state, new].concat()
                } else {
                    new
                };
                let kept = rows
                    .iter()
                    .map(|b| state_files::conform(&rule.still_needed(b, watermark)?, &state_schema))
                    .collect::<Result<_>>()?;
                (kept, rule)
            }
            (ShuffleStateKind::WindowPartials(_), Some(rule @ StateRule::Windows)) => {
                let kept = stage
                    .merge([state, new].concat(), job.context.clone())
                    .await?
                    .iter()
                    .map(|b| state_rule::select_windows(b, watermark, true))
                    .collect::<Result<_>>()?;
                (kept, rule)
            }
            (kind, rule) => {
                return Err(Error::InvalidRequest(format!(
                    "state kept after the shuffle as {kind:?} does not fit the job's rule {rule:?}"
                )))
            }
        };
        let target = StateFileTarget {
            location,
            prefix,
            partition: Some(partition),
        };
        let lifetime = rule.lifetime(&kept)?;
        if let Some(file) =
            state_files::write_state(file_io, target, lifetime, &state_schema, &kept).await?
        {
            kept_state.bytes_written += file.bytes;
            cache.insert(&file.path, kept);
            kept_state.files.push(file);
        }
        kept_state
            .files
            .extend(chosen.carried.iter().map(|path| StateFile::carried(path)));
    }
    Ok(kept_state)
}
