//! State kept after the shuffle: where a stateful job's rows of one key meet, the reader
//! of the stream stage's output adds the state to what it fetches ([`CarriedRows`]), and
//! the task picks the next state from what the reader yielded.
//!
//! - Session windows keep the raw rows of open sessions (a session depends on its key's
//!   other rows): the reader adds the rows of the files the task rewrites and looks up in
//!   the others the rows of the keys it sees ([`crate::SessionLookup`]).
//! - Fixed windows aggregated right after the shuffle (`GROUP BY window_start, window_end,
//!   …`, the usual plan: partial aggregate, shuffle, final aggregate) keep one
//!   partial-aggregate row per open window and group: the partial rows the reader yielded
//!   (the state's and the batch's) merged by the aggregate in `PartialReduce` mode. The
//!   state then follows the open groups, not the records. Other windowed plans keep raw
//!   rows in their source tasks. Windows over deduplicated records are aggregated after
//!   the deduplicating stage, so such a job has two state stages.
//! - Deduplication keeps the remembered rows of its keys where the deduplicating window
//!   function (`row_number() OVER (PARTITION BY key …)`) shuffled them: each shuffle
//!   partition's keys in their own state file, only the columns the query reads. The
//!   reader drops the fetched rows of remembered keys by a hash lookup, so the window
//!   function ranks only the batch's new keys' rows.
//!
//! See docs/architecture.md, "State after the shuffle".
//!
//! [`CarriedRows`]: crate::CarriedRows

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::ExecutionPlan;
use sluice_core::error::Result;
use sluice_core::spec::{EventTime, WINDOW_END_COLUMN};

use super::StatefulOperator;
use crate::nodes::{reader_schema, reads_stream, ShuffleReaderExec};

/// What the state stage keeps.
#[derive(Debug, Clone)]
pub enum ShuffleStateKind {
    /// Session windows: the rows of open sessions.
    SessionRows,
    /// Fixed windows: partial-aggregate rows of open windows, merged by this final
    /// aggregate's expressions.
    WindowPartials(Arc<AggregateExec>),
    /// Deduplication: the keys still remembered, with the event time that decides how
    /// long; the reader drops fetched rows of these key columns' known values.
    DedupRows {
        key: Vec<String>,
        event_time: String,
    },
}

/// A stage of a stateful job that keeps state after a shuffle.
#[derive(Debug, Clone)]
pub struct ShuffleStateStage {
    pub stage_id: u32,
    /// The stage whose output the state joins: the stage reading the stream, or, for
    /// windows aggregated after deduplication, the deduplicating stage.
    pub input_stage: u32,
    /// The rows the reader yields (and state files hold).
    pub schema: SchemaRef,
    pub kind: ShuffleStateKind,
}

impl ShuffleStateStage {
    /// The operator whose rule the stage keeps its state by: the job's, except that
    /// windows aggregated after deduplication keep the windows' (the job's operator is
    /// then deduplication).
    pub fn operator(&self, job: &StatefulOperator) -> StatefulOperator {
        match self.kind {
            ShuffleStateKind::WindowPartials(_) => StatefulOperator::Windows,
            _ => job.clone(),
        }
    }

    /// The stages among a job's stage plans (id, plan) that keep its state after a
    /// shuffle, in plan order: for session windows the stage reading the stream stage's
    /// output; for deduplication the stage where the deduplicating window function reads
    /// it; for fixed windows the stage whose final aggregate groups by `window_end`
    /// reading the stream stage's output directly, or the deduplicating stage's output.
    /// Empty when the plan keeps its state in source tasks.
    pub fn find_all(
        event_time: EventTime,
        stages: &[(u32, Arc<dyn ExecutionPlan>)],
    ) -> Vec<ShuffleStateStage> {
        let Some(stream_stage) = stages
            .iter()
            .find(|(_, plan)| reads_stream(plan))
            .map(|(id, _)| *id)
        else {
            return vec![];
        };
        let reading = |input: u32| {
            stages
                .iter()
                .find_map(|(id, plan)| reader_schema(plan, input).map(|schema| (*id, plan, schema)))
        };
        let mut found = vec![];
        if event_time.session.is_some() {
            if let Some((stage_id, _, schema)) = reading(stream_stage) {
                found.push(ShuffleStateStage {
                    stage_id,
                    input_stage: stream_stage,
                    schema,
                    kind: ShuffleStateKind::SessionRows,
                });
            }
            return found;
        }
        let mut window_input = stream_stage;
        if let (Some(dedup), Some(watermark)) = (event_time.dedup, event_time.watermark) {
            match reading(stream_stage) {
                Some((stage_id, plan, schema)) if has_window_function(plan) => {
                    found.push(ShuffleStateStage {
                        stage_id,
                        input_stage: stream_stage,
                        schema,
                        kind: ShuffleStateKind::DedupRows {
                            key: dedup.key.clone(),
                            event_time: watermark.column.clone(),
                        },
                    });
                    window_input = stage_id;
                }
                _ => return found,
            }
        }
        if event_time.window.is_some() {
            if let Some((stage_id, plan, schema)) = reading(window_input) {
                if let Some(aggregate) = window_aggregate(plan, window_input) {
                    found.push(ShuffleStateStage {
                        stage_id,
                        input_stage: window_input,
                        schema,
                        kind: ShuffleStateKind::WindowPartials(aggregate),
                    });
                }
            }
        }
        found
    }

