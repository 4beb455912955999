//! Running one task: read its offset ranges (stages that read the stream), run a fresh
//! copy of its stage plan, then keep the output for the shuffle or write data files.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use sluice_core::{failpoint, BatchId, Error, Result};
use sluice_iceberg::data_files::attempt_prefix;
use sluice_kafka::decode::{dead_letter_batch, DeadLetter};
use sluice_kafka::offsets::OffsetRange;
use sluice_kafka::read::Connection;
use sluice_plan::{MapOutputLocation, ShuffleFetchError, ShuffleFetcher, ShuffleKey, TaskInputs};
use sluice_proto::v1::{
    FailureKind, PartitionEventTime, TaskDefinition, TaskFailure, TaskSuccess, TaskTimes,
};
use tracing::{debug, Instrument};

use crate::prepared::{Output, PreparedJob, PreparedStage};
use crate::shuffle_store::ShuffleStore;
use crate::source::{ConsumerPool, EventTime, TaskInput};
use crate::state::cache::StateCache;
use crate::state::files::StateFileTarget;
use crate::state::rule::StateRule;
use crate::state::{self, late_records};
use sluice_plan::StatefulOperator;

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

/// The failure sent back to the driver for an error; a map output that could not be
/// fetched is named, so that the driver runs its map task again.
pub fn failure(error: &Error) -> TaskFailure {
    let query = match error {
        Error::Query(query) => query.downcast_ref::<datafusion::error::DataFusionError>(),
        _ => None,
    };
    if let Some(query) = query {
        if let Some(lost) = ShuffleFetchError::find(query) {
            return TaskFailure {
                retryable: true,
                kind: FailureKind::ShuffleFetch.into(),
                message: lost.to_string(),
                lost_stage: Some(lost.stage_id),
                lost_map_task: Some(lost.map_task),
            };
        }
    }
    TaskFailure {
        retryable: !error.is_user_error(),
        kind: failure_kind(error).into(),
        message: error.to_string(),
        lost_stage: None,
        lost_map_task: None,
    }
}

/// What a task needs besides its job and definition.
pub struct TaskEnv {
    pub pool: Arc<ConsumerPool>,
    pub store: Arc<ShuffleStore>,
    pub fetcher: Arc<dyn ShuffleFetcher>,
    /// Decoded state files, reused by the next batch that reads them here.
    pub state_cache: Arc<StateCache>,
}

/// The wire kind of an error.
fn failure_kind(error: &Error) -> FailureKind {
    match error {
        Error::InvalidSpec { .. } => FailureKind::InvalidSpec,
        Error::InvalidSql { .. } => FailureKind::InvalidSql,
        Error::MalformedRecord { .. } => FailureKind::MalformedRecord,
        Error::Kafka { .. } => FailureKind::Kafka,
        Error::OffsetRange { .. } => FailureKind::OffsetRange,
        Error::DataLoss { .. } => FailureKind::DataLoss,
        Error::Iceberg { .. } => FailureKind::Iceberg,
        Error::SchemaMismatch { .. } => FailureKind::SchemaMismatch,
        Error::Query(_) => FailureKind::Query,
        Error::Arrow(_) => FailureKind::Arrow,
        Error::InvalidRequest(_) => FailureKind::InvalidRequest,
        Error::Storage { .. } => FailureKind::Storage,
        Error::Io { .. } => FailureKind::Io,
    }
}

