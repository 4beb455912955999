//! One job's batch loop: plan, schedule, execute, commit, checkpoint, repeat on the trigger.
//! External failures (Kafka, etcd, catalog, executors) pause the job and retry with
//! backoff; user failures (bad data, bad SQL) fail it. Every batch is logged before it
//! runs, so a retry re-runs exactly the same ranges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::JobLog;
use crate::protocol::WatermarkRule;
use crate::protocol::{BatchPlan, Checkpoint};
use sluice_core::spec::{JobSpec, Trigger};
use sluice_core::{Error as CommonError, JobId};
use sluice_iceberg::sink::total_records;
use tracing::{info, info_span, warn, Instrument};

use super::cluster::{SchedulerExecution, SchedulerRewrites};
use super::{JobShared, JobState, StopRequest};
use crate::batch::{log_plan_to, BatchOutcome, BatchProtocol, BatchState, SinkTables};
use crate::compaction::{Compacted, Compactor};
use crate::error::{Error, Result};
use crate::job::plan::JobRef;
use crate::planner::{self, LatestOffsets};
use crate::progress::{batch_progress, BatchTimings};
use crate::scheduler::Scheduler;
use crate::source::kafka::KafkaSource;
use crate::source::{self, Source};

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(10);

/// A lookup of the latest offsets, running on a blocking thread.
type LatestLookup = tokio::task::JoinHandle<Result<LatestOffsets>>;

/// Outcome of one pass of the loop.
enum Step {
    /// A batch was committed.
    Committed,
    /// No new data.
    Idle,
}

/// Runs a job's batches until it finishes, fails or is stopped.
pub struct JobRunner {
    shared: Arc<JobShared>,
    protocol: BatchProtocol,
    scheduler: Scheduler,
    /// The job's stage plans, made at its first batch.
    job: Option<JobRef>,
    /// The job's source (one per job for now).
    source: KafkaSource,
    /// `available_now`: the next batch's offset lookup, started once this batch was
    /// logged (its planning is capped by `limit` anyway, so it need not wait for a fresh
    /// one).
    next_latest: Option<LatestLookup>,
    /// For `once` / `available_now`: the offsets to stop at, fixed at the first batch.
    limit: Option<LatestOffsets>,
    last_trigger: Instant,
    /// Whether the status's row total was read from the table.
    total_rows_loaded: bool,
    /// `once` / `available_now` with windows: the records are all read and one more
    /// batch writes what the final watermark closes (see `planner::flush_plan`).
    finishing: bool,
    /// Rewrites small files between batches (`sink.iceberg.compaction`).
    compactor: Compactor,
    /// The batch logged and run while the last one committed, to commit next.
    in_flight: Option<InFlight>,
}

impl JobRunner {
    /// A runner; `job` is the job's plan when already made, else it is made at the first
    /// batch.
    pub fn new(
        shared: Arc<JobShared>,
        log: JobLog,
        scheduler: Scheduler,
        job: Option<JobRef>,
    ) -> JobRunner {
        let dead_letters = shared.spec.writes_dead_letters();
        let sink_spec = &shared.spec.sink.iceberg;
        let sink = SinkTables::new(sink_spec, dead_letters);
        let compactor = Compactor::new(
            shared.job_id.clone(),
            sink_spec.compaction.clone(),
            sink_spec.target_file_size(),
        );
        let source = KafkaSource::new(shared.spec.source_name(), &shared.spec.source().kafka);
        JobRunner {
            compactor,
            source,
            protocol: BatchProtocol::new(shared.job_id.clone(), log, sink)
                .with_watermark(watermark_rule(&shared.spec))
                .with_state(shared.spec.event_time().is_stateful()),
            shared,
            scheduler,
            job,
            next_latest: None,
            limit: None,
            last_trigger: Instant::now(),
            total_rows_loaded: false,
            finishing: false,
            in_flight: None,
        }
    }