    /// The columns of the state files: the reader's, or for deduplication only the key
    /// and the event time (a remembered row only says its key was seen, and until when).
    pub fn state_schema(&self) -> SchemaRef {
        let ShuffleStateKind::DedupRows { key, event_time } = &self.kind else {
            return self.schema.clone();
        };
        let fields: Vec<_> = self
            .schema
            .fields()
            .iter()
            .filter(|f| key.contains(f.name()) || f.name() == event_time)
            .cloned()
            .collect();
        Arc::new(arrow::datatypes::Schema::new(fields))
    }

    /// Window partials: `batches` (partial-aggregate rows in [`Self::schema`]) merged into
    /// one row per group. Session rows are returned as they are.
    pub async fn merge(
        &self,
        batches: Vec<RecordBatch>,
        context: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let ShuffleStateKind::WindowPartials(aggregate) = &self.kind else {
            return Ok(batches);
        };
        let input = MemorySourceConfig::try_new_exec(&[batches], self.schema.clone(), None)
            .map_err(sluice_core::Error::query)?;
        let merge = AggregateExec::try_new(
            AggregateMode::PartialReduce,
            aggregate.group_expr().clone(),
            aggregate.aggr_expr().to_vec(),
            aggregate.filter_expr().to_vec(),
            input,
            aggregate.input_schema(),
        )
        .map_err(sluice_core::Error::query)?;
        let merged = datafusion::physical_plan::collect(Arc::new(merge), context)
            .await
            .map_err(sluice_core::Error::query)?;
        // The merge names and types its columns as the reader does; keep the reader's
        // schema so state files always have one.
        merged
            .into_iter()
            .map(|b| {
                RecordBatch::try_new(self.schema.clone(), b.columns().to_vec()).map_err(Into::into)
            })
            .collect()
    }
}

/// Whether the deduplicating view's ranking runs in `plan` (in the stage reading the
/// stream stage's output): its window function, or the operator replacing it.
fn has_window_function(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let any = plan.as_any();
    any.is::<BoundedWindowAggExec>()
        || any.is::<WindowAggExec>()
        || any.is::<super::first_row::FirstRowPerKeyExec>()
        || plan.children().into_iter().any(has_window_function)
}

/// The final aggregate reading `input_stage`'s output directly and grouping by
/// `window_end` (one grouping set), if the stage has one.
fn window_aggregate(plan: &Arc<dyn ExecutionPlan>, input_stage: u32) -> Option<Arc<AggregateExec>> {
    if let Some(aggregate) = plan.as_any().downcast_ref::<AggregateExec>() {
        let final_mode = matches!(
            aggregate.mode(),
            AggregateMode::Final | AggregateMode::FinalPartitioned
        );
        let groups_by_window = aggregate.group_expr().is_single()
            && aggregate
                .group_expr()
                .expr()
                .iter()
                .any(|(_, name)| name == WINDOW_END_COLUMN);
        let reads_stream_output = aggregate
            .input()
            .as_any()
            .downcast_ref::<ShuffleReaderExec>()
            .is_some_and(|reader| reader.stage_id() == input_stage);
        if final_mode && groups_by_window && reads_stream_output {
            return Some(Arc::new(aggregate.clone()));
        }
    }
    plan.children()
        .into_iter()
        .find_map(|child| window_aggregate(child, input_stage))
}