/// Runs one task to completion, phase by phase: read its splits of the source, carry and
/// load its state, execute its stage, write its outputs, report.
pub async fn run_task(
    job: Arc<PreparedJob>,
    env: &TaskEnv,
    task: &TaskDefinition,
    ranges: Vec<OffsetRange>,
) -> Result<TaskSuccess> {
    let span = tracing::info_span!("task", job = %task.job_id, batch = task.batch_id, stage = task.stage_id, task = task.task_id, attempt = task.attempt);
    async move {
        let started = Instant::now();
        let Some(stage) = job.stages.get(&task.stage_id) else {
            return Err(Error::InvalidRequest(format!(
                "job {} has no stage {}",
                task.job_id, task.stage_id
            )));
        };
        env.store.release_before(&task.job_id, task.batch_id);
        let mut report = read_input(&job, env, task, ranges).await?;
        let read_ms = started.elapsed().as_millis();
        failpoint::hit(
            failpoint::EXECUTOR_RECORDS_READ,
            BatchId::new(task.batch_id),
        )
        .await;
        let source = std::mem::take(&mut report.batches);
        if !task.report_input {
            // The batches go to the plan; the rest is reported by one stage reading the
            // stream.
            report = TaskInput::default();
        }
        let prefix = attempt_prefix(
            &task.job_id,
            BatchId::new(task.batch_id),
            task.term,
            task.task_id,
            task.attempt,
        );
        let state_started = Instant::now();
        let carried = carry_source_state(&job, task, source, &prefix, &mut report).await?;
        let state_stage = job
            .shuffle_state
            .iter()
            .find(|stage| stage.stage_id == task.stage_id);
        let stage_state = match state_stage {
            Some(stage) => Some(state::stage::load(&job, &env.state_cache, stage, task).await?),
            None => None,
        };
        let mut state_time = state_started.elapsed();
        let executed = execute(&job, env, task, stage, carried.rows, &stage_state).await?;
        let mut state_bytes_written = carried.state.as_ref().map_or(0, |s| s.bytes);
        let mut state: Vec<_> = carried.state.into_iter().collect();
        let state_started = Instant::now();
        if let (Some(loaded), Some(stage)) = (&stage_state, state_stage) {
            let kept = state::stage::keep(&job, stage, loaded, task, &prefix).await?;
            state_bytes_written = kept.bytes_written;
            state = kept.files;
        }
        state_time += state_started.elapsed();
        let state_bytes_read =
            carried.bytes_read + stage_state.as_ref().map_or(0, |s| s.bytes_read());
        let write_started = Instant::now();
        let dead_letters = std::mem::take(&mut report.dead_letters);
        let written = write_outputs(
            &job,
            env,
            task,
            stage,
            executed.outputs,
            executed.schema,
            &prefix,
            dead_letters,
        )
        .await?;
        let write_time = write_started.elapsed();
        failpoint::hit(
            failpoint::EXECUTOR_FILES_WRITTEN,
            BatchId::new(task.batch_id),
        )
        .await;
        debug!(
            input_rows = report.input_rows,
            output_rows = written.output_rows,
            read_ms,
            planned_ms = executed.planned_ms,
            executed_ms = executed.executed_ms,
            total_ms = started.elapsed().as_millis(),
            "task done"
        );
        let times = TaskTimes {
            read_ms: read_ms as u64,
            decode_ms: report.decode_time.as_millis() as u64,
            state_ms: state_time.as_millis() as u64,
            execute_ms: (executed.executed_ms - executed.planned_ms) as u64,
            write_ms: write_time.as_millis() as u64,
        };
        let kept = KeptState {
            files: state,
            bytes_written: state_bytes_written,
            bytes_read: state_bytes_read,
        };
        Ok(success(report, written, kept, times))
    }
    .instrument(span)
    .await
}

/// Reads and decodes the task's splits of the job's source (its Kafka ranges, with one
/// pooled consumer for all of them, off the async threads); nothing without splits.
async fn read_input(
    job: &Arc<PreparedJob>,
    env: &TaskEnv,
    task: &TaskDefinition,
    ranges: Vec<OffsetRange>,
) -> Result<TaskInput> {
    if ranges.is_empty() {
        return Ok(TaskInput::default());
    }
    let job = job.clone();
    let pool = env.pool.clone();
    let span = tracing::info_span!("kafka_read");
    let watermark_ms = task.watermark_ms;
    tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        let kafka = &job.spec.source().kafka;
        let event_time = job.spec.event_time().watermark.map(|w| EventTime {
            column: &w.column,
            watermark_ms,
        });
        pool.read(
            &Connection::of(kafka),
            &job.decoder,
            &ranges,
            kafka.fail_on_data_loss,
            event_time,
        )
    })
    .await
    .map_err(|e| match e.try_into_panic() {
        // Reported by the service as the task's panic.
        Ok(panic) => std::panic::resume_unwind(panic),
        Err(e) => Error::Io {
            context: "reader thread".into(),
            source: std::io::Error::other(e.to_string()),
        },
    })?
}

