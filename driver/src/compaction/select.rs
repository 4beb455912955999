//! Which files a compaction rewrites: per partition, files in tiers of size (each tier
//! `min_files` times the one below), the smallest tier holding `min_files` files merged
//! into one file of the next. Each row is then rewritten about log_{min_files}(table size)
//! times, not once per compaction, and files that reached the target size are left alone.

use std::collections::BTreeMap;

use sluice_iceberg::rewrite::LiveFile;

/// Files smaller than this count as one size (the lowest tier).
const TIER_BASE_BYTES: u64 = 1 << 16;

/// The groups of files to rewrite, each group into one file (or a few, at the target
/// size): at most `max_bytes` in all, partitions with the most small files first.
pub fn select(
    live: &[LiveFile],
    min_files: u32,
    target_file_size: u64,
    max_bytes: u64,
) -> Vec<Vec<LiveFile>> {
    let min_files = min_files.max(2) as usize;
    // Files near the target size are done.
    let small = target_file_size / 4 * 3;
    let mut partitions: BTreeMap<String, Vec<&LiveFile>> = BTreeMap::new();
    for file in live {
        if (file.data_file.file_size_in_bytes()) < small {
            let key = format!("{}:{:?}", file.spec_id, file.data_file.partition());
            partitions.entry(key).or_default().push(file);
        }
    }
    let mut groups: Vec<Vec<LiveFile>> = partitions
        .into_values()
        .filter_map(|files| lowest_full_tier(files, min_files as u64))
        .filter(|tier| tier.len() >= min_files)
        .collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut budget = max_bytes;
    groups
        .into_iter()
        .filter_map(|group| {
            let bytes: u64 = group.iter().map(|f| f.data_file.file_size_in_bytes()).sum();
            if bytes > budget {
                return None;
            }
            budget -= bytes;
            Some(group)
        })
        .collect()
}

/// The files of the lowest tier with at least `min_files` files, if any.
fn lowest_full_tier(files: Vec<&LiveFile>, min_files: u64) -> Option<Vec<LiveFile>> {
    let mut tiers: BTreeMap<u32, Vec<&LiveFile>> = BTreeMap::new();
    for file in files {
        tiers
            .entry(tier(file.data_file.file_size_in_bytes(), min_files))
            .or_default()
            .push(file);
    }
    tiers
        .into_values()
        .find(|files| files.len() as u64 >= min_files)
        .map(|files| files.into_iter().cloned().collect())
}

/// A file's tier: 0 below [`TIER_BASE_BYTES`] times `factor`, then one more per factor.
fn tier(size: u64, factor: u64) -> u32 {
    let mut tier = 0;
    let mut bound = TIER_BASE_BYTES.saturating_mul(factor);
    while size >= bound && bound < u64::MAX {
        tier += 1;
        bound = bound.saturating_mul(factor);
    }
    tier
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Literal, Struct};

    use super::*;

    fn file(name: &str, size: u64, partition: i32) -> LiveFile {
        LiveFile {
            data_file: DataFileBuilder::default()
                .content(DataContentType::Data)
                .file_path(format!("file:///t/data/{name}.parquet"))
                .file_format(DataFileFormat::Parquet)
                .partition(Struct::from_iter([Some(Literal::int(partition))]))
                .record_count(1)
                .file_size_in_bytes(size)
                .build()
                .unwrap(),
            spec_id: 0,
            snapshot_id: 1,
            sequence_number: 1,
            file_sequence_number: None,
        }
    }

    fn names(groups: &[Vec<LiveFile>]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| {
                let mut names: Vec<String> = g
                    .iter()
                    .map(|f| {
                        f.data_file
                            .file_path()
                            .rsplit('/')
                            .next()
                            .unwrap()
                            .to_string()
                    })
                    .collect();
                names.sort();
                names
            })
            .collect()
    }

    #[test]
    fn a_partition_with_enough_small_files_is_rewritten_alone() {
        let mut live: Vec<LiveFile> = (0..4).map(|i| file(&format!("a{i}"), 1_000, 1)).collect();
        live.extend((0..3).map(|i| file(&format!("b{i}"), 1_000, 2)));
        let groups = select(&live, 4, 128 << 20, u64::MAX);
        assert_eq!(
            names(&groups),
            [["a0.parquet", "a1.parquet", "a2.parquet", "a3.parquet"]],
            "partition 2 has too few files"
        );
    }

    #[test]
    fn files_merge_with_files_of_their_size_and_large_ones_stay() {
        // Partition 1: one file already merged from 4 (in tier 1), 3 new small ones: nothing
        // to do until a fourth small one arrives; a file at the target size never moves.
        let mut live = vec![file("merged", 300_000, 1), file("big", 100 << 20, 1)];
        live.extend((0..3).map(|i| file(&format!("s{i}"), 1_000, 1)));
        assert!(select(&live, 4, 128 << 20, u64::MAX).is_empty());
        live.push(file("s3", 1_000, 1));
        assert_eq!(
            names(&select(&live, 4, 128 << 20, u64::MAX)),
            [["s0.parquet", "s1.parquet", "s2.parquet", "s3.parquet"]]
        );
        // Four merged files make the next tier's rewrite.
        let tier1: Vec<LiveFile> = (0..4).map(|i| file(&format!("m{i}"), 300_000, 1)).collect();
        assert_eq!(names(&select(&tier1, 4, 128 << 20, u64::MAX))[0].len(), 4);
    }

    #[test]
    fn the_byte_budget_limits_a_compaction() {
        let mut live: Vec<LiveFile> = (0..5).map(|i| file(&format!("a{i}"), 1_000, 1)).collect();
        live.extend((0..4).map(|i| file(&format!("b{i}"), 1_000, 2)));
        assert_eq!(select(&live, 4, 128 << 20, 9_000).len(), 2);
        assert_eq!(
            names(&select(&live, 4, 128 << 20, 5_000))[0].len(),
            5,
            "the larger group first"
        );
        assert!(select(&live, 4, 128 << 20, 3_000).is_empty());
    }
}
