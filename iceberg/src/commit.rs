//! Conditional Iceberg commits: a batch's snapshot is appended on exactly the table state
//! in which its absence was checked, never replayed on newer metadata.
//!
//! iceberg-rust's `Transaction::commit` reloads the table before committing and, when the
//! table moved on, re-applies the actions on the fresh metadata. For Sluice that replay is
//! the double-commit bug: a driver that checked "batch N is not in the table" on state S
//! could append N on top of S' in which another driver already committed N. Here the
//! transaction commits through [`PinnedCatalog`], which hands the transaction back the
//! very table state it was built on, so the catalog's own compare-and-swap (the SQL
//! catalog's `UPDATE … WHERE metadata_location = ?`, the REST catalog's
//! `assert-ref-snapshot-id` requirement) refuses the commit when the table changed, and the
//! caller decides again. See docs/architecture.md, "The commit protocol".

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use iceberg::spec::{DataFile, SnapshotRef};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, TableCommit, TableCreation, TableIdent,
};

use sluice_core::error::{Error, Result};
use sluice_core::BatchId;

/// Snapshot summary property naming the job that wrote a snapshot.
pub const JOB_ID_PROPERTY: &str = "sluice.job-id";
/// Snapshot summary property naming the batch a snapshot holds.
pub const BATCH_ID_PROPERTY: &str = "sluice.batch-id";

/// A snapshot summary property of snapshot `snapshot_id` of `table`.
pub fn snapshot_property(table: &Table, snapshot_id: i64, key: &str) -> Option<String> {
    table
        .metadata()
        .snapshot_by_id(snapshot_id)?
        .summary()
        .additional_properties
        .get(key)
        .cloned()
}

/// The snapshot holding batch `batch` of job `job_id` among the ancestors of the table's
/// current snapshot (a snapshot rolled back out of the main branch does not count).
/// Stops early at an older batch of the same job: batches are committed in order.
pub fn find_batch_in_ancestry(table: &Table, job_id: &str, batch: BatchId) -> Option<i64> {
    for snapshot in ancestry(table) {
        let props = &snapshot.summary().additional_properties;
        if props.get(JOB_ID_PROPERTY).map(String::as_str) == Some(job_id) {
            match props
                .get(BATCH_ID_PROPERTY)
                .and_then(|b| b.parse::<BatchId>().ok())
            {
                Some(found) if found == batch => return Some(snapshot.snapshot_id()),
                Some(found) if found < batch => return None,
                _ => {}
            }
        }
    }
    None
}

/// The table's current snapshot and its ancestors, newest first, as far as the table
/// still has them.
pub fn ancestry(table: &Table) -> impl Iterator<Item = SnapshotRef> + '_ {
    let metadata = table.metadata();
    std::iter::successors(metadata.current_snapshot().cloned(), move |snapshot| {
        snapshot
            .parent_snapshot_id()
            .and_then(|id| metadata.snapshot_by_id(id).cloned())
    })
}

/// How a conditional commit ended.
#[derive(Debug)]
pub enum CasOutcome {
    /// Committed; the table as committed.
    Committed(Box<Table>),
    /// The table is no longer in the state the commit was based on: nothing was written.
    /// Reload, decide again.
    Conflict,
}

/// Appends `files` as one snapshot tagged with the job and batch (and `extra` summary
/// properties), on exactly `base`: the catalog accepts it only while the table is still at
/// `base`'s state. An empty `files` still commits a snapshot (with no data), so every
/// batch moves the table on and a stale driver's commit of the same batch conflicts.
pub async fn append_batch_on(
    catalog: Arc<dyn Catalog>,
    base: &Table,
    job_id: &str,
    batch: BatchId,
    files: Vec<DataFile>,
    extra: &HashMap<String, String>,
) -> Result<CasOutcome> {
    let ident = base.identifier().clone();
    let mut properties = extra.clone();
    properties.insert(JOB_ID_PROPERTY.to_string(), job_id.to_string());
    properties.insert(BATCH_ID_PROPERTY.to_string(), batch.to_string());
    let tx = Transaction::new(base);
    // Data file names are unique (term, task, attempt and a UUID each) and a batch is
    // appended at most once (checked by the caller on `base`), so the duplicate-file check,
    // which reads every manifest of the table, is not needed.
    let tx = tx
        .fast_append()
        .with_check_duplicate(false)
        .add_data_files(files)
        .set_snapshot_properties(properties)
        .apply(tx)
        .map_err(Error::iceberg(format!(
            "appending batch {batch} to {ident}"
        )))?;
    commit_pinned(
        catalog,
        base,
        tx,
        &format!("committing batch {batch} to {ident}"),
    )
    .await
}

