//! The compaction protocol against an in-memory checkpoint store (whose fence a test can
//! take away), a real SQL catalog on a temporary SQLite file, and fake rewrite tasks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat, Operation};
use sluice_iceberg::data_files::compaction_attempt_prefix;
use sluice_iceberg::rewrite::live_files;
use sluice_iceberg::sink::data_files_to_json;

use super::*;
use crate::batch::tests::{Fixture, JOB};
use crate::error::Error;

/// Rows of the file a fake rewrite writes: the four 10-row files of [`four_small_files`].
const REWRITTEN_ROWS: u64 = 40;

/// Rewrite tasks that write one file of [`REWRITTEN_ROWS`] named like compaction `id`'s,
/// after `delay`, optionally taking the driver's leadership away first.
struct FakeRewrites<'a> {
    fx: &'a Fixture,
    delay: Duration,
    depose: bool,
}

impl FakeRewrites<'_> {
    /// Prompt rewrites by a driver that stays the leader.
    fn new(fx: &Fixture) -> FakeRewrites<'_> {
        FakeRewrites {
            fx,
            delay: Duration::ZERO,
            depose: false,
        }
    }
}

#[async_trait]
impl RunRewrites for FakeRewrites<'_> {
    async fn run_rewrites(
        &self,
        compaction: i64,
        term: i64,
        _groups: Vec<Vec<String>>,
    ) -> Result<Vec<Vec<String>>> {
        let name = format!(
            "{}-00000.parquet",
            compaction_attempt_prefix(JOB, compaction, term, 0, 1)
        );
        std::fs::write(self.fx.data_dir().join(&name), b"").unwrap();
        if self.depose {
            self.fx.store.deposed.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(self.delay).await;
        let file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!(
                "{}/data/{name}",
                self.fx.created.metadata().location()
            ))
            .file_format(DataFileFormat::Parquet)
            .record_count(REWRITTEN_ROWS)
            .file_size_in_bytes(400)
            .build()
            .unwrap();
        Ok(vec![
            data_files_to_json(&self.fx.created, vec![file]).unwrap()
        ])
    }
}

/// A fixture whose table holds four batches of one small file (10 rows) each.
async fn four_small_files() -> Fixture {
    let fx = Fixture::new().await;
    for batch in 0..4 {
        let (_, json) = fx.write_file(batch, 7);
        fx.commit_elsewhere(batch, vec![json]).await;
    }
    fx
}

fn compactor(budget: &str) -> Compactor {
    let spec = CompactionSpec {
        min_files: Some(4),
        budget: Some(budget.into()),
        ..Default::default()
    };
    Compactor::new(JOB.into(), spec, 128 << 20)
}

fn compaction_files(fx: &Fixture) -> Vec<String> {
    std::fs::read_dir(fx.data_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("{JOB}.c")))
        .collect()
}

#[tokio::test]
async fn small_files_are_replaced_by_their_rewrite_in_one_replace_snapshot() {
    let fx = four_small_files().await;
    let mut sink = SinkTables::new(&fx.sink, false);
    let rewrites = FakeRewrites::new(&fx);
    let done = compactor("10s")
        .run(&fx.log(), &mut sink, &rewrites)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            done.id,
            done.files_removed,
            done.files_written,
            done.committed
        ),
        (1, 4, 1, true)
    );
    let table = fx.table().await;
    assert_eq!(
        table
            .metadata()
            .current_snapshot()
            .unwrap()
            .summary()
            .operation,
        Operation::Replace
    );
    assert_eq!(live_files(&table).await.unwrap().len(), 1);
    assert_eq!(sluice_iceberg::sink::total_records(&table), 40);
    assert!(fx.log().compaction().await.unwrap().unwrap().done);
    // Nothing more to do until small files accumulate again.
    assert_eq!(
        compactor("10s")
            .run(&fx.log(), &mut sink, &rewrites)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn a_compaction_over_its_budget_is_abandoned_and_its_files_deleted() {
    let fx = four_small_files().await;
    let before = fx.table().await.metadata().current_snapshot_id();
    let mut sink = SinkTables::new(&fx.sink, false);
    let slow = FakeRewrites {
        delay: Duration::from_secs(5),
        ..FakeRewrites::new(&fx)
    };
    let started = std::time::Instant::now();
    let abandoned = compactor("200ms")
        .run(&fx.log(), &mut sink, &slow)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the budget bounds it"
    );
    assert!(!abandoned.committed);
    assert_eq!(fx.table().await.metadata().current_snapshot_id(), before);
    assert!(
        compaction_files(&fx).is_empty(),
        "{:?}",
        compaction_files(&fx)
    );
}

#[tokio::test]
async fn an_unfinished_compaction_is_settled_before_the_next() {
    let fx = four_small_files().await;
    // Compaction 1 was logged and wrote a file; its driver died before committing.
    let log = fx.log();
    log.put_compaction(&CompactionRecord {
        id: 1,
        term: 6,
        done: false,
    })
    .await
    .unwrap();
    let orphan = format!(
        "{}-00000.parquet",
        compaction_attempt_prefix(JOB, 1, 6, 0, 1)
    );
    std::fs::write(fx.data_dir().join(&orphan), b"").unwrap();
    let mut sink = SinkTables::new(&fx.sink, false);
    let rewrites = FakeRewrites::new(&fx);
    let done = compactor("10s")
        .run(&log, &mut sink, &rewrites)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !fx.exists(&orphan),
        "the unfinished compaction's file is deleted"
    );
    assert_eq!((done.id, done.committed), (2, true));
    let table = fx.table().await;
    assert!(find_compaction_in_ancestry(&table, JOB, 1).is_none());
    assert!(find_compaction_in_ancestry(&table, JOB, 2).is_some());
}

#[tokio::test]
async fn a_driver_whose_fence_is_gone_commits_no_replace() {
    let fx = four_small_files().await;
    let before = fx.table().await.metadata().current_snapshot_id();
    let mut sink = SinkTables::new(&fx.sink, false);
    let rewrites = FakeRewrites {
        depose: true,
        ..FakeRewrites::new(&fx)
    };
    let outcome = compactor("10s").run(&fx.log(), &mut sink, &rewrites).await;
    assert!(matches!(outcome, Err(Error::Fenced { .. })), "{outcome:?}");
    assert_eq!(fx.table().await.metadata().current_snapshot_id(), before);
}
