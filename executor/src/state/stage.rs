//! A state stage task's state (the first stage after the stream's shuffle, where a key's
//! rows meet): which of its partitions' state files it reads and hands its plan, and
//! which files it leaves for the next batch: the one it writes per partition and those
//! it carries over (`crate::state::deltas`). See docs/architecture.md, "State after the
//! shuffle".

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use iceberg::io::FileIO;
use sluice_core::{Error, Result};
use sluice_iceberg::data_files::state_file_partition;
use sluice_plan::{
    CarriedRows, CarriedState, DedupLookup, KeyedFiles, SessionLookup, ShuffleStateKind,
    ShuffleStateStage, StatefulOperator,
};
use sluice_proto::v1::TaskDefinition;

use super::cache::StateCache;
use super::deltas::{partition_files, PartitionFiles};
use super::files::{self, StateFile, StateFileTarget};
use super::rule::{self, StateRule};
use super::sessions::Sessions;
use crate::prepared::PreparedJob;

/// The state a state stage task starts from.
pub(crate) struct StageState {
    /// The rows of the files read, by partition, handed to the plan, and the files the
    /// reader looks keys up in (deduplication's remembered keys, sessions' other rows).
    pub(crate) rows: Arc<CarriedRows>,
    /// What the task does with each partition's files.
    files: BTreeMap<u32, PartitionFiles>,
    /// Reads the files, counting what came from storage.
    reader: Arc<StateReader>,
}

impl StageState {
    /// Bytes of state files read from storage so far (not from the cache).
    pub(crate) fn bytes_read(&self) -> u64 {
        self.reader.bytes_read.load(Ordering::Relaxed)
    }
}

/// The state a state stage task leaves.
pub(crate) struct KeptState {
    /// Every file of the next batch's state in the task's partitions.
    pub(crate) files: Vec<StateFile>,
    /// Bytes of the files written.
    pub(crate) bytes_written: u64,
}

/// The operator whose rule `stage` keeps its state by (see
/// [`ShuffleStateStage::operator`]); `None` for a stateless job.
fn stage_operator(stage: &ShuffleStateStage, job: &PreparedJob) -> Option<StatefulOperator> {
    job.operator
        .as_ref()
        .map(|operator| stage.operator(operator))
}

/// Reads state files in the state's schema, from the executor's cache when it holds
/// them, else from storage (and keeps them in the cache).
#[derive(Debug)]
struct StateReader {
    file_io: FileIO,
    cache: Arc<StateCache>,
    schema: SchemaRef,
    /// What the job keeps, and the batch's watermark: remembered keys forgotten since a
    /// file was written are left out.
    rule: Option<StatefulOperator>,
    watermark_ms: Option<i64>,
    bytes_read: AtomicU64,
    /// Files the task reads twice (dedup files it merges: looked up while the plan runs,
    /// then rewritten), kept between the two reads whatever the cache keeps.
    hold: HashSet<String>,
    held: Mutex<HashMap<String, Arc<Vec<RecordBatch>>>>,
}

impl StateReader {
    /// The rows of the state file at `path` that are still state.
    async fn rows(&self, path: &str) -> Result<Arc<Vec<RecordBatch>>> {
        let held = self.held.lock().expect("held lock").get(path).cloned();
        let rows = match held.or_else(|| self.cache.get(path)) {
            Some(rows) => rows,
            None => {
                let (batches, read) = files::read_state(&self.file_io, &[path.to_string()]).await?;
                self.bytes_read.fetch_add(read, Ordering::Relaxed);
                let rows = batches
                    .iter()
                    .map(|b| files::conform(b, &self.schema))
                    .collect::<Result<Vec<_>>>()?;
                self.cache.insert(path, rows)
            }
        };
        if self.hold.contains(path) {
            let mut held = self.held.lock().expect("held lock");
            held.insert(path.to_string(), rows.clone());
        }
        match &self.rule {
            Some(rule @ StatefulOperator::Dedup { .. }) => Ok(Arc::new(
                rows.iter()
                    .map(|b| rule.still_needed(b, self.watermark_ms))
                    .collect::<Result<Vec<_>>>()?,
            )),
            _ => Ok(rows),
        }
    }
}

/// State files the reader looks keys up in, by partition, read one at a time:
/// deduplication's live files, sessions' carried ones.
#[derive(Debug)]
struct LookupFiles {
    reader: Arc<StateReader>,
    files: BTreeMap<u32, Vec<String>>,
}

impl LookupFiles {
    fn of(
        reader: &Arc<StateReader>,
        files: &BTreeMap<u32, PartitionFiles>,
        pick: impl Fn(&PartitionFiles) -> &Vec<String>,
    ) -> Arc<LookupFiles> {
        Arc::new(LookupFiles {
            reader: reader.clone(),
            files: files
                .iter()
                .map(|(partition, chosen)| (*partition, pick(chosen).clone()))
                .collect(),
        })
    }
}

impl KeyedFiles for LookupFiles {
    fn files(&self, partition: u32) -> usize {
        self.files.get(&partition).map_or(0, Vec::len)
    }

    fn load(
        &self,
        partition: u32,
        index: usize,
    ) -> BoxFuture<'_, sluice_core::Result<Arc<Vec<RecordBatch>>>> {
        Box::pin(async move {
            let path = self
                .files
                .get(&partition)
                .and_then(|files| files.get(index))
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "partition {partition} has no state file {index}"
                    ))
                })?;
            self.reader.rows(path).await
        })
    }
}

