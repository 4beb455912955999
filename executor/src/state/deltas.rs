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
//! - Session rows: only files holding a row whose session may close under the batch's
//!   watermark are read and rewritten (their rows of open sessions); from the others the
//!   reader looks up the rows of every key the batch sees, so each session is computed
//!   over all its rows. A file names the earliest end of its rows' sessions when written;
//!   a session that more rows extended since is found open and its rows rewritten with
//!   the later end, so a row is rewritten about once per gap plus delay of event time for
//!   as long as its session lasts.
//!
//! A partition's files are merged when they are more than [`MAX_FILES`] or the smaller
//! ones together reach the size of the largest, so the files stay few and each row is
//! rewritten a bounded number of times (size-tiered, as log-structured stores do). A merge
//! takes the smallest files up to [`MAX_MERGE_BYTES`] and never a file that large, so a
//! batch holds at most that much state in memory to rewrite it; larger files leave when
//! the watermark ends their rows (remembered keys forgotten, windows closed). See
//! docs/architecture.md, "State after the shuffle".

use sluice_iceberg::data_files::{state_file_stats, StateFileStats};
use sluice_plan::stateful::StatefulOperator;

/// A partition's state files beyond which they are merged.
pub const MAX_FILES: usize = 16;

/// The most bytes of state files one merge takes; files this large are not merged again.
pub const MAX_MERGE_BYTES: u64 = 32 << 20;

/// What a batch does with one partition's state files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionFiles {
    /// Files whose rows the batch reads whole.
    pub read: Vec<String>,
    /// Files whose rows still needed the batch rewrites into its own file (a subset of
    /// `read`); the next batch no longer lists them.
    pub merged: Vec<String>,
    /// Files the next batch gets as they are (for sessions, where the rows of the batch's
    /// keys are looked up).
    pub carried: Vec<String>,
}

/// What a batch under `watermark_ms` does with a partition's state `files` of the
/// operator `rule` (window partials, remembered keys or session rows).
pub fn partition_files(
    rule: &StatefulOperator,
    files: &[String],
    watermark_ms: Option<i64>,
) -> PartitionFiles {
    let reached = |at: i64| watermark_ms.is_some_and(|w| w >= at);
    let live: Vec<(&String, Option<StateFileStats>)> = files
        .iter()
        .map(|f| (f, state_file_stats(f)))
        .filter(|(_, stats)| {
            // Remembered keys all forgotten: nothing in the file is state any more.
            !rule.is_dedup() || !stats.is_some_and(|s| reached(s.until))
        })
        .collect();
    let names = |files: &[&(&String, Option<StateFileStats>)]| -> Vec<String> {
        files.iter().map(|(f, _)| f.to_string()).collect()
    };
    let all: Vec<_> = live.iter().collect();
    let merged = to_merge(&live);
    let rewritten: Vec<_> = live
        .iter()
        .filter(|(f, stats)| {
            merged.contains(f)
                // A window or session file is read once the watermark may close one of its
                // windows, and its open ones rewritten.
                || (!rule.is_dedup() && stats.is_some_and(|s| reached(s.from)))
        })
        .collect();
    let carried: Vec<_> = live
        .iter()
        .filter(|(f, _)| !rewritten.iter().any(|(r, _)| r == f))
        .collect();
    PartitionFiles {
        // Every remembered key counts, so deduplication reads every live file.
        read: if rule.is_dedup() {
            names(&all)
        } else {
            names(&rewritten)
        },
        merged: names(&rewritten),
        carried: names(&carried),
    }
}

