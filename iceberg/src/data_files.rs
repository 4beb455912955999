//! Naming and cleaning up the data files of task attempts.
//!
//! Every file a task attempt writes is named
//! `{job}.b{batch}.e{term}.t{task}.a{attempt}.{uuid}-NNNNN.parquet` ('.' never occurs in a
//! job name), where the term is the leadership term of the driver that ran the attempt, so
//! the files of one batch can be found by prefix and attempts of different leaders never
//! collide. Files of a batch that are not in its committed snapshot are garbage (attempts
//! that failed, were abandoned, or ran under an earlier leader); they are deleted only once
//! the batch's snapshot is committed, when no other attempt can be committed any more.

use std::collections::{BTreeMap, HashSet};

use iceberg::spec::{Manifest, ManifestFile};
use iceberg::table::Table;
use tracing::info;

use crate::storage::list_with_prefix;
use sluice_core::error::{Error, Result};
use sluice_core::BatchId;

/// The name prefix of the files written by one task attempt under leader term `term`.
pub fn attempt_prefix(job_id: &str, batch: BatchId, term: i64, task: u32, attempt: u32) -> String {
    format!(
        "{}e{term}.t{task}.a{attempt}.{}",
        batch_prefix(job_id, batch),
        uuid::Uuid::new_v4().simple()
    )
}

/// The name prefix of the files written by one attempt of a compaction task under leader
/// term `term`.
pub fn compaction_attempt_prefix(
    job_id: &str,
    compaction: i64,
    term: i64,
    task: u32,
    attempt: u32,
) -> String {
    format!(
        "{}e{term}.t{task}.a{attempt}.{}",
        compaction_prefix(job_id, compaction),
        uuid::Uuid::new_v4().simple()
    )
}

/// The name prefix shared by every file of a compaction (`c` where a batch has `b`).
pub fn compaction_prefix(job_id: &str, compaction: i64) -> String {
    format!("{job_id}.c{compaction}.")
}

/// The name prefix shared by every file of a batch.
pub fn batch_prefix(job_id: &str, batch: BatchId) -> String {
    format!("{job_id}.b{batch}.")
}

/// The last segment of a file path or URL.
pub fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The manifests of snapshot `snapshot_id` that `wanted` picks, each loaded (none for an
/// unknown snapshot).
pub async fn snapshot_manifests(
    table: &Table,
    snapshot_id: i64,
    wanted: impl Fn(&ManifestFile) -> bool,
) -> Result<Vec<(ManifestFile, Manifest)>> {
    let Some(snapshot) = table.metadata().snapshot_by_id(snapshot_id) else {
        return Ok(vec![]);
    };
    let list = table
        .manifest_list_reader(snapshot)
        .load()
        .await
        .map_err(Error::iceberg(format!(
            "reading the manifest list of snapshot {snapshot_id} of {}",
            table.identifier()
        )))?;
    let mut manifests = vec![];
    for manifest_file in list.entries().iter().filter(|m| wanted(m)) {
        let manifest =
            manifest_file
                .load_manifest(table.file_io())
                .await
                .map_err(Error::iceberg(format!(
                    "reading a manifest of {}",
                    table.identifier()
                )))?;
        manifests.push((manifest_file.clone(), manifest));
    }
    Ok(manifests)
}

/// Names of the data files that snapshot `snapshot_id` added.
pub async fn snapshot_file_names(table: &Table, snapshot_id: i64) -> Result<HashSet<String>> {
    let added = snapshot_manifests(table, snapshot_id, |m| m.added_snapshot_id == snapshot_id);
    Ok(added
        .await?
        .iter()
        .flat_map(|(_, manifest)| manifest.entries())
        .map(|entry| file_name(entry.data_file().file_path()).to_string())
        .collect())
}

/// The table's directory of data files.
pub const DATA_DIR: &str = "data";
/// The table's directory of windowed jobs' state files (never referenced by a snapshot).
pub const STATE_DIR: &str = "sluice-state";

/// What a state file's name says about its rows, so that a batch can carry the file over
/// without reading it: how many rows and bytes it holds, and the watermarks at which its
/// first and its last row stop being state (`from` ≤ `until`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFileStats {
    pub rows: u64,
    pub bytes: u64,
    pub from: i64,
    pub until: i64,
}

/// The name of a state file:
/// `{attempt_prefix}[.g{stage}.p{n}][.s{rows}_{bytes}_{from}_{until}].parquet`, with
/// `.g{stage}.p{n}` for the state that stage `stage` keeps for shuffle partition `n` (state
/// kept after a shuffle; files written before a job could have two such stages name only
/// the partition) and the `.s…` segment carrying its [`StateFileStats`].
pub fn state_file_name(
    attempt_prefix: &str,
    shard: Option<(u32, u32)>,
    stats: Option<StateFileStats>,
) -> String {
    let mut name = attempt_prefix.to_string();
    if let Some((stage, partition)) = shard {
        name.push_str(&format!(".g{stage}.p{partition}"));
    }
    if let Some(s) = stats {
        name.push_str(&format!(".s{}_{}_{}_{}", s.rows, s.bytes, s.from, s.until));
    }
    name.push_str(".parquet");
    name
}

/// The segments a state file's name adds to its attempt prefix (see [`state_file_name`]),
/// last first. An attempt prefix ends in a hexadecimal UUID, so it never looks like one.
fn state_name_segments(path: &str) -> impl Iterator<Item = &str> {
    file_name(path)
        .strip_suffix(".parquet")
        .unwrap_or_default()
        .rsplit('.')
        .take(3)
}

