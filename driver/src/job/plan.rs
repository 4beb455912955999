//! A job's plan as the driver runs it: the SQL planned and cut into stages once per job
//! and driver ([`JobRef::plan`]), what is refused at submit (an aggregate without a
//! window, a stateful query without `window_end` or reading the stream twice), and the
//! stages as the scheduler runs them.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sluice_core::spec::{Aggregation, JobSpec, WINDOW_END_COLUMN};
use sluice_core::JobId;
use sluice_plan::{plan_job, JobPlan, StageKind, StageOutput};
use sluice_proto::v1::{self, StagePlan};

use tracing::{debug, info};

use crate::error::Result;

/// A stage as the scheduler runs it.
#[derive(Debug, Clone)]
pub struct StageInfo {
    pub id: u32,
    pub kind: StageKind,
    pub output: StageOutput,
    pub inputs: Vec<u32>,
}

/// The job a batch belongs to, as executors need it: spec and stage plans, made once.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub job_id: JobId,
    pub spec_json: Arc<String>,
    pub stages: Arc<Vec<StageInfo>>,
    /// The rows the last stage writes to the sink table.
    pub output_schema: arrow::datatypes::SchemaRef,
    pub(crate) stage_plans: Arc<Vec<StagePlan>>,
    /// Names this spec and plan on executors, so that a changed job is prepared again.
    pub(crate) prepared_key: String,
    /// The first stage that reads the stream: its tasks count input rows.
    pub(crate) counting_stage: Option<u32>,
    /// Stateful jobs: the stages whose tasks carry the state: those keeping it after a
    /// shuffle (sessions, deduplication, windows; windows over deduplicated records have
    /// two), else the stream's stage.
    pub(crate) state_stages: Vec<u32>,
}

impl JobRef {
    /// Plans the job's SQL into stages (once per job and driver).
    pub async fn plan(job_id: &str, spec: &JobSpec) -> Result<JobRef> {
        let plan = plan_job(spec).await?;
        let kafka = spec.event_time();
        check_aggregation(&plan, spec)?;
        if kafka.is_stateful() {
            check_stateful_plan(&plan, kafka.is_windowed())?;
        }
        // State is kept after the shuffle where the plan allows (sessions always), else
        // by the stream stage's tasks.
        let after_shuffle: Vec<u32> = plan
            .shuffle_state_stages(spec)
            .iter()
            .map(|s| s.stage_id)
            .collect();
        let refuse = |message: &str| {
            Err(sluice_core::Error::InvalidSql {
                message: message.into(),
            }
            .into())
        };
        if kafka.session.is_some() && after_shuffle.is_empty() {
            return refuse("a session job's plan must shuffle the stream by the session key");
        }
        if kafka.dedup.is_some() && kafka.window.is_some() && after_shuffle.len() < 2 {
            return refuse(
                "windows over deduplicated records must be aggregated right after the deduplication, e.g. SELECT window_start, window_end, country, count(*) FROM source GROUP BY window_start, window_end, country",
            );
        }
        let counting_stage = plan
            .stages
            .iter()
            .find(|s| s.kind == StageKind::Source)
            .map(|s| s.id);
        let state_stages = match (after_shuffle.is_empty(), kafka.is_stateful()) {
            (false, _) => after_shuffle,
            (true, true) => counting_stage.into_iter().collect(),
            (true, false) => vec![],
        };
        let encoded = plan.encoded_stages()?;
        debug!(job = %job_id, plan = %plan.display(), "stage plans");
        let spec_json = spec.to_json();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        spec_json.hash(&mut hasher);
        encoded.hash(&mut hasher);
        let stage_plans = plan
            .stages
            .iter()
            .zip(encoded)
            .map(|(stage, bytes)| StagePlan {
                stage_id: stage.id,
                plan: bytes,
                output: wire_output(stage.output).into(),
            })
            .collect();
        let stages: Vec<StageInfo> = plan
            .stages
            .iter()
            .map(|s| StageInfo {
                id: s.id,
                kind: s.kind,
                output: s.output,
                inputs: s.inputs.clone(),
            })
            .collect();
        info!(job = %job_id, stages = stages.len(), "job planned");
        Ok(JobRef {
            job_id: JobId::new(job_id),
            prepared_key: format!("{job_id}@{:016x}", hasher.finish()),
            counting_stage,
            state_stages,
            spec_json: Arc::new(spec_json),
            stages: Arc::new(stages),
            output_schema: plan.output_schema,
            stage_plans: Arc::new(stage_plans),
        })
    }

    /// Whether batches exchange rows between executors.
    pub fn shuffles(&self) -> bool {
        self.stages.len() > 1
    }
}

/// Refuses a query that aggregates the stream without a window or session, unless the
/// spec asks for one result per batch (`aggregation: per_batch`): over a stream that
/// never ends such a result could never be final, and summed per batch it would silently
/// differ from the same SQL over the same records as one batch.
fn check_aggregation(plan: &JobPlan, spec: &JobSpec) -> Result<()> {
    if spec.event_time().is_windowed() || spec.aggregation == Aggregation::PerBatch {
        return Ok(());
    }
    if !plan.aggregates() {
        return Ok(());
    }
    Err(sluice_core::Error::InvalidSql {
        message: "the query aggregates the stream (GROUP BY, DISTINCT or an aggregate function) without a window, so its result could never be final. Group by an event-time window to get each group once over all its records, e.g. GROUP BY tumble(ts, INTERVAL '1 minute'), country (with source.watermark), or set `aggregation: per_batch` for one row per group per batch".into(),
    }
    .into())
}

/// Refuses what stateful jobs cannot do yet: a windowed query without `window_end` (its
/// rows could not be held back until their window closes), or one reading the stream more
/// than once (only one reading keeps the state).
fn check_stateful_plan(plan: &JobPlan, windowed: bool) -> Result<()> {
    let refuse = |message: String| Err(sluice_core::Error::InvalidSql { message }.into());
    if windowed && plan.output_schema.index_of(WINDOW_END_COLUMN).is_err() {
        return refuse(format!(
            "a windowed job's query must select {WINDOW_END_COLUMN} (a window's rows are written once the watermark passes its end), e.g. SELECT window_start, window_end, count(*) FROM source GROUP BY window_start, window_end"
        ));
    }
    let readings = plan
        .stages
        .iter()
        .filter(|s| s.kind == StageKind::Source)
        .count();
    if readings > 1 {
        return refuse(format!(
            "a windowed or deduplicating job's query may read the stream once; this one reads it {readings} times (a self-join or union of source)"
        ));
    }
    Ok(())
}

/// A stage's output kind as the protocol carries it.
pub(crate) fn wire_output(output: StageOutput) -> v1::StageOutput {
    match output {
        StageOutput::Hash(_) => v1::StageOutput::Hash,
        StageOutput::Single => v1::StageOutput::Single,
        StageOutput::Sink => v1::StageOutput::Sink,
    }
}