/// Expires all but the `retain` most recent snapshots, on exactly `base` (a conflict
/// means the table moved on; expiry is tried again later). Data files stay: Sluice only
/// appends, so all of them are still live.
pub async fn expire_snapshots_on(
    catalog: Arc<dyn Catalog>,
    base: &Table,
    retain: usize,
) -> Result<CasOutcome> {
    let ident = base.identifier().clone();
    let now_ms = sluice_core::now_ms() + 1;
    let tx = Transaction::new(base);
    let tx = tx
        .expire_snapshots()
        .expire_older_than_ms(now_ms)
        .retain_last(retain.max(1))
        .apply(tx)
        .map_err(Error::iceberg(format!("expiring snapshots of {ident}")))?;
    commit_pinned(catalog, base, tx, &format!("expiring snapshots of {ident}")).await
}

async fn commit_pinned(
    catalog: Arc<dyn Catalog>,
    base: &Table,
    tx: Transaction,
    what: &str,
) -> Result<CasOutcome> {
    let pinned = PinnedCatalog {
        inner: catalog,
        base: base.clone(),
    };
    match tx.commit(&pinned).await {
        Ok(table) => Ok(CasOutcome::Committed(Box::new(table))),
        Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts => Ok(CasOutcome::Conflict),
        Err(e) => Err(Error::iceberg(what)(e)),
    }
}

/// A catalog whose `load_table` of the pinned table returns the pinned state, so a
/// transaction never re-bases itself on newer metadata, and whose commit conflicts are
/// final (not retried on a refreshed table). Everything else goes to `inner`.
#[derive(Debug)]
pub struct PinnedCatalog {
    inner: Arc<dyn Catalog>,
    base: Table,
}

#[async_trait]
impl Catalog for PinnedCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> iceberg::Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> iceberg::Result<bool> {
        self.inner.namespace_exists(namespace).await
    }

    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> iceberg::Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }

    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> iceberg::Result<()> {
        self.inner.drop_namespace(namespace).await
    }

    async fn list_tables(&self, namespace: &NamespaceIdent) -> iceberg::Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }

    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> iceberg::Result<Table> {
        self.inner.create_table(namespace, creation).await
    }

    async fn load_table(&self, table: &TableIdent) -> iceberg::Result<Table> {
        if table == self.base.identifier() {
            return Ok(self.base.clone());
        }
        self.inner.load_table(table).await
    }

    async fn drop_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.drop_table(table).await
    }

    async fn purge_table(&self, table: &TableIdent) -> iceberg::Result<()> {
        self.inner.purge_table(table).await
    }

    async fn table_exists(&self, table: &TableIdent) -> iceberg::Result<bool> {
        self.inner.table_exists(table).await
    }

    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> iceberg::Result<()> {
        self.inner.rename_table(src, dest).await
    }

    async fn register_table(
        &self,
        table: &TableIdent,
        metadata_location: String,
    ) -> iceberg::Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }

    async fn update_table(&self, commit: TableCommit) -> iceberg::Result<Table> {
        self.inner.update_table(commit).await.map_err(|e| {
            if e.kind() == ErrorKind::CatalogCommitConflicts {
                // Not retryable: a retry would re-base the commit on newer metadata.
                iceberg::Error::new(ErrorKind::CatalogCommitConflicts, e.message().to_string())
            } else {
                e
            }
        })
    }
}
