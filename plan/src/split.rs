//! Cutting a physical plan into stages at its exchange points.
//!
//! A hash repartition ends a stage whose tasks hash-partition their output; a coalesce or
//! sort-preserving merge over rows of several tasks ends a stage whose tasks keep one
//! output each, read whole by the next stage (which sorts again where order matters). A
//! coalesce over static tables only stays inside the stage: every task reads the table
//! itself, which is how a small dimension table is broadcast.

use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};

use super::nodes::{KafkaScanExec, ReaderMode, ShuffleReaderExec};
use sluice_core::error::{Error, Result};

/// What a stage's tasks do with their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutput {
    /// Hash-partitioned into this many shuffle partitions.
    Hash(usize),
    /// Kept whole, one output per task.
    Single,
    /// Written as data files of the sink table (the last stage).
    Sink,
}

/// How a stage's rows are spread over its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// It reads the stream: one task per offset-range task of the batch.
    Source,
    /// It reads hash-partitioned shuffle input: one task per shuffle partition.
    Hash(usize),
    /// Everything it reads is read whole: one task.
    Single,
}

/// One stage: a plan fragment and what surrounds it.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: u32,
    pub plan: Arc<dyn ExecutionPlan>,
    pub kind: StageKind,
    pub output: StageOutput,
    /// The stages whose outputs it reads.
    pub inputs: Vec<u32>,
}

/// Splits `plan` into stages in execution order; the last one is the sink stage.
pub fn split(plan: Arc<dyn ExecutionPlan>) -> Result<Vec<Stage>> {
    let mut stages = vec![];
    let root = cut(plan, &mut stages)?;
    push_stage(root, StageOutput::Sink, &mut stages)?;
    Ok(stages)
}

fn cut(plan: Arc<dyn ExecutionPlan>, stages: &mut Vec<Stage>) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan
        .children()
        .into_iter()
        .map(|child| cut(child.clone(), stages))
        .collect::<Result<Vec<_>>>()?;
    let plan = if children.is_empty() {
        plan
    } else {
        plan.with_new_children(children)
            .map_err(sluice_core::Error::query)?
    };
    let any = plan.as_any();
    if let Some(repartition) = any.downcast_ref::<RepartitionExec>() {
        if let Partitioning::Hash(_, n) = repartition.partitioning() {
            let n = *n;
            let schema = plan.schema();
            let id = push_stage(plan, StageOutput::Hash(n), stages)?;
            return Ok(Arc::new(ShuffleReaderExec::new(
                id,
                schema,
                ReaderMode::Hash,
                n,
            )));
        }
    }
    if any.is::<CoalescePartitionsExec>() && !is_static(&plan) {
        let fetch = plan.fetch();
        let reader = merge_input(&plan, stages)?;
        return Ok(match fetch {
            Some(fetch) => Arc::new(GlobalLimitExec::new(reader, 0, Some(fetch))),
            None => reader,
        });
    }
    if let Some(merge) = any.downcast_ref::<SortPreservingMergeExec>() {
        if !is_static(&plan) {
            let ordering = merge.expr().clone();
            let fetch = merge.fetch();
            let reader = merge_input(&plan, stages)?;
            return Ok(Arc::new(SortExec::new(ordering, reader).with_fetch(fetch)));
        }
    }
    Ok(plan)
}

/// Makes the only child of a merging operator a stage of its own; returns its reader.
fn merge_input(
    merge: &Arc<dyn ExecutionPlan>,
    stages: &mut Vec<Stage>,
) -> Result<Arc<dyn ExecutionPlan>> {
    let child = merge.children()[0].clone();
    let schema = child.schema();
    let id = push_stage(child, StageOutput::Single, stages)?;
    Ok(Arc::new(ShuffleReaderExec::new(
        id,
        schema,
        ReaderMode::Merged,
        1,
    )))
}

fn push_stage(
    plan: Arc<dyn ExecutionPlan>,
    output: StageOutput,
    stages: &mut Vec<Stage>,
) -> Result<u32> {
    let id = stages.len() as u32;
    let kind = stage_kind(&plan)?;
    let mut inputs = vec![];
    collect_inputs(&plan, &mut inputs);
    stages.push(Stage {
        id,
        plan,
        kind,
        output,
        inputs,
    });
    Ok(id)
}