/// Chooses what the task reads of its partitions' state files (see [`partition_files`])
/// and reads the rows its plan needs whole up front: windows' and the sessions' of the
/// files it rewrites (deduplication's keys and sessions' other rows are looked up file
/// by file while the plan runs).
pub(crate) async fn load(
    job: &PreparedJob,
    cache: &Arc<StateCache>,
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
    let rule = stage_operator(stage, job).ok_or_else(|| {
        Error::InvalidRequest("a stateless job's task was sent a state stage".into())
    })?;
    let files: BTreeMap<u32, PartitionFiles> = by_partition
        .into_iter()
        .map(|(partition, paths)| {
            let chosen = partition_files(&rule, &paths, task.watermark_ms);
            (partition, chosen)
        })
        .collect();
    let hold = match rule {
        StatefulOperator::Dedup { .. } => files
            .values()
            .flat_map(|chosen| chosen.merged.iter().cloned())
            .collect(),
        _ => HashSet::new(),
    };
    let reader = Arc::new(StateReader {
        file_io: job.sink.table.file_io().clone(),
        cache: cache.clone(),
        schema: stage.state_schema(),
        rule: Some(rule.clone()),
        watermark_ms: task.watermark_ms,
        bytes_read: AtomicU64::new(0),
        hold,
        held: Mutex::default(),
    });
    let mut rows: HashMap<u32, Vec<RecordBatch>> = HashMap::new();
    if !rule.is_dedup() {
        for (partition, chosen) in &files {
            for path in &chosen.read {
                let read = reader.rows(path).await?;
                rows.entry(*partition)
                    .or_default()
                    .extend(read.iter().cloned());
            }
        }
    }
    let state = match (&stage.kind, Sessions::of(&rule)) {
        (ShuffleStateKind::DedupRows { key, .. }, _) => CarriedState::Lookup(DedupLookup {
            key: key.clone(),
            remembered: LookupFiles::of(&reader, &files, |chosen| &chosen.read),
        }),
        (ShuffleStateKind::SessionRows, Some(sessions)) => CarriedState::Sessions(SessionLookup {
            key: sessions.key.clone(),
            rewritten: rows,
            others: LookupFiles::of(&reader, &files, |chosen| &chosen.carried),
            looked_up: Mutex::default(),
        }),
        _ => CarriedState::Rows(rows),
    };
    Ok(StageState {
        rows: Arc::new(CarriedRows {
            stage_id: stage.input_stage,
            state,
            yielded: Default::default(),
        }),
        files,
        reader,
    })
}

/// Writes, for each partition the task reduced, one file of what the batch adds to its
/// state under the batch's watermark, and lists it with the files carried over: for
/// windows, the merged partial aggregates of open windows from the files read and the
/// batch; for sessions, the rows of open sessions; for deduplication, the keys the batch
/// saw first, with the keys of the files it merges.
pub(crate) async fn keep(
    job: &PreparedJob,
    stage: &ShuffleStateStage,
    loaded: &StageState,
    task: &TaskDefinition,
    prefix: &str,
) -> Result<KeptState> {
    let file_io = job.sink.table.file_io();
    let location = job.sink.table.metadata().location();
    let state_schema = stage.state_schema();
    let watermark = task.watermark_ms;
    let rule_of_stage = stage_operator(stage, job);
    let mut yielded = loaded.rows.take_yielded();
    let partitions: BTreeSet<u32> = loaded.files.keys().chain(yielded.keys()).copied().collect();
    let mut kept_state = KeptState {
        files: vec![],
        bytes_written: 0,
    };
    for partition in partitions {
        let chosen = loaded.files.get(&partition).cloned().unwrap_or_default();
        let state = loaded.rows.state.rows(partition).to_vec();
        let new = yielded.remove(&partition).unwrap_or_default();
        let (kept, lifetime): (Vec<RecordBatch>, _) = match (&stage.kind, &rule_of_stage) {
            (ShuffleStateKind::SessionRows, Some(operator @ StatefulOperator::Sessions { .. })) => {
                let sessions = Sessions::of(operator).expect("a session operator");
                let CarriedState::Sessions(lookup) = &loaded.rows.state else {
                    return Err(Error::InvalidRequest(
                        "a session stage's state was not looked up by key".into(),
                    ));
                };
                let context = lookup.take_looked_up(partition);
                let open = sessions.open_rows(
                    &stage.schema,
                    &[state, new].concat(),
                    &context,
                    watermark,
                )?;
                (vec![open.rows], open.ends)
            }
            (ShuffleStateKind::DedupRows { .. }, Some(rule @ StatefulOperator::Dedup { .. })) => {
                let mut kept = vec![];
                for path in &chosen.merged {
                    kept.extend(loaded.reader.rows(path).await?.iter().cloned());
                }
                for batch in &new {
                    let batch = rule.still_needed(batch, watermark)?;
                    kept.push(files::conform(&batch, &state_schema)?);
                }
                let lifetime = rule.lifetime(&kept)?;
                (kept, lifetime)
            }
            (ShuffleStateKind::WindowPartials(_), Some(rule @ StatefulOperator::Windows)) => {
                let kept = stage
                    .merge([state, new].concat(), job.context.clone())
                    .await?
                    .iter()
                    .map(|b| rule::select_windows(b, watermark, true))
                    .collect::<Result<Vec<_>>>()?;
                let lifetime = rule.lifetime(&kept)?;
                (kept, lifetime)
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
            shard: Some((stage.stage_id, partition)),
        };
        if let Some(file) =
            files::write_state(file_io, target, lifetime, &state_schema, &kept).await?
        {
            kept_state.bytes_written += file.bytes;
            loaded.reader.cache.insert(&file.path, kept);
            kept_state.files.push(file);
        }
        kept_state
            .files
            .extend(chosen.carried.iter().map(|path| StateFile::carried(path)));
    }
    Ok(kept_state)
}