/// The rows the source task hands the plan and the state it keeps: for a stateful job's
/// reporting task the on-time records with the state they join (late ones counted in
/// `report` and, when the spec says so, added to its dead letters), else the records.
async fn carry_source_state(
    job: &PreparedJob,
    task: &TaskDefinition,
    source: Vec<RecordBatch>,
    prefix: &str,
    report: &mut TaskInput,
) -> Result<SourceState> {
    let Some(operator) = job.operator.as_ref().filter(|_| task.report_input) else {
        return Ok(SourceState {
            rows: source,
            ..SourceState::default()
        });
    };
    let carried = carry_state(job, operator, task, source, prefix).await?;
    // A stateful job drops its late records (see `StateRule::split_late`).
    report.late_records = carried.dropped;
    if job.spec.event_time().dead_letters_late_records() {
        report.dead_letters.extend(late_records::late_dead_letters(
            &carried.late,
            &job.value_columns,
            task.watermark_ms,
        )?);
    }
    Ok(carried)
}

/// What a task's stage computed.
struct Executed {
    schema: SchemaRef,
    /// Record batches per output partition.
    outputs: Vec<Vec<RecordBatch>>,
    /// When the plan was decoded and when it had run, in ms since the task started.
    planned_ms: u128,
    executed_ms: u128,
}

/// Decodes the stage's plan over the task's inputs (its source rows, the shuffle inputs
/// it fetches, the state it carries) and runs every output partition.
async fn execute(
    job: &PreparedJob,
    env: &TaskEnv,
    task: &TaskDefinition,
    stage: &PreparedStage,
    source: Vec<RecordBatch>,
    stage_state: &Option<state::stage::StageState>,
) -> Result<Executed> {
    let started = Instant::now();
    let inputs = TaskInputs {
        job_id: task.job_id.clone(),
        batch_id: task.batch_id,
        source,
        partitions: (!task.partitions.is_empty()).then(|| task.partitions.clone()),
        shuffle: task
            .inputs
            .iter()
            .map(|input| {
                let locations = input
                    .outputs
                    .iter()
                    .map(|o| MapOutputLocation {
                        map_task: o.map_task,
                        flight_address: o.flight_address.clone(),
                    })
                    .collect();
                (input.stage_id, locations)
            })
            .collect(),
        fetcher: env.fetcher.clone(),
        carried: stage_state.as_ref().map(|s| s.rows.clone()),
    };
    let context = sluice_plan::task_context(&job.context, inputs);
    let stage_plan =
        sluice_plan::decode_plan(&stage.plan, &context).map_err(sluice_core::Error::query)?;
    let planned_ms = started.elapsed().as_millis();
    let schema = stage_plan.schema();
    let outputs = sluice_plan::execute_all_partitions(stage_plan, context)
        .instrument(tracing::info_span!("execute"))
        .await?;
    Ok(Executed {
        schema,
        outputs,
        planned_ms,
        executed_ms: started.elapsed().as_millis(),
    })
}

/// What a task wrote.
struct Written {
    data_files_json: Vec<String>,
    dead_letter_files_json: Vec<String>,
    output_rows: u64,
}

