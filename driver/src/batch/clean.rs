//! `Checkpointed → done`: deleting the files of other attempts of a committed batch.
//!
//! Safe only now: the batch's snapshot is in the table, so any other attempt's commit of
//! the batch (a paused leader's, a timed-out commit landing late) is based on a table
//! state without it and is refused by the catalog. Best effort: a failure leaves garbage,
//! never loses data.

use std::collections::HashSet;

use iceberg::table::Table;
use iceberg::TableIdent;
use sluice_core::BatchId;
use sluice_iceberg::commit::find_batch_in_ancestry;
use sluice_iceberg::data_files::{
    delete_batch_files_except, snapshot_file_names, DATA_DIR, STATE_DIR,
};
use tracing::warn;

use super::BatchProtocol;
use crate::error::Result;

impl BatchProtocol {
    /// Deletes batch `batch`'s files that its committed snapshots (`snapshot_id` in the
    /// sink table, and its dead-letter snapshot) do not hold.
    pub(super) async fn clean(&mut self, batch: BatchId, snapshot_id: i64) {
        let main = self.sink.main.clone();
        let cleaned = async {
            let table = self.sink.main_table().await?;
            let keep = snapshot_file_names(&table, snapshot_id).await?;
            self.delete_except(&table, batch, &keep).await
        };
        if let Err(error) = cleaned.await {
            warn!(job = %self.job_id, %batch, table = %main, %error, "cannot clean up data files");
        }
        if let Some(ident) = self.sink.dead_letter.clone() {
            if let Err(error) = self.clean_dead_letters(&ident, batch).await {
                warn!(job = %self.job_id, %batch, table = %ident, %error, "cannot clean up dead-letter files");
            }
        }
    }

    async fn clean_dead_letters(&mut self, ident: &TableIdent, batch: BatchId) -> Result<()> {
        let table = self.sink.load(ident).await?;
        let keep = match find_batch_in_ancestry(&table, &self.job_id, batch) {
            Some(snapshot_id) => snapshot_file_names(&table, snapshot_id).await?,
            // The batch had no dead letters: any of its dead-letter files are garbage.
            None => HashSet::new(),
        };
        self.delete_except(&table, batch, &keep).await
    }

    async fn delete_except(
        &self,
        table: &Table,
        batch: BatchId,
        keep: &HashSet<String>,
    ) -> Result<()> {
        let properties = self.sink.storage_properties();
        delete_batch_files_except(table, properties, DATA_DIR, &self.job_id, batch, keep).await?;
        Ok(())
    }

    /// Windowed jobs, after batch `batch` is checkpointed: deletes the state it started
    /// from (`before`, no longer needed by any re-run) unless still listed in `after`, and,
    /// when other attempts may have run, their state files of this batch.
    pub(super) async fn clean_state(
        &mut self,
        batch: BatchId,
        before: &[String],
        after: &[String],
        other_attempts: bool,
    ) {
        let cleaned = async {
            let table = self.sink.main_table().await?;
            for path in before.iter().filter(|p| !after.contains(p)) {
                table
                    .file_io()
                    .delete(path)
                    .await
                    .map_err(sluice_core::Error::iceberg(format!("deleting {path}")))?;
            }
            if other_attempts {
                let keep: HashSet<String> = after
                    .iter()
                    .filter_map(|p| p.rsplit('/').next())
                    .map(str::to_string)
                    .collect();
                let properties = self.sink.storage_properties();
                delete_batch_files_except(
                    &table,
                    properties,
                    STATE_DIR,
                    &self.job_id,
                    batch,
                    &keep,
                )
                .await?;
            }
            Ok::<_, crate::error::Error>(())
        };
        if let Err(error) = cleaned.await {
            warn!(job = %self.job_id, %batch, %error, "cannot clean up window state files");
        }
    }
}
