//! State kept after the shuffle as a log of immutable files per shuffle partition: a
//! batch writes one file with its changes and carries the partition's other files over
//! by name, so what a batch writes follows what changed, not the whole state. Which files
//! a batch reads, carries or merges follows from what their names say about their rows
//! (`sluice_iceberg::data_files::StateFileStats`):
//!
//! - Window partials: only files holding a window the batch's watermark closes are read
//!   (their rows are needed to write the window), and rewritten without the closed
//!   windows; the rest are carried unread.
//! - Deduplication: every file is read (each remembered key counts), files whose rows
//!   the watermark has all forgotten are dropped unread, and the batch writes the keys
//!   it saw first.
//! - Session rows: read and written whole (a session depends on all its key's rows).
//!
//! A partition's files are merged into one (read whole, written once) when they are
//! more than [`MAX_FILES`] or the smaller ones together reach the size of the largest,
//! so the files stay few and each row is rewritten a bounded number of times
//! (size-tiered, as log-structured stores do). See docs/architecture.md, "State after
//! the shuffle".

use sluice_iceberg::data_files::{state_file_stats, StateFileStats};

/// A partition's state files beyond which they are merged into one.
pub const MAX_FILES: usize = 16;

/// How a state stage keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeltaRule {
    /// Window partial aggregates: rows stop being state when their window closes.
    WindowPartials,
    /// Deduplication's remembered keys: rows stop being state when forgotten.
    RememberedKeys,
    /// Session rows: the whole state is read and written by every batch.
    Whole,
}

/// What a batch does with one partition's state files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFiles {
    /// Files whose rows the batch reads.
    pub read: Vec<String>,
    /// Files the next batch gets as they are.
    pub carried: Vec<String>,
    /// Whether the batch writes every row still needed (from the files read and its own)
    /// instead of only its changes.
    pub merge: bool,
}

/// What a batch under `watermark_ms` does with a partition's state `files`.
pub fn partition_files(
    rule: DeltaRule,
    files: &[String],
    watermark_ms: Option<i64>,
) -> PartitionFiles {
    let stats: Vec<Option<StateFileStats>> = files.iter().map(|f| state_file_stats(f)).collect();
    let reached = |at: i64| watermark_ms.is_some_and(|w| w >= at);
    let live: Vec<(&String, Option<StateFileStats>)> = files
        .iter()
        .zip(stats)
        .filter(|(_, stats)| {
            // Remembered keys all forgotten: nothing in the file is state any more.
            rule != DeltaRule::RememberedKeys || !stats.is_some_and(|s| reached(s.until))
        })
        .collect();
    let merge = rule == DeltaRule::Whole || needs_merge(&live);
    let all = || live.iter().map(|(f, _)| f.to_string()).collect::<Vec<_>>();
    match (rule, merge) {
        (_, true) => PartitionFiles {
            read: all(),
            carried: vec![],
            merge: true,
        },
        (DeltaRule::RememberedKeys, false) => PartitionFiles {
            read: all(),
            carried: all(),
            merge: false,
        },
        (_, false) => {
            // Window partials: a file is read once the watermark closes one of its windows.
            let (read, carried): (Vec<_>, Vec<_>) = live
                .iter()
                .partition(|(_, stats)| stats.is_some_and(|s| reached(s.from)));
            PartitionFiles {
                read: read.into_iter().map(|(f, _)| f.to_string()).collect(),
                carried: carried.into_iter().map(|(f, _)| f.to_string()).collect(),
                merge: false,
            }
        }
    }
}

/// Whether a partition's files should be merged into one: too many, one named without
/// stats (written before state files were kept as deltas), or the smaller ones together
/// as large as the largest.
fn needs_merge(files: &[(&String, Option<StateFileStats>)]) -> bool {
    if files.len() > MAX_FILES {
        return true;
    }
    let Some(sizes) = files
        .iter()
        .map(|(_, stats)| stats.map(|s| s.bytes))
        .collect::<Option<Vec<u64>>>()
    else {
        return true;
    };
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let total: u64 = sizes.iter().sum();
    files.len() > 1 && total - largest >= largest
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_iceberg::data_files::state_file_name;

    fn file(n: u32, bytes: u64, from: i64, until: i64) -> String {
        let stats = StateFileStats {
            rows: 1,
            bytes,
            from,
            until,
        };
        state_file_name(&format!("j.b{n}.e1.t0.a1.ff"), Some(0), Some(stats))
    }

    #[test]
    fn window_files_are_read_once_the_watermark_closes_one_of_their_windows() {
        let base = file(1, 1_000, 60, 120);
        let delta = file(2, 10, 120, 180);
        let files = [base.clone(), delta.clone()];
        let at = |w| partition_files(DeltaRule::WindowPartials, &files, w);
        assert_eq!(
            at(None).carried,
            files,
            "nothing closes without a watermark"
        );
        assert_eq!(at(Some(59)).read, Vec::<String>::new());
        let closing = at(Some(60));
        assert_eq!((closing.read, closing.carried), (vec![base], vec![delta]));
        assert_eq!(at(Some(130)).read.len(), 2);
        assert!(!at(Some(130)).merge);
    }

    #[test]
    fn remembered_keys_are_all_read_and_forgotten_files_dropped() {
        let old = file(1, 100, 10, 20);
        let newer = file(2, 10, 15, 40);
        let files = [old.clone(), newer.clone()];
        let kept = partition_files(DeltaRule::RememberedKeys, &files, Some(19));
        assert_eq!(kept.read, files, "every remembered key counts");
        assert_eq!((kept.carried, kept.merge), (files.to_vec(), false));
        let dropped = partition_files(DeltaRule::RememberedKeys, &files, Some(20));
        assert_eq!(dropped.read, vec![newer.clone()]);
        assert_eq!(dropped.carried, vec![newer]);
        let equal = [file(1, 100, 10, 20), file(2, 100, 15, 40)];
        let merged = partition_files(DeltaRule::RememberedKeys, &equal, Some(0));
        assert_eq!((merged.read.len(), merged.carried.len()), (2, 0));
        assert!(merged.merge);
    }

    #[test]
    fn files_merge_when_too_many_unnamed_or_the_small_ones_reach_the_largest() {
        let small = |n| file(n, 10, 100, 100);
        let mut files = vec![file(0, 1_000, 100, 100)];
        files.extend((1..=MAX_FILES as u32 - 1).map(small));
        let at = |files: &[String]| partition_files(DeltaRule::WindowPartials, files, None);
        assert!(
            !at(&files).merge,
            "{} files, small ones far below",
            files.len()
        );
        files.push(small(99));
        assert!(at(&files).merge, "more than {MAX_FILES} files");
        assert!(at(&[file(0, 100, 1, 1), file(1, 60, 1, 1), file(2, 40, 1, 1)]).merge);
        assert!(!at(&[file(0, 100, 1, 1), file(1, 60, 1, 1), file(2, 39, 1, 1)]).merge);
        let unnamed = state_file_name("j.b1.e1.t0.a1.ff", Some(0), None);
        let merged = at(std::slice::from_ref(&unnamed));
        assert!(merged.merge && merged.read == vec![unnamed] && merged.carried.is_empty());
        let whole = partition_files(DeltaRule::Whole, &[file(0, 1, 1, 1)], None);
        assert!(whole.merge && whole.read.len() == 1);
    }
}
