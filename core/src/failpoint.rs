//! Crash points for fault-injection tests: a process started with
//! `SLUICE_FAILPOINTS=name[@batch][=sleep:MS|=panic][,…]` aborts at once (no clean-up,
//! like SIGKILL) when it reaches a named point (for that batch), with `=sleep:MS` stalls
//! there that long, with `=panic` panics there. Unset, a check costs one atomic load.
//!
//! Only a build with the `failpoints` cargo feature (the tests enable it) has them; in any
//! other build `hit` does nothing and the variable is ignored with a warning.

#[cfg(feature = "failpoints")]
use std::sync::OnceLock;

use crate::BatchId;

/// Environment variable that arms crash points.
pub const FAILPOINTS_ENV: &str = "SLUICE_FAILPOINTS";

/// Driver: the batch's ranges are in the offset log; nothing has run.
pub const PLAN_LOGGED: &str = "plan_logged";
/// Driver: one task of the batch has finished; others may still run.
pub const TASK_FINISHED: &str = "task_finished";
/// Driver: every task of a map stage has finished; its outputs wait on executors for the
/// next stage.
pub const MAP_STAGE_DONE: &str = "map_stage_done";
/// Driver: every task wrote its files; the Iceberg commit has not happened.
pub const FILES_WRITTEN: &str = "files_written";
/// Driver: the Iceberg snapshot is committed; the checkpoint is not written.
pub const SNAPSHOT_COMMITTED: &str = "snapshot_committed";
/// Driver: the checkpoint is written.
pub const CHECKPOINT_WRITTEN: &str = "checkpoint_written";
/// Executor: the task's records are read; no file is written.
pub const EXECUTOR_RECORDS_READ: &str = "executor_records_read";
/// Executor: the task's data files are written; the driver has not been told.
pub const EXECUTOR_FILES_WRITTEN: &str = "executor_files_written";
/// Executor: a compaction task's files are written; the driver has not been told. (The
/// "batch" of a compaction point is the compaction's id.)
pub const EXECUTOR_REWRITE_WRITTEN: &str = "executor_rewrite_written";
/// Driver: the compaction is logged; no rewrite task has run.
pub const COMPACTION_LOGGED: &str = "compaction_logged";
/// Driver: every rewrite task wrote its files; the replace snapshot is not committed.
pub const COMPACTION_FILES_WRITTEN: &str = "compaction_files_written";
/// Driver: the replace snapshot is committed; the compaction is not recorded as done.
pub const COMPACTION_COMMITTED: &str = "compaction_committed";

#[cfg(feature = "failpoints")]
/// What an armed point does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    SleepMs(u64),
    Panic,
}

#[cfg(feature = "failpoints")]
type Armed = Vec<(String, Option<BatchId>, Action)>;

#[cfg(feature = "failpoints")]
fn armed() -> &'static Armed {
    static ARMED: OnceLock<Armed> = OnceLock::new();
    ARMED.get_or_init(|| {
        std::env::var(FAILPOINTS_ENV)
            .map(|value| parse(&value))
            .unwrap_or_default()
    })
}

#[cfg(feature = "failpoints")]
fn parse(value: &str) -> Armed {
    value
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (point, action) = match p.split_once('=') {
                Some((point, "panic")) => (point, Action::Panic),
                Some((point, action)) => {
                    let ms = action.strip_prefix("sleep:").and_then(|ms| ms.parse().ok());
                    (point, ms.map_or(Action::Abort, Action::SleepMs))
                }
                None => (p, Action::Abort),
            };
            match point.split_once('@') {
                Some((name, batch)) => (name.to_string(), batch.parse().ok(), action),
                None => (point.to_string(), None, action),
            }
        })
        .collect()
}

/// Whether this build has failpoints (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Warns when failpoints are armed in a build that has none.
pub fn warn_if_ignored() {
    if !ENABLED && std::env::var_os(FAILPOINTS_ENV).is_some() {
        tracing::warn!("{FAILPOINTS_ENV} is set, but this build has no failpoints (the failpoints feature); ignored");
    }
}

/// Does nothing: this build has no failpoints.
#[cfg(not(feature = "failpoints"))]
pub async fn hit(_name: &str, _batch: BatchId) {}

/// Aborts the process (or stalls, without blocking the async worker) when `name` is
/// armed for `batch` (or for every batch).
#[cfg(feature = "failpoints")]
pub async fn hit(name: &str, batch: BatchId) {
    let armed = armed();
    if armed.is_empty() {
        return;
    }
    let action = armed
        .iter()
        .find(|(n, b, _)| n == name && b.is_none_or(|b| b == batch))
        .map(|(_, _, action)| *action);
    match action {
        Some(Action::Abort) => {
            eprintln!("failpoint {name} hit at batch {batch}: aborting");
            std::process::abort();
        }
        Some(Action::SleepMs(ms)) => {
            eprintln!("failpoint {name} hit at batch {batch}: sleeping {ms} ms");
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Some(Action::Panic) => panic!("failpoint {name} hit at batch {batch}: panicking"),
        None => {}
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    #[test]
    fn failpoints_parse_with_optional_batches() {
        assert_eq!(
            parse("plan_logged@3, files_written, executor_records_read@1=sleep:2000, x=panic"),
            vec![
                (
                    "plan_logged".to_string(),
                    Some(BatchId::new(3)),
                    Action::Abort
                ),
                ("files_written".to_string(), None, Action::Abort),
                (
                    "executor_records_read".to_string(),
                    Some(BatchId::new(1)),
                    Action::SleepMs(2000)
                ),
                ("x".to_string(), None, Action::Panic),
            ]
        );
        assert!(parse("").is_empty());
    }
}
