//! Replace snapshots: compaction's commit. A `replace` snapshot removes data files and adds
//! files holding exactly their rows, so readers see the same rows before and after it.
//!
//! iceberg-rust 0.10's transactions offer no rewrite action, so the snapshot is written
//! with the crate's public manifest and manifest-list writers and committed with
//! `Catalog::update_table` under the same compare-and-swap requirements as every Sluice
//! commit: the table's UUID and `main` still at the snapshot the rewrite was decided on
//! (`TableCommit` is constructible through the workspace's patch of the crate, see
//! vendor/iceberg/SLUICE-PATCH.md). Every live file is written into one new manifest per
//! partition spec, so a rewrite also merges the table's manifests.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use iceberg::spec::{
    DataContentType, DataFile, FormatVersion, Manifest, ManifestContentType, ManifestFile,
    ManifestListWriter, ManifestStatus, ManifestWriterBuilder, Operation, Snapshot,
    SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{Catalog, ErrorKind, TableCommit, TableRequirement, TableUpdate};
use sluice_core::error::{Error, Result};

use crate::commit::{ancestry, CasOutcome, JOB_ID_PROPERTY};
use crate::data_files::snapshot_manifests;

/// Snapshot summary property naming the compaction a replace snapshot holds.
pub const COMPACTION_ID_PROPERTY: &str = "sluice.compaction-id";

/// The snapshot holding compaction `compaction` of job `job_id` among the ancestors of the
/// table's current snapshot.
pub fn find_compaction_in_ancestry(table: &Table, job_id: &str, compaction: i64) -> Option<i64> {
    let wanted = compaction.to_string();
    ancestry(table)
        .find(|snapshot| {
            let props = &snapshot.summary().additional_properties;
            props.get(JOB_ID_PROPERTY).map(String::as_str) == Some(job_id)
                && props.get(COMPACTION_ID_PROPERTY) == Some(&wanted)
        })
        .map(|snapshot| snapshot.snapshot_id())
}

/// Paths of the files replace snapshot `snapshot_id` removed (its manifests' deleted
/// entries), to be deleted once no retained snapshot holds them.
pub async fn removed_by(table: &Table, snapshot_id: i64) -> Result<Vec<String>> {
    let own = snapshot_manifests(table, snapshot_id, |m| m.added_snapshot_id == snapshot_id);
    Ok(own
        .await?
        .iter()
        .flat_map(|(_, manifest)| manifest.entries())
        .filter(|e| e.status() == ManifestStatus::Deleted)
        .map(|e| e.data_file().file_path().to_string())
        .collect())
}

/// A data file live in the table's current snapshot, as its manifest entry records it.
#[derive(Debug, Clone)]
pub struct LiveFile {
    pub data_file: DataFile,
    /// The partition spec its manifest was written with.
    pub spec_id: i32,
    /// The snapshot that added it, and its sequence numbers.
    pub snapshot_id: i64,
    pub sequence_number: i64,
    pub file_sequence_number: Option<i64>,
}

/// The live data files of `table`'s current snapshot (none for a table without one).
pub async fn live_files(table: &Table) -> Result<Vec<LiveFile>> {
    match table.metadata().current_snapshot_id() {
        Some(snapshot_id) => snapshot_files(table, snapshot_id).await,
        None => Ok(vec![]),
    }
}

/// The data files snapshot `snapshot_id` of `table` holds (none for an unknown snapshot).
pub async fn snapshot_files(table: &Table, snapshot_id: i64) -> Result<Vec<LiveFile>> {
    let data = snapshot_manifests(table, snapshot_id, |m| {
        m.content == ManifestContentType::Data
    });
    Ok(data_files_in(data.await?, |status| {
        status != ManifestStatus::Deleted
    }))
}

/// The data files of `manifests` whose entry status `wanted` takes, as live files.
pub(crate) fn data_files_in(
    manifests: Vec<(ManifestFile, Manifest)>,
    wanted: impl Fn(ManifestStatus) -> bool,
) -> Vec<LiveFile> {
    let mut live = vec![];
    for (manifest, loaded) in manifests {
        for entry in loaded.entries() {
            if !wanted(entry.status()) || entry.data_file().content_type() != DataContentType::Data
            {
                continue;
            }
            live.push(LiveFile {
                data_file: entry.data_file().clone(),
                spec_id: manifest.partition_spec_id,
                snapshot_id: entry.snapshot_id().unwrap_or(manifest.added_snapshot_id),
                sequence_number: entry.sequence_number().unwrap_or(manifest.sequence_number),
                file_sequence_number: entry.file_sequence_number,
            });
        }
    }
    live
}

