//! The live data files of a table, kept between batches. Compaction looks at them after
//! every batch; reading every manifest each time costs more the more manifests the table
//! has (compaction merges them, but only when it runs). An
//! `append` snapshot only adds files, so when every snapshot since the last look is an
//! append, the files they added (the `added` entries of the manifests they wrote) are
//! all that changed. Anything else (a replace, an overwrite, an expired or unknown
//! snapshot in between, another table) reads every manifest again.

use std::collections::HashSet;

use iceberg::spec::{ManifestContentType, ManifestStatus, Operation};
use iceberg::table::Table;
use sluice_core::error::Result;

use crate::commit::ancestry;
use crate::data_files::snapshot_manifests;
use crate::rewrite::{data_files_in, snapshot_files, LiveFile};

/// A table's live data files as of the snapshot they were last read at.
#[derive(Debug, Default)]
pub struct LiveFiles {
    seen: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    table_uuid: uuid::Uuid,
    snapshot_id: i64,
    files: Vec<LiveFile>,
}

impl LiveFiles {
    /// The live data files of `table`'s current snapshot (none without one).
    pub async fn of(&mut self, table: &Table) -> Result<&[LiveFile]> {
        let metadata = table.metadata();
        let Some(current) = metadata.current_snapshot_id() else {
            self.seen = None;
            return Ok(&[]);
        };
        let files = match self.appended_since_seen(table) {
            Some((seen, appends)) if appends.is_empty() => seen.files,
            Some((mut seen, appends)) => {
                let added = snapshot_manifests(table, current, |m| {
                    m.content == ManifestContentType::Data && appends.contains(&m.added_snapshot_id)
                });
                // A merged manifest also lists older files as `existing`: only `added`
                // entries are new.
                seen.files.extend(
                    data_files_in(added.await?, |status| status == ManifestStatus::Added)
                        .into_iter()
                        .filter(|file| appends.contains(&file.snapshot_id)),
                );
                seen.files
            }
            None => snapshot_files(table, current).await?,
        };
        let seen = self.seen.insert(Seen {
            table_uuid: metadata.uuid(),
            snapshot_id: current,
            files,
        });
        Ok(&seen.files)
    }

    /// What was seen, taken, with the snapshots since then, when all of them are appends
    /// of the same table; `None` when the files must be read again.
    fn appended_since_seen(&mut self, table: &Table) -> Option<(Seen, HashSet<i64>)> {
        let seen = self.seen.take()?;
        if seen.table_uuid != table.metadata().uuid() {
            return None;
        }
        let mut appends = HashSet::new();
        for snapshot in ancestry(table) {
            if snapshot.snapshot_id() == seen.snapshot_id {
                return Some((seen, appends));
            }
            if snapshot.summary().operation != Operation::Append {
                return None;
            }
            appends.insert(snapshot.snapshot_id());
        }
        // The seen snapshot is no ancestor of the current one (or expired meanwhile).
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::rewrite::live_files;
    use crate::sink::tests::{
        appended, data_file, data_file_of_rows, live_names, new_table, replaced,
    };

    #[tokio::test]
    async fn kept_files_follow_appends_and_replaces_as_a_full_read_does() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, mut table) = new_table(&dir).await;
        let mut live = LiveFiles::default();
        assert!(live.of(&table).await.unwrap().is_empty());
        table = appended(&catalog, &table, 0, &["b0"]).await;
        assert_eq!(live_names(live.of(&table).await.unwrap()), ["b0.parquet"]);
        // Two appends between looks, one with two files; a look without a new snapshot.
        table = appended(&catalog, &table, 1, &["b1"]).await;
        table = appended(&catalog, &table, 2, &["b2a", "b2b"]).await;
        for _ in 0..2 {
            assert_eq!(
                live_names(live.of(&table).await.unwrap()),
                live_names(&live_files(&table).await.unwrap())
            );
        }
        assert_eq!(live_names(live.of(&table).await.unwrap()).len(), 4);
        // A replace removes files: they must not stay in what is kept.
        let removed: HashSet<String> = ["b0", "b1"]
            .iter()
            .map(|n| data_file(&table, n).file_path().to_string())
            .collect();
        let compacted = data_file_of_rows(&table, "c0", 20);
        table = replaced(&catalog, &table, &removed, vec![compacted], HashMap::new()).await;
        table = appended(&catalog, &table, 3, &["b3"]).await;
        assert_eq!(
            live_names(live.of(&table).await.unwrap()),
            ["b2a.parquet", "b2b.parquet", "b3.parquet", "c0.parquet"]
        );
        // Appends after the replace are read incrementally again.
        table = appended(&catalog, &table, 4, &["b4"]).await;
        assert_eq!(
            live_names(live.of(&table).await.unwrap()),
            live_names(&live_files(&table).await.unwrap())
        );
        assert_eq!(live.of(&table).await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn after_appends_only_their_manifests_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, table) = new_table(&dir).await;
        let table = appended(&catalog, &table, 0, &["b0"]).await;
        let mut live = LiveFiles::default();
        assert_eq!(live_names(live.of(&table).await.unwrap()), ["b0.parquet"]);
        // Without the first batch's manifest a full read fails; the kept files need only
        // the next batch's.
        let first = table.metadata().current_snapshot().unwrap();
        let manifests = table.manifest_list_reader(first).load().await.unwrap();
        for manifest in manifests.entries() {
            std::fs::remove_file(manifest.manifest_path.trim_start_matches("file://")).unwrap();
        }
        let table = appended(&catalog, &table, 1, &["b1"]).await;
        assert!(live_files(&table).await.is_err());
        assert_eq!(
            live_names(live.of(&table).await.unwrap()),
            ["b0.parquet", "b1.parquet"]
        );
    }

    #[tokio::test]
    async fn another_table_is_read_in_full() {
        let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first_catalog, first) = new_table(&first_dir).await;
        let (second_catalog, second) = new_table(&second_dir).await;
        let first = appended(&first_catalog, &first, 0, &["a"]).await;
        let second = appended(&second_catalog, &second, 0, &["b"]).await;
        let mut live = LiveFiles::default();
        assert_eq!(live_names(live.of(&first).await.unwrap()), ["a.parquet"]);
        assert_eq!(live_names(live.of(&second).await.unwrap()), ["b.parquet"]);
    }
}