/// The files to merge: every file named without stats (written before state files were
/// kept as deltas), and, when the files are more than [`MAX_FILES`] or the smaller ones
/// together reach the largest, the smallest ones up to [`MAX_MERGE_BYTES`].
fn to_merge<'a>(files: &[(&'a String, Option<StateFileStats>)]) -> Vec<&'a String> {
    let mut merged: Vec<&String> = files
        .iter()
        .filter(|(_, stats)| stats.is_none())
        .map(|(f, _)| *f)
        .collect();
    let mut candidates: Vec<(&String, u64)> = files
        .iter()
        .filter_map(|(f, stats)| Some((*f, stats.as_ref()?.bytes)))
        .filter(|(_, bytes)| *bytes < MAX_MERGE_BYTES)
        .collect();
    candidates.sort_by_key(|(_, bytes)| *bytes);
    let total: u64 = candidates.iter().map(|(_, bytes)| bytes).sum();
    let largest = candidates.last().map_or(0, |(_, bytes)| *bytes);
    let tiered = candidates.len() > 1 && total - largest >= largest;
    if files.len() > MAX_FILES || tiered {
        let mut taken = 0;
        let chosen: Vec<&String> = candidates
            .iter()
            .take_while(|(_, bytes)| {
                taken += bytes;
                taken <= MAX_MERGE_BYTES
            })
            .map(|(f, _)| *f)
            .collect();
        if chosen.len() > 1 {
            merged.extend(chosen);
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_iceberg::data_files::state_file_name;

    fn sessions() -> StatefulOperator {
        StatefulOperator::Sessions {
            key: vec!["k".into()],
            event_time: "ts".into(),
            gap_ms: 1,
        }
    }

    fn dedup() -> StatefulOperator {
        StatefulOperator::Dedup {
            key: vec!["k".into()],
            event_time: "ts".into(),
            within_ms: 0,
        }
    }

    fn file(n: u32, bytes: u64, from: i64, until: i64) -> String {
        let stats = StateFileStats {
            rows: 1,
            bytes,
            from,
            until,
        };
        state_file_name(&format!("j.b{n}.e1.t0.a1.ff"), Some((1, 0)), Some(stats))
    }

    #[test]
    fn window_files_are_read_once_the_watermark_closes_one_of_their_windows() {
        let base = file(1, 1_000, 60, 120);
        let delta = file(2, 10, 120, 180);
        let files = [base.clone(), delta.clone()];
        let at = |w| partition_files(&StatefulOperator::Windows, &files, w);
        assert_eq!(
            at(None).carried,
            files,
            "nothing closes without a watermark"
        );
        assert_eq!(at(Some(59)).read, Vec::<String>::new());
        let closing = at(Some(60));
        assert_eq!(closing.read, vec![base.clone()]);
        assert_eq!(closing.merged, vec![base], "its open windows are rewritten");
        assert_eq!(closing.carried, vec![delta]);
        assert_eq!(at(Some(130)).merged.len(), 2);
    }

    #[test]
    fn session_files_are_read_once_the_watermark_may_close_one_of_their_sessions() {
        let older = file(1, 1_000, 50, 200);
        let newer = file(2, 10, 90, 90);
        let files = [older.clone(), newer.clone()];
        let at = |w| partition_files(&sessions(), &files, w);
        assert_eq!(at(Some(49)).carried, files, "looked up by key, not read");
        assert!(at(Some(49)).read.is_empty());
        let closing = at(Some(50));
        assert_eq!(
            (closing.read, closing.merged),
            (vec![older.clone()], vec![older])
        );
        assert_eq!(closing.carried, vec![newer]);
    }

    #[test]
    fn remembered_keys_are_all_read_and_forgotten_files_dropped() {
        let old = file(1, 100, 10, 20);
        let newer = file(2, 10, 15, 40);
        let files = [old.clone(), newer.clone()];
        let kept = partition_files(&dedup(), &files, Some(19));
        assert_eq!(kept.read, files, "every remembered key counts");
        assert_eq!(kept.carried, files.to_vec());
        assert!(kept.merged.is_empty());
        let dropped = partition_files(&dedup(), &files, Some(20));
        assert_eq!(dropped.read, vec![newer.clone()]);
        assert_eq!(dropped.carried, vec![newer]);
        let equal = [file(1, 100, 10, 20), file(2, 100, 15, 40)];
        let merged = partition_files(&dedup(), &equal, Some(0));
        assert_eq!((merged.read.len(), merged.merged.len()), (2, 2));
        assert!(merged.carried.is_empty());
    }

    #[test]
    fn files_merge_when_too_many_unnamed_or_the_small_ones_reach_the_largest() {
        let small = |n| file(n, 10, 100, 100);
        let mut files = vec![file(0, 1_000, 100, 100)];
        files.extend((1..=MAX_FILES as u32 - 1).map(small));
        let at = |files: &[String]| partition_files(&StatefulOperator::Windows, files, None);
        assert!(
            at(&files).merged.is_empty(),
            "{} files, small ones far below",
            files.len()
        );
        files.push(small(99));
        let merged = at(&files).merged;
        assert_eq!(merged.len(), files.len(), "more than {MAX_FILES} files");
        let tiers = |last| at(&[file(0, 100, 1, 1), file(1, 60, 1, 1), file(2, last, 1, 1)]);
        assert_eq!(tiers(40).merged.len(), 3);
        assert!(tiers(39).merged.is_empty());
        let unnamed = state_file_name("j.b1.e1.t0.a1.ff", Some((1, 0)), None);
        let rewritten = at(std::slice::from_ref(&unnamed));
        assert_eq!(
            (rewritten.read, rewritten.merged),
            (vec![unnamed.clone()], vec![unnamed])
        );
    }

    #[test]
    fn a_merge_takes_the_smallest_files_up_to_its_bound_and_never_a_large_one() {
        let large = file(0, MAX_MERGE_BYTES, 1, 1);
        let half = MAX_MERGE_BYTES / 2;
        let files = [
            large.clone(),
            file(1, half, 1, 1),
            file(2, half, 1, 1),
            file(3, 1, 1, 1),
        ];
        let chosen = partition_files(&dedup(), &files, None);
        assert_eq!(chosen.merged, vec![files[1].clone(), files[3].clone()]);
        assert!(chosen.carried.contains(&large) && chosen.carried.contains(&files[2]));
        assert_eq!(chosen.read.len(), 4);
    }
}
