//! What to do, on start or after a failure, with a batch that was planned (written to the
//! offset log) but is not recorded as committed.

use iceberg::table::Table;
use sluice_common::iceberg_sink::find_batch_snapshot;
use sluice_common::offsets::{BatchPlan, Checkpoint};

/// The fate of a pending batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// Nothing pending: plan a new batch.
    None,
    /// The table holds the batch's snapshot: record the commit, do not run it again.
    Committed { plan: BatchPlan, snapshot_id: i64 },
    /// The batch never reached the table: run it again with exactly its logged ranges.
    Rerun(BatchPlan),
}

/// Decides from the checkpoint, the last logged plan and the table.
pub fn pending_batch(
    checkpoint: &Checkpoint,
    last_plan: Option<BatchPlan>,
    table: &Table,
    job_id: &str,
) -> Pending {
    match last_plan {
        Some(plan) if plan.batch_id > checkpoint.batch_id => {
            match find_batch_snapshot(table, job_id, plan.batch_id) {
                Some(snapshot_id) => Pending::Committed { plan, snapshot_id },
                None => Pending::Rerun(plan),
            }
        }
        _ => Pending::None,
    }
}