/// The shuffle partition whose state a state file holds, from its name (see
/// [`state_file_name`]); `None` for state kept before any shuffle.
pub fn state_file_partition(path: &str) -> Option<u32> {
    state_name_segments(path).find_map(|segment| segment.strip_prefix('p')?.parse().ok())
}

/// The stage that keeps a state file's state, from its name (see [`state_file_name`]);
/// `None` for state kept before any shuffle and files named before jobs had several.
pub fn state_file_stage(path: &str) -> Option<u32> {
    state_name_segments(path).find_map(|segment| segment.strip_prefix('g')?.parse().ok())
}

/// What a state file's name says about its rows (see [`state_file_name`]); `None` for
/// files named without (written before names carried it).
pub fn state_file_stats(path: &str) -> Option<StateFileStats> {
    state_name_segments(path).find_map(|segment| {
        let mut numbers = segment.strip_prefix('s')?.split('_');
        let stats = StateFileStats {
            rows: numbers.next()?.parse().ok()?,
            bytes: numbers.next()?.parse().ok()?,
            from: numbers.next()?.parse().ok()?,
            until: numbers.next()?.parse().ok()?,
        };
        numbers.next().is_none().then_some(stats)
    })
}

/// Deletes the batch's data files whose names are not in `keep`; returns how many.
/// `properties` are the catalog's FileIO properties, for listing object storage.
pub async fn delete_batch_files_except(
    table: &Table,
    properties: &BTreeMap<String, String>,
    subdir: &str,
    job_id: &str,
    batch: BatchId,
    keep: &HashSet<String>,
) -> Result<usize> {
    let prefix = batch_prefix(job_id, batch);
    let deleted = delete_prefixed_files_except(table, properties, subdir, &prefix, keep).await?;
    if deleted > 0 {
        info!(job = %job_id, %batch, deleted, "deleted data files of failed or abandoned attempts");
    }
    Ok(deleted)
}

/// Deletes the files in the table's `subdir` whose names start with `prefix` and are not
/// in `keep`; returns how many.
pub async fn delete_prefixed_files_except(
    table: &Table,
    properties: &BTreeMap<String, String>,
    subdir: &str,
    prefix: &str,
    keep: &HashSet<String>,
) -> Result<usize> {
    let dir = format!(
        "{}/{subdir}",
        table.metadata().location().trim_end_matches('/')
    );
    let mut deleted = 0;
    for path in list_with_prefix(&dir, prefix, properties).await? {
        if keep.contains(file_name(&path)) {
            continue;
        }
        table
            .file_io()
            .delete(&path)
            .await
            .map_err(Error::iceberg(format!("deleting {path}")))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// Names of data files from their JSON metadata (as executors send them).
pub fn names_of(data_files_json: &[String]) -> HashSet<String> {
    data_files_json
        .iter()
        .filter_map(|json| {
            let value: serde_json::Value = serde_json::from_str(json).ok()?;
            Some(file_name(value.get("file_path")?.as_str()?).to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_state_files_partition_and_stats_are_read_back_from_its_name() {
        let prefix = super::attempt_prefix("job", sluice_core::BatchId::new(3), 7, 1, 0);
        let at = |name: String| format!("file:///w/t/sluice-state/{name}");
        let stats = super::StateFileStats {
            rows: 12,
            bytes: 3_456,
            from: -5,
            until: 1_700_000_000_000,
        };
        for shard in [Some((2, 12)), None] {
            let plain = at(super::state_file_name(&prefix, shard, None));
            assert_eq!(super::state_file_partition(&plain), shard.map(|s| s.1));
            assert_eq!(super::state_file_stage(&plain), shard.map(|s| s.0));
            assert_eq!(super::state_file_stats(&plain), None);
            let with_stats = at(super::state_file_name(&prefix, shard, Some(stats)));
            assert_eq!(super::state_file_partition(&with_stats), shard.map(|s| s.1));
            assert_eq!(super::state_file_stage(&with_stats), shard.map(|s| s.0));
            assert_eq!(super::state_file_stats(&with_stats), Some(stats));
        }
        // Named before jobs had several state stages: the partition alone.
        let older = at(format!("{prefix}.p4.parquet"));
        assert_eq!(super::state_file_partition(&older), Some(4));
        assert_eq!(super::state_file_stage(&older), None);
        // Job names may hold letters p and s; only the segments after the prefix count.
        let prefix = super::attempt_prefix("p7", sluice_core::BatchId::new(3), 7, 1, 0);
        let name = at(super::state_file_name(&prefix, None, None));
        assert_eq!(super::state_file_partition(&name), None);
        assert_eq!(super::state_file_stage(&name), None);
    }

    use super::*;

    #[test]
    fn prefixes_of_different_jobs_and_batches_do_not_overlap() {
        let a = attempt_prefix("x", BatchId::new(1), 7, 0, 1);
        assert!(a.starts_with(&batch_prefix("x", BatchId::new(1))));
        assert!(!a.starts_with(&batch_prefix("x", BatchId::new(11))));
        assert!(a.starts_with("x.b1.e7.t0.a1."));
        // A job whose name looks like another job's batch prefix.
        assert!(!attempt_prefix("x-b1-t", BatchId::new(0), 7, 0, 1)
            .starts_with(&batch_prefix("x", BatchId::new(1))));
        assert!(!attempt_prefix("x", BatchId::new(10), 7, 0, 1)
            .starts_with(&batch_prefix("x", BatchId::new(1))));
    }
}