fn collect_inputs(plan: &Arc<dyn ExecutionPlan>, inputs: &mut Vec<u32>) {
    if let Some(reader) = plan.as_any().downcast_ref::<ShuffleReaderExec>() {
        if !inputs.contains(&reader.stage_id()) {
            inputs.push(reader.stage_id());
        }
    }
    for child in plan.children() {
        collect_inputs(child, inputs);
    }
}

/// Whether `plan` reads neither the stream nor another stage.
fn is_static(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let any = plan.as_any();
    if any.is::<KafkaScanExec>() || any.is::<ShuffleReaderExec>() {
        return false;
    }
    plan.children().into_iter().all(is_static)
}

/// A leaf whose rows flow into the stage's output row by row (not a join's build side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProbeLeaf {
    Stream,
    Hash(usize),
    /// Read whole by every task: a static table or a merged stage output.
    Whole,
}

/// Decides how a stage's work is spread over tasks from the leaves its rows come from.
fn stage_kind(plan: &Arc<dyn ExecutionPlan>) -> Result<StageKind> {
    let mut leaves = vec![];
    probe_leaves(plan, &mut leaves)?;
    leaves.dedup();
    let has = |leaf: fn(&ProbeLeaf) -> bool| leaves.iter().any(leaf);
    let stream = has(|l| *l == ProbeLeaf::Stream);
    let whole = has(|l| *l == ProbeLeaf::Whole);
    let hash = leaves.iter().find_map(|l| match l {
        ProbeLeaf::Hash(n) => Some(*n),
        _ => None,
    });
    match (stream, hash, whole) {
        (true, None, false) => Ok(StageKind::Source),
        (false, Some(n), false) => Ok(StageKind::Hash(n)),
        (false, None, _) => Ok(StageKind::Single),
        _ => Err(unsupported(
            "it combines rows of the stream with rows of a static table or of a whole \
             aggregate other than through a join",
        )),
    }
}

fn probe_leaves(plan: &Arc<dyn ExecutionPlan>, leaves: &mut Vec<ProbeLeaf>) -> Result<()> {
    let any = plan.as_any();
    if any.is::<KafkaScanExec>() {
        leaves.push(ProbeLeaf::Stream);
        return Ok(());
    }
    if let Some(reader) = any.downcast_ref::<ShuffleReaderExec>() {
        leaves.push(match reader.mode() {
            ReaderMode::Hash => ProbeLeaf::Hash(reader.partitions()),
            ReaderMode::Merged => ProbeLeaf::Whole,
        });
        return Ok(());
    }
    let children = plan.children();
    if children.is_empty() {
        leaves.push(ProbeLeaf::Whole);
        return Ok(());
    }
    // Joins that collect their left side into memory: that side is read whole by every
    // task; rows flow from the right side only.
    let collected_left = if let Some(join) = any.downcast_ref::<HashJoinExec>() {
        (*join.partition_mode() == PartitionMode::CollectLeft).then_some(*join.join_type())
    } else if let Some(join) = any.downcast_ref::<NestedLoopJoinExec>() {
        Some(*join.join_type())
    } else if any.is::<CrossJoinExec>() {
        Some(JoinType::Inner)
    } else {
        None
    };
    match collected_left {
        Some(join_type) => {
            let mut right = vec![];
            probe_leaves(children[1], &mut right)?;
            let split_probe = right.iter().any(|l| *l != ProbeLeaf::Whole);
            if split_probe
                && !matches!(
                    join_type,
                    JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti
                )
            {
                return Err(unsupported(
                    "a LEFT/FULL/semi/anti join keeps rows of a side that is read whole by every \
                     task; put the stream on the preserved side or join on equality keys",
                ));
            }
            leaves.extend(right);
        }
        None => {
            for child in children {
                probe_leaves(child, leaves)?;
            }
        }
    }
    Ok(())
}

fn unsupported(why: &str) -> Error {
    Error::InvalidSql {
        message: format!("this query cannot be run across tasks: {why}"),
    }
}