    /// The loop; returns the final state (or `Running` when interrupted by shutdown or
    /// when this driver turned out to be deposed).
    pub async fn run(mut self) -> (JobState, String) {
        let trigger = self.shared.spec.trigger();
        let mut stop = self.shared.stop.subscribe();
        let mut retry_delay = FIRST_RETRY_DELAY;
        info!(job = %self.shared.job_id, ?trigger, "job started");
        loop {
            // A batch in flight is committed first (no further one is started).
            match *stop.borrow() {
                _ if self.in_flight.is_some() => {}
                StopRequest::User => return (JobState::Stopped, String::new()),
                StopRequest::DriverShutdown => return (JobState::Running, String::new()),
                StopRequest::None => {}
            }
            let started = Instant::now();
            let wait = match self.step().await {
                Ok(Step::Committed) if self.finishing => {
                    return (JobState::Finished, String::new())
                }
                Ok(Step::Committed) => {
                    retry_delay = FIRST_RETRY_DELAY;
                    self.shared.set(|s| s.message.clear());
                    match trigger {
                        // Its trigger was due when it started.
                        _ if self.in_flight.is_some() => Duration::ZERO,
                        Trigger::Once if self.flushes_windows() => {
                            self.finishing = true;
                            Duration::ZERO
                        }
                        Trigger::Once => return (JobState::Finished, String::new()),
                        Trigger::AvailableNow => Duration::ZERO,
                        Trigger::ProcessingTime(interval) => {
                            interval.saturating_sub(started.elapsed())
                        }
                    }
                }
                Ok(Step::Idle) => match trigger {
                    Trigger::AvailableNow if self.flushes_windows() && !self.finishing => {
                        self.finishing = true;
                        Duration::ZERO
                    }
                    Trigger::Once | Trigger::AvailableNow => {
                        return (JobState::Finished, String::new())
                    }
                    Trigger::ProcessingTime(interval) => interval.saturating_sub(started.elapsed()),
                },
                Err(Error::Fenced { message }) => {
                    // Another driver leads: it runs the job; this one commits nothing more.
                    warn!(job = %self.shared.job_id, %message, "deposed: leaving the job to the new leader");
                    return (JobState::Running, String::new());
                }
                Err(error) if error.is_user_error() => {
                    warn!(job = %self.shared.job_id, %error, "job failed");
                    return (JobState::Failed, error.to_string());
                }
                Err(error) => {
                    self.next_latest = None;
                    warn!(job = %self.shared.job_id, %error, retry_in = ?retry_delay, "batch could not complete; retrying");
                    let message = format!("retrying in {retry_delay:?}: {error}");
                    self.shared
                        .progress
                        .publish_pause(&self.shared.job_id, &message);
                    self.shared.set(|s| s.message = message);
                    if matches!(error, Error::Common(CommonError::Kafka { .. })) {
                        self.source.reset();
                    }
                    // The batch may or may not have reached the table: read it again.
                    let catalog_failed =
                        matches!(error, Error::Common(CommonError::Iceberg { .. }));
                    self.protocol.sink.forget(catalog_failed);
                    let wait = retry_delay;
                    retry_delay = (retry_delay * 2).min(MAX_RETRY_DELAY);
                    wait
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The latest offsets of the job's partitions: the lookup the last batch started for
    /// this one, else a new one.
    async fn latest_offsets(&mut self) -> Result<LatestOffsets> {
        let lookup = match self.next_latest.take() {
            Some(lookup) => lookup,
            None => self.source.start_lookup()?,
        };
        looked_up(lookup).await
    }

    async fn checkpoint(&mut self, latest: &LatestOffsets) -> Result<Checkpoint> {
        if let Some(checkpoint) = self.protocol.log.checkpoint().await? {
            check_sources(&checkpoint, &self.shared.spec)?;
            return Ok(checkpoint);
        }
        let position = self.source.start(latest).await?;
        let initial = Checkpoint::initial([(self.source.name().to_string(), position)].into());
        self.protocol.log.put_initial_checkpoint(&initial).await?;
        Ok(initial)
    }

    /// The job's stage plans; planned once (a failed planning is tried again next time).
    async fn job_ref(&mut self) -> Result<JobRef> {
        if let Some(job) = &self.job {
            return Ok(job.clone());
        }
        let job = JobRef::plan(&self.shared.job_id, &self.shared.spec).await?;
        self.job = Some(job.clone());
        Ok(job)
    }

    /// Whether the job ends with a batch that writes the windows the final watermark
    /// closes.
    fn flushes_windows(&self) -> bool {
        self.shared.spec.event_time().is_windowed()
    }

    /// One batch: the one the last step left in flight, else recover the pending one or
    /// plan the next; run it through the protocol, and (see [`InFlight`]) log and run the
    /// batch after it while it commits.
    async fn step(&mut self) -> Result<Step> {
        let trigger_started = Instant::now();
        let job = self.job_ref().await?;
        let since_previous_trigger = trigger_started - self.last_trigger;
        let current = match self.in_flight.take() {
            Some(in_flight) => in_flight,
            None => match self.start_batch(&job, trigger_started).await? {
                Some(started) => started,
                None => return Ok(Step::Idle),
            },
        };
        self.last_trigger = trigger_started;
        let batch = current.state.batch_id();
        let next_batch = self.plan_in_flight(&current);
        let span = info_span!("batch", job = %self.shared.job_id, %batch);
        async {
            let InFlight {
                state,
                checkpoint,
                latest,
                recovered,
                plan: planned,
                execute,
                ..
            } = current;
            let log = self.protocol.log.clone();
            let JobRunner {
                shared,
                protocol,
                scheduler,
                compactor,
                ..
            } = self;
            let finish = async {
                let outcome = protocol.finish(state, &checkpoint, recovered).await?;
                let rewrites = SchedulerRewrites {
                    scheduler,
                    job: &job,
                };
                let compacted = compact(compactor, protocol, &rewrites, &shared.job_id).await?;
                Ok::<_, Error>((outcome, compacted))
            };
            let next = async {
                let (plan, latest) = match next_batch?.plan().await {
                    Ok(planned) => planned?,
                    Err(error) => return Some(Err(error)),
                };
                let mut execution = SchedulerExecution {
                    scheduler,
                    job: &job,
                    spec: &shared.spec,
                };
                let logging = Instant::now();
                let logged = match log_plan_to(&log, plan).await {
                    Ok(logged) => logged,
                    Err(error) => return Some(Err(error)),
                };
                let plan_time = logging.elapsed();
                let ran = execution.run_tasks(&log, logged).await;
                Some(ran.map(|(state, took)| (state, latest, logging, plan_time, took)))
            };
            let next_span = info_span!("batch", job = %shared.job_id, batch = %batch.next());
            let (finished, next) = tokio::join!(finish, next.instrument(next_span));
            let (outcome, compacted) = finished?;
            let timings = BatchTimings {
                plan: planned,
                execute,
                commit: outcome.timings.commit,
                checkpoint: outcome.timings.checkpoint,
                since_previous_trigger,
            };
            let watermark = protocol.watermark.as_ref();
            publish_committed(shared, watermark, &outcome, compacted, &latest, &timings);
            if let Some(next) = next {
                // Logged, so a failed run is recovered (and run again) by the next step.
                let (state, latest, planned_at, plan, execute) = next?;
                self.in_flight = Some(InFlight {
                    state,
                    checkpoint: outcome.checkpoint,
                    latest,
                    recovered: false,
                    planned_at,
                    plan,
                    execute,
                });
            }
            Ok(Step::Committed)
        }
        .instrument(span)
        .await
    }

    /// Recovers the pending batch or plans and logs the next, and runs its tasks; `None`
    /// when there is nothing new to run.
    async fn start_batch(
        &mut self,
        job: &JobRef,
        trigger_started: Instant,
    ) -> Result<Option<InFlight>> {
        let latest = self.latest_offsets().await?;
        let checkpoint = self.checkpoint(&latest).await?;
        if let Some(source) = checkpoint.sources.get(self.source.name()) {
            self.source.check(&source.position, &latest)?;
        }
        let trigger = self.shared.spec.trigger();
        if self.limit.is_none() && matches!(trigger, Trigger::Once | Trigger::AvailableNow) {
            self.limit = Some(latest.clone());
        }
        if !self.total_rows_loaded {
            let table = self.protocol.sink.main_table().await?;
            self.shared.set(|s| s.total_rows = total_records(&table));
            self.total_rows_loaded = true;
        }
        let (state, recovered) = match self.protocol.recover(&checkpoint).await? {
            Some(state) => (state, true),
            None => {
                let plan = if self.finishing {
                    planner::flush_plan(&checkpoint, sluice_core::now_ms())
                } else {
                    let rule = self.protocol.watermark;
                    source::plan_after(
                        &self.source,
                        &checkpoint,
                        &latest,
                        self.limit.as_ref(),
                        rule.as_ref(),
                        sluice_core::now_ms(),
                    )
                    .or_else(|| self.quiet_plan(&checkpoint))
                };
                match plan {
                    Some(plan) => (self.protocol.log_plan(plan).await?, false),
                    None => return Ok(None),
                }
            }
        };
        if matches!(trigger, Trigger::AvailableNow) && !self.pipelines() {
            // Overlaps the next batch's lookup (about 4 ms for 100 partitions on one
            // machine) with this batch. A `processing_time` job looks up when its trigger
            // fires, so that its batches take what arrived until then.
            self.next_latest = Some(self.source.start_lookup()?);
        }
        let plan = trigger_started.elapsed();
        let mut execution = SchedulerExecution {
            scheduler: &self.scheduler,
            job,
            spec: &self.shared.spec,
        };
        let (state, execute) = execution.run_tasks(&self.protocol.log, state).await?;
        Ok(Some(InFlight {
            state,
            checkpoint,
            latest,
            recovered,
            planned_at: trigger_started,
            plan,
            execute,
        }))
    }

    /// A batch without new records for a quiet `processing_time` stream whose watermark
    /// closes state (see `planner::quiet_plan`); `None` for other jobs.
    fn quiet_plan(&self, checkpoint: &Checkpoint) -> Option<BatchPlan> {
        let event_time = self.shared.spec.event_time();
        let streams = matches!(self.shared.spec.trigger(), Trigger::ProcessingTime(_));
        if !streams || !event_time.is_stateful() {
            return None;
        }
        let rule = self.protocol.watermark.as_ref()?;
        let dedup = event_time.dedup.is_some();
        planner::quiet_plan(checkpoint, rule, dedup, sluice_core::now_ms())
    }

    /// Whether the job may run the next batch while the last one commits: jobs without
    /// state (windows, sessions, deduplication) or a watermark, whose next batch's ranges
    /// follow from the last one's plan alone, on `available_now` or (when behind, see
    /// [`JobRunner::plan_in_flight`]) on `processing_time`.
    fn pipelines(&self) -> bool {
        matches!(
            self.shared.spec.trigger(),
            Trigger::AvailableNow | Trigger::ProcessingTime(_)
        ) && !self.shared.spec.event_time().is_stateful()
            && self.protocol.watermark.is_none()
    }

    /// The batch to log and run while `current` commits: the ranges after its plan. For
    /// `available_now`, up to the latest offsets `current` was planned with (capped by the
    /// offsets fixed at the first batch anyway). For `processing_time`, only when the next
    /// trigger is already due (the job is behind: a backlog is read at full speed, a job
    /// that keeps up still runs a batch per interval), and up to offsets looked up now, as
    /// the trigger would. `None` when the job does not pipeline or is asked to stop (so that
    /// it stops after `current`), and after a recovered batch, since the batch after it may
    /// be logged already (it is recovered in its turn, with its logged ranges).
    fn plan_in_flight(&mut self, current: &InFlight) -> Option<NextBatch> {
        let stopping = !matches!(*self.shared.stop.borrow(), StopRequest::None);
        if !self.pipelines() || current.recovered || stopping {
            return None;
        }
        let latest = match self.shared.spec.trigger() {
            Trigger::ProcessingTime(interval) if current.planned_at.elapsed() < interval => {
                return None
            }
            Trigger::ProcessingTime(_) => Latest::Lookup(self.source.start_lookup()),
            _ => Latest::Known(current.latest.clone()),
        };
        Some(NextBatch {
            after: current.checkpoint.after(current.state.plan()),
            latest,
            limit: self.limit.clone(),
            source: self.source.clone(),
        })
    }
}

/// The offsets a lookup found.
async fn looked_up(lookup: LatestLookup) -> Result<LatestOffsets> {
    lookup.await.map_err(|e| Error::Timeout {
        what: format!("Kafka offset lookup ({e})"),
        seconds: 0,
    })?
}

/// The latest offsets a batch is planned up to: known, or being looked up. A lookup that
/// could not start fails the batch it was for, after the batch before it is committed.
enum Latest {
    Known(LatestOffsets),
    Lookup(Result<LatestLookup>),
}

/// The batch after the one committing, to be planned once its latest offsets are known
/// (see [`JobRunner::plan_in_flight`]).
struct NextBatch {
    /// The checkpoint the committing batch leaves.
    after: Checkpoint,
    latest: Latest,
    limit: Option<LatestOffsets>,
    source: KafkaSource,
}

impl NextBatch {
    /// Its plan and the latest offsets it was planned with; `None` when there is nothing
    /// new.
    async fn plan(self) -> Result<Option<(BatchPlan, LatestOffsets)>> {
        let latest = match self.latest {
            Latest::Known(latest) => latest,
            Latest::Lookup(lookup) => looked_up(lookup?).await?,
        };
        // Only jobs without a watermark pipeline (`JobRunner::pipelines`).
        let plan = source::plan_after(
            &self.source,
            &self.after,
            &latest,
            self.limit.as_ref(),
            None,
            sluice_core::now_ms(),
        );
        Ok(plan.map(|plan| (plan, latest)))
    }
}

/// A batch whose tasks ran (or that recovery found further on), waiting for its commit,
/// with what its progress report needs.
///
/// A job without state or a watermark keeps one between steps (`available_now`, or
/// `processing_time` when behind): batch N+1 is logged and run while batch N commits, so
/// the executors do not wait for the driver's commit, checkpoint and compaction. N+1's ranges start where N's plan ends; it commits only
/// after N's checkpoint. Recovery takes the batches beyond the checkpoint in order, so a
/// failure at any point leaves at most these two to recover (docs/architecture.md, "Two
/// batches in flight").
struct InFlight {
    /// `FilesWritten`, or `Committed` when recovery found it in the table.
    state: BatchState,
    /// The checkpoint before the batch.
    checkpoint: Checkpoint,
    /// The latest offsets when it was planned.
    latest: LatestOffsets,
    /// Whether it came from recovery (files of earlier attempts may exist).
    recovered: bool,
    /// When its planning began (a `processing_time` job's trigger).
    planned_at: Instant,
    /// How long planning and logging it took, and running its tasks.
    plan: Duration,
    execute: Duration,
}

/// Reports a committed batch: its log line, the job's status, and its progress record.
fn publish_committed(
    shared: &JobShared,
    watermark: Option<&WatermarkRule>,
    outcome: &BatchOutcome,
    compacted: Option<Compacted>,
    latest: &LatestOffsets,
    timings: &BatchTimings,
) {
    let mut progress = batch_progress(
        &shared.job_id,
        &outcome.plan,
        latest,
        &outcome.tasks,
        timings,
    );
    progress.executor_crashes = outcome.crashes;
    progress.watermark_ms = outcome.checkpoint.watermark_ms;
    if let Some(rule) = watermark {
        let view = outcome
            .checkpoint
            .watermark_at(rule, outcome.plan.planned_at_ms);
        let named = |(topic, partition): (String, i32)| format!("{topic}/{partition}");
        progress.watermark_partition = view.held_by.map(named).unwrap_or_default();
        progress.idle_partitions = view.idle.into_iter().map(named).collect();
    }
    if let Some(compacted) = compacted {
        progress.files_compacted = compacted.files_removed;
        progress.compacted_files_written = compacted.files_written;
        progress.bytes_compacted = compacted.bytes_removed;
        progress.compaction_ms = compacted.duration.as_millis() as u64;
    }
    info!(
        rows = progress.input_rows,
        output_rows = progress.output_rows,
        duration_ms = progress.duration_ms,
        appended = outcome.appended,
        "batch committed"
    );
    if progress.offsets_lost > 0 {
        warn!(
            offsets_lost = progress.offsets_lost,
            "offsets deleted from Kafka before they were processed were skipped"
        );
    }
    shared.set(|s| {
        s.last_committed_batch = outcome.checkpoint.batch_id.get();
        s.total_rows += progress.output_rows;
    });
    shared.progress.publish(progress);
}

/// Compacts the sink table after a batch when it is due. Only a lost leadership is an
/// error: a failed compaction is logged and tried again after a later batch.
async fn compact(
    compactor: &mut Compactor,
    protocol: &mut BatchProtocol,
    rewrites: &SchedulerRewrites<'_>,
    job_id: &JobId,
) -> Result<Option<Compacted>> {
    let compacted = compactor
        .run(&protocol.log, &mut protocol.sink, rewrites)
        .await;
    match compacted {
        Ok(compacted) => Ok(compacted),
        Err(fenced @ Error::Fenced { .. }) => Err(fenced),
        Err(error) => {
            warn!(job = %job_id, %error, "compaction failed; trying again after a later batch");
            protocol.sink.forget(false);
            Ok(None)
        }
    }
}

/// How the job's watermark follows its partitions; `None` without one. The spec was
/// validated at submit, so its durations parse.
fn watermark_rule(spec: &JobSpec) -> Option<WatermarkRule> {
    let watermark = spec.event_time().watermark?;
    WatermarkRule::of(watermark).ok()
}

/// Fails unless the checkpoint holds exactly the spec's sources: a source renamed in the
/// spec of a running job would otherwise be read again from its start.
fn check_sources(checkpoint: &Checkpoint, spec: &JobSpec) -> Result<()> {
    let held: Vec<&String> = checkpoint.sources.keys().collect();
    let named: Vec<&String> = spec.sources.keys().collect();
    if held == named {
        return Ok(());
    }
    Err(CommonError::spec(
        "sources",
        format!(
            "the job's checkpoint holds the position of source(s) {held:?} but the spec names {named:?}; keep the names of a job's sources (a spec's `source:` is the source named \"source\")"
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_other_sources_than_the_specs_is_refused_by_name() {
        let spec = |sources: &str| {
            JobSpec::parse(&format!(
                "name: j\n{sources}\nsql: SELECT 1\nsink: {{iceberg: {{catalog: {{type: sql, uri: 'sqlite:///c', warehouse: 'file:///w'}}, namespace: n, table: t}}}}"
            ))
            .unwrap()
        };
        let shorthand = spec("source: {kafka: {bootstrap_servers: b, topics: [t], format: raw}}");
        let named =
            spec("sources: {orders: {kafka: {bootstrap_servers: b, topics: [t], format: raw}}}");
        let checkpoint = Checkpoint::initial_kafka("source", Default::default());
        assert!(check_sources(&checkpoint, &shorthand).is_ok());
        let refused = check_sources(&checkpoint, &named).unwrap_err().to_string();
        assert!(
            refused.contains(r#"["source"]"#) && refused.contains(r#"["orders"]"#),
            "{refused}"
        );
    }
}
