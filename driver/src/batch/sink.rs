//! The job's Iceberg tables as the protocol sees them: the catalog (opened on first use,
//! again after errors) and the sink table as last loaded or committed.

use std::collections::{BTreeMap, HashSet};

use crate::checkpoint::JobLog;
use iceberg::spec::Operation;
use iceberg::table::Table;
use iceberg::TableIdent;
use sluice_core::spec::{CatalogSpec, IcebergSinkSpec};
use sluice_core::Error as CommonError;
use sluice_iceberg::catalog::{open_catalog, CatalogRef};
use sluice_iceberg::commit::{expire_snapshots_on, CasOutcome};
use sluice_iceberg::rewrite::removed_by;
use sluice_iceberg::sink::{dead_letter_ident, needs_expiry, table_ident, SNAPSHOTS_RETAINED};
use tracing::{info, warn};

use crate::error::Result;

/// The sink table and, with `on_malformed: dead_letter`, the dead-letter table.
pub struct SinkTables {
    catalog_spec: CatalogSpec,
    catalog: Option<CatalogRef>,
    pub main: TableIdent,
    pub dead_letter: Option<TableIdent>,
    /// The main table as last loaded or committed; `None` forces a reload.
    cached: Option<Table>,
}

impl SinkTables {
    pub fn new(sink: &IcebergSinkSpec, with_dead_letters: bool) -> SinkTables {
        SinkTables {
            catalog_spec: sink.catalog.clone(),
            catalog: None,
            main: table_ident(sink),
            dead_letter: with_dead_letters.then(|| dead_letter_ident(sink)),
            cached: None,
        }
    }

    /// The catalog's FileIO properties, for listing the tables' storage.
    pub fn storage_properties(&self) -> &BTreeMap<String, String> {
        &self.catalog_spec.properties
    }

    /// The catalog, opened on first use.
    pub async fn catalog(&mut self) -> Result<CatalogRef> {
        if let Some(catalog) = &self.catalog {
            return Ok(catalog.clone());
        }
        let catalog = open_catalog(&self.catalog_spec).await?;
        self.catalog = Some(catalog.clone());
        Ok(catalog)
    }

    /// Loads `ident` from the catalog (always a fresh read).
    pub async fn load(&mut self, ident: &TableIdent) -> Result<Table> {
        let table = self
            .catalog()
            .await?
            .load_table(ident)
            .await
            .map_err(CommonError::iceberg(format!("loading table {ident}")))?;
        if ident == &self.main {
            self.cached = Some(table.clone());
        }
        Ok(table)
    }

    /// The main table as last seen, loading it when nothing is cached.
    pub async fn main_table(&mut self) -> Result<Table> {
        match &self.cached {
            Some(table) => Ok(table.clone()),
            None => {
                let ident = self.main.clone();
                self.load(&ident).await
            }
        }
    }

    /// Remembers the main table as just committed.
    pub fn set_main(&mut self, table: Table) {
        self.cached = Some(table);
    }

    /// Forgets the cached table (and, after a catalog error, the catalog): the next use
    /// reads both again.
    pub fn forget(&mut self, catalog_too: bool) {
        self.cached = None;
        if catalog_too {
            self.catalog = None;
        }
    }

    /// Keeps the table's metadata from growing with every batch: once enough snapshots
    /// accumulated, all but the most recent ones are expired, on exactly the table state
    /// last committed and under the fence. A failure only delays expiry.
    pub async fn expire_if_due(&mut self, log: &JobLog) {
        let Some(table) = self.cached.clone() else {
            return;
        };
        if !needs_expiry(&table) {
            return;
        }
        let expired = async {
            log.check_fence().await?;
            let catalog = self.catalog().await?;
            Ok::<_, crate::Error>(expire_snapshots_on(catalog, &table, SNAPSHOTS_RETAINED).await?)
        };
        match expired.await {
            Ok(CasOutcome::Committed(expired)) => {
                info!(table = %self.main, kept = expired.metadata().snapshots().len(), "expired old snapshots of the sink table");
                if let Err(error) = delete_replaced_files(&table, &expired).await {
                    warn!(table = %self.main, %error, "could not delete files that compaction replaced; they stay on storage");
                }
                self.cached = Some(*expired);
            }
            Ok(CasOutcome::Conflict) => self.cached = None,
            Err(error) => {
                warn!(table = %self.main, %error, "could not expire old snapshots; trying again later");
                self.cached = None;
            }
        }
    }
}

/// Deletes the data files that compaction replaced and that no snapshot holds any more:
/// those a replace snapshot removed once expiry took its parent (in the table's one line
/// of history, every remaining snapshot is then that replace or newer; a tag or branch
/// another tool set on an older snapshot is not looked for).
async fn delete_replaced_files(before: &Table, after: &Table) -> Result<()> {
    let remaining: HashSet<i64> = after
        .metadata()
        .snapshots()
        .map(|s| s.snapshot_id())
        .collect();
    let mut deleted = 0;
    for snapshot in before.metadata().snapshots() {
        let parent_expired_now = snapshot.parent_snapshot_id().is_some_and(|p| {
            before.metadata().snapshot_by_id(p).is_some() && !remaining.contains(&p)
        });
        if snapshot.summary().operation != Operation::Replace || !parent_expired_now {
            continue;
        }
        for path in removed_by(before, snapshot.snapshot_id()).await? {
            before
                .file_io()
                .delete(&path)
                .await
                .map_err(CommonError::iceberg(format!("deleting {path}")))?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        info!(table = %after.identifier(), deleted, "deleted data files replaced by compaction that no snapshot holds");
    }
    Ok(())
}