/// Commits, on exactly `base`, a `replace` snapshot that removes the live files named in
/// `removed` (paths) and adds `added`, carrying every other live file over; `properties`
/// go into its summary. `Conflict` when the table moved on from `base`, or when a file in
/// `removed` is no longer live in it.
pub async fn replace_files_on(
    catalog: Arc<dyn Catalog>,
    base: &Table,
    removed: &HashSet<String>,
    added: Vec<DataFile>,
    properties: HashMap<String, String>,
) -> Result<CasOutcome> {
    let metadata = base.metadata();
    let ident = base.identifier().clone();
    let failed = |what: &str| Error::iceberg(format!("{what} for {ident}"));
    let Some(current) = metadata.current_snapshot() else {
        return Ok(CasOutcome::Conflict);
    };
    if metadata.format_version() != FormatVersion::V2 {
        return Err(Error::Iceberg {
            context: format!("rewriting files of {ident}"),
            source: "only format-version 2 tables are compacted".into(),
        });
    }
    let live = live_files(base).await?;
    let live_paths: HashSet<&str> = live.iter().map(|f| f.data_file.file_path()).collect();
    if removed
        .iter()
        .any(|path| !live_paths.contains(path.as_str()))
    {
        return Ok(CasOutcome::Conflict);
    }
    let snapshot_id = unique_snapshot_id(base);
    let sequence_number = metadata.next_sequence_number();
    let schema = metadata.current_schema().clone();
    let commit_uuid = uuid::Uuid::new_v4();
    let metadata_dir = format!("{}/metadata", metadata.location().trim_end_matches('/'));

    // One manifest per partition spec; added files are written with the default spec.
    let mut by_spec: HashMap<i32, Vec<LiveFile>> = HashMap::new();
    for file in live {
        by_spec.entry(file.spec_id).or_default().push(file);
    }
    let default_spec = metadata.default_partition_spec_id();
    by_spec.entry(default_spec).or_default();
    let mut summary = SnapshotSummaryCollector::default();
    let mut manifests = vec![];
    let mut spec_ids: Vec<i32> = by_spec.keys().copied().collect();
    spec_ids.sort_unstable();
    for (n, spec_id) in spec_ids.into_iter().enumerate() {
        let files = &by_spec[&spec_id];
        let adds = spec_id == default_spec && !added.is_empty();
        if files.is_empty() && !adds {
            continue;
        }
        let spec = metadata
            .partition_spec_by_id(spec_id)
            .ok_or_else(|| Error::Iceberg {
                context: format!("rewriting files of {ident}"),
                source: format!("no partition spec {spec_id}").into(),
            })?
            .clone();
        let output = base
            .file_io()
            .new_output(format!("{metadata_dir}/{commit_uuid}-m{n}.avro"))
            .map_err(failed("opening a manifest"))?;
        let mut writer = ManifestWriterBuilder::new(
            output,
            Some(snapshot_id),
            schema.clone(),
            spec.as_ref().clone(),
        )
        .build_v2_data();
        for file in files {
            let df = file.data_file.clone();
            if removed.contains(df.file_path()) {
                summary.remove_file(&df, schema.clone(), spec.clone());
                writer
                    .add_delete_file(df, file.sequence_number, file.file_sequence_number)
                    .map_err(failed("writing a manifest"))?;
            } else {
                writer
                    .add_existing_file(
                        df,
                        file.snapshot_id,
                        file.sequence_number,
                        file.file_sequence_number,
                    )
                    .map_err(failed("writing a manifest"))?;
            }
        }
        if adds {
            for df in &added {
                summary.add_file(df, schema.clone(), spec.clone());
                writer
                    .add_file(df.clone(), sequence_number)
                    .map_err(failed("writing a manifest"))?;
            }
        }
        manifests.push(
            writer
                .write_manifest_file()
                .await
                .map_err(failed("writing a manifest"))?,
        );
    }

    let list_path = format!("{metadata_dir}/snap-{snapshot_id}-0-{commit_uuid}.avro");
    let list_output = base
        .file_io()
        .new_output(&list_path)
        .map_err(failed("opening the manifest list"))?;
    let mut list = ManifestListWriter::v2(
        list_output
            .writer()
            .await
            .map_err(failed("opening the manifest list"))?,
        snapshot_id,
        Some(current.snapshot_id()),
        sequence_number,
    );
    list.add_manifests(manifests.into_iter())
        .map_err(failed("writing the manifest list"))?;
    list.close()
        .await
        .map_err(failed("writing the manifest list"))?;

    let mut summary_properties = properties;
    summary_properties.extend(summary.build());
    carry_totals(
        &mut summary_properties,
        &current.summary().additional_properties,
    );
    let snapshot = Snapshot::builder()
        .with_manifest_list(list_path)
        .with_snapshot_id(snapshot_id)
        .with_parent_snapshot_id(Some(current.snapshot_id()))
        .with_sequence_number(sequence_number)
        .with_summary(Summary {
            operation: Operation::Replace,
            additional_properties: summary_properties,
        })
        .with_schema_id(metadata.current_schema_id())
        .with_timestamp_ms(sluice_core::now_ms())
        .build();
    let commit = TableCommit::builder()
        .ident(ident.clone())
        .requirements(vec![
            TableRequirement::UuidMatch {
                uuid: metadata.uuid(),
            },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_string(),
                snapshot_id: Some(current.snapshot_id()),
            },
        ])
        .updates(vec![
            TableUpdate::AddSnapshot { snapshot },
            TableUpdate::SetSnapshotRef {
                ref_name: MAIN_BRANCH.to_string(),
                reference: SnapshotReference::new(
                    snapshot_id,
                    SnapshotRetention::branch(None, None, None),
                ),
            },
        ])
        .build();
    match catalog.update_table(commit).await {
        Ok(table) => Ok(CasOutcome::Committed(Box::new(table))),
        Err(e) if e.kind() == ErrorKind::CatalogCommitConflicts => Ok(CasOutcome::Conflict),
        Err(e) => Err(failed("committing a replace snapshot")(e)),
    }
}