/// Writes the stage's outputs: a sink stage's as data files (a windowed job's only of the
/// windows the watermark closed; the others are computed again from the state), a map
/// stage's into the shuffle store; and the task's dead letters.
#[allow(clippy::too_many_arguments)]
async fn write_outputs(
    job: &PreparedJob,
    env: &TaskEnv,
    task: &TaskDefinition,
    stage: &PreparedStage,
    outputs: Vec<Vec<RecordBatch>>,
    schema: SchemaRef,
    prefix: &str,
    dead_letters: Vec<DeadLetter>,
) -> Result<Written> {
    let windowed = job.spec.event_time().is_windowed();
    let outputs = if windowed && stage.output == Output::Sink {
        outputs
            .iter()
            .map(|partition| {
                partition
                    .iter()
                    .map(|b| state::rule::select_windows(b, task.watermark_ms, false))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?
    } else {
        outputs
    };
    let output_rows: usize = outputs.iter().flatten().map(|b| b.num_rows()).sum();
    let key = ShuffleKey {
        job_id: task.job_id.clone(),
        batch_id: task.batch_id,
        stage_id: task.stage_id,
        map_task: task.task_id,
        partition: 0,
    };
    let data_files_json = match stage.output {
        Output::Sink => {
            let batches: Vec<RecordBatch> = outputs.into_iter().flatten().collect();
            job.sink
                .write(&batches, prefix.to_string())
                .instrument(tracing::info_span!("write"))
                .await?
        }
        Output::Hash => {
            env.store
                .put(&key, schema, outputs)
                .map_err(shuffle_error)?;
            vec![]
        }
        Output::Single => {
            let all = outputs.into_iter().flatten().collect();
            env.store
                .put(&key, schema, vec![all])
                .map_err(shuffle_error)?;
            vec![]
        }
    };
    let dead_letter_files_json = match (&job.dead_letters, dead_letters.is_empty()) {
        (Some(table), false) => {
            let letters = dead_letter_batch(&dead_letters)?;
            table.write(&[letters], prefix.to_string()).await?
        }
        _ => vec![],
    };
    Ok(Written {
        data_files_json,
        dead_letter_files_json,
        output_rows: if stage.output == Output::Sink {
            output_rows as u64
        } else {
            0
        },
    })
}

/// The state a task leaves, as it reports it.
struct KeptState {
    files: Vec<state::files::StateFile>,
    bytes_written: u64,
    bytes_read: u64,
}

/// The task's report to the driver.
fn success(report: TaskInput, written: Written, state: KeptState, times: TaskTimes) -> TaskSuccess {
    TaskSuccess {
        data_files_json: written.data_files_json,
        input_rows: report.input_rows,
        output_rows: written.output_rows,
        malformed_skipped: report.malformed_skipped,
        offsets_lost: report.offsets_lost,
        dead_letter_files_json: written.dead_letter_files_json,
        max_event_times: report
            .max_event_times
            .into_iter()
            .map(|(topic, partition, max_event_time_ms)| PartitionEventTime {
                topic,
                partition,
                max_event_time_ms,
            })
            .collect(),
        late_records: report.late_records,
        state_rows: state.files.iter().map(|s| s.rows).sum(),
        state_bytes: state.files.iter().map(|s| s.bytes).sum(),
        state_files: state.files.into_iter().map(|s| s.path).collect(),
        state_bytes_written: state.bytes_written,
        state_bytes_read: state.bytes_read,
        times: Some(times),
    }
}

/// A windowed job's source rows for the SQL and the state it leaves: late rows (their
/// window already written) are dropped, the batch's starting state is added, and the rows
/// of windows still open after the batch's watermark are written as this task's state.
async fn carry_state(
    job: &PreparedJob,
    rule: &StatefulOperator,
    task: &TaskDefinition,
    source: Vec<RecordBatch>,
    prefix: &str,
) -> Result<SourceState> {
    let file_io = job.sink.table.file_io();
    let mut rows = Vec::with_capacity(source.len() + task.state_files.len());
    let mut still_needed = Vec::with_capacity(rows.capacity());
    let mut dropped = 0;
    let mut late = Vec::new();
    for batch in source {
        let (on_time, late_rows) = rule.split_late(&batch, task.watermark_ms)?;
        dropped += late_rows.num_rows() as u64;
        late.push(late_rows);
        // On-time rows are all still needed (see `StateRule::still_needed`).
        still_needed.push(on_time.clone());
        rows.push(on_time);
    }
    // With the state after the shuffle, a source task gets state files only from before
    // the state moved there (an upgrade): their rows join the batch's and the state stage
    // keeps what it needs of them.
    let kept_here = job.shuffle_state.is_empty();
    let (state, bytes_read) = state::files::read_state(file_io, &task.state_files).await?;
    for batch in state {
        let batch = rule.read_back(state::files::conform(&batch, &job.scan_schema)?)?;
        if kept_here {
            still_needed.push(rule.still_needed(&batch, task.watermark_ms)?);
        }
        rows.push(batch);
    }
    if !kept_here {
        return Ok(SourceState {
            rows,
            state: None,
            bytes_read,
            dropped,
            late,
        });
    }
    let target = StateFileTarget {
        location: job.sink.table.metadata().location(),
        prefix,
        shard: None,
    };
    let lifetime = rule.lifetime(&still_needed)?;
    let written =
        state::files::write_state(file_io, target, lifetime, &job.scan_schema, &still_needed)
            .await?;
    Ok(SourceState {
        rows,
        state: written,
        bytes_read,
        dropped,
        late,
    })
}

/// What a source task hands the SQL and, for a stateful job, leaves for the next batch.
#[derive(Default)]
struct SourceState {
    /// The batch's on-time records and the state it started from.
    rows: Vec<RecordBatch>,
    /// The state file written (none when no window is open).
    state: Option<state::files::StateFile>,
    /// Bytes of state files read.
    bytes_read: u64,
    /// Late records, dropped.
    dropped: u64,
    /// Their rows.
    late: Vec<RecordBatch>,
}

fn shuffle_error(error: crate::shuffle_store::ShuffleStoreError) -> Error {
    Error::Io {
        context: "keeping a map output".into(),
        source: std::io::Error::other(error.to_string()),
    }
}
