//! Recovery: what the offset log, the checkpoint and the table say about the first batch
//! logged beyond the checkpoint, as a protocol state. (Up to two can be logged: the next
//! one's ranges are logged while this one commits; it is recovered in its turn, once
//! this one's checkpoint is written.) Runs before every batch, so a new leader, a restarted
//! driver and a driver retrying after an error all take the same path.

use crate::protocol::Checkpoint;
use sluice_iceberg::commit::{find_batch_in_ancestry, snapshot_property};
use tracing::info;

use super::commit::{EVENT_TIMES_PROPERTY, STATE_FILES_PROPERTY};
use super::{BatchProtocol, BatchState};
use crate::error::Result;

impl BatchProtocol {
    /// The state of the batch after `checkpoint` when it was logged: `Committed` when the
    /// table's current ancestry holds its snapshot, else `Planned` (to be run again with
    /// exactly its logged ranges). `None` when nothing is pending.
    pub async fn recover(&mut self, checkpoint: &Checkpoint) -> Result<Option<BatchState>> {
        let Some(plan) = self.log.plan(checkpoint.batch_id.next()).await? else {
            return Ok(None);
        };
        let ident = self.sink.main.clone();
        let table = self.sink.load(&ident).await?;
        match find_batch_in_ancestry(&table, &self.job_id, plan.batch_id) {
            Some(snapshot_id) => {
                info!(job = %self.job_id, batch = %plan.batch_id, snapshot_id, "batch found in the table; recording its commit");
                Ok(Some(BatchState::Committed {
                    plan,
                    snapshot_id,
                    appended: false,
                    event_times: summary_json(&table, snapshot_id, EVENT_TIMES_PROPERTY),
                    state_files: summary_json(&table, snapshot_id, STATE_FILES_PROPERTY),
                }))
            }
            None => {
                info!(job = %self.job_id, batch = %plan.batch_id, "re-running a logged batch with its ranges");
                Ok(Some(BatchState::Planned { plan }))
            }
        }
    }
}

/// A JSON value the batch's commit put in its snapshot's summary; empty when absent
/// (a job without a watermark or windows writes none).
fn summary_json<T: serde::de::DeserializeOwned + Default>(
    table: &iceberg::table::Table,
    snapshot_id: i64,
    key: &str,
) -> T {
    snapshot_property(table, snapshot_id, key)
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default()
}