/// The table totals after a replace: the previous snapshot's, less what was removed, plus
/// what was added (records and sizes stay, file counts change).
fn carry_totals(summary: &mut HashMap<String, String>, previous: &HashMap<String, String>) {
    let number = |map: &HashMap<String, String>, key: &str| {
        map.get(key)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    for (total, added, removed) in [
        ("total-data-files", "added-data-files", "deleted-data-files"),
        ("total-records", "added-records", "deleted-records"),
        ("total-files-size", "added-files-size", "removed-files-size"),
    ] {
        let value = number(previous, total) + number(summary, added) - number(summary, removed);
        summary.insert(total.to_string(), value.max(0).to_string());
    }
    for total in [
        "total-delete-files",
        "total-position-deletes",
        "total-equality-deletes",
    ] {
        summary.insert(total.to_string(), number(previous, total).to_string());
    }
}

/// A snapshot id no snapshot of `table` has.
fn unique_snapshot_id(table: &Table) -> i64 {
    loop {
        let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((high ^ low) >> 1) as i64;
        if table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use sluice_core::BatchId;

    use super::*;
    use crate::commit::find_batch_in_ancestry;
    use crate::sink::tests::{
        appended, data_file, data_file_of_rows, live_names, new_table, replaced,
    };

    fn property(table: &Table, key: &str) -> String {
        table
            .metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .additional_properties[key]
            .clone()
    }

    #[tokio::test]
    async fn a_replace_swaps_files_keeps_the_totals_and_merges_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, mut table) = new_table(&dir).await;
        for batch in 0..6 {
            table = appended(&catalog, &table, batch, &[&format!("b{batch}")]).await;
        }
        let before_replace = table.clone();
        let removed: HashSet<String> = (0..4)
            .map(|b| data_file(&table, &format!("b{b}")).file_path().to_string())
            .collect();
        let compacted = data_file_of_rows(&table, "c0", 40);
        let properties = HashMap::from([("sluice.compaction-id".to_string(), "1".to_string())]);
        table = replaced(&catalog, &table, &removed, vec![compacted], properties).await;
        let current = table.metadata().current_snapshot().unwrap();
        assert_eq!(current.summary().operation, Operation::Replace);
        assert_eq!(
            live_names(&live_files(&table).await.unwrap()),
            ["b4.parquet", "b5.parquet", "c0.parquet"]
        );
        assert_eq!(property(&table, "total-records"), "60");
        assert_eq!(property(&table, "total-data-files"), "3");
        assert_eq!(property(&table, "deleted-data-files"), "4");
        assert_eq!(property(&table, "sluice.compaction-id"), "1");
        let manifests = table
            .manifest_list_reader(current)
            .load()
            .await
            .unwrap()
            .entries()
            .len();
        assert_eq!(manifests, 1, "six append manifests merged into one");

        // Batches go on, and recovery still finds the batches before the replace.
        table = appended(&catalog, &table, 6, &["b6"]).await;
        assert_eq!(live_files(&table).await.unwrap().len(), 4);
        assert!(find_batch_in_ancestry(&table, "j", BatchId::new(5)).is_some());

        // A replace decided on an older state, or of a file no longer live, conflicts.
        let stale = replace_files_on(
            catalog.clone(),
            &before_replace,
            &removed,
            vec![],
            HashMap::new(),
        )
        .await
        .unwrap();
        assert!(matches!(stale, CasOutcome::Conflict));
        let gone = replace_files_on(catalog.clone(), &table, &removed, vec![], HashMap::new())
            .await
            .unwrap();
        assert!(matches!(gone, CasOutcome::Conflict));
    }
}
